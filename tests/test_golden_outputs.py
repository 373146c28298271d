"""The report's output, frozen: every check's JSON summary, JUnit file and terminal text on the
project's honest and faulty sets stays byte-identical to ``tests/golden/``.

This guards issue 30, a refactor of how the report renders check results with its behaviour
unchanged: the refactor is done when this test passes without touching the snapshot (except for
the corrected chart). ``benchmarks/golden_outputs.py`` makes the sets (the built-in model,
in-process targets, fixed seeds) and checks them; its docstring says what is normalized (the
JUnit timestamp, the temporary folder's path) and why.

The outputs rest on torch's numerics, so the snapshot belongs to the machine it was made on, and
even there the in-process server's log-probs move in their last float bits with which requests
it happened to batch together (a CI run found a logprobs ``mean_abs_diff`` of 5.1e-7 against
5.4e-7): the comparison is meant for the refactor session, run deliberately with
``SERVECHECK_GOLDEN=1`` before and after, not for every CI run, where it would fail by chance.
To update it deliberately, when an output is meant to change (or on another machine, before a
refactor), run from the repository root and review the diff before committing it:

    python benchmarks/golden_outputs.py --out tests/golden
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _script(root: Path):
    spec = importlib.util.spec_from_file_location("golden_outputs",
                                                  root / "benchmarks" / "golden_outputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # generates and checks six sets of 48 to 64 requests (a few minutes)
def test_check_outputs_are_byte_identical_to_the_snapshot(root: Path, tmp_path: Path) -> None:
    if os.environ.get("SERVECHECK_GOLDEN") != "1":
        pytest.skip("set SERVECHECK_GOLDEN=1 to compare with the snapshot (module docstring)")
    script = _script(root)
    made_on = json.loads((root / "tests" / "golden" / "machine.json").read_text())
    if made_on != script.machine():  # another torch or CPU: other tokens, not another report
        pytest.skip(f"the snapshot was made on {made_on}, this is {script.machine()}: regenerate "
                    f"it here before a refactor (see the module docstring)")
    fresh = tmp_path / "golden"
    # its own process: the script fixes COLUMNS and the colour settings and changes directory
    run = subprocess.run([sys.executable, "benchmarks/golden_outputs.py", "--out", str(fresh)],
                         cwd=root, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    diff = script.first_difference(root / "tests" / "golden", fresh)
    assert diff is None, (f"the report's output changed: {diff}\n(if that is meant, update the "
                          f"snapshot: python benchmarks/golden_outputs.py --out tests/golden)")

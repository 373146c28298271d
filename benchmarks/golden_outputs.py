"""Golden outputs of ``servecheck check``: the JSON summary, the JUnit file and the terminal text
of every check, on a small fixed set of honest and faulty responses of the built-in model. The
guard of issue 30 (the report refactor must leave every check's output byte-identical).

    python benchmarks/golden_outputs.py --out tests/golden        # write (update) the snapshot
    python benchmarks/golden_outputs.py --compare tests/golden    # exit 1 on the first difference
    python benchmarks/golden_outputs.py --update tests/golden     # outputs meant to change: the
                                                                  # stored responses checked again

Each set is made in this process: ``servecheck generate`` of a fixed prompts file (fixed seeds)
against an in-process target (``hf:builtin``, or ``hf:builtin?fault=NAME``), then
``servecheck.cli.main(["check", ...])`` with ``--json`` and ``--junit``, its stdout and stderr
captured (no terminal: rich writes plain text, 100 columns, no colour). Per set NAME the folder
gets ``NAME.json``, ``NAME.xml`` and ``NAME.txt`` (the exit code, then stdout, then stderr), and
the responses file the check read, ``NAME.responses.jsonl``: ``--compare`` checks those stored
responses again rather than generating new ones, because the in-process server's batched
log-probs move in their last float bits with which requests it happened to batch together, and
the snapshot guards the checks and the report, not the server.

What is normalized, and why (nothing else is touched):

- the JUnit ``timestamp="…"`` attribute of the test suite is the wall-clock time of the run
  (``report/junit.py``); it becomes ``timestamp="<TIMESTAMP>"``;
- the temporary working folder's absolute path (in case a path is printed or written) becomes
  ``<WORK>``. The check is run from inside that folder on a relative file name, so the
  responses path itself is the same every run.

JUnit ``time`` attributes are written as ``"0"`` already, and the JSON summary holds no time,
version or date, so nothing more is needed. The terminal text and JUnit compare byte for byte;
the JSON too, except that its floats may differ by ``FLOAT_RTOL`` (the reference's float32
scores move in their last bits between processes: ``FLOAT_RTOL`` says by how much). The
outputs depend on torch's numerics (the reference's log-probs, the generated tokens), so the
snapshot is for the machine it was made on: regenerate it on another before a refactor, and
compare after it there.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from servecheck.cli import main  # noqa: E402
from servecheck.servers import mix  # noqa: E402

WIDTH = "100"

SHARED_SEED = {  # one seed for every prompt: 4 prompts × 2 systems × 2 temperatures × 3 top_p
    "prompt": json.loads((ROOT / "examples" / "prompts-lite.json").read_text())["prompt"],
    "system_prompt": [None, "Answer in capital letters."],
    "temperature": [0, 0.8], "top_p": [1.0, 0.9, 0.7], "seed": 1234, "max_tokens": 32,
}

SETS: dict[str, tuple[str, object]] = {
    # name: (target, prompts file content)
    "honest": ("hf:builtin", mix.blocks(64, 0)),
    "shared-seed": ("hf:builtin", SHARED_SEED),
    "double-bos": ("hf:builtin?fault=double-bos", mix.blocks(48, 1)),
    "temperature-ignored": ("hf:builtin?fault=temperature-ignored",  # sampled at 0.5 asked
                            [b if b["temperature"] == 0 else {**b, "temperature": 0.5}
                             for b in mix.blocks(64, 2)]),
    "top-p-ignored": ("hf:builtin?fault=top-p-ignored", mix.blocks(64, 3)),
    "drop-system": ("hf:builtin?fault=drop-system", mix.blocks(48, 4)),
}


def _stable_env() -> None:
    """Plain text at a fixed width: no terminal, whatever the caller's environment says."""
    os.environ["COLUMNS"] = WIDTH
    os.environ.pop("LINES", None)
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "TERM"):
        os.environ.pop(name, None)
    os.environ["TERM"] = "dumb"


def _normalize(text: str, work: Path) -> str:
    text = text.replace(str(work.resolve()), "<WORK>").replace(str(work), "<WORK>")
    return re.sub(r'timestamp="[^"]*"', 'timestamp="<TIMESTAMP>"', text)


def _cli(*args: str | Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def make_set(name: str, work: Path, out: Path, stored: Path | None = None) -> None:
    """Checks set ``name`` in ``work`` and writes its three normalized outputs to ``out``: the
    responses stored in ``stored`` when given, else freshly generated (and stored in ``out``)."""
    target, prompts = SETS[name]
    responses = f"{name}.responses.jsonl"
    if stored is not None:
        (work / f"{name}.jsonl").write_bytes((stored / responses).read_bytes())
    else:
        (work / f"{name}-prompts.json").write_text(json.dumps(prompts))
        code, _, err = _cli("generate", f"{name}-prompts.json", "--target", target,
                            "--out", f"{name}.jsonl", "--no-progress")
        if code != 0:
            raise SystemExit(f"generate {name} failed ({code}): {err}")
        (out / responses).write_bytes((work / f"{name}.jsonl").read_bytes())
    code, stdout, stderr = _cli("check", f"{name}.jsonl", "--reference", "builtin",
                                "--no-progress", "--json", f"{name}.json",
                                "--junit", f"{name}.xml")
    terminal = f"exit code: {code}\n--- stdout\n{stdout}--- stderr\n{stderr}"
    for suffix, text in ((".json", (work / f"{name}.json").read_text()),
                         (".xml", (work / f"{name}.xml").read_text()), (".txt", terminal)):
        (out / f"{name}{suffix}").write_text(_normalize(text, work))


def make_all(out: Path, names: list[str] | None = None, stored: Path | None = None) -> None:
    """Every set (or ``names``) into ``out``, each generated (or taken from ``stored``) and
    checked in a temporary folder."""
    _stable_env()
    state = tempfile.TemporaryDirectory(prefix="golden-state-")
    os.environ.setdefault("SERVECHECK_STATE", state.name)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    (out / "machine.json").write_text(json.dumps(machine(), indent=1, sort_keys=True) + "\n")
    here = Path.cwd()
    for name in names or list(SETS):
        with tempfile.TemporaryDirectory(prefix="golden-") as tmp:
            os.chdir(tmp)
            try:
                start = time.monotonic()
                make_set(name, Path(tmp), out, stored)
                print(f"{name}: {time.monotonic() - start:.0f} s", file=sys.stderr)
            finally:
                os.chdir(here)


def machine() -> dict[str, str]:
    """What the outputs rest on besides servecheck: the generated tokens and the reference's
    log-probs come from torch's CPU kernels, which differ across versions and instruction sets.
    A snapshot is compared only on a machine with the same fingerprint."""
    import platform

    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "machine": platform.machine(), "python": platform.python_version()}


FLOAT_RTOL, FLOAT_ATOL = 1e-6, 1e-8
"""How far two JSON numbers may differ and still be the same output: the reference's float32
scores move in their last bits between processes (a fresh clone's CI run gave a log-prob
``mean_abs_diff`` of 5.169e-07 against 5.148e-07: the mean of float32 rounding noise, which has
no more digits than that). Text and XML, and every string and integer, compare byte for byte."""


def _json_difference(a: object, b: object, where: str = "") -> str | None:
    if isinstance(a, float) or isinstance(b, float):
        ok = isinstance(a, int | float) and isinstance(b, int | float) and \
            abs(a - b) <= FLOAT_ATOL + FLOAT_RTOL * max(abs(a), abs(b))
        return None if ok else f"{where or '/'}: expected {a!r}, got {b!r}"
    if isinstance(a, dict) and isinstance(b, dict):
        if list(a) != list(b):
            return f"{where or '/'}: keys {list(a)} vs {list(b)}"
        return next((d for k in a if (d := _json_difference(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return f"{where or '/'}: {len(a)} items vs {len(b)}"
        return next((d for k, (x, y) in enumerate(zip(a, b, strict=True))
                     if (d := _json_difference(x, y, f"{where}/{k}"))), None)
    return None if a == b and type(a) is type(b) else f"{where or '/'}: expected {a!r}, got {b!r}"


def first_difference(expected: Path, got: Path) -> str | None:
    """None when both folders hold the same outputs (JSON numbers within ``FLOAT_RTOL``, all
    else byte for byte); else the first difference."""
    names = sorted({p.name for p in expected.iterdir()} | {p.name for p in got.iterdir()})
    for n in names:
        a, b = expected / n, got / n
        if not a.exists() or not b.exists():
            return f"{n}: only in {got if b.exists() else expected}"
        if n.endswith(".json") and n != "machine.json":
            diff = _json_difference(json.loads(a.read_text()), json.loads(b.read_text()))
            if diff:
                return f"{n}, {diff}"
            continue
        la, lb = a.read_text().splitlines(keepends=True), b.read_text().splitlines(keepends=True)
        for i in range(max(len(la), len(lb))):
            x = la[i] if i < len(la) else "<end of file>"
            y = lb[i] if i < len(lb) else "<end of file>"
            if x != y:
                return f"{n}, line {i + 1}:\n  expected: {x!r}\n  got:      {y!r}"
    return None


def main_(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", type=Path, help="write the outputs here (the snapshot)")
    g.add_argument("--compare", type=Path,
                   help="check this folder's stored responses again and diff the outputs")
    g.add_argument("--update", type=Path,
                   help="check this folder's stored responses again and rewrite the outputs")
    p.add_argument("-k", action="append", dest="names", choices=list(SETS),
                   help="only this set (repeatable)")
    a = p.parse_args(argv)
    start = time.monotonic()
    if a.update:
        make_all(a.update, a.names, stored=a.update.resolve())
        print(f"updated {a.update} in {time.monotonic() - start:.0f} s", file=sys.stderr)
        return 0
    if a.out:
        make_all(a.out, a.names)
        print(f"written {a.out} in {time.monotonic() - start:.0f} s", file=sys.stderr)
        return 0
    with tempfile.TemporaryDirectory(prefix="golden-fresh-") as fresh:
        make_all(Path(fresh), a.names, stored=a.compare.resolve())
        made = a.names or list(SETS)
        keep = {f"{n}{s}" for n in made for s in (".json", ".xml", ".txt")} | {"machine.json"}
        expected = Path(tempfile.mkdtemp(prefix="golden-expected-"))
        for f in a.compare.iterdir():  # the outputs, not the stored responses
            if f.name in keep:
                (expected / f.name).write_bytes(f.read_bytes())
        diff = first_difference(expected, Path(fresh))
    print(f"compared in {time.monotonic() - start:.0f} s", file=sys.stderr)
    if diff:
        print(f"golden outputs differ: {diff}")
        return 1
    print(f"golden outputs identical to {a.compare}")
    return 0


if __name__ == "__main__":
    sys.exit(main_())

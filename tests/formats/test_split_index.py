"""The first pass over a large JSON Lines set, split over worker processes, learns exactly what
one pass learns (the records a retry superseded, each record's token estimate and tally), and
any problem in the set is named by one pass, as before. The pass runs in a fresh interpreter
here: a process that already runs threads (a test session's servers) never forks."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from servecheck.formats.split_index import _ranges

SCRIPT = """
import json, sys
from pathlib import Path
from servecheck.checks.plausibility import counted
from servecheck.errors import InputError
from servecheck.formats import split_index
from servecheck.formats.stream import index, token_estimate

path = Path(sys.argv[1])
def learned():
    try:
        f = index(path, keep=0, tally=counted)
    except InputError as e:
        return {"error": str(e)}
    return {"read": f.read, "superseded": sorted(f.superseded), "sizes": list(f.sizes),
            "tallied": list(f.tallied), "tally": f.tally()}
split_index.MIN_BYTES = 0
parts = split_index.scan([path], 1 << 24, token_estimate, counted, min_bytes=0, workers=2)
split = learned()
one = split_index.scan
split_index.scan = lambda *a, **k: None
print(json.dumps({"split": split, "one": learned(), "ranges": None if parts is None else len(parts)}))
"""


def _run(path: Path, tmp_path: Path) -> dict:
    script = tmp_path / "both.py"
    script.write_text(SCRIPT)
    done = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, lite_responses: Path) -> Path:
    """3,000 records of a gateway log: the lite set again and again, ids reused so that a
    failed request's retry supersedes it, some records without ids, a BOM at the start."""
    base = json.loads(lite_responses.read_text())  # a JSON list
    lines = []
    for k in range(3000):
        r = dict(base[k % len(base)])
        r["id"] = f"req-{k // 3}" if k % 7 else None  # every third record shares an id
        if k % 3 == 0 and k % 7:
            r = {**r, "output": None, "error": "upstream timeout", "finish_reason": None}
        lines.append(json.dumps({key: v for key, v in r.items() if v is not None}))
    path = tmp_path_factory.mktemp("split") / "log.jsonl"
    path.write_bytes("\ufeff".encode() + ("\n".join(lines) + "\n").encode())
    return path


@pytest.mark.slow  # two fresh interpreters
def test_split_first_pass_learns_what_one_pass_learns(logged: Path, tmp_path: Path) -> None:
    got = _run(logged, tmp_path)
    assert got["ranges"] and got["ranges"] >= 1
    assert got["split"] == got["one"]
    assert got["one"]["read"] == 3000 and got["one"]["superseded"]  # retries did supersede


@pytest.mark.slow
def test_a_bad_record_mid_set_is_named_by_one_pass(logged: Path, tmp_path: Path) -> None:
    lines = logged.read_bytes().split(b"\n")
    lines[1700] = b'{"schema_version": 1, "id": "x", "conversations": 3}'
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b"\n".join(lines))
    got = _run(bad, tmp_path)
    assert got["ranges"] is None  # the split pass gave up, and one pass named the problem
    assert got["split"] == got["one"] and "line 1701" in got["split"]["error"]


@pytest.mark.slow
def test_a_torn_last_line_is_left_out_alike(logged: Path, tmp_path: Path) -> None:
    torn = tmp_path / "torn.jsonl"
    torn.write_bytes(logged.read_bytes() + b'{"schema_version": 1, "id": "cut')
    got = _run(torn, tmp_path)
    assert got["ranges"] and got["split"] == got["one"] and got["one"]["read"] == 3000


def test_ranges_cut_at_line_starts_and_cover_the_file(tmp_path: Path) -> None:
    path = tmp_path / "lines.jsonl"
    body = b"".join(b'{"n": %d, "pad": "%s"}\n' % (k, b"x" * (k % 50)) for k in range(500))
    path.write_bytes(body)
    for parts in (1, 2, 7, 64, 1000):
        cuts = _ranges(path, parts)
        assert cuts[0][0] == 0 and cuts[-1][1] == len(body)
        assert all(a < b for a, b in cuts)
        assert all(b == c for (_, b), (c, _) in itertools.pairwise(cuts))
        assert all(body[a - 1:a] == b"\n" for a, _ in cuts[1:])

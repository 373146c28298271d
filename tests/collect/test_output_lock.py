"""One writer per responses file: a second ``generate`` on the same ``--out`` is refused naming
the first, and a first killed with SIGKILL leaves no lock behind to block the rerun.

Every process here is real: a second process holding the lock (a short script, or a real
``generate`` against the in-process ``hf:builtin`` model) and this one trying to write. The
fast tests' target is a fake that counts what it is asked: what matters is that nothing is sent.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from servecheck.formats.output_lock import lock_path
from servecheck.formats.prompts import expand
from servecheck.formats.responses import read_records

HOLD = """
import sys
from pathlib import Path
from servecheck.formats.output_lock import OutputLock
with OutputLock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def _prompts(tmp_path: Path, n: int, max_tokens: int = 4) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompt": [f"Count from 1 to {k + 5}." for k in range(n)],
                                "max_tokens": max_tokens}))
    return path


def _holder(root: Path, out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], cwd=root, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_writer_is_refused_naming_the_first(
        tmp_path: Path, root: Path, run_cli, counting,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _prompts(tmp_path, 4), tmp_path / "r.jsonl"
    out.write_text("")
    holder = _holder(root, out)
    try:
        code = run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                       "--no-progress")
    finally:
        holder.communicate("")  # let go
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"servecheck: error: {out}: another servecheck generate (pid "
                          f"{holder.pid} on {socket.gethostname()}, since ")
    assert err.rstrip().endswith("is writing this file; wait for it or name another --out")
    assert counting.asked == [] and out.read_text() == ""
    assert not lock_path(out).exists()  # the holder removed its own lock file

    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0  # once it let go
    assert len(read_records(out)) == 4 and not lock_path(out).exists()


def _generate(root: Path, prompts: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "servecheck.cli", "generate", str(prompts),
                             "--target", "hf:builtin", "--out", str(out), "--no-progress"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_lines(out: Path, n: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and len(out.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{out} did not reach {n} lines ({proc.poll()=})")


@pytest.mark.slow  # a real generate of 32 answers, with a second run started in the middle
def test_two_generate_runs_on_one_file_lose_nothing(tmp_path: Path, root: Path,
                                                     run_cli) -> None:
    # The first run is paused (SIGSTOP) once it has written three answers, so the second
    # (a fresh interpreter importing servecheck) meets it mid-run however fast the machine is;
    # a race on speed alone once let the first finish first on CI.
    prompts, out = _prompts(tmp_path, 32, max_tokens=24), tmp_path / "r.json"
    first = _generate(root, prompts, out)
    try:
        _wait_lines(out, 3, first)
        os.kill(first.pid, signal.SIGSTOP)
        try:
            running = first.poll() is None
            second = subprocess.run([sys.executable, "-m", "servecheck.cli", "generate",
                                     str(prompts), "--target", "hf:builtin", "--out", str(out),
                                     "--no-progress"], cwd=root, capture_output=True, text=True,
                                    timeout=120)
        finally:
            os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert running, "the first run ended before the second started: no overlap was tested"
    assert second.returncode == 2, second.stdout + second.stderr
    assert f"another servecheck generate (pid {first.pid} on " in second.stderr
    assert first.returncode == 0, stdout + stderr
    records = json.loads(out.read_text())  # whole: one JSON array, each request once
    assert sorted(r["id"] for r in records) == sorted(r.id for r in expand(prompts))
    assert not any(r.get("error") for r in records) and not lock_path(out).exists()


@pytest.mark.slow  # a real generate, killed with SIGKILL mid-run, then resumed
def test_a_killed_writer_leaves_no_lock_behind(tmp_path: Path, root: Path, run_cli,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _prompts(tmp_path, 24, max_tokens=24), tmp_path / "r.jsonl"
    first = _generate(root, prompts, out)
    try:
        _wait_lines(out, 3, first)
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate(timeout=60)
    assert first.returncode == -signal.SIGKILL
    kept = {r.id: r.output for r in read_records(out)}
    assert 3 <= len(kept) < 24
    stale = json.loads(lock_path(out).read_text())  # the file stays; the flock went with it
    assert stale["pid"] == first.pid

    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0
    said = capsys.readouterr().out
    assert f"{24 - len(kept)} new record(s), {len(kept)} already answered" in said
    final = read_records(out)
    assert sorted(r.id for r in final) == sorted(r.id for r in expand(prompts))
    assert all(kept[r.id] == r.output for r in final if r.id in kept)  # resumed, not redone
    assert not lock_path(out).exists()

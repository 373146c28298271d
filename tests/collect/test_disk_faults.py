"""A full or read-only disk during ``generate``: the run stops sending the moment a record cannot
be kept, says which path and why on one line (exit 2), and leaves what was written readable.

The target is a fake that counts what it is asked (a test double: what matters is how many
requests go out, not what answers them). A full disk cannot be provoked on demand, so its test
double is the output file opened through a quota that raises ``ENOSPC`` once a set number of
bytes is used, as the kernel does. A read-only directory is real where permissions apply; as
root (who ignores them) the same fault is simulated by refusing, with ``EROFS``, every open for
writing under that directory.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from servecheck.formats.prompts import expand
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records


class _Quota:
    """A text file on a disk with ``room`` bytes left: what does not fit raises ENOSPC, after
    writing the part that fits (as a short write on a full disk leaves it)."""

    def __init__(self, fh, room: int) -> None:
        self._fh, self.room = fh, room

    def write(self, text: str) -> int:
        size = len(text.encode("utf-8"))
        if size > self.room:
            self._fh.write(text.encode("utf-8")[:self.room].decode("utf-8", "ignore"))
            self.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= size
        return self._fh.write(text)

    def __getattr__(self, name: str):
        return getattr(self._fh, name)

    def __enter__(self) -> _Quota:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _prompts(tmp_path: Path, n: int) -> Path:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps({"prompt": [f"Say {k}." for k in range(n)], "max_tokens": 4}))
    return path


def _generate(run_cli, prompts: Path, out: Path) -> int:
    return run_cli("generate", prompts, "--target", "fake:counting", "--out", out,
                   "--no-progress")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_full_disk_stops_the_run_and_keeps_what_was_written(
        suffix: str, tmp_path: Path, run_cli, counting,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _prompts(tmp_path, 40), tmp_path / f"r{suffix}"
    first = expand(prompts)[0]
    sample = ResponseRecord(id=first.id, conversations=first.conversation,
                            parameters=first.parameters, target="fake:counting", input="in",
                            output="Hello.<end_of_turn>")
    per_record = len(sample.model_dump_json(exclude_none=True)) + 2  # with ",\n"
    real_open = Path.open

    def on_a_small_disk(self: Path, mode: str = "r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return _Quota(fh, int(per_record * 3.5)) if self == out and "a" in mode else fh

    monkeypatch.setattr(Path, "open", on_a_small_disk)
    code = _generate(run_cli, prompts, out)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"servecheck: error: {out}: cannot write (No space left on device): "
                          f"stopped sending; the 3 record(s) written before it are kept; free "
                          f"space and run the same command to resume")
    assert len(counting.asked) == 4, "requests went on after the disk was full"
    kept = read_records(out)  # the torn fourth is left out, the three before it are whole
    assert [r.id for r in kept] == counting.asked[:3]
    assert not list(tmp_path.glob(".*.lock"))

    monkeypatch.setattr(Path, "open", real_open)  # space freed: the same command resumes
    counting.asked.clear()
    assert _generate(run_cli, prompts, out) == 0
    assert len(counting.asked) == 37
    assert sorted(r.id for r in read_records(out)) == sorted(r.id for r in expand(prompts))


def test_a_disk_full_before_the_first_record_leaves_no_file(
        tmp_path: Path, run_cli, counting, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _prompts(tmp_path, 5), tmp_path / "r.json"
    real_open = Path.open

    def full(self: Path, mode: str = "r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return _Quota(fh, 0) if self == out and "a" in mode else fh

    monkeypatch.setattr(Path, "open", full)
    assert _generate(run_cli, prompts, out) == 2
    assert "the 0 record(s) written before it are kept" in capsys.readouterr().err
    assert counting.asked == [expand(prompts)[0].id]
    assert not out.exists()  # no empty file for a reader to trip on


def _read_only(directory: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``directory`` read-only: for real, or, as root, every open for writing under it refused
    with EROFS (the same answer a read-only mount gives)."""
    if os.geteuid() != 0:
        directory.chmod(0o555)
        return
    real_os_open, real_open = os.open, Path.open

    def refuse(path: object) -> None:
        if Path(os.fspath(path)).parent == directory:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def path_open(self: Path, mode: str = "r", *args, **kwargs):
        if any(c in mode for c in "wax+"):
            refuse(self)
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(Path, "open", path_open)


@pytest.mark.parametrize("existing", [False, True])
def test_a_read_only_directory_is_refused_before_anything_is_sent(
        existing: bool, tmp_path: Path, run_cli, counting,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    prompts, ro = _prompts(tmp_path, 5), tmp_path / "ro"
    ro.mkdir()
    out = ro / "r.jsonl"
    if existing:  # half a run's records already there: kept as they are
        requests = expand(prompts)[:2]
        out.write_text("".join(ResponseRecord(
            id=r.id, conversations=r.conversation, parameters=r.parameters,
            target="fake:counting", output="Hi.").model_dump_json(exclude_none=True) + "\n"
            for r in requests))
    before = out.read_bytes() if existing else None
    _read_only(ro, monkeypatch)
    try:
        code = _generate(run_cli, prompts, out)
    finally:
        ro.chmod(0o755)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"servecheck: error: {out}: cannot write (")
    assert "nothing was sent; make it writable (or name another --out)" in err
    assert counting.asked == []
    assert (out.read_bytes() if existing else out.exists()) == (before if existing else False)
    assert sorted(p.name for p in ro.iterdir()) == (["r.jsonl"] if existing else [])


def test_a_disk_full_at_compaction_leaves_the_file_whole(
        tmp_path: Path, run_cli, counting, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every answer is in; only the rewrite without superseded errors finds no room: the file
    stays as it was (read the same), and no half-written copy is left beside it."""
    prompts, out = _prompts(tmp_path, 4), tmp_path / "r.jsonl"
    out.write_text("".join(ResponseRecord(
        id=r.id, conversations=r.conversation, parameters=r.parameters, target="fake:counting",
        error="refused").model_dump_json(exclude_none=True) + "\n" for r in expand(prompts)[:2]))
    real_open = Path.open

    def full(self: Path, mode: str = "r", *args, **kwargs):
        fh = real_open(self, mode, *args, **kwargs)
        return _Quota(fh, 0) if self.name.endswith(".compacting") else fh

    monkeypatch.setattr(Path, "open", full)
    assert _generate(run_cli, prompts, out) == 2
    err = capsys.readouterr().err
    assert err == (f"servecheck: error: {out}: cannot rewrite it without its 2 superseded error "
                   f"record(s) (No space left on device): the file is whole as it is, and read "
                   f"as it is\n")
    assert len(counting.asked) == 4
    assert all(r.error is None for r in read_records(out)) and len(read_records(out)) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.json", "r.jsonl"]

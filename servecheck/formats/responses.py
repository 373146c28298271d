"""responses.json on disk: appended record by record, read back whatever state it was left in.

A run can die at any moment (Ctrl-C, a killed server, a full disk), so every record is written
and flushed as soon as it exists, one per line. ``.jsonl`` files are plain JSON Lines. ``.json``
files are a JSON array written one element per line: the closing ``]`` is added when the run
ends and removed again when a rerun appends, and a file left without it is still read. Reading
takes the last record per id, so a retried request replaces its earlier error and nothing is
counted twice.

Records are flushed to the OS as they are written (the collector batches a burst, flushing at
most 50 ms after its first record), which is what survives a killed process; ``fsync``
(surviving a power cut too) runs at most every ``FSYNC_EVERY_S`` and on close, because one per
record costs more than the request itself against a fast server.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path
from types import TracebackType

from servecheck.errors import InputError
from servecheck.formats.answers import latest
from servecheck.formats.files import read_text
from servecheck.formats.raw import MAX_RECORD_BYTES, torn
from servecheck.formats.records import ResponseRecord
from servecheck.formats.stream import index

__all__ = ["FSYNC_EVERY_S", "ResponseWriter", "WriteFailed", "compact", "read_records"]

FSYNC_EVERY_S = 1.0


def read_records(path: Path, max_record_bytes: int = MAX_RECORD_BYTES) -> list[ResponseRecord]:
    """Validated records, the last answer per id kept (ids absent in foreign files: all kept).
    An answer is one record, or the records of its ``n`` choices (``choice`` 0, 1, …)."""
    return _answers(path, max_record_bytes)[1]


def _answers(path: Path, max_bytes: int) -> tuple[int, list[ResponseRecord]]:
    """How many records the set holds, superseded ones included, and its current answers: the
    stream's first pass with every record held, as a set small enough to hold is read once."""
    found = index(path, max_bytes, keep=sys.maxsize)
    assert found.held is not None  # none is too many to hold
    return found.read, latest(found.held)


def _drop_torn_tail(path: Path) -> str:
    """Cut a half-written last line (a run killed mid-write) so appends stay parseable."""
    text = read_text(path)
    body, _, last = text.rstrip("\n").rpartition("\n")
    s = last.strip().strip(",")
    if s in ("", "[", "]"):
        return text
    try:
        json.loads(s)
    except json.JSONDecodeError:
        if not torn(last, True, text.endswith("\n")):
            raise InputError(f"line {body.count(chr(10)) + 2 if body else 1} is not valid JSON; "
                             f"fix or move the file before appending to it",
                             where=str(path)) from None
        text = body + "\n" if body else ""
        path.write_text(text, encoding="utf-8")
    return text


def compact(path: Path) -> int:
    """Rewrite a finished file without the records a retry superseded (an error, then its
    answer), so plain JSON readers see each request once. Atomic: a new file beside it, fsynced,
    then renamed over it; a crash leaves the old file or the new one, never half of either.
    Returns how many records were dropped. Run it under ``OutputLock``: a writer appending to
    the old file while it is renamed away would lose what it appends."""
    if not path.exists():
        return 0
    read, records = _answers(path, MAX_RECORD_BYTES)
    dropped = read - len(records)
    if dropped <= 0:
        return 0
    array = read_text(path).lstrip().startswith("[")
    tmp = path.with_name(f".{path.name}.compacting")
    try:
        with tmp.open("w", encoding="utf-8") as fh:
            lines = [r.model_dump_json(exclude_none=True) for r in records]
            fh.write("[\n" + ",\n".join(lines) + "\n]\n" if array else "\n".join(lines) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot rewrite it without its {dropped} superseded error record(s) "
                         f"({_reason(e)}): the file is whole as it is, and read as it is",
                         where=str(path)) from None
    return dropped


def _reason(e: OSError) -> str:
    if e.errno:
        return e.strerror or os.strerror(e.errno)
    return str(e) or type(e).__name__


class WriteFailed(Exception):
    """Writing ``path`` failed (a full or read-only disk, a lost permission): nothing more can
    be kept, so whoever produces records must stop. ``kept``: records flushed before it."""

    def __init__(self, path: Path, error: OSError, kept: int) -> None:
        self.path, self.error, self.kept = path, error, kept
        self.reason = _reason(error)
        super().__init__(f"{path}: cannot write ({self.reason})")


class ResponseWriter:
    """Appends records to ``path`` durably; see the module docstring for the on-disk shape.

    The file is opened (created, or reopened for appending) only when the first record comes, so
    a run that writes nothing leaves no empty file. Any ``OSError`` writing it is raised as
    ``WriteFailed``, and after one the writer writes nothing more (what is on disk stays)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.array = path.suffix != ".jsonl"
        self.kept = 0
        """Records handed to the OS (flushed): what survives this process."""
        self._written = 0
        self._fh: io.TextIOWrapper | None = None
        self._failed: WriteFailed | None = None
        self._created = False
        self._empty = True
        self._synced = 0.0

    def _open(self) -> None:
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._created = not path.exists()
        existing = "" if self._created else _drop_torn_tail(path)
        if self.array and existing.strip() and not existing.lstrip().startswith("["):
            self.array = False  # an existing JSON Lines file keeps its shape
        if self.array and existing.rstrip().endswith("]"):
            # Reopen a finished array: drop the closing bracket so records can follow.
            body = existing.rstrip()[:-1].rstrip()
            path.write_text(body + "\n", encoding="utf-8")
            existing = body
        self._empty = not existing.strip() or existing.strip() == "["
        self._fh = path.open("a", encoding="utf-8")
        if self.array and not existing.strip():
            self._fh.write("[\n")

    def _fail(self, e: OSError) -> WriteFailed:
        fh, self._fh = self._fh, None
        if fh is not None:
            try:
                fh.close()  # what it still holds reaches the file, where there is room
                self.kept = self._written
            except OSError:
                pass  # it did not fit either: the file ends torn, which a reader leaves out
        if self._created and not self._written:  # nothing of this run's in it: no file
            self.path.unlink(missing_ok=True)
        self._failed = WriteFailed(self.path, e, self.kept)
        return self._failed

    def write(self, record: ResponseRecord, flush: bool = True) -> None:
        """Append one record; ``flush=False`` leaves it to a ``flush()`` the caller schedules."""
        if self._failed:
            raise self._failed
        line = record.model_dump_json(exclude_none=True)
        try:
            if self._fh is None:
                self._open()
            assert self._fh is not None
            prefix = "," if self.array and not self._empty else ""
            self._fh.write(prefix + line + "\n")
        except OSError as e:
            raise self._fail(e) from e
        self._empty = False
        self._written += 1
        if flush:
            self.flush()

    def flush(self) -> None:
        """Into the OS: what survives a killed process. fsync at most every FSYNC_EVERY_S."""
        if self._failed:
            raise self._failed
        if self._fh is None:
            return
        try:
            self._fh.flush()
            self.kept = self._written
            if time.monotonic() - self._synced > FSYNC_EVERY_S:
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()
        except OSError as e:
            raise self._fail(e) from e

    def close(self) -> None:
        if self._fh is None or self._fh.closed:
            return
        try:
            if self.array:
                self._fh.write("]\n")
            self._fh.flush()
            self.kept = self._written
            os.fsync(self._fh.fileno())
            self._fh.close()
        except OSError as e:
            raise self._fail(e) from e

    def __enter__(self) -> ResponseWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None and issubclass(exc_type, WriteFailed):
            return  # already closed, as far as it could be
        self.close()

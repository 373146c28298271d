"""One writer per responses file: an exclusive lock held for a whole ``generate`` run.

Two runs on one ``--out`` once lost 123 of 200 answers with both exiting 0: one compacted the
file (a new file renamed over it) while the other went on appending to the old one, now
unlinked. So a run takes an ``flock`` on a sidecar ``.NAME.lock`` beside the file before it
reads what is there, and holds it through compaction; a second run is refused at once, naming
the holder the lock file records (pid, host, start). The OS releases an ``flock`` when its
holder dies, even by ``kill -9``, so a stale lock file never blocks a rerun. The holder removes
the lock file when done, having checked that the name still points at the file it locked; a
taker that finds the name moved under it tries again, so two runs never both hold it.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

from servecheck.errors import InputError

try:
    import fcntl
except ImportError:  # not POSIX: no lock, as before
    fcntl = None  # type: ignore[assignment]


def lock_path(out: Path) -> Path:
    return out.with_name(f".{out.name}.lock")


class OutputLock:
    """``with OutputLock(out):`` the one writer of ``out``; ``InputError`` when another holds it.
    An ``OSError`` making the lock file (a read-only directory) is raised as it is: the caller
    names it as the write failure it is."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.path = lock_path(out)
        self._fd: int | None = None

    def acquire(self) -> None:
        if fcntl is None:
            return
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(10):  # the name moved between open and flock: a holder just let go
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                raise InputError(f"another servecheck generate ({holder}) is writing this file; "
                                 f"wait for it or name another --out", where=str(self.out)) \
                    from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                self._fd = fd
                self._describe(fd)
                return
            os.close(fd)
        raise InputError(f"its lock file {self.path} keeps changing under this run; wait for "
                         f"the other writer or name another --out", where=str(self.out))

    @staticmethod
    def _describe(fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):  # still ours: remove it before letting go
                self.path.unlink(missing_ok=True)
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _holder(fd: int) -> str:
    """Who holds the lock, as its lock file says (it may not have written it yet)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return f"pid {int(info['pid'])} on {_plain(info['host'])}, since {_plain(info['since'])}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not yet recorded"


def _plain(value: object) -> str:
    """A field of the lock file, safe to print on the one line of an error."""
    return "".join(c if c.isprintable() else "?" for c in str(value))[:80]


__all__ = ["OutputLock", "lock_path"]

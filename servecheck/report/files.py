"""Writing a report file whole or not at all.

A CI job that keeps the artifact of a failed run must not keep half of it: a truncated HTML
page or a 0-byte JSON summary looks like a result and is not one. So every report (the JSON
summary, the HTML pages, JUnit, the probe's results) is written to a temporary file beside its
destination and moved over it with ``os.replace`` only once complete; a failure on the way (a
full disk, an encoding error, Ctrl-C) removes the temporary file and leaves the destination as it
was. A destination that is not a regular file (``/dev/stdout``, a pipe) cannot be replaced and
is written in place.

The OS refusing (a read-only directory, no space, a parent that is a file) is bad output
input, not a bug: an ``InputError`` naming the path and the OS's reason, exit 2 in one line.
Model text may hold lone surrogates (a JSON ``\\ud800`` escape), which UTF-8 cannot encode:
they are written as that escape (``backslashreplace``), so the file is valid UTF-8 and, in JSON,
the same string again.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO

from servecheck.errors import InputError

__all__ = ["cannot_write", "replacing", "write_text"]


def cannot_write(path: Path | str, e: OSError) -> InputError:
    """The one-line error for ``path``: ``DIR/report.html: cannot write (Read-only file system)``."""
    return InputError(f"cannot write ({e.strerror or e})", where=str(path))


def _remove(path: Path) -> None:
    with suppress(FileNotFoundError):
        path.unlink()


def _in_place(path: Path) -> bool:
    """A destination to write through rather than replace: a device or a descriptor
    (``/dev/stdout``, ``/proc/self/fd/1``: replacing would swap the link, not write to the
    stream), or anything else that exists and is not a regular file (a FIFO)."""
    absolute = os.path.abspath(path)
    return Path(absolute).parts[1:2] in (("dev",), ("proc",)) or \
        (os.path.exists(absolute) and not os.path.isfile(absolute))


@contextmanager
def replacing(path: Path) -> Iterator[BinaryIO]:
    """A binary file whose content replaces ``path`` when the block ends without an error."""
    if _in_place(path):
        try:
            with open(path, "wb") as f:
                yield f
        except OSError as e:
            raise cannot_write(path, e) from None
        return
    target = Path(os.path.realpath(path))  # a symlink's target is replaced, not the link
    tmp = target.with_name(f".{target.name[:200]}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask's mode
    except FileExistsError:  # mkdir's word for a parent that is a file
        raise cannot_write(path, NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                                    str(target.parent))) from None
    except OSError as e:
        raise cannot_write(path, e) from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _remove(tmp)
        raise cannot_write(path, e) from None
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    """``text`` as UTF-8 at ``path``, whole or not at all; a lone surrogate as its escape."""
    data = text.encode("utf-8", "backslashreplace")
    with replacing(path) as f:
        f.write(data)

"""What a chunked run keeps between runs: each chunk's verdicts (and, for the chunk the report
shows, the part of the page drawn from its records), in a directory of this user's alone. A
rerun takes a chunk's verdicts only where its records, options and servecheck's version are the
same (the digest), and reads them as data: a file planted there runs no code (``saved_state``).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servecheck.checks.core.conventions import ConventionFit
from servecheck.checks.core.digest import RecordFacts
from servecheck.checks.core.results import CheckResult
from servecheck.errors import InputError
from servecheck.workflows.saved_state import StateError, dumps, loads

__all__ = ["Saved", "load", "private_dir", "save"]


@dataclass(frozen=True)
class Saved:
    fingerprint: str
    first: int
    records: int
    results: list[CheckResult]
    convention: ConventionFit
    tokens: dict[str, int]
    facts: RecordFacts = field(default_factory=RecordFacts)
    """What the chunk's records hold (for the digest's blind spots)."""
    flagged: tuple[str, ...] = ()
    """The records its findings name (for the digest's worst records)."""
    evidence: dict[str, Any] = field(default_factory=dict)
    """The pooled checks' evidence of its records (``checks.core.registry.Pooling``), by check."""
    shown: str = ""
    """Where the report shows this chunk: what ``report.html.outputs`` drew of its records, so
    a resumed run lays the page around it without reading and scoring the chunk again."""


log = logging.getLogger("servecheck")


def _file(directory: Path, chunk: int) -> Path:
    return directory / f"chunk-{chunk:05d}.json"


def load(directory: Path, chunk: int, digest: str) -> Saved | None:
    """A chunk's saved verdicts, or None: absent, of other records or options, or not a file
    this servecheck wrote (then with a warning naming it; the chunk is checked again)."""
    file = _file(directory, chunk)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        log.warning("%s: cannot read saved verdicts (%s): checking chunk %d again", file, e,
                    chunk + 1)
        return None
    try:
        saved = loads(text)
        if not isinstance(saved, Saved):
            raise StateError(f"holds a {type(saved).__name__}, not a chunk's verdicts")
    except StateError as e:
        log.warning("%s: not saved verdicts of this servecheck (%s): checking chunk %d again",
                    file, e, chunk + 1)
        return None
    return saved if saved.fingerprint == digest else None


def save(directory: Path, chunk: int, saved: Saved) -> None:
    """Atomically: a crash leaves the old file or the new one, never half of either."""
    try:
        text = dumps(saved)
    except TypeError as e:  # a result holding a type the codec does not know: a servecheck bug
        log.warning("chunk %d's verdicts cannot be saved (%s): a rerun checks it again",
                    chunk + 1, e)
        return
    tmp = directory / f".chunk-{chunk:05d}.{os.getpid()}.tmp"
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, _file(directory, chunk))


def private_dir(directory: Path) -> Path:
    """The state directory, created for this user alone (0700) where it is missing. One that
    another user owns, or that group or others may write to, is bad input: whoever can write
    there decides which verdicts a resumed run reports as already checked."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for p in reversed(missing):
        try:
            p.mkdir(mode=0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise InputError(f"cannot create the check state directory ({e.strerror}); name "
                             f"another with --state", where=str(directory)) from None
    info = directory.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise InputError("the check state path is not a directory; name another with --state",
                         where=str(directory))
    me = os.geteuid() if hasattr(os, "geteuid") else info.st_uid
    if info.st_uid != me:
        raise InputError(f"the check state directory is owned by uid {info.st_uid}, not by you "
                         f"(uid {me}): its saved verdicts would be taken on trust; name a "
                         f"directory of your own with --state", where=str(directory))
    if info.st_mode & 0o022:
        raise InputError(f"the check state directory is writable by group or others (mode "
                         f"{stat.S_IMODE(info.st_mode):o}): anyone who can write there decides "
                         f"what a resumed run reports; run 'chmod go-w {directory}' or name "
                         f"another with --state", where=str(directory))
    return directory

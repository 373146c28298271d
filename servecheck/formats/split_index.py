"""The first pass over a large JSON Lines set, in worker processes.

Validating a record (parsing its JSON, building the typed record) costs about 0.045 ms on one
core, so the first pass over a million records takes 45 s on one core whatever the GPU does. The
pass keeps only a few numbers a record (its token estimate, whether the per-record bound counts
it, its id and choice), so it splits well: each JSON Lines file is cut into byte ranges at line
ends, worker processes validate the ranges, and they hand back those numbers, never the records
(pickling a record costs as much as validating it). Which answer supersedes which is decided
afterwards, in reading order, exactly as one pass decides it (``stream.index``).

Any problem in a range (a line that is not JSON, a record that does not validate) sends the
whole pass back to one process, which names it as it always has, with every other problem of
the file: this path only ever speeds up input that is fine. Workers are forked, so they share
the parent's imports and the string hashes its ids are kept by; a process that already runs
threads or has CUDA up is never forked (``can_fork``), and reads its set in one pass instead.
"""

from __future__ import annotations

import io
import math
import os
import sys
import threading
from array import array
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from servecheck.errors import InputError
from servecheck.formats.answers import validate_record
from servecheck.formats.raw import first_char, parse_lines
from servecheck.formats.records import ResponseRecord

__all__ = ["MIN_BYTES", "Scanned", "can_fork", "scan"]

MIN_BYTES = 32 << 20
"""Sets smaller than this (some 30,000 records of a chat log) are read in one pass: forking
workers and reading the set again for a check in one piece would cost more than it saves."""
RANGE_BYTES = 4 << 20
"""About how much of a file one task reads: ranges a few times more than the workers, so that
a slow one does not hold the rest."""
MAX_WORKERS = 16


@dataclass
class Scanned:
    """What one range's records leave for the first pass, in reading order."""

    sizes: array = field(default_factory=lambda: array("I"))
    tallied: array = field(default_factory=lambda: array("B"))
    answers: list[tuple[str | None, int | None]] = field(default_factory=list)
    """Each record's request id (None: it has none) and choice."""
    failed: bool = False
    """A record here does not read or validate: the pass is made again in one process."""


def can_fork() -> bool:
    """Whether this process may fork workers: on Linux, with no other thread running and CUDA
    not initialized (a forked child of either can hang or crash)."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return False
    torch = sys.modules.get("torch")
    return torch is None or not torch.cuda.is_initialized()


def _workers() -> int:
    cores = len(os.sched_getaffinity(0))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))  # torchrun ranks share the host
    return max(1, min(MAX_WORKERS, cores // max(1, local)))


def _ranges(path: Path, parts: int) -> list[tuple[int, int]]:
    """``path`` cut into about ``parts`` byte ranges, each ending at a line end (or the file's)."""
    size = path.stat().st_size
    cuts = [0]
    with path.open("rb") as fh:
        for k in range(1, parts):
            at = max(cuts[-1], size * k // parts)
            fh.seek(at)
            fh.readline()  # on to the start of the next line
            if fh.tell() >= size:
                break
            if fh.tell() > cuts[-1]:
                cuts.append(fh.tell())
    return [(a, b) for a, b in zip(cuts, [*cuts[1:], size], strict=True)]


def _scan(shard: Path, start: int, end: int, max_bytes: int, measure: Callable[[ResponseRecord], int],
          tally: Callable[[ResponseRecord], bool] | None) -> Scanned:
    out = Scanned()
    with shard.open("rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    try:
        # the lines as ``files.text_lines`` reads them: split at b"\n", a BOM dropped at the start
        lines = (raw.decode("utf-8-sig" if start == 0 and n == 0 else "utf-8")
                 for n, raw in enumerate(io.BytesIO(data)))
        for n, obj in parse_lines(lines, shard, max_bytes, warn=end >= shard.stat().st_size):
            rec = validate_record(obj, f"{shard} line {n} of bytes {start}–{end}")
            out.sizes.append(measure(rec))
            out.tallied.append(bool(tally and tally(rec)))
            out.answers.append((rec.id or None, rec.choice))
    except Exception:  # whatever it is, one pass names it as it always has
        return Scanned(failed=True)
    return out


def scan(shards: list[Path], max_bytes: int, measure: Callable[[ResponseRecord], int],
         tally: Callable[[ResponseRecord], bool] | None, min_bytes: int | None = None,
         workers: int | None = None) -> list[Scanned] | None:
    """Every record's numbers (``measure``: its token estimate; ``tally``: whether the
    per-record bound counts it), range by range in reading order; None where the set is to be
    read in one pass (small, not all plain JSON Lines, no second core, no safe fork, or a
    problem somewhere in it)."""
    workers = workers or _workers()
    min_bytes = MIN_BYTES if min_bytes is None else min_bytes
    try:
        plain = all(not s.name.endswith((".gz", ".parquet")) and s.is_file() and
                    first_char(s, False) == "{" for s in shards)
        total = sum(s.stat().st_size for s in shards) if plain else 0
    except (InputError, OSError, UnicodeDecodeError):
        return None
    if not plain or total < min_bytes or workers < 2 or not can_fork():
        return None
    tasks = [(s, a, b) for s in shards
             for a, b in _ranges(s, max(1, math.ceil(s.stat().st_size / RANGE_BYTES)))]
    import multiprocessing

    try:
        with ProcessPoolExecutor(min(workers, len(tasks)),
                                 mp_context=multiprocessing.get_context("fork")) as pool:
            done = list(pool.map(_scan, *zip(*tasks, strict=True), [max_bytes] * len(tasks),
                                 [measure] * len(tasks), [tally] * len(tasks)))
    except (OSError, RuntimeError):  # no processes to be had here: one pass, as before
        return None
    return None if any(d.failed for d in done) else done

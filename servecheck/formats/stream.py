"""Responses read as a stream, for a day of gateway logs: records in bounded memory, in order.

Holding a whole responses set is right for a prompts matrix and wrong for millions of logged
records, so a set is read in two passes. The first (``index``) validates every record and keeps,
per request id, only where its current answer lies, so bad input anywhere is named before any
scoring starts and a retry later in the logs still supersedes an earlier error; it holds the
records too while they are few (``keep``), and a set checked in one piece is then read once
(``read_records`` is this pass, every record held). The second pass (``records``) yields the
winning records one at a time. The file formats are read by ``formats.raw``.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from servecheck.errors import InputError
from servecheck.formats import split_index
from servecheck.formats.answers import supersedes, validate_record
from servecheck.formats.raw import MAX_RECORD_BYTES, located
from servecheck.formats.records import ResponseRecord
from servecheck.formats.shards import is_sharded, shard_paths

log = logging.getLogger("servecheck")


@dataclass
class StreamIndex:
    """What the first pass learns: the shards, and which records a later answer superseded."""

    path: Path
    shards: list[Path]
    read: int = 0
    """Records read, superseded ones included."""
    superseded: set[int] = field(default_factory=set)
    """Positions (in reading order) of records a later answer to the same request replaced."""
    sizes: array = field(default_factory=lambda: array("I"))
    """Per record read, about how many tokens it holds (its ids where it has them, else a
    character count over 4): what a chunk of it will cost to score and keep."""
    held: list[ResponseRecord] | None = None
    """Every record as validated, where the set was small enough to keep (``index``'s
    ``keep``): a set checked in one piece is then read once."""
    tallied: array = field(default_factory=lambda: array("B"))
    """Per record read, whether ``index``'s ``tally`` counted it."""

    @property
    def records(self) -> int:
        """The records a check sees."""
        return self.read - len(self.superseded)

    def tally(self) -> int:
        """How many of the records a check sees ``index``'s ``tally`` counted."""
        return sum(1 for position, counted in enumerate(self.tallied)
                   if counted and position not in self.superseded)

    def plan(self, records: int, tokens: int) -> list[int]:
        """How many kept records each chunk takes: at most ``records``, and no more tokens
        than ``tokens`` (a record longer than that is a chunk of its own)."""
        chunks: list[int] = []
        n = size = 0
        for position, cost in enumerate(self.sizes):
            if position in self.superseded:
                continue
            if n and (n == records or size + cost > tokens):
                chunks.append(n)
                n = size = 0
            n, size = n + 1, size + cost
        return [*chunks, n] if n else chunks


def token_estimate(rec: ResponseRecord) -> int:
    prompt = len(rec.prompt_token_ids) if rec.prompt_token_ids else len(rec.input or "") // 4
    output = len(rec.output_token_ids) if rec.output_token_ids else len(rec.output or "") // 4
    return prompt + output + 1


def index(path: Path, max_bytes: int = MAX_RECORD_BYTES, keep: int = 0,
          tally: Callable[[ResponseRecord], bool] | None = None) -> StreamIndex:
    """Validate every record of a responses file or shard set, keeping per request id only the
    positions of its current answer (ids hashed: ~100 bytes per request, not the record), the
    records themselves while there are at most ``keep`` of them, and whether ``tally`` counts
    each (a byte a record: what a chunk needs to know of the whole set before it is checked).
    A large JSON Lines set is validated in worker processes (``split_index``), none held."""
    shards = shard_paths(path) if is_sharded(path) else [path]
    found = StreamIndex(path, shards, held=[] if keep else None)
    current: dict[int, list[tuple[int | None, int]]] = {}
    scanned = split_index.scan(shards, max_bytes, token_estimate, tally)
    if scanned is not None:
        found.held = None
        for part in scanned:
            found.sizes.extend(part.sizes)
            found.tallied.extend(part.tallied)
            for request, choice in part.answers:
                _answered(found, current, request, choice)
    else:
        for where, obj in located(shards, max_bytes):
            rec = validate_record(obj, where)
            found.sizes.append(token_estimate(rec))
            found.tallied.append(bool(tally and tally(rec)))
            if found.held is not None:
                found.held.append(rec)
                if len(found.held) > keep:
                    found.held = None  # too many to hold: the second pass streams them
            _answered(found, current, rec.id, rec.choice)
    if not found.records:
        raise InputError("no records: the file holds only brackets and blank lines",
                         where=str(path))
    return found


def _answered(found: StreamIndex, current: dict[int, list[tuple[int | None, int]]],
              request: str | None, choice: int | None) -> None:
    """The next record read answers ``request`` (its id) with ``choice``: it supersedes the
    answer kept so far where it starts a new one (a retry after an error)."""
    position = found.read
    found.read += 1
    if not request:
        return  # no id (or an empty one): nothing can supersede it
    key = hash(request)  # 64 bits: a collision among 10M ids has odds ~3e-6
    answer = current.get(key, [])
    if supersedes(dict(answer), choice):
        found.superseded.update(p for _, p in answer)
        answer = []
    answer.append((choice, position))
    current[key] = answer


def records(found: StreamIndex, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[ResponseRecord]:
    """The second pass: every record the first pass kept, in reading order, one at a time."""
    position = 0
    for where, obj in located(found.shards, max_bytes, warn=False):
        if position >= found.read:  # appended since the first pass: not indexed
            log.warning("%s: records were added after it was first read (a log still being "
                        "written?); the check covers the %d read first", found.path, found.read)
            return
        if position not in found.superseded:
            yield validate_record(obj, where)
        position += 1
    if position < found.read:
        raise InputError(f"changed while it was read: {found.read} records the first time, "
                         f"{position} the second", where=str(found.path))


def fingerprint(recs: list[ResponseRecord]) -> str:
    """A digest of records' content: a chunk's saved statistics are reused only for the same
    records."""
    import hashlib

    h = hashlib.sha256()
    for r in recs:
        h.update(r.model_dump_json().encode())
    return h.hexdigest()[:32]


__all__ = ["StreamIndex", "fingerprint", "index", "records", "token_estimate"]

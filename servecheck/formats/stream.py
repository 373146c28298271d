"""Responses read as a stream, for a day of gateway logs: records in bounded memory, in order.

``read_records`` holds a whole responses set, which is right for a prompts matrix and wrong for
millions of logged records. Here a set is read twice. The first pass (``index``) validates every
record and keeps, per request id, only where its current answer lies, so bad input anywhere is
named before any scoring starts and a retry later in the logs still supersedes an earlier error.
The second pass (``records``) yields the winning records one at a time. JSON Lines (plain or
gzipped) and Parquet (by row group) stream; a JSON array is read whole, shard by shard.
"""

from __future__ import annotations

import gzip
import logging
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from servecheck.errors import InputError
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import (
    MAX_RECORD_BYTES,
    parse_lines,
    read_raw,
    supersedes,
    validate_record,
)
from servecheck.formats.shards import is_sharded, shard_paths

log = logging.getLogger("servecheck")


def _byte_lines(path: Path) -> Iterator[bytes]:
    """A file's lines as bytes, gunzipped where it ends in ``.gz``; unreadable files named."""
    if not path.exists():
        raise InputError("file not found", where=str(path))
    if not path.is_file():
        raise InputError("is a directory, not a file" if path.is_dir() else "not a regular file",
                         where=str(path))
    gz = path.name.endswith(".gz")
    try:
        with (gzip.open(path, "rb") if gz else path.open("rb")) as fh:
            yield from fh
    except (OSError, EOFError) as e:
        if not gz:
            raise
        raise InputError(f"not a readable gzip file ({e})", where=str(path)) from None


def _text_lines(path: Path) -> Iterator[str]:
    """The lines decoded as UTF-8 (a byte-order mark dropped), a bad byte named by line and
    offset as ``read_text`` names it."""
    offset = 0
    inside = " inside the gzip" if path.name.endswith(".gz") else ""
    for n, raw in enumerate(_byte_lines(path), start=1):
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8{inside}: byte 0x{raw[e.start]:02x} at offset "
                             f"{offset + e.start} (line {n}); save the file as UTF-8",
                             where=str(path)) from None
        offset += len(raw)


def _first_char(path: Path) -> str:
    for line in _text_lines(path):
        if line.strip():
            return line.lstrip()[:1]
    raise InputError("file is empty", where=str(path))


def _parquet_rows(path: Path) -> Iterator[tuple[str, object]]:
    from servecheck.formats.shards import _drop_nulls, parquet_rows, unreadable_parquet

    try:
        import pyarrow.parquet as pq

        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except ImportError:
        yield from parquet_rows(path)  # it names the missing extra
        return
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise unreadable_parquet(e, path) from None
    row = 0
    while True:
        try:  # a file whose footer reads but whose pages are damaged fails here, mid-file
            batch = next(batches, None)
            objs = [] if batch is None else batch.to_pylist()
        except Exception as e:
            raise unreadable_parquet(e, path, row) from None
        if batch is None:
            return
        for obj in objs:
            yield f"row {row}", _drop_nulls(obj)
            row += 1


def raw_stream(path: Path, max_bytes: int = MAX_RECORD_BYTES, warn: bool = True
               ) -> Iterator[tuple[str, object]]:
    """(location, object) pairs of one shard, as ``read_raw`` gives them, without holding the
    shard: JSON Lines line by line, Parquet by row group; a JSON array whole."""
    if path.name.endswith(".parquet"):
        yield from _parquet_rows(path)
        return
    head = _first_char(path)
    if head == "[":
        yield from read_raw(path, max_bytes)
        return
    if head != "{":
        yield from read_raw(path, max_bytes)  # it names what the file starts with
        return
    for n, obj in parse_lines(_text_lines(path), path, max_bytes, warn):
        yield f"line {n}", obj


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

    @property
    def records(self) -> int:
        """The records a check sees."""
        return self.read - len(self.superseded)

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


def index(path: Path, max_bytes: int = MAX_RECORD_BYTES, keep: int = 0) -> StreamIndex:
    """Validate every record of a responses file or shard set, keeping per request id only the
    positions of its current answer (ids hashed: ~100 bytes per request, not the record), and
    the records themselves while there are at most ``keep`` of them."""
    shards = shard_paths(path) if is_sharded(path) else [path]
    found = StreamIndex(path, shards, held=[] if keep else None)
    current: dict[int, list[tuple[int | None, int]]] = {}
    for shard in shards:
        for loc, obj in raw_stream(shard, max_bytes):
            rec = validate_record(obj, f"{shard} {loc}")
            position = found.read
            found.read += 1
            found.sizes.append(token_estimate(rec))
            if found.held is not None:
                found.held.append(rec)
                if len(found.held) > keep:
                    found.held = None  # too many to hold: the second pass streams them
            if not rec.id:
                continue  # no id (or an empty one): nothing can supersede it
            key = hash(rec.id)  # 64 bits: a collision among 10M ids has odds ~3e-6
            answer = current.get(key, [])
            if supersedes(dict(answer), rec.choice):
                found.superseded.update(p for _, p in answer)
                answer = []
            answer.append((rec.choice, position))
            current[key] = answer
    if not found.records:
        raise InputError("no records: the file holds only brackets and blank lines",
                         where=str(path))
    return found


def records(found: StreamIndex, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[ResponseRecord]:
    """The second pass: every record the first pass kept, in reading order, one at a time."""
    position = 0
    for shard in found.shards:
        for loc, obj in raw_stream(shard, max_bytes, warn=False):
            if position >= found.read:  # appended since the first pass: not indexed
                log.warning("%s: records were added after it was first read (a log still being "
                            "written?); the check covers the %d read first", found.path, found.read)
                return
            if position not in found.superseded:
                yield validate_record(obj, f"{shard} {loc}")
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


__all__ = ["StreamIndex", "fingerprint", "index", "raw_stream", "records"]

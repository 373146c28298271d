"""Responses in shards: a directory or a glob of JSON Lines (optionally gzip-compressed), JSON
lists and Parquet files with the same columns, read as one responses set.

A gateway's logs come as many files, compressed, and data teams keep them as Parquet. Each
shard is read by the same parser as a single responses file, so bad input anywhere names the
shard, the line (or Parquet row) and the field; shards are taken in sorted name order and, as in
one file, the last answer per request id wins.
"""

from __future__ import annotations

import glob
import gzip
from pathlib import Path

from servecheck.errors import InputError

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")
GLOB_CHARS = set("*?[")


def is_sharded(path: Path) -> bool:
    """A directory or a glob pattern, rather than one responses file."""
    return path.is_dir() or bool(GLOB_CHARS & set(str(path)))


def shard_paths(path: Path) -> list[Path]:
    """The shards a directory or glob names, sorted; none is bad input."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
        what = f"no responses shards ({', '.join('*' + s for s in SUFFIXES)}) in the directory"
    else:
        found = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
        what = "no file matches the pattern"
    if not found:
        raise InputError(what, where=str(path))
    return found


def shard_text(path: Path) -> str:
    """A JSON shard's text: gunzipped where it ends in ``.gz``, UTF-8 either way."""
    if not path.name.endswith(".gz"):
        from servecheck.formats.records import read_text

        return read_text(path)
    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as e:
        raise InputError(f"not a readable gzip file ({e})", where=str(path)) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 inside the gzip: byte 0x{data[e.start]:02x} at offset "
                         f"{e.start}", where=str(path)) from None


def parquet_rows(path: Path) -> list[tuple[str, object]]:
    """(location, record) for each row of a Parquet shard; null columns are left out, as in a
    JSON record that does not have the field."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading Parquet needs pyarrow: pip install 'servecheck[parquet]'",
                         where=str(path)) from None
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise unreadable_parquet(e, path) from None
    return [(f"row {i}", _drop_nulls(row)) for i, row in enumerate(rows)]


def unreadable_parquet(e: Exception, path: Path, row: int | None = None) -> InputError:
    """pyarrow's refusal, as one line: its messages run over several ("…footer.\nEither the
    file is corrupted…")."""
    what = "not a Parquet file" if "magic bytes" in str(e) else "not a readable Parquet file"
    at = f" after row {row - 1}" if row else ""
    reason = " ".join(str(e).split())[:200]
    return InputError(f"{what}{at} ({type(e).__name__}: {reason})", where=str(path))


def _drop_nulls(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value

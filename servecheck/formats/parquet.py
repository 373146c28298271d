"""Parquet shards, read by row group: a data team's export of a day of logs need not fit in
memory as one table, and one way of reading it, whatever the set's size, words every damaged
file the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from servecheck.errors import InputError

__all__ = ["parquet_rows"]


def parquet_rows(path: Path) -> Iterator[tuple[str, object]]:
    """(location, record) for each row of a Parquet shard; null columns are left out, as in a
    JSON record that does not have the field."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError("reading Parquet needs pyarrow: pip install 'servecheck[parquet]'",
                         where=str(path)) from None
    try:
        batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError kinds
        raise _unreadable(e, path) from None
    row = 0
    while True:
        try:  # a file whose footer reads but whose pages are damaged fails here, mid-file
            batch = next(batches, None)
            objs = [] if batch is None else batch.to_pylist()
        except Exception as e:
            raise _unreadable(e, path, row) from None
        if batch is None:
            return
        for obj in objs:
            yield f"row {row}", _drop_nulls(obj)
            row += 1


def _unreadable(e: Exception, path: Path, row: int | None = None) -> InputError:
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

"""Responses in shards: a directory or a glob of JSON Lines (optionally gzip-compressed), JSON
lists and Parquet files with the same columns, read as one responses set.

A gateway's logs come as many files, compressed, and data teams keep them as Parquet. Each
shard is read by the same parser as a single responses file, so bad input anywhere names the
shard, the line (or Parquet row) and the field; shards are taken in sorted name order and, as in
one file, the last answer per request id wins.
"""

from __future__ import annotations

import glob
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

"""A prompts or responses file's bytes as text, checked in one place: it must exist, be a file,
be readable gzip where it is gzipped, and be UTF-8, a bad byte named by offset and line.

A responses file is read line by line (a day of gateway logs does not fit in memory) and a
prompts file whole; the whole text is the lines joined, so every reader refuses a bad file in
the same words.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

from servecheck.errors import InputError

__all__ = ["read_text", "text_lines"]


def read_text(path: Path) -> str:
    """A file's whole text (a byte-order mark is allowed and dropped, as editors on Windows
    write one)."""
    return "".join(text_lines(path))


def text_lines(path: Path, gunzip: bool = False) -> Iterator[str]:
    """The lines as read (each with its newline, the last perhaps without), decoded as UTF-8
    after a byte-order mark; ``gunzip``: the file is gzip-compressed."""
    offset = 0
    inside = " inside the gzip" if gunzip else ""
    for n, raw in enumerate(_byte_lines(path, gunzip), start=1):
        try:
            yield raw.decode("utf-8-sig" if n == 1 else "utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8{inside}: byte 0x{raw[e.start]:02x} at offset "
                             f"{offset + e.start} (line {n}); save the file as UTF-8",
                             where=str(path)) from None
        offset += len(raw)


def _byte_lines(path: Path, gunzip: bool) -> Iterator[bytes]:
    if not path.exists():
        raise InputError("file not found", where=str(path))
    if not path.is_file():
        raise InputError("is a directory, not a file" if path.is_dir() else "not a regular file",
                         where=str(path))
    try:
        with (gzip.open(path, "rb") if gunzip else path.open("rb")) as fh:
            yield from fh
    except (OSError, EOFError) as e:
        if not gunzip:
            raise
        raise InputError(f"not a readable gzip file ({e})", where=str(path)) from None

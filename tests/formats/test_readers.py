"""One reader of the responses formats: a set read whole (``read_records``) and one read in two
passes (``index``, then ``records``) refuse a bad file in the same words; they once named a bad
byte in a gzipped shard, a missing one and a damaged Parquet file each in their own."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats.responses import read_records
from servecheck.formats.stream import index, records

GOOD = json.dumps({"id": "r1", "conversations": {"contents": [{"role": "user", "content": "Hi."}]},
                   "output": "Hello."}) + "\n"
BAD = b'{"x": "\xe9"}\n'
AT = 3 * len(GOOD.encode()) + BAD.index(b"\xe9")
"""Where the bad byte is, after three good lines."""


@pytest.mark.parametrize(("name", "data", "message"), [
    ("r.jsonl.gz", gzip.compress(GOOD.encode() * 3 + BAD),
     f"not UTF-8 inside the gzip: byte 0xe9 at offset {AT} (line 4); save the file as UTF-8"),
    ("r.jsonl", b"\xef\xbb\xbf" + GOOD.encode() * 3 + BAD,  # the byte-order mark counts
     f"not UTF-8: byte 0xe9 at offset {AT + 3} (line 4); save the file as UTF-8"),
    ("gone.jsonl.gz", None, "file not found"),
    ("r.parquet", b"not parquet at all\n", "not a Parquet file ("),
])
def test_the_whole_and_the_streamed_reader_refuse_alike(tmp_path: Path, name: str,
                                                        data: bytes | None, message: str) -> None:
    if name.endswith(".parquet"):
        pytest.importorskip("pyarrow")
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    said = []
    for read in (read_records, lambda p: list(records(index(p)))):
        with pytest.raises(InputError) as e:
            read(path)
        said.append(str(e.value))
    assert said[0] == said[1] and said[0].startswith(f"{path}: {message}")


def test_a_torn_line_of_an_open_array_is_warned_about_once(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """The second pass reads what the first warned about; it says nothing more."""
    path = tmp_path / "r.json"
    path.write_text("[\n" + GOOD + "," + GOOD.replace('"r1"', '"r2"') + "," + GOOD[:20])
    found = index(path)
    assert [r.id for r in records(found)] == ["r1", "r2"]
    assert caplog.text.count("line 4 is cut short") == 1

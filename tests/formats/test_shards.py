"""Responses in shards: a directory or a glob of JSON Lines, gzipped JSON Lines and Parquet read
as one set, equal to the same records in one file; bad input names the shard and the line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats.responses import read_records
from servecheck.formats.stream import index, records


def _lines(records) -> list[str]:
    return [r.model_dump_json(exclude_none=True) for r in records]


@pytest.fixture()
def shards(lite_responses: Path, tmp_path: Path) -> tuple[Path, list]:
    records = read_records(lite_responses)
    third = len(records) // 3
    out = tmp_path / "logs"
    out.mkdir()
    lines = _lines(records)
    (out / "a.jsonl").write_text("\n".join(lines[:third]) + "\n")
    (out / "b.jsonl.gz").write_bytes(gzip.compress(("\n".join(lines[third:2 * third]) + "\n").encode()))
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in lines[2 * third:]]
    pq.write_table(pa.Table.from_pylist(rows), out / "c.parquet")
    (out / "notes.txt").write_text("not a shard")
    return out, records


def test_a_directory_of_shards_reads_as_one_file(shards) -> None:
    folder, records = shards
    assert _lines(read_records(folder)) == _lines(records)
    assert _lines(read_records(folder / "*.jsonl*")) == _lines(records[: len(records) // 3 * 2])


def test_bad_input_names_the_shard_and_line(shards) -> None:
    folder, _ = shards
    with gzip.open(folder / "b.jsonl.gz", "at") as fh:
        fh.write('{"conversations": {"contents": [{"role": "robot", "content": "x"}]}}\n')
    with pytest.raises(InputError) as e:
        read_records(folder)
    where = e.value.where or ""
    assert "b.jsonl.gz line" in where and "role" in str(e.value)


def test_no_shards_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no responses shards"):
        read_records(tmp_path)
    with pytest.raises(InputError, match="no file matches"):
        read_records(tmp_path / "*.jsonl")


def test_check_on_shards_equals_check_on_the_file(shards, lite_responses: Path, tmp_path: Path,
                                                  check_json) -> None:
    folder, _ = shards
    (folder / "notes.txt").unlink()
    one_dir, many_dir = tmp_path / "one", tmp_path / "many"
    one_dir.mkdir()
    many_dir.mkdir()
    code_one, one = check_json(lite_responses, one_dir)
    code_many, many = check_json(folder, many_dir)

    def verdicts(summary: dict) -> list:
        return [(c["name"], c["verdict"], c["summary"]) for c in summary["checks"]]

    assert code_one == code_many == 0 and verdicts(one) == verdicts(many)


def test_the_stream_yields_what_read_records_holds(shards) -> None:
    """The two-pass reader (bounded memory) keeps the same records as the one that holds them
    all, and counts them before the second pass."""
    folder, held = shards
    found = index(folder)
    assert found.records == len(held)
    assert sorted(_lines(records(found))) == sorted(_lines(read_records(folder)))


def test_a_retry_in_a_later_shard_supersedes_the_error_in_an_earlier_one(lite_records,
                                                                         tmp_path: Path) -> None:
    first, second = lite_records[0], lite_records[1]
    failed = first.model_copy(update={"error": "HTTP 503", "output": ""})
    out = tmp_path / "logs"
    out.mkdir()
    (out / "1.jsonl").write_text("\n".join(_lines([failed, second])) + "\n")
    (out / "2.jsonl.gz").write_bytes(gzip.compress((_lines([first])[0] + "\n").encode()))
    found = index(out)
    assert (found.read, found.records, found.superseded) == (3, 2, {0})
    kept = list(records(found))
    assert [r.id for r in kept] == [second.id, first.id] and kept[1].error is None


def test_bad_input_deep_in_a_stream_is_named_before_any_record_is_yielded(lite_records,
                                                                          tmp_path: Path) -> None:
    from servecheck.formats.stream import index

    lines = [*_lines(lite_records), '{"conversations": 3}']
    (tmp_path / "big.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError) as e:
        index(tmp_path / "big.jsonl")
    assert f"line {len(lines)}" in str(e.value) and "conversations" in str(e.value)


def test_records_without_a_usable_id_are_never_merged(lite_records, tmp_path: Path) -> None:
    """An empty id, no id, and an id that reads "#1" are three separate answers, in both
    readers (a key "#i" for records without an id once merged them with such an id)."""
    a, b, c, d = lite_records[:4]
    rows = [a.model_copy(update={"id": ""}), b.model_copy(update={"id": None}),
            c.model_copy(update={"id": "#1"}), d.model_copy(update={"id": ""})]
    path = tmp_path / "odd-ids.jsonl"
    path.write_text("\n".join(_lines(rows)) + "\n")
    assert len(read_records(path)) == 4 == index(path).records == len(list(records(index(path))))


def test_a_file_that_changes_between_the_passes_is_named(lite_records, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "live.jsonl"
    path.write_text("\n".join(_lines(lite_records[:6])) + "\n")
    found = index(path)
    with path.open("a") as fh:  # a gateway still writing its log
        fh.write(_lines(lite_records[6:8])[0] + "\n")
    assert len(list(records(found))) == 6 and "added after it was first read" in caplog.text
    path.write_text("\n".join(_lines(lite_records[:3])) + "\n")
    with pytest.raises(InputError, match="changed while it was read: 6 records the first time, 3"):
        list(records(found))


def test_chunks_are_planned_by_records_and_by_tokens(lite_records, tmp_path: Path) -> None:
    """Long records make chunks of fewer records, so what a chunk holds stays bounded whatever
    the records' length; superseded records take no place in any chunk."""
    from servecheck.formats.stream import index, token_estimate

    failed = lite_records[0].model_copy(update={"error": "HTTP 503", "output": ""})
    rows = [failed, *lite_records[:9]]  # the error is superseded by its retry
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(_lines(rows)) + "\n")
    found = index(path)
    costs = [token_estimate(r) for r in lite_records[:9]]
    assert found.plan(4, 10**9) == [4, 4, 1]
    budget = max(costs) + 1
    plan = found.plan(100, budget)
    assert sum(plan) == 9 and len(plan) > 1
    at = 0
    for n in plan:  # each chunk within the budget, unless it is one record
        assert n == 1 or sum(costs[at:at + n]) <= budget
        at += n


def test_a_record_keeps_where_it_was_read(shards) -> None:
    """An error found after reading (a template refusal, an id outside the vocabulary) names the
    shard and line, not ``record #44``."""
    folder, _ = shards
    read = read_records(folder)
    assert read[0].where == f"{folder / 'a.jsonl'} line 1"
    assert read[-1].where.startswith(f"{folder / 'c.parquet'} row ")
    streamed = list(records(index(folder)))
    assert [r.where for r in streamed] == [r.where for r in read]
    assert read[0].named("r9") == f"{folder / 'a.jsonl'} line 1 (record r9)"
    assert read[0].model_copy().named("r9").endswith("line 1 (record r9)")


@pytest.mark.parametrize("damage", ["garbage", "pages"])
def test_a_damaged_parquet_shard_is_one_line_naming_it(shards, damage: str) -> None:
    folder, _ = shards
    path = folder / "c.parquet"
    if damage == "garbage":
        path.write_text("not parquet at all\n")
    else:  # the footer reads, the data pages do not
        pa = pytest.importorskip("pyarrow")
        import pyarrow.parquet as pq

        rows = [{"id": f"r{k}", "output": "x" * 50 + str(k)} for k in range(2000)]
        pq.write_table(pa.Table.from_pylist(rows), path, compression="snappy")
        data = bytearray(path.read_bytes())
        for k in range(200, 3000, 7):
            data[k] ^= 0xFF
        path.write_bytes(bytes(data))
    for read in (read_records, lambda p: list(records(index(p)))):
        with pytest.raises(InputError) as e:
            read(folder)
        message = str(e.value)
        assert message.startswith(f"{path}: not ") and "Parquet file (" in message
        assert "\n" not in message
        if damage == "garbage":
            assert message.startswith(f"{path}: not a Parquet file (")

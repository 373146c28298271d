"""What ``json.loads`` lets through or throws besides a syntax error, refused where it is read:
lone surrogates, nesting thousands deep, integers of thousands of digits (issue 29). Each names
the file, the line (or record, or block) and the field."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats import jsontext
from servecheck.formats.prompts import expand
from servecheck.formats.responses import read_records
from servecheck.formats.stream import index

RECORD = {"id": "r1", "conversations": {"contents": [{"role": "user", "content": "Hi."}]},
          "parameters": {"temperature": 0.7}, "input": "in", "output": "Hello."}
GOOD = json.dumps(RECORD) + "\n"


def _refused(path: Path, reader=read_records) -> InputError:
    with pytest.raises(InputError) as e:
        reader(path)
    assert "\n" not in str(e.value)
    return e.value


@pytest.mark.parametrize(("field", "where"), [
    ("output", "field 'output'"), ("input", "field 'input'"), ("id", "field 'id'"),
    ("content", "field 'conversations.contents.0.content'")])
def test_a_lone_surrogate_in_a_record_is_named(tmp_path: Path, field: str, where: str) -> None:
    rec = json.dumps(RECORD).replace('"Hello."' if field == "output" else '"in"' if field ==
                                     "input" else '"r1"' if field == "id" else '"Hi."',
                                     '"ab\\ud800c"')
    path = tmp_path / "r.jsonl"
    path.write_text(GOOD * 2 + rec + "\n")
    for reader in (read_records, index):
        err = _refused(path, reader)
        assert str(err) == (f"{path} line 3: {where}: a lone surrogate (\\ud800) at character 2: "
                            f"not valid Unicode text")


def test_a_surrogate_pair_is_an_emoji_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(GOOD.replace("Hello.", "Hi \\ud83d\\ude00")
                    + GOOD.replace("Hello.", "\\\\ud800").replace('"r1"', '"r2"'))
    assert [r.output for r in read_records(path)] == ["Hi \N{GRINNING FACE}", "\\ud800"]


def test_a_lone_surrogate_in_an_array_or_a_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    path.write_text("[\n" + GOOD + "," + GOOD.replace('"r1"', '"r2"').replace(
        '"Hi."', '"H\\udfffi"') + "]\n")
    assert "r.json record 1: field 'conversations.contents.0.content': a lone surrogate " \
           "(\\udfff) at character 1" in str(_refused(path))
    path.write_text(json.dumps({**RECORD, "sent": {"k": 1}}).replace('"k"', '"k\\ud800"'))
    assert "the key 'k\\ud800' of field 'sent': a lone surrogate" in str(_refused(path))


@pytest.mark.parametrize("content", [
    '{"prompt": ["ok", "bad \\ud800"]}',
    '[{"prompt": "a"}, {"prompt": "ok", "system_prompt": "x\\udbff"}]'])
def test_a_lone_surrogate_in_a_prompts_file_is_named(tmp_path: Path, content: str) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(content)
    message = str(_refused(path, expand))
    assert message in (f"{path}: field 'prompt.1': a lone surrogate (\\ud800) at character 4: "
                       f"not valid Unicode text",
                       f"{path} block 1: field 'system_prompt': a lone surrogate (\\udbff) at "
                       f"character 1: not valid Unicode text")


@pytest.mark.parametrize("levels", [jsontext.MAX_DEPTH + 1, 5000])
def test_nesting_too_deep_is_named_by_line(tmp_path: Path, levels: int) -> None:
    deep = "[" * levels + "]" * levels
    lines = tmp_path / "r.jsonl"
    lines.write_text(GOOD + json.dumps({**RECORD, "sent": {"x": 1}}).replace("1}", deep + "}")
                     + "\n")
    message = str(_refused(lines))
    assert message.startswith(f"{lines} line 2: ") and "nested deeper than 100 levels" in message
    array = tmp_path / "r.json"
    array.write_text("[\n" + GOOD + ",\n" + deep + "\n]\n")
    message = str(_refused(array))
    assert message.startswith((f"{array} line 4: ", f"{array} record 1: "))
    assert "nested deeper than 100 levels" in message
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"prompt": "a",\n "chat_template_kwargs": {"x": ' + deep + "}}")
    assert "nested deeper than 100 levels" in str(_refused(prompts, expand))
    gz = tmp_path / "logs"
    gz.mkdir()
    (gz / "shard-0003.jsonl.gz").write_bytes(gzip.compress((GOOD + deep + "\n").encode()))
    for reader in (read_records, index):
        assert str(_refused(gz, reader)).startswith(f"{gz / 'shard-0003.jsonl.gz'} line 2: ")


def test_nesting_within_the_limit_is_read(tmp_path: Path) -> None:
    value: object = 1
    for _ in range(jsontext.MAX_DEPTH - 2):
        value = {"a": value}
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps({**RECORD, "sent": value}) + "\n")
    assert read_records(path)[0].sent == value


def test_an_integer_of_thousands_of_digits_is_named(tmp_path: Path) -> None:
    huge = "9" * 5000
    lines = tmp_path / "r.jsonl"
    lines.write_text(GOOD + GOOD.replace('"temperature": 0.7', f'"seed": {huge}'))
    assert str(_refused(lines)) == (f"{lines} line 2: a number of 5,000 digits (at most 4,300): "
                                    f"not a value any field takes")
    array = tmp_path / "r.json"
    array.write_text("[\n" + GOOD + "," + GOOD.replace('"temperature": 0.7', f'"seed": -{huge}')
                     + "]\n")
    assert str(_refused(array)).startswith(f"{array} line 3: a number of 5,000 digits")
    prompts = tmp_path / "prompts.json"
    prompts.write_text('{"prompt": "a",\n "seed": ' + huge + "}")
    assert str(_refused(prompts, expand)).startswith(f"{prompts} line 2: a number of 5,000")


def test_a_tool_call_whose_arguments_nest_too_deep_is_not_json() -> None:
    from servecheck.formats.tools import ToolCall

    deep = "[" * 5000 + "]" * 5000
    call = ToolCall.model_validate({"function": {"name": "f", "arguments": deep}})
    assert call.parsed_arguments() == deep
    call = ToolCall.model_validate({"function": {"name": "f", "arguments": "9" * 5000}})
    assert call.parsed_arguments() == "9" * 5000

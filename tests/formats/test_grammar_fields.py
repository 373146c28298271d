"""Structured-output fields in the servers' names, read into one grammar (``formats.grammar``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from servecheck.errors import InputError
from servecheck.formats.grammar import Grammar, grammar_of
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import expand

SCHEMA = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
          "required": ["b"]}


def test_every_dialect_reads_as_one_grammar() -> None:
    rf = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}
    assert Parameters(response_format=rf).grammar == Grammar.json_schema(SCHEMA)
    assert Parameters(structured_outputs={"json": SCHEMA}).grammar == Grammar.json_schema(SCHEMA)
    assert Parameters(guided_json=json.dumps(SCHEMA)).grammar == Grammar.json_schema(SCHEMA)
    assert Parameters(json_schema=json.dumps(SCHEMA)).grammar == Grammar.json_schema(SCHEMA)  # SGLang
    assert Parameters(regex=r"\d+").grammar == Grammar("regex", r"\d+")
    assert Parameters(guided_choice=["yes", "no"]).grammar.choices == ["yes", "no"]
    assert Parameters(response_format={"type": "json_object"}).grammar == Grammar("json_object", "")
    assert Parameters(response_format={"type": "text"}).grammar is None
    assert Parameters().grammar is None and not Parameters().constrained
    assert Parameters(regex="a|b").constrained  # the statistics leave it to the grammar check


def test_the_schema_keeps_its_key_order() -> None:
    """Engines write properties in the order the schema declares them."""
    assert list(Grammar.json_schema(SCHEMA).schema["properties"]) == ["b", "a"]


@pytest.mark.parametrize(("fields", "words"), [
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "one structure at most"),
    ({"structured_outputs": {"jsn": {}}}, "not 'jsn' (did you mean 'json'?)"),
    ({"response_format": {"type": "json_schema"}}, '"json_schema": {"name"'),
    ({"response_format": {"type": "xml"}}, "response_format must be"),
    ({"guided_choice": []}, "non-empty list of strings"),
    ({"guided_json": "{not json"}, "a string that is not JSON"),
])
def test_malformed_or_doubled_grammars_are_named(fields: dict, words: str) -> None:
    with pytest.raises(ValidationError, match=words.replace("(", r"\(").replace(")", r"\)")
                       .replace("{", r"\{").replace("?", r"\?")):
        Parameters(**fields)


def test_grammar_of_takes_what_was_sent() -> None:
    assert grammar_of({"ebnf": 'root ::= "a"'}) == Grammar("ebnf", 'root ::= "a"')
    assert grammar_of({}) is None


def test_a_prompts_file_varies_the_response_format(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "Say it.", "response_format": [
        {"type": "json_object"}, None], "structured_outputs": {"regex": "x"}}]))
    with pytest.raises(InputError, match="one structure at most"):
        expand(path)
    path.write_text(json.dumps([{"prompt": "Say it.", "response_format": [
        {"type": "json_object"}, None]}]))
    assert [r.parameters.grammar for r in expand(path)] == [Grammar("json_object", ""), None]

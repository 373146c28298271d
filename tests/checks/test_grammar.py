"""Structured outputs judged under their grammar (``checks.grammar``, xgrammar's masks).

Hand-made records, as a server would have answered, judge the walk itself (fast); then the
in-process server decodes ``examples/prompts-json.json`` (a JSON schema, json_object, vLLM's
choice and regex) under the grammar with the second built-in model, which knows JSON from its
tool calls: the honest server passes, and the two faults a walk sees fail, named. The walk is
deterministic: a token outside every layout a correct engine may use is no engine's freedom,
so no false-failure rate to state. ``grammar-tight`` (whitespace forbidden inside strings) keeps
every token inside the mask: the mask check finds it, from the masked reference's whitespace
mass (its false-failure rate on a correct server: at most its share of α, 0.02 × 0.01 = 2e-4
a run; benchmarks/grammar_power.py measures it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servecheck.checks import grammar
from servecheck.checks.core.context import CheckContext
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
RF = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}}


@pytest.fixture(scope="module")
def ref() -> Reference:
    return Reference("builtin")


def _record(output: str, finish: str | None = "stop", rf: dict | None = None,
            rid: str = "r") -> ResponseRecord:
    return ResponseRecord(id=rid, conversations=Conversation(contents=[
        Message(role="user", content="Who?")]), parameters=Parameters(
        temperature=1.0, max_tokens=40, response_format=rf or RF), output=output,
        finish_reason=finish)


def _run(ref: Reference, records: list[ResponseRecord]):
    (result,) = grammar.run(CheckContext(records, ref))
    return result


def test_outputs_the_grammar_allows_pass_in_any_layout(ref: Reference) -> None:
    end = "<end_of_turn>"
    result = _run(ref, [_record('{"name": "Bo", "age": 3}' + end, rid="a"),
                        _record('{"name":"Bo","age":3}' + end, rid="b"),
                        _record('{"name": "Bo", "ag', "length", rid="c")])  # cut by max_tokens
    assert result.verdict == "pass", result.summary
    assert result.details.layouts[0] == "any whitespace, strict properties"


def test_a_token_the_grammar_refuses_is_named_where(ref: Reference) -> None:
    result = _run(ref, [_record('{"name": "Bo"}<end_of_turn>', rid="missing"),
                        _record("The cat says meow.<end_of_turn>", rid="prose")])
    assert result.verdict == "fail" and result.details.kinds == {"grammar not enforced": 2}
    first = {f.record: f.message for f in result.findings}
    assert first["missing"].startswith("grammar not enforced: output token 12 '}'")
    assert "(the JSON: missing required)" in first["missing"]
    assert result.details.schema_errors == {"missing required": 1, "invalid JSON": 1}


def test_stopping_where_the_grammar_cannot_end_is_named(ref: Reference) -> None:
    result = _run(ref, [_record('{"name": "Bo", "age": 3<end_of_turn>')])
    assert result.verdict == "fail" and result.details.kinds == {"ended early": 1}


def test_a_cut_output_that_does_not_say_why_is_not_blamed(ref: Reference) -> None:
    """No finish_reason and no end token: max_tokens may have cut it, so it is no early end."""
    assert _run(ref, [_record('{"name": "Bo", "ag', None)]).verdict == "pass"
    assert _run(ref, [_record('{"name": "Bo"<end_of_turn>', None)]).verdict == "fail"


def test_no_structured_output_is_skipped(ref: Reference) -> None:
    plain = _record("Hi.<end_of_turn>").model_copy(update={"parameters": Parameters()})
    assert _run(ref, [plain]).verdict == "skipped"


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "kinds"), [
    ("", None), ("grammar-ignored", "grammar not enforced"), ("grammar-loose", "grammar not enforced"),
    ("grammar-tight", "over-constrained")])
def test_the_in_process_server_under_its_grammar(fault: str, kinds: str | None, root: Path,
                                                 run_cli, check_json, tmp_path: Path,
                                                 write_records) -> None:
    out = tmp_path / "r.jsonl"
    target = "hf:builtin-tools" + (f"?fault={fault}" if fault else "")
    assert run_cli("generate", root / "examples" / "prompts-json.json", "--target", target,
                   "--out", out, "--no-progress") == 0
    code, summary = check_json(out, tmp_path, "builtin-tools")
    row = next(c for c in summary["checks"] if c["name"] == "grammar")
    mask = next(c for c in summary["checks"] if c["name"] == "mask")
    if kinds is None:
        assert code == 0 and row["verdict"] == "pass", row["summary"]
        assert "68 records decoded under their grammar" in row["summary"]  # forced calls too
        assert mask["verdict"] == "pass", mask["summary"]  # under the masks: fit, sampler too
        # text only (no ids): walked, and left out of the statistics, never failed there: under
        # a mask the model spells "animal" as an, i, m, a, l, which the text's tokens hide
        text_only = [r.model_copy(update={"output_token_ids": None, "output_logprobs": None,
                                          "prompt_token_ids": None}) for r in read_records(out)]
        code, summary = check_json(write_records(tmp_path / "t.jsonl", text_only), tmp_path,
                                   "builtin-tools")
        row = next(c for c in summary["checks"] if c["name"] == "grammar")
        assert code == 0 and "68 without the server's token ids: walked" in row["summary"]
    elif fault == "grammar-tight":  # every token allowed; whitespace the grammar allows, never
        assert code == 1 and row["verdict"] == "pass" and mask["verdict"] == "fail"
        assert mask["summary"].startswith(kinds)
        assert summary["digest"]["failures"][0]["check"] == "mask"  # the cause, named first
        # in 4 chunks the row pools every chunk's positions and tests them once, as one process
        _, chunked = check_json(out, tmp_path, "builtin-tools", "--records-per-chunk", "17",
                                "--state", tmp_path / "state")
        pooled = next(c for c in chunked["checks"] if c["name"] == "mask")
        assert chunked["chunks"] == 4 and pooled["verdict"] == "fail"
        assert "pooled over the 4 chunks" in pooled["summary"]
        a, b = pooled["details"], mask["details"]
        assert (a["records"], a["positions"], a["drawn"]) == (b["records"], b["positions"],
                                                              b["drawn"])
        # scored in other batches than one process's: float32 rounding apart
        assert a["expected"] == pytest.approx(b["expected"], rel=1e-6)
        assert a["test"]["p"] == pytest.approx(b["test"]["p"], rel=1e-4, abs=1e-12)
    else:
        assert code == 1 and row["verdict"] == "fail", row["summary"]
        assert all(f["message"].startswith(kinds) for f in row["findings"])


def test_thinking_markup_inside_a_json_string_is_text() -> None:
    """A structured output's string may hold ``<think>`` or ``</think>``: text, not thinking
    (grammar-loose once had the reasoning row fail on one)."""
    from servecheck.checks import reasoning

    tools_ref = Reference("builtin-tools")
    records = [ResponseRecord(id=rid, conversations=Conversation(
        contents=[Message(role="user", content="Which tag?")],
        chat_template_kwargs={"enable_thinking": False}),
        parameters=Parameters(temperature=0.0, max_tokens=40,
                              response_format={"type": "json_object"}),
        output=out, finish_reason="stop")
        for rid, out in (("open", '{"tag": "<think> opens"}<|im_end|>'),
                         ("close", '{"tag": "</think> closes"}<|im_end|>'))]
    ctx = CheckContext(records, tools_ref)
    result = reasoning.run(ctx)[0]
    assert result.verdict != "fail", result.summary
    assert grammar.run(ctx)[0].verdict == "pass"

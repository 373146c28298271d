"""A text-only output is too long only when even its shortest spelling is over max_tokens.

A sampler may draw a lone byte of a multi-byte character; the detokenizer writes it as U+FFFD,
whose three bytes take more tokens to spell than the one that was drawn. The built-in model did
this under a lossy speculation fault (benchmarks/deployment_power.py, text only): 64 tokens served
at max_tokens 64 were read as 66 and failed "too long". These records are built from real ids of
the built-in tokenizer, decoded as a server decodes them."""

from __future__ import annotations

from servecheck.checks.core.context import CheckContext
from servecheck.checks.termination import check_termination
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference


def _record(ref: Reference, ids: list[int], max_tokens: int) -> ResponseRecord:
    text = ref.tokenizer.decode(ids)
    return ResponseRecord(id="stray", conversations=Conversation(contents=[
        Message(role="user", content="Say something.")]), output=text,
        parameters=Parameters(temperature=1.0, max_tokens=max_tokens), finish_reason="length")


def test_a_stray_byte_is_one_token_not_three(ref: Reference) -> None:
    tb = CheckContext([], ref).token_bytes
    stray = tb.byte_token(0xE1)
    says = ref.tokenizer.encode(" says", add_special_tokens=False)
    assert stray is not None and len(says) == 1
    ids = [stray] + says * 5
    record = _record(ref, ids, len(ids))
    assert "\ufffd" in record.output
    result = check_termination(CheckContext([record], ref))
    assert "too long" not in result.summary, result.summary
    too_long = check_termination(CheckContext([_record(ref, ids, len(ids) - 1)], ref))
    assert any("too long" in f.message for f in too_long.findings), too_long.summary

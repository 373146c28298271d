"""The stream probe: one seeded request over the streaming and the unary path must give one answer.

A server runs the same model for both, so a correct one returns the same text, the same tool
calls and the same ``finish_reason`` for the same seed. Where they differ, it is the stream's own
code: detokenizing piece by piece (a character split across chunks comes out as U+FFFD), a stop
string that spans two chunks let through, tool-call argument fragments joined wrongly. Triton
targets switch with ``?stream=0|1``, OpenAI ones with ``?stream=0|1`` too (``streamed.py``).
The requests: a plain sampled one, one whose stop string spans tokens, and, where the reference
template renders tools, one that offers a function.
"""

from __future__ import annotations

from servecheck.checks.core.results import CheckResult, Finding, NoDetails
from servecheck.checks.template import first_difference
from servecheck.collect.targets import open_target
from servecheck.errors import TargetError
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord
from servecheck.reference.markup import markup_of
from servecheck.reference.model import Reference

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
STREAMING_SCHEMES = ("triton", "openai", "http")


def requests(ref: Reference | None, max_tokens: int) -> list[Request]:
    def user(text: str, **kw) -> Conversation:
        return Conversation(contents=[Message(role="user", content=text)], **kw)

    out = [Request("stream-plain", user("Tell me a story about the fox."),
                   Parameters(temperature=1.0, seed=77, max_tokens=max_tokens)),
           Request("stream-stop", user("Tell me a story about the fox."),
                   Parameters(temperature=0.0, seed=78, max_tokens=max_tokens, stop=[". T", "s t"]))]
    if ref is not None and markup_of(ref).has_calls:
        out.append(Request("stream-tools", user("What is the weather in Oslo?",
                                                tools=[WEATHER_TOOL]),
                           Parameters(temperature=0.0, seed=79, max_tokens=max(max_tokens, 64))))
    return out


def _calls(r: ResponseRecord) -> list[tuple[str, object]]:
    return [(c.function.name, c.parsed_arguments()) for c in r.tool_calls or []]


def differences(unary: ResponseRecord, streamed: ResponseRecord) -> list[str]:
    out = []
    if "\ufffd" in streamed.output and "\ufffd" not in unary.output:
        out.append("UTF-8 garbled in the stream: U+FFFD where the unary text has a character")
    if unary.output != streamed.output:
        at = first_difference(unary.output, streamed.output)
        out.append(f"text differs from character {at}: unary {unary.output[at:at + 30]!r}, "
                   f"stream {streamed.output[at:at + 30]!r}")
    if _calls(unary) != _calls(streamed):
        out.append(f"tool calls differ: unary {_calls(unary)}, stream {_calls(streamed)}")
    if unary.finish_reason != streamed.finish_reason:
        out.append(f"finish_reason differs: unary {unary.finish_reason!r}, stream "
                   f"{streamed.finish_reason!r}")
    return out


async def stream_vs_unary(spec: str, max_tokens: int, reference: str | None = None
                          ) -> CheckResult:
    if not spec.startswith(STREAMING_SCHEMES):
        return CheckResult("stream", "skipped", "the target has no separate streaming path")
    sep = "&" if "?" in spec else "?"
    ref = Reference(reference) if reference else None
    asked = requests(ref, max_tokens)
    answers: dict[str, list[ResponseRecord]] = {}
    for name in ("0", "1"):
        target = open_target(f"{spec}{sep}stream={name}", reference=reference)
        try:
            answers[name] = [_one(await target.generate(r)) for r in asked]
        except TargetError as e:
            return CheckResult("stream", "skipped", f"stream={name} not available: {e}")
        finally:  # both hooks, as every other user of a target: connections, then the rest
            await target.aclose()
            target.close()
    findings = [Finding(r.id, problem) for r, unary, streamed in
                zip(asked, answers["0"], answers["1"], strict=True)
                for problem in differences(unary, streamed)]
    if findings:
        return CheckResult("stream", "fail", f"stream and unary differ in {len({f.record for f in findings})}"
                           f"/{len(asked)} requests for the same seed", NoDetails(), findings)
    return CheckResult("stream", "pass", f"stream and unary give the same answer for one seed "
                       f"({', '.join(r.id.removeprefix('stream-') for r in asked)})")


def _one(answer: ResponseRecord | list[ResponseRecord]) -> ResponseRecord:
    return answer[0] if isinstance(answer, list) else answer

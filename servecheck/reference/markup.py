"""The reference template's own markup for tool calls and thinking, found by rendering probes.

Engines ship a parser per model family (vLLM's ``hermes``, ``qwen3``, …) and the bugs users
report are parsers that disagree with the template: a call lost, arguments re-escaped, the
answer returned as reasoning. To judge a server's parser, servecheck needs the truth for the
served model, and that is in the checkpoint's template: render an assistant turn with a known
call (and one with known reasoning) and read off what surrounds them. Nothing here is tied to
one family; a template that renders no tool calls or no reasoning simply has no such markup, and
the checks that need it say so and skip.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from servecheck.formats.tools import FunctionCall, ToolCall

PROBE_NAME, PROBE_KEY, PROBE_VALUE = "probe_fn_x", "probe_key_x", "probe_value_x"
PROBE_THOUGHT, PROBE_ANSWER = "probe thought x", "probe answer x"
PROBE_TOOL = {"type": "function", "function": {"name": PROBE_NAME, "parameters": {
    "type": "object", "properties": {PROBE_KEY: {"type": "string"}}}}}


@dataclass(frozen=True)
class RawCall:
    """One call as the model wrote it: its text between the markers, and what it parses to."""

    text: str
    call: ToolCall | None
    """None when the text is not a call: ``error`` says why."""
    error: str | None = None


@dataclass(frozen=True)
class Parsed:
    """A raw output split the way the template writes it."""

    reasoning: str | None
    """The thinking text (None: the output has no thinking block)."""
    content: str
    """What is left: the answer, without thinking, calls and the end marker."""
    calls: list[RawCall] = field(default_factory=list)


@dataclass(frozen=True)
class Markup:
    call_open: str | None = None
    call_close: str | None = None
    name_key: str = "name"
    arguments_key: str = "arguments"
    think_open: str | None = None
    think_close: str | None = None
    think_off: str | None = None
    """What ``enable_thinking=false`` adds to the generation prompt (an empty think block)."""
    ends: tuple[str, ...] = ()

    @property
    def has_calls(self) -> bool:
        return bool(self.call_open)

    @property
    def has_thinking(self) -> bool:
        return bool(self.think_open and self.think_close)

    def strip_end(self, text: str) -> str:
        for end in self.ends:
            if end and text.endswith(end):
                return text[: -len(end)]
        return text

    def parse_structured(self, output: str, prefilled: bool = False) -> Parsed:
        """A structured output split: the grammar's text, after a thinking block only where
        the output opens one (or its prompt did: ``prefilled``), as vLLM applies the grammar
        after the reasoning parser's end. A JSON string holding the thinking closer or a call
        opener is text, not markup."""
        text = self.strip_end(output)
        if self.has_thinking:
            assert self.think_open is not None and self.think_close is not None
            opener, closer = self.think_open.strip(), self.think_close.strip()
            opened = text.lstrip().startswith(opener)
            if (opened or prefilled) and closer in text:
                close = text.index(closer)
                begin = text.index(opener) + len(opener) if opened else 0
                return Parsed(text[begin:close].strip("\n"), text[close + len(closer):])
        return Parsed(None, text)

    def parse(self, output: str) -> Parsed:
        """Split a raw output into reasoning, content and calls (the template's truth)."""
        text = self.strip_end(output)
        reasoning = None
        if self.has_thinking:
            assert self.think_open is not None and self.think_close is not None
            start = text.find(self.think_open.strip())
            close = text.find(self.think_close.strip())
            if close >= 0 and (start < 0 or start < close):
                # a thinking block, or (the opener pre-filled by the prompt) its tail
                begin = start + len(self.think_open.strip()) if start >= 0 else 0
                reasoning = text[begin:close].strip("\n")
                text = text[:max(start, 0)] + text[close + len(self.think_close.strip()):]
                text = text.lstrip("\n")
        calls: list[RawCall] = []
        if self.has_calls:
            assert self.call_open is not None
            opener = self.call_open.strip()
            closer = (self.call_close or "").strip()
            parts = text.split(opener)
            content = parts[0]
            for part in parts[1:]:
                body, found, rest = part.partition(closer) if closer else (part, "", "")
                calls.append(self._read_call(body.strip()))
                if not found:
                    calls[-1] = RawCall(calls[-1].text, calls[-1].call,
                                        calls[-1].error or f"no closing {closer!r}")
                content += rest.strip("\n") if rest.strip() else ""
            text = content.rstrip("\n") if calls else content
        return Parsed(reasoning, text, calls)

    def _read_call(self, body: str) -> RawCall:
        try:
            value = json.loads(body)
        except json.JSONDecodeError as e:
            return RawCall(body, None, f"invalid JSON ({e.msg} at char {e.pos})")
        if not isinstance(value, dict) or not isinstance(value.get(self.name_key), str):
            return RawCall(body, None, f"no {self.name_key!r} string in the call")
        args = value.get(self.arguments_key, {})
        if not isinstance(args, dict | str):
            return RawCall(body, None, f"{self.arguments_key!r} is not an object")
        return RawCall(body, ToolCall(function=FunctionCall(name=value[self.name_key],
                                                            arguments=args)))


def _between(text: str, before: str, after: str) -> str | None:
    i = text.find(before)
    j = text.find(after, i + len(before)) if i >= 0 else -1
    return text[i + len(before):j] if j >= 0 else None


def _assistant_part(ref: Any, messages: list[dict], **kwargs: Any) -> str | None:
    """What the template writes for the last (assistant) message, after its generation prompt."""
    try:
        prompt = ref.render_messages(messages[:-1], add_generation_prompt=True, **kwargs)
        full = ref.render_messages(messages, add_generation_prompt=False, **kwargs)
    except Exception:  # a template that refuses the probe has no such markup
        return None
    return full[len(prompt):] if full.startswith(prompt) else None


def _call_markup(ref: Any) -> dict[str, str]:
    call = {"type": "function", "function": {"name": PROBE_NAME,
                                             "arguments": {PROBE_KEY: PROBE_VALUE}}}
    part = _assistant_part(ref, [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": "", "tool_calls": [call]}],
                           tools=[PROBE_TOOL])
    if not part or PROBE_NAME not in part:
        return {}
    name_at = part.find(PROBE_NAME)
    decoder = json.JSONDecoder()
    for start in (m.start() for m in re.finditer(r"\{", part[:name_at])):
        try:
            value, end = decoder.raw_decode(part, start)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict) and PROBE_NAME in value.values():
            name_key = next(k for k, v in value.items() if v == PROBE_NAME)
            args_key = next((k for k, v in value.items() if v == {PROBE_KEY: PROBE_VALUE}),
                            "arguments")
            close = part[end:]
            for marker in ref.end_markers:
                close = close.split(marker)[0]
            return {"call_open": part[:start], "call_close": close, "name_key": name_key,
                    "arguments_key": args_key}
    return {}


def _think_markup(ref: Any) -> dict[str, str]:
    part = _assistant_part(ref, [{"role": "user", "content": "hi"},
                                 {"role": "assistant", "content": PROBE_ANSWER,
                                  "reasoning_content": PROBE_THOUGHT}])
    if not part or PROBE_THOUGHT not in part:
        return {}
    out = {"think_open": part[:part.find(PROBE_THOUGHT)],
           "think_close": _between(part, PROBE_THOUGHT, PROBE_ANSWER) or ""}
    try:
        on = ref.render_messages([{"role": "user", "content": "hi"}])
        off = ref.render_messages([{"role": "user", "content": "hi"}], enable_thinking=False)
    except Exception:
        return out
    if off.startswith(on) and off != on:
        out["think_off"] = off[len(on):]
    return out


@cache
def _markup(ref: Any) -> Markup:
    return Markup(**_call_markup(ref), **_think_markup(ref), ends=tuple(ref.end_markers))


def markup_of(ref: Any) -> Markup:
    """The reference's markup (found once per reference)."""
    return _markup(ref)

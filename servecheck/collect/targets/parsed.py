"""An OpenAI answer whose parsers split the output: the parts as returned, and the raw text.

With ``--reasoning-parser`` and a tool parser on, a server returns ``reasoning_content`` (vLLM
also ``reasoning``), ``content`` without the call markup, and ``tool_calls``. The record keeps
all three as returned, for the reasoning and tool-call checks to judge, and its ``output`` must
still be the raw generated text, because that is what is teacher-forced. With the server's
token ids it is their decoding; without, it is rebuilt from the parts with the reference
template's markup (``sent["output"]`` says which), which is exact for templates that write calls
as JSON between markers and approximate for others.
"""

from __future__ import annotations

import json
from typing import Any

from servecheck.collect.targets.answers import Reader
from servecheck.formats.tools import ToolCall, Usage
from servecheck.reference.markup import markup_of
from servecheck.reference.model import Reference


def split_fields(message: dict[str, Any], read: Reader | None = None,
                 at: str = "message") -> dict[str, Any]:
    """``content``, ``reasoning_content`` and ``tool_calls`` where a parser produced them; empty
    where the message is plain text (no parser ran, nothing to judge). A field of the wrong
    type is the server's broken answer, named under ``at`` (``read`` says where)."""
    read = read or Reader()
    name = "reasoning_content" if "reasoning_content" in message else "reasoning"
    reasoning = read.text(message.get(name), f"{at}.{name}", optional=True)
    calls = read.items(message.get("tool_calls"), f"{at}.tool_calls", optional=True) or None
    if reasoning is None and calls is None:
        return {}
    out: dict[str, Any] = {"content": read.text(message.get("content"), f"{at}.content",
                                                optional=True), "reasoning_content": reasoning}
    if calls is not None:
        out["tool_calls"] = []
        for k, call in enumerate(calls):
            field = f"{at}.tool_calls[{k}]"
            call = read.obj(call, field)
            out["tool_calls"].append(read.model(ToolCall, {
                key: call[key] for key in ("id", "type", "function") if call.get(key) is not None
            }, field))
    return out


def raw_output(parts: dict[str, Any], ids: list[int] | None, ref: Reference,
               stops: list[str] | None = None) -> tuple[str, list[int] | None, str]:
    """(raw text, the ids that spell it, how it was found). Engines return every generated id,
    the stop string's too, and cut the text: the decoded ids are cut the same way, and only the
    ids that spell the cut text kept (none where a token straddles the cut)."""
    if ids:
        text = ref.decode(ids)
        hits = [text.find(s) for s in stops or [] if s in text]
        ended = any(text.endswith(m) for m in ref.end_markers)
        if hits and not ended:
            text = text[: min(hits)]
            return text, spelling(ids, text, ref), "decoded from the server's token ids (its " \
                "parsers split the text), cut at the stop string as the server cut it"
        return text, ids, "decoded from the server's token ids (its parsers split the text)"
    markup = markup_of(ref)
    text = ""
    reasoning = parts.get("reasoning_content")
    if reasoning is not None and markup.has_thinking:
        text += f"{markup.think_open}{reasoning}{markup.think_close}"
    text += parts.get("content") or ""
    for k, call in enumerate(parts.get("tool_calls") or []):
        body = json.dumps({markup.name_key: call.function.name,
                           markup.arguments_key: call.parsed_arguments()}, ensure_ascii=False)
        text += ("\n" if (text and k == 0 and parts.get("content")) or k else "") + \
            f"{markup.call_open or ''}{body}{markup.call_close or ''}"
    return text, ids, "rebuilt from the parsed fields with the reference template's markup"


def spelling(ids: list[int], text: str, ref: Reference) -> list[int] | None:
    """The longest prefix of ``ids`` that decodes to ``text``: engines return the ids of a stop
    string they cut from the text. None when a token straddles the cut (the text is then
    scored as text only)."""
    decoded = ref.decode(ids)
    if decoded == text or (decoded.startswith(text) and decoded[len(text):] in ref.end_markers):
        return ids  # all of it, or the text less the end token the server strips
    return next((ids[:n] for n in range(len(ids) - 1, -1, -1) if ref.decode(ids[:n]) == text),
                None)


def usage_of(data: dict[str, Any], read: Reader | None = None) -> Usage | None:
    """The answer's ``usage``, where it has one; one of the wrong shape is named, not dropped."""
    read = read or Reader()
    usage = read.obj(data.get("usage"), "usage", optional=True)
    if not usage:
        return None
    details = read.obj(usage.get("completion_tokens_details"),
                       "usage.completion_tokens_details", optional=True)
    cached = read.obj(usage.get("prompt_tokens_details"), "usage.prompt_tokens_details",
                      optional=True)
    return read.model(Usage, {**usage, "reasoning_tokens": details.get("reasoning_tokens"),
                              "cached_tokens": cached.get("cached_tokens")}, "usage")

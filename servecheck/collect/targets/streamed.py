"""An OpenAI stream (``stream: true``) joined back into the shape of a unary answer.

Streams are where servers differ from their own unary path: text detokenized piece by piece
(UTF-8 split across chunks), a stop string that spans chunks let through, tool-call arguments
sent in fragments. So ``?stream=1`` reads the Server-Sent Events, joins each choice's deltas
(content, reasoning, tool-call fragments by index, token ids and log-probs where the server
sends them) and hands ``OpenAITarget`` the same answer object a unary call gives, for one code
path to make the record. An ``{"error": …}`` frame mid-stream is the request's error, never an
output; what arrived before it is named in the message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from servecheck.errors import TargetError


class Choice:
    """One choice's deltas, joined."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.text: list[str] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.token_ids: list[int] = []
        self.logprobs: list[dict[str, Any]] = []
        self.finish_reason: str | None = None
        self.stop_reason: Any = None

    def add(self, choice: dict[str, Any], chat: bool) -> None:
        delta = (choice.get("delta") or {}) if chat else choice
        self.text.append(delta.get("content") or delta.get("text") or "")
        reasoning = delta.get("reasoning_content", delta.get("reasoning"))
        if reasoning:
            self.reasoning.append(reasoning)
        for fragment in delta.get("tool_calls") or []:
            call = self.calls.setdefault(int(fragment.get("index", len(self.calls))),
                                         {"type": "function", "function": {"name": "",
                                                                           "arguments": ""}})
            if fragment.get("id"):
                call["id"] = fragment["id"]
            function = fragment.get("function") or {}
            call["function"]["name"] += function.get("name") or ""
            call["function"]["arguments"] += function.get("arguments") or ""
        self.token_ids += choice.get("token_ids") or []
        logprobs = choice.get("logprobs") or {}
        self.logprobs += (logprobs.get("content") or []) if chat else [
            {"logprob": x} for x in logprobs.get("token_logprobs") or []]
        self.finish_reason = choice.get("finish_reason") or self.finish_reason
        self.stop_reason = choice.get("stop_reason", self.stop_reason)

    def unary(self, chat: bool) -> dict[str, Any]:
        text = "".join(self.text)
        out: dict[str, Any] = {"index": self.index, "finish_reason": self.finish_reason,
                               "stop_reason": self.stop_reason}
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if self.reasoning:
                message["reasoning_content"] = "".join(self.reasoning)
            if self.calls:
                message["tool_calls"] = [self.calls[k] for k in sorted(self.calls)]
            out["message"] = message
            out["logprobs"] = {"content": self.logprobs} if self.logprobs else None
        else:
            out["text"] = text
            out["logprobs"] = {"token_logprobs": [x.get("logprob") for x in self.logprobs]} \
                if self.logprobs else None
        if self.token_ids:
            out["token_ids"] = self.token_ids
        return out


async def joined(events: AsyncIterator[Any], chat: bool, path: str) -> dict[str, Any]:
    """The unary-shaped answer of a stream of chunks."""
    choices: dict[int, Choice] = {}
    answer: dict[str, Any] = {}
    async for chunk in events:
        if not isinstance(chunk, dict):
            continue
        if "error" in chunk:
            got = sum(len("".join(c.text)) for c in choices.values())
            raise TargetError(f"{path}: error frame in the stream after {got} characters: "
                              f"{str(chunk['error'])[:300]}")
        for key in ("usage", "prompt_token_ids", "prompt_text"):
            if chunk.get(key) is not None:
                answer[key] = chunk[key]
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            choices.setdefault(index, Choice(index)).add(choice, chat)
            if choice.get("prompt_token_ids") is not None:
                answer["prompt_token_ids"] = choice["prompt_token_ids"]
    answer["choices"] = [choices[k].unary(chat) for k in sorted(choices)]
    return answer

"""An OpenAI stream (``stream: true``) joined back into the shape of a unary answer.

Streams are where servers differ from their own unary path: text detokenized piece by piece
(UTF-8 split across chunks), a stop string that spans chunks let through, tool-call arguments
sent in fragments. So ``?stream=1`` reads the Server-Sent Events, joins each choice's deltas
(content, reasoning, tool-call fragments by index, token ids and log-probs where the server
sends them) and hands ``OpenAITarget`` the same answer object a unary call gives, for one code
path to make the record. An ``{"error": …}`` frame mid-stream is the request's error, never an
output; what arrived before it is named in the message. So is a stream that stops with neither a
``finish_reason`` nor ``[DONE]``: the server never said it was finished, so what arrived is a
fragment, not an answer. Every chunk is read through ``answers.Reader``: a field of the wrong
type fails the request, named with the chunk it came in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from servecheck.collect.targets.answers import Reader
from servecheck.collect.targets.http import DONE
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

    def add(self, choice: dict[str, Any], chat: bool, read: Reader, at: str) -> None:
        """One chunk's piece of this choice (``at``: its place in the chunk, for messages)."""
        delta = read.obj(choice.get("delta"), f"{at}.delta", optional=True) if chat else choice
        where = f"{at}.delta" if chat else at
        self.text.append(read.text(delta.get("content"), f"{where}.content", optional=True)
                         or read.text(delta.get("text"), f"{where}.text", optional=True) or "")
        name = "reasoning_content" if "reasoning_content" in delta else "reasoning"
        reasoning = read.text(delta.get(name), f"{where}.{name}", optional=True)
        if reasoning:
            self.reasoning.append(reasoning)
        fragments = read.items(delta.get("tool_calls"), f"{where}.tool_calls", optional=True)
        for k, fragment in enumerate(fragments):
            field = f"{where}.tool_calls[{k}]"
            read.obj(fragment, field)
            index = read.integer(fragment.get("index"), f"{field}.index", optional=True)
            call = self.calls.setdefault(len(self.calls) if index is None else index,
                                         {"type": "function", "function": {"name": "",
                                                                           "arguments": ""}})
            if read.text(fragment.get("id"), f"{field}.id", optional=True):
                call["id"] = fragment["id"]
            function = read.obj(fragment.get("function"), f"{field}.function", optional=True)
            call["function"]["name"] += read.text(function.get("name"),
                                                  f"{field}.function.name", optional=True) or ""
            call["function"]["arguments"] += read.text(
                function.get("arguments"), f"{field}.function.arguments", optional=True) or ""
        self.token_ids += read.integers(choice.get("token_ids"), f"{at}.token_ids",
                                        optional=True) or []
        logprobs = read.obj(choice.get("logprobs"), f"{at}.logprobs", optional=True)
        if chat:
            content = read.items(logprobs.get("content"), f"{at}.logprobs.content", optional=True)
            self.logprobs += [read.obj(c, f"{at}.logprobs.content[{k}]")
                              for k, c in enumerate(content)]
        else:
            self.logprobs += [{"logprob": x} for x in read.items(
                logprobs.get("token_logprobs"), f"{at}.logprobs.token_logprobs", optional=True)]
        self.finish_reason = read.text(choice.get("finish_reason"), f"{at}.finish_reason",
                                       optional=True) or self.finish_reason
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
    """The unary-shaped answer of a stream of chunks; the answer's own fields are checked
    afterwards, as a unary one's are (``OpenAITarget``)."""
    choices: dict[int, Choice] = {}
    answer: dict[str, Any] = {}
    chunks, done = 0, False
    async for chunk in events:
        if chunk is DONE:
            done = True
            break
        chunks += 1
        read = Reader(f"{path} (stream chunk {chunks})")
        read.obj(chunk, "the chunk")
        if "error" in chunk:
            got = sum(len("".join(c.text)) for c in choices.values())
            raise TargetError(f"{path}: error frame in the stream after {got} characters: "
                              f"{str(chunk['error'])[:300]}")
        for key in ("usage", "prompt_token_ids", "prompt_text"):
            if chunk.get(key) is not None:
                answer[key] = chunk[key]
        for k, choice in enumerate(read.items(chunk.get("choices"), "choices", optional=True)):
            at = f"choices[{k}]"
            read.obj(choice, at)
            index = read.integer(choice.get("index", 0), f"{at}.index")
            assert index is not None
            choices.setdefault(index, Choice(index)).add(choice, chat, read, at)
            if choice.get("prompt_token_ids") is not None:
                answer["prompt_token_ids"] = choice["prompt_token_ids"]
    if not done and not any(c.finish_reason for c in choices.values()):
        raise TargetError(f"{path}: the stream ended before the server said it was finished: no "
                          f"finish_reason and no [DONE] after {chunks} chunk(s)")
    answer["choices"] = [choices[k].unary(chat) for k in sorted(choices)]
    return answer

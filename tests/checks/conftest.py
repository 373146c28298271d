"""Fixtures of the checks' tests: long conversations that run past the built-in model's 128-token
sliding window, and the records an in-process server answers them with.

The conversations are the built-in model's own kind of chat (``tinymodels.corpus``): earlier
turns answered, then a question whose answer runs to a sentence or two (a story, a count), so
a correct server's outputs past the window are as fluent as before it. With 0 to 12 earlier
turns the prompts run from about 40 to 360 tokens: outputs before the window, just past it and
far past it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from servecheck.collect.targets import open_target
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request, request_id
from servecheck.formats.records import ResponseRecord
from servecheck.tinymodels import corpus

TURNS = (0, 1, 2, 4, 6, 8, 10, 12)
"""Earlier turns per conversation: prompts of about 40, 65, 90, 140, 190, 250, 300 and 360
tokens."""


def conversation(rng: random.Random, turns: int) -> Conversation:
    messages = []
    for _ in range(turns):
        q, a, _ = rng.choice(corpus.SIMPLE_TASKS)(rng)
        messages += [Message(role="user", content=q), Message(role="model", content=a)]
    ask = rng.choice([corpus._story, corpus._story, corpus._count])  # answers of 10–30 tokens
    messages.append(Message(role="user", content=ask(rng)[0]))
    return Conversation(contents=messages)


@pytest.fixture(scope="session")
def long_requests() -> Callable[..., list[Request]]:
    """``long_requests(seed=0, turns=TURNS, repeats=2, temperatures=(0.0,), max_tokens=40)``:
    every temperature for each of ``repeats`` × ``len(turns)`` conversations (seeded)."""

    def make(seed: int = 0, turns: tuple[int, ...] = TURNS, repeats: int = 2,
             temperatures: tuple[float, ...] = (0.0,), max_tokens: int = 40) -> list[Request]:
        rng = random.Random(seed)
        chats = [conversation(rng, n) for _ in range(repeats) for n in turns]
        out = []
        for j, conv in enumerate(chats):
            for t in temperatures:
                p = Parameters(temperature=t, seed=seed * 1000 + j, max_tokens=max_tokens)
                out.append(Request(request_id(conv, p, 0), conv, p))
        return out

    return make


@pytest.fixture(scope="session")
def serve() -> Callable[[str, list[Request]], list[ResponseRecord]]:
    """``serve(spec, requests)``: the in-process server ``spec``'s records, one request at a
    time in order (each its own seed; a prefix cache sees them in that order). A server with a
    prefix cache is opened afresh each call, so no test sees another's prompts cached."""
    targets: dict[str, object] = {}

    def run(spec: str, requests: list[Request]) -> list[ResponseRecord]:
        target = open_target(spec) if "prefix" in spec else \
            targets.get(spec) or targets.setdefault(spec, open_target(spec))
        return [r for q in requests for r in target.generate_batch([q])]  # type: ignore[attr-defined]

    return run

"""Fixtures of the collection tests: one hand-made request, and a target that counts what it is
asked (a test double: where what matters is how many requests go out, not what answers them)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from servecheck.collect import collector
from servecheck.collect.targets import Target
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord


class Counting(Target):
    """Answers everything at once, one request at a time, keeping the ids it was asked."""

    spec = "fake:counting"

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def generate(self, request: Request) -> ResponseRecord:
        self.asked.append(request.id)
        return ResponseRecord(id=request.id, conversations=request.conversation,
                              parameters=request.parameters, target=self.spec, input="in",
                              output="Hello.<end_of_turn>")


@pytest.fixture()
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    """The collector's every target is one ``Counting``."""
    target = Counting()
    monkeypatch.setattr(collector, "open_target", lambda spec, reference=None: target)
    return target


@pytest.fixture(scope="session")
def expand_one() -> Callable[..., list[Request]]:
    """``expand_one(**params)``: one request ("Hi.") with exactly these parameters, unvalidated
    (a bad top_k reaches the server)."""

    def one(**params) -> list[Request]:
        conv = Conversation(contents=[Message(role="user", content="Hi.")])
        return [Request(id="x", conversation=conv, parameters=Parameters.model_construct(**params))]

    return one

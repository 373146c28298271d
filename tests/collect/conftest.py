"""Fixtures of the collection tests: one hand-made request."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from servecheck.formats.prompts import Request
from servecheck.formats.records import Conversation, Message, Parameters


@pytest.fixture(scope="session")
def expand_one() -> Callable[..., list[Request]]:
    """``expand_one(**params)``: one request ("Hi.") with exactly these parameters, unvalidated
    (a bad top_k reaches the server)."""

    def one(**params) -> list[Request]:
        conv = Conversation(contents=[Message(role="user", content="Hi.")])
        return [Request(id="x", conversation=conv, parameters=Parameters.model_construct(**params))]

    return one

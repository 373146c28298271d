"""Targets: where responses come from. One required method, registered lazily.

A target turns a ``Request`` into a ``ResponseRecord``. Each kind is named by the scheme of its
spec (``hf:builtin``, later ``triton://…``, ``openai://…``) and lives in its own module, imported
only when a spec names it, so an optional client library is needed only by those who use it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Iterable
from urllib.parse import parse_qs

from servecheck.errors import InputError
from servecheck.prompts import Request
from servecheck.records import ResponseRecord

DEFAULT_MAX_TOKENS = 256
"""Sent when a request names no max_tokens, so every target caps generation the same way."""

def spec_options(query: str, known: Iterable[str], spec: str) -> dict[str, list[str]]:
    """The ``?key=value&…`` options of a target spec, every value of each key in order; an
    option the target does not know is bad input, named with the ones it does."""
    opts = parse_qs(query)
    known = list(known)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise InputError(f"unknown option(s) {unknown} (known: {', '.join(known)})", where=spec)
    return opts


# scheme -> "module:class"; nothing here is imported until a spec uses it.
REGISTRY: dict[str, str] = {
    "hf": "servecheck.targets.hf:HFTarget",
    "triton": "servecheck.targets.triton:TritonTarget",
    "triton+grpc": "servecheck.targets.triton_grpc:TritonGrpcTarget",
    "openai": "servecheck.targets.openai:OpenAITarget",
    "http": "servecheck.targets.openai:OpenAITarget",
    "https": "servecheck.targets.openai:OpenAITarget",
    "hf-endpoint": "servecheck.targets.hf_endpoint:HFEndpointTarget",
    "hf-endpoint+https": "servecheck.targets.hf_endpoint:HFEndpointTarget",
}


class Target(ABC):
    """A model behind some interface. Subclasses implement ``generate``; the rest is optional."""

    spec: str
    max_concurrency: int = 1
    """How many requests the collector may have in flight at once."""

    @abstractmethod
    async def generate(self, request: Request) -> ResponseRecord:
        """Answer one request. Raise ``TargetError`` for a failure of this request only."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models or other resources (outside the event loop)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, inside the collector's event loop."""


def open_target(spec: str) -> Target:
    scheme, sep, rest = spec.partition(":")
    if not sep or scheme not in REGISTRY:
        known = ", ".join(f"{s}:…" for s in REGISTRY)
        raise InputError(f"unknown target (known: {known})", where=spec)
    module, _, name = REGISTRY[scheme].partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.from_spec(spec, rest)

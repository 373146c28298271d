"""Which OpenAI-compatible server is behind a URL, and the names it reads each setting under.

Every engine speaks the OpenAI API, and each reads the settings beyond it under its own names:
llama.cpp (``llama-server`` and llama-cpp-python's server alike) reads ``repeat_penalty`` and
silently drops ``repetition_penalty`` (a record then says 1.0 was sent while the server ran its
default 1.1), and returns log-probs only when ``top_logprobs`` is set; TGI's Messages API has no
``top_k``, ``min_p`` or repetition penalty at all. So the server is found once, from the info
endpoint each has (llama-cpp-python, which has none, from the title of its ``/openapi.json``),
and every setting goes under the name it reads, or the request is refused with the reason;
never a silent default. A server that does not say what it is gets the extra fields under
vLLM's names, and ``generate`` says once that it may ignore them.

``reasoning_effort`` is the API's own top-level field, which vLLM (0.32: ``none`` … ``high``,
``xhigh``, ``max``) and SGLang read and hand to the chat template, each with ``enable_thinking``
derived from it. ``llama-server`` reads template variables per request only from
``chat_template_kwargs``, so there the variables it implies go in that field
(``formats.parameters.template_variables``); llama-cpp-python's server takes template variables
only at load time and TGI's Messages API has no such field, so both refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from servecheck.collect.targets.http import HttpClient
from servecheck.errors import InputError, TargetError

EXTRA = ("top_k", "min_p", "repetition_penalty")
"""Settings outside the OpenAI API, sent as extra body fields."""
REFUSABLE = (*EXTRA, "reasoning_effort")
"""What a server may have no way to take (``Dialect.unsupported``)."""


@dataclass(frozen=True)
class Dialect:
    name: str
    renames: dict[str, str] = field(default_factory=dict)
    """servecheck's name → the server's."""
    unsupported: frozenset[str] = frozenset()
    """Settings the server has no way to take: a request that sets one is refused."""
    logprob_fields: dict[str, Any] = field(default_factory=dict)
    """What the server needs besides ``logprobs`` to return them (chat mode)."""
    token_ids: bool = False
    """It returns token ids and the built prompt on request (vLLM)."""
    identified: bool = True
    effort_in_template_kwargs: bool = False
    """It reads ``reasoning_effort`` only as a template variable (``chat_template_kwargs``), not
    as the API's top-level field (llama.cpp's ``llama-server``)."""

    def body_name(self, setting: str) -> str:
        return self.renames.get(setting, setting)

    def refuse(self, settings: dict[str, Any], where: str) -> None:
        refused = sorted(k for k, v in settings.items() if v is not None and k in self.unsupported)
        if refused:
            raise InputError(f"{self.name} has no way to take {', '.join(refused)} (its API does "
                             f"not read {'it' if len(refused) == 1 else 'them'}): leave "
                             f"{'it' if len(refused) == 1 else 'them'} unset in the prompts "
                             f"file, or the record would claim a setting the server never ran",
                             where=where)


VLLM = Dialect("vLLM", token_ids=True)
LLAMA_CPP = Dialect("llama.cpp", renames={"repetition_penalty": "repeat_penalty"},
                    logprob_fields={"top_logprobs": 1}, effort_in_template_kwargs=True)
LLAMA_CPP_PYTHON = Dialect("llama-cpp-python (llama.cpp)",
                           renames={"repetition_penalty": "repeat_penalty"},
                           unsupported=frozenset({"reasoning_effort"}),
                           logprob_fields={"top_logprobs": 1})
"""llama-cpp-python's own OpenAI server: llama.cpp's sampler and names, but none of
``llama-server``'s endpoints (``/props`` is 404); its ``/openapi.json`` names it."""
TGI = Dialect("TGI", unsupported=frozenset({*EXTRA, "reasoning_effort"}))
SGLANG = Dialect("SGLang")
UNKNOWN = Dialect("an OpenAI-compatible server", identified=False)

NAMED = {"vllm": VLLM, "llama.cpp": LLAMA_CPP, "llama-cpp-python": LLAMA_CPP_PYTHON,
         "tgi": TGI, "sglang": SGLANG, "openai": UNKNOWN}
"""What ``?server=NAME`` names, for a server whose info endpoints a gateway hides; ``openai``
sends only the API's own names and vLLM's extra ones, as for a server that says nothing."""

PROBES: tuple[tuple[str, str], ...] = (("/version", "version"), ("/props", "props"),
                                       ("/info", "info"), ("/get_server_info", "sglang"),
                                       ("/openapi.json", "openapi"))
"""Info endpoints, in the order tried (each engine's own; the first that answers names it)."""


def _named(kind: str, body: Any) -> Dialect | None:
    if not isinstance(body, dict):
        return None
    if kind == "version" and "version" in body:
        return VLLM
    if kind == "props" and ("default_generation_settings" in body or "build_info" in body):
        return LLAMA_CPP
    if kind == "info" and ("model_id" in body or "router" in body):
        return TGI
    if kind == "sglang" and body:
        return SGLANG
    if kind == "openapi" and "llama.cpp" in str((body.get("info") or {}).get("title", "")):
        return LLAMA_CPP_PYTHON
    return None


async def detect(base_url: str, secrets: list[str]) -> Dialect:
    """The server behind ``base_url`` (the API root, without ``/v1``), from one client."""
    probe = HttpClient(base_url, 30, 1, secrets=secrets)
    try:
        for path, kind in PROBES:
            try:
                found = _named(kind, await probe.request("GET", path))
            except TargetError as e:
                if e.transient:
                    raise
                continue
            if found:
                return found
        return UNKNOWN
    finally:
        await probe.close()

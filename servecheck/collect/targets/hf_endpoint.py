"""``hf-endpoint://HOST[:PORT][/PATH]`` (``hf-endpoint+https://…`` for TLS): an HF Inference
Endpoint running servecheck's handler (``servecheck/servers/endpoint/handler.py``), or any handler that
takes ``{"inputs", "parameters"}`` and answers ``[{"generated_text": …}]``.

``mode=chat`` (default) sends the conversation and lets the endpoint template it; the handler
returns the prompt it built and its ids, so the template check runs on what the model saw.
``mode=completions`` templates here with the chat template of the reference the user names
(``?template=PATH|builtin`` or ``generate --reference``, the option winning) and sends the
string with ``parameters.raw_prompt`` true (servecheck's handler templates a plain string as one
user turn otherwise); without one it is bad input, never the built-in model's template. Chat mode needs no
reference: the handler's text keeps its end marker. Token ids, raw
log-probs and the finish reason are recorded when the handler returns them. The token is read
from the environment variable named by ``?api_key_env=`` (default ``HF_TOKEN``) and never
recorded.
``?max_body_mb=N`` (default 64) caps what is read of one answer.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from servecheck.collect.targets import DEFAULT_MAX_TOKENS, Target, required_reference, spec_options
from servecheck.collect.targets.answers import Reader, get, record
from servecheck.collect.targets.clock import Stopwatch
from servecheck.collect.targets.declared import DECLARED, declared
from servecheck.collect.targets.http import HttpClient
from servecheck.errors import InputError
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference

OPTIONS = ("mode", "template", "api_key_env", "timeout", "concurrency", "max_body_mb", *DECLARED)


class HFEndpointTarget(Target):
    takes_reference = True

    def __init__(self, spec: str, url: str, path: str, opts: dict[str, str],
                 reference: str | None = None) -> None:
        self.spec = spec
        self.path = path
        self.mode = opts.get("mode", "chat")
        if self.mode not in ("chat", "completions"):
            raise InputError(f"mode must be chat or completions, not '{self.mode}'", where=spec)
        self.ref: Reference | None = None
        """Completions mode only: the user's reference, whose chat template builds the prompt."""
        if self.mode == "completions":
            self.ref = Reference(required_reference(
                spec, opts.get("template"), reference,
                "mode=completions templates the prompt here with the model's chat template"))
        self.http = HttpClient.from_options(spec, url, opts, "HF_TOKEN", concurrency=4)
        self.serving = declared(opts, spec)
        self.max_concurrency = self.http.max_connections
        self.secrets = self.http.secrets

    @classmethod
    def from_spec(cls, spec: str, rest: str, reference: str | None = None) -> HFEndpointTarget:
        tls = spec.startswith("hf-endpoint+https:")
        url = urlsplit(("https:" if tls else "http:") + rest)
        if not url.hostname:
            raise InputError("expected hf-endpoint://HOST[:PORT][/PATH]", where=spec)
        opts = {k: v[-1] for k, v in spec_options(url.query, OPTIONS, spec).items()}
        port = f":{url.port}" if url.port else ""
        return cls(spec, f"{url.scheme}://{url.hostname}{port}", url.path or "/", opts, reference)

    @property
    def takes(self) -> frozenset[str]:  # type: ignore[override]
        """Tools and template variables only where the prompt is templated here (completions);
        in chat mode the endpoint's own handler templates the bare messages."""
        return frozenset({"tools", "chat_template_kwargs", "reasoning_effort"}) \
            if self.ref is not None else frozenset()

    async def generate(self, request: Request) -> ResponseRecord:
        clock = Stopwatch()
        p = request.parameters
        params: dict[str, Any] = {"max_new_tokens": p.max_tokens or DEFAULT_MAX_TOKENS}
        for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed"):
            if getattr(p, name) is not None:
                params[name] = getattr(p, name)
        sent_prompt = ""
        if self.ref is not None:  # completions mode: the prompt templated here, sent raw
            sent_prompt = self.ref.render(request.conversation, parameters=request.parameters)
            inputs: Any = sent_prompt
            params["raw_prompt"] = True  # servecheck's handler templates a plain string
        else:
            inputs = request.conversation.hf_messages()
        data = await self.http.request("POST", self.path, {"inputs": inputs, "parameters": params})
        read = Reader(self.path)
        if isinstance(data, list):
            data = read.obj(data[0] if data else None, "[0]")
        answer = read.obj(data, "the body")
        text = read.text(get(answer, "generated_text"), "generated_text")
        reason = read.text(answer.get("finish_reason"), "finish_reason", optional=True)
        return record(
            self.path, id=request.id, conversations=request.conversation, parameters=p,
            input=read.text(answer.get("prompt_text"), "prompt_text", optional=True) or sent_prompt,
            output=text, target=self.spec,
            finish_reason=reason if reason in ("stop", "length") else None,
            prompt_token_ids=read.integers(answer.get("prompt_token_ids"), "prompt_token_ids",
                                           optional=True),
            output_token_ids=read.integers(answer.get("token_ids"), "token_ids", optional=True),
            output_logprobs=read.logprobs(answer.get("logprobs"), "logprobs", optional=True),
            sent=params, timing=clock.timing(), serving=self.serving)

    async def aclose(self) -> None:
        await self.http.close()

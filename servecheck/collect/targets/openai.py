"""``openai://HOST:PORT[/v1]`` (or an ``http(s)://`` URL): any OpenAI-compatible server.

vLLM, SGLang, TGI, trtllm-serve and llama.cpp all speak this API. Two modes:

- ``mode=chat`` (default): the conversation is sent and the server templates it. The prompt it
  built is recovered where the server allows (vLLM: ``return_prompt_text`` and
  ``return_token_ids``), so the template check still works; where it does not, the record says
  so and the template check is skipped for it rather than guessed.
- ``mode=completions``: the prompt is templated here with the chat template of the reference the
  user names (``?template=PATH|builtin`` or ``generate --reference``, the option winning) and
  sent raw, as Triton users do. Without one it is bad input: a prompt templated for some other
  model would test nothing.

``top_k``, ``min_p`` and ``repetition_penalty`` go as the extra body fields servers accept. On a
vLLM server (detected once, from ``GET /version``) servecheck also asks for token ids
(``return_token_ids``, ``return_tokens_as_token_ids``) and, in completions mode, sends
``add_special_tokens: false`` so the templated ``<bos>`` is not doubled. ``reasoning_effort``
goes as the API's top-level field in chat mode (llama.cpp: as the template variables it implies,
``dialects.py``) and into the prompt templated here in completions mode
(``formats.parameters.template_variables``), the API's completions having no such field.

Servers strip the end token from the text. With a reference, the one the output stopped on is
put back: the decoded end token when the returned ids end on one, else, without ids, the
reference's end-of-turn marker on a ``stop`` finish with no stop string; ``sent["end_marker"]``
then says which reference it came from. Without a reference (chat mode only) nothing is
appended, since the marker is the served model's and only its checkpoint knows it: the text is
recorded as the server returned it, ``finish_reason`` as returned, ``sent["end_marker"]`` says
``unknown``, and ``generate`` prints once how to name the reference (``Target.notes``).

``?stream=1`` reads each answer as a Server-Sent Events stream (``streamed.py``), for the
stream probe and for checking what a streaming client gets. The server's own dialect (names,
refusals) is found once (``dialects.py``). With reasoning and tool parsers on, the record's
``output`` is the raw generated text (``parsed.py``) and the parts are kept beside it.

The API key comes from the environment variable named by ``?api_key_env=`` (default
``OPENAI_API_KEY``); it is sent as a header and never written to a record or a log.
Credentials in the URL (``openai://user:password@host``) are refused (``open_target``): they
would never be sent, and the spec is written into every record.

Every answer is read through ``answers.Reader``: a field of the wrong type (a log-prob ``"abc"``,
``choices`` missing) fails the request with its place named. ``?max_body_mb=N`` (default 64)
caps what is read of one answer, a stream's chunks together.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

from servecheck.collect.targets import (
    DEFAULT_MAX_TOKENS,
    Target,
    named_reference,
    required_reference,
    spec_options,
)
from servecheck.collect.targets.answers import Reader, get, record
from servecheck.collect.targets.clock import Stopwatch
from servecheck.collect.targets.declared import DECLARED, declared
from servecheck.collect.targets.dialects import EXTRA, NAMED, REFUSABLE, UNKNOWN, Dialect, detect
from servecheck.collect.targets.http import HttpClient
from servecheck.collect.targets.parsed import raw_output, spelling, split_fields, usage_of
from servecheck.collect.targets.streamed import joined
from servecheck.errors import InputError
from servecheck.formats.conversation import Conversation
from servecheck.formats.parameters import template_variables
from servecheck.formats.prompts import Request
from servecheck.formats.records import END_MARKER_UNKNOWN, ResponseRecord, Timing
from servecheck.reference.model import Reference

OPTIONS = ("mode", "model", "template", "api_key_env", "timeout", "concurrency", "stream",
           "server", "max_body_mb", *DECLARED)
SETTINGS = ("temperature", "top_p", "top_k", "min_p", "seed", "repetition_penalty",
            "presence_penalty", "frequency_penalty")
UNKNOWN_END = END_MARKER_UNKNOWN


def api_messages(conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation in the API's form: a tool call's arguments as a JSON string, with an id."""
    out = conversation.hf_messages()
    for m, turn in zip(out, conversation.contents, strict=True):
        if turn.tool_calls is not None:
            m["tool_calls"] = [{"id": c.id or f"call_{k}", "type": "function", "function": {
                "name": c.function.name, "arguments": c.function.arguments if isinstance(
                    c.function.arguments, str) else json.dumps(c.function.arguments)}}
                for k, c in enumerate(turn.tool_calls)]
    return out


class OpenAITarget(Target):
    takes_reference = True
    takes = frozenset({"tools", "chat_template_kwargs", "stop", "n", "tool_choice",
                       "reasoning_effort", "response_format", "structured_outputs"})

    def __init__(self, spec: str, base_url: str, opts: dict[str, str],
                 reference: str | None = None) -> None:
        self.spec = spec
        self.mode = opts.get("mode", "chat")
        if self.mode not in ("chat", "completions"):
            raise InputError(f"mode must be chat or completions, not '{self.mode}'", where=spec)
        self.model = opts.get("model")
        stream = opts.get("stream", "0")
        if stream not in ("0", "1"):
            raise InputError(f"stream must be 0 or 1, not '{stream}'", where=spec)
        self.stream = stream == "1"
        """Read the answer as a Server-Sent Events stream (``streamed.py``)."""
        template = opts.get("template")
        if self.mode == "completions":
            chosen: str | None = required_reference(
                spec, template, reference, "mode=completions templates the prompt here with the "
                                           "model's chat template")
        else:
            chosen = named_reference(template, reference)
        self.ref: Reference | None = None if chosen is None else Reference(chosen)
        """The user's reference: the chat template (completions) and the end markers; None in
        chat mode when none was named, and then no end marker is restored."""
        self.http = HttpClient.from_options(spec, base_url, opts, "OPENAI_API_KEY", concurrency=8)
        self.max_concurrency = self.http.max_connections
        self.secrets = self.http.secrets
        server = opts.get("server")
        if server is not None and server not in NAMED:
            raise InputError(f"server must be one of {', '.join(NAMED)}, not {server!r}",
                             where=spec)
        self.dialect: Dialect | None = NAMED[server] if server else None
        """The server named by ``?server=``, else found at the first request
        (``dialects.detect``), once for all requests."""
        self._setup_lock = asyncio.Lock()
        self.serving = declared(opts, spec)
        """What the user said of the deployment (``declared``), on every record."""

    @classmethod
    def from_spec(cls, spec: str, rest: str, reference: str | None = None) -> OpenAITarget:
        scheme = spec.partition(":")[0]
        url = urlsplit(("https:" if scheme == "https" else "http:") + rest)
        if not url.hostname:
            raise InputError("expected openai://HOST:PORT[/v1] or an http(s):// URL", where=spec)
        opts = {k: v[-1] for k, v in spec_options(url.query, OPTIONS, spec).items()}
        path = url.path.rstrip("/") or "/v1"
        port = f":{url.port}" if url.port else ""
        return cls(spec, f"{url.scheme}://{url.hostname}{port}{path}", opts, reference)

    async def _setup(self) -> None:
        async with self._setup_lock:  # concurrent first requests: one probe, one client
            if self.dialect is None:
                self.dialect = await detect(self.http.base_url.removesuffix("/v1"),
                                            self.http.secrets)
            if self.model is None:
                await self._find_model()

    async def _find_model(self) -> None:
        if self.model is None:
            models = await self.http.request("GET", "/models")
            try:
                self.model = models["data"][0]["id"]
            except (KeyError, IndexError, TypeError):
                raise self.http.error(f"GET /models named no model: {str(models)[:200]}") from None

    def _body(self, request: Request) -> tuple[dict[str, Any], str]:
        p = request.parameters
        dialect = self.dialect or UNKNOWN
        dialect.refuse({k: getattr(p, k) for k in REFUSABLE}, where=f"{self.spec} ({request.id})")
        body: dict[str, Any] = {"model": self.model, "max_tokens": p.max_tokens or DEFAULT_MAX_TOKENS}
        for name in ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
                     *EXTRA):
            if getattr(p, name) is not None:
                body[dialect.body_name(name)] = getattr(p, name)
        for name in ("stop", "n", "tool_choice", "response_format", "structured_outputs"):
            if getattr(p, name) is not None:
                body[name] = getattr(p, name)
        conv = request.conversation
        prompt = ""
        if self.mode == "chat" and conv.tools:
            body["tools"] = conv.tools
        if self.mode == "chat" and conv.chat_template_kwargs:
            body["chat_template_kwargs"] = conv.chat_template_kwargs
        if self.mode == "chat" and p.reasoning_effort is not None:
            if dialect.effort_in_template_kwargs:  # what the top-level field would have implied
                body["chat_template_kwargs"] = {k: v for k, v in template_variables(
                    conv, p).items() if k != "tools"}
            else:
                body["reasoning_effort"] = p.reasoning_effort
        if self.mode == "completions":
            assert self.ref is not None  # required in completions mode (__init__)
            # templated here, so the effort reaches the prompt as the server's template would
            prompt = self.ref.render_messages(conv.hf_messages(), **template_variables(conv, p))
            body.update(prompt=prompt, logprobs=1)
        else:
            body.update(messages=api_messages(request.conversation), logprobs=True,
                        **dialect.logprob_fields)
        if dialect.token_ids:
            body.update(return_token_ids=True, return_tokens_as_token_ids=True)
            if self.mode == "completions":
                body["add_special_tokens"] = False
            else:
                body["return_prompt_text"] = True
        return body, prompt

    async def generate(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        clock = Stopwatch()
        await self._setup()
        body, prompt = self._body(request)
        path = "/completions" if self.mode == "completions" else "/chat/completions"
        if self.stream:
            body.update(stream=True, stream_options={"include_usage": True})
            data = await joined(self.http.events(path, body), self.mode == "chat", path)
        else:
            data = await self.http.request("POST", path, body)
        read = Reader(path)
        data = read.obj(data, "the body")
        choices = read.items(get(data, "choices"), "choices")
        wanted = request.parameters.n or 1
        if len(choices) < wanted:
            raise read.broken("choices", f"has {len(choices)} entr{'y' if len(choices) == 1 else 'ies'}"
                              f" where {wanted} {'was' if wanted == 1 else 'were'} asked for")
        for k, choice in enumerate(choices):
            read.obj(choice, f"choices[{k}]")
            read.integer(choice.get("index", 0), f"choices[{k}].index")
        timing = clock.timing()
        ordered = sorted(enumerate(choices), key=lambda kc: kc[1].get("index", 0))
        records = [self._record(request, body, prompt, data, choice, timing, read, f"choices[{k}]")
                   for k, choice in ordered[:wanted]]
        return records if request.parameters.n else records[0]

    def _record(self, request: Request, body: dict[str, Any], prompt: str, data: dict[str, Any],
                choice: dict[str, Any], timing: Timing, read: Reader, at: str) -> ResponseRecord:
        """One choice's record; every field is read through ``read``, so one of the wrong type
        fails this request with its place in the answer named (``at``: the choice's)."""
        reason = read.text(choice.get("finish_reason"), f"{at}.finish_reason", optional=True)
        logprobs_of = read.obj(choice.get("logprobs"), f"{at}.logprobs", optional=True)
        ids = read.integers(choice.get("token_ids"), f"{at}.token_ids", optional=True)
        if self.mode == "completions":
            message: dict[str, Any] = {}
            parts: dict[str, Any] = {}
            text = read.text(get(choice, "text"), f"{at}.text")
            logprobs = read.logprobs(logprobs_of.get("token_logprobs"),
                                    f"{at}.logprobs.token_logprobs", optional=True)
            for k, top in enumerate(read.items(logprobs_of.get("top_logprobs"),
                                               f"{at}.logprobs.top_logprobs", optional=True)):
                for token, value in read.obj(top, f"{at}.logprobs.top_logprobs[{k}]",
                                             optional=True).items():
                    read.number(value, f"{at}.logprobs.top_logprobs[{k}][{token!r}]")
            prompt_ids = read.integers(choice.get("prompt_token_ids"), f"{at}.prompt_token_ids",
                                       optional=True)
        else:
            message = read.obj(get(choice, "message"), f"{at}.message")
            parts = split_fields(message, read, f"{at}.message")
            text = read.text(message.get("content"), f"{at}.message.content", optional=True)
            logprobs = self._chat_logprobs(logprobs_of, read, f"{at}.logprobs")
            prompt = read.text(data.get("prompt_text"), "prompt_text", optional=True) or ""
            prompt_ids = read.integers(data.get("prompt_token_ids"), "prompt_token_ids",
                                       optional=True)
        sent = {k: v for k, v in body.items() if k not in ("prompt", "messages", "tools")}
        sent["server"] = (self.dialect or UNKNOWN).name
        unset = [k for k in SETTINGS if getattr(request.parameters, k) is None]
        if unset:
            sent["server_defaults"] = unset  # not sent: whatever the server defaults to ran
        if parts and self.ref is not None:  # the parsers split the output: the raw text is wanted
            text, ids, how = raw_output(parts, ids, self.ref, request.parameters.stop)
            logprobs = logprobs[: len(ids)] if ids and logprobs else None
            sent["output"] = how
        if text is None:
            raise read.broken(f"{at}.message.content", "is None, and no parser split the output "
                              "to rebuild it from (name the reference to rebuild it)"
                              if parts else "is None, not a string")
        if ids and request.parameters.stop and self.ref is not None and not parts:
            ids = spelling(ids, text, self.ref)  # a stop string cut from the text, not the ids
            logprobs = logprobs[: len(ids)] if ids and logprobs else None
        marker = self._end_marker(ids, reason, choice.get("stop_reason"))
        if self.ref is None:
            sent["end_marker"] = UNKNOWN_END
        elif marker and not text.endswith(marker):
            text += marker
            sent["end_marker"] = f"{marker} restored from the reference {self.ref.spec}"
        return record(
            read.where, id=request.id, conversations=request.conversation,
            parameters=request.parameters, input=prompt, output=text, target=self.spec,
            finish_reason=reason if reason in ("stop", "length", "tool_calls") else None,
            choice=choice.get("index", 0) if request.parameters.n else None,
            prompt_token_ids=prompt_ids or None, output_token_ids=ids or None,
            output_logprobs=logprobs or None,
            usage=usage_of(data, read) if not request.parameters.n or request.parameters.n == 1
            else None, sent=sent, timing=timing, serving=self.serving, **parts)

    @staticmethod
    def _chat_logprobs(logprobs: dict[str, Any], read: Reader, at: str) -> list[float] | None:
        """``logprobs.content``'s log-prob per token; each entry's ``top_logprobs`` checked too,
        since a server that breaks one breaks the answer."""
        out = []
        for k, entry in enumerate(read.items(logprobs.get("content"), f"{at}.content",
                                             optional=True)):
            entry = read.obj(entry, f"{at}.content[{k}]")
            out.append(read.logprob(get(entry, "logprob"), f"{at}.content[{k}].logprob"))
            for j, top in enumerate(read.items(entry.get("top_logprobs"),
                                               f"{at}.content[{k}].top_logprobs", optional=True)):
                top = read.obj(top, f"{at}.content[{k}].top_logprobs[{j}]")
                read.number(top.get("logprob"), f"{at}.content[{k}].top_logprobs[{j}].logprob",
                            optional=True)
        return out or None  # type: ignore[return-value]

    def _end_marker(self, ids: list[int] | None, reason: str | None, stop_reason: Any) -> str:
        """The end marker the server stripped from the text, to put back, or "". Only the user's
        reference can say which token ends a turn; without one there is nothing to put back."""
        if self.ref is None:
            return ""
        if ids:
            last = ids[-1]
            return self.ref.decode([last]) if last in self.ref.end_ids else ""
        if reason == "stop" and stop_reason is None and self.ref.turn_end_marker:
            return self.ref.turn_end_marker
        return ""

    def notes(self) -> list[str]:
        out = []
        if self.dialect is not None and not self.dialect.identified:
            out.append(f"{self.spec}: the server did not say which engine it is (no vLLM, "
                       f"llama.cpp, TGI or SGLang info endpoint answered); top_k, min_p and "
                       f"repetition_penalty went as extra body fields, which it may ignore. "
                       f"The sampler check shows a setting that was not applied.")
        if self.ref is not None:
            return out
        return [*out, f"{self.spec}: end markers were not restored, because no reference was "
                f"named: outputs are recorded as the server returned them (servers strip the end token), "
                f"so 'check' cannot tell a correct end of turn from a missing one. Name the served "
                f"model's checkpoint with 'generate --reference PATH' or '?template=PATH' to "
                f"restore them."]

    async def aclose(self) -> None:
        await self.http.close()

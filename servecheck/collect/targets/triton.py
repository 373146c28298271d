"""``triton://HOST:PORT/MODEL``: a TensorRT-LLM model on Triton, over HTTP.

The prompt is templated here, with the chat template of the reference the user names
(``?template=PATH|builtin`` or ``generate --reference``, the option winning; one of them is
required), and sent as ``text_input``, as Triton users do; a model that declares
``input_ids`` (the ``tensorrt_llm`` model) is sent the reference tokenization instead, recorded as
``prompt_token_ids``. What else is sent, and under which names, comes from the model's config
(``trtllm.Interface``). A decoupled model (or ``?stream=1``) is read through ``generate_stream``
(Server-Sent Events), any other through ``generate``. The record keeps what came back verbatim:
``output`` is the server's ``text_output`` (the decoded ``output_ids`` only for a model that
sends no text), ``output_token_ids`` its ``output_ids`` and ``output_logprobs`` its
``output_log_probs``, each joined across stream frames; a prompt echoed because
``exclude_input_in_output`` was not honoured stays in them for ``check`` to name. An
``{"error": …}`` body or stream frame, even with HTTP 200, is an error, never an output.

Options: ``template``, ``stream=0|1``, ``end_id=N|auto`` (``auto``: the reference's end-of-turn
token, for engines whose default end id is ``<eos>``), ``stop_words=W`` (repeatable),
``timeout=S`` (read timeout, default 600 s), ``concurrency=N`` (default 8), ``max_body_mb=N``
(what is read of one answer, a stream's frames together, default 64).
``triton+grpc://`` (``triton_grpc.py``) shares all of this and changes only the transport.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from servecheck.collect.targets import DEFAULT_MAX_TOKENS, Target, required_reference, spec_options
from servecheck.collect.targets.answers import Reader, record
from servecheck.collect.targets.clock import Stopwatch
from servecheck.collect.targets.declared import DECLARED, declared
from servecheck.collect.targets.http import DONE, HttpClient, max_body_bytes
from servecheck.collect.targets.trtllm import Answer, Interface, Options, short_error
from servecheck.errors import InputError, TargetError
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference

OPTIONS = ("template", "stream", "end_id", "stop_words", "timeout", "concurrency", "max_body_mb",
           *DECLARED)


class TritonBase(Target):
    """Everything but the wire: templating, the interface, the record."""

    takes_reference = True

    def __init__(self, spec: str, host: str, port: int, model: str, opts: dict[str, list[str]],
                 reference: str | None = None) -> None:
        self.spec, self.host, self.port, self.model = spec, host, port, model
        single = {k: v[-1] for k, v in opts.items()}
        self.ref = Reference(required_reference(spec, single.get("template"), reference,
                                                "Triton is sent a prompt templated here"))
        try:
            end = single.get("end_id")
            end_id = None if end is None else (self.ref.end_ids[-1] if end == "auto" else int(end))
            stream = {None: None, "1": True, "true": True, "0": False, "false": False}[
                single.get("stream")]
            self.read_timeout = float(single.get("timeout", 600))
            self.max_concurrency = int(single.get("concurrency", 8))
        except (KeyError, ValueError) as e:
            raise InputError(f"bad option value ({e})", where=spec) from None
        if not 1 <= self.max_concurrency <= 4096 or not 0 < self.read_timeout < 1e6:
            raise InputError(f"bad option value: concurrency must be 1…4096 (got "
                             f"{self.max_concurrency}) and timeout a number of seconds > 0 (got "
                             f"{self.read_timeout:g})", where=spec)
        self.max_body = max_body_bytes(spec, single.get("max_body_mb"))
        self.serving = declared(single, spec)
        """Bytes read of one answer at most, a stream's frames together."""
        self.options = Options(end_id, tuple(opts.get("stop_words", [])), stream)
        self._interface: Interface | None = None

    @classmethod
    def from_spec(cls, spec: str, rest: str, reference: str | None = None) -> TritonBase:
        url = urlsplit("http:" + rest)
        model = url.path.strip("/")
        if not url.hostname or not url.port or not model or "/" in model:
            scheme = spec.partition(":")[0]
            raise InputError(f"expected {scheme}://HOST:PORT/MODEL", where=spec)
        return cls(spec, url.hostname, url.port, model, spec_options(url.query, OPTIONS, spec),
                   reference)

    @abstractmethod
    async def model_config(self) -> dict[str, Any]:
        """The model's config as Triton reports it (JSON field names)."""

    @abstractmethod
    def responses(self, interface: Interface, sent: dict[str, Any], stream: bool
                  ) -> AsyncIterator[dict[str, Any]]:
        """Send one request; yield the outputs of each response (one unless streaming)."""

    async def interface(self) -> Interface:
        if self._interface is None:
            self._interface = Interface.from_config(self.model, await self.model_config())
        return self._interface

    async def generate(self, request: Request) -> ResponseRecord:
        clock = Stopwatch()
        p = request.parameters
        prompt = self.ref.render(request.conversation, parameters=p)
        interface = await self.interface()
        prompt_ids = self.ref.encode(prompt) if interface.takes_ids else None
        sent = interface.build(prompt if prompt_ids is None else prompt_ids, p,
                               p.max_tokens or DEFAULT_MAX_TOKENS, self.options)
        answer = Answer()
        streams = interface.streams(self.options)
        async for outputs in self.responses(interface, sent, streams):
            answer.add(outputs)
        if not answer.frames:
            raise TargetError("the stream ended before the server said it was finished: no "
                              "response came" if streams else "no response came")
        reason = answer.finish_reason if answer.finish_reason in ("stop", "length") else None
        # the server's own text, so that a detokenizer bug shows against its ids
        text = answer.text if answer.text is not None else self.ref.decode(answer.ids or [])
        return record(
            "", id=request.id, conversations=request.conversation, parameters=p, input=prompt,
            output=text, target=self.spec, prompt_token_ids=prompt_ids,
            output_token_ids=answer.ids, output_logprobs=answer.logprobs or None,
            finish_reason=reason, sent=interface.as_received(sent),
            timing=clock.timing(), serving=self.serving)


class TritonTarget(TritonBase):
    """HTTP: Triton's generate extension (``generate`` / ``generate_stream``)."""

    _http: HttpClient | None = None

    def http(self) -> HttpClient:
        if self._http is None:
            self._http = HttpClient(f"http://{self.host}:{self.port}", self.read_timeout,
                                    self.max_concurrency, shorten=short_error,
                                    max_body=self.max_body)
        return self._http

    async def model_config(self) -> dict[str, Any]:
        return _object(f"/v2/models/{self.model}/config",
                       await self.http().request("GET", f"/v2/models/{self.model}/config"))

    async def responses(self, interface: Interface, sent: dict[str, Any], stream: bool
                        ) -> AsyncIterator[dict[str, Any]]:
        path = f"/v2/models/{self.model}/{'generate_stream' if stream else 'generate'}"
        if not stream:
            yield _object(path, await self.http().request("POST", path, sent))
            return
        # Triton's generate_stream sends no [DONE] and no final flag: the final response is the
        # end of the HTTP answer itself, and a connection cut before it is an error (http.py)
        async for event in self.http().events(path, sent):
            if event is not DONE:
                yield _object(path, event)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None


def _object(path: str, data: Any) -> dict[str, Any]:
    return Reader(path).obj(data, "the body")

"""``triton://HOST:PORT/MODEL``: Triton's HTTP generate extension, TensorRT-LLM interface.

The prompt is templated here, with the chat template of ``?template=PATH|builtin`` (the
reference checkpoint), and sent as ``text_input``, as Triton users do. The seed's input name is
read from the model's config (``seed``, or ``random_seed`` before the 2025 rename). The record
keeps what came back verbatim: a prompt echoed because ``exclude_input_in_output`` was not
honoured stays in ``output`` for ``check`` to name. An ``{"error": …}`` body, even with HTTP 200,
is an error, never an output.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from urllib.parse import parse_qs, urlsplit

import httpx

from servecheck.errors import InputError, TargetError
from servecheck.prompts import Request
from servecheck.records import ResponseRecord, Timing
from servecheck.reference import Reference
from servecheck.targets import DEFAULT_MAX_TOKENS, Target

TIMEOUT = httpx.Timeout(connect=10.0, read=600.0, write=30.0, pool=600.0)
"""Long reads: a generation of thousands of tokens on a busy server takes minutes."""


class TritonTarget(Target):
    max_concurrency = 8

    def __init__(self, base_url: str, model: str, template: str, spec: str) -> None:
        self.spec = spec
        self.base_url = base_url
        self.model = model
        self.ref = Reference(template)
        self._client: httpx.AsyncClient | None = None
        self._seed_name: str | None = None

    @classmethod
    def from_spec(cls, spec: str, rest: str) -> TritonTarget:
        url = urlsplit("http:" + rest)
        model = url.path.strip("/")
        if not url.hostname or not url.port or not model or "/" in model:
            raise InputError("expected triton://HOST:PORT/MODEL", where=spec)
        opts = {k: v[-1] for k, v in parse_qs(url.query).items()}
        template = opts.pop("template", "builtin")
        if opts:
            raise InputError(f"unknown option(s) {sorted(opts)} (known: template)", where=spec)
        return cls(f"http://{url.hostname}:{url.port}", model, template, spec)

    async def _post(self, path: str, body: dict | None = None) -> dict:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=TIMEOUT)
        try:
            r = await (self._client.post(path, json=body) if body is not None
                       else self._client.get(path))
        except httpx.HTTPError as e:
            raise TargetError(f"{self.base_url}{path}: {type(e).__name__}: {e}") from None
        try:
            data = r.json()
        except ValueError:
            raise TargetError(f"{self.base_url}{path}: HTTP {r.status_code}, not JSON: "
                              f"{r.text[:200]!r}") from None
        if r.status_code != 200 or "error" in data:
            raise TargetError(f"{self.base_url}{path}: HTTP {r.status_code}: "
                              f"{data.get('error', data)}")
        return data

    async def seed_name(self) -> str:
        if self._seed_name is None:
            config = await self._post(f"/v2/models/{self.model}/config")
            names = {i["name"] for i in config.get("input", [])}
            self._seed_name = "seed" if "seed" in names else "random_seed"
        return self._seed_name

    async def generate(self, request: Request) -> ResponseRecord:
        started = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        t0 = time.perf_counter()
        p = request.parameters
        prompt = self.ref.render(request.conversation)
        body: dict = {"text_input": prompt, "max_tokens": p.max_tokens or DEFAULT_MAX_TOKENS,
                      "return_log_probs": True, "exclude_input_in_output": True}
        for name in ("temperature", "top_p", "top_k"):
            if getattr(p, name) is not None:
                body[name] = getattr(p, name)
        if p.seed is not None:
            body[await self.seed_name()] = p.seed
        data = await self._post(f"/v2/models/{self.model}/generate", body)
        text = data.get("text_output")
        if not isinstance(text, str):
            raise TargetError(f"no text_output in the response: {str(data)[:200]}")
        logprobs = data.get("output_log_probs")
        logprobs = logprobs if isinstance(logprobs, list) else None
        return ResponseRecord(
            id=request.id, conversations=request.conversation, parameters=p, input=prompt,
            output=text, target=self.spec, output_logprobs=logprobs,
            timing=Timing(started_at=started, latency_s=round(time.perf_counter() - t0, 4)))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

"""HTTP for the targets: one connection pool per target, explicit timeouts and limits, and every
failure classified once, as transient (a retry may cure it) or final. No answer is read past
``max_body`` (``?max_body_mb=``): a runaway server must not be held in memory whole.

Built on aiohttp rather than httpx, the brief's first choice, on measurement: against an echo
model on a real Triton (benchmarks/client_rate.py, 2-core CPU, 8 in flight) httpx's async client
reached 210 requests/s and aiohttp 360 (450 with uvloop), where Triton's own perf_analyzer
reaches about 460; the client must not be what limits a collection run.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp

from servecheck.errors import InputError, TargetError, redact

TRANSIENT_STATUS = (429, 503)
CONNECT_TIMEOUT_S = 10.0
MAX_BODY_MB = 64.0
"""What is read of one answer (a stream: all its chunks together) before it is refused: a
server that sends 512 MiB must not be held in memory whole. ``?max_body_mb=N`` raises it."""
ERROR_BODY_BYTES = 1 << 20
"""What is read of an error answer: its message is cut to a few hundred characters anyway."""
DONE: Any = type("Done", (), {"__repr__": lambda self: "[DONE]"})()
"""What ``HttpClient.events`` yields for the stream's ``[DONE]``: the server said it finished."""


def max_body_bytes(spec: str, value: str | None) -> int:
    """The ``max_body_mb`` option in bytes (``MAX_BODY_MB`` when unset)."""
    try:
        mb = MAX_BODY_MB if value is None else float(value)
    except ValueError:
        mb = -1.0
    if not 0 < mb < 1 << 20:
        raise InputError(f"bad option value: max_body_mb must be a number of MiB > 0 (got "
                         f"{value!r})", where=spec)
    return int(mb * (1 << 20))


def error_message(body: str) -> str:
    """The server's own words: ``{"error": "…"}`` (Triton), ``{"error": {"message": "…"}}``
    (OpenAI), or the body itself; an SSE stream refused at once still has its ``data:``."""
    body = body.strip().removeprefix("data:").strip()
    try:
        data = json.loads(body)
    except ValueError:
        return body
    err = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(err, dict):
        err = err.get("message", err)
    return str(err)


class HttpClient:
    def __init__(self, base_url: str, read_timeout: float, max_connections: int,
                 headers: Mapping[str, str] | None = None,
                 shorten=lambda message: message[:500], secrets: Iterable[str] = (),
                 max_body: int = int(MAX_BODY_MB * (1 << 20))) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S,
                                             sock_read=read_timeout)
        self.max_connections = max_connections
        self.headers = dict(headers or {})
        self.shorten = shorten
        self.secrets = tuple(s for s in secrets if s)
        """What no error message may carry (the API key); see ``redact``."""
        self.max_body = max_body
        """Bytes read of one answer at most (a stream: all its lines together)."""
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def from_options(cls, spec: str, base_url: str, opts: dict[str, str], key_env: str,
                     concurrency: int) -> HttpClient:
        """The client a spec's ``timeout``, ``concurrency``, ``max_body_mb`` and ``api_key_env``
        options ask for; the key is read from the environment and only ever sent as a header."""
        key = os.environ.get(opts.get("api_key_env", key_env))
        try:
            max_connections = int(opts.get("concurrency", concurrency))
            timeout = float(opts.get("timeout", 600))
        except ValueError as e:
            raise InputError(f"bad option value ({e})", where=spec) from None
        if not 1 <= max_connections <= 4096 or not 0 < timeout < 1e6:
            raise InputError(f"bad option value: concurrency must be 1…4096 (got "
                             f"{max_connections}) and timeout a number of seconds > 0 (got "
                             f"{timeout:g})", where=spec)
        return cls(base_url, timeout, max_connections,
                   headers={"Authorization": f"Bearer {key}"} if key else None,
                   secrets=[key] if key else [],
                   max_body=max_body_bytes(spec, opts.get("max_body_mb")))

    def error(self, message: str, transient: bool = False, gone: bool = False,
              retry_after: float | None = None) -> TargetError:
        """A failure of one request, its message cleared of this client's secrets."""
        return TargetError(message, transient=transient, gone=gone, retry_after=retry_after,
                           secrets=self.secrets)

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, headers=self.headers, read_bufsize=1 << 22,
                connector=aiohttp.TCPConnector(limit=self.max_connections))
        return self._session

    def _failure(self, path: str, e: Exception) -> TargetError:
        where = f"{self.base_url}{path}"
        if isinstance(e, asyncio.TimeoutError):
            return self.error(f"{where}: timed out (connect {self.timeout.connect:g} s, read "
                              f"{self.timeout.sock_read:g} s)")
        # refused, reset, disconnected, or a name that does not resolve (ClientConnectorError
        # covers DNS; ClientOSError a reset): the server is unreachable, for now or for good
        gone = isinstance(e, aiohttp.ClientConnectorError | aiohttp.ServerDisconnectedError
                          | aiohttp.ClientOSError)
        return self.error(f"{where}: {type(e).__name__}: {e}", gone=gone)

    def _too_big(self, path: str) -> TargetError:
        mb = self.max_body / (1 << 20)
        return self.error(f"{self.base_url}{path}: answer body over {mb:g} MiB (raise with "
                          f"?max_body_mb=N on the target)")

    async def _read(self, path: str, r: aiohttp.ClientResponse) -> bytes:
        """The answer's body, refused past ``max_body`` rather than read whole."""
        if r.content_length is not None and r.content_length > self.max_body:
            raise self._too_big(path)
        chunks, size = [], 0
        async for chunk in r.content.iter_chunked(1 << 20):
            size += len(chunk)
            if size > self.max_body:
                raise self._too_big(path)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _lines(self, path: str, r: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        """The body's lines, refused once they pass ``max_body`` together (one endless line
        included, which aiohttp's own ``readline`` would hold up to its buffer limit)."""
        size, buffer = 0, bytearray()
        async for chunk in r.content.iter_any():
            size += len(chunk)
            if size > self.max_body:
                raise self._too_big(path)
            buffer += chunk
            if b"\n" in chunk:
                *lines, rest = bytes(buffer).split(b"\n")
                buffer = bytearray(rest)
                for line in lines:
                    yield line
        if buffer:
            yield bytes(buffer)

    async def _status_error(self, path: str, r: aiohttp.ClientResponse) -> TargetError:
        chunks, size = [], 0
        async for chunk in r.content.iter_chunked(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size >= ERROR_BODY_BYTES:
                break
        body = b"".join(chunks)[:ERROR_BODY_BYTES].decode("utf-8", "replace")
        try:
            retry_after = float(r.headers.get("Retry-After", ""))
        except ValueError:
            retry_after = None
        # redacted before shortening, so a key cut in half at the limit cannot survive
        message = redact(error_message(body), self.secrets)
        return self.error(f"{self.base_url}{path}: HTTP {r.status}: {self.shorten(message)}",
                          transient=r.status in TRANSIENT_STATUS, retry_after=retry_after)

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        """One JSON request, one JSON answer; any status but 200 is an error."""
        try:
            async with self.session().request(method, self.base_url + path, json=body) as r:
                if r.status != 200:
                    raise await self._status_error(path, r)
                text = (await self._read(path, r)).decode("utf-8", "replace")
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise self._failure(path, e) from None
        return self.parse(path, text)

    async def events(self, path: str, body: Any) -> AsyncIterator[Any]:
        """POST, then each Server-Sent Event's ``data:`` as JSON; ``[DONE]`` ends the stream
        and is yielded as ``DONE``, so the reader can tell a finished stream from a cut one."""
        frames = 0
        try:
            async with self.session().post(self.base_url + path, json=body) as r:
                if r.status != 200:
                    raise await self._status_error(path, r)
                async for raw in self._lines(path, r):
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        yield DONE
                        return
                    frames += 1
                    yield self.parse(f"{path} (stream frame {frames})", data)
        except aiohttp.ClientPayloadError as e:
            raise self.error(f"{self.base_url}{path}: the stream ended before the server said it "
                             f"was finished: the connection closed mid-answer after {frames} "
                             f"frame(s) ({e})") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            raise self._failure(path, e) from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def parse(self, path: str, text: str) -> Any:
        """The answer as JSON; anything else is the server breaking its interface."""
        try:
            return json.loads(text)
        except ValueError:
            raise self.error(f"{path}: the server's answer broke the interface: the body is not "
                             f"JSON: {redact(text, self.secrets)[:200]!r}") from None

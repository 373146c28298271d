"""Secrets never stored: a server that echoes the API key in an error body, in a response
header, and inside a stream's error frame; every file servecheck writes and every console line
is searched for the key and for any part of it.

The servers are test doubles (small aiohttp apps on 127.0.0.1): no real server can be made to
quote a key back on demand. The clients, the collector, ``check`` and every writer are real.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from aiohttp import web

from tests.collect.local_app import running

KEY = "sk-live-9876543210zyxwvuSECRET"
TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUv"
"""A token of another service that a server's stack trace might carry: cut by its shape."""


def _echoing_openai() -> web.Application:
    """401 with the key in the body, and the Authorization value in a header of every answer."""

    async def chat(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        return web.json_response(
            {"error": {"message": f"Incorrect API key provided: {auth} ({TOKEN})"}}, status=401,
            headers={"X-Echo-Authorization": auth, "WWW-Authenticate": auth})

    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]},
                                 headers={"X-Echo-Authorization": request.headers.get(
                                     "Authorization", "")})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    return app


TRITON_CONFIG = {"name": "ensemble", "max_batch_size": 8,
                 "model_transaction_policy": {"decoupled": True},
                 "input": [{"name": n, "data_type": t} for n, t in [
                     ("text_input", "TYPE_STRING"), ("max_tokens", "TYPE_INT32"),
                     ("temperature", "TYPE_FP32"), ("stream", "TYPE_BOOL")]]}


def _streaming_triton() -> web.Application:
    """A decoupled Triton model whose stream sends one good frame, then an error frame quoting
    a key (as a proxy in front of it might) and a token."""

    async def config(_: web.Request) -> web.Response:
        return web.json_response(TRITON_CONFIG)

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                               "X-Upstream-Key": KEY})
        await response.prepare(request)
        await response.write(b'data: {"text_output": "Hel"}\n\n')
        frame = {"error": f"upstream rejected Bearer {KEY}; token {TOKEN}"}
        await response.write(f"data: {json.dumps(frame)}\n\n".encode())
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/v2/models/ensemble/config", config)
    app.router.add_post("/v2/models/ensemble/generate_stream", stream)
    return app


def _everything(tmp_path: Path, console: str) -> str:
    return console + "".join(p.read_text(errors="replace") for p in tmp_path.rglob("*")
                             if p.is_file())


@pytest.mark.parametrize("server", ["openai", "triton-stream"])
def test_no_secret_reaches_any_output(server: str, free_ports, run_cli, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": ["Hi.", "Hello."], "temperature": 0.7, "max_tokens": 4}')
    out = tmp_path / "r.jsonl"
    app = _echoing_openai() if server == "openai" else _streaming_triton()
    with running(app, free_ports(1)[0]) as port:
        address = f"127.0.0.1:{port}"
        spec = f"openai://{address}/v1" if server == "openai" else \
            f"triton://{address}/ensemble?template=builtin"
        assert run_cli("generate", prompts, "--target", spec, "--out", out, "--retries", "0",
                       "--no-progress", "--reference", "builtin") == 1
    assert run_cli("check", out, "--reference", "builtin", "--json", tmp_path / "s.json",
                   "--junit", tmp_path / "j.xml", "--report", tmp_path / "r.html",
                   "--no-progress") in (1, 2)
    console = capsys.readouterr()
    seen = _everything(tmp_path, console.out + console.err)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 2 and all(r["error"] for r in records)
    assert "[redacted]" in out.read_text()  # the message is kept, the secret is not
    for secret in (KEY, KEY[:14], KEY[-14:], TOKEN, TOKEN[:12]):
        assert secret not in seen, secret

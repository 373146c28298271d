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


AZURE_KEY = "3f9a1c0b7e6d5a4c2b1f0e9d8c7b6a59"
"""An Azure-style key: 32 hex digits, no prefix, so no token shape finds it; only the value the
target read from the environment does."""
AZURE = "api_key_env=AZURE_OPENAI_KEY"


def _quoting_azure(path: str) -> web.Application:
    """A server that quotes the key back on exactly one path: ``unary`` (a 401 body), ``stream``
    (an error frame after a good chunk) or ``models`` (``GET /v1/models`` answering without a
    model); every info endpoint also refuses with the key in its body."""

    async def refuse(_: web.Request) -> web.Response:
        return web.json_response({"error": f"key {AZURE_KEY} is not valid here"}, status=403)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response(
                {"error": {"message": f"Incorrect API key provided: {AZURE_KEY}"}}, status=401)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        frame = {"error": {"message": f"quota exceeded for key {AZURE_KEY}"}}
        await response.write(f"data: {json.dumps(frame)}\n\n".encode())
        await response.write_eof()
        return response

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [], "detail": f"no model for key {AZURE_KEY}"})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    for info in ("/version", "/props", "/info", "/get_server_info", "/openapi.json"):
        app.router.add_get(info, refuse)
    return app


def _spec(address: str, path: str) -> str:
    model = "" if path == "models" else "&model=m"
    stream = "&stream=1" if path == "stream" else ""
    return f"openai://{address}/v1?{AZURE}{model}{stream}"


@pytest.mark.parametrize("path", ["unary", "stream", "models"])
def test_a_key_of_no_known_shape_is_cut_from_every_error(
        path: str, free_ports, run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Whichever path the server quotes the key on (an error body, an SSE error frame, the
    model list the target asks for), the record, the console and the exception hold none of
    it: every error leaving ``generate`` is redacted with the target's own key."""
    import asyncio

    from servecheck.collect.targets import open_target
    from servecheck.errors import TargetError
    from servecheck.formats.prompts import expand

    monkeypatch.setenv("AZURE_OPENAI_KEY", AZURE_KEY)
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": ["Hi."], "temperature": 0.7, "max_tokens": 4}')
    out = tmp_path / "r.jsonl"
    with running(_quoting_azure(path), free_ports(1)[0]) as port:
        spec = _spec(f"127.0.0.1:{port}", path)
        assert run_cli("generate", prompts, "--target", spec, "--out", out, "--retries", "0",
                       "--no-progress") == 1
        target = open_target(spec)

        async def once() -> None:
            try:
                await target.generate(expand(prompts)[0])
            finally:
                await target.aclose()

        with pytest.raises(TargetError) as caught:
            asyncio.run(once())
    assert AZURE_KEY not in str(caught.value) and "[redacted]" in str(caught.value)
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["error"] and "[redacted]" in record["error"]
    console = capsys.readouterr()
    seen = _everything(tmp_path, console.out + console.err)
    for part in (AZURE_KEY, AZURE_KEY[:12], AZURE_KEY[-12:]):
        assert part not in seen, part


def test_probe_and_compare_print_no_key(free_ports, run_cli, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``probe`` and ``compare`` reach the target through the same ``generate``: a stream error
    frame quoting the key fails them with a message that does not carry it."""
    from servecheck.formats.conversation import Conversation, Message
    from servecheck.formats.parameters import Parameters
    from servecheck.formats.records import ResponseRecord

    monkeypatch.setenv("AZURE_OPENAI_KEY", AZURE_KEY)
    served = tmp_path / "served.jsonl"
    served.write_text(ResponseRecord(
        id="a", conversations=Conversation(contents=[Message(role="user", content="Hi.")]),
        parameters=Parameters(temperature=0.0, max_tokens=4), output="Hello.",
        target="openai://elsewhere").model_dump_json() + "\n")
    with running(_quoting_azure("stream"), free_ports(1)[0]) as port:
        spec = _spec(f"127.0.0.1:{port}", "stream")
        assert run_cli("probe", "--target", spec, "--reference", "builtin", "--max-tokens",
                       "4", "--repeats", "2", "--seeds", "2", "--levels", "2",
                       "--json", tmp_path / "probe.json") == 2
        probe = capsys.readouterr()
        assert run_cli("compare", served, "--reference", "builtin", "--target", spec,
                       "--no-progress", "--html", tmp_path / "c.html") == 2
        compare = capsys.readouterr()
    for console in (probe, compare):
        assert "[redacted]" in console.err, console
        seen = _everything(tmp_path, console.out + console.err)
        for part in (AZURE_KEY, AZURE_KEY[:12], AZURE_KEY[-12:]):
            assert part not in seen, part


@pytest.mark.parametrize("spec", ["openai://alice:Sup3rSecretPw@127.0.0.1:9/v1",
                                  "triton://alice:Sup3rSecretPw@127.0.0.1:9/ensemble",
                                  "hf-endpoint+https://Sup3rSecretPw@example.invalid/run"])
def test_credentials_in_a_target_spec_are_refused(spec: str, run_cli, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A URL's userinfo is never sent, and the spec is every record's ``target``: refused before
    anything is written, named with the credentials cut out, pointing to ``api_key_env``."""
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": ["Hi."], "max_tokens": 4}')
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", prompts, "--target", spec, "--out", out, "--no-progress",
                   "--reference", "builtin") == 2
    console = capsys.readouterr()
    assert "[redacted]@" in console.err and "api_key_env=NAME" in console.err
    assert "Sup3rSecretPw" not in _everything(tmp_path, console.out + console.err)
    assert not out.exists()

"""The OpenAI target against a plain OpenAI-compatible server that is not vLLM: no ``/version``,
no prompt text, no token ids. A fake server (aiohttp on 127.0.0.1) stands in for it: a test
double, because no such server runs on this CPU-only machine (vLLM itself is tested for real in
test_vllm.py). It checks the API key travels as a header and nowhere else, and that ``check``
says why the template check is skipped rather than guessing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web

from tests.conftest import check_json, check_named, run_cli
from tests.test_triton import free_ports

KEY = "sk-test-0123456789-secret"


@pytest.fixture()
def plain_server() -> Iterator[tuple[str, list[dict]]]:
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), "body": body})
        return web.json_response({"choices": [{"index": 0, "finish_reason": "stop",
                                               "message": {"role": "assistant",
                                                           "content": "The cat says meow."}}]})

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "served-model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    (port,) = free_ports(1)
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}", seen
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_key_from_env_only_in_the_header(plain_server, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture) -> None:
    address, seen = plain_server
    monkeypatch.setenv("MY_KEY", KEY)
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "What does the cat say?", "temperature": 0.7, "top_k": 5}')
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", prompts, "--target", f"openai://{address}/v1?api_key_env=MY_KEY",
                   "--out", out, "--no-progress") == 0
    assert seen[0]["auth"] == f"Bearer {KEY}"
    assert seen[0]["body"]["model"] == "served-model" and seen[0]["body"]["top_k"] == 5
    assert "return_prompt_text" not in seen[0]["body"]  # not vLLM: no vLLM-only fields
    text = out.read_text()
    assert KEY not in text and '"input":""' in text  # no prompt seen, none guessed
    assert text.count("The cat says meow.<end_of_turn>") == 1  # end marker put back on "stop"
    _, summary = check_json(out, tmp_path)
    assert KEY not in capsys.readouterr().out + (tmp_path / "summary.json").read_text()
    template = check_named(summary, "template")
    assert template["verdict"] == "skipped" and "mode=completions" in template["summary"]

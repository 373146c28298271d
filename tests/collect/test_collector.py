"""The collection client under failure: retries of transient errors only, and a Triton server
killed mid-run (then a Ctrl-C), resumed with every record exactly once.

The retry tests talk to a fake Triton (a small aiohttp server on 127.0.0.1): a test double,
because a real Triton cannot be made to answer 429 or 503 on demand. Everything else runs the
real server in its own process group, so a SIGKILL takes the server and its Python backend stubs
with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from servecheck.collect.collector import BREAKER_AFTER, CollectSummary, ask
from servecheck.collect.targets import open_target
from servecheck.errors import TargetError
from servecheck.formats.prompts import expand
from servecheck.formats.responses import read_records
from servecheck.servers.triton_host import wait_ready

CONFIG = {"name": "ensemble", "max_batch_size": 8,
          "input": [{"name": n, "data_type": t} for n, t in [
              ("text_input", "TYPE_STRING"), ("max_tokens", "TYPE_INT32"),
              ("temperature", "TYPE_FP32"), ("seed", "TYPE_UINT64"),
              ("exclude_input_in_output", "TYPE_BOOL")]]}
Answer = Callable[[], web.Response]


@pytest.fixture(scope="session")
def ask_through(free_ports, expand_one) -> Callable[[list[Answer]], tuple[object, int, CollectSummary]]:
    """``ask_through(answers)``: one request through a fake Triton that gives ``answers``."""
    return functools.partial(_ask_through, free_ports, expand_one)


def _ask_through(free_ports, expand_one, answers: list[Answer]) -> tuple[object, int, CollectSummary]:
    """Ask once through a fake Triton (a real HTTP server on 127.0.0.1) that gives ``answers``
    in turn; returns the record or the error, the number of generate calls, and the summary."""
    calls = 0

    async def config(_: web.Request) -> web.Response:
        return web.json_response(CONFIG)

    async def generate(_: web.Request) -> web.Response:
        nonlocal calls
        calls += 1
        return answers[min(calls, len(answers)) - 1]()

    async def go() -> object:
        app = web.Application()
        app.router.add_get("/v2/models/ensemble/config", config)
        app.router.add_post("/v2/models/ensemble/generate", generate)
        runner = web.AppRunner(app)
        await runner.setup()
        (port,) = free_ports(1)
        await web.TCPSite(runner, "127.0.0.1", port).start()
        target = open_target(f"triton://127.0.0.1:{port}/ensemble", reference="builtin")
        try:
            return await ask(target, request, 3, summary)
        except TargetError as e:
            return e
        finally:
            await target.aclose()
            await runner.cleanup()

    summary = CollectSummary(planned=1, skipped=0)
    (request,) = expand_one(temperature=0.5, seed=1)
    return asyncio.run(go()), calls, summary


def ok() -> web.Response:
    return web.json_response({"text_output": "Hello.<end_of_turn>"})


def status(code: int) -> Answer:
    return lambda: web.json_response({"error": f"status {code}"}, status=code,
                                     headers={"Retry-After": "0"})


@pytest.mark.parametrize("code", [429, 503])
def test_transient_status_is_retried(code: int, ask_through) -> None:
    result, calls, summary = ask_through([status(code), status(code), ok])
    assert not isinstance(result, Exception) and result.output == "Hello.<end_of_turn>"
    assert calls == 3 and summary.retried == 2


@pytest.mark.parametrize("answer", [status(400), status(404), status(500),
                                    lambda: web.json_response({"error": "bad frame"})])
def test_other_failures_are_not_retried(answer: Answer, ask_through) -> None:
    result, calls, summary = ask_through([answer, ok])
    assert isinstance(result, TargetError) and not result.transient
    assert calls == 1 and summary.retried == 0


def test_retries_give_up_with_the_last_error(ask_through) -> None:
    result, calls, _ = ask_through([status(503)])
    assert isinstance(result, TargetError) and "HTTP 503" in str(result) and calls == 4


def test_refused_connection_is_transient(free_ports, expand_one) -> None:
    (port,) = free_ports(1)
    target = open_target(f"triton://127.0.0.1:{port}/ensemble", reference="builtin")
    (request,) = expand_one(temperature=0.5)

    async def go() -> None:
        try:
            await target.generate(request)
        finally:
            await target.aclose()

    with pytest.raises(TargetError, match="ClientConnectorError") as e:
        asyncio.run(go())
    assert e.value.transient


def _serve(root: Path, http: int, grpc: int, metrics: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "servecheck.cli", "serve", "triton", "--http-port", str(http),
         "--grpc-port", str(grpc), "--metrics-port", str(metrics)],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if wait_ready(http, proc, 180):
        return proc
    assert proc.poll() is None, "the Triton host exited during start-up"
    _kill(proc)
    raise AssertionError("the Triton host did not become ready in 180 s")


def _kill(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    proc.wait(timeout=60)


def _generate(root: Path, prompts: Path, out: Path, http: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "servecheck.cli", "generate", str(prompts), "--target",
         f"triton://127.0.0.1:{http}/ensemble?concurrency=2", "--out", str(out), "--no-progress",
         "--retries", "1", "--reference", "builtin"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"{path} did not reach {n} lines")


@pytest.mark.slow  # three Triton generations, a server start and a kill
def test_server_killed_then_ctrl_c_then_resume(tmp_path: Path, free_ports, root: Path,
                                               lite_prompts: Path) -> None:
    ports = free_ports(3)
    out = tmp_path / "r.jsonl"
    server = _serve(root, *ports)
    try:
        run = _generate(root, lite_prompts, out, ports[0])
        _wait_lines(out, 6, run)
        _kill(server)  # the server dies mid-run: the circuit breaker stops the run
        killed = time.monotonic()
        stdout, stderr = run.communicate(timeout=120)
        assert run.returncode == 2, stdout + stderr
        assert time.monotonic() - killed < 30  # not 32 requests × retries with backoff
        assert "stopped early, the server is gone" in stderr and stderr.count("\n") == 1
        first = [json.loads(line) for line in out.read_text().splitlines()]
        good = {r["id"]: r["output"] for r in first if not r.get("error")}
        errors = [r for r in first if r.get("error")]
        assert 6 <= len(good) < 32 and BREAKER_AFTER <= len(errors) < 32 - len(good)
        assert "failed" in stdout and "×" in stdout

        server = _serve(root, *ports)
        run = _generate(root, lite_prompts, out, ports[0])
        _wait_lines(out, len(first) + 3, run)
        run.send_signal(signal.SIGINT)  # Ctrl-C: exit 130, records kept
        run.communicate(timeout=60)
        assert run.returncode == 130

        run = _generate(root, lite_prompts, out, ports[0])
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stdout + stderr
    finally:
        _kill(server)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    answered = [r["id"] for r in lines if not r.get("error")]
    assert len(answered) == len(set(answered)) == 32  # nothing answered twice, nothing lost
    assert len(lines) == 32  # compacted on completion: the superseded error records are gone
    final = read_records(out)
    assert sorted(r.id for r in final) == sorted(r.id for r in expand(lite_prompts))
    assert all(r.error is None and r.output for r in final)
    assert all(good[r.id] == r.output for r in final if r.id in good)  # kept, not redone

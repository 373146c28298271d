"""Against a real Triton server (the binary inside nvidia-pytriton) hosting the built-in model.

Work in progress towards the Triton issue: the HTTP generate path, both seed input names. The
fixture picks free ports, binds 127.0.0.1 and stops the server in a finally.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from servecheck.serve.triton_host import TritonHost
from tests.conftest import LITE, check_json, run_cli


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="module", params=["seed", "random_seed"])
def triton(request: pytest.FixtureRequest) -> Iterator[str]:
    http, grpc, metrics = _free_ports(3)
    host = TritonHost("builtin", "127.0.0.1", http, grpc, metrics, seed_name=request.param)
    try:
        host.start()
        yield f"127.0.0.1:{http}"
    finally:
        host.stop()


def test_generate_and_check_through_triton(triton: str, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert run_cli("generate", LITE, "--target", f"triton://{triton}/ensemble", "--out", out,
                   "--no-progress") == 0
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]
    logprobs = next(c for c in summary["checks"] if c["name"] == "logprobs")
    assert logprobs["verdict"] == "pass" and logprobs["details"]["tokens"] > 100


def test_seed_is_honoured_under_either_name(triton: str, tmp_path: Path) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": ["Tell me a story about the fox.",
                                              "Tell me a story about the fox."],
                                   "temperature": 1.0, "seed": [5, 6], "max_tokens": 40}))
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", prompts, "--target", f"triton://{triton}/tensorrt_llm_bls",
                   "--out", out, "--no-progress") == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_seed: dict[int, set[str]] = {}
    for r in rows:
        by_seed.setdefault(r["parameters"]["seed"], set()).add(r["output"])
    assert all(len(v) == 1 for v in by_seed.values())  # same seed, same text
    assert by_seed[5] != by_seed[6]


def test_dead_server_is_an_error_record_not_a_crash(tmp_path: Path) -> None:
    (port,) = _free_ports(1)
    out = tmp_path / "r.json"
    code = run_cli("generate", LITE, "--target", f"triton://127.0.0.1:{port}/ensemble", "--out",
                   out, "--no-progress")
    assert code == 1
    rows = json.loads(out.read_text())
    assert len(rows) == 32 and all("ConnectError" in r["error"] for r in rows)

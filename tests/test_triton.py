"""Against a real Triton server (the binary inside nvidia-pytriton) hosting the built-in model.

Four hosts, each started once per module on free ports, bound to 127.0.0.1 and stopped in a
finally: a correct one (``seed``), a correct decoupled one (``random_seed``, one response per
token), one that tokenizes with special tokens added (double BOS), one that echoes the prompt.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from servecheck.errors import TargetError
from servecheck.prompts import expand
from servecheck.responses import read_records
from servecheck.serve.triton_host import TritonHost
from servecheck.targets import open_target
from tests.conftest import LITE, check_json, check_named, run_cli


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _host(**kwargs) -> Iterator[dict[str, str]]:
    http, grpc, metrics = free_ports(3)
    host = TritonHost("builtin", "127.0.0.1", http, grpc, metrics, **kwargs)
    try:
        host.start()
        yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}
    finally:
        host.stop()


@pytest.fixture(scope="module")
def triton() -> Iterator[dict[str, str]]:
    yield from _host(seed_name="seed")


@pytest.fixture(scope="module")
def decoupled() -> Iterator[dict[str, str]]:
    yield from _host(seed_name="random_seed", decoupled=True)


def generate(tmp_path: Path, target: str, prompts: Path = LITE, name: str = "r.json") -> Path:
    out = tmp_path / name
    assert run_cli("generate", prompts, "--target", target, "--out", out, "--no-progress") == 0
    return out


def assert_passes(out: Path, tmp_path: Path) -> dict:
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]
    return summary


@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_http_and_grpc_pass_check(triton: dict[str, str], scheme: str, tmp_path: Path) -> None:
    address = triton["http" if scheme == "triton" else "grpc"]
    out = generate(tmp_path, f"{scheme}://{address}/ensemble")
    logprobs = check_named(assert_passes(out, tmp_path), "logprobs")
    assert logprobs["verdict"] == "pass" and logprobs["details"]["tokens"] > 100


@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_decoupled_streams_pass_check(decoupled: dict[str, str], scheme: str,
                                      tmp_path: Path) -> None:
    address = decoupled["http" if scheme == "triton" else "grpc"]
    out = generate(tmp_path, f"{scheme}://{address}/tensorrt_llm_bls")
    records = read_records(out)
    assert all(r.sent and r.sent["stream"] is True and "random_seed" in r.sent
               for r in records if r.parameters.seed is not None)
    assert check_named(assert_passes(out, tmp_path), "logprobs")["verdict"] == "pass"


def test_stream_and_unary_agree(triton: dict[str, str], decoupled: dict[str, str],
                                tmp_path: Path) -> None:
    """Same seed, same text on every path: HTTP, SSE, gRPC unary and gRPC stream."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": "Tell me a story about the fox.",
                                   "temperature": 1.0, "seed": 11, "max_tokens": 40}))
    outputs = set()
    for i, target in enumerate([f"triton://{triton['http']}/ensemble",
                                f"triton://{triton['http']}/ensemble?stream=1",
                                f"triton+grpc://{triton['grpc']}/tensorrt_llm_bls",
                                f"triton://{decoupled['http']}/ensemble",
                                f"triton+grpc://{decoupled['grpc']}/ensemble"]):
        (record,) = read_records(generate(tmp_path, target, prompts, f"r{i}.jsonl"))
        outputs.add(record.output)
    assert len(outputs) == 1


def test_seed_is_honoured_under_either_name(triton: dict[str, str], decoupled: dict[str, str],
                                            tmp_path: Path) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": ["Tell me a story about the fox.",
                                              "Tell me a story about the fox."],
                                   "temperature": 1.0, "seed": [5, 6], "max_tokens": 40}))
    for i, target in enumerate([f"triton://{triton['http']}/tensorrt_llm_bls",
                                f"triton://{decoupled['http']}/tensorrt_llm_bls"]):
        records = read_records(generate(tmp_path, target, prompts, f"r{i}.jsonl"))
        by_seed = {r.parameters.seed: r.output for r in records}
        assert by_seed[5] != by_seed[6]
        assert records[0].sent is not None and ("seed" if i == 0 else "random_seed") in records[0].sent


def test_llmapi_names_and_float32_as_received(triton: dict[str, str], tmp_path: Path) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": "Tell me about the owl.", "temperature": 0.9,
                                   "top_p": 0.9, "seed": 1, "max_tokens": 30}))
    (record,) = read_records(generate(tmp_path, f"triton://{triton['http']}/tensorrt_llm", prompts))
    assert record.parameters.temperature == 0.9
    assert record.sent is not None
    assert record.sent["sampling_param_temperature"] == float(np.float32(0.9)) != 0.9
    assert f"{record.sent['sampling_param_top_p']:.10f}" == "0.8999999762"
    assert record.finish_reason == "stop" and record.output.endswith("<end_of_turn>")


def test_end_id_and_stop_words(triton: dict[str, str], tmp_path: Path) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": "Tell me about the fox.", "temperature": 0,
                                   "max_tokens": 40}))
    base = f"triton+grpc://{triton['grpc']}/ensemble"
    (full,) = read_records(generate(tmp_path, base + "?end_id=auto", prompts, "a.jsonl"))
    word = full.output.split()[2]
    (cut,) = read_records(generate(tmp_path, f"{base}?stop_words={word}", prompts, "b.jsonl"))
    assert full.sent and full.sent["end_id"] == 5  # <end_of_turn> of the built-in model
    assert cut.sent and cut.sent["stop_words"] == [word]
    assert cut.output.endswith(word) and full.output.startswith(cut.output) and cut.output != full.output


def test_stream_errors_are_errors_not_outputs(tmp_path: Path) -> None:
    """From the real server, over SSE and gRPC streaming: a stream refused at once (a bad
    top_k) and a stream that fails after three tokens (over HTTP: status 200, three good frames,
    then an {"error": …} frame). Both are final errors, never outputs."""
    cases = [({"temperature": 1.0, "top_k": -3}, {"triton": "HTTP 400: .*top_k", "triton+grpc": "top_k"}),
             ({"temperature": 0.0}, {"triton": "error frame after 3 good frame.*injected failure",
                                     "triton+grpc": "injected failure after 3 tokens"})]
    for address in _host(decoupled=True, fail_after=3):
        for params, expected in cases:
            for scheme, pattern in expected.items():
                where = address["http" if scheme == "triton" else "grpc"]
                target = open_target(f"{scheme}://{where}/ensemble")
                (request,) = expand_one(**params)

                async def go(target=target, request=request) -> None:
                    try:
                        await target.generate(request)
                    finally:
                        await target.aclose()

                with pytest.raises(TargetError, match=pattern) as e:
                    asyncio.run(go())
                assert not e.value.transient


def expand_one(**params) -> list:
    from servecheck.prompts import Request
    from servecheck.records import Conversation, Message, Parameters

    conv = Conversation(contents=[Message(role="user", content="Hi.")])
    return [Request(id="x", conversation=conv, parameters=Parameters.model_construct(**params))]


def test_double_bos_is_diagnosed_from_served_logprobs(tmp_path: Path) -> None:
    """Triton preprocessing's default add_special_tokens=True on a templated Gemma prompt: the
    record has no prompt ids, yet the served log-probs show the model saw <bos><bos>."""
    for address in _host(add_special_tokens=True):
        out = generate(tmp_path, f"triton://{address['http']}/ensemble")
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    logprobs = check_named(summary, "logprobs")
    assert code == 1 and logprobs["verdict"] == "fail"
    assert "double BOS" in logprobs["details"]["prompt_diagnosis"]


def test_echo_is_detected(tmp_path: Path) -> None:
    """A server that ignores exclude_input_in_output: the prompt comes back in the output."""
    for address in _host(echo=True):
        out = generate(tmp_path, f"triton+grpc://{address['grpc']}/ensemble")
    assert all(r.sent and r.sent["exclude_input_in_output"] is True for r in read_records(out))
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    termination = check_named(summary, "termination")
    assert code == 1 and termination["verdict"] == "fail" and "echo" in termination["summary"]


def test_dead_server_is_an_error_record_not_a_crash(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    (port,) = free_ports(1)
    out = tmp_path / "r.json"
    code = run_cli("generate", LITE, "--target", f"triton://127.0.0.1:{port}/ensemble", "--out",
                   out, "--no-progress", "--retries", "1")
    assert code == 1
    rows = json.loads(out.read_text())
    assert len(rows) == len(expand(LITE)) and all("ClientConnectorError" in r["error"] for r in rows)
    printed = capsys.readouterr().out
    assert "32 × " in printed and "retried" in printed  # one grouped line, not 32

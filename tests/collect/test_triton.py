"""Against a real Triton server (the binary inside nvidia-pytriton) hosting the built-in model.

Hosts start on free ports, bound to 127.0.0.1 and stopped in a finally: a correct one (``seed``)
and a correct decoupled one (``random_seed``, one response per token) once per module; one that
tokenizes with special tokens added (double BOS), one that echoes the prompt and one that fails
mid-stream in their own tests. The host runs the reference's own engine, so its answers equal
``hf:builtin?round_params=float32`` token for token (``hf32``): the ids and log-prob counts the
records carry are checked against those, sampled records included.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from servecheck.collect.targets import open_target
from servecheck.collect.targets.triton import TritonBase
from servecheck.collect.targets.trtllm import Interface
from servecheck.errors import TargetError
from servecheck.formats.prompts import Request, expand
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference

Generate = Callable[..., Path]


@pytest.fixture(scope="module")
def triton(triton_host) -> Iterator[dict[str, str]]:
    with triton_host(seed_name="seed") as address:
        yield address


@pytest.fixture(scope="module")
def decoupled(triton_host) -> Iterator[dict[str, str]]:
    with triton_host(seed_name="random_seed", decoupled=True) as address:
        yield address


@pytest.fixture(scope="module")
def hf32(tmp_path_factory: pytest.TempPathFactory, run_cli, lite_prompts: Path
         ) -> dict[str, ResponseRecord]:
    """The reference engine's own answers to the lite prompts by id, its parameters rounded through float32
    as Triton delivers them: what every correct host record must equal, token for token."""
    out = tmp_path_factory.mktemp("hf32") / "r.jsonl"
    assert run_cli("generate", lite_prompts, "--target", "hf:builtin?round_params=float32",
                   "--out", out, "--no-progress") == 0
    return {r.id: r for r in read_records(out) if r.id}


@pytest.fixture(scope="session")
def generate(run_cli, lite_prompts: Path) -> Generate:
    """``generate(tmp_path, target, prompts=lite_prompts, name="r.json")``: ``servecheck generate``
    against ``target``, which must succeed; returns the responses file."""

    def run(tmp_path: Path, target: str, prompts: Path | None = None, name: str = "r.json") -> Path:
        out = tmp_path / name
        assert run_cli("generate", prompts or lite_prompts, "--target", target, "--out", out,
                       "--no-progress", "--reference", "builtin") == 0
        return out

    return run


def assert_one_logprob_per_token(records: list[ResponseRecord], hf32: dict[str, ResponseRecord]
                                 ) -> None:
    """A text-only record's log-probs are its token count: one per generated token, the end
    token included when the engine generated it, none for the prompt."""
    for r in records:
        want = hf32[r.id or ""]
        assert r.output == want.output and r.output_token_ids is None
        assert r.output_logprobs is not None and want.output_token_ids is not None
        assert len(r.output_logprobs) == len(want.output_token_ids), r.id
        np.testing.assert_allclose(r.output_logprobs, want.output_logprobs or [], atol=1e-5)
    assert any(r.output.endswith("<end_of_turn>") for r in records)  # the end token counts too


@pytest.fixture(scope="session")
def assert_passes(check_json) -> Callable[[Path, Path], dict]:
    """``assert_passes(out, tmp_path)``: every check passes on ``out`` (fp32 numerics); returns
    the summary."""

    def passes(out: Path, tmp_path: Path) -> dict:
        code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
        assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]
        return summary

    return passes


@pytest.mark.slow  # uses the module's two real Triton servers
@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_http_and_grpc_pass_check(triton: dict[str, str], hf32: dict[str, ResponseRecord],
                                  scheme: str, tmp_path: Path, generate: Generate, assert_passes,
                                  check_named) -> None:
    address = triton["http" if scheme == "triton" else "grpc"]
    out = generate(tmp_path, f"{scheme}://{address}/ensemble")
    assert_one_logprob_per_token(read_records(out), hf32)
    logprobs = check_named(assert_passes(out, tmp_path), "logprobs")
    assert logprobs["verdict"] == "pass" and logprobs["details"]["tokens"] > 100


@pytest.mark.slow  # uses the module's two real Triton servers
@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_decoupled_streams_pass_check(decoupled: dict[str, str], hf32: dict[str, ResponseRecord],
                                      scheme: str, tmp_path: Path, generate: Generate,
                                      assert_passes, check_named) -> None:
    """One response per token: the log-probs, one a frame, add up to one per generated token."""
    address = decoupled["http" if scheme == "triton" else "grpc"]
    out = generate(tmp_path, f"{scheme}://{address}/tensorrt_llm_bls")
    records = read_records(out)
    assert all(r.sent and r.sent["stream"] is True and "random_seed" in r.sent
               for r in records if r.parameters.seed is not None)
    assert_one_logprob_per_token(records, hf32)
    assert check_named(assert_passes(out, tmp_path), "logprobs")["verdict"] == "pass"


def assert_ids_as_the_reference(records: list[ResponseRecord], hf32: dict[str, ResponseRecord],
                                ref: Reference) -> None:
    """The prompt went as the reference tokenization; the output ids, without the prompt, are the
    reference engine's and decode to the text the server sent."""
    for r in records:
        want = hf32[r.id or ""]
        assert r.prompt_token_ids == want.prompt_token_ids == ref.encode(r.input)
        assert r.output_token_ids == want.output_token_ids, r.id
        assert r.output_token_ids is not None and ref.decode(r.output_token_ids) == r.output
        assert r.output == want.output
        assert r.sent and "input_ids" not in r.sent and "text_input" not in r.sent
    ends = [r for r in records if r.finish_reason == "stop"]
    assert ends and all(r.output_token_ids and r.output_token_ids[-1] in ref.end_ids for r in ends)


@pytest.mark.slow  # uses the module's two real Triton servers
@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_tensorrt_llm_model_records_token_ids(triton: dict[str, str],
                                              hf32: dict[str, ResponseRecord], ref: Reference,
                                              scheme: str, tmp_path: Path, generate: Generate,
                                              assert_passes, check_named) -> None:
    address = triton["http" if scheme == "triton" else "grpc"]
    out = generate(tmp_path, f"{scheme}://{address}/tensorrt_llm")
    assert_ids_as_the_reference(read_records(out), hf32, ref)
    summary = assert_passes(out, tmp_path)
    assert check_named(summary, "detokenization")["verdict"] == "pass"
    assert check_named(summary, "template")["verdict"] == "pass"


@pytest.mark.slow  # uses the module's two real Triton servers
@pytest.mark.parametrize("scheme", ["triton", "triton+grpc"])
def test_decoupled_tensorrt_llm_accumulates_ids(decoupled: dict[str, str],
                                                hf32: dict[str, ResponseRecord], ref: Reference,
                                                scheme: str, tmp_path: Path,
                                                generate: Generate) -> None:
    """One output id a frame (SSE, gRPC stream) joins into the whole answer, no id lost or
    doubled, the text beside them joined the same way."""
    address = decoupled["http" if scheme == "triton" else "grpc"]
    records = read_records(generate(tmp_path, f"{scheme}://{address}/tensorrt_llm"))
    assert all(r.sent and r.sent["streaming"] is True for r in records)
    assert_ids_as_the_reference(records, hf32, ref)


CPP_CONFIG = {
    "max_batch_size": 8, "model_transaction_policy": {"decoupled": True},
    "input": [{"name": n, "data_type": f"TYPE_{t}"} for n, t in [
        ("input_ids", "INT32"), ("input_lengths", "INT32"), ("request_output_len", "INT32"),
        ("temperature", "FP32"), ("runtime_top_k", "INT32"), ("runtime_top_p", "FP32"),
        ("random_seed", "UINT64"), ("exclude_input_in_output", "BOOL"), ("streaming", "BOOL"),
        ("return_log_probs", "BOOL"), ("end_id", "INT32")]],
    "output": [{"name": "output_ids"}, {"name": "sequence_length"}, {"name": "output_log_probs"}]}
"""The C++ ``tensorrt_llm`` model's config, as Triton reports it (TensorRT-LLM's own names)."""


class FakeCppModel(TritonBase):
    """The C++ ``tensorrt_llm`` model (ids in and out, no text), answering a known record one id a
    frame: what no servecheck host serves, a model that sends no text at all."""

    answer: ResponseRecord
    sent: dict | None = None

    async def model_config(self) -> dict:
        return CPP_CONFIG

    async def responses(self, interface: Interface, sent: dict, stream: bool):
        self.sent = sent
        want = self.answer
        for t, lp in zip(want.output_token_ids or [], want.output_logprobs or [], strict=True):
            yield {"output_ids": np.array([[[t]]], np.int32), "sequence_length": np.array([[1]]),
                   "output_log_probs": np.array([[[lp]]], np.float32)}


def test_ids_only_model_gets_text_from_its_ids(hf32: dict[str, ResponseRecord], ref: Reference
                                               ) -> None:
    want = next(r for r in hf32.values() if r.parameters.temperature and r.finish_reason == "stop")
    target = FakeCppModel("triton://fake:1/tensorrt_llm", "fake", 1, "tensorrt_llm", {},
                          reference="builtin")
    target.answer = want
    request = Request(id="x", conversation=want.conversations, parameters=want.parameters)
    record = asyncio.run(target.generate(request))
    assert record.output == ref.decode(want.output_token_ids or []) == want.output
    assert record.output_token_ids == want.output_token_ids
    assert record.prompt_token_ids == want.prompt_token_ids
    assert record.output_logprobs == pytest.approx(want.output_logprobs, abs=1e-6)
    assert target.sent is not None and target.sent["input_ids"] == want.prompt_token_ids
    assert target.sent["input_lengths"] == len(want.prompt_token_ids or [])
    assert {"request_output_len", "runtime_top_p", "random_seed", "streaming",
            "return_log_probs"} <= set(target.sent)
    assert "input_ids" not in (record.sent or {}) and record.sent["request_output_len"] == 48
    stop = FakeCppModel("triton://fake:1/m?stop_words=fox", "fake", 1, "m",
                        {"stop_words": ["fox"]}, reference="builtin")
    with pytest.raises(TargetError, match=r"declares no input for stop .*token ids"):
        asyncio.run(stop.generate(request))


@pytest.mark.slow  # uses the module's two real Triton servers
def test_stream_and_unary_agree(triton: dict[str, str], decoupled: dict[str, str],
                                tmp_path: Path, generate: Generate) -> None:
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


def sse(address: str, path: str, body: dict) -> list[dict]:
    """The events of one ``generate_stream``, read raw (the client always excludes the prompt)."""
    import urllib.request

    request = urllib.request.Request(f"http://{address}{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as r:
        return [json.loads(line[5:]) for line in r.read().decode().splitlines()
                if line.startswith("data:")]


@pytest.mark.slow  # uses the module's two real Triton servers
def test_echoed_prompt_streams_without_logprobs(decoupled: dict[str, str], ref: Reference) -> None:
    """TensorRT-LLM's default exclude_input_in_output=false on a stream: the prompt's frame has
    its text and no log-prob, each generated token one; unasked, no frame has any (and none
    fails: an empty tensor is never sent)."""
    prompt = ref.render_messages([{"role": "user", "content": "Tell me a story about the fox."}])
    body = {"text_input": prompt, "max_tokens": 8, "temperature": 0.0, "stream": True}
    path = "/v2/models/ensemble/generate_stream"
    frames = sse(decoupled["http"], path, {**body, "return_log_probs": True})
    assert frames[0]["text_output"] == prompt and "output_log_probs" not in frames[0]
    assert len(frames) == 9 and all(isinstance(f["output_log_probs"], float) for f in frames[1:])
    plain = sse(decoupled["http"], path, body)
    assert [f["text_output"] for f in plain] == [f["text_output"] for f in frames]
    assert not any("output_log_probs" in f or "error" in f for f in plain)


@pytest.mark.slow  # uses the module's two real Triton servers
def test_seed_is_honoured_under_either_name(triton: dict[str, str], decoupled: dict[str, str],
                                            tmp_path: Path, generate: Generate) -> None:
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


@pytest.mark.slow  # uses the module's two real Triton servers
def test_llmapi_names_and_float32_as_received(triton: dict[str, str], tmp_path: Path,
                                              generate: Generate) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": "Tell me about the owl.", "temperature": 0.9,
                                   "top_p": 0.9, "seed": 1, "max_tokens": 30}))
    (record,) = read_records(generate(tmp_path, f"triton://{triton['http']}/tensorrt_llm", prompts))
    assert record.parameters.temperature == 0.9
    assert record.sent is not None
    assert record.sent["sampling_param_temperature"] == float(np.float32(0.9)) != 0.9
    assert f"{record.sent['sampling_param_top_p']:.10f}" == "0.8999999762"
    assert record.finish_reason == "stop" and record.output.endswith("<end_of_turn>")


@pytest.mark.slow  # uses the module's two real Triton servers
def test_end_id_and_stop_words(triton: dict[str, str], tmp_path: Path,
                               generate: Generate) -> None:
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


@pytest.mark.slow  # starts its own Triton server
def test_stream_errors_are_errors_not_outputs(tmp_path: Path, triton_host, expand_one) -> None:
    """From the real server, over SSE and gRPC streaming: a stream refused at once (a bad
    top_k) and a stream that fails after three tokens (over HTTP: status 200, three good frames,
    then an {"error": …} frame). Both are final errors, never outputs."""
    cases = [({"temperature": 1.0, "top_k": -3}, {"triton": "HTTP 400: .*top_k", "triton+grpc": "top_k"}),
             ({"temperature": 0.0}, {"triton": "error frame after 3 good frame.*injected failure",
                                     "triton+grpc": "injected failure after 3 tokens"})]
    with triton_host(decoupled=True, fail_after=3) as address:
        for params, expected in cases:
            for scheme, pattern in expected.items():
                where = address["http" if scheme == "triton" else "grpc"]
                target = open_target(f"{scheme}://{where}/ensemble", reference="builtin")
                (request,) = expand_one(**params)

                async def go(target=target, request=request) -> None:
                    try:
                        await target.generate(request)
                    finally:
                        await target.aclose()

                with pytest.raises(TargetError, match=pattern) as e:
                    asyncio.run(go())
                assert not e.value.transient


@pytest.mark.slow  # starts its own Triton server
def test_double_bos_is_diagnosed_from_served_logprobs(tmp_path: Path, triton_host,
                                                      generate: Generate, check_json,
                                                      check_named) -> None:
    """Triton preprocessing's default add_special_tokens=True on a templated Gemma prompt: the
    record has no prompt ids, yet the served log-probs show the model saw <bos><bos>."""
    with triton_host(add_special_tokens=True) as address:
        out = generate(tmp_path, f"triton://{address['http']}/ensemble")
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    logprobs = check_named(summary, "logprobs")
    assert code == 1 and logprobs["verdict"] == "fail"
    assert "double BOS" in logprobs["details"]["prompt_diagnosis"]


@pytest.mark.slow  # starts its own Triton server
def test_echo_is_detected(tmp_path: Path, ref: Reference, triton_host, generate: Generate,
                          check_json, check_named) -> None:
    """A server that ignores exclude_input_in_output: the prompt comes back in the output, and
    from the ids model in the output ids too, kept verbatim (its text and ids still agree)."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": "Tell me a story about the fox.", "temperature": 0,
                                   "max_tokens": 8}))
    with triton_host(echo=True) as address:
        out = generate(tmp_path, f"triton+grpc://{address['grpc']}/ensemble")
        (echoed,) = read_records(generate(tmp_path, f"triton://{address['http']}/tensorrt_llm",
                                          prompts, "ids.jsonl"))
    assert echoed.sent and echoed.sent["sampling_param_exclude_input_from_output"] is True
    prompt_ids, ids = echoed.prompt_token_ids or [], echoed.output_token_ids or []
    assert len(ids) == len(prompt_ids) + 8 and ids[:len(prompt_ids)] == prompt_ids
    assert echoed.output.startswith(echoed.input) and ref.decode(ids) == echoed.output
    assert echoed.finish_reason == "length"
    assert all(r.sent and r.sent["exclude_input_in_output"] is True for r in read_records(out))
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    termination = check_named(summary, "termination")
    assert code == 1 and termination["verdict"] == "fail" and "echo" in termination["summary"]


def test_dead_server_is_an_error_record_not_a_crash(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture, free_ports,
                                                    run_cli, lite_prompts: Path) -> None:
    (port,) = free_ports(1)
    out = tmp_path / "r.json"
    code = run_cli("generate", lite_prompts, "--target", f"triton://127.0.0.1:{port}/ensemble",
                   "--out", out, "--no-progress", "--retries", "1", "--reference", "builtin")
    assert code == 2  # the circuit breaker: the server is plainly gone
    rows = json.loads(out.read_text())  # the file is closed as valid JSON
    assert 5 <= len(rows) < len(expand(lite_prompts))
    assert all("ClientConnectorError" in r["error"] for r in rows)
    captured = capsys.readouterr()
    assert f"{len(rows)} × " in captured.out and "retried" in captured.out  # one grouped line
    assert "stopped early, the server is gone" in captured.err

"""The HF Inference Endpoints handler, called the way the toolkit calls it, and the
``hf-endpoint://`` target against the handler served locally (a real HTTP server process)."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from servecheck.collect.targets import open_target
from servecheck.collect.targets.hf_endpoint import HFEndpointTarget
from servecheck.errors import InputError
from servecheck.formats.responses import read_records
from servecheck.reference.model import BUILTIN, Reference
from servecheck.servers.endpoint.server import write_files


@pytest.fixture(scope="module")
def handler(tmp_path_factory: pytest.TempPathFactory):
    """handler.py as written for an endpoint repository, imported from that file alone."""
    folder = tmp_path_factory.mktemp("endpoint-repo")
    write_files("builtin", folder)
    spec = importlib.util.spec_from_file_location("handler", folder / "handler.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(BUILTIN))


def test_handler_contract_and_seed(handler, ref: Reference) -> None:
    messages = [{"role": "user", "content": "Tell me a story about the fox."}]
    params = {"temperature": 1.0, "top_p": 0.9, "seed": 3, "max_new_tokens": 40}
    (a,) = handler({"inputs": messages, "parameters": params})
    (b,) = handler({"inputs": messages, "parameters": params})
    (c,) = handler({"inputs": messages, "parameters": {**params, "seed": 4}})
    assert a == b and a["generated_text"] != c["generated_text"]
    assert a["prompt_text"] == ref.render_messages(messages)
    assert a["prompt_token_ids"] == ref.encode(a["prompt_text"])  # one <bos>, not two
    assert len(a["token_ids"]) == len(a["logprobs"]) and a["finish_reason"] in ("stop", "length")
    assert a["inputs_as"] == "messages"
    # an already-templated prompt, said so either way: run as it is, its <bos> not doubled
    (d,) = handler({"inputs": {"prompt": a["prompt_text"]}, "parameters": params})
    (e,) = handler({"inputs": a["prompt_text"], "parameters": {**params, "raw_prompt": True}})
    assert d == e == {**a, "inputs_as": "raw_prompt"}
    with pytest.raises(ValueError, match="inputs"):
        handler({"inputs": 42})


@pytest.fixture(scope="module")
def endpoint(free_ports, root: Path) -> Iterator[str]:
    (port,) = free_ports(1)
    proc = subprocess.Popen([sys.executable, "-m", "servecheck.cli", "serve", "endpoint",
                             "--http-port", str(port)], cwd=root, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "endpoint did not start"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.slow  # starts the endpoint server
@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_endpoint_target_passes_check(endpoint: str, mode: str, tmp_path: Path, run_cli,
                                      check_json, lite_prompts: Path) -> None:
    """Chat mode needs no reference (the handler templates and keeps its end marker);
    completions mode templates here, so it is given the served checkpoint by name."""
    out = tmp_path / "r.jsonl"
    named = ["--reference", "builtin"] if mode == "completions" else []
    assert run_cli("generate", lite_prompts, "--target", f"hf-endpoint://{endpoint}/?mode={mode}",
                   "--out", out, "--no-progress", *named) == 0
    records = read_records(out)
    assert all(r.prompt_token_ids and r.output_token_ids and r.output_logprobs for r in records)
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    assert code == 0, [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]


@pytest.mark.slow  # starts the endpoint server
def test_endpoint_bad_request_is_a_final_error(endpoint: str, tmp_path: Path, run_cli) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "Hi.", "temperature": 0.5, "top_p": 0.5, "max_tokens": 4}')
    out = tmp_path / "r.jsonl"
    code = run_cli("generate", prompts, "--target", f"hf-endpoint://{endpoint}/nowhere",
                   "--out", out, "--no-progress")
    (record,) = read_records(out)
    assert code == 1 and record.error and ("HTTP 405" in record.error or "HTTP 404" in record.error)


def test_endpoint_templates_only_with_a_named_reference() -> None:
    """No built-in fallback: completions mode without a reference is bad input naming the fix;
    with one (the spec's ?template= winning over --reference) it templates with that one."""
    with pytest.raises(InputError, match=r"--reference PATH\|builtin.*\?template=PATH\|builtin"):
        open_target("hf-endpoint://127.0.0.1:9/?mode=completions")
    chat = open_target("hf-endpoint://127.0.0.1:9/")
    assert isinstance(chat, HFEndpointTarget) and chat.ref is None
    named = open_target("hf-endpoint://127.0.0.1:9/?mode=completions", reference="builtin")
    assert isinstance(named, HFEndpointTarget) and named.ref and named.ref.spec == "builtin"
    both = open_target("hf-endpoint://127.0.0.1:9/?mode=completions&template=builtin",
                       reference="/nowhere/at/all")
    assert isinstance(both, HFEndpointTarget) and both.ref and both.ref.spec == "builtin"

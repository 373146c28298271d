"""The in-process server's deployment machinery, correct and broken: the sliding window, an FP8
KV cache, the prefix cache and speculative decoding (``collect/targets/window.py``,
``kv_cache.py``, ``prefix_cache.py``, ``speculative.py``).

Each fault must be the bug itself, seen where the bug shows and nowhere else; each correct
variant must answer as the plain server does. Statistical tests use fixed seeds, so their
outcome is fixed; each says how often it would fail a correct server (or pass a faulty one)
were the seeds drawn afresh.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import chisquare
from transformers import DynamicCache

from servecheck.collect.targets.hf import HFTarget
from servecheck.collect.targets.kv_cache import new_cache, to_e4m3
from servecheck.collect.targets.prefix_cache import BLOCK, PrefixCache
from servecheck.errors import InputError, TargetError
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.reference.model import Reference
from servecheck.reference.sampling import Sampling, transform

W = 128
"""The built-in model's sliding window."""
ALPHA = 1e-3
"""A chi-square test's false-failure rate: a correct sampler fails it with probability 0.001."""
GREEDY = dict(temperature=0.0, max_tokens=64)
SENTENCES = ["The fox runs over the hill.", "The cat sleeps in the sun.",
             "The bird sings in the tree.", "The dog plays by the lake."]
SHARED_HEAD = "Tell me a story about the fox and the bird."
A = SHARED_HEAD + " The fox lives in the forest and the bird sings by the lake every day."
B = SHARED_HEAD + " Where does the cat sleep when the sun is hot and the dog plays?"
"""Two prompts whose templated tokens share one block (17 tokens) and then diverge."""


def open_target(spec: str) -> HFTarget:
    return HFTarget.from_spec(spec, spec.partition(":")[2])


def request(rid: str, text: str, **params) -> Request:
    return Request(rid, Conversation(contents=[Message(role="user", content=text)]),
                   Parameters(**params))


def one(target: HFTarget, text: str, **params):
    (record,) = target.generate_batch([request("r", text, **params)])
    return record


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference("builtin")


@pytest.fixture(scope="module")
def honest() -> HFTarget:
    return HFTarget("builtin")


@pytest.fixture(scope="module")
def long_ids(reference: Reference) -> torch.Tensor:
    """A templated prompt of about 2.3 W tokens."""
    text = " ".join(SENTENCES[k % 4] for k in range(28))
    prompt = reference.render_messages([{"role": "user", "content": text}])
    ids = reference.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    assert 250 <= ids.shape[1] <= 350
    return ids


def visible_keys(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """How many keys each query of the first (sliding) layer may attend to, read off the mask
    its attention is given (None: the kernel's own causal mask)."""
    seen = {}

    def grab(module, args, kwargs):
        seen["mask"] = kwargs.get("attention_mask")

    handle = model.model.layers[0].self_attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.inference_mode():
            model(ids)
    finally:
        handle.remove()
    mask = seen["mask"]
    if mask is None:
        return torch.arange(1, ids.shape[1] + 1)
    allowed = mask if mask.dtype == torch.bool else mask == 0
    return allowed[0, 0].sum(-1)


def test_the_honest_window_is_w_keys(reference: Reference, long_ids: torch.Tensor) -> None:
    """transformers' sliding layers: a query at i sees j with i − j < W."""
    counts = visible_keys(reference.model, long_ids)
    assert counts[:W].tolist() == list(range(1, W + 1))
    assert set(counts[W:].tolist()) == {W}


@pytest.mark.parametrize("fault", ["window-off-by-one", "window-ignored"])
def test_window_faults_change_logits_from_position_w_on(fault: str, reference: Reference,
                                                        long_ids: torch.Tensor) -> None:
    """Bit-identical before position W (the window binds nowhere there, and the local RoPE is
    kept), different from W on; off-by-one sees exactly one key more, ignored sees them all."""
    faulty = open_target(f"hf:builtin?fault={fault}")
    assert faulty.ref.model.config.layer_types == reference.model.config.layer_types
    with torch.inference_mode():
        honest_logits = reference.model(long_ids).logits[0]
        faulty_logits = faulty.ref.model(long_ids).logits[0]
    assert torch.equal(faulty_logits[:W], honest_logits[:W])
    assert (faulty_logits[W] - honest_logits[W]).abs().max() > 1e-3
    counts = visible_keys(faulty.ref.model, long_ids)
    n = long_ids.shape[1]
    wanted = [min(i + 1, W + 1) for i in range(n)] if fault == "window-off-by-one" \
        else list(range(1, n + 1))
    assert counts.tolist() == wanted


@pytest.mark.slow  # 64 decoded tokens past W on four servers (about 15 s on 2 cores)
def test_window_faults_show_in_generation_past_w_only(honest: HFTarget, reference: Reference,
                                                      long_ids: torch.Tensor) -> None:
    """Served through ``generate`` (the sliding cache sized by the window): greedy answers to a
    short prompt are the honest ones; past W, the recorded log-probs are the faulty model's
    teacher-forced ones, not the honest model's (generation runs past the end of turn, so that
    there are 64 tokens to compare)."""
    prompt = reference.tokenizer.decode(long_ids[0])
    for fault in ("window-off-by-one", "window-ignored"):
        faulty = open_target(f"hf:builtin?fault={fault},ignore-eos")
        answer = one(honest, A, **GREEDY).output_token_ids
        assert one(faulty, A, **GREEDY).output_token_ids[:len(answer)] == answer
        (c,) = faulty.complete([prompt], Parameters(**GREEDY))
        ids = torch.tensor([c.prompt_ids + c.output_ids])
        start = len(c.prompt_ids) - 1
        rows, tokens = torch.arange(start, ids.shape[1] - 1), torch.tensor(c.output_ids)
        with torch.inference_mode():
            own = faulty.ref.model(ids).logits[0].float().log_softmax(-1)[rows, tokens]
            true = reference.model(ids).logits[0].float().log_softmax(-1)[rows, tokens]
        assert len(c.logprobs) == 64
        assert np.allclose(c.logprobs, own.tolist(), atol=1e-4)
        assert (torch.tensor(c.logprobs) - true).abs().max() > 1e-2


def test_window_faults_need_one_window_to_break() -> None:
    with pytest.raises(InputError, match="choose one"):
        open_target("hf:builtin?fault=window-off-by-one,window-ignored")
    with pytest.raises(InputError, match="sliding-window layers"):
        open_target("hf:builtin-tools?fault=window-ignored")


def test_kv_fp8_stores_e4m3_values(reference: Reference, long_ids: torch.Tensor) -> None:
    cache = new_cache(True, reference.model.config)
    with torch.inference_mode():
        reference.model(long_ids, cache=cache, use_cache=True)
    for layer in cache.layers:
        assert torch.equal(layer.keys, to_e4m3(layer.keys))
        assert torch.equal(layer.values, to_e4m3(layer.values))
    plain = DynamicCache(config=reference.model.config)
    with torch.inference_mode():
        reference.model(long_ids, cache=plain, use_cache=True)
    assert not torch.equal(plain.layers[0].keys, to_e4m3(plain.layers[0].keys))
    assert to_e4m3(torch.tensor([1000.0, -1000.0, 0.3])).tolist() == [448.0, -448.0, 0.3125]


def test_kv_fp8_moves_logprobs_a_little(honest: HFTarget) -> None:
    faulty = open_target("hf:builtin?fault=kv-fp8")
    params = dict(temperature=0.0, max_tokens=32)
    plain, fp8 = one(honest, A, **params), one(faulty, A, **params)
    assert fp8.serving.kv_cache_dtype == "fp8" and plain.serving is None
    n = min(len(plain.output_logprobs), len(fp8.output_logprobs), 8)
    moved = np.abs(np.array(plain.output_logprobs[:n]) - np.array(fp8.output_logprobs[:n]))
    assert 1e-5 < moved.max() < 0.5


def test_prefix_cache_reuses_whole_blocks_and_answers_as_cold(honest: HFTarget) -> None:
    target = open_target("hf:builtin?prefix_cache=on")
    cold = one(target, A, **GREEDY)
    warm = one(target, A, **GREEDY)
    n = len(cold.prompt_token_ids)
    assert cold.usage.cached_tokens == 0
    assert warm.usage.cached_tokens == (n - 1) // BLOCK * BLOCK > 0
    assert warm.output_token_ids == cold.output_token_ids == one(honest, A, **GREEDY).output_token_ids
    assert np.allclose(warm.output_logprobs, cold.output_logprobs, atol=1e-4)
    other = one(target, B, **GREEDY)  # shares one block with A
    assert other.usage.cached_tokens == BLOCK
    assert other.output_token_ids == one(honest, B, **GREEDY).output_token_ids
    assert warm.serving.prefix_caching is True and warm.serving.speculative == "off"


def test_prefix_cache_is_bounded(reference: Reference) -> None:
    """Past its capacity the least recently used prompt is dropped."""
    cache = PrefixCache(capacity_tokens=64)
    prompts = [[7 + k] * 32 for k in range(3)]
    for ids in prompts:
        kv = DynamicCache()
        kv.update(torch.zeros(1, 1, 32, 4), torch.zeros(1, 1, 32, 4), 0)
        cache.store(ids, kv)
    assert cache.lookup(prompts[0]).tokens == 0
    assert cache.lookup(prompts[2]).tokens == 16


def test_a_stale_prefix_cache_restores_past_the_divergence(honest: HFTarget) -> None:
    target = open_target("hf:builtin?fault=prefix-cache-stale")
    first = one(target, A, **GREEDY)
    stale = one(target, B, **GREEDY)
    assert first.usage.cached_tokens == 0
    assert stale.usage.cached_tokens == min(len(first.prompt_token_ids),
                                            len(stale.prompt_token_ids) - 1) > BLOCK
    assert stale.output != one(honest, B, **GREEDY).output
    assert stale.serving.prefix_caching is True


@pytest.mark.slow  # four prompts of 64 tokens, speculated and not (about 12 s on 2 cores)
def test_speculative_greedy_is_plain_greedy(honest: HFTarget) -> None:
    target = open_target("hf:builtin?speculative=draft")
    for text in (A, B, "Tell me about the owl.", "Count from 3 to 8."):
        spec, plain = one(target, text, **GREEDY), one(honest, text, **GREEDY)
        assert spec.output_token_ids == plain.output_token_ids
        assert np.allclose(spec.output_logprobs, plain.output_logprobs, atol=1e-4)
        assert spec.serving.speculative == "draft"


def test_speculation_keeps_the_request_limits(honest: HFTarget) -> None:
    """max_tokens, end tokens, stop strings, usage and n on the speculative path."""
    target = open_target("hf:builtin?speculative=draft")
    short = one(target, A, temperature=0.0, max_tokens=5)
    assert len(short.output_token_ids) == short.usage.completion_tokens == 5
    assert short.finish_reason == "length"
    ended = one(target, "Name a colour.", temperature=0.0, max_tokens=32)
    assert ended.finish_reason == "stop" and ended.output.endswith("<end_of_turn>")
    plain = one(honest, "Name a colour.", temperature=0.0, max_tokens=32)
    assert ended.output == plain.output
    stopped = one(target, A, temperature=0.0, max_tokens=24, stop=[" the"])
    assert " the" not in stopped.output and stopped.finish_reason == "stop"
    choices = target.generate_batch([request("n", A, temperature=1.0, seed=3, n=3,
                                             max_tokens=6)])
    assert len({r.output for r in choices}) >= 2
    with pytest.raises(TargetError, match="logit noise"):
        target.complete(["Hello"], Parameters(temperature=1.0, max_tokens=2), logit_noise=1.0)


def test_speculation_decodes_on_from_a_warm_prefix(honest: HFTarget) -> None:
    target = open_target("hf:builtin?speculative=draft&prefix_cache=on")
    cold, warm = one(target, A, **GREEDY), one(target, A, **GREEDY)
    assert (cold.usage.cached_tokens, warm.usage.cached_tokens > 0) == (0, True)
    assert warm.output_token_ids == cold.output_token_ids == one(honest, A, **GREEDY).output_token_ids


@pytest.mark.parametrize("option", ["prefix_cache=yes", "speculative=ngram"])
def test_the_switches_take_their_values_only(option: str) -> None:
    with pytest.raises(InputError, match="takes '"):
        open_target(f"hf:builtin?{option}")


def chi_square(first: np.ndarray, q: torch.Tensor) -> float:
    """Chi-square p-value of observed tokens against q; tokens expected fewer than 5 times
    pooled into one cell (folded into the smallest big cell if the pool is under 5 too)."""
    counts = np.bincount(first, minlength=q.shape[0]).astype(float)
    expected = q.double().numpy() * len(first)
    big = expected >= 5
    observed = np.append(counts[big], counts[~big].sum())
    wanted = np.append(expected[big], expected[~big].sum())
    if wanted[-1] < 5:
        observed, wanted = observed[:-1], wanted[:-1]
        observed[-1] += counts[~big].sum()
        wanted[-1] += expected[~big].sum()
    return float(chisquare(observed, wanted * observed.sum() / wanted.sum()).pvalue)


SPREAD = dict(temperature=1.0, top_p=0.99)
"""A nucleus that keeps ``The`` (q ≈ 0.001), which the one-layer draft proposes half the time: a
verifier without the rejection test passes it on. Where q ≥ p on all of q's support (top_p 0.95
here) the lossy verifier happens to be exact, so such settings cannot tell it apart."""


SPECULATED = pytest.mark.slow  # 400 speculated requests: about 10 s on one idle core


@pytest.mark.parametrize("spec,correct", [
    ("hf:builtin", True),
    pytest.param("hf:builtin?speculative=draft", True, marks=SPECULATED),
    pytest.param("hf:builtin?fault=spec-lossy", False, marks=SPECULATED)])
def test_the_first_sampled_token_follows_q(spec: str, correct: bool, reference: Reference) -> None:
    """400 seeds of one prompt whose next token is spread over eight adjectives: the first
    token's counts against q = S_θ(reference logits), by chi-square. The plain server (its
    per-row draws, ``rng.py``) and lossless speculation (four proposals a step) pass, failing
    with probability ALPHA; the lossy verifier follows its one-layer draft (total variation
    about 0.54 from q here) and fails with p ≈ 0."""
    target = open_target(spec)
    prompt = reference.render_messages([{"role": "user", "content": "Tell me a story about "
                                        "the fox."}]) + "The"
    p = Parameters(**SPREAD, max_tokens=4)
    done = target.complete([prompt] * 400, p, seeds=list(range(400)))
    ids = reference.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = reference.model(ids).logits[0, -1:].float()
    q = transform(logits, Sampling.of(p))[0].exp()
    assert (q > 0.02).sum() >= 6  # a spread distribution: the test has power
    pvalue = chi_square(np.array([c.output_ids[0] for c in done]), q)
    assert (pvalue > ALPHA) if correct else (pvalue < ALPHA)

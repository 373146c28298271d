"""Deployment bugs, reproduced on purpose, so every check has a server whose fault is known.

Each is a bug seen in real serving stacks. Template and termination faults act on text and
tokens (in ``hf.py``); sampling faults replace the sampler's transform; weight faults change the
model the server runs; deployment faults break the machinery under the sampler (the attention
window, the KV cache, the prefix cache, speculation), each in its own module. The demo, the
tests and ``benchmarks/detection_power.py`` use them.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from servecheck.collect.targets.grammar_decoding import GRAMMAR_FAULTS
from servecheck.collect.targets.window import WINDOW_FAULTS
from servecheck.reference.sampling import HF, NEG_INF, Convention, Sampling, transform

TEMPLATE_FAULTS = {"double-bos", "assistant-role", "drop-system", "echo", "strip-end", "ignore-eos"}
SAMPLING_FAULTS = {
    "temperature-ignored": "every request sampled at temperature 1",
    "temperature-twice": "temperature applied twice (logits / T / T)",
    "top-p-ignored": "top_p never applied",
    "top-k-off-by-one": "top_k + 1 tokens kept",
    "nucleus-boundary": "the token that crosses top_p is dropped from the nucleus",
    "repetition-penalty": "a repetition penalty of 1.3 silently applied",
    "min-p-default": "min_p 0.05 applied where none was requested (llama.cpp's default)",
    "top-k-40": "top_k 40 applied where 0 (off) was requested (llama.cpp's default)",
    "top-k-50": "top_k 50 applied where 0 (off) was requested (transformers' default)",
    "temperature-10pct": "every temperature 10% above the one requested",
    "presence-penalty": "a presence penalty of 0.3 silently applied",
    "frequency-penalty": "a frequency penalty of 0.3 silently applied",
}
WEIGHT_FAULTS = {"int8": 8, "int4": 4}
SEED_FAULTS = {"seed-ignored"}
"""Every request sampled with seed 0, whatever it asked: one text for every seed."""
SERVING_FAULTS = {
    "tools-dropped": "the request's tools left out of the prompt",
    "thinking-ignored": "chat_template_kwargs (enable_thinking …) not passed to the template",
    "stop-ignored": "stop strings never applied",
    "stop-leaked": "the stop string left at the end of the text",
    "usage-off-by-one": "usage.completion_tokens one more than the tokens generated",
    "identical-choices": "every one of n choices a copy of the first",
    "arguments-reescaped": "tool-call arguments JSON-encoded twice by the parser",
    "call-lost": "the tool parser drops the last call of a turn",
    "answer-as-reasoning": "the reasoning parser returns the whole output as reasoning",
}
"""What an OpenAI-compatible server's own code does wrong after generation (serving.py)."""
DEPLOYMENT_FAULTS = {
    **WINDOW_FAULTS,
    "kv-fp8": "keys and values stored in FP8 E4M3 with scale 1.0 (uncalibrated --kv-cache-dtype fp8)",
    "prefix-cache-stale": "the prefix cache matches on the first block, then restores another "
                          "prompt's keys and values past where the prompts diverge",
    "spec-lossy": "speculative decoding accepts every draft token the target allows, without "
                  "the min(1, q/p) test",
}
"""Bugs of the engine's machinery under the sampler: attention window, KV cache, prefix cache,
speculation (``window.py``, ``kv_cache.py``, ``prefix_cache.py``, ``speculative.py``)."""
FAULTS = (TEMPLATE_FAULTS | set(SAMPLING_FAULTS) | set(WEIGHT_FAULTS) | SEED_FAULTS
          | set(SERVING_FAULTS) | set(DEPLOYMENT_FAULTS) | set(GRAMMAR_FAULTS))


def faulty_sampling(s: Sampling, fault: str) -> Sampling:
    """The parameters a server with ``fault`` effectively uses instead of ``s``."""
    if fault == "temperature-ignored":
        return replace(s, temperature=1.0)
    if fault == "temperature-twice":
        return replace(s, temperature=s.temperature ** 2)
    if fault == "top-p-ignored":
        return replace(s, top_p=1.0)
    if fault == "top-k-off-by-one" and s.top_k:
        return replace(s, top_k=s.top_k + 1)
    if fault == "repetition-penalty":
        return replace(s, repetition_penalty=1.3)
    if fault == "min-p-default" and not s.min_p:
        return replace(s, min_p=0.05)
    if fault in ("top-k-40", "top-k-50") and not s.top_k:
        return replace(s, top_k=int(fault[-2:]))
    if fault == "temperature-10pct":
        return replace(s, temperature=s.temperature * 1.1)
    if fault == "presence-penalty":
        return replace(s, presence_penalty=0.3)
    if fault == "frequency-penalty":
        return replace(s, frequency_penalty=0.3)
    return s


class FaultySampler:
    """A ``generate`` logits processor that samples from a faulty transform of the logits.

    Used with HF's own warpers switched off (temperature 1, top_k 0, top_p 1), so the tokens
    come from exactly the distribution this processor returns.
    """

    def __init__(self, s: Sampling, faults: frozenset[str], convention: Convention = HF) -> None:
        self.s = s
        self.faults = faults
        self.convention = convention
        """The order a correct engine of another family samples in (``?order=llama.cpp``): no
        fault at all, the hf target's stand-in for that engine."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        s = self.s
        for f in sorted(self.faults & set(SAMPLING_FAULTS)):
            s = faulty_sampling(s, f)
        counts = None
        if s.penalised:
            counts = torch.zeros_like(scores).scatter_add_(
                1, input_ids, torch.ones_like(input_ids, dtype=scores.dtype))
        if "nucleus-boundary" in self.faults and s.top_p < 1 and not s.greedy:
            return _nucleus_without_crossing_token(scores, s)
        return transform(scores, s, self.convention, counts)


def _nucleus_without_crossing_token(scores: torch.Tensor, s: Sampling) -> torch.Tensor:
    """HF's order, but the nucleus keeps a token only if the mass up to and *including* it is
    ≤ top_p: the token that crosses top_p, which a correct nucleus keeps, is dropped."""
    z = scores.float() / s.temperature
    if s.top_k:
        z = z.masked_fill(z < z.topk(min(s.top_k, z.shape[-1]), -1).values[..., -1:], NEG_INF)
    sorted_p, order = z.softmax(-1).sort(-1, descending=True)
    through = sorted_p.cumsum(-1) <= s.top_p
    through[..., 0] = True
    keep = torch.zeros_like(through).scatter(-1, order, through)
    return z.masked_fill(~keep, NEG_INF).log_softmax(-1)


@torch.no_grad()
def quantize_weights(model: torch.nn.Module, bits: int) -> None:
    """Round every matrix to ``bits``-bit symmetric per-row integers and back, as a quantised
    deployment would compute with (weight-only, round to nearest)."""
    levels = 2 ** (bits - 1) - 1
    for p in model.parameters():
        if p.dim() != 2:
            continue
        scale = p.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / levels
        p.copy_((p / scale).round().clamp(-levels, levels) * scale)


class LogitNoise:
    """A ``generate`` logits processor adding fixed pseudo-random noise of scale ``scale``: the
    batch-dependent numerics bug of ``serve triton --batch-variant``. Big enough (1 logit) to flip
    tokens that are not near-ties, so greedy output changes when requests share a batch."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(int(input_ids.shape[1]))
        return scores + self.scale * torch.randn(scores.shape[-1], generator=g)

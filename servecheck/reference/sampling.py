"""The sampling transform S_θ: reference logits → the distribution a correct server samples from.

Default order and semantics are Hugging Face's (``generate``): repetition penalty, then
temperature, top_k (ties with the k-th kept), top_p (a token stays while the mass ranked strictly
above it is < top_p), min_p (relative to the top probability). Engines differ in places, and each
difference is a named field of ``Convention`` so the report can say what was assumed:

- ``top_p_before_temperature``: the nucleus is chosen on temperature-1 probabilities (of the
  top_k set, as llama.cpp chains them);
- ``min_p_before_temperature``: min_p compares temperature-1 probabilities (llama.cpp);
- ``top_p_inclusive``: a token whose mass-above equals top_p exactly is kept;
- ``penalty_scope``: repetition/presence/frequency penalties count prompt tokens too
  (``prompt+output``, HF and vLLM's repetition penalty) or generated tokens only (``output``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from servecheck.formats.parameters import Parameters, is_greedy

NEG_INF = float("-inf")


@dataclass(frozen=True)
class Convention:
    top_p_before_temperature: bool = False
    top_p_inclusive: bool = False
    penalty_scope: str = "prompt+output"
    min_p_before_temperature: bool = False

    @property
    def name(self) -> str:
        """How people call this order: the engine family that runs it."""
        before = (self.top_p_before_temperature, self.min_p_before_temperature)
        order = {(False, False): "HF order", (True, True): "llama.cpp order"}.get(
            before, "top_p " + ("before" if before[0] else "after") + " and min_p " +
            ("before" if before[1] else "after") + " temperature")
        scope = "" if self.penalty_scope == "prompt+output" else ", penalties on output tokens"
        edge = ", inclusive top_p" if self.top_p_inclusive else ""
        return order + scope + edge

    def describe(self) -> dict[str, object]:
        before = [n for n, on in (("top_p", self.top_p_before_temperature),
                                  ("min_p", self.min_p_before_temperature)) if on]
        order = "penalties, temperature, top_k, top_p, min_p"
        if before:
            order = (f"penalties, top_k, top_p, min_p ({' and '.join(before)} on T=1 "
                     f"probabilities), temperature")
        return {"name": self.name, "order": order, **asdict(self)}


HF = Convention()
"""transformers, vLLM, SGLang, TGI and TensorRT-LLM: temperature first, then the truncations."""
LLAMA_CPP = Convention(top_p_before_temperature=True, min_p_before_temperature=True)
"""llama.cpp's default chain: top_k, top_p and min_p on temperature-1 probabilities, then
temperature."""
ORDERS = {"hf": HF, "llama.cpp": LLAMA_CPP}


@dataclass(frozen=True)
class Sampling:
    """The parameters that shape the distribution, defaults filled in as a server would."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @classmethod
    def of(cls, p: Parameters) -> Sampling:
        return cls(
            temperature=1.0 if p.temperature is None else p.temperature,
            top_k=p.top_k or 0, top_p=1.0 if p.top_p is None else p.top_p,
            min_p=p.min_p or 0.0, repetition_penalty=p.repetition_penalty or 1.0,
            presence_penalty=p.presence_penalty or 0.0,
            frequency_penalty=p.frequency_penalty or 0.0)

    @property
    def greedy(self) -> bool:
        return is_greedy(self.temperature, self.top_k)

    @property
    def penalised(self) -> bool:
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0
                or self.frequency_penalty != 0.0)

    def label(self) -> str:
        parts = [f"T={self.temperature:g}"]
        parts += [f"top_p={self.top_p:g}"] if self.top_p < 1 else []
        parts += [f"top_k={self.top_k}"] if self.top_k else []
        parts += [f"min_p={self.min_p:g}"] if self.min_p else []
        parts += [f"rep={self.repetition_penalty:g}"] if self.repetition_penalty != 1 else []
        parts += [f"pres={self.presence_penalty:g}"] if self.presence_penalty else []
        parts += [f"freq={self.frequency_penalty:g}"] if self.frequency_penalty else []
        return " ".join(parts)


def apply_penalties(logits: torch.Tensor, counts: torch.Tensor | None, s: Sampling) -> torch.Tensor:
    """``counts[r, v]``: how often token v occurred in row r's penalised context."""
    if counts is None or not s.penalised:
        return logits
    seen = counts > 0
    if s.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / s.repetition_penalty,
                                logits * s.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if s.presence_penalty or s.frequency_penalty:
        logits = logits - s.presence_penalty * seen - s.frequency_penalty * counts
    return logits


def _nucleus_mask(logits: torch.Tensor, top_p: float, inclusive: bool) -> torch.Tensor:
    """True where a token survives top_p: the probability mass ranked strictly above it is < top_p.

    "Strictly above" makes exact ties share a fate: a tie on the boundary keeps every tied token,
    where HF's sort keeps some of them in whatever order the sort left them. Deterministic, and the
    same rule as ``boundary_slack`` and the fused statistics (servecheck/reference/fused.py).
    """
    probs = logits.softmax(dim=-1)
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    above_sorted = sorted_probs.cumsum(dim=-1) - sorted_probs
    idx = torch.arange(probs.shape[-1], device=probs.device).expand_as(probs)
    starts = torch.ones_like(sorted_probs, dtype=torch.bool)
    starts[..., 1:] = sorted_probs[..., 1:] != sorted_probs[..., :-1]
    first = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=-1).values
    above_sorted = above_sorted.gather(-1, first)  # a tied token's: its tie group's first one's
    keep_sorted = above_sorted <= top_p if inclusive else above_sorted < top_p
    keep_sorted[..., 0] = True
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


def transform(logits: torch.Tensor, s: Sampling, convention: Convention = HF,
              counts: torch.Tensor | None = None) -> torch.Tensor:
    """Log-probabilities of S_θ(logits) over the last dimension; removed tokens are -inf.

    ``logits`` are float32 rows; greedy parameters give a point mass on the argmax.
    """
    z = apply_penalties(logits.float(), counts, s)
    if s.greedy:
        out = torch.full_like(z, NEG_INF)
        return out.scatter(-1, z.argmax(dim=-1, keepdim=True), 0.0)
    keep = torch.ones_like(z, dtype=torch.bool)
    if s.top_k:  # top_k commutes with temperature: either order keeps the same set
        kth = z.topk(min(s.top_k, z.shape[-1]), dim=-1).values[..., -1:]
        keep &= z >= kth
    if s.top_p < 1.0 and convention.top_p_before_temperature:
        keep &= _nucleus_mask(z.masked_fill(~keep, NEG_INF), s.top_p, convention.top_p_inclusive)
    z1 = z
    z = z / s.temperature
    if s.top_p < 1.0 and not convention.top_p_before_temperature:
        keep &= _nucleus_mask(z.masked_fill(~keep, NEG_INF), s.top_p, convention.top_p_inclusive)
    if s.min_p > 0:  # relative to the top token, which every rule keeps: last, in either order
        basis = z1 if convention.min_p_before_temperature else z
        probs = basis.masked_fill(~keep, NEG_INF).softmax(dim=-1)
        keep &= probs >= s.min_p * probs.amax(dim=-1, keepdim=True)
    return z.masked_fill(~keep, NEG_INF).log_softmax(dim=-1)


RULES = ("", "top_k", "top_p", "min_p")


def boundary_slack(logits: torch.Tensor, token: torch.Tensor, s: Sampling,
                   convention: Convention = HF, counts: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """For tokens outside the support: which rule removed each, and by how much.

    Returns (rule code per row, index into ``RULES``; slack per row). Slack is in the rule's own
    unit and ≥ 0: raw-logit gap to the k-th token for top_k, probability mass beyond top_p for
    top_p, probability shortfall for min_p. A small slack is a numerical tie at the boundary, a
    large one a real violation. Rules are tried in the order they are applied.
    """
    z = apply_penalties(logits.float(), counts, s)
    t = max(s.temperature, 1e-6)
    zt = z / t
    tz = zt.gather(-1, token[:, None])
    keep = torch.ones_like(zt, dtype=torch.bool)
    rule = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
    slack = torch.full((z.shape[0],), float("inf"), device=z.device)
    if s.top_k:
        kth = zt.topk(min(s.top_k, zt.shape[-1]), dim=-1).values[..., -1:]
        keep &= zt >= kth
        out = (tz < kth)[:, 0]
        rule[out], slack[out] = 1, ((kth - tz)[:, 0] * t)[out]
    basis = (z if convention.top_p_before_temperature else zt).masked_fill(~keep, NEG_INF)
    if s.top_p < 1.0:
        p = basis.softmax(-1)
        above = (p * (basis > basis.gather(-1, token[:, None]))).sum(-1)
        out = (rule == 0) & ((above > s.top_p) if convention.top_p_inclusive else (above >= s.top_p))
        rule[out], slack[out] = 2, (above - s.top_p)[out]
        keep &= _nucleus_mask(basis, s.top_p, convention.top_p_inclusive)
    if s.min_p > 0:
        p = (z if convention.min_p_before_temperature else zt).masked_fill(~keep, NEG_INF).softmax(-1)
        floor = s.min_p * p.amax(-1)
        py = p.gather(-1, token[:, None])[:, 0]
        out = (rule == 0) & (py < floor)
        rule[out], slack[out] = 3, (floor - py)[out]
    return rule, slack

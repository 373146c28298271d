"""The options of a check run: built once (from the command line or the API), then read only.

Everything that changes a verdict is here, so a run is reproducible from its options and its
responses file, and nothing reaches in to change a context after it was made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from difflib import get_close_matches
from typing import Literal

from servecheck.errors import InputError
from servecheck.reference.sampling import HF, ORDERS, Convention
from servecheck.reference.tails import K_GRID, MIN_P_GRID, TOP_P_GRID


@dataclass(frozen=True)
class Numerics:
    """Tolerances set by the server's numerics, for the deterministic checks.

    ``logit``: a non-argmax greedy token (or a token just outside top_k) whose logit is within
    this of the boundary is a numerical near-tie, not a bug. ``mass``: the same for the top_p and
    min_p boundaries, in probability. ``logprob``: mean |served - reference| log-prob allowed.
    Measured on the built-in model, bf16 against the fp32 reference: differences of logit gaps
    among the top 10 tokens p99 0.08, max 0.20; L1 distance of the distributions p99 0.032, max
    0.052; the top_p boundary, at temperature 0.7, moved by up to 0.045 in 400 benchmark runs.
    The bf16 values sit above those maxima; deeper models drift more, so pick the row of
    the server's numerics, or set your own with ``--logit-tolerance``.

    fp32's log-prob tolerance is 0.003: on the 84 long requests of ``examples/prompts-long.json``
    (``benchmarks/fp32_logprob_floor.py``) correct fp32 servers that share no code with the
    reference served mean |Δ| 1e-6 (vLLM 0.32 CPU, the in-process server), 1e-5 (llama.cpp,
    f32 KV cache) and 1e-4 (ONNX Runtime GenAI); a KV cache rounded to FP8 served 0.0064, from
    the first token on. TF32 matmuls are not fp32 here: check such a server as fp16.
    """

    name: str
    logit: float
    mass: float
    logprob: float


NUMERICS = {n.name: n for n in [Numerics("fp32", 0.01, 1e-3, 0.003),
                                Numerics("fp16", 0.1, 0.02, 0.05),
                                Numerics("bf16", 0.25, 0.06, 0.1),
                                Numerics("fp8", 0.5, 0.15, 0.3)]}

TokenChoice = Literal["posterior", "max"]
@dataclass(frozen=True)
class CheckOptions:
    """How to check a responses file. The defaults are the command line's."""

    reference: str = "builtin"
    """The served model's checkpoint: a local Hugging Face folder, or ``builtin``."""
    numerics: str = "bf16"
    """The server's numerics (a row of ``NUMERICS``): the near-tie tolerances."""
    logit_tolerance: float | None = None
    """Overrides the numerics row's logit tolerance (greedy and top_k boundary)."""
    alpha: float = 0.01
    """The run's false-alarm rate: the chance that a correct server fails any statistical
    check. Each statistical check gets its declared share (``CheckContext.check_alpha``,
    ``checks.core.registry``) and corrects within itself by Holm, so the shares add up to at
    most α."""
    convention: Convention | None = None
    """Where engines differ in the order and edges of sampling; None: found from the records
    (``checks.core.conventions``)."""
    device: str | None = None
    """Where the reference scores: None picks cuda when there is one, else cpu."""
    dtype: str = "float32"
    dask: str | None = None
    """Score on a Dask cluster (its scheduler's address, or ``local[:N]``); None: here."""
    search_tokens: bool = True
    """Text-only records scored on their most plausible tokenization (else canonically: the
    scoring benchmark's baseline)."""
    detect: tuple[tuple[str, float], ...] = ()
    """Fault sizes the run must be able to catch (``--detect temperature=0.1,top_k=40``): a
    statistical check that passes but could not have caught one is INCONCLUSIVE, with the
    requests of this mix that would (``checks.core.power``)."""
    token_choice: TokenChoice = "posterior"
    """How a sampled record's tokenization is chosen: a posterior draw (calibrated), or the most
    likely one (biased towards "too cold"; kept to measure that bias)."""
    record_bound: tuple[float, int] | None = None
    """In a chunk of a larger set (``workflows.chunked``): the set's α and how many sampled
    records the whole set judges, so that the per-record verdict bounds each likelihood z where
    one process would (α/N over the set), not at the chunk's α/k over its own records."""

    def __post_init__(self) -> None:
        if self.numerics not in NUMERICS:
            raise InputError(f"numerics must be one of {', '.join(NUMERICS)}, got {self.numerics!r}")
        if not 0 < self.alpha < 1:
            raise InputError(f"--alpha must be in (0, 1), got {self.alpha}")
        if self.logit_tolerance is not None and not self.logit_tolerance >= 0:
            raise InputError(f"--logit-tolerance must be ≥ 0, got {self.logit_tolerance}")
        for fault, size in self.detect:
            check_detectable(fault, size)
        if self.token_choice not in ("posterior", "max"):
            raise InputError(f"token_choice must be 'posterior' or 'max', got {self.token_choice!r}")

    @property
    def tolerances(self) -> Numerics:
        """The numerics row, with ``logit_tolerance`` applied."""
        row = NUMERICS[self.numerics]
        return row if self.logit_tolerance is None else replace(row, logit=self.logit_tolerance)

    def describe(self) -> dict[str, object]:
        """What the JSON summary, JUnit and the report record about the run (the convention
        scored under comes with the run: ``checks.core.conventions.ConventionFit``)."""
        return {"reference": self.reference, "numerics": self.numerics, "alpha": self.alpha,
                **({"detect": dict(self.detect)} if self.detect else {})}


def given_convention(order: str, top_p_before_temperature: bool = False,
                     top_p_inclusive: bool = False, penalty_scope: str | None = None
                     ) -> Convention | None:
    """The convention ``check``'s flags fix, or None (``--sampler-order find`` and no finer
    flag): found from the records."""
    if order == "find" and not (top_p_before_temperature or top_p_inclusive or penalty_scope):
        return None
    base = ORDERS.get(order, HF)
    return Convention(top_p_before_temperature or base.top_p_before_temperature, top_p_inclusive,
                      penalty_scope or base.penalty_scope, base.min_p_before_temperature)


GRIDS = {"top_k": K_GRID, "min_p": MIN_P_GRID, "top_p": TOP_P_GRID}
"""The truncations the sampler check tests, at these values only."""
FAULTS = ("temperature", "min_p", "top_k", "top_p", "presence_penalty", "frequency_penalty",
          "repetition_penalty")


def check_detectable(fault: str, size: float) -> None:
    """A ``--detect`` size the sampler check can test, else bad input naming what it can."""
    if fault not in FAULTS:
        close = get_close_matches(fault, FAULTS, 1)
        raise InputError(f"--detect: no fault {fault!r}" + (f" (did you mean {close[0]!r}?)"
                                                            if close else "")
                         + f"; one of {', '.join(FAULTS)}")
    if fault in GRIDS and size not in GRIDS[fault]:
        raise InputError(f"--detect {fault}={size:g}: the sampler tests {fault} at "
                         f"{', '.join(f'{v:g}' for v in GRIDS[fault])}")
    if not size > 0:
        raise InputError(f"--detect {fault}={size:g}: a size must be > 0")

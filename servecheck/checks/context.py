"""Context check: do outputs degrade past the sliding window, or as the context grows?

Gemma-style checkpoints mix sliding-window layers (each query sees its last W keys) with global
ones. Engines have shipped the window off by one or not applied at all, which leaves every token
of a short context exactly right and only the later ones wrong, and KV caches that lose precision
as the context grows (FP8): the greedy, fit and log-probs checks see either diluted over a whole
set (a window one key too wide moved the built-in model's log-probs by 0.002 past the window and
by nothing before it: within fp32's tolerance pooled, 3,500 times the before-window |Δ| here).
Here each scored token keeps its absolute position (``checks.core.token_evidence``): before the
window (< W), just past it (W to 2W) and far past (≥ 2W). Two kinds of test, one Holm family at
the check's share of α, each one-sided towards "worse" with its practical floor:

- the jump at the window: past-window tokens against before-window ones (greedy mismatches,
  quantile residuals, served log-prob |Δ|);
- the slope with position, over every token (quantile residuals, log-prob |Δ|).

A failure is named by its shape, and only where the before-window tokens are within numerics
(no hard mismatch, log-prob |Δ| within the tolerance, no residual beyond its floor): a step
from a correct server's tokens to degraded ones at W is the window; a ramp, error there from
the start and growing, is a context-length fault (the KV cache named where the records say
which). Where the tokens
before the window are already off, the other checks have the finding and position cannot be
told apart from it: INCONCLUSIVE (the run fails on those checks anyway). No token past the
window, none before it, too few on a side to test, or a checkpoint with no sliding window:
nothing for this check to judge, so N/A (skipped) rather than INCONCLUSIVE, which would hold
every run of short prompts at exit 3; the summary says what it would have caught, and the
digest lists it as a blind spot with what to collect. A set checked in chunks pools every
token's evidence (``checks.core.token_pool``) and decides the row once over the set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.fit_evidence import FIT, FitEvidence, fit_evidence
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Pooling, alpha_share, check
from servecheck.checks.core.results import CheckResult, Finding
from servecheck.checks.core.seed_tests import SEEDS, SeedEvidence, seed_evidence, seeds_ignored
from servecheck.checks.core.stats import StatTest, holm
from servecheck.checks.core.token_evidence import (
    MIN_TOKENS,
    SERVED_RATIO,
    ComparedDetails,
    Side,
    TokenEvidence,
    compare,
    describe_off,
    off_records,
    slopes,
)
from servecheck.checks.core.token_pool import CONTEXT, TokenPool, token_pool

NAME = CONTEXT
GROWTH = ("errors grow with the context while short contexts are within numerics: a KV cache of "
          "lower precision (FP8) or attention that loses precision over long contexts")


def window_sentence(window: int) -> str:
    return (f"outputs degrade past {window} tokens of context: the sliding window is not what "
            f"the checkpoint says")


@dataclass(frozen=True)
class ContextDetails(ComparedDetails):
    """``sides``: ``before the window``, ``just past``, ``far past``."""

    window: int = 0
    clean_before: bool = True
    """The tokens before the window are within numerics (else a failure is not named)."""
    shape: str | None = None
    """``step`` (the window) or ``ramp`` (grows with context), where a test failed."""
    kv_cache: str | None = None
    """The KV-cache type the records say was used, where not the model's own."""

    def likely_cause(self) -> str | None:
        if self.shape == "step":
            return window_sentence(self.window)
        if self.shape == "ramp":
            said = f" (the records say the KV cache is {self.kv_cache})" if self.kv_cache else ""
            return GROWTH + said
        return None


def _buckets(ev: TokenEvidence, window: int) -> dict[str, np.ndarray]:
    pos = ev.position
    return {"before the window": pos < window, "just past": (pos >= window) & (pos < 2 * window),
            "far past": pos >= 2 * window}


def decide(pool: TokenPool, options: CheckOptions, fit: FitEvidence, seeds: SeedEvidence
           ) -> list[CheckResult]:
    """The context row of a run's, or a chunked set's, tokens: their distinct draws (the fit's,
    ``FitEvidence.draws``), one Holm family at the check's share of α."""
    if pool.window is None:
        return [CheckResult(NAME, "skipped", "the checkpoint has no sliding window: no position "
                            "for a window fault to show at")]
    ev = pool.evidence(fit.draws(seeds_ignored(seeds, options)).keep)
    return [_judge(pool, ev, pool.window, options)]


@check(NAME, order=78, kind="statistical", alpha_share=0.02,
       catches=("outputs that degrade with the context: a sliding window served off by one or "
                "ignored, a KV cache that loses precision as it fills (FP8)"),
       needs=("outputs that run past the checkpoint's sliding window (prompts longer than it), "
              "beside outputs of short prompts"),
       pooling=Pooling(token_pool, decide, reads=(FIT, SEEDS)))
def run(ctx: CheckContext) -> list[CheckResult]:
    return decide(token_pool(ctx), ctx.options, fit_evidence(ctx), seed_evidence(ctx))


def _judge(pool: TokenPool, ev: TokenEvidence, window: int, options: CheckOptions
           ) -> CheckResult:
    masks = _buckets(ev, window)
    past = ~masks["before the window"]
    deepest = int(ev.position.max()) + 1 if len(ev.position) else 0
    if not past.any():
        return CheckResult(NAME, "skipped", (
            f"no output token lies past the {window}-token sliding window (the longest context "
            f"is {deepest} tokens): a window served off by one or ignored changes nothing "
            f"before it; send prompts longer than {window} tokens beside short ones"))
    buckets = {name: Side.of(ev, m) for name, m in masks.items()}
    alpha = options.alpha * alpha_share(NAME)
    tol = options.tolerances.logprob
    tests = compare(ev, past, masks["before the window"], f"past vs before {window}", tol) + \
        slopes(ev, np.ones_like(past), "all positions", window, tol)
    details = ContextDetails(alpha, buckets, tuple(tests), window=window, kv_cache=pool.kv_cache())
    if not masks["before the window"].any() or not tests:
        # nothing to judge, not a judgement withheld: a blind spot the digest names
        why = ("every scored token lies past it: nothing to compare them with (send prompts "
               "shorter than it too)" if not masks["before the window"].any() else
               f"fewer than {MIN_TOKENS} tokens of any kind on one side of it to compare")
        return CheckResult(NAME, "skipped", f"{int(past.sum())} output tokens past the "
                           f"{window}-token sliding window, {int((~past).sum())} before; {why}",
                           details)
    holm(tests, alpha)
    failed = [t for t in tests if t.failed]
    if not failed:
        return CheckResult(NAME, "pass", f"{int(past.sum())} tokens past the {window}-token "
                           f"window, {int((~past).sum())} before: no worse past it, and no "
                           f"worse as the context grows", details)
    before = buckets["before the window"]
    if not before.clean(options.tolerances):
        return CheckResult(NAME, "inconclusive", (
            "the outputs are worse past the window or as the context grows, but already off "
            "before the window (the greedy, fit or log-probs checks' finding): a fault of "
            "position cannot be told apart from it"), replace(details, clean_before=False))
    shape = "step" if any(_step(t, buckets) for t in failed) else "ramp"
    details = replace(details, shape=shape)
    return CheckResult(NAME, "fail", details.likely_cause() or "", details,
                       [Finding(t.group, t.describe(), 10.0 + abs(t.effect) / t.floor)
                        for t in failed] + _records(pool, ev, past, tol))


def _step(t: StatTest, buckets: dict[str, Side]) -> bool:
    """A failed jump test whose before-window side is a correct server's: no mismatch (the
    side is clean), and a log-prob |Δ| that the past's exceeds by ``SERVED_RATIO`` times its
    own. A window fault leaves the tokens before it exactly as a correct server's (bf16: 0.004
    before, 0.09–0.9 past an ignored window); an FP8 KV cache errs from the first token (0.003
    before, 0.005–0.011 past, measured): a ramp, however significant its jump."""
    if t.kind not in ("greedy", "residual", "served"):
        return False
    if t.kind != "served":
        return True
    before = buckets["before the window"].served_mean or 0.0
    return t.effect >= SERVED_RATIO * before


def _records(pool: TokenPool, ev: TokenEvidence, past: np.ndarray, tolerance: float
             ) -> list[Finding]:
    """The records worst past the window: their hard mismatches and log-prob |Δ| there."""
    return [Finding(pool.labels[i], f"past the window (positions {int(pos[0])}–{int(pos[-1])}): "
                    f"{describe_off(wrong, mean)}", wrong + (mean or 0.0))
            for i, pos, wrong, mean in off_records(ev, past, tolerance)]

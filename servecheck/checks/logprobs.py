"""Served log-probs: the log-probs a server reports against the reference's.

Servers differ in what they report: the raw model log-prob (vLLM's default, llama.cpp), the
log-prob after the penalties but before the temperature (CTranslate2, ONNX Runtime GenAI's
logits), or the log-prob after temperature and truncation. Each is computed and the closest one
is named as the server's convention; the verdict uses that one, against the numerics
tolerance. Whether the end token has a served log-prob at all is the server's convention too
(``checks.core.end_counting``); the comparison itself is made once a run
(``checks.core.served_logprobs``) for every check that reads it.

Served log-probs of exactly 0.0 on tokens the reference finds uncertain are their own failure,
named as what they are (log-probs of accepted draft tokens never filled in, a fault of
speculative decoding in some servers), not as a generic mismatch.

The served log-probs are also evidence of what the server really conditioned on, even when it
reports no prompt ids (TensorRT-LLM does not): the worst-fitting records are rescored under known
prompt mistakes (an extra BOS, a missing BOS), and a mistake that fits the served log-probs far
better than the reference prompt is named, even when both fits are within the tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.deployment import ZERO_LOGPROBS
from servecheck.checks.core.end_counting import EndCounting
from servecheck.checks.core.logprob_evidence import SURE, LogprobEvidence, logprob_evidence, worst
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Pooling, check
from servecheck.checks.core.results import CheckResult, Details, Finding, Verdict
from servecheck.checks.core.served_logprobs import CONVENTIONS
from servecheck.checks.core.token_pool import CONTEXT, TokenPool, token_pool

NAME = "logprobs"

EXPLAINS_BETTER = 4.0
"""A prompt mistake is named when it fits the served log-probs this many times better than the
reference prompt. Numerical noise fits both alike (its ratio stays near 1), so this does not
fire on an honest server, whatever its numerics; a real mistake of a BOS-sensitive model fits
orders of magnitude better."""
MIN_GAIN = 1e-4
"""…and by at least this much in mean |Δ| (below it, both fits are float32 rounding)."""


@dataclass(frozen=True)
class LogprobsDetails(Details):
    records: int
    convention: str
    """What the served log-probs are: ``raw`` or ``after sampling transform``."""
    misaligned: int | None = None
    """Records whose served log-probs stop lining up with the scored tokens (then nothing else
    is compared)."""
    tokens: int | None = None
    mean_abs_diff: dict[str, float] | None = None
    """Mean |served - reference| under each convention."""
    max_abs_diff: float | None = None
    tolerance: float | None = None
    prompt_diagnosis: str | None = None
    """A known prompt mistake the served log-probs fit far better than the reference prompt."""
    prompt_fit: dict[str, float] | None = None
    zeros: int | None = None
    """Records whose served log-probs are all exactly 0.0 while the reference finds some of
    their tokens uncertain (then nothing else is compared)."""
    speculative: str | None = None
    """The speculative-decoding method the records say was on, where one was."""
    kv_cache: str | None = None
    """The KV-cache type the records say was used, where not the model's own."""
    past_window: int | None = None
    """The checkpoint's sliding window, where every compared token lies past it (then a window
    served wrong explains the log-probs as well as other numerics do)."""

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if v is not None}

    def effect(self) -> str:
        if self.zeros:
            return f"{self.zeros}/{self.records} records all 0.0"
        if self.mean_abs_diff is None:
            return f"{self.misaligned}/{self.records} records misaligned"
        return f"mean |Δ| {self.mean_abs_diff[self.convention]:.4f} (tolerance {self.tolerance})"

    def reason(self, verdict: Verdict) -> str | None:
        if self.zeros:
            on = f" (the records say speculation, {self.speculative}, was on)" \
                if self.speculative else ""
            return (f"FAIL: {self.zeros} of {self.records} record(s)' served log-probs are all "
                    f"exactly 0.0 (probability 1) on tokens the reference gives less than "
                    f"e^-{SURE:g}: {ZERO_LOGPROBS}{on}; the log-probs were not compared "
                    f"against the tolerance.")
        if self.mean_abs_diff is None:
            return (f"FAIL: {self.misaligned} of {self.records} record(s)' served log-probs stop lining up "
                    f"with the scored tokens (a token the text lost, or another sequence's "
                    f"log-probs), so the log-probs were not compared against the tolerance.")
        mean, tol = self.mean_abs_diff[self.convention], self.tolerance or 0.0
        within = mean <= tol
        text = (f"the served log-probs ({self.convention}) differ from the reference's by a mean |Δ| "
                f"of {mean:.4f}, {'within' if within else 'beyond'} the tolerance {tol:g} of the "
                f"server's numerics (a fixed bound on the mean, not a statistical test)")
        if self.max_abs_diff is not None and within and self.max_abs_diff > tol:
            text += f"; the largest single |Δ|, {self.max_abs_diff:.4f}, is beyond it, but the " \
                    f"verdict judges the mean"
        if self.prompt_diagnosis:
            fit = self.prompt_fit or {}
            own, alt = fit.get("reference prompt"), fit.get(self.prompt_diagnosis)
            numbers = f" (mean |Δ| {alt:.5f} against {own:.5f})" if own is not None and \
                alt is not None else ""
            return (f"FAIL: {text}; but they fit a prompt with {self.prompt_diagnosis} far better than "
                    f"the reference prompt{numbers}, so the server conditioned on another prompt.")
        return f"{'PASS' if within else 'FAIL'}: {text}."

    def likely_cause(self) -> str | None:
        if self.zeros:
            return ZERO_LOGPROBS
        if self.prompt_diagnosis:
            return (f"the server conditioned on another prompt: its log-probs fit a prompt with "
                    f"{self.prompt_diagnosis} far better than the reference's")
        if self.mean_abs_diff is None:
            return "the served log-probs belong to other tokens (lost or another sequence's)"
        if self.kv_cache:
            return (f"the served log-probs are coarser than --numerics says: the records say "
                    f"the KV cache is {self.kv_cache}, which rounds every key and value the "
                    f"attention reads")
        if self.past_window:
            return (f"the served log-probs are off the reference's beyond the numerics' "
                    f"tolerance, and every token compared lies past the checkpoint's "
                    f"{self.past_window}-token sliding window: a window served wrong, or other "
                    f"weights or numerics (prompts shorter than the window tell them apart)")
        return ("the served log-probs are off the reference's beyond the numerics' tolerance: "
                "other weights, or other numerics than --numerics says (a KV cache of lower "
                "precision, TF32 matmuls)")


def _past_window(pool: TokenPool) -> int | None:
    """The sliding window, where every served record's prompt is at least that long."""
    prompts = pool.prompt[pool.served]
    if pool.window and len(prompts) and int(prompts.min()) >= pool.window:
        return pool.window
    return None


def decide(found: LogprobEvidence, options: CheckOptions, pool: TokenPool) -> list[CheckResult]:
    """The row over a whole set: its served-log-prob columns are the context check's
    (``pool``), its per-record facts and prompt-mistake rescoring ``found``."""
    if pool.columns is None:
        return [CheckResult(NAME, "skipped", "no record carries served log-probs")]
    chosen = pool.columns.chosen
    labels = [label for label, served in zip(pool.labels, pool.served, strict=True) if served]
    count = pool.columns.count
    per, convention, means = chosen.per_record, chosen.convention, chosen.means
    zeros = np.flatnonzero(found.all_zero).tolist()
    if zeros:
        method = found.speculation()
        return [CheckResult(NAME, "fail", f"{len(zeros)}/{len(labels)} records: {ZERO_LOGPROBS}",
                            LogprobsDetails(len(labels), convention, zeros=len(zeros),
                                            speculative=method),
                            [Finding(labels[r], f"all {count[r]} served log-probs are 0.0; the "
                                                f"reference's smallest is {found.lowest[r]:.3f}", 5.0)
                             for r in zeros])]
    lost = [Finding(labels[r], f"served log-probs stop lining up with the scored tokens "
                               f"({found.sources[r]}): {why}", 5.0)
            for r, why in chosen.misaligned.items()]
    if lost:
        latent = any(found.text_only[r] for r in chosen.misaligned)
        return [CheckResult(NAME, "fail", (
            f"{len(lost)}/{len(labels)} records' served log-probs stop lining up with the scored "
            f"tokens: a token the text lost, or log-probs of another sequence" +
            (" (or, the text's tokens being unknown, a split of it that the tokenization "
             "search did not find: collect token ids to tell)" if latent else "")),
            LogprobsDetails(len(labels), convention, misaligned=len(lost)), lost)]
    pooled = np.concatenate(list(per.values()))
    tol = options.tolerances.logprob
    details = LogprobsDetails(len(labels), convention, tokens=int(pooled.size),
                              mean_abs_diff=means, max_abs_diff=float(pooled.max()), tolerance=tol)
    votes = pool.columns.votes
    end_note = EndCounting(logprob_for_end=not votes[1] > votes[0], votes={"logprobs": {
        "exact": int(votes[0]), "short": int(votes[1])}}).describe("logprobs")
    end_note = f"; {end_note}" if end_note else ""
    summary = (f"served log-probs are {convention} (mean |Δ| {means[convention]:.4f}, max "
               f"{pooled.max():.4f}, {pooled.size} tokens)")

    def findings() -> list[Finding]:  # every record's, made only where the row fails
        return [Finding(labels[r], f"mean |Δ log-prob| {float(np.mean(d)):.4f}, max "
                                   f"{float(np.max(d)):.4f}", float(np.mean(d)))
                for r, d in per.items()]

    sample = worst(pool.columns.diffs[CONVENTIONS.index(convention)],
                   np.minimum(count, pool.columns.scored))
    own = float(np.mean(np.concatenate([per[r] for r in sample]))) if sample else 0.0
    fits = found.rescored(sample, convention)
    alt = min(fits.items(), key=lambda kv: kv[1]) if fits else None  # ties: the first named
    if alt and alt[1] * EXPLAINS_BETTER < own and own - alt[1] > MIN_GAIN:
        details = replace(details, prompt_diagnosis=alt[0],
                          prompt_fit={"reference prompt": own, alt[0]: alt[1]})
        return [CheckResult(NAME, "fail", (
            f"the served log-probs fit a prompt with {alt[0]} (mean |Δ| {alt[1]:.5f}) far better "
            f"than the reference prompt (mean |Δ| {own:.5f}, {len(sample)} records)"),
            details, findings())]
    if means[convention] > tol:
        kv = pool.kv_cache()
        said = f" (the records say the KV cache is {kv})" if kv else ""
        return [CheckResult(NAME, "fail", f"{summary} > tolerance {tol}{said}{end_note}",
                            replace(details, kv_cache=kv, past_window=_past_window(pool)),
                            findings())]
    return [CheckResult(NAME, "pass", f"{summary} ≤ tolerance {tol}{end_note}", details)]


@check(NAME, order=80,
       catches=("served log-probs that disagree with the reference: other weights or numerics, or log-"
                "probs of another prompt (a double BOS)"),
       needs="served log-probs (request logprobs)",
       pooling=Pooling(logprob_evidence, decide, reads=(CONTEXT,)))
def run(ctx: CheckContext) -> list[CheckResult]:
    return decide(logprob_evidence(ctx), ctx.options, token_pool(ctx))


def check_logprobs(ctx: CheckContext) -> CheckResult:
    """The row on one run's records."""
    return run(ctx)[0]

"""Served log-probs: the log-probs a server reports against the reference's.

Servers differ in what they report: the raw model log-prob (vLLM's default, llama.cpp), the
log-prob after the penalties but before the temperature (CTranslate2, ONNX Runtime GenAI's
logits), or the log-prob after temperature and truncation. Each is computed and the closest one
is named as the server's convention; the verdict uses that one, against the numerics
tolerance. Whether the end token has a served log-prob at all is the server's convention too
(``checks.core.end_counting``).

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
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding, Verdict
from servecheck.reference.sampling import Sampling
from servecheck.reference.token_scores import ScoreItem, TokenScores

NAME = "logprobs"

HYPOTHESES_SAMPLE = 16
"""Records rescored per hypothesis (the worst fitting): enough to be sure, cheap next to the
main scoring."""
EXPLAINS_BETTER = 4.0
"""A prompt mistake is named when it fits the served log-probs this many times better than the
reference prompt. Numerical noise fits both alike (its ratio stays near 1), so this does not
fire on an honest server, whatever its numerics; a real mistake of a BOS-sensitive model fits
orders of magnitude better."""
MIN_GAIN = 1e-4
"""…and by at least this much in mean |Δ| (below it, both fits are float32 rounding)."""
BREAK_NATS = 1.0
"""Served log-probs have stopped lining up with the scored tokens where, from some token on, the
median |Δ| stays above this (honest bf16 numerics stay below 0.1; a token lost from the text or
ids from another sequence shift every later comparison by whole nats)."""
BREAK_RUN = 4
"""…over at least this many tokens."""


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

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in super().to_json().items() if v is not None}

    def effect(self) -> str:
        if self.mean_abs_diff is None:
            return f"{self.misaligned}/{self.records} records misaligned"
        return f"mean |Δ| {self.mean_abs_diff[self.convention]:.4f} (tolerance {self.tolerance})"

    def reason(self, verdict: Verdict) -> str | None:
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
        if self.prompt_diagnosis:
            return (f"the server conditioned on another prompt: its log-probs fit a prompt with "
                    f"{self.prompt_diagnosis} far better than the reference's")
        if self.mean_abs_diff is None:
            return "the served log-probs belong to other tokens (lost or another sequence's)"
        return ("the served log-probs are off the reference's beyond the numerics' tolerance: "
                "other weights, or other numerics than --numerics says")

def misalignment(served: np.ndarray, scored: int, diff: np.ndarray, marker_in_text: bool,
                 truncated: bool = False) -> str | None:
    """Why a record's served log-probs do not belong to the tokens scored, or None. One more
    served value than scored tokens is the end token's, when the text lost its end marker; a
    record scored only up to lost bytes (``truncated``) is compared on what was scored."""
    count_off = len(served) < scored if truncated else \
        len(served) != scored and not (len(served) == scored + 1 and not marker_in_text)
    if count_off:
        return f"{len(served)} served log-probs for {scored} scored tokens"
    n = len(diff)
    # a clean start and a broken tail: misaligned, not merely other weights or numerics. A
    # median above (below) a bound needs at least half the values above (below) it, so counts
    # (cumulative sums, all k at once) pick the candidates and medians confirm them: the first
    # break exactly as a scan over k would find it, without a median per token.
    ks = np.arange(1, max(1, n - BREAK_RUN + 1))
    if not len(ks):
        return None
    low = np.concatenate([[0], np.cumsum(diff < BREAK_NATS / 4)])[ks]  # below, in diff[:k]
    high = np.cumsum((diff > BREAK_NATS)[::-1])[::-1][ks]  # above, in diff[k:]
    maybe = (diff[ks] > 2 * BREAK_NATS) & (2 * low >= ks) & (2 * high >= n - ks)
    for k in ks[maybe]:
        if np.median(diff[k:]) > BREAK_NATS and np.median(diff[:k]) < BREAK_NATS / 4:
            return (f"from output token {k} on (median |Δ| {np.median(diff[k:]):.2f} nats over "
                    f"the last {n - k} tokens)")
    return None


def _hypotheses(ctx: CheckContext, prompt: list[int]) -> dict[str, list[int]]:
    bos = ctx.ref.tokenizer.bos_token_id
    if bos is None:
        return {}
    out = {"an extra BOS (double BOS: the server tokenized the templated prompt with special "
           "tokens added)": [bos, *prompt]}
    if prompt[:1] == [bos]:
        out["no BOS (the server dropped the template's BOS)"] = prompt[1:]
    return out


def as_served(s: Sampling | None, convention: str) -> Sampling | None:
    """The sampling a served log-prob of ``convention`` is taken under (None: raw logits)."""
    if convention == "raw" or s is None:
        return None
    if convention == "after penalties":
        return Sampling(repetition_penalty=s.repetition_penalty,
                        presence_penalty=s.presence_penalty,
                        frequency_penalty=s.frequency_penalty)
    return s


def best_alternative(ctx: CheckContext, sample: list[int], convention: str
                     ) -> tuple[str, float] | None:
    """The known prompt mistake whose rescoring fits the served log-probs best: (name, mean |Δ|)."""
    best: tuple[str, float] | None = None
    names = _hypotheses(ctx, ctx.prompt_ids(sample[0])[0]) if sample else {}
    for name in names:
        items, served = [], []
        for i in sample:
            alt = _hypotheses(ctx, ctx.prompt_ids(i)[0]).get(name)
            if alt is None:
                break
            items.append(ScoreItem(alt, ctx.output_ids(i)[0],
                                   as_served(ctx.sampling[i], convention)))
            served.append(np.asarray(ctx.records[i].output_logprobs, dtype=np.float64))
        else:
            diffs = [np.abs(lp[: len(s)] - s.stats.get("logq", s.logprob)[: len(lp)])
                     for lp, s in zip(served, ctx.score_items(items), strict=True)]
            mean = float(np.mean(np.concatenate(diffs)))
            if best is None or mean < best[1]:
                best = (name, mean)
    return best


def reference_logprobs(ctx: CheckContext, idx: list[int], scores: dict[int, TokenScores]
                       ) -> dict[str, dict[int, np.ndarray]]:
    """Per convention, the reference's log-prob of each scored token: raw, after the
    penalties alone (CTranslate2 and ONNX Runtime GenAI report these), and after the whole
    sampling transform. Only penalised records are scored again for the middle one."""
    penalised = [i for i in idx if ctx.sampling[i].penalised]
    again = dict(zip(penalised, ctx.score_items([ScoreItem(
        ctx.prompt_ids(i)[0], ctx.output_ids(i)[0], as_served(ctx.sampling[i], "after penalties"))
        for i in penalised]), strict=True))
    return {"raw": {i: scores[i].logprob for i in idx},
            "after penalties": {i: (again[i].stats["logq"] if i in again else scores[i].logprob)
                                for i in idx},
            "after sampling transform": {i: scores[i].stats.get("logq", scores[i].logprob)
                                         for i in idx}}


@check(NAME, order=80,
       catches=("served log-probs that disagree with the reference: other weights or numerics, or log-"
                "probs of another prompt (a double BOS)"),
       needs="served log-probs (request logprobs)")
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_logprobs(ctx)]


def check_logprobs(ctx: CheckContext) -> CheckResult:
    idx = [i for i in ctx.kept() if ctx.records[i].output_logprobs]
    if not idx:
        return CheckResult(NAME, "skipped", "no record carries served log-probs")
    scores = ctx.scores(idx)
    reference = reference_logprobs(ctx, idx, scores)
    diffs: dict[str, list[np.ndarray]] = {k: [] for k in reference}
    per_convention: dict[str, dict[int, np.ndarray]] = {k: {} for k in reference}
    for i in idx:
        served = np.asarray(ctx.records[i].output_logprobs, dtype=np.float64)[: len(scores[i])]
        for k, by_record in reference.items():
            d = np.abs(served - by_record[i][: len(served)])
            d = np.where(np.isfinite(d), d, np.inf)
            diffs[k].append(d)
            per_convention[k][i] = d
    means = {k: float(np.mean(np.concatenate(v))) for k, v in diffs.items()}
    convention = min(means, key=lambda k: means[k])
    per = per_convention[convention]
    lost = []
    unserved_end = not ctx.end_counting.logprob_for_end
    for i in idx:
        ends = ctx.ends_on_end_token(i)
        why = misalignment(np.asarray(ctx.records[i].output_logprobs),
                           len(scores[i]) - (unserved_end and ends), per[i], ends,
                           i in ctx.lost_at)
        if why:
            lost.append(Finding(ctx.labels[i], f"served log-probs stop lining up with the scored "
                                               f"tokens ({ctx.output_ids(i)[1]}): {why}", 5.0))
    if lost:
        latent = any(ctx.is_text_only(ctx.labels.index(f.record)) for f in lost)
        return CheckResult(NAME, "fail", (
            f"{len(lost)}/{len(idx)} records' served log-probs stop lining up with the scored "
            f"tokens: a token the text lost, or log-probs of another sequence" +
            (" (or, the text's tokens being unknown, a split of it that the tokenization "
             "search did not find: collect token ids to tell)" if latent else "")),
            LogprobsDetails(len(idx), convention, misaligned=len(lost)), lost)
    pooled = np.concatenate(diffs[convention])
    tol = ctx.tolerances.logprob
    details = LogprobsDetails(len(idx), convention, tokens=int(pooled.size), mean_abs_diff=means,
                              max_abs_diff=float(pooled.max()), tolerance=tol)
    end_note = ctx.end_counting.describe("logprobs")
    end_note = f"; {end_note}" if end_note else ""
    summary = (f"served log-probs are {convention} (mean |Δ| {means[convention]:.4f}, max "
               f"{pooled.max():.4f}, {pooled.size} tokens)")
    findings = [Finding(ctx.labels[i], f"mean |Δ log-prob| {float(np.mean(d)):.4f}, max "
                                       f"{float(np.max(d)):.4f}", float(np.mean(d)))
                for i, d in per.items()]
    sample = sorted((i for i in per if len(per[i])), key=lambda i: -float(np.mean(per[i])))
    sample = sample[:HYPOTHESES_SAMPLE]
    own = float(np.mean(np.concatenate([per[i] for i in sample]))) if sample else 0.0
    alt = best_alternative(ctx, sample, convention)
    if alt and alt[1] * EXPLAINS_BETTER < own and own - alt[1] > MIN_GAIN:
        details = replace(details, prompt_diagnosis=alt[0],
                          prompt_fit={"reference prompt": own, alt[0]: alt[1]})
        return CheckResult(NAME, "fail", (
            f"the served log-probs fit a prompt with {alt[0]} (mean |Δ| {alt[1]:.5f}) far better "
            f"than the reference prompt (mean |Δ| {own:.5f}, {len(sample)} records)"),
            details, findings)
    if means[convention] > tol:
        return CheckResult(NAME, "fail", f"{summary} > tolerance {tol}{end_note}", details,
                           findings)
    return CheckResult(NAME, "pass", f"{summary} ≤ tolerance {tol}{end_note}", details)

"""The effective sampler: which setting, if any, explains the served tokens better than the request?

The original notes answered "which setting is off" by printing SamplingConfig inside the server.
This check answers it from the tokens: every alternative a deployment ships by mistake (a min_p
or top_k default, a nucleus nobody asked for, a temperature scaled or shifted, a presence,
frequency or repetition penalty applied server-side) is tested against the request on the tokens
of every group it would act on alike (``checks.core.alternatives``). All tests form one Holm family at
α; a test fails only beyond its practical floor. A failure names the alternative that explains
the tokens best, in the setting's own words ("served as if min_p ≈ 0.05 were on"), and every
verdict says what these records could have caught with 95% power.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from servecheck.checks.core import alternatives as alt
from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.pooling import MIN_SAMPLED_TOKENS, informative, sampled_groups
from servecheck.checks.core.power import (
    DEFAULT_FAULTS,
    PlanRow,
    deployment_rows,
    fault_words,
    needs_words,
    power_words,
)
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.core.shared_seeds import SeedDesign, seed_design
from servecheck.checks.core.stats import StatTest, holm
from servecheck.checks.core.token_rules import violations
from servecheck.reference.tails import K_GRID, MIN_P_GRID, TOP_P_GRID
from servecheck.reference.token_scores import TEMPERATURE_FACTORS, TokenScores

NAME = "sampler"
MIN_TOKENS = MIN_SAMPLED_TOKENS
"""Informative sampled tokens below which the check is inconclusive."""
DROPPED_MIN = 3
"""Tokens, and records, outside a requested truncation before the sampler names it dropped (one
or two are a tokenization slip or a broken record, which the support check names)."""
SLIP = 0.002
"""A truncation's estimate is the tightest one all but this share of the tokens allow: a text-only
record's tokenization or a boundary tie can put a token or two past where the server cut."""
PENALTY_SCORES = ("presence_penalty", "frequency_penalty", "repetition_penalty")


@dataclass(frozen=True)
class SamplerDetails(Details):
    alpha: float
    tokens: int
    groups: int
    design: SeedDesign
    alternatives: tuple[alt.Alternative, ...] = ()
    detectable: dict[str, float | None] = field(default_factory=dict)
    """The smallest fault of each kind these tokens would have caught with 95% power."""
    tail_mass: dict[str, float] = field(default_factory=dict)
    """Per truncation (``"min_p 0.05"``): λ, the tokens a correct sampler puts where it cuts.
    It grows with the records, which is how ``servecheck plan`` scales a pilot run."""
    information: dict[str, float] = field(default_factory=dict)
    """Per penalty and scope: the Fisher information of its score test; ``temperature``: the
    detectable relative error itself (-1: none)."""
    power: tuple[PlanRow, ...] = ()
    """What deployments get wrong (and ``--detect`` asks for), each caught by these records or
    not, with the requests of this mix that would (``checks.core.power``)."""

    def to_json(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "tokens": self.tokens, "groups": self.groups,
                "family_size": len(self.alternatives), "seed_design": self.design.to_json(),
                "detectable": self.detectable, "tail_mass": self.tail_mass,
                "information": self.information,
                "power": [asdict(r) for r in self.power],
                "alternatives": [{"setting": a.setting, "grid_value": a.grid_value,
                                  "estimate": a.estimate, "scope": a.scope, "gain": a.gain,
                                  "diagnosis": a.describe(), "test": a.test.to_json()}
                                 for a in self.alternatives]}

    def tests(self) -> list[StatTest]:
        return [a.test for a in self.alternatives]

    def family(self) -> tuple[float, int | None]:
        return self.alpha, len(self.alternatives)

    def effect(self) -> str:
        best = self.best()
        return best.describe() if best else "—"

    def likely_cause(self) -> str | None:
        best = self.best()
        return best.describe() if best else None

    def shortfalls(self) -> list[PlanRow]:
        return [r for r in self.power if not r.caught_now]

    def best(self) -> alt.Alternative | None:
        named = alt.named_first([a for a in self.alternatives if a.test.failed])
        return named[0] if named else None


def power_statement(d: dict[str, float | None]) -> str:
    parts = []
    if d.get("temperature") is not None:
        parts.append(f"a temperature off by ≥ {100 * d['temperature']:.0f}%")
    if d.get("min_p") is not None:
        parts.append(f"a min_p ≥ {d['min_p']:g}")
    if d.get("top_k") is not None:
        parts.append(f"a top_k ≤ {d['top_k']:g}")
    if d.get("top_p") is not None:
        parts.append(f"a top_p ≤ {d['top_p']:g}")
    for name in PENALTY_SCORES:
        if d.get(name) is not None:
            parts.append(f"a {name.replace('_', ' ')} ≥ {d[name]:.2f}" if name !=
                         "repetition_penalty" else f"a repetition penalty ≥ {1 + d[name]:.2f}")
    return ("these records would have caught " + ", ".join(parts) + " with 95% power"
            if parts else "these records could not have caught a sampler fault")


NEUTRAL = {"top_k": 0, "top_p": 1.0, "min_p": 0.0, "repetition_penalty": 1.0,
           "presence_penalty": 0.0, "frequency_penalty": 0.0}
"""Each setting's "off" value, which a request may set explicitly (a neutral sampler sent to a
server with defaults of its own)."""


class Pooled:
    """The informative sampled tokens of every group, with each token's requested sampling and
    which settings its request set explicitly (rather than leaving them to the server)."""

    def __init__(self, scores: dict[int, TokenScores], sampling: dict[int, Any],
                 asked: dict[int, Any]) -> None:
        keep = {i: informative(s) for i, s in scores.items()}
        self.stats = {k: np.concatenate([s.stats[k][keep[i]] for i, s in scores.items()])
                      for k in next(iter(scores.values())).stats}

        def per_token(values: dict[int, Any], attr: str) -> np.ndarray:
            return np.concatenate([np.full(int(keep[i].sum()), getattr(values[i], attr),
                                           dtype=float) for i in scores])
        self.temperature, self.top_k = per_token(sampling, "temperature"), per_token(sampling,
                                                                                    "top_k")
        self.top_p, self.min_p = per_token(sampling, "top_p"), per_token(sampling, "min_p")
        self.off = {k: np.concatenate([np.full(int(keep[i].sum()), getattr(asked[i], k) == v)
                                       for i in scores]) for k, v in NEUTRAL.items()}
        """Per setting, per token: its request set the setting to "off" explicitly."""
        self.unset = {k: np.concatenate([np.full(int(keep[i].sum()), getattr(asked[i], k) is None)
                                         for i in scores]) for k in NEUTRAL}
        """Per setting, per token: its request left the setting to the server."""

    def acted_on(self, setting: str, eligible: np.ndarray) -> np.ndarray:
        """The tokens a server-side ``setting`` would act on: of those it could change, the
        ones whose requests left it unset, where there are any (a default applies only there:
        CTranslate2's top_k 1 leaves a request's own top_k 40 alone), else all of them (a
        server that overrides what was asked)."""
        unset = eligible & self.unset[setting]
        return unset if unset.sum() >= MIN_TOKENS else eligible

    def asked_off(self, setting: str, use: np.ndarray | None = None) -> float | None:
        """The "off" value of ``setting`` when every token (of ``use``) comes from a request
        that set it so explicitly, else None."""
        flags = self.off[setting] if use is None else self.off[setting][use]
        return NEUTRAL[setting] if len(flags) and flags.all() else None

    def __len__(self) -> int:
        return len(self.temperature)


@check(NAME, order=75, kind="statistical", alpha_share=0.42,
       catches=("a sampling setting off or silently on: the temperature ignored or scaled, a default "
                "top_k or min_p, a penalty, greedy decoding where sampling was asked"),
       needs="sampled requests (temperature > 0)")
def run(ctx: CheckContext) -> list[CheckResult]:
    groups = sampled_groups(ctx)
    alpha = ctx.check_alpha(NAME)
    if not groups:
        return [CheckResult(NAME, "skipped", "no sampled records (temperature > 0)")]
    idx = [i for members in groups.values() for i in members]
    scores = ctx.scores(idx)
    design = seed_design(ctx, scores)
    pooled = Pooled(scores, {i: ctx.sampling[i] for i in idx},
                    {i: ctx.records[i].parameters for i in idx})
    if len(pooled) < MIN_TOKENS:
        return [CheckResult(NAME, "inconclusive", f"{len(pooled)} informative sampled "
                            f"tokens (< {MIN_TOKENS}): too few to estimate the sampler",
                            SamplerDetails(alpha, len(pooled), len(groups), design))]
    found, info, lams = _alternatives(pooled, design.deff, alpha)
    found += dropped_settings(ctx, scores)
    holm([a.test for a in found], alpha)
    detectable = _detectable(found, info, lams, design.deff, alpha)
    details = SamplerDetails(alpha, len(pooled), len(groups), design, tuple(found),
                             detectable, lams, info)
    wanted = {**DEFAULT_FAULTS, **dict(ctx.options.detect)}
    details = replace(details, power=tuple(deployment_rows(details, len(ctx.records), wanted)))
    power = power_statement(detectable)
    shared = f"; {design.describe()}" if design.shared else ""
    best = details.best()
    if best is None:
        summary = (f"no sampler setting explains the {len(pooled)} tokens better than the "
                   f"request; {power}; {power_words(list(details.power))}{shared}")
        asked = dict(ctx.options.detect)
        blind = [r for r in details.power if r.fault in asked and r.size == asked[r.fault]
                 and not r.caught_now]
        if blind:
            return [CheckResult(NAME, "inconclusive", "--detect: these records could not have "
                                "caught " + ", ".join(f"{fault_words(r.fault, r.size)} "
                                                      f"({needs_words(r)})" for r in blind)
                                + f" (servecheck plan); no sampler setting explains the "
                                f"{len(pooled)} tokens better than the request", details)]
        return [CheckResult(NAME, "pass", summary, details)]
    failed = alt.named_first([a for a in found if a.test.failed])
    findings = [Finding(a.test.group, f"{a.describe()}: {a.test.describe()}", 10 + a.gain)
                for a in failed]
    others = f" (also failing: {', '.join(a.test.group for a in failed[1:4])})" \
        if len(failed) > 1 else ""
    return [CheckResult(NAME, "fail", f"{best.describe()}: {_evidence(best)}{others}"
                        f"{shared}", details, findings)]


def dropped_settings(ctx: CheckContext, scores: dict[int, TokenScores]) -> list[alt.Alternative]:
    """A requested top_k, top_p or min_p that the served tokens break outright, in enough
    tokens and records that no tokenization slip explains it (``DROPPED_MIN``): the server did
    not apply it (ONNX Runtime GenAI drops top_p when top_k is 0). The support check fails on
    the same tokens; this names the setting."""
    out = []
    outside_of, _, _ = violations(ctx, list(scores), scores)
    for rule in ("top_k", "top_p", "min_p"):
        asked = [i for i in scores if getattr(ctx.sampling[i], rule) not in (0, 1.0, 0.0)]
        hits, records, need = 0, 0, 0.0
        for i in asked:
            s = scores[i]
            found = [k for k, r, _ in outside_of[i] if r == rule]
            hits += len(found)
            records += bool(found)
            if found and rule == "top_k":
                need = max(need, float(s.rank[found].max()) + 1)
            if found and rule == "top_p":
                need = max(need, float(s.stats["pre_nucleus_above"][found].max()))
        if hits >= DROPPED_MIN and records >= DROPPED_MIN:
            out.append(alt.dropped(rule, hits, records, sum(len(scores[i]) for i in asked),
                                   need))
    return out


def _evidence(a: alt.Alternative) -> str:
    if a.dropped:
        return "the support check names each token"
    t = a.test
    if t.effect_label.startswith("missing"):
        return (f"{100 * t.effect:.0f}% of the tokens a correct sampler puts where it would cut "
                f"are missing (p={t.p:.2g}, Holm {t.p_adjusted:.2g}, {t.n} tokens)")
    return f"{t.name} p={t.p:.2g} (Holm {t.p_adjusted:.2g}), {t.effect_label} {t.effect:+.3f}"


def _alternatives(x: Pooled, deff: float, alpha: float
                  ) -> tuple[list[alt.Alternative], dict[str, float], dict[str, float]]:
    s = x.stats
    found: list[alt.Alternative] = []
    lams: dict[str, float] = {}
    ratio = np.exp(s["logq"]) / s["top"]  # q(y) / max q
    for k in K_GRID:
        use = x.acted_on("top_k", ((x.top_k == 0) | (x.top_k > k)) &
                         np.isfinite(s[f"beyond_k{k}"]))
        if use.sum() >= MIN_TOKENS:
            rank = s["rank_q"][use]
            found.append(alt.truncation("top_k", k, s[f"beyond_k{k}"][use], rank >= k, rank,
                                        deff, float(np.quantile(rank, 1 - SLIP) + 1),
                                        x.asked_off("top_k", use)))
            lams[f"top_k {k:g}"] = float(s[f"beyond_k{k}"][use].sum())
    for c in MIN_P_GRID:
        use = x.acted_on("min_p", (x.min_p < c) & np.isfinite(s[f"below_min_p{c:g}"]))
        if use.sum() >= MIN_TOKENS:
            r = ratio[use]
            found.append(alt.truncation("min_p", c, s[f"below_min_p{c:g}"][use], r < c, r, deff,
                                        float(np.quantile(r, SLIP)), x.asked_off("min_p", use)))
            lams[f"min_p {c:g}"] = float(s[f"below_min_p{c:g}"][use].sum())
    for p in TOP_P_GRID:
        use = x.acted_on("top_p", (x.top_p > p) & np.isfinite(s[f"beyond_top_p{p:g}"]))
        if use.sum() >= MIN_TOKENS:
            above = s["above"][use]
            found.append(alt.truncation("top_p", p, s[f"beyond_top_p{p:g}"][use], above >= p,
                                        above, deff, float(np.quantile(above, 1 - SLIP)),
                                        x.asked_off("top_p", use)))
            lams[f"top_p {p:g}"] = float(s[f"beyond_top_p{p:g}"][use].sum())
    # the interval at about the family's own level (it has some 20 members)
    scale, detectable_t = alt.temperature_scale(s["temp_ll"], TEMPERATURE_FACTORS, deff,
                                                level=1 - alpha / 20)
    found.append(scale)
    info: dict[str, float] = {"temperature": detectable_t if detectable_t is not None else -1}
    temps = sorted(set(x.temperature.tolist()))
    if len(temps) > 1:
        profiles = [np.where(np.isfinite(s["temp_ll"][x.temperature == t]),
                             s["temp_ll"][x.temperature == t], -1e9).sum(0) for t in temps]
        found.append(alt.temperature_offset(profiles, temps, TEMPERATURE_FACTORS, deff))
    t = x.temperature
    for scope in ("out", "all"):
        if not np.isfinite(s[f"{scope}_seen"]).all():
            continue
        seen_y = (s[f"{scope}_count_y"] > 0).astype(float)
        seen, count, rep = s[f"{scope}_seen"], s[f"{scope}_count"], s[f"{scope}_rep"]
        words = "output" if scope == "out" else "prompt+output"
        for setting, score, fisher in (
                ("presence_penalty", (seen - seen_y) / t, seen * (1 - seen) / t ** 2),
                ("frequency_penalty", (count - s[f"{scope}_count_y"]) / t,
                 (s[f"{scope}_count2"] - count ** 2) / t ** 2),
                ("repetition_penalty", (rep - s["abs_zy"] * seen_y) / t,
                 (s[f"{scope}_rep2"] - rep ** 2) / t ** 2)):
            a, i = alt.penalty(setting, words, score, np.clip(fisher, 0, None), deff)
            a.requested = x.asked_off(setting)
            found.append(a)
            info[f"{setting} {words}"] = i
    return found, info, lams


def _detectable(found: list[alt.Alternative], info: dict[str, float], lams: dict[str, float],
                deff: float, alpha: float) -> dict[str, float | None]:
    m = len(found)
    out: dict[str, float | None] = {"temperature": info["temperature"]
                                    if info["temperature"] >= 0 else None}
    def caught(prefix: str) -> list[float]:
        return [float(k.split()[1]) for k, lam in lams.items() if k.startswith(prefix)
                and alt.truncation_detectable(lam, deff, alpha, m)]
    min_p, top_k, top_p = caught("min_p"), caught("top_k"), caught("top_p")
    out["min_p"] = min(min_p) if min_p else None
    out["top_k"] = max(top_k) if top_k else None
    out["top_p"] = max(top_p) if top_p else None
    for setting in PENALTY_SCORES:
        values = [alt.penalty_detectable(i, deff, alpha, m, alt.PENALTY_FLOORS[setting])
                  for key, i in info.items() if key.startswith(setting)]
        values = [v for v in values if v is not None]
        out[setting] = min(values) if values else None
    return out

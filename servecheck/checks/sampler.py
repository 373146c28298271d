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
from servecheck.checks.core.fit_evidence import FIT, FitEvidence, fit_evidence
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.pooling import MIN_SAMPLED_TOKENS
from servecheck.checks.core.power import (
    DEFAULT_FAULTS,
    PlanRow,
    deployment_rows,
    fault_words,
    needs_words,
    power_words,
)
from servecheck.checks.core.registry import Pooling, alpha_share, check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.core.sampler_evidence import (
    ALTERNATIVES,
    PENALTIES,
    RULES,
    SCOPES,
    Chosen,
    SamplerEvidence,
    sampler_evidence,
)
from servecheck.checks.core.seed_tests import SEEDS, SeedEvidence, seed_evidence, seeds_ignored
from servecheck.checks.core.shared_seeds import SeedDesign
from servecheck.checks.core.stats import OUTSIDE, StatTest, holm
from servecheck.reference.token_scores import TEMPERATURE_FACTORS

NAME = "sampler"
MIN_TOKENS = MIN_SAMPLED_TOKENS
"""Informative sampled tokens below which the check is inconclusive."""
DROPPED_MIN = 3
"""Tokens, and records, outside a requested truncation before the sampler names it dropped (one
or two are a tokenization slip or a broken record, which the support check names)."""
SLIP = 0.002
"""A truncation's estimate is the tightest one all but this share of the tokens allow: a text-only
record's tokenization or a boundary tie can put a token or two past where the server cut."""


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
    for name in PENALTIES:
        if d.get(name) is not None:
            parts.append(f"a {name.replace('_', ' ')} ≥ {d[name]:.2f}" if name !=
                         "repetition_penalty" else f"a repetition penalty ≥ {1 + d[name]:.2f}")
    return ("these records would have caught " + ", ".join(parts) + " with 95% power"
            if parts else "these records could not have caught a sampler fault")


def decide(found: SamplerEvidence, options: CheckOptions, fit: FitEvidence, seeds: SeedEvidence
           ) -> list[CheckResult]:
    """The sampler row of a run's sampled records, or of a chunked set's, pooled: the distinct
    draws are the fit's (``fit``, with the seeds check's verdict, ``seeds``), then one Holm
    family over every alternative at the check's share of the run's α."""
    alpha = options.alpha * alpha_share(NAME)
    draws = fit.draws(seeds_ignored(seeds, options))
    groups = draws.groups()
    if not groups:
        return [CheckResult(NAME, "skipped", "no sampled records (temperature > 0)")]
    design = draws.design()
    x = found.chosen(np.flatnonzero(draws.keep), fit)
    tokens = int(x.tokens.sum())
    if tokens < MIN_TOKENS:
        return [CheckResult(NAME, "inconclusive", f"{tokens} informative sampled "
                            f"tokens (< {MIN_TOKENS}): too few to estimate the sampler",
                            SamplerDetails(alpha, tokens, len(groups), design))]
    alternatives, info, lams = _alternatives(x, design.deff, alpha)
    alternatives += dropped_settings(x)
    holm([a.test for a in alternatives], alpha)
    detectable = _detectable(alternatives, info, lams, design.deff, alpha)
    details = SamplerDetails(alpha, tokens, len(groups), design, tuple(alternatives),
                             detectable, lams, info)
    wanted = {**DEFAULT_FAULTS, **dict(options.detect)}
    details = replace(details, power=tuple(deployment_rows(details, found.records, wanted)))
    power = power_statement(detectable)
    shared = f"; {design.describe()}" if design.shared else ""
    best = details.best()
    if best is None:
        summary = (f"no sampler setting explains the {tokens} tokens better than the "
                   f"request; {power}; {power_words(list(details.power))}{shared}")
        asked = dict(options.detect)
        blind = [r for r in details.power if r.fault in asked and r.size == asked[r.fault]
                 and not r.caught_now]
        if blind:
            return [CheckResult(NAME, "inconclusive", "--detect: these records could not have "
                                "caught " + ", ".join(f"{fault_words(r.fault, r.size)} "
                                                      f"({needs_words(r)})" for r in blind)
                                + f" (servecheck plan); no sampler setting explains the "
                                f"{tokens} tokens better than the request", details)]
        return [CheckResult(NAME, "pass", summary, details)]
    failed = alt.named_first([a for a in alternatives if a.test.failed])
    findings = [Finding(a.test.group, f"{a.describe()}: {a.test.describe()}", 10 + a.gain)
                for a in failed]
    others = f" (also failing: {', '.join(a.test.group for a in failed[1:4])})" \
        if len(failed) > 1 else ""
    return [CheckResult(NAME, "fail", f"{best.describe()}: {_evidence(best)}{others}"
                        f"{shared}", details, findings)]


@check(NAME, order=75, kind="statistical", alpha_share=0.42,
       catches=("a sampling setting off or silently on: the temperature ignored or scaled, a default "
                "top_k or min_p, a penalty, greedy decoding where sampling was asked"),
       needs="sampled requests (temperature > 0)",
       pooling=Pooling(sampler_evidence, decide, reads=(FIT, SEEDS)))
def run(ctx: CheckContext) -> list[CheckResult]:
    return decide(sampler_evidence(ctx), ctx.options, fit_evidence(ctx), seed_evidence(ctx))


def dropped_settings(x: Chosen) -> list[alt.Alternative]:
    """A requested top_k, top_p or min_p that the served tokens break outright, in enough
    tokens and records that no tokenization slip explains it (``DROPPED_MIN``): the server did
    not apply it (ONNX Runtime GenAI drops top_p when top_k is 0). The support check fails on
    the same tokens; this names the setting."""
    out = []
    for k, rule in enumerate(RULES):
        asked = ~np.isin(x.params[rule], (0, 1.0, 0.0))
        hits = x.ev.dropped[x.rows[asked], 2 * k]
        need = x.ev.dropped[x.rows[asked], 2 * k + 1]
        if hits.sum() >= DROPPED_MIN and (hits > 0).sum() >= DROPPED_MIN:
            out.append(alt.dropped(rule, int(hits.sum()), int((hits > 0).sum()),
                                   int(x.ev.length[x.rows[asked]].sum()),
                                   float(need.max(initial=0.0))))
    return out


def _evidence(a: alt.Alternative) -> str:
    if a.dropped:
        return "the support check names each token"
    t = a.test
    if t.effect_label.startswith("missing"):
        return (f"{100 * t.effect:.0f}% of the tokens a correct sampler puts where it would cut "
                f"are missing (p={t.p:.2g}, Holm {t.p_adjusted:.2g}, {t.n} tokens)")
    return f"{t.name} p={t.p:.2g} (Holm {t.p_adjusted:.2g}), {t.effect_label} {t.effect:+.3f}"


def _eligible(x: Chosen, setting: str, value: float) -> np.ndarray:
    """The rows whose request leaves room for ``setting`` = ``value`` to cut."""
    mine = x.params[setting]
    if setting == "top_k":
        return (mine == 0) | (mine > value)
    return mine < value if setting == "min_p" else mine > value


def _alternatives(x: Chosen, deff: float, alpha: float
                  ) -> tuple[list[alt.Alternative], dict[str, float], dict[str, float]]:
    found: list[alt.Alternative] = []
    lams: dict[str, float] = {}
    for j, (setting, value, _) in enumerate(ALTERNATIVES):
        use = x.acted_on(setting, j, _eligible(x, setting, value))
        tail = x.tail(j, use)
        if tail.tokens < MIN_TOKENS:
            continue
        rank, ratio, above = x.places(j, use)
        tightest = (np.quantile(rank, 1 - SLIP) + 1 if setting == "top_k" else
                    np.quantile(ratio, SLIP) if setting == "min_p" else
                    np.quantile(above, 1 - SLIP))
        found.append(alt.truncation(setting, value, tail, deff, float(tightest),
                                    x.asked_off(setting, use & (x.counted(j) > 0))))
        lams[f"{setting} {value:g}"] = tail.removed
    # the interval at about the family's own level (it has some 20 members)
    inside, outside = x.profile
    scale, detectable_t = alt.temperature_scale((inside.sum(0), outside.sum(0)),
                                                int(x.tokens.sum()), TEMPERATURE_FACTORS, deff,
                                                level=1 - alpha / 20)
    found.append(scale)
    info: dict[str, float] = {"temperature": detectable_t if detectable_t is not None else -1}
    t = x.params["temperature"]
    temps = sorted(set(t[x.tokens > 0].tolist()))
    if len(temps) > 1:
        profiles = [inside[t == v].sum(0) + OUTSIDE * outside[t == v].sum(0) for v in temps]
        found.append(alt.temperature_offset(profiles, temps, TEMPERATURE_FACTORS, deff))
    for scope in SCOPES:
        words = "output" if scope == "out" else "prompt+output"
        for setting in PENALTIES:
            sums = x.penalty_sums(scope, setting)
            if sums is None:
                break
            a, i = alt.penalty(setting, words, float(sums[0]), float(sums[1]), float(sums[2]),
                               int(x.tokens.sum()), deff)
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
    for setting in PENALTIES:
        values = [alt.penalty_detectable(i, deff, alpha, m, alt.PENALTY_FLOORS[setting])
                  for key, i in info.items() if key.startswith(setting)]
        values = [v for v in values if v is not None]
        out[setting] = min(values) if values else None
    return out

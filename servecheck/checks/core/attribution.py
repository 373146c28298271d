"""One cause, named once: rows that fail because of what another row names say so.

A sampler setting the server got wrong (a dropped top_p, greedy decoding where sampling was
asked, a penalty it applies of its own) also moves the generic statistics: the PIT of the fit
check and the effective temperature. Those rows keep their verdicts (they are what they
measured) and point to the row that names the setting, so that a serving engineer reads one
cause, not three faults. The sampler check already ranks its explanations
(``alternatives.named_first``); this only links the rows.
"""

from __future__ import annotations

from dataclasses import replace

from servecheck.checks.core.results import CheckResult

EXPLAINED_BY_SAMPLER = ("fit", "temperature")


def explained_by(results: list[CheckResult]) -> dict[str, str]:
    """Failing rows whose failure another failing row names the cause of: row → that row."""
    sampler = next((r for r in results if r.name == "sampler" and r.verdict == "fail"), None)
    if sampler is None or sampler.details.likely_cause() is None:
        return {}
    return {r.name: sampler.name for r in results
            if r.name in EXPLAINED_BY_SAMPLER and r.verdict == "fail"}


def attribute(results: list[CheckResult]) -> list[CheckResult]:
    """``results`` with the generic statistical rows pointing to the sampler's named cause."""
    links = explained_by(results)
    causes = {r.name: r.details.likely_cause() for r in results if r.name in links.values()}
    return [replace(r, summary=f"[likely cause, from the {links[r.name]} row: "
                               f"{causes[links[r.name]]}] {r.summary}")
            if r.name in links else r for r in results]

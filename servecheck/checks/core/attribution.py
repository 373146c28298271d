"""One cause, named once: rows that fail because of what another row names say so.

A sampler setting the server got wrong (a dropped top_p, greedy decoding where sampling was
asked, a penalty it applies of its own) also moves the generic statistics: the PIT of the fit
check and the effective temperature; a sliding window served wrong or a stale prefix cache
moves every token row at once. Those rows keep their verdicts (they are what they measured)
and point to the row that names the cause, so that a serving engineer reads one cause, not
five faults. The sampler check already ranks its explanations
(``alternatives.named_first``); this only links the rows.
"""

from __future__ import annotations

from dataclasses import replace

from servecheck.checks.core.results import CheckResult

TOKEN_ROWS = ("greedy", "support", "sampler", "fit", "temperature", "logprobs")
"""The rows every token of a degraded context or a stale cache entry moves."""

EXPLAINS = {"context": TOKEN_ROWS, "cache": TOKEN_ROWS,
            "mask": ("greedy", "support", "sampler", "fit", "temperature"),
            "sampler": ("fit", "temperature")}
"""Row → the rows its named cause explains, the first claim winning: a window served wrong
moves greedy tokens, the support, the sampler's and the fit's statistics and the log-probs, and
that is one cause, named by the row that resolves it by position (or by cache hit); a grammar
mask that forbids whitespace moves the structured outputs' tokens (a colder, narrower sampler
is what it looks like), named by the row that counts the whitespace."""


def explained_by(results: list[CheckResult]) -> dict[str, str]:
    """Failing rows whose failure another failing row names the cause of: row → that row."""
    failing = {r.name: r for r in results if r.verdict == "fail"}
    links: dict[str, str] = {}
    for name, rows in EXPLAINS.items():
        row = failing.get(name)
        if row is None or name in links or row.details.likely_cause() is None:
            continue
        for other in rows:
            if other in failing and other != name:
                links.setdefault(other, name)
    return links


def attribute(results: list[CheckResult]) -> list[CheckResult]:
    """``results`` with the rows another explains pointing to its named cause."""
    links = explained_by(results)
    causes = {r.name: r.details.likely_cause() for r in results if r.name in links.values()}
    return [replace(r, summary=f"[likely cause, from the {links[r.name]} row: "
                               f"{causes[links[r.name]]}] {r.summary}")
            if r.name in links else r for r in results]

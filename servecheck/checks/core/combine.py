"""One verdict per check from the verdicts of a run's chunks (a responses set too large to hold).

A chunked run checks each chunk of records as a run of its own, at ``α / k`` for k chunks, so a
correct server fails any check of any chunk with probability at most α (Bonferroni over the
chunks, on top of each chunk's Holm families): the run's false-alarm rate stays the one asked
for. A check fails when it fails in any chunk, and is named with that chunk's records. It passes
when it passes in some chunk and fails in none: a chunk where it could not decide (a short last
chunk) leaves the others' evidence standing. The cost is power against pooling every record in
one test, which at chunk sizes of tens of thousands of records is small beside what each chunk
already detects (docs/performance.md, "Scale").
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from servecheck.checks.core.results import Case, CheckResult, Details, Verdict
from servecheck.checks.core.stats import StatTest

KEEP_FINDINGS = 100
"""Findings kept per check and chunk, worst first (the count of all is kept beside them)."""


@dataclass(frozen=True)
class ChunkVerdict:
    """One chunk's result for one check, as saved between runs."""

    chunk: int
    first: int
    """The position of the chunk's first record in the responses set."""
    records: int
    result: CheckResult


def slim(result: CheckResult, keep: int = KEEP_FINDINGS) -> CheckResult:
    """The result with only its worst findings, for saving and merging at scale."""
    total = result.findings_total or len(result.findings)
    return replace(result, findings=result.worst_first()[:keep], findings_total=total)


@dataclass(frozen=True)
class ChunkedDetails(Details):
    """A check's evidence over the chunks: each chunk's own details, in order."""

    version = 1
    chunks: tuple[ChunkVerdict, ...]
    alpha_per_chunk: float

    def to_json(self) -> dict[str, Any]:
        return {"alpha_per_chunk": self.alpha_per_chunk, "chunks": [
            {"chunk": c.chunk, "records": [c.first, c.first + c.records - 1],
             "verdict": c.result.verdict, "summary": c.result.summary,
             "details": c.result.details.to_json()} for c in self.chunks]}

    def tests(self) -> list[StatTest]:
        return [replace(t, group=f"chunk {c.chunk + 1}: {t.group}")
                for c in self.chunks for t in c.result.details.tests()]

    def effect(self) -> str:
        worst = _worst(self.chunks)
        return worst.result.details.effect() if worst else "—"

    def cases(self) -> list[Case]:
        out = []
        for c in self.chunks:
            own = c.result.details.cases() or [Case(c.result.name, c.result.verdict,
                                                    c.result.summary)]
            out += [replace(k, name=f"chunk {c.chunk + 1}: {k.name}") for k in own]
        return out


def _worst(chunks: tuple[ChunkVerdict, ...]) -> ChunkVerdict | None:
    """The chunk a merged result quotes: the first failing, else the first undecided, else the
    first passing one."""
    for verdict in ("fail", "inconclusive", "pass"):
        hit = next((c for c in chunks if c.result.verdict == verdict), None)
        if hit:
            return hit
    return chunks[0] if chunks else None


def _verdict(verdicts: list[Verdict]) -> Verdict:
    for v in ("fail", "pass", "inconclusive"):
        if v in verdicts:
            return v  # type: ignore[return-value]
    return "skipped"


def combine(per_chunk: list[tuple[int, int, list[CheckResult]]], alpha_per_chunk: float
            ) -> list[CheckResult]:
    """Per check (by name, in the first chunk's table order), one result over every chunk.
    ``per_chunk``: (first record position, records, that chunk's results), in chunk order.
    With one chunk its results are the run's, unchanged."""
    if len(per_chunk) == 1:
        return per_chunk[0][2]
    names: dict[str, list[ChunkVerdict]] = {}
    for k, (first, n, results) in enumerate(per_chunk):
        for r in results:
            names.setdefault(r.name, []).append(ChunkVerdict(k, first, n, r))
    return [_merge(name, tuple(chunks), alpha_per_chunk) for name, chunks in names.items()]


def _merge(name: str, chunks: tuple[ChunkVerdict, ...], alpha: float) -> CheckResult:
    verdicts = [c.result.verdict for c in chunks]
    total = len(chunks)
    verdict = _verdict(verdicts)
    worst = _worst(chunks)
    assert worst is not None
    failing = verdicts.count("fail")
    where = f"records {worst.first}–{worst.first + worst.records - 1}"
    if verdict == "fail":
        summary = f"fails in {failing} of {total} chunks; chunk {worst.chunk + 1} ({where}): " \
                  f"{worst.result.summary}"
    elif verdict == "pass":
        worst = next(c for c in chunks if c.result.verdict == "pass")  # quote a passing chunk
        undecided = verdicts.count("inconclusive")
        summary = f"passes in {verdicts.count('pass')} of {total} chunks" + \
                  (f" ({undecided} too small to decide)" if undecided else "") + \
                  f"; chunk {worst.chunk + 1}: {worst.result.summary}"
    elif verdict == "inconclusive":
        summary = f"too few records to decide in {verdicts.count('inconclusive')} of {total} " \
                  f"chunks, passed in none; chunk {worst.chunk + 1}: {worst.result.summary}"
    else:
        summary = f"skipped in every chunk; chunk {worst.chunk + 1}: {worst.result.summary}"
    findings = [f for c in chunks for f in c.result.findings]
    total_findings = sum(c.result.findings_total or len(c.result.findings) for c in chunks)
    findings = sorted(findings, key=lambda f: -f.severity)[:KEEP_FINDINGS]
    return CheckResult(name, verdict, summary, ChunkedDetails(chunks, alpha), findings,
                       worst.result.per_record, total_findings)


__all__ = ["KEEP_FINDINGS", "ChunkVerdict", "ChunkedDetails", "combine", "slim"]

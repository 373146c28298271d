"""A chunk of a large set finished, and what the finished chunks add up to.

``finish`` runs a scored chunk's checks, saves its verdicts and (for the chunk the report shows)
draws its records; ``Gathered`` adds each chunk's saved verdicts to the set's, one chunk at a
time and in set order, whether the chunk was checked now or by an earlier run. Apart from
``chunked`` so that the chunk loop reads as what it schedules, and so that ``finish`` can run on
the checking thread (``workflows.finisher``) with everything it touches in its arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from servecheck.checks.core.combine import slim
from servecheck.checks.core.conventions import ConventionFit
from servecheck.checks.core.digest import RecordFacts
from servecheck.checks.core.registry import Evidence
from servecheck.checks.core.results import CheckResult, overall
from servecheck.formats.records import ResponseRecord
from servecheck.workflows import chunk_state
from servecheck.workflows.check import CheckRun, Scored, run_scored
from servecheck.workflows.progress import timed

__all__ = ["Draw", "Gathered", "finish"]

Draw = Callable[[CheckRun, int], str]
"""What the report shows of a chunk's records, drawn while they are held (``report.html.outputs``)."""


@dataclass
class Gathered:
    """What the chunks' saved verdicts add up to, in set order (``add``, one chunk at a time)."""

    pieces: list[tuple[int, int, list[CheckResult]]] = field(default_factory=list)
    tokens: dict[str, int] = field(default_factory=dict)
    facts: RecordFacts = field(default_factory=RecordFacts)
    flagged: set[str] = field(default_factory=set)
    evidence: dict[str, list[Evidence]] = field(default_factory=dict)
    report_chunk: int | None = None
    shown: str = ""
    shown_records: tuple[int, int] = (0, 0)

    def fails(self) -> bool:
        return any(overall(results) == "fail" for _, _, results in self.pieces)

    def add(self, j: int, saved: chunk_state.Saved) -> None:
        if saved.shown and not self.fails():  # the first failing chunk, else the first
            self.report_chunk, self.shown = j, saved.shown
            self.shown_records = (saved.first, saved.records)
        self.pieces.append((saved.first, saved.records, saved.results))
        self.facts, self.flagged = self.facts + saved.facts, self.flagged | set(saved.flagged)
        for name, piece in saved.evidence.items():
            self.evidence.setdefault(name, []).append(piece)
        for source, n in saved.tokens.items():
            self.tokens[source] = self.tokens.get(source, 0) + n


def finish(j: int, first: int, batch: list[ResponseRecord], digest: str, scored: Scored,
            convention: ConventionFit, got: Gathered, rank: int, directory: Path | None,
            draw: Draw | None, stream: str | None = None) -> None:
    """A scored chunk's checks, its verdicts saved, and (the report's chunk) its drawing.
    ``stream``: the CUDA device whose stream of their own the checks' rescoring runs on, where
    they run beside the next chunk's scoring (on the default stream, each of their results
    would wait for every batch of the other)."""
    with _own_stream(stream):
        run = run_scored(scored, rank, pooled=True)
    results = [slim(r) for r in run.results]
    drawn = ""
    # the report shows the first failing chunk, else the first: drawn while held
    if draw and not got.fails() and (overall(results) == "fail" or not j):
        with timed("outputs (JSON, JUnit, HTML)"):
            drawn = draw(run, j)
    saved = chunk_state.Saved(digest, first, len(batch), results, convention,
                              run.context.source_counts(),
                              RecordFacts.of(batch, len(run.context.left_out)),
                              tuple(run.flagged), run.evidence, drawn)
    if directory:
        with timed("saved verdicts (digest, load, save)"):
            chunk_state.save(directory, j, saved)
    got.add(j, saved)


@contextmanager
def _own_stream(device: str | None) -> Iterator[None]:
    if device is None:
        yield
        return
    import torch

    with torch.cuda.device(device), torch.cuda.stream(torch.cuda.Stream(device)):
        yield

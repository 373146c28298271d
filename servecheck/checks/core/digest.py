"""The digest: what a serving engineer reads first, and what the run could not see.

A table of fifteen rows of prose makes the cause a search. The digest lists the failing checks
in causal order: a fault in the prompt (template, termination, detokenization, or log-probs that
fit another prompt) before the statistics it disturbs, a named sampler setting before the fit
and temperature rows it moves, a window or a cache the position or the cache hits name before
every token row they move (``attribution``), each with its first finding in full, its likely cause in words
(``Details.likely_cause``; lossy speculation first for the rows it fails where the records say
speculative decoding was on) and its worst records by id. It then says what this file could not
show: each check that had nothing to look at, with what it would have caught and what to
collect (the check's ``catches`` and ``needs``), a prompt-tokenization fault where no record
says what tokens the server conditioned on, and the faults deployments ship that these records
were too few to catch (``Details.shortfalls``). The terminal, the report and the JSON summary
all show this one object.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from servecheck.checks.core.attribution import explained_by
from servecheck.checks.core.deployment import LOSSY_SPECULATION, SPECULATION_SHOWS, speculating
from servecheck.checks.core.power import fault_words
from servecheck.checks.core.registry import CheckSpec, find
from servecheck.checks.core.results import CheckResult, Verdict, overall
from servecheck.formats.records import ResponseRecord

__all__ = ["BlindSpot", "Digest", "Failure", "RecordFacts", "Shortfall", "digest"]

WORST = 5
"""Records named per failure."""


@dataclass(frozen=True)
class Failure:
    check: str
    cause: str
    """The likely cause, in a serving engineer's words (else the check's summary)."""
    finding: str | None
    """Its first finding in full: the record (or group) and what is wrong there."""
    records: tuple[str, ...]
    """Its worst records, by id."""
    follows: str | None = None
    """An earlier failure this one may only be a consequence of."""


@dataclass(frozen=True)
class BlindSpot:
    fault: str
    """What this file could not show."""
    why: str
    collect: str
    """What to collect to check it."""


@dataclass(frozen=True)
class Shortfall:
    fault: str
    requests: int | None
    """The requests of this mix that would catch it (``servecheck plan``); None: none would."""
    why: str


@dataclass(frozen=True)
class RecordFacts:
    """What the records hold, where a fault class needs it to be seen at all."""

    records: int = 0
    prompt_ids: int = 0
    logprobs: int = 0
    prompt_text: int = 0
    left_out: int = 0
    """Records a screening check failed and left out of the other checks."""
    speculative: int = 0
    """Records that say they were served with speculative decoding on (``serving``)."""

    @classmethod
    def of(cls, records: list[ResponseRecord], left_out: int = 0) -> RecordFacts:
        answered = [r for r in records if r.error is None]
        return cls(len(answered), sum(r.prompt_token_ids is not None for r in answered),
                   sum(bool(r.output_logprobs) for r in answered),
                   sum(bool(r.input) for r in answered), left_out,
                   sum(speculating(r) for r in answered))

    def __add__(self, other: RecordFacts) -> RecordFacts:
        return RecordFacts(*(a + b for a, b in zip(asdict(self).values(), asdict(other).values(),
                                                    strict=True)))


@dataclass(frozen=True)
class Digest:
    verdict: Verdict
    failures: tuple[Failure, ...] = ()
    inconclusive: tuple[tuple[str, str], ...] = ()
    """(check, why it could not decide)."""
    not_checked: tuple[BlindSpot, ...] = ()
    could_not_catch: tuple[Shortfall, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "failures": [asdict(f) for f in self.failures],
                "inconclusive": [{"check": c, "why": w} for c, w in self.inconclusive],
                "not_checked": [asdict(b) for b in self.not_checked],
                "could_not_catch": [asdict(s) for s in self.could_not_catch]}


def _spec(name: str) -> CheckSpec | None:
    try:
        return find(name)
    except KeyError:
        return None


def _rank(r: CheckResult) -> tuple[int, int]:
    """Causal order: the prompt first (everything after is conditioned on it), then the other
    deterministic checks, then the statistics, each in table order."""
    spec = _spec(r.name)
    prompt = (spec is not None and spec.screens) or \
        bool(getattr(r.details, "prompt_diagnosis", None))
    kind = 0 if prompt else 1 if spec is None or spec.kind == "deterministic" else 2
    return kind, spec.order if spec else 10**6


def _cause(r: CheckResult, facts: RecordFacts | None) -> str:
    """The likely cause in words: lossy speculation first where the records say speculation
    was on and the row is one it fails, then the row's own."""
    own = r.details.likely_cause() or r.summary
    if facts is None or not facts.speculative or r.name not in SPECULATION_SHOWS:
        return own
    return (f"{LOSSY_SPECULATION} (the records say speculative decoding was on in "
            f"{facts.speculative} of {facts.records}); else: {own}")


def _failures(results: list[CheckResult], labels: set[str], facts: RecordFacts | None = None
              ) -> list[Failure]:
    links = explained_by(results)  # a row another names the cause of comes after that row

    def key(r: CheckResult) -> tuple[int, bool, int]:
        """An explaining row moves up to the first of the rows it explains."""
        kind = min([_rank(r)[0], *(_rank(x)[0] for x in results if links.get(x.name) == r.name)])
        return kind, r.name in links, _rank(r)[1]

    failing = sorted((r for r in results if r.verdict == "fail"), key=key)
    prompt = next((r.name for r in failing if _rank(r)[0] == 0), None)
    out = []
    for r in failing:
        worst = r.worst_first()
        records = tuple(dict.fromkeys(f.record for f in worst if f.record in labels))[:WORST]
        first = f"{worst[0].record}: {worst[0].message}" if worst else None
        follows = prompt if prompt and _rank(r)[0] > 0 else links.get(r.name)
        out.append(Failure(r.name, _cause(r, facts), first, records, follows))
    return out


def _blind_spots(results: list[CheckResult], facts: RecordFacts | None) -> list[BlindSpot]:
    out: list[BlindSpot] = []
    aside = f" (after the {facts.left_out} record(s) the failing checks left out)" \
        if facts is not None and facts.left_out else ""
    for r in results:
        spec = _spec(r.name)
        if r.verdict == "skipped" and spec is not None and spec.catches and \
                all(b.fault != spec.catches for b in out):
            out.append(BlindSpot(spec.catches, r.summary + aside, spec.needs or "—"))
    if facts is not None and facts.records and not facts.prompt_ids and not facts.logprobs:
        seen = (f"the prompt text of {facts.prompt_text} record(s) was compared, but "
                if facts.prompt_text else "")
        out.append(BlindSpot(
            "a double BOS, or another fault in how the server tokenized the prompt",
            f"{seen}no record has prompt token ids or served log-probs, so the tokens the server "
            f"conditioned on are unknown (the text can be right while the tokens are not)",
            "prompt token ids, or the output's log-probs (request logprobs: a prompt with a "
            "second BOS moves them)"))
    return out


def digest(results: list[CheckResult], labels: list[str] | set[str],
           facts: RecordFacts | None = None) -> Digest:
    """The digest of a run's results (``labels``: the records' labels, to tell a record's
    finding from a group's; ``facts``: what the records hold)."""
    shortfalls = [Shortfall(fault_words(row.fault, row.size), row.requests, row.why)
                  for r in results for row in r.details.shortfalls()]
    return Digest(overall(results), tuple(_failures(results, set(labels), facts)),
                  tuple((r.name, r.summary) for r in results if r.verdict == "inconclusive"),
                  tuple(_blind_spots(results, facts)), tuple(shortfalls))

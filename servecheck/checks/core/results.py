"""What a check returns: one verdict shape for the checks of a run, the probes of a live server,
and the verdict on one record.

A result is a verdict, a one-line summary, typed details and findings. The details are each
check's own dataclass (``Details``): they say how they are written to the JSON summary, which
statistical tests stand behind the verdict, what the HTML report shows as the effect, and how
JUnit splits them into test cases. The report, JUnit and the per-record verdict read those hooks;
none of them switches on a check's name, so a new check is one file plus its tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    from servecheck.checks.core.stats import StatTest

Verdict = Literal["pass", "fail", "inconclusive", "skipped"]
"""``inconclusive``: the check applies to these records but they are too few to decide (not a
pass: the run exits 3); ``skipped``: nothing in the records for the check to look at."""


@dataclass(frozen=True)
class Finding:
    record: str
    """The record's label (its id, else ``#index``); for a group-level finding, the group."""
    message: str
    severity: float = 0.0
    """Bigger is worse; findings are listed worst first."""


@dataclass(frozen=True)
class Case:
    """One JUnit test case of a check that splits into several (a parameter group each)."""

    name: str
    verdict: Verdict
    message: str
    findings_of: str | None = None
    """The ``Finding.record`` whose findings belong to this case (a group label)."""


@dataclass(frozen=True)
class Details:
    """A check's typed evidence. Subclasses are frozen dataclasses; override what differs."""

    version: ClassVar[int] = 1
    """Bumped when a subclass's JSON shape changes (written beside it as ``details_version``)."""

    def to_json(self) -> dict[str, Any]:
        """The ``details`` object of the JSON summary."""
        return asdict(self)

    def tests(self) -> list[StatTest]:
        """The statistical tests behind the verdict (none for a deterministic check)."""
        return []

    def effect(self) -> str:
        """The size of what was found, for the report's table (statistical checks: their tests)."""
        return "—"

    def cases(self) -> list[Case]:
        """JUnit test cases, one per parameter group; empty: one case for the whole check."""
        return []


@dataclass(frozen=True)
class NoDetails(Details):
    pass


@dataclass
class CheckResult:
    name: str
    verdict: Verdict
    summary: str
    details: Details = field(default_factory=NoDetails)
    findings: list[Finding] = field(default_factory=list)
    per_record: bool = False
    """Every finding is about one record (template, termination): it becomes one of that
    record's reasons in the per-record verdict."""
    findings_total: int | None = None
    """How many findings there were, where only the worst are kept (a chunked run)."""

    def worst_first(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: -f.severity)

    def to_json(self, max_findings: int = 100) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "summary": self.summary,
                "details": self.details.to_json(), "details_version": self.details.version,
                "findings": [{"record": f.record, "message": f.message}
                             for f in self.worst_first()[:max_findings]],
                "findings_total": self.findings_total or len(self.findings)}


def overall(results: list[CheckResult]) -> Verdict:
    """A run fails when any check fails; else it is inconclusive when a check could not decide;
    else it passes (a skipped check had nothing to look at, so it cannot make a run fail)."""
    verdicts = {r.verdict for r in results}
    return "fail" if "fail" in verdicts else "inconclusive" if "inconclusive" in verdicts \
        else "pass"

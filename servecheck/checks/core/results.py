"""What a check returns: one verdict shape for the checks of a run, the probes of a live server,
and the verdict on one record.

A result is a verdict, a one-line summary, typed details and findings. The details are each
check's own dataclass (``Details``): they say how they are written to the JSON summary, which
statistical tests stand behind the verdict, what the HTML report shows as the effect and why
the verdict is what it is, the per-group evidence it draws, and how JUnit splits them into
test cases. The report, JUnit and the per-record verdict read those hooks and import no check:
a new check is one file plus its tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from servecheck.checks.core.explain import test_rows
from servecheck.checks.core.stats import PIT_BINS

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

    def reason(self, verdict: Verdict) -> str | None:
        """The verdict in words ("PASS: …"), where the effect is judged against a floor or a
        tolerance; None where the effect is a plain count of what went wrong."""
        return None

    def family(self) -> tuple[float, int | None]:
        """(α, number of tests) of the Holm family the tests were judged in, for their "why"."""
        return 0.0, None

    def test_rows(self) -> list[dict[str, Any]]:
        """The tests as the report's tables show them, each with its verdict and why."""
        return test_rows(self.tests(), *self.family())

    def side_rows(self) -> list[dict[str, Any]]:
        """Per set of tokens a check compares (before and past the window, cache hits and
        misses), the evidence the report tabulates beside its tests; empty: none."""
        return []

    def group_evidence(self) -> list[GroupEvidence]:
        """Per parameter group, what the report draws (none: the check draws nothing)."""
        return []

    def likely_cause(self) -> str | None:
        """The likely cause of a failure in a serving engineer's words, where the details know
        it (the digest shows it; else the result's summary stands)."""
        return None

    def shortfalls(self) -> list[Any]:
        """Faults deployments ship that these records could not have caught
        (``checks.core.power.PlanRow``), for the digest."""
        return []

    explains_prompts: ClassVar[bool] = False
    """Its findings say how a record's served prompt differs from the reference's (the
    template check): the report puts them beside the prompt diffs."""


@dataclass(frozen=True)
class TemperatureProfile:
    """The temperature test's profile likelihood, as the test read it."""

    temperatures: tuple[float, ...]
    loglik: tuple[float, ...]
    requested: float
    estimate: float
    low: float
    high: float


QQ_POINTS = 200
"""About this many (uniform, PIT) quantile pairs describe a group's PIT distribution."""


@dataclass(frozen=True)
class GroupEvidence:
    """One parameter group's evidence, as the statistical checks computed it."""

    label: str
    records: int
    tokens: int
    """Informative tokens: the PIT values behind the histogram and the QQ plot."""
    pit_counts: tuple[int, ...]
    """The PIT values in equal bins over [0, 1]."""
    pit_quantiles: tuple[tuple[float, float], ...]
    """(uniform quantile, PIT quantile) at evenly spaced ranks (about 200 of them)."""
    tests: tuple[StatTest, ...] = ()
    """Every test of the group, the temperature's last."""
    profile: TemperatureProfile | None = None
    temperature: str | None = None
    """The effective temperature in words, where the check estimates it."""
    checks: tuple[str, ...] = ()
    """The results whose tests these are (the report's filter by check)."""
    chart: str = "PIT"
    """What the histogram and QQ plot are of, for their titles."""

    @classmethod
    def of_pit(cls, label: str, records: int, pit: np.ndarray, **rest: Any) -> GroupEvidence:
        """A group's evidence from its PIT values: binned as the χ² test bins them, and about
        ``QQ_POINTS`` quantiles."""
        n = len(pit)
        counts = np.histogram(pit, bins=PIT_BINS, range=(0.0, 1.0))[0]
        step = max(1, n // QQ_POINTS)
        uniform = (np.arange(n) + 0.5) / max(n, 1)
        quantiles = zip(uniform[::step].tolist(), np.sort(pit)[::step].tolist(), strict=True)
        return cls(label, records, n, tuple(counts.tolist()), tuple(quantiles), **rest)

    def test_rows(self, alpha: float, family: int | None) -> list[dict[str, Any]]:
        """The group's tests as the report's tables show them (``Details.test_rows``)."""
        return test_rows(list(self.tests), alpha, family)


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
    statistical: bool = False
    """Its verdict is a test at a level (its spec's kind; set by ``run_checks``)."""

    @property
    def reason(self) -> str | None:
        """The verdict in words (``Details.reason``); none for a check that could not decide
        or had nothing to look at."""
        if self.verdict in ("skipped", "inconclusive"):
            return None
        return self.details.reason(self.verdict)

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


@dataclass(frozen=True)
class RecordDetails(Details):
    """A per-record verdict (``checks.plausibility``): ``CheckResult.name`` is the record's label,
    ``summary`` one line of statistics whatever the verdict, and each finding a reason a correct
    server could not have produced the output."""

    mode: Literal["greedy", "sampled"]
    z: float | None = None
    p: float | None = None

    EXPLANATION: ClassVar[str] = (
        "plausible = a correct server could have produced this output: its prompt equals the "
        "reference template, it ends correctly, every greedy token is the reference argmax "
        "(near-ties within δ allowed), every sampled token lies inside top_k/top_p/min_p (within "
        "the numerics tolerance), and its likelihood z = −Σ Φ⁻¹(u) / √n over the randomised PIT "
        "u of its tokens (exactly standard normal for a correct sampler, whatever the output's "
        "length) is within ±z* (two-sided, α/N over the N sampled outputs judged). Two different "
        "texts can both be plausible: a sampler picks one of many likely outputs.")

"""``check --report``: the view model of the HTML report, and writing it.

Everything the page shows is what the checks computed: their results and typed details (the
verdict in words, each test's why, each parameter group's evidence), the per-record verdicts
and the context's cached scores; nothing is scored or tested again here, and no check module is
imported. ``templates/report.html.j2`` only lays it out. The page shows, top to bottom: the
verdict of every check with its p-value and effect size, and in words why an effect beside a
floor or tolerance passed or failed; per parameter group the PIT histogram, the QQ plot and the
temperature profile (effective vs requested, as the test read it); the template diff, served vs
reference; and every output as a token heat-map, worst records first, with search and filters
by check and group. The records part is drawn apart from the page around it
(``outputs``): a chunked run draws it from one chunk while it is held and lays the page, with
the whole set's verdicts, around it at the end.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from markupsafe import Markup

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.digest import Digest
from servecheck.checks.core.results import CheckResult, GroupEvidence, RecordDetails, overall
from servecheck.formats.conversation import Message
from servecheck.report.pages import render, write_page
from servecheck.report.svg import pit_histogram, qq_plot, temperature_profile
from servecheck.report.tokens import TokenView, heatmap
from servecheck.report.visible import Segment, side_by_side

MAX_RECORDS = 300
"""Records shown as heat-maps (worst first); a page with thousands would not open quickly."""
MAX_DIFFS = 20
MAX_FINDINGS = 50


@dataclass
class CheckRow:
    name: str
    verdict: str
    summary: str
    p: str
    effect: str
    why: str | None
    """The verdict in words, where the effect is judged against a floor or tolerance."""
    tests: list[dict[str, Any]]
    findings: list[tuple[str, str]]
    findings_total: int
    sides: list[dict[str, Any]]
    """The sets of tokens a check compares, each with its evidence (``Details.side_rows``)."""


@dataclass
class GroupView:
    label: str
    records: int
    tokens: int
    verdict: str
    charts: list[Markup]
    tests: list[dict[str, Any]]
    temperature: str | None
    checks: str
    """The checks whose tests these are, space-separated (the page's filter)."""


@dataclass
class DiffView:
    served: list[Segment]
    reference: list[Segment]
    verdict: str
    message: str
    labels: list[str]
    count: int


@dataclass
class RecordView:
    label: str
    group: str
    checks: list[str]
    verdict: CheckResult
    """The record's own verdict (``checks.plausibility``)."""
    conversation: list[tuple[str, str]]
    tokens: list[TokenView]
    output: str
    token_source: str
    """Where the scored tokens came from; with the positions of a non-canonical split."""
    sort_key: tuple = field(repr=False, default=())
    thinking: str | None = None
    """The output's thinking block (the template's markers), shown apart from the answer."""
    calls: list[CallView] = field(default_factory=list)
    tools: list[str] = field(default_factory=list)
    """Names of the functions the request offered."""


@dataclass
class CallView:
    """One tool call as the model wrote it, its arguments checked against the schema."""

    name: str
    arguments: str
    problem: str | None
    """None: valid JSON, a known function, arguments that satisfy its schema."""


def call_views(ctx: CheckContext, i: int) -> tuple[str | None, list[CallView]]:
    r = ctx.records[i]
    markup = ctx.outputs.markup
    if not (markup.has_thinking or (markup.has_calls and r.conversations.tools)):
        return None, []
    calls = []
    for c in ctx.outputs.calls(i):
        call = c.raw.call
        args = json.dumps(call.parsed_arguments(), indent=1, ensure_ascii=False) if call \
            else c.raw.text
        calls.append(CallView(call.function.name if call else "?", args,
                              c.problem[1] if c.problem else None))
    return ctx.outputs.parsed(i).reasoning or None, calls


def turn_text(m: Message) -> str:
    """A turn as the report shows it: its text, then its calls as ``name(arguments)``."""
    calls = [f"→ {c.function.name}({json.dumps(c.parsed_arguments(), ensure_ascii=False)})"
             for c in m.tool_calls or []]
    return "\n".join([m.content or "", *calls]).strip()


def check_rows(results: list[CheckResult]) -> list[CheckRow]:
    rows = []
    for r in results:
        tests = r.details.tests()
        if tests:
            low = min(tests, key=lambda t: t.p)
            p = f"{low.p:.2g} (Holm {low.p_adjusted:.2g}), smallest of {len(tests)}"
        elif r.statistical:
            p = "— (no test: too few records)" if r.verdict == "inconclusive" else "— (no test)"
        else:
            p = "— (deterministic)"
        rows.append(CheckRow(r.name, r.verdict, r.summary, p, r.details.effect(), r.reason,
                             r.details.test_rows(),
                             [(f.record, f.message) for f in r.worst_first()[:MAX_FINDINGS]],
                             len(r.findings), r.details.side_rows()))
    return rows


def group_view(g: GroupEvidence, alpha: float, family: int | None) -> GroupView:
    charts: list[Markup] = []
    if g.tokens:
        charts += [pit_histogram(g, f"{g.chart} histogram · {g.label}"),
                   qq_plot(g, f"{g.chart} QQ · {g.label}")]
    if g.profile is not None:
        charts.append(temperature_profile(g.profile, f"temperature · {g.label}"))
    rows = g.test_rows(alpha, family)
    verdict = "fail" if any(t["verdict"] == "fail" for t in rows) else \
        "pass" if rows else "skipped"
    return GroupView(g.label, g.records, g.tokens, verdict, charts, rows, g.temperature,
                     " ".join(g.checks))


def group_views(results: list[CheckResult]) -> list[GroupView]:
    """Each parameter group of the checks that drew one, as they computed it."""
    return [group_view(g, *r.details.family()) for r in results for g in r.details.group_evidence()]


def template_diffs(ctx: CheckContext, results: list[CheckResult]) -> list[DiffView]:
    """One side-by-side diff per distinct (served, reference) pair; differing ones first."""
    messages = {f.record: f.message for r in results if r.details.explains_prompts
                for f in r.findings}
    pairs: dict[tuple[str, str], list[str]] = defaultdict(list)
    for i, r in enumerate(ctx.records):
        expected = ctx.expected_prompts[i]
        served = r.input or (ctx.ref.decode(r.prompt_token_ids) if r.prompt_token_ids else "")
        if not served:
            continue
        pairs[(served, expected if isinstance(expected, str) else "")].append(ctx.labels[i])
    differ = [(k, v) for k, v in pairs.items() if k[0] != k[1]]
    same = [(k, v) for k, v in pairs.items() if k[0] == k[1]]
    chosen = sorted(differ, key=lambda kv: -len(kv[1]))[:MAX_DIFFS] + same[:1]
    specials = ctx.ref.special_tokens
    views = []
    for (served, expected), labels in chosen:
        left, right = side_by_side(served, expected, specials)
        ok = served == expected
        message = "identical to the reference template" if ok else \
            messages.get(labels[0], "differs from the reference template")
        views.append(DiffView(left, right, "pass" if ok else "fail", message, labels[:5],
                              len(labels)))
    return views


def record_views(ctx: CheckContext, results: list[CheckResult], verdicts: dict[int, CheckResult],
                 limit: int = MAX_RECORDS) -> tuple[list[RecordView], int]:
    """Records worst first: flagged by a failing check, then implausible alone, then by |z|."""
    failing = {r.name for r in results if r.verdict == "fail"}
    flagged: dict[str, dict[str, float]] = defaultdict(dict)
    for r in results:
        for f in r.findings:
            flagged[f.record][r.name] = max(flagged[f.record].get(r.name, 0.0), f.severity)
    order = []
    for i in range(len(ctx.records)):
        checks = flagged.get(ctx.labels[i], {})
        bad = [c for c in checks if c in failing]
        v = verdicts[i]
        z = (v.details.z if isinstance(v.details, RecordDetails) else None) or 0.0
        order.append(((-len(bad), v.verdict == "pass", -max((checks[c] for c in bad), default=0),
                       -abs(z), i), i))
    order.sort()
    scores = ctx.scores(list(range(len(ctx.records))))
    views = []
    for key, i in order[:limit]:
        r = ctx.records[i]
        thinking, calls = call_views(ctx, i)
        views.append(RecordView(
            ctx.labels[i], ctx.sampling[i].label(),
            sorted(flagged.get(ctx.labels[i], {})), verdicts[i],
            [(m.role, turn_text(m)) for m in r.conversations.contents],
            heatmap(ctx, i, scores[i]), r.output, ctx.describe_tokens(i), key, thinking, calls,
            [t["function"]["name"] for t in r.conversations.tools or []]))
    return views, len(order)


def outputs(ctx: CheckContext, results: list[CheckResult], verdicts: dict[int, CheckResult],
            limit: int = MAX_RECORDS) -> Markup:
    """What the page shows of ``ctx``'s records (``templates/_outputs.html.j2``): the requests
    that failed, the template diff and the worst outputs. Drawn on its own because a chunked run
    holds a chunk's records only while it checks it, and learns the set's verdicts (the pooled
    rows among them) only after the last chunk: the part drawn from records is kept, a few MB,
    and the page is laid around it at the end."""
    records, total = record_views(ctx, results, verdicts, limit)
    return Markup(render(
        "_outputs.html.j2", diffs=template_diffs(ctx, results),
        diff_checks=" ".join(r.name for r in results if r.details.explains_prompts),
        records=records, records_total=total,
        errors=[(r.id or f"#{i}", r.error) for i, r in enumerate(ctx.all_records) if r.error],
        check_names=sorted({c for v in records for c in v.checks}),
        group_names=sorted({v.group for v in records}), explanation=RecordDetails.EXPLANATION,
        implausible=sum(v.verdict == "fail" for v in verdicts.values())))


def build(results: list[CheckResult], meta: dict[str, Any], title: str, shown: Markup,
          digest: Digest | None = None) -> dict[str, Any]:
    """The view model of the report page: the run's verdicts (``results``; ``digest``: what
    heads the page) around ``shown``, what ``outputs`` drew of its records."""
    try:
        ours = version("servecheck")
    except PackageNotFoundError:
        ours = "unknown"
    return {
        "title": title, "verdict": overall(results), "meta": meta, "version": ours,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "digest": digest, "checks": check_rows(results), "groups": group_views(results),
        "outputs": shown,
    }


def write_page_around(path: Path, shown: Markup, results: list[CheckResult],
                      meta: dict[str, Any], title: str, digest: Digest | None = None) -> None:
    """The page of a run's ``results`` around the records part ``outputs`` drew."""
    write_page(path, render("report.html.j2", **build(results, meta, title, shown, digest)))

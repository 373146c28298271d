"""``servecheck compare``: replay a few served requests on a ground truth and show both outputs
side by side, each with its statistical verdict.

What the original notes' ``compare_ground_truth.py`` tried to be: pick records at random, send
the same requests to a ground truth (the in-process reference, ``hf:<reference>``, by default; any
target with ``--target``) and compare template and output "visually side by side". ``--ids``
picks the records by id instead: listed, from a text file, or the ones a ``check --json`` summary
names in its failing checks' findings (``wanted``). The texts will differ, since no two engines
share an RNG (and greedy decoding drifts with numerics), so comparing them says little. What
does say something is the verdict on each side: both outputs are teacher-forced through the
reference and judged by ``plausibility.judge``, so a person sees at once that two different
texts can both be correct, or that one of them could not have come from a correct server.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import logging
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from servecheck.checks.core.context import CheckContext, label
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.results import CheckResult, RecordDetails
from servecheck.checks.plausibility import judge, word
from servecheck.checks.template import check_template
from servecheck.checks.termination import check_termination
from servecheck.collect.targets import Target, open_target
from servecheck.errors import EXIT_FAIL, EXIT_PASS, InputError, TargetError
from servecheck.formats.answers import latest
from servecheck.formats.prompts import Request
from servecheck.formats.raw import MAX_RECORD_BYTES
from servecheck.formats.records import ResponseRecord
from servecheck.formats.stream import index
from servecheck.formats.stream import records as stream
from servecheck.reference.model import Reference
from servecheck.report.html import DiffView
from servecheck.report.terminal import markup
from servecheck.report.tokens import TokenView, heatmap
from servecheck.report.visible import side_by_side
from servecheck.workflows.chunked import RECORDS_PER_CHUNK

log = logging.getLogger("servecheck")
TRUTH = "~truth"
"""Suffix of a ground-truth record's id: its label must differ from the served one's."""
STYLE = {"plausible": "bold green", "implausible": "bold red", "error": "bold yellow"}


@dataclass
class Side:
    record: ResponseRecord
    verdict: CheckResult | None
    """The output's own verdict (``checks.plausibility``)."""
    """None when the request failed (``record.error``)."""
    tokens: list[TokenView]


@dataclass
class Pair:
    label: str
    group: str
    conversation: list[tuple[str, str]]
    served: Side
    truth: Side
    prompts: DiffView
    same_text: bool


def pick(records: Iterable[ResponseRecord], k: int, seed: int) -> list[int]:
    """K answered records, chosen at random but reproducibly (same file, same seed, same pick);
    ``records`` is read once (a streamed set is not held). A record decoded under a grammar
    (``tool_choice`` required) is not one: no reference judges it."""
    if k < 1:
        raise InputError(f"--sample must be ≥ 1, got {k}")
    answered = [i for i, r in enumerate(records) if r.error is None and not r.parameters.constrained]
    if not answered:
        raise InputError("no answered record to compare (every record has 'error' set, or was "
                         "decoded under a grammar no reference applies)")
    return sorted(random.Random(seed).sample(answered, min(k, len(answered))))


Labelled = Callable[[], Iterator[tuple[str, ResponseRecord]]]


def labelled(responses: Path | list[ResponseRecord], max_bytes: int = MAX_RECORD_BYTES
             ) -> Labelled:
    """The records of a responses file or shard set (or of a list), each with its label (the
    id, else ``#position``), read afresh on each call. A set too large to hold (a day of logs)
    is streamed: each pass reads it again, so memory holds positions, not records."""
    if isinstance(responses, Path):
        found = index(responses, max_bytes, keep=RECORDS_PER_CHUNK)
        if found.held is None:
            return lambda: ((label(r, n), r) for n, r in enumerate(stream(found, max_bytes)))
        responses = latest(found.held)
    records = list(responses)
    return lambda: ((label(r, i), r) for i, r in enumerate(records))


def sampled(responses: Path | list[ResponseRecord], k: int, seed: int,
            max_bytes: int = MAX_RECORD_BYTES) -> list[ResponseRecord]:
    """``pick``'s records of a responses file or shard set (or list), each named by its label."""
    records = labelled(responses, max_bytes)
    chosen = set(pick((r for _, r in records()), k, seed))
    return [r.model_copy(update={"id": name}) for n, (name, r) in enumerate(records())
            if n in chosen]


@dataclass(frozen=True)
class Wanted:
    """The records ``--ids`` names, by label, in the order asked (``wanted``); ``source``: the
    option, or the file it named with ``@``; ``summary``: read from a ``check --json`` summary,
    whose findings also name parameter groups, which are skipped with a warning rather than
    refused, and so are records that cannot be compared."""

    labels: list[str]
    source: str
    summary: bool = False


def _listed(items: Iterable[str], where: str, why: str = "--ids names no record") -> list[str]:
    labels = list(dict.fromkeys(x.strip() for x in items if x.strip()))
    if not labels:
        raise InputError(why, where=where)
    return labels


def failing_records(summary: object, where: str) -> list[str]:
    """The record labels a ``check --json`` summary's failing checks name in their findings
    (worst first, each once); a check keeps its 100 worst findings, which a warning says."""
    checks = summary.get("checks") if isinstance(summary, dict) else None
    if not isinstance(checks, list):
        raise InputError("--ids @FILE: not a `servecheck check --json` summary (no 'checks' "
                         "list)", where=where)
    failing = [c for c in checks if isinstance(c, dict) and c.get("verdict") == "fail"]
    if cut := [c.get("name") for c in failing
               if (c.get("findings_total") or 0) > len(c.get("findings") or [])]:
        log.warning("%s lists only the worst findings of check(s) %s: the records of the others "
                    "are not compared", where, ", ".join(map(repr, cut)))
    labels = [f.get("record") for c in failing for f in c.get("findings") or []
              if isinstance(f, dict)]
    return _listed((x for x in labels if isinstance(x, str)), where,
                   "--ids @FILE: the summary has no failing check that names a record")


def wanted(value: str) -> Wanted:
    """``--ids``: ``ID[,ID…]``, or ``@FILE``: a ``check --json`` summary (the records its failing
    checks' findings name) or a text file of ids, one per line."""
    if not value.startswith("@"):
        return Wanted(_listed(value.split(","), "--ids"), "--ids")
    path = Path(value[1:])
    try:
        text = path.read_text(encoding="utf-8")
        return Wanted(failing_records(json.loads(text), str(path)), str(path), True) \
            if text.lstrip().startswith("{") else \
            Wanted(_listed(text.splitlines(), str(path), "--ids @FILE: no id (one per line)"),
                   str(path))
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise InputError(f"--ids @FILE: cannot be read: {getattr(e, 'strerror', None) or e}",
                         where=str(path)) from None


def _closest(unknown: list[str], labels: Iterable[str]) -> dict[str, str]:
    """Each unknown label's closest label in the set, where close (``difflib``'s 0.6), found in
    one pass over the labels (a streamed set is not held)."""
    best: dict[str, tuple[float, str]] = {}
    matchers = [difflib.SequenceMatcher(b=u) for u in unknown]
    for name in labels:
        for m in matchers:
            m.set_seq1(name)
            if m.real_quick_ratio() >= 0.6 and m.quick_ratio() >= 0.6 and \
                    (ratio := m.ratio()) >= 0.6 and ratio > best.get(m.b, (0.0, ""))[0]:
                best[m.b] = (ratio, name)
    return {u: name for u, (_, name) in best.items()}


def _quoted(names: list[str], close: dict[str, str] | None = None) -> str:
    return ", ".join(repr(u) + (f" (did you mean {close[u]!r}?)" if close and u in close else "")
                     for u in names[:10]) + (", …" if len(names) > 10 else "")


def select(records: Labelled, asked: Wanted, where: str) -> list[ResponseRecord]:
    """The records ``asked`` names, each named by its label, in the order asked (the choices of
    one request together). An id that names no record is bad input, with the closest ids; a
    summary's labels that name no record (parameter groups) are skipped with a warning, and so
    are records that cannot be compared (a failed request, one decoded under a grammar)."""
    order = {name: k for k, name in enumerate(asked.labels)}
    found = [r for *_, r in sorted((order[name], n, r.model_copy(update={"id": name}))
                                   for n, (name, r) in enumerate(records()) if name in order)]
    unknown = [x for x in asked.labels if x not in {r.id for r in found}]
    bad = list(dict.fromkeys(r.id or "" for r in found if r.error or r.parameters.constrained))
    if unknown and (not asked.summary or not found):
        raise InputError(f"--ids: {len(unknown)} id(s) name no record of the file: "
                         f"{_quoted(unknown, _closest(unknown, (n for n, _ in records())))}",
                         where=where)
    if skipped := [f"{len(names)} {why}: {_quoted(names)}" for names, why in (
            (unknown, "label(s) that name no record of the file (parameter groups?)"),
            (bad, "record(s) without an answer to compare (a failed request, or one decoded "
                  "under a grammar no reference applies)")) if names]:
        log.warning("%s: skipped %s", asked.source, "; ".join(skipped))
    if not (kept := [r for r in found if r.id not in bad]):
        raise InputError(f"--ids: none of the records {asked.source} names can be compared",
                         where=where)
    return kept


async def _replay(target: Target, requests: list[Request], advance: Callable[[int], None]
                  ) -> list[ResponseRecord]:
    gate = asyncio.Semaphore(max(1, target.max_concurrency))

    async def one(request: Request) -> ResponseRecord:
        async with gate:
            try:
                record = await target.generate(request)
            except TargetError as e:
                record = ResponseRecord(id=request.id, conversations=request.conversation,
                                        parameters=request.parameters, target=target.spec,
                                        error=str(e))
        advance(1)
        return record

    try:
        return list(await asyncio.gather(*(one(r) for r in requests)))
    finally:
        await target.aclose()


def replay(spec: str, served: list[ResponseRecord], labels: list[str], console: Console,
           progress: bool, reference: str | None = None) -> list[ResponseRecord]:
    """Send each served record's request to the ground truth; ids get the ``~truth`` suffix."""
    from servecheck.workflows.progress import bar, spinner

    with spinner(console, f"opening the ground truth {spec}…", progress):
        target = open_target(spec, reference=reference)
    requests = [Request(f"{name}{TRUTH}", r.conversations, r.parameters)
                for name, r in zip(labels, served, strict=True)]
    try:
        with bar(console, f"replaying on {spec}", len(requests), progress) as advance:
            records = asyncio.run(_replay(target, requests, advance))
    finally:
        target.close()
    return [r.model_copy(update={"id": q.id}) for r, q in zip(records, requests, strict=True)]


def _side(ctx: CheckContext, record: ResponseRecord, verdicts: dict[int, CheckResult],
          position: dict[str, int]) -> Side:
    i = position.get(record.id or "")
    if i is None:
        return Side(record, None, [])
    return Side(record, verdicts[i], heatmap(ctx, i, ctx.scores([i])[i]))


def build_pairs(ctx: CheckContext, served: list[ResponseRecord], truth: list[ResponseRecord]
                ) -> list[Pair]:
    """Judge every output of the context and pair each served output with its ground truth."""
    results = [check_template(ctx), check_termination(ctx)]  # the per-record checks
    verdicts = judge(ctx, results)
    position = {name: i for i, name in enumerate(ctx.labels)}
    specials = ctx.ref.special_tokens
    pairs = []
    for s, t in zip(served, truth, strict=True):
        left, right = side_by_side(s.input, t.input, specials)
        same = s.input == t.input
        prompts = DiffView(left, right, "pass" if same else "fail",
                           "the same prompt" if same else "the prompts differ", [], 1)
        served_side, truth_side = _side(ctx, s, verdicts, position), \
            _side(ctx, t, verdicts, position)
        if same and s.output == t.output and served_side.verdict and truth_side.verdict:
            # one text after one prompt: one verdict, whichever side the draws of the test's
            # randomisation would have tipped (an identical ground truth is never the odd one)
            truth_side = replace(truth_side, verdict=served_side.verdict)
        pairs.append(Pair(s.id or "", ctx.sampling[position[s.id or ""]].label(),
                          [(m.role, m.content) for m in s.conversations.contents],
                          served_side, truth_side, prompts, s.output == t.output))
    return pairs


def _cell(side: Side, width: int) -> str:
    text = side.record.output if len(side.record.output) <= width else \
        side.record.output[:width] + f"… ({len(side.record.output)} characters)"
    if side.verdict is None:
        return f"[{STYLE['error']}]ERROR[/] {markup(side.record.error or '', newlines=True)}"
    v = side.verdict
    said = word(v)
    lines = [markup(text, newlines=True), "",
             f"[{STYLE[said]}]{said.upper()}[/] {markup(v.summary, newlines=True)}"]
    lines += [f"[red]• {markup(f.message, newlines=True)}[/]" for f in v.findings[:3]]
    return "\n".join(lines)


def print_pairs(pairs: list[Pair], truth_spec: str, console: Console) -> None:
    for p in pairs:
        table = Table(title=markup(f"{p.label} · {p.group} · "
                                   f"{p.conversation[-1][1][:60]!r}"), expand=True)
        table.add_column("served", ratio=1, overflow="fold")
        table.add_column(f"ground truth: {markup(truth_spec)}", ratio=1, overflow="fold")
        table.add_row(_cell(p.served, 400), _cell(p.truth, 400))
        prompt = "[green]same prompt on both sides[/]" if p.prompts.verdict == "pass" else \
            "[red]the prompts differ[/] (see --html for the side-by-side diff)"
        table.caption = prompt + (" · identical outputs" if p.same_text else
                                  " · different outputs")
        console.print(table)


def verdict_counts(pairs: list[Pair], side: str) -> tuple[int, int]:
    """(plausible, judged) on one side; failed requests are not judged."""
    verdicts = [getattr(p, side).verdict for p in pairs]
    judged = [v for v in verdicts if v is not None]
    return sum(v.verdict == "pass" for v in judged), len(judged)


def compare(responses: Path | list[ResponseRecord], reference: str = "builtin",
            truth: str | None = None, sample: int = 5, seed: int = 0, numerics: str = "bf16",
            console: Console | None = None, progress: bool = False,
            max_record_bytes: int = MAX_RECORD_BYTES, ids: Wanted | None = None) -> list[Pair]:
    """``sample`` records of ``responses`` (or those ``ids`` names), replayed on ``truth``
    (default ``hf:<reference>``, in process), each output judged on its own: the pairs
    ``compare`` shows."""
    from servecheck.workflows.check import teacher_force

    console = console or Console(quiet=True)
    served = sampled(responses, sample, seed, max_record_bytes) if ids is None else select(
        labelled(responses, max_record_bytes), ids,
        str(responses) if isinstance(responses, Path) else "the records")
    ref = Reference(reference)
    truth_spec = truth or f"hf:{reference}"
    replayed = replay(truth_spec, served, [r.id or "" for r in served], console, progress,
                      reference)
    failed = [r for r in replayed if r.error]
    if failed and len(failed) == len(replayed):
        raise InputError(f"the ground truth answered none of the {len(replayed)} request(s): "
                         f"{failed[0].error}", where=truth_spec)
    ctx = CheckContext(served + replayed, ref, CheckOptions(reference, numerics=numerics))
    teacher_force(ctx, console, progress)
    return build_pairs(ctx, served, replayed)


def run_compare(responses: Path, reference: str, target: str | None, sample: int, seed: int,
                html: Path | None, numerics: str, console: Console, progress: bool = True,
                max_record_bytes: int = MAX_RECORD_BYTES, ids: str | None = None) -> int:
    """The ``compare`` command; 0 when every served output in the sample (or of the records
    ``ids`` names: ``wanted``) is plausible, else 1 (the exit codes: ``servecheck.errors``)."""
    truth_spec = target or f"hf:{reference}"
    asked = wanted(ids) if ids is not None else None
    pairs = compare(responses, reference, target, sample, seed, numerics, console, progress,
                    max_record_bytes, asked)
    how = f"seed {seed}" if asked is None else f"named by {asked.source}"
    console.print(f"{len(pairs)} record(s) of {markup(responses)} ({markup(how)}) replayed on "
                  f"{markup(truth_spec)}")
    print_pairs(pairs, truth_spec, console)
    ok_served, n_served = verdict_counts(pairs, "served")
    ok_truth, n_truth = verdict_counts(pairs, "truth")
    both = sum(1 for p in pairs if not p.same_text and p.served.verdict and p.truth.verdict
               and p.served.verdict.verdict == p.truth.verdict.verdict == "pass")
    console.print(escape(RecordDetails.EXPLANATION), style="dim")
    console.print(f"served: {ok_served}/{n_served} plausible · ground truth: {ok_truth}/{n_truth} "
                  f"plausible · {both} pair(s) with different texts, both plausible")
    if n_truth < len(pairs) or ok_truth < n_truth:
        console.print("[yellow]note:[/] the ground truth itself failed or looks wrong on some "
                      "records; check it before trusting the comparison")
    if html:
        from servecheck.report.pages import render, write_page

        write_page(html, render("compare.html.j2", pairs=pairs, truth_spec=truth_spec,
                                responses=str(responses), reference=reference,
                                seed=seed if asked is None else f"n/a, records {how}",
                                explanation=RecordDetails.EXPLANATION, served_ok=(ok_served, n_served),
                                truth_ok=(ok_truth, n_truth), both=both))
        console.print(f"side-by-side page written to {markup(html)}")
    return EXIT_PASS if ok_served == n_served == len(pairs) else EXIT_FAIL

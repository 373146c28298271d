"""``servecheck compare``: replay a few served requests on a ground truth and show both outputs
side by side, each with its statistical verdict.

What the original notes' ``compare_ground_truth.py`` tried to be: pick records at random, send
the same requests to a ground truth (the in-process reference, ``hf:<reference>``, by default; any
target with ``--target``) and compare template and output "visually side by side". The texts
will differ, since no two engines share an RNG (and greedy decoding drifts with numerics), so
comparing them says little. What does say something is the verdict on each side: both outputs
are teacher-forced through the reference and judged by ``plausibility.judge``, so a person sees
at once that two different texts can both be correct, or that one of them could not have come
from a correct server.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
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


def pick(records: list[ResponseRecord], k: int, seed: int) -> list[int]:
    """K answered records, chosen at random but reproducibly (same file, same seed, same pick)."""
    if k < 1:
        raise InputError(f"--sample must be ≥ 1, got {k}")
    answered = [i for i, r in enumerate(records) if r.error is None]
    if not answered:
        raise InputError("no answered record to compare (every record has 'error' set)")
    return sorted(random.Random(seed).sample(answered, min(k, len(answered))))


def sampled(path: Path, k: int, seed: int, max_bytes: int = MAX_RECORD_BYTES
            ) -> list[ResponseRecord]:
    """``pick``'s records of a responses file or shard set, each named by its id (else its
    position). A set too large to hold (a day of logs) is streamed: one pass finds the answered
    records, the next keeps the chosen ones, so memory holds positions, not records."""
    found = index(path, max_bytes, keep=RECORDS_PER_CHUNK)
    if found.held is not None:
        records = latest(found.held)
        return [records[i].model_copy(update={"id": label(records[i], i)})
                for i in pick(records, k, seed)]
    if k < 1:
        raise InputError(f"--sample must be ≥ 1, got {k}")
    answered = [n for n, r in enumerate(stream(found, max_bytes)) if r.error is None]
    if not answered:
        raise InputError("no answered record to compare (every record has 'error' set)")
    chosen = set(random.Random(seed).sample(answered, min(k, len(answered))))
    return [r.model_copy(update={"id": label(r, n)}) for n, r in enumerate(stream(found, max_bytes))
            if n in chosen]


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
            max_record_bytes: int = MAX_RECORD_BYTES) -> list[Pair]:
    """``sample`` records of ``responses``, replayed on ``truth`` (default ``hf:<reference>``,
    in process), each output judged on its own: the pairs ``compare`` shows."""
    from servecheck.workflows.check import teacher_force

    console = console or Console(quiet=True)
    if isinstance(responses, Path):
        served = sampled(responses, sample, seed, max_record_bytes)
    else:
        records = list(responses)
        served = [records[i].model_copy(update={"id": label(records[i], i)})
                  for i in pick(records, sample, seed)]
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
                max_record_bytes: int = MAX_RECORD_BYTES) -> int:
    """The ``compare`` command; 0 when every served output in the sample is plausible, else 1
    (the exit codes: ``servecheck.errors``)."""
    truth_spec = target or f"hf:{reference}"
    pairs = compare(responses, reference, target, sample, seed, numerics, console, progress,
                    max_record_bytes)
    console.print(f"{len(pairs)} record(s) of {markup(responses)} (seed {seed}) replayed on "
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
                                responses=str(responses), reference=reference, seed=seed,
                                explanation=RecordDetails.EXPLANATION, served_ok=(ok_served, n_served),
                                truth_ok=(ok_truth, n_truth), both=both))
        console.print(f"side-by-side page written to {markup(html)}")
    return EXIT_PASS if ok_served == n_served == len(pairs) else EXIT_FAIL

"""Termination check: a finished answer ends with the end-of-turn marker and nothing after it.

Also: no output longer than max_tokens, and no prompt echoed in front of the output (Triton's
``exclude_input_in_output`` left false). The markers come from the reference (generation config
and tokenizer), so the check is right for any model family.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.stops import ended_on_stop
from servecheck.checks.template import show
from servecheck.formats.records import END_MARKER_UNKNOWN, ResponseRecord

"""A record this check fails is left out of the statistical checks (``checks.screen``)."""
NAME = "termination"


@dataclass(frozen=True)
class TerminationDetails(Details):
    records: int
    end_markers: list[str]
    kinds: dict[str, int] = field(default_factory=dict)
    end_marker_unknown: int = 0
    """Records collected with no reference, whose stripped end marker nobody put back."""
    wrong: int = 0
    """Records with at least one finding."""

    def effect(self) -> str:
        return f"{self.wrong}/{self.records} records end wrongly"


def _echo(r: ResponseRecord, prompt: str, ctx: CheckContext) -> bool:
    if prompt and r.output.startswith(prompt):
        return True
    plain = ctx.ref.strip_special(prompt).strip()
    return len(plain) >= 8 and ctx.ref.strip_special(r.output).lstrip().startswith(plain)


def marker_unknown(r: ResponseRecord) -> bool:
    """The target could not restore the end marker a server strips (no reference was named at
    collection) and said so in ``sent``: a missing marker is then no evidence."""
    return (r.sent or {}).get("end_marker") == END_MARKER_UNKNOWN


def _could_be_cut(r: ResponseRecord, n: int, limit: int) -> bool:
    """Whether an output with no finish reason may have stopped at max_tokens. With ids, their
    count says. Without, the count is latent: a model that spells a word letter by letter emits
    more tokens than the canonical tokenization has, up to one per byte, so only an output of
    fewer bytes than max_tokens certainly stopped early."""
    if r.output_token_ids is not None:
        return n >= limit
    return len(r.output.encode("utf-8")) >= limit


STRAY = "\ufffd"
"""What a detokenizer writes for a byte token it could not decode (a stray byte of a split
UTF-8 character): one token, though its own three bytes take more to spell. Counted as one, a
sampled 64-token output with one stray byte was held to be 66 tokens long, over its max_tokens
(the spec-lossy runs of benchmarks/deployment_power.py, text only)."""


def _fewest(text: str, ctx: CheckContext) -> int | None:
    """The fewest tokens a text-only output can be: ordinary tokens between the special ones
    (an end marker is one token whatever it spells, and so is a stray byte's ``STRAY``)."""
    specials = sorted([*ctx.ref.special_tokens, STRAY], key=len, reverse=True)
    total, rest = 0, text
    while rest:
        at = min(((rest.find(t), t) for t in specials if t in rest), default=(len(rest), ""))
        if at[0]:
            found = ctx.token_bytes.fewest(rest[:at[0]].encode("utf-8"))
            if found is None:
                return None
            total += found
        if not at[1]:
            break
        total += 1
        rest = rest[at[0] + len(at[1]):]
    return total


def _problems(i: int, ctx: CheckContext) -> list[tuple[str, str]]:
    r = ctx.records[i]
    prompt = r.input or ctx.expected_prompts[i]
    out: list[tuple[str, str]] = []
    if _echo(r, prompt, ctx):
        out.append(("prompt echo", "the output starts with the prompt (prompt echoed; "
                                   "exclude_input_in_output not honoured?)"))
    if r.output_token_ids is not None:
        n, how = len(r.output_token_ids), "server token ids"
    else:
        n, how = len(ctx.ref.encode(r.output)), "reference tokenization"
    limit = r.parameters.max_tokens
    if limit is not None and n > limit and r.output_token_ids is None:
        # the text's own split may be shorter than the tokenizer's: the fewest tokens it takes
        fewest = _fewest(r.output, ctx)
        n, how = (fewest, "the fewest tokens that spell the text") if fewest is not None else \
            (n, how)
    if limit is not None and n > limit:
        out.append(("too long", f"{n} output tokens ({how}) > max_tokens {limit}"))
    hits = [(r.output.find(m), m) for m in ctx.ref.end_markers if m in r.output]
    if hits:
        at, marker = min(hits)
        tail = r.output[at + len(marker):]
        if tail:
            out.append(("text after end", f"{len(tail)} characters after {marker}: "
                                          f"{show(r.output, at + len(marker))}"))
        return out
    cut = r.finish_reason == "length" or (r.finish_reason is None and limit is not None
                                          and _could_be_cut(r, n, limit)) \
        or ended_on_stop(r, ctx.ref.end_markers)  # cut at a stop string: the stop check's
    if r.finish_reason == "tool_calls" and limit is not None and n >= limit:
        out.append(("length reported as tool_calls", f"{n} tokens = max_tokens {limit}, cut before "
                    f"the end of turn, yet finish_reason is 'tool_calls': a client takes the "
                    f"calls as complete"))
        return out
    if not cut and not marker_unknown(r):
        marker = ctx.ref.turn_end_marker or (ctx.ref.end_markers or ["<end of turn>"])[0]
        why = f"finish_reason '{r.finish_reason}'" if r.finish_reason else \
            f"{n} tokens < max_tokens {limit}" if limit else "no max_tokens"
        out.append(("missing end marker", f"finished output ({why}) does not end with {marker}: "
                                          f"end-of-turn stripped or wrong stop token; ends with "
                                          f"{show(r.output, len(r.output))}"))
    return out


@check(NAME, order=30, screens=True,
       catches="a wrong end token: answers that run past the end of their turn, or stop without it",
       needs="finished answers (finish_reason stop)")
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_termination(ctx)]


def check_termination(ctx: CheckContext) -> CheckResult:
    findings: list[Finding] = []
    kinds: Counter[str] = Counter()
    for i in range(len(ctx.records)):
        for kind, message in _problems(i, ctx):
            kinds[kind] += 1
            findings.append(Finding(ctx.labels[i], f"{kind}: {message}", 1.0))
    n = len(ctx.records)
    unknown = sum(marker_unknown(r) for r in ctx.records)
    bad = len({f.record for f in findings})
    details = TerminationDetails(n, ctx.ref.end_markers, dict(kinds), unknown, bad)
    if not n:
        return CheckResult(NAME, "skipped", "no records with an output", per_record=True)
    if findings:
        summary = f"{bad}/{n} records end wrongly: " + \
            ", ".join(f"{k} ({c})" for k, c in kinds.most_common())
        return CheckResult(NAME, "fail", summary, details, findings, per_record=True)
    note = (f"; {unknown} without a known end marker (collected with no --reference: the server "
            f"strips it and nothing put it back)") if unknown else ""
    return CheckResult(NAME, "pass",
                       f"{n}/{n} outputs end correctly (markers {', '.join(ctx.ref.end_markers)})"
                       f"{note}", details, per_record=True)

"""Detokenization check: a record's token ids must decode to its output text.

Where a server returns ids, the ids are what the checks score, so a text that says something
else would go unseen: streamed detokenization dropping a space, a UTF-8 character split across
tokens and lost, an end marker written out as text, a byte token dropped. The ids are decoded
byte-exactly (``TokenBytes``) and compared with ``output``; a server that strips the end marker
from the text and one that puts it back are both right, and so is one that leaves out the
special tokens a model wrote mid-answer (``skip_special_tokens``, vLLM's and llama.cpp's
default), which is counted and said. The finding names the record, the first
differing character and the token there.
"""

from __future__ import annotations

from dataclasses import dataclass

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.checks.template import first_difference, show

"""A record this check fails is left out of the statistical checks (``checks.screen``)."""
NAME = "detokenization"


@dataclass(frozen=True)
class DetokenizationDetails(Details):
    records: int
    """Records with output token ids."""
    differ: int
    end_markers: list[str]
    specials_skipped: int = 0
    """Texts that leave out special tokens written mid-answer (skip_special_tokens)."""

    def effect(self) -> str:
        return f"{self.differ}/{self.records} texts differ from their ids"


def token_at(ctx: CheckContext, ids: list[int], char: int) -> int:
    """The output token whose text holds character ``char`` of the decoded ids."""
    data = b""
    for k, t in enumerate(ids):
        data += ctx.token_bytes(t)
        if len(data.decode("utf-8", "replace")) > char:
            return k
    return max(0, len(ids) - 1)


def agrees(text: str, from_ids: str, markers: list[str]) -> bool:
    """Equal, or equal once an end marker the server stripped or put back is allowed for."""
    if text == from_ids:
        return True
    return any(text == from_ids.removesuffix(m) or from_ids == text.removesuffix(m)
               for m in markers)


def visible_ids(ids: list[int], ctx: CheckContext) -> list[int]:
    """The ids a detokenizer that skips special tokens writes out (vLLM's and llama.cpp's
    default): every special token gone but an end marker at the very end, which servers strip
    or keep as they like (``agrees``)."""
    special = set(ctx.ref.special_ids)
    last = len(ids) - 1
    return [t for k, t in enumerate(ids) if t not in special or k == last]


@check(NAME, order=40, screens=True,
       catches="token ids that do not decode to the served text",
       needs="output token ids (ask the server for log-probs or token ids)")
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_detokenization(ctx)]


def check_detokenization(ctx: CheckContext) -> CheckResult:
    idx = [i for i, r in enumerate(ctx.records) if r.output_token_ids is not None]
    if not idx:
        return CheckResult(NAME, "skipped", "no record carries output token ids")
    tok = ctx.ref.tokenizer
    markers = ctx.ref.end_markers
    findings: list[Finding] = []
    skipped = 0
    for i in idx:
        r = ctx.records[i]
        ids = list(r.output_token_ids or [])
        text = ctx.token_bytes.joined(ids).decode("utf-8", "replace")
        if agrees(r.output, text, markers):
            continue
        shown = visible_ids(ids, ctx)
        if len(shown) < len(ids) and agrees(
                r.output, ctx.token_bytes.joined(shown).decode("utf-8", "replace"), markers):
            skipped += 1
            continue
        k = first_difference(r.output, text)
        at = token_at(ctx, ids, k)
        token = repr(tok.convert_ids_to_tokens(ids[at])) + f" id {ids[at]}" if ids else "none"
        served = repr(r.output[k]) if k < len(r.output) else "its end"
        given = repr(text[k]) if k < len(text) else "their end"
        findings.append(Finding(ctx.labels[i], (
            f"text and token ids differ from character {k}: the text has {served} "
            f"({show(r.output, k)}), the ids give {given} ({show(text, k)}), at output token "
            f"{at} ({token})"), 1.0))
    details = DetokenizationDetails(len(idx), len(findings), markers, skipped)
    note = (f"; {skipped} text(s) leave out special tokens the model wrote mid-answer, as a "
            f"detokenizer that skips special tokens does (a setting, not a bug)") if skipped else ""
    if findings:
        return CheckResult(NAME, "fail", (
            f"{len(findings)}/{len(idx)} records' output text is not what their token ids "
            f"decode to (detokenizer bug: dropped spaces, split UTF-8, an end marker as text?)"
            f"{note}"), details, findings, per_record=True)
    return CheckResult(NAME, "pass",
                       f"{len(idx)}/{len(idx)} output texts equal their token ids, decoded{note}",
                       details, per_record=True)

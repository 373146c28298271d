"""Template check: the prompt the server built against the reference's chat template.

Exact equality of text (and of token ids where the server reports them), and where they differ a
diagnosis a person can act on. Each diagnosis is tested by repairing the served prompt in one
known way and seeing whether the reference comes out; the first repair that works names the bug.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import ClassVar

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.registry import check
from servecheck.checks.core.results import CheckResult, Details, Finding
from servecheck.formats.conversation import Conversation
from servecheck.reference.model import Reference

"""A record this check fails is left out of the statistical checks (``checks.screen``)."""
NAME = "template"


CAUSES = {
    "double BOS": "the server adds a BOS the chat template already writes (tokenize the "
                  "rendered prompt with add_special_tokens=False)",
    "extra BOS": "the server adds a BOS this template does not write",
    "missing BOS": "the server drops the BOS this template starts with",
    "missing generation prompt": "the prompt does not open the model's turn "
                                 "(add_generation_prompt is off)",
    "extra text": "the server appends text after the generation prompt",
    "system prompt dropped": "the server drops the system prompt",
    "system prompt placement": "the system prompt is not where this template puts it: another "
                               "model's chat template",
    "role name": "the server renders other role names: another model's chat template",
    "whitespace": "whitespace differs from the template: another template version, or a trimmed "
                  "prompt",
    "special tokens": "the special tokens differ: another model's chat template",
    "reasoning kept": "earlier turns' reasoning is kept in the prompt, where the template drops it",
    "prompt tokens": "the prompt tokens are not this template's tokenization",
    "differs": "the served prompt is not this reference's chat template",
}
"""Each diagnosis's likely cause, in a serving engineer's words (the digest)."""


@dataclass(frozen=True)
class TemplateDetails(Details):
    explains_prompts: ClassVar[bool] = True

    compared: int
    """Records whose served prompt is known (input text or prompt ids)."""
    differ: int
    kinds: dict[str, int] = field(default_factory=dict)
    """How many records show each diagnosis."""
    empty_system: int = 0
    """Records whose ``parameters.system_prompt`` is "" with no system turn (the notes' files)."""
    rendered_empty: int = 0
    """…of them, the ones whose served prompt has the empty system turn rendered."""

    def effect(self) -> str:
        return f"{self.differ}/{self.compared} prompts differ"

    def likely_cause(self) -> str | None:
        if not self.kinds:
            return None
        kind = max(self.kinds, key=lambda k: self.kinds[k])
        return CAUSES.get(kind, CAUSES["differs"])

ROLE_WORDS = {"user", "model", "assistant", "system", "human", "bot", "gpt", "ai", "developer"}


def show(text: str, at: int, width: int = 20) -> str:
    """A short escaped excerpt around ``at``: whitespace and special tokens stay visible."""
    lo = max(0, at - width)
    excerpt = text[lo:at + width]
    return ("…" if lo else "") + repr(excerpt)[1:-1] + ("…" if at + width < len(text) else "")


def first_difference(a: str | list[int], b: str | list[int]) -> int:
    """The first index where ``a`` and ``b`` differ; the shorter one's length when one is a
    prefix of the other (the servecheck-wide helper: texts and token ids alike)."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def _word_at(text: str, i: int) -> str:
    """The alphanumeric word that contains (or starts at) character ``i``."""
    lo = i
    while lo > 0 and text[lo - 1].isalnum():
        lo -= 1
    hi = i
    while hi < len(text) and text[hi].isalnum():
        hi += 1
    return text[lo:hi]


def diagnose(served: str, conv: Conversation, ref: Reference, expected: str) -> tuple[str, str]:
    """(kind, message) for a served prompt that differs from ``expected``."""
    bos = ref.tokenizer.bos_token or ""
    if bos and served == bos + expected:
        kind = "double BOS" if expected.startswith(bos) else "extra BOS"
        return kind, f"{kind}: the prompt starts with an extra {bos} before the template's text"
    if bos and expected.startswith(bos) and served == expected[len(bos):]:
        return "missing BOS", f"missing BOS: the template starts with {bos}, the served prompt does not"
    no_gen = ref.render(conv, add_generation_prompt=False)
    header = expected[len(no_gen):] if expected.startswith(no_gen) else ""
    if header and served == no_gen:
        return "missing generation prompt", (
            f"missing generation prompt: the prompt should end with {header!r}")
    if served.startswith(expected):
        return "extra text", f"extra text after the generation prompt: {show(served, len(expected))}"
    found = _request_fields_diagnosis(served, conv, ref)
    if found:
        return found
    messages = conv.hf_messages()
    system = next((m["content"] for m in messages if m["role"] == "system"), None)
    if system is not None:
        without = ref.render_messages([m for m in messages if m["role"] != "system"])
        if served == without or system.strip() not in served:
            return "system prompt dropped", "system prompt dropped: its text is not in the prompt"
        if served.find(system.strip()) != expected.find(system.strip()):
            return "system prompt placement", (
                f"system prompt placed differently: at char {served.find(system.strip())} "
                f"({show(served, served.find(system.strip()))}) where the reference has it at "
                f"char {expected.find(system.strip())} ({show(expected, expected.find(system.strip()))})")
    at = first_difference(served, expected)
    got, want = _word_at(served, at), _word_at(expected, at)
    if got.lower() in ROLE_WORDS and want.lower() in ROLE_WORDS and got != want:
        return "role name", f"role name '{got}' where the reference template has '{want}'"
    if re.sub(r"\s+", "", served) == re.sub(r"\s+", "", expected):
        return "whitespace", (f"whitespace differs at char {at}: served {show(served, at)} vs "
                              f"reference {show(expected, at)}")
    if ref.strip_special(served) == ref.strip_special(expected):
        return "special tokens", (f"special tokens differ at char {at}: served {show(served, at)}"
                                  f" vs reference {show(expected, at)}")
    return "differs", f"differs at char {at}: served {show(served, at)} vs reference {show(expected, at)}"


def _variants(conv: Conversation) -> list[tuple[str, str, list[dict], dict]]:
    """(kind, message, messages, template kwargs): the request rendered the ways servers get its
    newer fields wrong (tools, template kwargs, tool turns, earlier reasoning)."""
    messages, kwargs = conv.hf_messages(), conv.template_kwargs()
    out = []
    if conv.tools:
        rest = {k: v for k, v in kwargs.items() if k != "tools"}
        out.append(("tools dropped", "tools dropped: the prompt has none of the request's "
                    f"{len(conv.tools)} tool(s)", messages, rest))
        for order in itertools.islice(itertools.permutations(conv.tools), 1, 24):
            out.append(("tools reordered", "tools reordered: the prompt lists them as "
                        + ", ".join(t["function"]["name"] for t in order), messages,
                        {**rest, "tools": list(order)}))
    if conv.chat_template_kwargs:
        out.append(("template kwargs not applied", f"chat_template_kwargs "
                    f"{conv.chat_template_kwargs} did not reach the template",
                    messages, {k: v for k, v in kwargs.items() if k == "tools"}))
    if any(m["role"] == "tool" for m in messages):
        as_user = [{"role": "user", "content": m["content"]} if m["role"] == "tool" else m
                   for m in messages]
        out.append(("tool result role", "tool results sent as plain user turns, not in the "
                    "template's tool-result form", as_user, kwargs))
    if any("reasoning_content" in m for m in messages):
        dropped = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
        out.append(("reasoning dropped", "earlier turns' reasoning_content dropped, where the "
                    "template keeps it", dropped, kwargs))
        kept = [{**m, "content": f"{m['reasoning_content']}{m['content'] or ''}"}
                if "reasoning_content" in m else m for m in dropped]
        out.append(("reasoning kept", "earlier turns' reasoning kept in the prompt, where the "
                    "template drops it", kept, kwargs))
    return out


def _request_fields_diagnosis(served: str, conv: Conversation, ref: Reference
                              ) -> tuple[str, str] | None:
    for kind, message, messages, kwargs in _variants(conv):
        try:
            if ref.render_messages(messages, **kwargs) == served:
                return kind, message
        except Exception:  # a variant the template refuses is not what the server built
            continue
    reasons = [m["reasoning_content"] for m in conv.hf_messages() if m.get("reasoning_content")]
    if any(r.strip() in served for r in reasons) and not all(r.strip() in ref.render(conv)
                                                            for r in reasons):
        return "reasoning kept", ("earlier turns' reasoning is in the prompt, where the template "
                                  "drops it")
    return None


def _ids_diagnosis(ids: list[int], expected_ids: list[int], ref: Reference) -> tuple[str, str]:
    bos = ref.tokenizer.bos_token_id
    if bos is not None and ids == [bos, *expected_ids]:
        return "double BOS", ("double BOS in the prompt tokens: the server added special tokens "
                              "when tokenizing the templated prompt (use add_special_tokens=False)")
    at = first_difference(ids, expected_ids)
    got = ref.tokenizer.convert_ids_to_tokens(ids[at:at + 3])
    want = ref.tokenizer.convert_ids_to_tokens(expected_ids[at:at + 3])
    return "prompt tokens", f"prompt token ids differ at token {at}: served {got} vs reference {want}"


@check(NAME, order=20, screens=True,
       catches=("a wrong chat template: a double BOS, wrong or missing roles, a dropped system prompt, "
                "a missing generation prompt"),
       needs=("the prompt the server built: records with input text or prompt token ids (collect "
              "with ?mode=completions, or from a server that returns them)"))
def run(ctx: CheckContext) -> list[CheckResult]:
    return [check_template(ctx)]


def check_template(ctx: CheckContext) -> CheckResult:
    ref = ctx.ref
    findings: list[Finding] = []
    kinds: Counter[str] = Counter()
    compared = empty_system = rendered_empty = 0
    for i, (r, expected) in enumerate(zip(ctx.records, ctx.expected_prompts, strict=True)):
        name = ctx.labels[i]
        if not r.input and r.prompt_token_ids is None:
            continue
        compared += 1
        if r.asked_empty_system:
            empty_system += 1
            with_turn = _with_empty_system(r.conversations, ref)
            if with_turn is not None and (r.input == with_turn or (
                    not r.input and r.prompt_token_ids == ref.encode(with_turn))):
                rendered_empty += 1
                continue
        problem: tuple[str, str] | None = None
        if r.input and r.input != expected:
            kind, message = diagnose(r.input, r.conversations, ref, expected)
            at_tok = first_difference(ref.encode(r.input), ref.encode(expected))
            at_chr = first_difference(r.input, expected)
            problem = kind, f"{message} (first difference: char {at_chr}, token {at_tok})"
        elif r.prompt_token_ids is not None:
            expected_ids = ref.encode(expected)
            if r.prompt_token_ids != expected_ids:
                problem = _ids_diagnosis(r.prompt_token_ids, expected_ids, ref)
        if problem:
            kinds[problem[0]] += 1
            findings.append(Finding(name, problem[1], 1.0))
    if not compared and not findings:
        return CheckResult(NAME, "skipped", (
            "no record has an input or prompt token ids: the server did not say what prompt it "
            "built (an OpenAI chat endpoint other than vLLM's); to check the template, collect "
            "with ?mode=completions, which templates on the client"), per_record=True)
    note = (f"; {empty_system} record(s) give system_prompt \"\" and no system turn, taken as "
            f"no system prompt ({rendered_empty} rendered with an empty system turn, which the "
            f"template writes into the prompt, and checked against that)") if empty_system else ""
    details = TemplateDetails(compared, len(findings), dict(kinds), empty_system, rendered_empty)
    if findings:
        summary = f"{len(findings)}/{len(ctx.records)} records differ from the reference template: " + \
            ", ".join(f"{k} ({n})" for k, n in kinds.most_common())
        return CheckResult(NAME, "fail", summary + note, details, findings, per_record=True)
    by_ids = sum(r.prompt_token_ids is not None for r in ctx.records)
    unseen = "; text only: a BOS or other special token the server adds when it tokenizes is " \
        "not in the text (prompt token ids would show it; so do served log-probs, in the " \
        "logprobs row)" if not by_ids else ""
    return CheckResult(NAME, "pass",
                       f"{compared}/{compared} prompts equal the reference template{note}{unseen}",
                       details, per_record=True)


def _with_empty_system(conv: Conversation, ref: Reference) -> str | None:
    """The conversation rendered with an empty system turn first (None: the template refuses)."""
    messages = [{"role": "system", "content": ""}, *conv.hf_messages()]
    try:
        return ref.render_messages(messages, **conv.template_kwargs())
    except Exception:  # a template without system turns: the other reading stands alone
        return None

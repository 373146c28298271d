"""``servecheck generate``: expand a prompts file, collect every answer, say what happened.

The collector (``collect.collector``) does the work and survives interruptions; this is what a
person reads afterwards: the counts, the target's notes once per run, the failures grouped by
message, and the exit code (``servecheck.errors.EXIT_PASS`` … ``EXIT_INTERRUPTED``: 1 when a
request failed, 130 when interrupted; the same command resumes).

Before any request, the prompts file is read once here (``prompts.read_blocks``): every problem
in it is refused together, before the target is contacted, and what it asks that is valid but
rarely meant is warned about once each, with a count (``prompt_warnings``), on the lines the
run's outcome is read from (stdout, beside the notes), before the first request: an empty system
prompt, which many templates render visibly, and greedy requests that differ only in settings
greedy decoding ignores, so are one request sent several times.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from rich.console import Console

from servecheck.collect.collector import collect
from servecheck.errors import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_PASS, InputError
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.limits import MAX_REQUESTS
from servecheck.formats.parameters import is_greedy
from servecheck.formats.prompts import Variations, block_size, read_blocks
from servecheck.report.terminal import visible


def run_generate(prompts: Path, target: str, out: Path, console: Console,
                 reference: str | None = None, retries: int = 3, progress: bool = True,
                 max_requests: int = MAX_REQUESTS) -> int:
    if retries < 0:
        raise InputError(f"retries must be ≥ 0, got {retries}")
    for warning in prompt_warnings(read_blocks(prompts, max_requests), reference):
        console.print(f"warning: {visible(f'{prompts}: {warning}')}", markup=False)
    s = collect(prompts, target, out, show_progress=progress, retries=retries,
                reference=reference, max_requests=max_requests)
    console.print(f"{out}: {s.written} new record(s), {s.skipped} already answered, "
                  f"{s.planned} planned" + (f", {s.retried} transient failure(s) retried"
                                            if s.retried else ""))
    for note in s.notes:  # once per run, beside the counts, where a user reads the outcome
        console.print(f"note: {visible(note)}", markup=False)
    if s.errors:
        console.print(f"{len(s.errors)} request(s) failed; they are in the file with 'error' set "
                      f"and a rerun retries them:")
    for message, count, rid in s.error_groups()[:10]:
        console.print(f"  {count} × {visible(message)} (first: {visible(rid)})", markup=False)
    if s.compacted:
        console.print(f"{out}: rewritten without {s.compacted} superseded error record(s)")
    if s.interrupted:
        console.print(f"interrupted: {s.written} record(s) saved in {out}; run the same command "
                      f"again to resume")
        return EXIT_INTERRUPTED
    if s.gone:
        answered = s.written - len(s.errors)
        raise InputError(f"stopped early, the server is gone: {s.gone}; {answered} answered "
                         f"record(s) of this run are kept in {out}; start the server and run the "
                         f"same command again to resume", where=target)
    return EXIT_FAIL if s.errors else EXIT_PASS


def prompt_warnings(blocks: list[tuple[str, Variations]], reference: str | None = None
                    ) -> list[str]:
    """What a valid prompts file asks that is rarely meant, one line each with its count:
    requests sent anyway (the user asked for them), said before the first one is."""
    total = sum(block_size(v) for _, v in blocks)
    found = [_empty_system(blocks, total, reference), _greedy_twins(blocks, total)]
    return [w for w in found if w]


def _empty_system(blocks: list[tuple[str, Variations]], total: int, reference: str | None
                  ) -> str | None:
    """``system_prompt: ""``: sent as a system turn with no text, which many templates render
    (Gemma 3's writes the system prompt into the first user turn, so "" is a blank-line
    prefix), while the user usually means "none". With ``--reference`` the template decides:
    the conversation rendered with the empty system turn and without it."""
    asked = [(v, v.system_prompt.count("") * block_size(v) // len(v.system_prompt))
             for _, v in blocks if "" in v.system_prompt]
    if not asked:
        return None
    head = (f'{sum(n for _, n in asked)} of {total} requests have system_prompt "", sent as a '
            f"system turn with no text")
    cure = "for no system prompt, leave system_prompt out or write null"
    if reference is None:
        return (f"{head}: many chat templates render it visibly (Gemma 3's writes the system "
                f"prompt into the first user turn, so \"\" puts a blank line before the "
                f"message), where no system prompt is usually meant; {cure} (with --reference, "
                f"the model's own template is asked)")
    said = _rendered_difference(asked[0][0], reference)
    return None if said is None else \
        f"{head}: the reference's template ({reference}) {said}; {cure}"


def _rendered_difference(v: Variations, reference: str) -> str | None:
    """What the reference's template does with a block's first prompt given an empty system
    turn, unlike without one (None: it renders both alike, so "" is no system prompt)."""
    from servecheck.reference.model import Reference  # transformers loads only when asked

    prompt = v.prompt[0]
    turns = [Message(role="user", content=prompt)] if isinstance(prompt, str) else list(prompt)
    ref = Reference(reference)
    try:
        without, with_empty = (ref.render(Conversation(
            contents=head + turns, tools=v.tools[0],
            chat_template_kwargs=v.chat_template_kwargs[0]))
            for head in ([], [Message(role="system", content="")]))
    except Exception as e:  # a template that refuses system turns: the server's will too
        return f"fails on it ({type(e).__name__}: {str(e)[:120]})"
    if without == with_empty:
        return None
    at = _common_prefix(without, with_empty)
    end = _common_prefix(without[at:][::-1], with_empty[at:][::-1])
    added, dropped = with_empty[at:len(with_empty) - end], without[at:len(without) - end]
    change = f"{dropped!r} becomes {added!r}" if dropped else f"it adds {added!r}"
    return (f"renders it visibly ({change} after {with_empty[max(0, at - 32):at]!r}), so the "
            f"model reads a different prompt from one with no system prompt")


def _common_prefix(a: str, b: str) -> int:
    return next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


SAMPLING = ("temperature", "top_k", "seed", "top_p", "min_p")
IGNORED = {"top_k": "top_k", "top_p": "top_p", "min_p": "min_p", "seed": "seeds"}
"""What greedy decoding ignores, as a count of them is said (``4 seeds × 2 top_p``)."""


def _greedy_twins(blocks: list[tuple[str, Variations]], total: int) -> str | None:
    """Greedy requests (``parameters.is_greedy``) that differ only in seed, top_p, min_p (and,
    at temperature 0, top_k): one request sent several times, whose answers can only repeat
    one another. Counted over a block's sampling lists, not its expanded matrix."""
    parts, twins, in_sets = [], 0, 0
    for where, v in blocks:
        lists = [getattr(v, name) for name in SAMPLING]
        rest = block_size(v) // math.prod(map(len, lists))
        sets: dict[tuple, tuple[list[int], list[set[int]]]] = {}
        for at in itertools.product(*(range(len(x)) for x in lists)):
            t, k = lists[0][at[0]], lists[1][at[1]]
            if t == 0:
                key: tuple = ("T=0",)
            elif is_greedy(1.0 if t is None else t, k or 0):
                key = ("top_k=1", t, "T=default" if t is None else f"T={t:g}")
            else:
                continue
            count, seen = sets.setdefault(key, ([0], [set() for _ in SAMPLING]))
            count[0] += 1
            for s, i in zip(seen, at, strict=True):
                s.add(i)
        repeated = [(key, n[0], seen) for key, (n, seen) in sets.items() if n[0] > 1]
        if not repeated:
            continue
        twins += rest * sum(n - 1 for _, n, _ in repeated)
        in_sets += rest * sum(n for _, n, _ in repeated)
        key, n, seen = max(repeated, key=lambda r: r[1])
        shape = " × ".join([key[0] if key[0] == "T=0" else f"{key[2]}, top_k=1"] + [
            f"{len(s)} {IGNORED[name]}" for name, s in zip(SAMPLING, seen, strict=True)
            if name in IGNORED and len(s) > 1 and not (name == "top_k" and key[0] != "T=0")])
        per = "prompt" if rest == len(v.prompt) else "prompt and setting"
        place = where.rpartition(" block ")[2] if " block " in where else ""
        parts.append(f"{'block ' + place + ': ' if place else ''}{shape}: {n} identical "
                     f"greedy requests per {per}")
    if not twins:
        return None
    return (f"identical greedy requests: {'; '.join(parts)}, {in_sets} of {total} requests. "
            f"Greedy decoding ignores the seed, top_p and min_p (and at temperature 0 top_k), "
            f"so {twins} of them add nothing but repeat evidence; they are kept and sent, as "
            f"the file asks. To spare them, give the greedy requests a block of their own "
            f"with one seed and no top_p, top_k or min_p")

"""An output as a token heat-map: each served token coloured by the reference's probability.

The colour is the probability a correct server gave the token: q(y) under the requested sampling
transform for sampled records, the raw reference probability for greedy ones. A person sees at a
glance where an output left the reference's path, and hovering a token shows the numbers the
checks use (rank, logit margin, PIT, served vs reference log-prob).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from servecheck.checks.core.context import CheckContext
from servecheck.reference.token_scores import TokenScores
from servecheck.reference.tokenization import TokenSource
from servecheck.report.terminal import hidden

CONTROL = {"\n": "⏎\n", "\t": "→", "\r": "␍"}


@dataclass
class TokenView:
    text: str
    cls: str
    """``tok`` plus ``sp`` (special token), ``out`` (outside the support), ``split`` (where a
    text-only record's chosen tokenization departs from the canonical one) or ``part`` (a byte
    of a character that spans several tokens)."""
    color: str
    title: str


def token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text of each token, so that the pieces join to the decoded output. A character split
    over several byte tokens goes to its last token; the earlier ones get ''."""
    texts = [tokenizer.decode([t]) for t in ids]
    if "\ufffd" not in "".join(texts):
        return texts
    out: list[str] = []
    start = 0  # first token of the character being assembled
    for k in range(len(ids)):
        piece = tokenizer.decode(ids[start:k + 1])
        if piece.endswith("\ufffd") and k + 1 < len(ids) and k + 1 - start < 4:
            out.append("")
            continue
        out.append(piece)
        start = k + 1
    return out


def shown(text: str) -> str:
    """Newlines, tabs and control characters visible; other text as it is."""
    return "".join(CONTROL.get(c, f"\\u{ord(c):04x}" if _invisible(c) else c) for c in text)


def _invisible(c: str) -> bool:
    """Control characters, bidi overrides, line/paragraph separators, lone surrogates: shown
    as escapes, never raw (the terminal's set, ``terminal.hidden``)."""
    return hidden(c)


def color(p: float) -> str:
    """Green at p = 1 through yellow to red at p ≤ 0.001 (log scale: surprise is what matters)."""
    if not p > 0:
        return "hsl(0,85%,55%)"
    hue = 120 * min(1.0, max(0.0, (math.log10(p) + 3) / 3))
    return f"hsl({hue:.0f},70%,82%)"


def _fmt(x: float) -> str:
    return "−∞" if x == -math.inf else f"{x:.3f}".replace("-", "−")


def heatmap(ctx: CheckContext, i: int, s: TokenScores) -> list[TokenView]:
    """One record's output tokens, each with its colour and hover text."""
    tok = ctx.ref.tokenizer
    ids = [int(t) for t in s.token_ids]
    texts = token_texts(tok, ids)
    specials = set(ctx.ref.special_tokens)
    served = ctx.records[i].output_logprobs
    source = ctx.output_ids(i)[1]
    if source is not TokenSource.SERVER_IDS and not (served and len(served) == len(ids)):
        served = None  # the server's log-probs belong to its tokens, not to another tokenization
    split = set(ctx.departures.get(i, ()))
    logq = s.stats.get("logq")
    pit = s.stats.get("pit")
    views = []
    for k, (t, text) in enumerate(zip(ids, texts, strict=True)):
        p_raw = float(np.exp(s.logprob[k]))
        q = float(np.exp(logq[k])) if logq is not None else None
        lines = [f"token {k}: {text!r} (id {t})",
                 f"reference p {p_raw:.4f}" + (f" · q after sampling {q:.4f}" if q is not None
                                               else ""),
                 f"rank {int(s.rank[k])} · logit margin {s.margin[k]:.3f}"]
        if pit is not None:
            lines.append(f"PIT {pit[k]:.3f}")
        lp = f"log-prob reference {_fmt(float(s.logprob[k]))}"
        if served is not None and k < len(served):
            lp += f" · served {_fmt(float(served[k]))}"
        lines.append(lp)
        p = q if q is not None else p_raw
        cls = "tok"
        if text in specials:
            cls += " sp"
        if q is not None and q == 0:
            cls += " out"
            lines.append("outside the support of the requested sampling")
        if k in split:
            cls += " split"
            lines.append("the text's canonical tokenization differs here; the reference found "
                         "this split more plausible")
        if not text:
            cls += " part"
            lines.append("a byte of a character that continues in the next token")
        views.append(TokenView(shown(text) if text else "▫", cls, color(p), "\n".join(lines)))
    return views

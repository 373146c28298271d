"""Text a person can compare by eye: special tokens and whitespace made visible, and a
side-by-side diff of the served prompt against the reference template.

Template bugs hide in what a browser does not show: a doubled ``<bos>``, a trailing newline, a
tab for a space, ``assistant`` for ``model``. Each piece of text becomes a list of segments
``(css class, text)``; the HTML template prints them inside ``<span class=…>`` with
autoescaping, so the text stays data (classes come from this module only, never from input).
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher

from servecheck.report.terminal import hidden

Segment = tuple[str, str]
"""(css class, text): ``tx`` text, ``sp`` special token, ``ws`` visible whitespace, ``ctl`` an
escaped control character; diff segments add `` del`` (served only) or `` ins`` (reference only)."""

WHITESPACE = {" ": "·", "\n": "⏎\n", "\t": "→", "\r": "␍"}


def _pattern(specials: list[str]) -> re.Pattern[str]:
    alternatives = [re.escape(t) for t in sorted(specials, key=len, reverse=True) if t]
    return re.compile("|".join([*alternatives, r"\s", r"\w+", r"."]), re.DOTALL)


def units(text: str, specials: list[str]) -> list[str]:
    """Special tokens, single whitespace characters, words, other characters: the diff's units."""
    return _pattern(specials).findall(text)


def _classify(unit: str, specials: set[str]) -> Segment:
    if unit in specials:
        return "sp", unit
    if unit in WHITESPACE:
        return "ws", WHITESPACE[unit]
    if unit.isspace():
        return "ws", f"\\u{ord(unit):04x}"
    if len(unit) == 1 and hidden(unit):  # a control, a bidi override, a lone surrogate
        return "ctl", f"\\u{ord(unit):04x}"
    return "tx", unit


def _merge(segments: list[Segment]) -> list[Segment]:
    """Join neighbours of the same class (fewer spans, same look)."""
    out: list[Segment] = []
    for cls, text in segments:
        if out and out[-1][0] == cls and cls in ("tx", "tx del", "tx ins", "ws", "ws del", "ws ins"):
            out[-1] = (cls, out[-1][1] + text)
        else:
            out.append((cls, text))
    return out


def visible(text: str, specials: list[str]) -> list[Segment]:
    """``text`` as segments with special tokens and whitespace visible."""
    known = set(specials)
    return _merge([_classify(u, known) for u in units(text, specials)])


def side_by_side(served: str, reference: str, specials: list[str]
                 ) -> tuple[list[Segment], list[Segment]]:
    """Both texts as visible segments, the parts that differ marked ``del`` (served) / ``ins``."""
    known = set(specials)
    a, b = units(served, specials), units(reference, specials)
    left: list[Segment] = []
    right: list[Segment] = []
    for op, i1, i2, j1, j2 in SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        changed = op != "equal"
        for u in a[i1:i2]:
            cls, t = _classify(u, known)
            left.append((f"{cls} del" if changed else cls, t))
        for u in b[j1:j2]:
            cls, t = _classify(u, known)
            right.append((f"{cls} ins" if changed else cls, t))
    return _merge(left), _merge(right)

"""Untrusted text made safe for a terminal: every control character shown, none obeyed.

Model output, record ids, shard names and server messages reach the console. A terminal obeys
what it is sent: ``ESC ] 0 ; … BEL`` retitles the window, ``ESC ] 52`` writes the clipboard,
``ESC ] 8`` makes a hyperlink whose target the reader never sees, a CSI sequence moves the
cursor or recolours what follows, a carriage return overwrites the verdict with something else,
a bidi override (U+202E) shows text in another order than it is. rich does not help: ``Text``
strips only BEL, BS, VT, FF and CR, and passes ESC and the C1 controls through. So every piece
of untrusted text passes ``visible`` on its way to the console: a control character becomes its
Python escape (``\\x1b``, ``\\u202e``), which a reader can see and search for, and what follows
it is then plain text.

What stays: printable text of any script, spaces, tabs, the zero-width (non-)joiners that emoji
and Persian need, and newlines where the layout is multi-line (``newlines=True``: an output in
a cell of ``compare``). A lone surrogate (from a JSON ``\\ud800`` escape) is shown too: the
console could not encode it and would crash.
"""

from __future__ import annotations

import re

from rich.markup import escape

__all__ = ["hidden", "markup", "visible"]

_HIDDEN = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 but tab and newline, DEL, C1 (0x9b is a one-byte CSI)
    "\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e"  # format characters (Cf)
    "\u200b\u200e\u200f"  # zero-width space, LTR/RTL marks (not U+200C/U+200D, the joiners)
    "\u2028-\u202e"  # line and paragraph separators, bidi embeddings and overrides
    "\u2060-\u2064\u2066-\u206f"  # word joiner, invisible operators, bidi isolates
    "\ud800-\udfff"  # lone surrogates
    "\ufeff\ufff9-\ufffb"  # byte-order mark, interlinear annotations
    "\U000110bd\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0001\U000e0020-\U000e007f"  # tag characters (invisible ASCII)
)
_ONE_LINE = re.compile(f"[{_HIDDEN}\n]")
_LINES = re.compile(f"[{_HIDDEN}]")


def hidden(c: str) -> bool:
    """Whether the character ``c`` is one that ``visible`` writes out: a page shows the same
    ones escaped (a bidi override reorders text in a browser as in a terminal)."""
    return c != "\n" and _ONE_LINE.fullmatch(c) is not None


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0A:
        return "\\n"
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code < 0x100 else \
        f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object, newlines: bool = False) -> str:
    """``text`` with every character a terminal would obey (or hide) written as its escape.

    ``newlines``: keep ``\\n`` as a line break, where the layout is multi-line; otherwise it is
    shown as ``\\n`` too, so that one record stays one line."""
    return (_LINES if newlines else _ONE_LINE).sub(_escaped, str(text))


def markup(text: object, newlines: bool = False) -> str:
    """``visible`` text for a rich markup string: its brackets are data, never a style tag."""
    return escape(visible(text, newlines))

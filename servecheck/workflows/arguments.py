"""Argument types of the command line: each refuses a bad value with one line naming it
(argparse turns the refusal into exit 2) before any work starts."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from servecheck.reference.sandbox import DEFAULT_LIMITS

REFERENCE_HELP = ("the served model's checkpoint: a local HF folder, or 'builtin' for the built-in "
                  "model (an explicit choice: checking against the wrong model passes nothing)")


def port(text: str) -> int:
    """A TCP port: a whole number from 1 to 65535 (argparse turns a refusal into exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port is a whole number, got {text!r}") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 1 to 65535, got {value}")
    return value


def output_file(text: str) -> Path:
    """A file to write: not an existing directory (checked before any work starts, so a long
    run cannot fail at its last step)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a directory; name a file to write")
    return path


def bounded(kind: type, low: float | None = None, high: float | None = None,
            open_low: bool = False, open_high: bool = False):
    """An argparse type: a finite ``kind`` within bounds (no NaN, no inf, no 'abc')."""
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}"
                                             f", got {text!r}") from None
        too_low = low is not None and (value < low or (open_low and value == low))
        too_high = high is not None and (value > high or (open_high and value == high))
        if not math.isfinite(value) or too_low or too_high:
            sign = {(False, False): "≥", (True, False): ">"}
            bounds = [f"{sign[open_low, False]} {low}" if low is not None else "",
                      f"{'<' if open_high else '≤'} {high}" if high is not None else ""]
            raise argparse.ArgumentTypeError(f"expected a {'whole number' if kind is int else 'number'} "
                                             f"{' and '.join(b for b in bounds if b)}, got {text!r}")
        return value
    return parse


PROBABILITY = bounded(float, 0, 1, open_low=True, open_high=True)
COUNT = bounded(int, 1)


def add_template_limits(p: argparse.ArgumentParser) -> None:
    """The bounds on rendering the checkpoint's chat template (``reference.sandbox``)."""
    p.add_argument("--template-timeout", type=bounded(float, 0, open_low=True), metavar="S",
                   default=DEFAULT_LIMITS.timeout_s,
                   help="refuse a chat template that takes longer than this to render one "
                        "conversation")
    p.add_argument("--template-max-mb", type=bounded(float, 0, open_low=True), metavar="MB",
                   default=DEFAULT_LIMITS.max_chars / 2**20,
                   help="refuse a chat template that renders (or builds a value) larger than "
                        "this many Mi characters")


def fault_sizes(text: str) -> tuple[tuple[str, float], ...]:
    """``--detect temperature=0.1,top_k=40``: the fault sizes a run must be able to catch (each
    checked against what the sampler check tests by ``CheckOptions``)."""
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            out.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"{part!r}: write FAULT=SIZE, e.g. temperature=0.1,"
                                             f"top_k=40")
    return tuple(out)

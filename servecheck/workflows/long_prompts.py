"""``servecheck long-prompts``: the long prompts file for a user's checkpoint.

The shipped ``examples/prompts-long.json`` is sized for the built-in model's 128-token window;
a served checkpoint has its own window and tokenizer, so its file is made from it
(``reference/long_prompts.py``) and written whole, with a table of the lengths reached.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from servecheck.errors import EXIT_PASS
from servecheck.workflows.arguments import REFERENCE_HELP, bounded, output_file

if TYPE_CHECKING:
    from rich.console import Console


def add_arguments(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("long-prompts", help="write a prompts file of long requests sized from the "
                                            "checkpoint's sliding window (0.9, 1.1, 2 and 4 "
                                            "windows): the sliding window, KV and prefix caches")
    p.add_argument("--reference", required=True, metavar="PATH|builtin", help=REFERENCE_HELP)
    p.add_argument("--out", type=output_file, required=True, help="the prompts file to write")
    p.add_argument("--window", type=bounded(int, 16), metavar="N",
                   help="the length scale in tokens (default: the checkpoint's sliding_window; "
                        "required for a checkpoint without one)")
    p.add_argument("--first-seed", type=bounded(int, 0), default=1,
                   help="the first seed; each sampled request gets its own from here")
    p.set_defaults(func=cmd_long_prompts)


def dumps(blocks: list[dict[str, Any]]) -> str:
    """The file's text: one block a line group, readable and stable (the shipped copies are
    this of ``prompts_file(build(Reference("builtin")))``)."""
    return "[\n" + ",\n".join(f"  {json.dumps(b, ensure_ascii=False)}" for b in blocks) + "\n]\n"


def cmd_long_prompts(a: argparse.Namespace, console: Console) -> int:
    from servecheck.reference.long_prompts import build, prompts_file
    from servecheck.reference.model import Reference
    from servecheck.report.files import write_text

    ref = Reference(a.reference)
    prompts, notes = build(ref, a.window)
    blocks = prompts_file(prompts, a.first_seed)
    write_text(a.out, dumps(blocks))
    for p in prompts:
        console.print(f"  {p.name:<20} {p.tokens:>6} tokens (planned {p.target})")
    for note in notes:
        console.print(f"  note: {note}")
    requests = len(prompts) + sum(len(b["seed"]) for b in blocks[1:])  # greedy once, sampled per seed
    console.print(f"written {a.out}: {len(prompts)} prompts, {requests} requests")
    return EXIT_PASS

"""Every bad input in ``bad_input_cases.py``, run through the real command line in this process;
the table of what held goes to ``docs/bad-inputs.md``.

A case *holds* when the command exits 2, prints no traceback, and its message names where the
problem is (the substring the case states). ``--check`` exits 1 when any case does not hold: that
is how ``tests/test_bad_input.py`` runs it.

    python benchmarks/bad_inputs.py [--out docs/bad-inputs.md] [--check] [-k SUBSTRING]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import platform
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from bad_input_cases import Case, all_cases

from servecheck.cli import main

CASE_TIMEOUT_S = 120


@dataclass
class Outcome:
    case: Case
    code: int | str
    message: str
    seconds: float

    @property
    def held(self) -> bool:
        return self.code == 2 and "Traceback" not in self.message and \
            self.case.where.lower() in self.message.lower()


CLASSES = [
    "## Classes of fault, and what servecheck does (issue 29)",
    "",
    "Each class has tests under `tests/` (named in the last column); the cases a command line can",
    "show are in the table below too.",
    "",
    "| class | what servecheck does now | tests |",
    "|---|---|---|",
    "| code from state files | `check --state` saves chunk verdicts as versioned JSON (`chunk-NNNNN.json`) "
    "read back only into servecheck's own loaded dataclasses; a planted pickle or a `$type` naming "
    "any other callable runs nothing, is warned about and its chunk is checked again; a state "
    "directory of another user or writable by group/others is refused (exit 2); new ones are 0700 "
    "| `tests/workflows/test_chunked.py` |",
    "| records lost by two writers | an exclusive `flock` on `.NAME.lock` beside `--out` for the "
    "whole run, compaction included; a second `generate` is refused (exit 2) naming the holder's "
    "pid, host and start; `kill -9` frees the lock and the rerun resumes "
    "| `tests/collect/test_output_lock.py` |",
    "| secrets written | every error leaving a target's `generate` is redacted with the target's "
    "own secrets (the key's value, whatever its shape), not only token-shaped strings; "
    "credentials in a target URL are refused, named with `[redacted]`, pointing to "
    "`?api_key_env=NAME` | `tests/collect/test_secrets.py` |",
    "| silent corruption | an OpenAI stream without `finish_reason` and `[DONE]`, or a Triton "
    "stream cut mid-answer, is a failed request; non-string text pieces, non-numeric log-probs, "
    "wrong ids are refused where the answer arrives, naming the field | "
    "`tests/collect/test_answer_seam.py` |",
    "| one bad answer ends the run | a broken answer is an error record naming the field (or, for "
    "anything unforeseen, the exception), retried on the next run; the run goes on "
    "| `tests/collect/test_answer_seam.py`, `tests/collect/test_resume.py` |",
    "| tracebacks instead of exit 2 | lone surrogates, JSON nested over 100 levels, integers over "
    "4,300 digits, temperatures in (0, 1e-5), a full or read-only disk: one line naming file, line "
    "(shard and line) and field; `generate` stops sending on a write failure and keeps what is "
    "written; reports are written to a temporary file and renamed, so no partial report is left "
    "| `tests/formats/test_jsontext.py`, `tests/collect/test_disk_faults.py`, "
    "`tests/report/test_files.py` |",
    "| unbounded resources | a prompts matrix over `--max-requests` (10^6) is refused before "
    "expanding; an answer body over 64 MiB (`?max_body_mb=N`); a chat template's `*`, `**`, `+` "
    "bounded, its output over `--template-max-mb` (16) and its render over `--template-timeout` "
    "(10 s) refused | `tests/formats/test_prompts.py`, `tests/reference/test_model.py`, "
    "`tests/collect/test_answer_seam.py` |",
    "| terminal injection | control characters, C1, bidi overrides and lone surrogates from model "
    "text, ids, shard names and server messages are written as escapes (`\\x1b`) on every "
    "terminal line; HTML escapes markup as before | `tests/report/test_terminal.py`, "
    "`tests/workflows/test_compare.py` |",
    "| messages | errors found after reading name the shard and line (`shard-0003.jsonl line 12 "
    "(record r7)`); a garbage Parquet file is one line | `tests/formats/test_shards.py` |",
    "| one round per problem | a prompts file's problems are refused together, every block and "
    "field (numbered on the one line, the first 20 shown with the count of all), an unknown field "
    "with the field it probably means (`prompts`: `prompt`, `max_new_tokens`: `max_tokens`, "
    "`temprature`: `temperature`); valid but rarely meant requests are warned of, once each with "
    "a count, and still sent: `system_prompt: \"\"` (rendered by the `--reference` template "
    "when named) and greedy requests that differ only in seed, top_p, top_k or min_p "
    "| `tests/formats/test_prompts_problems.py`, `tests/workflows/test_generate_warnings.py` |",
]


class CaseTimeout(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout


def run(case: Case) -> Outcome:
    """One case in a fresh folder: its exit code, and what it printed to stderr."""
    err = io.StringIO()
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(CASE_TIMEOUT_S)
        try:
            argv = case.build(Path(tmp))
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                try:
                    code: int | str = main(argv)
                except SystemExit as e:  # argparse's refusal
                    code = int(e.code or 0)
        except CaseTimeout:
            code = f"timeout {CASE_TIMEOUT_S} s"
        except BaseException:
            code = "traceback"
            err.write(traceback.format_exc())
        finally:
            signal.alarm(0)
        message = err.getvalue().strip().replace(tmp, "DIR")  # stable across runs
    return Outcome(case, code, message, time.monotonic() - start)


def table(outcomes: list[Outcome], seconds: float) -> str:
    held = sum(o.held for o in outcomes)
    by_command = Counter(o.case.command for o in outcomes)
    held_by = Counter(o.case.command for o in outcomes if o.held)
    lines = [
        "# Bad input: what was tried, what held",
        "",
        "Built by `benchmarks/bad_inputs.py` (cases in `benchmarks/bad_input_cases.py`), run by",
        "`tests/test_bad_input.py::test_every_bad_input_in_the_table_holds`. A case holds when",
        "the command exits 2 with no traceback and its one-line message names where the problem",
        "is: the file, the line or record, the field or the flag. `DIR` stands for the case's",
        "scratch folder. Accepted on purpose, so not in the table: a UTF-8 byte-order mark, and",
        "a torn last line (a run killed mid-write: left out with a warning naming its line).",
        "",
        *CLASSES,
        "",
        f"Machine: {platform.machine()}, {platform.system()}, Python {platform.python_version()};"
        f" {len(outcomes)} cases in {seconds:.0f} s.",
        "",
        "| command | tried | held |",
        "|---|---:|---:|",
        *(f"| {c} | {n} | {held_by[c]} |" for c, n in sorted(by_command.items())),
        f"| **all** | **{len(outcomes)}** | **{held}** |",
        "",
        "| command | bad input | exit | held | message |",
        "|---|---|---|---|---|",
    ]
    for o in outcomes:
        message = o.message.splitlines()[-1] if o.message else ""
        message = message.replace("|", "\\|")[:160]
        lines.append(f"| {o.case.command} | {o.case.name} | {o.code} | "
                     f"{'yes' if o.held else '**no**'} | {message} |")
    return "\n".join(lines) + "\n"


def main_() -> int:
    a = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs/bad-inputs.md")
    a.add_argument("--check", action="store_true", help="exit 1 when a case does not hold")
    a.add_argument("-k", default="", help="only cases whose name holds this")
    args = a.parse_args()
    cases = [c for c in all_cases() if args.k in f"{c.command} {c.name}"]
    start = time.monotonic()
    outcomes = []
    for case in cases:
        outcome = run(case)
        outcomes.append(outcome)
        if not outcome.held:
            print(f"NOT HELD {case.command}: {case.name}: exit {outcome.code}: "
                  f"{outcome.message[-600:]}", file=sys.stderr)
    if not args.k:
        args.out.write_text(table(outcomes, time.monotonic() - start))
    held = sum(o.held for o in outcomes)
    print(f"{held}/{len(outcomes)} bad inputs held ({time.monotonic() - start:.0f} s)")
    return 1 if args.check and held < len(outcomes) else 0


if __name__ == "__main__":
    sys.exit(main_())

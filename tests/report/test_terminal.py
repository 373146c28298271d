"""Untrusted text reaches the terminal shown, never obeyed.

A record id, a server's error message or a model's output can carry what a terminal acts on:
``ESC ] 0`` (window title), ``ESC ] 52`` (clipboard), ``ESC ] 8`` (a hidden hyperlink), CSI
(cursor and colours), a carriage return that overwrites the verdict, the one-byte C1 CSI, a bidi
override. rich passes ESC and C1 through, so these tests read the bytes a real terminal would
get (``force_terminal``, colours on) and check that every payload arrives with its ESC written
out, while servecheck's own colours still do.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from pathlib import Path

import pytest
from rich.console import Console

from servecheck.checks.core.results import CheckResult, Finding, NoDetails
from servecheck.formats.responses import read_records
from servecheck.report.table import print_table
from servecheck.report.terminal import markup, visible

HOSTILE = ("\x1b]0;pwned\x07"            # window title
           "\x1b]52;c;cHduZWQ=\x07"      # clipboard write
           "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"  # hidden hyperlink
           "\x1b[2J\x1b[31mred"          # clear the screen, recolour
           "\rPASS"                       # overwrite the line
           "\x9b1m\x85"                   # C1: one-byte CSI, NEL
           "\u202eevil\u202c"             # bidi override
           "\x00\x08\x7f[bold]x[/]")      # NUL, backspace, DEL, rich markup
PAYLOADS = ["]0;pwned", "]52;c;cHduZWQ=", "]8;;http://evil.example/", "[2J", "[31mred"]
"""What follows each ESC: each must reach the terminal, but never right after a raw ESC."""
ALLOWED = {"\t", "\u200c", "\u200d"}  # tab, and the joiners that emoji and Persian need


def assert_inert(out: str) -> None:
    """``out`` (what the terminal got) shows every payload of ``HOSTILE`` and obeys none."""
    for payload in PAYLOADS:
        assert payload in out, payload
        assert "\x1b" + payload not in out, f"{payload!r} reached the terminal as a sequence"
        assert "\\x1b" + payload in out, payload  # shown, so that a reader sees it
    for raw in ("\x07", "\x9b", "\x85", "\r", "\u202e", "\x00", "\x08", "\x7f"):
        assert raw not in out, f"raw {raw!r} reached the terminal"
    assert "\\u202eevil" in out and "\\rPASS" in out and "[bold]x[/]" in out


def terminal() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, force_terminal=True, color_system="truecolor", width=200,
                   highlight=False, soft_wrap=True), out


def test_visible_writes_each_control_character_as_its_escape() -> None:
    assert visible("a\x1b]0;t\x07b") == "a\\x1b]0;t\\x07b"
    assert visible("x\r\ny") == "x\\r\\ny"
    assert visible("x\r\ny", newlines=True) == "x\\r\ny"
    assert visible("\x9b\u202e\ud800\U000e0041") == "\\x9b\\u202e\\ud800\\U000e0041"
    ordinary = "héllo 世界 👨‍👩‍👧 tab\there «ok» — fine"
    assert visible(ordinary) == ordinary
    assert markup("[red]\x1b") == "\\[red]\\x1b"  # markup is data too


def test_visible_covers_every_unicode_control_and_format_character() -> None:
    """The pattern is spelled out (building it from ``unicodedata`` at import would cost
    a second); this test checks it against the database of the Python running it."""
    missed = [f"U+{c:04X}" for c in range(0x110000)
              if unicodedata.category(chr(c)) in ("Cc", "Cf", "Cs", "Zl", "Zp")
              and chr(c) not in {*ALLOWED, "\n"} and visible(chr(c), newlines=True) == chr(c)]
    assert missed == []
    assert visible("\n", newlines=True) == "\n" and visible("\n") == "\\n"


def test_table_shows_hostile_text_without_obeying_it() -> None:
    failing = CheckResult("template", "fail", f"summary {HOSTILE}", NoDetails(),
                          [Finding(f"id{HOSTILE}", f"message {HOSTILE}", 1.0)])
    console, out = terminal()
    print_table([failing], console, f"servecheck: shards{HOSTILE}.jsonl vs builtin")
    text = out.getvalue()
    assert "\x1b[1;31m" in text  # servecheck's own colour (FAIL in bold red) still reaches it
    assert text.count("]0;pwned") >= 3  # the title, the summary, the finding
    assert_inert(text)


def hostile_records(lite_responses: Path) -> list:
    """The lite records with a hostile id on a record with a doubled BOS (the template check
    names it in the table) and a failed request whose server message is hostile."""
    records = read_records(lite_responses)
    bad = next(r for r in records if r.parameters.greedy)
    bad.id, bad.input, bad.prompt_token_ids = f"r{HOSTILE}", "<bos>" + bad.input, None
    failed = records[1].model_copy(update={"id": "failed", "output": "",
                                           "error": f"HTTP 500: {HOSTILE}"})
    return [*records, failed]


def test_check_command_shows_hostile_text_without_obeying_it(
        lite_responses: Path, tmp_path: Path, write_records, run_cli,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # the CLI's console talks as to a real terminal
    monkeypatch.setenv("COLUMNS", "400")
    path = write_records(tmp_path / "responses.json", hostile_records(lite_responses))
    code = run_cli("check", path, "--reference", "builtin", "--no-progress",
                   "--json", tmp_path / "summary.json")
    out = capsys.readouterr().out
    assert code == 1, out
    assert re.search(r"\x1b\[[0-9;]*m", out)  # styled as for a terminal
    assert "r\\x1b]0;pwned" in out and "HTTP 500: \\x1b]0;pwned" in out
    assert_inert(out)
    summary = json.loads((tmp_path / "summary.json").read_text(encoding="utf-8"))
    messages = [f["record"] + f["message"] for c in summary["checks"] for f in c["findings"]]
    assert any(f"r{HOSTILE}" in m for m in messages)  # the JSON keeps the text exactly

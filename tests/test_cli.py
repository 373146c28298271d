"""The command line teaches: every option has help, every default and the exit codes are in
``--help``, and the reference is an explicit choice for the commands that check."""

from __future__ import annotations

import argparse

import pytest

from servecheck.cli import parser


def _commands(p: argparse.ArgumentParser, prefix: str = "servecheck"
              ) -> dict[str, argparse.ArgumentParser]:
    found = {prefix: p}
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update(_commands(sub, f"{prefix} {name}"))
    return found


COMMANDS = _commands(parser())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    p = COMMANDS[name]
    text = " ".join(p.format_help().split())
    assert "exit codes:" in text and "130" in text
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        shown = action.default not in (None, False, argparse.SUPPRESS)
        if shown and action.option_strings:
            default = " ".join(map(str, action.default)) if isinstance(action.default, list) \
                else action.default
            assert f"default: {default}" in text or "default" in action.help, \
                f"{name} {action.option_strings}: default not shown"


@pytest.mark.parametrize("command", ["check", "compare", "probe"])
def test_the_reference_is_required(command: str) -> None:
    reference = next(a for a in COMMANDS[f"servecheck {command}"]._actions
                     if "--reference" in a.option_strings)
    assert reference.required and reference.default is None


def test_a_refused_argument_is_one_line(run_cli, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("check", "r.jsonl", "--reference", "builtin", "--alpha", "2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --alpha" in err and "--help" in err

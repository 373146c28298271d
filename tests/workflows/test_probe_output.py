"""What ``servecheck probe`` prints: each seed group named by what sets it apart (two prompts that
differ only in their system prompt do not read as one), and the verdicts in upper case as
``check`` prints them, lowercase in the JSON (the schema's values).

No Triton here: the naming is checked on its own, the table on canned results, and one short
probe runs against the in-process ``hf:builtin`` target (no streaming path: the stream probe is
skipped).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.checks.core.results import CheckResult, Finding
from servecheck.formats.conversation import Conversation, Message
from servecheck.workflows import probe as probe_module
from servecheck.workflows.probe import group_names


def _conv(user: str, system: str | None = None, *earlier: str) -> Conversation:
    turns = [Message(role="system", content=system)] if system is not None else []
    for k, text in enumerate(earlier):
        turns.append(Message(role="user" if k % 2 == 0 else "model", content=text))
    return Conversation(contents=[*turns, Message(role="user", content=user)])


@pytest.mark.parametrize("convs, names", [
    ([_conv("Name a colour."), _conv("Name a colour.", "Answer in capital letters.")],
     ["'Name a colour.' (no system prompt)",
      "'Name a colour.' (system 'Answer in capital letters.')"]),
    ([_conv("Name a colour.", "You are a helpful assistant. Answer briefly, please."),
      _conv("Name a colour.", "You are a helpful assistant. Answer at great length.")],
     ["'Name a colour.' (system '…Answer briefly, please.')",
      "'Name a colour.' (system '…Answer at great length.')"]),
    ([_conv("And the frog?", None, "Where does the owl live?", "In a tree."),
      _conv("And the frog?", None, "Where does the fox live?", "In a den.")],
     ["'And the frog?' (turn 1 user 'Where does the owl live?')",
      "'And the frog?' (turn 1 user 'Where does the fox live?')"]),
    ([_conv("Name a colour."), _conv("Count from 3 to 8.")],
     ["'Name a colour.'", "'Count from 3 to 8.'"]),
    ([_conv("Name a colour."), _conv("Name a colour.")],
     ["'Name a colour.' [prompt 1]", "'Name a colour.' [prompt 2]"]),
])
def test_each_seed_group_is_named_by_what_sets_it_apart(convs: list[Conversation],
                                                        names: list[str]) -> None:
    assert group_names(convs) == names


def _canned(spec, options=None, prompts=None) -> list[CheckResult]:
    return [CheckResult("repeatability", "pass", "4/4 copies equal the first"),
            CheckResult("seeds", "fail", "1/2 prompt(s) repeat one text",
                        findings=[Finding("seeds", "'Name a colour.' T=1.0: 1 distinct text")]),
            CheckResult("batch invariance", "inconclusive", "too few"),
            CheckResult("stream", "skipped", "the target has no separate streaming path")]


def _verdicts(out: str) -> dict[str, str]:
    """The table's verdict column, by probe."""
    return {line.split("│")[1].strip(): line.split("│")[2].strip()
            for line in out.splitlines() if line.count("│") >= 3 and line.split("│")[1].strip()}


def test_probe_prints_verdicts_as_check_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             run_cli, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(probe_module, "probe", _canned)
    monkeypatch.setenv("COLUMNS", "200")
    out_json = tmp_path / "probe.json"
    code = run_cli("probe", "--target", "hf:builtin", "--reference", "builtin", "--json", out_json)
    out = capsys.readouterr().out
    assert code == 1, out
    assert _verdicts(out) == {"repeatability": "PASS", "seeds": "FAIL", "batch invariance": "INCONCLUSIVE",
                    "stream": "SKIPPED"}, out
    assert "verdict: FAIL" in out
    assert [r["verdict"] for r in json.loads(out_json.read_text())] == \
        ["pass", "fail", "inconclusive", "skipped"]  # the JSON keeps the schema's values


def test_probe_names_seed_groups_that_differ_only_in_the_system_prompt(
        tmp_path: Path, run_cli, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one table line per evidence line
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"prompt": ["Name a colour."],
                                   "system_prompt": [None, "Answer in capital letters."]}))
    out_json = tmp_path / "probe.json"
    run_cli("probe", prompts, "--target", "hf:builtin", "--reference", "builtin", "--repeats", "2",
            "--seeds", "2", "--levels", "2", "--max-tokens", "4", "--numerics", "fp32",
            "--json", out_json)
    out = capsys.readouterr().out
    seeds = next(r for r in json.loads(out_json.read_text()) if r["name"] == "seeds")
    lines = [f["message"] for f in seeds["findings"]]
    assert len(lines) == 2 and lines[0] != lines[1], lines
    assert lines[0].startswith("'Name a colour.' (no system prompt) T=1.0: "), lines
    assert lines[1].startswith("'Name a colour.' (system 'Answer in capital letters.') T=1.0: ")
    assert [g["label"] for g in seeds["details"]["groups"]] == [
        "'Name a colour.' (no system prompt) T=1.0",
        "'Name a colour.' (system 'Answer in capital letters.') T=1.0"]
    for line in lines:
        assert line in out  # the evidence column, one line each
    assert _verdicts(out)["stream"] == "SKIPPED" and _verdicts(out)["seeds"] in ("PASS", "FAIL")

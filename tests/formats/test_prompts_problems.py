"""A prompts file's problems, all of them in one run (issue 31, item 4): a first file with four
wrong names once took four edit-and-run rounds, the message saying "(and 5 more)" and
suggesting nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats.explain import MAX_PROBLEMS, suggest
from servecheck.formats.prompts import FIELDS, expand

FOUR_WRONG = {"prompts": ["Hi", "Bye"], "system_prompts": [None, "Be brief."],
              "temperatures": [0, 0.7], "max_new_tokens": 32}


def _write(tmp_path: Path, obj: object) -> Path:
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps(obj))
    return p


def _refusal(path: Path) -> str:
    with pytest.raises(InputError) as e:
        expand(path)
    return str(e.value)


def test_four_wrong_names_are_named_in_one_run(tmp_path: Path, run_cli,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    prompts, out = _write(tmp_path, FOUR_WRONG), tmp_path / "r.jsonl"
    out.write_text("kept as it is\n")  # what an earlier run collected
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 2
    err = capsys.readouterr().err
    assert err == (f"servecheck: error: {prompts}: 4 problems: "
                   f"1) unknown field 'prompts' (did you mean 'prompt'?); "
                   f"2) unknown field 'system_prompts' (did you mean 'system_prompt'?); "
                   f"3) unknown field 'temperatures' (did you mean 'temperature'?); "
                   f"4) unknown field 'max_new_tokens' (did you mean 'max_tokens'?)\n")
    assert "Field required" not in err  # 'prompt' is not missing: it is misspelt
    assert out.read_text() == "kept as it is\n"  # refused before the target or the file


def test_over_the_cap_the_total_is_said(tmp_path: Path) -> None:
    block = {"prompt": "hi", **{f"knob_{k}": 1 for k in range(MAX_PROBLEMS + 5)}}
    message = _refusal(_write(tmp_path, [block, {"prompt": "hi", "seed": -1}]))
    assert f": {MAX_PROBLEMS + 6} problems, the first {MAX_PROBLEMS}: 1) block 0: " in message
    assert f"; {MAX_PROBLEMS}) block 0: unknown field 'knob_{MAX_PROBLEMS - 1}'" in message
    assert f"{MAX_PROBLEMS + 1})" not in message
    assert message.endswith("; and 6 more (fix these and run again to see them)")
    assert "\n" not in message  # the command line prints one line


def test_every_block_and_every_field_in_one_refusal(tmp_path: Path) -> None:
    """A type error does not hide the bounds of the block's other fields, and one block does
    not hide the next."""
    path = _write(tmp_path, [
        {"prompt": 5, "temperature": [0, 1e-300], "top_p": 2},
        {"prompt": [[{"role": "usr", "content": "a", "text": "b"}],
                    [{"role": "user", "content": "a"}, {"role": "model", "content": "b"}]],
         "topP": 0.9},
        3])
    message = _refusal(path)
    assert message.startswith(f"{path}: 8 problems: ")
    for said in ["1) block 0: field 'prompt.0': Input should be a string or a list of turns, "
                 "got 5;",
                 "2) block 0: field 'temperature': a temperature of 1e-300 is under 1e-05",
                 "3) block 0: field 'top_p': Input should be less than or equal to 1, got 2.0;",
                 "4) block 1: field 'prompt.0.0.role': Input should be 'system', 'user', "
                 "'model' or 'tool'",
                 "5) block 1: unknown field 'prompt.0.0.text' (did you mean 'content'?);",
                 "6) block 1: unknown field 'topP' (did you mean 'top_p'?);",
                 "7) block 1: field 'prompt.1': a conversation must end with a user turn",
                 "8) block 2: expected an object of variation lists, got int"]:
        assert said in message
    assert "more)" not in message  # a union's tries are one problem, not "(and 1 more)"


def test_one_problem_reads_as_it_did(tmp_path: Path) -> None:
    path = _write(tmp_path, [{"prompt": "hi"}, {"prompt": "hi", "temprature": 0.5}])
    assert _refusal(path) == (f"{path} block 1: unknown field 'temprature' (did you mean "
                              f"'temperature'?)")
    path = _write(tmp_path, {"prompt": "hi", "beam": 4})
    assert _refusal(path) == (f"{path}: unknown field 'beam' (the fields are "
                              f"{', '.join(FIELDS)})")
    path = _write(tmp_path, {"prompt": [[{"role": "user", "text": "hi"}]]})
    assert _refusal(path) == f"{path}: unknown field 'prompt.0.0.text' (did you mean 'content'?)"


@pytest.mark.parametrize(("name", "meant"), [
    ("prompts", "prompt"), ("system_prompts", "system_prompt"), ("temperatures", "temperature"),
    ("max_new_tokens", "max_tokens"), ("max_completion_tokens", "max_tokens"),
    ("maxTokens", "max_tokens"), ("top-p", "top_p"), ("topP", "top_p"), ("seeds", "seed"),
    ("temprature", "temperature"), ("tool", "tools"), ("messages", "prompt"),
    ("system", "system_prompt"), ("stop_sequences", "stop"), ("Temperature", "temperature"),
    ("beam", None), ("prompt", None)])
def test_a_wrong_name_suggests_the_field(name: str, meant: str | None) -> None:
    assert suggest(name, FIELDS) == meant

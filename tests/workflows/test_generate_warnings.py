"""``servecheck generate`` warns, once each and with a count, about what a valid prompts file asks
that is rarely meant (issue 31, item 4): an empty system prompt, which many templates render
visibly, and greedy requests that differ only in settings greedy decoding ignores. The requests
are still sent: the user asked for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.formats.prompts import read_blocks
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference
from servecheck.workflows.generate import prompt_warnings


def _write(tmp_path: Path, obj: object) -> Path:
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps(obj))
    return p


def test_both_warnings_once_each_with_counts_and_every_request_sent(
        tmp_path: Path, run_cli, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = _write(tmp_path, {"prompt": "Hi", "system_prompt": ["", None], "temperature": 0,
                                "seed": [1, 2], "top_p": [1.0, 0.9], "max_tokens": 1})
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--reference", "builtin",
                   "--out", out, "--no-progress") == 0
    said = capsys.readouterr().out
    assert said.count("warning: ") == 2
    assert (f'warning: {prompts}: 4 of 8 requests have system_prompt "", sent as a system turn '
            f"with no text: the reference's template (builtin) renders it visibly (it adds "
            f"'\\n\\n' after '<bos><start_of_turn>user\\n')") in said
    assert "leave system_prompt out or write null" in said
    assert (f"warning: {prompts}: identical greedy requests: T=0 × 2 seeds × 2 top_p: 4 "
            f"identical greedy requests per prompt and setting, 8 of 8 requests") in said
    assert "so 6 of them add nothing but repeat evidence; they are kept and sent" in said
    assert len(read_records(out)) == 8  # warned about, not dropped


def test_a_clean_file_warns_of_nothing(tmp_path: Path, run_cli,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The cure the greedy warning names: greedy in a block of its own with one seed."""
    prompts = _write(tmp_path, [
        {"prompt": "Hi", "system_prompt": [None, "Be brief."], "temperature": 0, "seed": 1,
         "max_tokens": 1},
        {"prompt": "Hi", "temperature": 0.7, "seed": [1, 2], "top_p": [1.0, 0.9],
         "max_tokens": 1}])
    assert run_cli("generate", prompts, "--target", "hf:builtin", "--reference", "builtin",
                   "--out", tmp_path / "r.jsonl", "--no-progress") == 0
    captured = capsys.readouterr()
    assert "warning" not in captured.out + captured.err
    assert prompt_warnings(read_blocks(prompts)) == []


def test_without_a_reference_the_empty_system_prompt_is_warned_of_generically(
        tmp_path: Path) -> None:
    blocks = read_blocks(_write(tmp_path, [{"prompt": ["a", "b"], "system_prompt": ""},
                                           {"prompt": "c", "system_prompt": ["", "s", None]}]))
    (warning,) = prompt_warnings(blocks)
    assert warning.startswith('3 of 5 requests have system_prompt "", sent as a system turn '
                              'with no text: many chat templates render it visibly (Gemma 3')
    assert "leave system_prompt out or write null" in warning and "--reference" in warning


def test_a_template_that_renders_it_as_none_is_not_warned_of(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --reference the template decides: one that drops an empty system turn renders the
    same prompt either way, and there is nothing to say."""
    real = Reference.render
    monkeypatch.setattr(Reference, "render", lambda self, conversation, *a, **k: real(
        self, conversation.model_copy(update={"contents": [
            m for m in conversation.contents if m.role != "system" or m.content]}), *a, **k))
    blocks = read_blocks(_write(tmp_path, {"prompt": "a", "system_prompt": ""}))
    assert prompt_warnings(blocks, "builtin") == []
    monkeypatch.setattr(Reference, "render", real)
    (warning,) = prompt_warnings(blocks, "builtin")
    assert "the reference's template (builtin) renders it visibly" in warning


def test_greedy_twins_are_counted_per_block_and_by_top_k_one(tmp_path: Path) -> None:
    blocks = read_blocks(_write(tmp_path, [
        {"prompt": ["a", "b", "c"], "temperature": [0, 0.7, 1.0], "seed": [1, 2, 3, 4],
         "top_p": [1.0, 0.9]},
        {"prompt": "d", "temperature": 0.5, "top_k": [1, 40], "seed": [1, 2, 3]},
        {"prompt": "e", "temperature": 0, "seed": 5}]))
    (warning,) = prompt_warnings(blocks)
    assert warning.startswith(
        "identical greedy requests: block 0: T=0 × 4 seeds × 2 top_p: 8 identical greedy "
        "requests per prompt; block 1: T=0.5, top_k=1 × 3 seeds: 3 identical greedy requests "
        "per prompt, 27 of 79 requests.")
    assert "so 23 of them add nothing but repeat evidence" in warning

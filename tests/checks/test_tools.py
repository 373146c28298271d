"""Tools, thinking, stop strings, usage and n, end to end on the second built-in model.

``hf:builtin-tools`` serves like an OpenAI server with the family's parsers on (stop strings
cut, reasoning and tool calls split, usage counted, n choices). An honest run of
``examples/prompts-tools.json`` passes every check; each serving fault (``targets/faults.py``,
a test double for what a real vLLM cannot be made to do) fails the check that owns it, and the
finding names the fault. All deterministic checks: no false-failure rate to state, except the
seeds check's α for identical choices (the run's α = 0.01, its share 5%).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.responses import read_records
from servecheck.reference.markup import markup_of
from servecheck.reference.model import Reference

pytestmark = pytest.mark.slow  # generates the tools matrix with the tools model, per fault

FAULTS = {
    "tools-dropped": ("template", "tools dropped"),
    "thinking-ignored": ("reasoning", "thought when told not to"),
    "arguments-reescaped": ("tool calls", "arguments re-escaped"),
    "call-lost": ("tool calls", "call lost"),
    "answer-as-reasoning": ("reasoning", "answer as reasoning"),
    "stop-ignored": ("stop strings", "generated past a stop"),
    "stop-leaked": ("stop strings", "stop string kept"),
    "usage-off-by-one": ("usage", "completion_tokens"),
    "identical-choices": ("seeds", "choices of one request are copies"),
}


@pytest.fixture(scope="module")
def tools_prompts(root: Path) -> Path:
    return root / "examples" / "prompts-tools.json"


def _generate(run_cli, prompts: Path, target: str, out: Path) -> Path:
    assert run_cli("generate", prompts, "--target", target, "--out", out, "--no-progress") == 0
    return out


def test_honest_tools_server_passes(run_cli, check_json, tools_prompts: Path, tmp_path: Path):
    out = _generate(run_cli, tools_prompts, "hf:builtin-tools", tmp_path / "r.jsonl")
    records = read_records(out)
    assert sum(r.choice is not None for r in records) == 12  # 4 requests × n = 3
    assert any(r.tool_calls for r in records) and any(r.reasoning_content for r in records)
    code, summary = check_json(out, tmp_path, "builtin-tools")
    verdicts = {c["name"]: c["verdict"] for c in summary["checks"]}
    assert code == 0, verdicts
    for name in ("tool calls", "reasoning", "stop strings", "usage", "seeds", "template"):
        assert verdicts[name] == "pass", name


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_serving_fault_is_named(fault: str, run_cli, check_json, tools_prompts: Path,
                                tmp_path: Path):
    out = _generate(run_cli, tools_prompts, f"hf:builtin-tools?fault={fault}", tmp_path / "r.jsonl")
    code, summary = check_json(out, tmp_path, "builtin-tools")
    check, words = FAULTS[fault]
    named = next(c for c in summary["checks"] if c["name"] == check)
    assert code == 1 and named["verdict"] == "fail", named["summary"]
    assert any(words in f["message"] for f in named["findings"]), named["findings"][:2]


def test_markup_is_read_from_the_template():
    markup = markup_of(Reference("builtin-tools"))
    assert markup.call_open.strip() == "<tool_call>" and markup.think_close.strip() == "</think>"
    parsed = markup.parse('<think>\nplan\n</think>\n\n<tool_call>\n{"name": "add", "arguments": '
                          '{"a": 1, "b": 2}}\n</tool_call><|im_end|>')
    assert parsed.reasoning == "plan" and parsed.content == ""
    assert [c.call.parsed_arguments() for c in parsed.calls] == [{"a": 1, "b": 2}]


def test_reference_prompt_has_tools_and_kwargs():
    from servecheck.tinymodels.tool_corpus import TOOLS

    ref = Reference("builtin-tools")
    conv = Conversation(contents=[Message(role="user", content="Add 1 and 2.")],
                        tools=[TOOLS["add"]], chat_template_kwargs={"enable_thinking": False})
    prompt = ref.render(conv)
    assert '"name": "add"' in prompt and prompt.endswith("<think>\n\n</think>\n\n")
    assert Parameters(stop=". ").stop == [". "]


def test_rebuilt_forced_calls_are_counted_not_judged(run_cli, check_json, tools_prompts: Path,
                                                     tmp_path: Path, write_records):
    """tool_choice required (or a named function) makes engines decode under a grammar of their
    own; where the collector had no server ids and rebuilt the raw text from the parsed calls,
    that text is not what was decoded: such records are set aside and said to be, never failed
    (test_forced_calls judges the ones whose text is the engine's)."""
    out = _generate(run_cli, tools_prompts, "hf:builtin-tools", tmp_path / "r.jsonl")
    records = read_records(out)
    forced = [r.model_copy(update={"parameters": r.parameters.model_copy(
        update={"tool_choice": "required"}), "output": "[{\"name\": \"add\"}]<|im_end|>",
        "output_token_ids": None, "output_logprobs": None, "tool_calls": None, "usage": None,
        "sent": {"output": "rebuilt from the parsed fields with the reference template's markup"}})
        if r.conversations.tools else r for r in records]
    code, summary = check_json(write_records(tmp_path / "forced.json", forced), tmp_path,
                               "builtin-tools")
    answered = next(c for c in summary["checks"] if c["name"] == "records")
    assert code == 0 and "forced tool call(s) not checked: their raw text was rebuilt" in \
        answered["summary"]

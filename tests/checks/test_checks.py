"""check: a correct server passes; each known fault fails with the right diagnosis.

The faulty files are made by hand from a correct run, one fault each, as an engineer would make
them from a production export; the fault targets are the in-process server with a real bug on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference

PROMPTS_SMALL = {"prompt": ["What does the cat say?", "Tell me a story about the dog."],
                 "system_prompt": [None, "Be brief."], "temperature": [0, 0.9], "seed": 3,
                 "max_tokens": 40}


def test_correct_server_passes(lite_responses: Path, tmp_path: Path, check_json, check_named) -> None:
    code, summary = check_json(lite_responses, tmp_path)
    assert code == 0 and summary["verdict"] == "pass"
    assert {c["name"]: c["verdict"] for c in summary["checks"]} == {
        "records": "pass", "template": "pass", "termination": "pass", "detokenization": "pass",
        "greedy": "pass",
        "support": "pass", "fit": "pass", "temperature": "pass", "sampler": "pass", "logprobs": "pass",
        "seeds": "skipped",  # every lite request has seed 1234: no seed groups
        # plain chat turns: no tools, thinking or stop strings to judge; the hf target counts usage
        "tool calls": "skipped", "reasoning": "skipped", "grammar": "skipped",
        "stop strings": "skipped", "usage": "pass",
        # short prompts: no token past the sliding window; no prefix cache reported
        "context": "skipped", "cache": "skipped", "mask": "skipped"}
    greedy = check_named(summary, "greedy")["details"]
    assert greedy["records"] == 16 and greedy["tokens"] > 100 and greedy["hard_mismatches"] == 0
    # the temperature intervals are at the check's own simultaneous level: on a correct server
    # they hold the requested temperature (a pointwise 95% interval once excluded it and passed)
    for group, row in check_named(summary, "temperature")["details"]["groups"].items():
        assert row["low"] <= row["requested"] <= row["high"], group


def test_each_temperature_verdict_says_what_it_could_have_caught(
        lite_records: list[ResponseRecord], tmp_path: Path, check_json, check_named,
        write_records) -> None:
    """Power planning from the data: the smallest temperature error each group's tokens would
    have caught (never below the floor); repeats of an identical seeded request add nothing."""
    _, full = check_json(write_records(tmp_path / "full.json", lite_records), tmp_path)
    rows = check_named(full, "temperature")["details"]["groups"]
    floor = check_named(full, "temperature")["details"]["floors"]["temperature"]
    assert rows and all(r["detectable_relative_error"] >= floor for r in rows.values())
    assert "would have caught a temperature off by" in check_named(full, "temperature")["summary"]
    # the same seeded requests sent three times are one draw each: no more tokens, no more power
    tripled = [r.model_copy(update={"id": f"{r.id}-{k}"}) for k in range(3) for r in lite_records]
    _, more = check_json(write_records(tmp_path / "more.json", tripled), tmp_path)
    for group, row in check_named(more, "temperature")["details"]["groups"].items():
        assert row["test"]["n"] == rows[group]["test"]["n"]


def test_seed_fields_only_are_enough(lite_records: list[ResponseRecord], tmp_path: Path,
                                     check_json, check_named, write_records) -> None:
    """A production export has no ids, token ids or finish reasons: check still works."""
    seed_only = [ResponseRecord(conversations=r.conversations, parameters=r.parameters,
                                input=r.input, output=r.output) for r in lite_records]
    code, summary = check_json(write_records(tmp_path / "r.json", seed_only), tmp_path)
    assert code == 0, summary
    assert check_named(summary, "greedy")["details"]["token_sources"] == [
        "reference tokenization of the output text", "served input text"]


def _mutate(records: list[ResponseRecord], fn, where=lambda r: True) -> list[ResponseRecord]:
    out = []
    for r in records:
        r = r.model_copy(deep=True)
        if where(r):
            fn(r)
        out.append(r)
    return out


def _has_system(r: ResponseRecord) -> bool:
    return r.conversations.contents[0].role == "system"


def _drop_system(ref: Reference):
    def fn(r: ResponseRecord) -> None:
        r.input = ref.render_messages([m for m in r.conversations.hf_messages()
                                       if m["role"] != "system"])
        r.prompt_token_ids = None
    return fn


def _cut_end(r: ResponseRecord) -> None:
    r.output = r.output.replace("<end_of_turn>", "")
    r.output_token_ids, r.finish_reason = None, None


def _echo(r: ResponseRecord) -> None:
    r.output = r.input + r.output
    r.output_token_ids = None


def _text_after_end(r: ResponseRecord) -> None:
    r.output += "\n<start_of_turn>user\nmore"
    r.output_token_ids = None


def _whitespace(r: ResponseRecord) -> None:
    r.input = r.input.replace("<end_of_turn>\n", "<end_of_turn>\n\n")


def _no_gen_prompt(r: ResponseRecord) -> None:
    r.input = r.input.removesuffix("<start_of_turn>model\n")


def _ids_double_bos(r: ResponseRecord) -> None:
    assert r.prompt_token_ids is not None
    r.prompt_token_ids = [2, *r.prompt_token_ids]


def _too_long(r: ResponseRecord) -> None:
    r.parameters.max_tokens = 3


@pytest.mark.parametrize(("fault", "check", "expect"), [
    ("double BOS", "template", "double BOS: the prompt starts with an extra <bos>"),
    ("prompt ids double BOS", "template", "double BOS in the prompt tokens"),
    ("assistant role", "template", "role name 'assistant' where the reference template has 'model'"),
    ("system dropped", "template", "system prompt dropped"),
    ("whitespace", "template", "whitespace differs at char"),
    ("no generation prompt", "template", "missing generation prompt"),
    ("echo", "termination", "prompt echo"),
    ("cut without end marker", "termination", "does not end with <end_of_turn>"),
    ("text after end", "termination", "characters after <end_of_turn>"),
    ("too long", "termination", "> max_tokens 3"),
])
def test_hand_made_fault_fails_with_diagnosis(lite_records: list[ResponseRecord], ref: Reference,
                                              tmp_path: Path, fault: str, check: str,
                                              expect: str, check_json, check_named, write_records) -> None:
    mutate, where = {
        "double BOS": (lambda r: setattr(r, "input", "<bos>" + r.input), lambda r: True),
        "prompt ids double BOS": (_ids_double_bos, lambda r: True),
        "assistant role": (lambda r: setattr(r, "input", r.input.replace(
            "<start_of_turn>model\n", "<start_of_turn>assistant\n")), lambda r: True),
        "system dropped": (_drop_system(ref), _has_system),
        "whitespace": (_whitespace, lambda r: True),
        "no generation prompt": (_no_gen_prompt, lambda r: True),
        "echo": (_echo, lambda r: True),
        # text-only and long enough to have stopped at max_tokens (its token count is latent):
        # only the shorter outputs certainly lost their end marker
        "cut without end marker": (_cut_end, lambda r: len(r.output.encode()) - len("<end_of_turn>")
                                   < (r.parameters.max_tokens or 0)),
        "text after end": (_text_after_end, lambda r: True),
        "too long": (_too_long, lambda r: True),
    }[fault]
    records = _mutate(lite_records, mutate, where)
    code, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    assert code == 1 and summary["verdict"] == "fail"
    failed = check_named(summary, check)
    assert failed["verdict"] == "fail"
    assert any(expect in f["message"] for f in failed["findings"]), failed["findings"][:2]
    expected_bad = sum(1 for r in lite_records if where(r))
    assert failed["findings_total"] >= expected_bad


def test_non_argmax_greedy_token_fails(lite_records: list[ResponseRecord], ref: Reference,
                                       tmp_path: Path, check_json, check_named, write_records) -> None:
    """Swap one greedy token for a token the reference finds far less likely."""
    records = [r.model_copy(deep=True) for r in lite_records]
    victim = next(r for r in records if r.parameters.greedy and len(r.output_token_ids or []) > 3)
    assert victim.output_token_ids is not None
    ids = list(victim.output_token_ids)
    ids[1] = next(t for w in (" purple", " river") if (t := ref.encode(w)[0]) != ids[1])
    victim.output_token_ids, victim.output = ids, ref.decode(ids)
    code, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    greedy = check_named(summary, "greedy")
    assert code == 1 and greedy["verdict"] == "fail"
    assert greedy["details"]["hard_mismatches"] >= 1
    (finding,) = greedy["findings"]
    assert finding["record"] == victim.id and "first at output token 1" in finding["message"]
    # the other checks still pass: the fault is named, not smeared over everything
    assert check_named(summary, "template")["verdict"] == "pass"


@pytest.mark.parametrize(("fault", "check", "expect"), [
    ("double-bos", "template", "double BOS in the prompt tokens"),
    ("assistant-role", "template", "role name 'assistant'"),
    ("drop-system", "template", "system prompt dropped"),
    ("echo", "termination", "prompt echo"),
    ("strip-end", "termination", "does not end with <end_of_turn>"),
    ("ignore-eos", "termination", "characters after <end_of_turn>"),
])
def test_fault_target_is_caught(tmp_path: Path, fault: str, check: str, expect: str, run_cli,
                                check_json, check_named) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(PROMPTS_SMALL))
    out = tmp_path / "r.json"
    assert run_cli("generate", prompts, "--target", f"hf:builtin?fault={fault}", "--out", out,
                   "--no-progress") == 0
    code, summary = check_json(out, tmp_path)
    assert code == 1
    failed = check_named(summary, check)
    assert failed["verdict"] == "fail" and any(expect in f["message"] for f in failed["findings"])


def test_check_accepts_json_lines(lite_responses: Path, tmp_path: Path, check_json) -> None:
    lines = tmp_path / "r.jsonl"
    lines.write_text("".join(json.dumps(r) + "\n" for r in json.loads(lite_responses.read_text())))
    assert check_json(lines, tmp_path)[0] == 0


def test_errored_records_are_reported_not_checked(lite_records: list[ResponseRecord],
                                                  tmp_path: Path, check_json, check_named,
                                                  write_records) -> None:
    records = [r.model_copy(deep=True) for r in lite_records]
    records[0].error, records[0].output = "connection refused", ""
    code, summary = check_json(write_records(tmp_path / "r.json", records), tmp_path)
    assert code == 1
    assert check_named(summary, "records")["summary"].startswith("1/32 requests failed")
    assert check_named(summary, "termination")["verdict"] == "pass"

"""Conventions found, not assumed, and one broken record kept where it fails (issue 28).

Real records of the built-in model (``hf:builtin``), reshaped the way other engines and the
original notes' files shape them:

- llama.cpp's end token: not in the text (a client puts it back), not in
  ``usage.completion_tokens``, and without a served log-prob: a convention, found from the
  finished records and named, where it failed every record as a miscount;
- the notes' ``system_prompt: ""`` with no system turn: "no system prompt", checked against
  whichever rendering its ``input`` shows, where the whole file was refused;
- one output cut mid-word: named by termination and left out of the statistics, where it also
  failed support and tipped the file's sampling order;
- an ignored seed: copies across seeds are one draw, and every record one stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records


def _llama_style(records: list[ResponseRecord], short: int = 1) -> list[ResponseRecord]:
    """Text and log-probs as llama.cpp returns them: no ids, and for a finished output no
    log-prob and no count for its end token (``short`` fewer)."""
    out = []
    for r in records:
        finished = r.output.endswith("<end_of_turn>")
        lps = list(r.output_logprobs or [])
        usage = r.usage.model_copy(update={"completion_tokens": r.usage.completion_tokens - short}) \
            if finished else r.usage
        out.append(r.model_copy(update={"output_token_ids": None, "prompt_token_ids": None,
                                        "output_logprobs": lps[:-1] if finished else lps,
                                        "usage": usage}))
    return out


def test_an_end_token_left_uncounted_is_a_convention(lite_records: list[ResponseRecord],
                                                     verdicts) -> None:
    run, results, _ = verdicts(_llama_style(lite_records))
    assert results["usage"].verdict == "pass", results["usage"].summary
    assert results["logprobs"].verdict == "pass", results["logprobs"].summary
    assert "llama.cpp's convention" in results["usage"].summary
    counting = run.context.end_counting
    assert not counting.usage_counts_end and not counting.logprob_for_end


def test_a_miscount_beyond_the_convention_still_fails(lite_records: list[ResponseRecord],
                                                      verdicts) -> None:
    _, results, _ = verdicts(_llama_style(lite_records, short=2))
    assert results["usage"].verdict == "fail"


@pytest.mark.parametrize("system", ["", None, "absent"])
def test_the_notes_empty_system_prompt_means_none(lite_records: list[ResponseRecord],
                                                  ref, tmp_path: Path, system, check_json,
                                                  check_named) -> None:
    """Written as the notes' generate_responses.py writes it: the variation in parameters,
    "no system prompt" as "" (or null, or absent) with no system turn. Half the prompts were
    rendered with an empty system turn (Gemma writes it as a blank line in the user turn),
    half without: each is checked against the rendering its input shows."""
    rows = []
    for k, r in enumerate(r for r in lite_records if r.conversations.contents[0].role != "system"):
        params = {**r.parameters.model_dump(exclude_none=True),
                  "prompt": r.conversations.contents[-1].content}
        if system != "absent":
            params["system_prompt"] = system
        text = r.input
        if system == "" and k % 2:
            text = ref.render_messages([{"role": "system", "content": ""},
                                        *r.conversations.hf_messages()])
        rows.append({"conversations": r.conversations.model_dump(exclude_none=True),
                     "parameters": params, "input": text, "output": r.output})
    path = tmp_path / "response.json"
    path.write_text(json.dumps(rows))
    _, summary = check_json(path, tmp_path)
    template = check_named(summary, "template")
    assert template["verdict"] == "pass", template["summary"]
    if system == "":
        assert template["details"]["empty_system"] == len(rows)
        assert template["details"]["rendered_empty"] == len(rows) // 2
        assert 'system_prompt ""' in template["summary"]


def test_one_cut_record_fails_termination_only(tmp_path: Path, run_cli, root: Path,
                                               check_json, check_named) -> None:
    """One sampled output cut mid-word, its end marker lost, among 1,344 honest text-only
    records: termination names it; support, greedy, fit and temperature do not see it, and
    the sampling order stays HF's."""
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", root / "examples" / "prompts.json", "--target", "hf:builtin",
                   "--out", out, "--no-progress") == 0
    rows = []
    cut = None
    for r in read_records(out):
        row = {"id": r.id, "conversations": r.conversations.model_dump(exclude_none=True),
               "parameters": r.parameters.model_dump(exclude_none=True), "input": r.input,
               "output": r.output}
        if cut is None and r.parameters.temperature == 0.7 and (r.parameters.top_p or 1) < 1 \
                and len(r.output) > 30:
            words = r.output.removesuffix("<end_of_turn>")
            row["output"], cut = words[: len(words) // 2 + 1], r.id
        rows.append(row)
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(rows))
    code, summary = check_json(path, tmp_path)
    assert code == 1
    failed = {c["name"]: c for c in summary["checks"] if c["verdict"] == "fail"}
    assert set(failed) == {"termination"}, {k: v["summary"] for k, v in failed.items()}
    assert [f["record"] for f in failed["termination"]["findings"]] == [cut]
    assert summary["convention"]["name"] == "HF order"
    assert "1 left out of the statistical checks" in check_named(summary, "records")["summary"]


def test_an_ignored_seed_makes_copies_one_draw(tmp_path: Path, run_cli, verdicts) -> None:
    """Six seeds per request, all ignored: the six identical texts are one draw to the pooled
    checks, and every record is taken to read one random stream."""
    from servecheck.checks.core.pooling import sampled_groups
    from servecheck.checks.core.shared_seeds import seed_design

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": ["What does the cat say?", "Name a color.",
                                              "Tell me a story about the fox."],
                                   "temperature": 0.7, "seed": [1, 2, 3, 4, 5, 6],
                                   "max_tokens": 32}))
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", prompts, "--target", "hf:builtin?fault=seed-ignored", "--out", out,
                   "--no-progress") == 0
    run, results, _ = verdicts(out)
    assert results["seeds"].verdict == "fail"
    ctx = run.context
    groups = sampled_groups(ctx)
    assert sum(map(len, groups.values())) == 3  # one text per prompt: 18 records, 3 draws
    design = seed_design(ctx, ctx.scores([i for g in groups.values() for i in g]))
    assert design.one_stream

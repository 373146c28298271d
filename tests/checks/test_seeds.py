"""The seeds check on the designs users run: two seeds per prompt (the original notes' matrix,
one seed list crossed with every prompt), and identical requests repeated.

The served records come from the in-process ``hf:builtin`` target, honest and with the
``seed-ignored`` fault (every request sampled with seed 0). False-failure rate: the check's
Holm family is at α = 0.01, and the seeds are fixed, so these runs are deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PROMPTS = ["Tell me about the owl.", "What does the cat say?", "Name a colour.",
           "Tell me a story.", "What is a dog?", "Describe the sea.", "Count to five.",
           "What do birds eat?"]


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeds") / "prompts.json"
    path.write_text(json.dumps({"prompt": PROMPTS, "temperature": [1.0], "seed": [11, 12],
                                "max_tokens": 24}))
    return path


@pytest.mark.slow  # two generations of 16 requests and two checks
@pytest.mark.parametrize(("spec", "verdict"), [("hf:builtin", "pass"),
                                               ("hf:builtin?fault=seed-ignored", "fail")])
def test_two_seeds_per_prompt_are_enough(two_seeds: Path, tmp_path: Path, spec: str,
                                         verdict: str, run_cli, check_json, check_named) -> None:
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", two_seeds, "--target", spec, "--out", out, "--no-progress") == 0
    _, summary = check_json(out, tmp_path)
    seeds = check_named(summary, "seeds")
    assert seeds["verdict"] == verdict, seeds["summary"]
    assert len(seeds["details"]["groups"]) == len(PROMPTS)


@pytest.mark.slow
def test_an_identical_request_repeated_counts_once(two_seeds: Path, tmp_path: Path, run_cli,
                                                   check_json, check_named) -> None:
    """A seeded engine answers the same request (same seed too) with the same text: that is
    right, and must not read as "the seed looks ignored"."""
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", two_seeds, "--target", "hf:builtin", "--out", out,
                   "--no-progress") == 0
    lines = out.read_text().splitlines()
    copies = [json.dumps({**json.loads(line), "id": json.loads(line)["id"] + f"-copy{k}"})
              for line in lines for k in range(3)]
    out.write_text("\n".join(lines + copies) + "\n")
    _, summary = check_json(out, tmp_path)
    seeds = check_named(summary, "seeds")
    assert seeds["verdict"] == "pass", seeds["summary"]
    assert all(g["seeds"] == 2 for g in seeds["details"]["groups"])

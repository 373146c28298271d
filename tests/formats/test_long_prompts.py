"""The long prompts: their lengths on the built-in model, the shipped file as the builder makes
it (so the two cannot drift), and the file as a prompts file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats.prompts import expand
from servecheck.reference.long_prompts import FACTORS, MAX_TOKENS, build, prompts_file, sliding_window
from servecheck.reference.model import Reference
from servecheck.workflows.long_prompts import dumps

SHIPPED = "prompts-long.json"


@pytest.fixture(scope="module")
def built(ref: Reference):
    return build(ref)


def test_lengths_around_the_window(ref: Reference, built) -> None:
    prompts, notes = built
    window = sliding_window(ref)
    assert window == ref.model.config.sliding_window == 128 and not notes
    assert sorted({p.target for p in prompts}) == [round(f * window) for f in FACTORS]
    for p in prompts:  # counted as the server runs it: the rendered template, generation prompt
        assert p.tokens == p.target == len(ref.encode(ref.render_messages(
            [{"role": "user", "content": p.text}]))), p.name
    assert sorted(p.task for p in prompts) == sorted(["copy", "recall-home", "recall-food"] * 4)


def test_the_tasks_reach_back_to_the_start(built) -> None:
    """The list and the facts open the prompt, the question closes it; the recall pair shares
    everything before its question (a prefix cache serves one from the other)."""
    prompts, _ = built
    by = {p.name: p.text for p in prompts}
    for factor in ("0.9", "1.1", "2", "4"):
        copy, home, food = (by[f"{t}@{factor}W"] for t in ("copy", "recall-home", "recall-food"))
        assert copy.startswith("Remember this list: ") and copy.endswith("say the list again.")
        assert home.startswith("Remember this: the ") and home.endswith("live?")
        shared = next(i for i, (a, b) in enumerate(zip(home, food, strict=False)) if a != b)
        assert shared > 0.8 * len(home)


def test_the_shipped_file_is_what_the_builder_makes(root: Path, built) -> None:
    prompts, _ = built
    made = dumps(prompts_file(prompts))
    shipped = (root / "servecheck" / "examples" / SHIPPED).read_text()
    assert shipped == made, "servecheck long-prompts --reference builtin --out <both copies>"
    assert (root / "examples" / SHIPPED).read_text() == shipped


def test_every_example_is_shipped_twice_alike(root: Path) -> None:
    """The package's examples (``servecheck/examples``) and the repository's (``examples``)."""
    package = {p.name: p.read_text() for p in (root / "servecheck" / "examples").glob("*.json")}
    top = {p.name: p.read_text() for p in (root / "examples").glob("*.json")}
    assert package == top and SHIPPED in package


def test_it_expands_as_a_prompts_file(root: Path) -> None:
    requests = expand(root / "servecheck" / "examples" / SHIPPED)
    assert len(requests) == 12 * 7 and len({r.id for r in requests}) == len(requests)
    assert all(r.parameters.max_tokens == MAX_TOKENS for r in requests)
    greedy = [r for r in requests if r.parameters.greedy]
    sampled = [r for r in requests if not r.parameters.greedy]
    assert len(greedy) == 12 and all(r.parameters.seed is None for r in greedy)
    assert len({r.parameters.seed for r in sampled}) == len(sampled) == 72  # a seed each
    assert {(r.parameters.temperature, r.parameters.top_p) for r in sampled} == {
        (0.7, 0.9), (1.0, None)}


def test_the_command_writes_it(run_cli, root: Path, tmp_path: Path) -> None:
    out = tmp_path / "long.json"
    assert run_cli("long-prompts", "--reference", "builtin", "--out", out) == 0
    assert out.read_text() == (root / "examples" / SHIPPED).read_text()


def test_no_window_is_refused_unless_named(tmp_path: Path) -> None:
    tools = Reference("builtin-tools")  # Qwen3: full attention in every layer
    assert sliding_window(tools) is None
    with pytest.raises(InputError, match=r"no sliding window.*--window N"):
        build(tools)
    prompts, _ = build(tools, window=64, factors=(1.0, 2.0))
    assert [p.tokens for p in prompts] == [64] * 3 + [128] * 3


def test_lengths_past_the_positions_are_left_out(ref: Reference) -> None:
    """4 × 300 tokens and 64 to generate pass the built-in model's 1024 positions."""
    prompts, notes = build(ref, window=300, factors=(2.0, 4.0))
    assert {p.target for p in prompts} == {600}
    assert len(notes) == 1 and "4W = 1200 tokens left out" in notes[0]
    assert json.loads(dumps(prompts_file(prompts)))[0]["max_tokens"] == MAX_TOKENS

"""prompts.json expansion: every combination is one request, with a stable id."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats.parameters import MIN_TEMPERATURE, Parameters
from servecheck.formats.prompts import expand


def _write(tmp_path: Path, obj: object) -> Path:
    p = tmp_path / "prompts.json"
    p.write_text(json.dumps(obj))
    return p


def test_matrix_and_scalars(tmp_path: Path) -> None:
    reqs = expand(_write(tmp_path, {"prompt": ["a", "b"], "system_prompt": [None, "s"],
                                    "temperature": [0, 0.7, 1.0], "top_p": 0.9, "seed": 5}))
    assert len(reqs) == 2 * 2 * 3
    assert {r.parameters.top_p for r in reqs} == {0.9} and {r.parameters.seed for r in reqs} == {5}
    with_system = [r for r in reqs if r.conversation.contents[0].role == "system"]
    assert len(with_system) == 6 and with_system[0].conversation.contents[0].content == "s"
    assert len({r.id for r in reqs}) == len(reqs)
    assert [r.id for r in expand(tmp_path / "prompts.json")] == [r.id for r in reqs]


def test_multi_turn_and_blocks(tmp_path: Path) -> None:
    conv = [{"role": "user", "content": "hi"}, {"role": "model", "content": "Hello."},
            {"role": "user", "content": "bye"}]
    reqs = expand(_write(tmp_path, [{"prompt": conv, "system_prompt": "Be brief."},
                                    {"prompt": ["x"], "max_tokens": [8, 16]}]))
    assert len(reqs) == 3
    roles = [m.role for m in reqs[0].conversation.contents]
    assert roles == ["system", "user", "model", "user"]
    assert reqs[0].conversation.hf_messages()[2]["role"] == "assistant"


def test_repeated_combinations_get_distinct_ids(tmp_path: Path) -> None:
    reqs = expand(_write(tmp_path, {"prompt": ["same", "same"], "seed": 1}))
    assert len(reqs) == 2 and reqs[0].id != reqs[1].id


def test_shipped_examples_expand(lite_prompts: Path, root: Path) -> None:
    assert len(expand(lite_prompts)) == 32
    assert len(expand(root / "examples" / "prompts.json")) > 500


def test_schema_command(capsys, run_cli) -> None:
    assert run_cli("schema", "responses") == 0
    schema = json.loads(capsys.readouterr().out)
    assert {"conversations", "parameters", "input", "output", "schema_version"} <= set(
        schema["properties"])


def test_a_matrix_over_the_limit_is_refused_before_it_expands(tmp_path: Path) -> None:
    """10^9 requests once started expanding, growing 60 MiB/s: the size is a product of list
    lengths, refused before the first request exists, and raised by the caller's limit."""
    thousand = list(range(1000))
    path = _write(tmp_path, [{"prompt": "a"},
                             {"prompt": [f"p{k}" for k in thousand], "seed": thousand,
                              "max_tokens": [k + 1 for k in thousand]}])
    start = time.monotonic()
    with pytest.raises(InputError) as e:
        expand(path)
    assert time.monotonic() - start < 5
    assert str(e.value) == (f"{path}: the matrix expands to 1,000,000,001 requests, over the "
                            f"limit of 1,000,000 (raise it with --max-requests N)")
    small = _write(tmp_path, {"prompt": ["a", "b"], "seed": [1, 2, 3]})
    with pytest.raises(InputError, match="expands to 6 requests, over the limit of 5"):
        expand(small, max_requests=5)
    assert len(expand(small, max_requests=6)) == 6


def test_a_tiny_temperature_is_refused_as_greedy_in_disguise(tmp_path: Path) -> None:
    """1e-300 made NaN probabilities in the in-process server; engines treat T < 1e-5 as
    greedy, so the file must say 0."""
    path = _write(tmp_path, {"prompt": "a", "temperature": [0, 1e-300]})
    with pytest.raises(InputError) as e:
        expand(path)
    assert str(e.value).startswith(f"{path}: field 'temperature': a temperature of 1e-300 is "
                                   f"under 1e-05: write 0 for greedy")
    assert len(expand(_write(tmp_path, {"prompt": "a", "temperature": [0, MIN_TEMPERATURE]}))) == 2
    assert Parameters(temperature=0).greedy and not Parameters(temperature=1e-5).greedy

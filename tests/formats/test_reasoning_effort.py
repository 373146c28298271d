"""reasoning_effort as a request parameter: read from prompts files, kept in records without
moving older ids, and sent to each OpenAI-compatible server under the field it reads (no server
is started: the request body is what is checked)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.collect.targets import open_target
from servecheck.errors import InputError
from servecheck.formats.conversation import stable_dump
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import expand
from servecheck.formats.records import ResponseRecord


def _requests(tmp_path: Path, block: dict):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(block))
    return expand(path)


def test_a_prompts_file_varies_it(tmp_path: Path) -> None:
    requests = _requests(tmp_path, {"prompt": "What does the cat say?",
                                    "reasoning_effort": ["none", "high", None]})
    assert [r.parameters.reasoning_effort for r in requests] == ["none", "high", None]
    plain = _requests(tmp_path, {"prompt": "What does the cat say?"})[0]
    assert plain.id == requests[2].id  # unset, it leaves the ids of older files as they were
    assert "reasoning_effort" not in stable_dump(Parameters())


def test_an_unknown_effort_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"reasoning_effort.*'none', 'minimal', 'low'"):
        _requests(tmp_path, {"prompt": "Hi.", "reasoning_effort": "xhigh"})


def test_records_keep_it() -> None:
    record = ResponseRecord.model_validate({
        "conversations": {"contents": [{"role": "user", "content": "Hi."}]},
        "parameters": {"reasoning_effort": "low"}, "output": "Hello."})
    assert record.parameters.reasoning_effort == "low"


def _body(tmp_path: Path, spec: str, effort: str | None, reference: str | None = None) -> dict:
    target = open_target(spec, reference)
    (request,) = _requests(tmp_path, {"prompt": "What does the cat say?",
                                      "reasoning_effort": effort})
    return target._body(request)  # type: ignore[attr-defined]


def test_vllm_and_sglang_get_the_top_level_field(tmp_path: Path) -> None:
    for server in ("vllm", "sglang", "openai"):
        body, _ = _body(tmp_path, f"openai://127.0.0.1:9/v1?server={server}&model=m", "none")
        assert body["reasoning_effort"] == "none" and "chat_template_kwargs" not in body
    body, _ = _body(tmp_path, "openai://127.0.0.1:9/v1?server=vllm&model=m", None)
    assert "reasoning_effort" not in body


def test_llama_cpp_gets_the_template_variables_it_implies(tmp_path: Path) -> None:
    body, _ = _body(tmp_path, "openai://127.0.0.1:9/v1?server=llama.cpp&model=m", "none")
    assert "reasoning_effort" not in body
    assert body["chat_template_kwargs"] == {"reasoning_effort": "none", "enable_thinking": False}


@pytest.mark.parametrize("server", ["tgi", "llama-cpp-python"])
def test_servers_without_a_way_to_take_it_refuse(tmp_path: Path, server: str) -> None:
    with pytest.raises(InputError, match="no way to take reasoning_effort"):
        _body(tmp_path, f"openai://127.0.0.1:9/v1?server={server}&model=m", "low")


def test_completions_mode_renders_it_into_the_prompt(tmp_path: Path) -> None:
    spec = "openai://127.0.0.1:9/v1?server=vllm&model=m&mode=completions"
    body, prompt = _body(tmp_path, spec, "none", "builtin-tools")
    assert prompt.endswith("<think>\n\n</think>\n\n") and body["prompt"] == prompt
    assert "reasoning_effort" not in body  # the completions API has no such field
    _, thinking = _body(tmp_path, spec, "low", "builtin-tools")
    assert not thinking.endswith("</think>\n\n")

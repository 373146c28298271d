"""The OpenAI target against a plain OpenAI-compatible server that is not vLLM: no ``/version``,
no prompt text, no token ids. A fake server (aiohttp on 127.0.0.1) stands in for it: a test
double, because no such server runs on this CPU-only machine (vLLM itself is tested for real in
test_vllm.py). It checks the API key travels as a header and nowhere else, and that ``check``
says why the template check is skipped rather than guessing.

It also holds the rule that nothing in a record comes from a model the user did not name: a
ChatML server in chat mode with no ``--reference`` gets its text recorded verbatim (no Gemma
``<end_of_turn>`` from the built-in model) and one note saying how to restore end markers;
completions mode, which must template on the client, refuses to run without a reference.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from servecheck.collect.targets import open_target
from servecheck.collect.targets.openai import UNKNOWN_END, OpenAITarget
from servecheck.formats.responses import read_records
from servecheck.reference.model import Reference
from tests.collect.local_app import running

KEY = "sk-test-0123456789abcdefSECRET"
CHATML_PROMPT = "<|im_start|>user\nWhat does the cat say?<|im_end|>\n<|im_start|>assistant\n"
"""What a ChatML server (a llama.cpp or vLLM serving a Qwen-style model) would build."""


FakeServer = Callable[..., AbstractContextManager[tuple[str, list[dict]]]]


@pytest.fixture(scope="session")
def fake_server(free_ports) -> FakeServer:
    """``with fake_server(content, vllm=False, token_ids=None) as (address, seen):``"""
    return functools.partial(_fake_server, free_ports)


@contextmanager
def _fake_server(free_ports, content: str, vllm: bool = False, token_ids: list[int] | None = None,
                 info: dict[str, dict] | None = None, frames: list[dict] | None = None
                 ) -> Iterator[tuple[str, list[dict]]]:
    """An OpenAI-compatible chat server on 127.0.0.1 that answers ``content`` with finish
    "stop", the end token stripped as real servers do. ``vllm``: it also answers ``GET /version``
    and returns the prompt text and ``token_ids`` the way vLLM does when asked."""
    seen: list[dict] = []

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), "body": body})
        if body.get("stream"):
            return await _sse(request, frames or [])
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}
        answer: dict[str, Any] = {"choices": [choice]}
        if vllm and body.get("return_token_ids"):
            choice["token_ids"] = token_ids
            answer.update(prompt_text=CHATML_PROMPT, prompt_token_ids=[1, 2, 3])
        return web.json_response(answer)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "served-model"}]})

    async def version(_: web.Request) -> web.Response:
        return web.json_response({"version": "0.0-fake"})

    def answer_info(path: str, body: dict):
        async def handler(_: web.Request) -> web.Response:
            seen.append({"get": path})
            return web.json_response(body)
        return handler

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    if vllm:
        app.router.add_get("/version", version)
    for path, body in (info or {}).items():  # another engine's info endpoint
        app.router.add_get(path, answer_info(path, body))
    with running(app, free_ports(1)[0]) as port:
        yield f"127.0.0.1:{port}", seen


async def _sse(request: web.Request, frames: list[dict]) -> web.StreamResponse:
    """``frames`` as Server-Sent Events, then ``[DONE]``."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for frame in frames:
        await response.write(f"data: {json.dumps(frame)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    return response


def _delta(text: str, finish: str | None = None) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]}


@pytest.fixture()
def plain_server(fake_server: FakeServer) -> Iterator[tuple[str, list[dict]]]:
    """A plain (not vLLM) server whose answers read like the built-in Gemma model's."""
    with fake_server("The cat says meow.") as server:
        yield server


def _prompts(tmp_path: Path, n: int = 1) -> Path:
    prompts = tmp_path / "p.json"
    texts = ["What does the cat say?", "Name a colour.", "Count to 3.", "Tell me about the owl."]
    prompts.write_text(json.dumps({"prompt": texts[:n], "temperature": 0.7}))
    return prompts


def test_key_from_env_only_in_the_header(plain_server, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture, run_cli, check_json,
                                         check_named) -> None:
    address, seen = plain_server
    monkeypatch.setenv("MY_KEY", KEY)
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "What does the cat say?", "temperature": 0.7, "top_k": 5}')
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", prompts, "--target", f"openai://{address}/v1?api_key_env=MY_KEY",
                   "--out", out, "--no-progress", "--reference", "builtin") == 0
    assert seen[0]["auth"] == f"Bearer {KEY}"
    assert seen[0]["body"]["model"] == "served-model" and seen[0]["body"]["top_k"] == 5
    assert "return_prompt_text" not in seen[0]["body"]  # not vLLM: no vLLM-only fields
    text = out.read_text()
    assert KEY not in text and '"input":""' in text  # no prompt seen, none guessed
    # --reference reached the target: the named model's end marker is put back on "stop"
    assert text.count("The cat says meow.<end_of_turn>") == 1
    (record,) = read_records(out)
    assert record.sent and record.sent["end_marker"] == "<end_of_turn> restored from the reference builtin"
    _, summary = check_json(out, tmp_path)
    assert KEY not in capsys.readouterr().out + (tmp_path / "summary.json").read_text()
    template = check_named(summary, "template")
    assert template["verdict"] == "skipped" and "mode=completions" in template["summary"]


def test_chat_without_reference_records_what_the_server_returned(
        tmp_path: Path, capsys: pytest.CaptureFixture, fake_server: FakeServer, run_cli) -> None:
    """A ChatML server, no --reference: no Gemma marker appended, and the user told once."""
    out = tmp_path / "r.jsonl"
    with fake_server("Meow, says the cat.") as (address, seen):
        code = run_cli("generate", _prompts(tmp_path, 4), "--target", f"openai://{address}/v1",
                       "--out", out, "--no-progress")
    printed = capsys.readouterr().out
    assert code == 0 and len(seen) == 4
    records = read_records(out)
    assert [r.output for r in records] == ["Meow, says the cat."] * 4  # verbatim
    assert "<end_of_turn>" not in out.read_text()
    assert all(r.finish_reason == "stop" and r.sent and r.sent["end_marker"] == UNKNOWN_END
               for r in records)
    assert printed.count("end markers were not restored") == 1  # once per run, not per request
    assert printed.count("did not say which engine it is") == 1
    note = printed[printed.index("note:"):]
    assert "end markers were not restored" in note and "--reference PATH" in note
    assert "?template=" in note


@pytest.mark.parametrize("named", [None, "template", "reference"])
def test_served_ids_restore_a_marker_only_from_a_named_reference(
        named: str | None, tmp_path: Path, ref: Reference, fake_server: FakeServer,
        run_cli) -> None:
    """vLLM returns ids; which id ends a turn is the named checkpoint's to say, or nobody's."""
    end = ref.end_ids[0]
    out = tmp_path / "r.jsonl"
    with fake_server("Meow.", vllm=True, token_ids=[40, 41, end]) as (address, seen):
        target = f"openai://{address}/v1" + ("?template=builtin" if named == "template" else "")
        extra = ["--reference", "builtin"] if named == "reference" else []
        assert run_cli("generate", _prompts(tmp_path), "--target", target, "--out", out,
                       "--no-progress", *extra) == 0
    assert seen[0]["body"]["return_token_ids"] is True
    (record,) = read_records(out)
    assert record.output_token_ids == [40, 41, end] and record.input == CHATML_PROMPT
    if named is None:
        assert record.output == "Meow." and record.sent and record.sent["end_marker"] == UNKNOWN_END
    else:
        assert record.output == "Meow." + ref.decode([end])
        assert record.sent and "from the reference builtin" in record.sent["end_marker"]


def test_completions_without_reference_is_bad_input(plain_server, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture,
                                                     run_cli) -> None:
    address, seen = plain_server
    out = tmp_path / "r.jsonl"
    code = run_cli("generate", _prompts(tmp_path), "--target",
                   f"openai://{address}/v1?mode=completions", "--out", out, "--no-progress")
    error = capsys.readouterr().err
    assert code == 2 and not seen and not out.exists()
    assert "mode=completions templates the prompt here" in error
    assert "--reference PATH|builtin" in error and "?template=PATH|builtin" in error


def test_open_target_passes_the_reference_and_the_option_wins() -> None:
    chat = open_target("openai://127.0.0.1:9/v1", reference="builtin")
    assert isinstance(chat, OpenAITarget) and chat.ref and chat.ref.spec == "builtin"
    assert not chat.notes()
    bare = open_target("openai://127.0.0.1:9/v1")
    assert isinstance(bare, OpenAITarget) and bare.ref is None and len(bare.notes()) == 1
    # ?template= belongs to this target and wins: the bad --reference is never even opened
    both = open_target("openai://127.0.0.1:9/v1?mode=completions&template=builtin",
                       reference="/nowhere/at/all")
    assert isinstance(both, OpenAITarget) and both.ref and both.ref.spec == "builtin"


def test_collect_hands_the_reference_to_the_target(tmp_path: Path,
                                                    fake_server: FakeServer) -> None:
    from servecheck.collect.collector import collect

    out = tmp_path / "r.jsonl"
    with fake_server("Meow.") as (address, _):
        bare = collect(_prompts(tmp_path), f"openai://{address}/v1", out, show_progress=False)
        named = collect(_prompts(tmp_path, 2), f"openai://{address}/v1", out, show_progress=False,
                        reference="builtin")
    markers = [[n for n in s.notes if "end markers" in n] for s in (bare, named)]
    assert len(markers[0]) == 1 and not markers[1] and named.written == 1
    assert [r.output for r in read_records(out)] == ["Meow.", "Meow.<end_of_turn>"]





@contextmanager
def _rejecting_server(free_ports) -> Iterator[str]:
    """A server that refuses every chat request with 401 and quotes the key back, as OpenAI's
    does ("Incorrect API key provided: …"), once bare and once with its ``Bearer`` prefix."""

    async def chat(request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        message = f"Incorrect API key provided: {auth.removeprefix('Bearer ')} (header: {auth})"
        return web.json_response({"error": {"message": message}}, status=401)

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "served-model"}]})

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    with running(app, free_ports(1)[0]) as port:
        yield f"127.0.0.1:{port}"


def test_a_key_the_server_quotes_back_reaches_no_output(
        free_ports, run_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The key is cut out where the server's message enters servecheck, so it is in no record,
    no console line and none of the files ``check`` writes."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    out = tmp_path / "r.jsonl"
    files = [out, tmp_path / "s.json", tmp_path / "j.xml", tmp_path / "report.html"]
    with _rejecting_server(free_ports) as address:
        assert run_cli("generate", _prompts(tmp_path, 2), "--target", f"openai://{address}/v1",
                       "--out", out, "--retries", "0", "--no-progress") == 1
    assert run_cli("check", out, "--reference", "builtin", "--json", files[1], "--junit",
                   files[2], "--report", files[3], "--no-progress") == 1
    console = capsys.readouterr()
    assert "HTTP 401" in out.read_text() and "[redacted]" in out.read_text()
    for path in files:
        assert KEY not in path.read_text(), path.name
    assert KEY not in console.out + console.err
    assert KEY[:12] not in "".join(p.read_text() for p in files)  # not even in part


def test_redact_cuts_secrets_and_bearer_tokens() -> None:
    from servecheck.errors import redact

    assert redact(f"bad key {KEY}!", [KEY]) == "bad key [redacted]!"
    assert redact("Authorization: Bearer abc.def-123 rejected") == \
        "Authorization: Bearer [redacted] rejected"
    assert redact("the word key stays", ["key"][:0]) == "the word key stays"
    assert redact("a b c", ["a"]) == "a b c"  # too short to be a key: left alone
    # token shapes go whatever their source: a key from another variable, a token in a trace
    assert redact("tried sk-proj-AbCdEf0123456789 and hf_AbCdEf0123456789xyz") == \
        "tried [redacted] and [redacted]"
    assert redact("a risk-free task-based plan") == "a risk-free task-based plan"


def test_llama_cpp_reads_its_own_names(fake_server: FakeServer, tmp_path: Path, run_cli) -> None:
    """llama.cpp (found from GET /props) reads repeat_penalty and drops repetition_penalty, and
    returns log-probs only with top_logprobs: both are sent its way, and the record says so."""
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "What does the cat say?", "temperature": 0.7, '
                       '"repetition_penalty": 1.1, "seed": 3}')
    out = tmp_path / "r.jsonl"
    with fake_server("The cat says meow.", info={"/props": {"build_info": "b1"}}) as (address, seen):
        assert run_cli("generate", prompts, "--target", f"openai://{address}/v1", "--out", out,
                       "--no-progress", "--reference", "builtin") == 0
    body = next(s["body"] for s in seen if "body" in s)
    assert body["repeat_penalty"] == 1.1 and "repetition_penalty" not in body
    assert body["top_logprobs"] == 1
    (record,) = read_records(out)
    assert record.sent["server"] == "llama.cpp"
    assert set(record.sent["server_defaults"]) == {"top_p", "top_k", "min_p", "presence_penalty",
                                                   "frequency_penalty"}


def test_tgi_refuses_what_it_cannot_take(fake_server: FakeServer, tmp_path: Path, run_cli,
                                         capsys: pytest.CaptureFixture) -> None:
    """TGI's Messages API has no top_k: a request that sets it is refused, not sent to be
    silently dropped."""
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "What does the cat say?", "temperature": 0.7, "top_k": 5}')
    with fake_server("The cat says meow.", info={"/info": {"model_id": "m"}}) as (address, seen):
        code = run_cli("generate", prompts, "--target", f"openai://{address}/v1", "--out",
                       tmp_path / "r.jsonl", "--no-progress", "--reference", "builtin")
    assert code == 2 and not any("body" in s for s in seen)
    assert "TGI has no way to take top_k" in capsys.readouterr().err


def test_the_server_is_probed_once(fake_server: FakeServer, tmp_path: Path, run_cli) -> None:
    """Concurrent first requests share one probe (each used to open its own client, and left
    'Unclosed client session' warnings behind)."""
    with fake_server("The cat says meow.", info={"/version": {"version": "x"}}) as (address, seen):
        assert run_cli("generate", _prompts(tmp_path, 4), "--target", f"openai://{address}/v1",
                       "--out", tmp_path / "r.jsonl", "--no-progress", "--reference",
                       "builtin") == 0
    assert [s["get"] for s in seen if "get" in s] == ["/version"]


def test_a_stream_is_joined_and_an_error_frame_is_an_error(fake_server: FakeServer, tmp_path: Path,
                                                           run_cli) -> None:
    """?stream=1 joins the deltas (a character split across two chunks comes out whole) and the
    usage chunk; an error frame mid-stream makes the request an error record, never an output."""
    prompts = _prompts(tmp_path)
    frames = [_delta("The cat "), _delta("says mé"), _delta("ow.", "stop"),
              {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 6}}]
    out = tmp_path / "r.jsonl"
    with fake_server("unused", frames=frames) as (address, seen):
        assert run_cli("generate", prompts, "--target", f"openai://{address}/v1?stream=1",
                       "--out", out, "--no-progress", "--reference", "builtin") == 0
    assert seen[-1]["body"]["stream"] is True
    (record,) = read_records(out)
    assert record.output == "The cat says méow.<end_of_turn>" and record.finish_reason == "stop"
    assert record.usage is not None and record.usage.completion_tokens == 6
    broken = [_delta("The cat "), {"error": {"message": "engine died"}}]
    bad = tmp_path / "bad.jsonl"
    with fake_server("unused", frames=broken) as (address, _):
        assert run_cli("generate", prompts, "--target", f"openai://{address}/v1?stream=1",
                       "--out", bad, "--no-progress", "--reference", "builtin") == 1
    (record,) = read_records(bad)
    assert record.output == "" and "error frame in the stream after 8 characters" in record.error
    assert "engine died" in record.error


def test_a_streamed_stop_string_that_leaks_is_caught(fake_server: FakeServer, tmp_path: Path,
                                                     run_cli, check_json, check_named) -> None:
    """A test double for what vLLM cannot be made to do: a stream that lets a stop string
    spanning two chunks (". " + "Then") through. The stop-string check names it."""
    prompts = tmp_path / "p.json"
    prompts.write_text('{"prompt": "Tell me a story about the cat.", "temperature": 0.7, '
                       '"seed": 1, "stop": ". T"}')
    frames = [_delta("The quiet cat runs to the lake."), _delta(" Then it runs home.", "stop")]
    out = tmp_path / "r.jsonl"
    with fake_server("unused", frames=frames) as (address, _):
        assert run_cli("generate", prompts, "--target", f"openai://{address}/v1?stream=1",
                       "--out", out, "--no-progress", "--reference", "builtin") == 0
    code, summary = check_json(out, tmp_path)
    stops = check_named(summary, "stop strings")
    assert code == 1 and stops["verdict"] == "fail"
    assert "generated past a stop" in stops["findings"][0]["message"]


def test_a_field_the_target_cannot_send_is_refused_before_sending(tmp_path: Path, run_cli,
                                                                  capsys: pytest.CaptureFixture
                                                                  ) -> None:
    """hf-endpoint in chat mode sends bare messages: tools would be dropped, so a request with
    tools is bad input, named before any connection (the port here has no server)."""
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": "Add 1 and 2.", "tools": [{"type": "function",
                                   "function": {"name": "add", "parameters": {"type": "object"}}}]}))
    code = run_cli("generate", prompts, "--target", "hf-endpoint://127.0.0.1:9", "--out",
                   tmp_path / "r.jsonl", "--no-progress")
    assert code == 2 and "does not send tools" in capsys.readouterr().err

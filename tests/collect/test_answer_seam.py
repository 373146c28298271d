"""Every server answer is checked where it enters servecheck: one malformed field in one answer
fails that request with the field named (a ``TargetError``, an error record), never a traceback
and never text coerced from the wrong type ("Blue.7None"). So does a stream that stops before
the server said it was finished, and an answer larger than the target's ``max_body_mb``.

The servers are test doubles (aiohttp on 127.0.0.1): no real server can be made to break its
interface on demand. The targets, their HTTP client and the collector are real.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from servecheck.collect.collector import collect
from servecheck.collect.targets import open_target
from servecheck.errors import InputError, TargetError
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.formats.responses import read_records
from tests.collect.local_app import running

BROKE = "the server's answer broke the interface"
OPENAI = "?model=m&server=openai"  # no info endpoint probed, no /models asked


def request(text: str = "Hi.") -> Request:
    return Request("x", Conversation(contents=[Message(role="user", content=text)]),
                   Parameters(temperature=0.0, max_tokens=8))


def generate(spec: str, req: Request | None = None) -> Any:
    """One request through the target the spec opens, closed afterwards."""
    target = open_target(spec)

    async def one() -> Any:
        try:
            return await target.generate(req or request())
        finally:
            await target.aclose()

    return asyncio.run(one())


def refused(spec: str) -> TargetError:
    """The error one request through ``spec`` fails with: named, and not transient."""
    with pytest.raises(TargetError) as caught:
        generate(spec)
    assert not caught.value.transient, caught.value
    return caught.value


Handler = Callable[[web.Request], Any]


@contextmanager
def serving(free_ports, routes: dict[tuple[str, str], Handler]) -> Iterator[str]:
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, handler)
    with running(app, free_ports(1)[0]) as port:
        yield f"127.0.0.1:{port}"


def raw(body: str) -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type="application/json")
    return handler


def sse(frames: list[Any], done: bool = True) -> Handler:
    """``frames`` as Server-Sent Events (a str is sent as it is), then ``[DONE]`` if ``done``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            data = frame if isinstance(frame, str) else json.dumps(frame)
            await response.write(f"data: {data}\n\n".encode())
        if done:
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
    return handler


def chat(content: Any = "Blue.", logprobs: list[Any] | None = None, **choice: Any) -> dict:
    out: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                           "message": {"role": "assistant", "content": content}, **choice}
    if logprobs is not None:
        out["logprobs"] = {"content": logprobs}
    return {"choices": [out]}


def lp(x: Any, **extra: Any) -> dict:
    return {"token": "t", "logprob": x, **extra}


GOOD = [lp(-0.1), lp(-0.2), lp(-0.3)]

UNARY = [
    ("logprob-abc", chat(logprobs=[*GOOD, lp("abc")]),
     "choices[0].logprobs.content[3].logprob is 'abc', not a number"),
    ("logprob-null", chat(logprobs=[lp(None), *GOOD]),
     "choices[0].logprobs.content[0].logprob is None, not a number"),
    ("logprob-missing", chat(logprobs=[{"token": "t"}]),
     "choices[0].logprobs.content[0].logprob is missing (expected a number)"),
    ("top-logprobs-entry", chat(logprobs=[lp(-0.1, top_logprobs=["t"])]),
     "choices[0].logprobs.content[0].top_logprobs[0] is 't', not an object"),
    ("top-logprobs-value", chat(logprobs=[lp(-0.1, top_logprobs=[lp("x")])]),
     "choices[0].logprobs.content[0].top_logprobs[0].logprob is 'x', not a number"),
    ("positive-logprob", chat(logprobs=[lp(3.5)]),
     "choices[0].logprobs.content[0].logprob is 3.5, not a log-probability (≤ 0)"),
    ("more-logprobs-than-ids", chat(logprobs=GOOD, token_ids=[5]),
     "the record made of it is refused: output_logprobs has 3 values for 1 output_token_ids"),
    ("choices-missing", {"id": "x"}, "choices is missing (expected a list)"),
    ("choices-empty", {"choices": []}, "choices has 0 entries where 1 was asked for"),
    ("choice-a-string", {"choices": ["Blue."]}, "choices[0] is 'Blue.', not an object"),
    ("content-a-number", chat(content=7), "choices[0].message.content is 7, not a string"),
    ("content-null", chat(content=None), "choices[0].message.content is None, not a string"),
    ("finish-reason-a-number", chat(finish_reason=1),
     "choices[0].finish_reason is 1, not a string"),
    ("token-ids-strings", chat(token_ids=["oops"]),
     "choices[0].token_ids[0] is 'oops', not a whole number"),
    ("usage-negative", {**chat(), "usage": {"prompt_tokens": -3}},
     "usage.prompt_tokens is refused"),
    ("content-a-lone-surrogate", chat(content="Blue\ud800."),
     "output holds a lone surrogate: not valid Unicode text"),
    ("body-a-list", [chat()], "the body is [{'choices': "),
    ("body-not-json", "<html>502 Bad Gateway</html>", "the body is not JSON: '<html>502"),
]


@pytest.mark.parametrize("body,message", [c[1:] for c in UNARY], ids=[c[0] for c in UNARY])
def test_openai_unary_answer_that_breaks_the_interface(body: Any, message: str,
                                                      free_ports) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    with serving(free_ports, {("POST", "/v1/chat/completions"): raw(text)}) as address:
        error = refused(f"openai://{address}/v1{OPENAI}")
    assert BROKE in str(error) and message in str(error), error


def test_openai_completions_text_a_number(free_ports) -> None:
    body = {"choices": [{"index": 0, "text": 7, "finish_reason": "stop"}]}
    with serving(free_ports, {("POST", "/v1/completions"): raw(json.dumps(body))}) as address:
        error = refused(f"openai://{address}/v1{OPENAI}&mode=completions&template=builtin")
    assert f"{BROKE}: choices[0].text is 7, not a string" in str(error)


def delta(text: Any, finish: str | None = None, **choice: Any) -> dict:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish,
                         **choice}]}


STREAMS = [
    ("content-a-number", [delta("Blue"), delta(7, "stop")], True,
     "(stream chunk 2): " + BROKE + ": choices[0].delta.content is 7, not a string"),
    ("logprob-entry-a-string", [delta("Blue", logprobs={"content": ["x"]})], True,
     "choices[0].logprobs.content[0] is 'x', not an object"),
    ("logprob-abc", [delta("Blue", logprobs={"content": [lp("abc")]}), delta(".", "stop")], True,
     "choices[0].logprobs.content[0].logprob is 'abc', not a number"),
    ("chunk-a-list", [delta("Blue"), ["x"]], True,
     "(stream chunk 2): " + BROKE + ": the chunk is ['x'], not an object"),
    ("chunk-not-json", [delta("Blue"), "{oops"], True,
     "(stream frame 2): " + BROKE + ": the body is not JSON: '{oops'"),
    ("tool-call-index-a-string", [{"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": "a", "function": {"name": "f"}}]}}]}], True,
     "choices[0].delta.tool_calls[0].index is 'a', not a whole number"),
    ("no-finish-no-done", [delta("Blue"), delta(" sky")], False,
     "the stream ended before the server said it was finished: no finish_reason and no "
     "[DONE] after 2 chunk(s)"),
]


@pytest.mark.parametrize("frames,done,message", [c[1:] for c in STREAMS],
                         ids=[c[0] for c in STREAMS])
def test_openai_stream_that_breaks_the_interface(frames: list, done: bool, message: str,
                                                free_ports) -> None:
    with serving(free_ports, {("POST", "/v1/chat/completions"): sse(frames, done)}) as address:
        error = refused(f"openai://{address}/v1{OPENAI}&stream=1")
    assert message in str(error), error


@pytest.mark.parametrize("frames,done", [([delta("Blue."), delta("", "stop")], False),
                                         ([delta("Blue.")], True)],
                         ids=["finish-reason-without-done", "done-without-finish-reason"])
def test_a_stream_that_says_it_finished_is_an_answer(frames: list, done: bool,
                                                     free_ports) -> None:
    with serving(free_ports, {("POST", "/v1/chat/completions"): sse(frames, done)}) as address:
        record = generate(f"openai://{address}/v1{OPENAI}&stream=1")
    assert record.output == "Blue." and record.error is None


TRITON_CONFIG = {"name": "ensemble", "max_batch_size": 0,
                 "input": [{"name": n, "data_type": t} for n, t in [
                     ("text_input", "TYPE_STRING"), ("max_tokens", "TYPE_INT32"),
                     ("temperature", "TYPE_FP32"), ("stream", "TYPE_BOOL")]]}


def triton_routes(answer: Handler, stream: bool = False, config: dict | None = None
                  ) -> dict[tuple[str, str], Handler]:
    config = config or {**TRITON_CONFIG,
                        "model_transaction_policy": {"decoupled": stream}}
    return {("GET", "/v2/models/ensemble/config"): raw(json.dumps(config)),
            ("POST", f"/v2/models/ensemble/{'generate_stream' if stream else 'generate'}"):
                answer}


TRITON = "?template=builtin"

TRITON_UNARY = [
    ("output-ids-oops", {"text_output": "Blue.", "output_ids": ["oops"]},
     "output_ids[0] is 'oops', not a whole number"),
    ("text-output-mixed", {"text_output": ["Blue.", 7, None]},
     "text_output[1] is 7, not a string"),
    ("log-probs-abc", {"text_output": "Blue.", "output_log_probs": [-0.5, "abc"]},
     "output_log_probs[1] is 'abc', not a number"),
    ("no-text-no-ids", {"model_name": "ensemble"},
     "text_output and output_ids are both missing"),
    ("body-a-list", ["Blue."], "the body is ['Blue.'], not an object"),
    ("body-not-json", "Blue.", "the body is not JSON: 'Blue.'"),
]


@pytest.mark.parametrize("body,message", [c[1:] for c in TRITON_UNARY],
                         ids=[c[0] for c in TRITON_UNARY])
def test_triton_answer_that_breaks_the_interface(body: Any, message: str, free_ports) -> None:
    text = body if isinstance(body, str) else json.dumps(body)
    with serving(free_ports, triton_routes(raw(text))) as address:
        error = refused(f"triton://{address}/ensemble{TRITON}")
    assert BROKE in str(error) and message in str(error), error
    assert "Blue.7None" not in str(error)


def test_triton_config_that_breaks_the_interface(free_ports) -> None:
    config = {**TRITON_CONFIG, "input": [{"data_type": "TYPE_STRING"}]}
    with serving(free_ports, triton_routes(raw("{}"), config=config)) as address:
        error = refused(f"triton://{address}/ensemble{TRITON}")
    assert f"the config of model 'ensemble': {BROKE}: input[0].name is missing" in str(error)


def cut(frames: list[dict]) -> Handler:
    """A stream whose connection is dropped after ``frames``, with no end of the answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        for frame in frames:
            await response.write(f"data: {json.dumps(frame)}\n\n".encode())
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.close()
        return response
    return handler


TRITON_STREAMS = [
    ("text-output-a-number", sse([{"text_output": "Blue"}, {"text_output": 7}]),
     f"frame 2: {BROKE}: text_output[0] is 7, not a string"),
    ("output-ids-oops", sse([{"text_output": "Blue", "output_ids": [5]},
                             {"text_output": ".", "output_ids": ["oops"]}]),
     f"frame 2: {BROKE}: output_ids[0] is 'oops', not a whole number"),
    ("no-frame", sse([], done=False),
     "the stream ended before the server said it was finished: no response came"),
    ("connection-cut", cut([{"text_output": "Blue"}]),
     "the stream ended before the server said it was finished: the connection closed "
     "mid-answer after 1 frame(s)"),
]


@pytest.mark.parametrize("handler,message", [c[1:] for c in TRITON_STREAMS],
                         ids=[c[0] for c in TRITON_STREAMS])
def test_triton_stream_that_breaks_the_interface(handler: Handler, message: str,
                                                 free_ports) -> None:
    with serving(free_ports, triton_routes(handler, stream=True)) as address:
        error = refused(f"triton://{address}/ensemble{TRITON}")
    assert message in str(error), error


BIG = 2 << 20  # 2 MiB, over a cap of 1


def big_chat() -> Handler:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response(chat(content="x" * BIG))
    return handler


def big_stream(triton: bool = False) -> Handler:
    """Many small frames that only together pass the cap."""
    piece = "x" * (64 << 10)
    frame = {"text_output": piece} if triton else delta(piece)
    return sse([frame] * (BIG // len(piece)))


@pytest.mark.parametrize("spec,routes", [
    (f"openai://{{}}/v1{OPENAI}&max_body_mb=1", {("POST", "/v1/chat/completions"): big_chat()}),
    (f"openai://{{}}/v1{OPENAI}&max_body_mb=1&stream=1",
     {("POST", "/v1/chat/completions"): big_stream()}),
    (f"triton://{{}}/ensemble{TRITON}&max_body_mb=1",
     triton_routes(big_stream(triton=True), stream=True)),
], ids=["openai-unary", "openai-stream", "triton-stream"])
def test_an_answer_over_the_cap_is_refused(spec: str, routes: dict, free_ports) -> None:
    with serving(free_ports, routes) as address:
        error = refused(spec.format(address))
    assert "answer body over 1 MiB (raise with ?max_body_mb=N on the target)" in str(error)
    with serving(free_ports, routes) as address:  # raised: the same answer is read whole
        raised = spec.format(address).replace("max_body_mb=1", "max_body_mb=8")
        record = generate(raised)
    assert len(record.output) >= BIG


def test_max_body_mb_is_a_known_option() -> None:
    for spec in ("openai://h:1/v1?nope=1", "triton://h:1/m?nope=1&template=builtin",
                 "hf-endpoint://h:1?nope=1"):
        with pytest.raises(InputError, match="max_body_mb"):
            open_target(spec)
    with pytest.raises(InputError, match="max_body_mb must be a number of MiB > 0"):
        open_target("openai://h:1/v1?max_body_mb=0")


def test_the_run_goes_on_past_a_broken_answer(free_ports, tmp_path: Path) -> None:
    """One answer with a broken log-prob is one error record naming the field; the collector
    writes the others."""

    async def answer(request: web.Request) -> web.Response:
        body = await request.json()
        asked = body["messages"][-1]["content"]
        logprobs = [lp("abc")] if "colour" in asked else [lp(-0.25)]
        return web.json_response(chat(content=f"About: {asked}", logprobs=logprobs))

    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": ["Name a bird.", "Name a colour.", "Count to 3."],
                                   "temperature": 0.0, "max_tokens": 8}))
    out = tmp_path / "r.jsonl"
    with serving(free_ports, {("POST", "/v1/chat/completions"): answer}) as address:
        summary = collect(prompts, f"openai://{address}/v1{OPENAI}", out, show_progress=False,
                          retries=2)
    records = {r.conversations.contents[-1].content: r for r in read_records(out)}
    assert len(records) == 3 and summary.retried == 0  # not transient: asked once
    assert records["Name a colour."].error is not None
    assert (f"{BROKE}: choices[0].logprobs.content[0].logprob is 'abc', not a number"
            in records["Name a colour."].error)
    assert records["Name a bird."].output == "About: Name a bird."
    assert records["Count to 3."].error is None and records["Count to 3."].output_logprobs == [-0.25]

"""The bad inputs ``bad_inputs.py`` tries: ≥ 150 distinct mistakes a new user makes, across
generate, check, compare, probe, serve and schema. Each case writes what it needs under a fresh
folder and gives the command line, and the substring its error message must hold to name where
the problem is (the file, the line or record, the field or the flag).
"""

from __future__ import annotations

import contextlib
import io
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from servecheck.cli import main
from servecheck.servers.triton_host import free_ports


@dataclass(frozen=True)
class Case:
    command: str
    name: str
    build: Callable[[Path], list[str]]
    """Writes what the case needs under a fresh folder; returns the command line."""
    where: str
    """A substring the error message must hold: it names where the problem is."""


# --- building blocks ---------------------------------------------------------------------------

def user(text: str = "Hi.") -> dict:
    return {"role": "user", "content": text}


def record(**fields: object) -> dict:
    """A valid record of the built-in model, with ``fields`` replaced (``None`` removes one)."""
    base: dict = {"id": "r1", "conversations": {"contents": [user()]},
                  "parameters": {"temperature": 0.7, "max_tokens": 8},
                  "input": "<bos><start_of_turn>user\nHi.<end_of_turn>\n<start_of_turn>model\n",
                  "output": "Hello.<end_of_turn>"}
    for key, value in fields.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def params(**p: object) -> dict:
    return record(parameters={"temperature": 0.7, "max_tokens": 8, **p})


def write(folder: Path, name: str, content: object) -> Path:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


HELD: list[socket.socket] = []
"""Sockets that keep a port taken while the cases run (``taken_port``)."""


def taken_port() -> int:
    """A port a plain listening socket holds until the process ends."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    HELD.append(s)
    return s.getsockname()[1]


# --- generate: the prompts file, the target spec, the flags ------------------------------------

PROMPTS_RAW: list[tuple[str, str | bytes, str]] = [
    ("empty file", "", "file is empty"),
    ("only whitespace", "  \n\t\n", "file is empty"),
    ("trailing comma", '{"prompt": ["hi",]}', "line 1"),
    ("truncated JSON", '{"prompt": ["hi", "th', "line 1"),
    ("plain text", "hello there", "not valid JSON"),
    ("YAML instead of JSON", "prompt:\n  - hi\n", "line 1"),
    ("non-UTF-8 byte", b'{"prompt": "caf\xe9"}', "not UTF-8"),
    ("UTF-16 file", '{"prompt": "hi"}'.encode("utf-16"), "not UTF-8"),
    ("NUL bytes", b"\x00\x00\x00", "not valid JSON"),
    ("two JSON documents", '{"prompt": "a"}\n{"prompt": "b"}', "line 2"),
    ("a string at top level", '"hi"', "got str"),
    ("a lone surrogate in a prompt", '{"prompt": ["ok", "bad \\ud800"]}',
     "field 'prompt.1': a lone surrogate"),
    ("nested thousands deep", '{"prompt": "a", "chat_template_kwargs": {"x": '
     + "[" * 5000 + "]" * 5000 + "}}", "nested deeper than"),
    ("an integer of 5000 digits", '{"prompt": "a",\n "seed": ' + "9" * 5000 + "}",
     "line 2: a number of 5,000 digits"),
]

PROMPTS_JSON: list[tuple[str, object, str]] = [
    ("a number at top level", 3, "got int"),
    ("null at top level", None, "got NoneType"),
    ("empty list", [], "no variation blocks"),
    ("a list holding a number", [{"prompt": "hi"}, 3], "block 1"),
    ("a list of lists", [[{"prompt": "hi"}]], "block 0"),
    ("block without prompt", {"temperature": 0.5}, "field 'prompt'"),
    ("prompt empty list", {"prompt": []}, "field 'prompt'"),
    ("prompt a number", {"prompt": 5}, "field 'prompt.0'"),
    ("prompt null", {"prompt": None}, "field 'prompt.0'"),
    ("prompt a dict", {"prompt": {"text": "hi"}}, "field 'prompt.0"),
    ("field typo temprature", {"prompt": "hi", "temprature": 0.5}, "unknown field 'temprature'"),
    ("field typo top-p", {"prompt": "hi", "top-p": 0.9}, "unknown field 'top-p'"),
    ("two structures in one request", {"prompt": "hi", "response_format": {"type": "json_object"},
                                       "structured_outputs": {"regex": "a+"}}, "one structure"),
    ("structured_outputs key misspelt", {"prompt": "hi", "structured_outputs": {"jsn": {}}},
     "did you mean 'json'"),
    ("response_format type unknown", {"prompt": "hi", "response_format": {"type": "xml"}},
     "response_format must be"),
    ("temperature as string", {"prompt": "hi", "temperature": "0.7"}, "field 'temperature.0'"),
    ("temperature true", {"prompt": "hi", "temperature": True}, "field 'temperature.0'"),
    ("temperature Infinity", {"prompt": "hi", "temperature": float("inf")}, "field 'temperature.0'"),
    ("temperature NaN", {"prompt": "hi", "temperature": float("nan")}, "field 'temperature.0'"),
    ("temperature negative", {"prompt": "hi", "temperature": -1}, "field 'temperature"),
    ("temperature empty list", {"prompt": "hi", "temperature": []}, "field 'temperature'"),
    ("temperature nested list", {"prompt": "hi", "temperature": [[0.5]]}, "field 'temperature.0'"),
    ("top_p zero", {"prompt": "hi", "top_p": 0}, "field 'top_p"),
    ("top_p above one", {"prompt": "hi", "top_p": 1.5}, "field 'top_p"),
    ("top_p as string", {"prompt": "hi", "top_p": "0.9"}, "field 'top_p.0'"),
    ("top_k negative", {"prompt": "hi", "top_k": -1}, "field 'top_k"),
    ("top_k fractional", {"prompt": "hi", "top_k": 2.5}, "field 'top_k.0'"),
    ("top_k as string", {"prompt": "hi", "top_k": "40"}, "field 'top_k.0'"),
    ("top_k true", {"prompt": "hi", "top_k": True}, "field 'top_k.0'"),
    ("seed negative", {"prompt": "hi", "seed": -1}, "field 'seed"),
    ("seed 2^70", {"prompt": "hi", "seed": 2**70}, "field 'seed"),
    ("seed fractional", {"prompt": "hi", "seed": 1.5}, "field 'seed.0'"),
    ("seed as string", {"prompt": "hi", "seed": "42"}, "field 'seed.0'"),
    ("max_tokens zero", {"prompt": "hi", "max_tokens": 0}, "field 'max_tokens"),
    ("max_tokens negative", {"prompt": "hi", "max_tokens": -5}, "field 'max_tokens"),
    ("max_tokens as string", {"prompt": "hi", "max_tokens": "32"}, "field 'max_tokens.0'"),
    ("max_tokens as float", {"prompt": "hi", "max_tokens": 32.0}, "field 'max_tokens.0'"),
    ("repetition_penalty zero", {"prompt": "hi", "repetition_penalty": 0}, "field 'repetition_penalty"),
    ("repetition_penalty Infinity", {"prompt": "hi", "repetition_penalty": float("inf")},
     "repetition_penalty.0"),
    ("presence_penalty NaN", {"prompt": "hi", "presence_penalty": float("nan")}, "presence_penalty.0"),
    ("frequency_penalty a word", {"prompt": "hi", "frequency_penalty": "x"}, "frequency_penalty.0"),
    ("min_p above one", {"prompt": "hi", "min_p": 2}, "field 'min_p"),
    ("system_prompt a number", {"prompt": "hi", "system_prompt": 3}, "field 'system_prompt.0'"),
    ("empty conversation", {"prompt": [[]]}, "at least one turn"),
    ("conversation starts with model",
     {"prompt": [[{"role": "model", "content": "a"}, user("b")]]}, "must start with a user turn"),
    ("turns do not alternate", {"prompt": [[user("a"), user("b")]]}, "turns 0 and 1"),
    ("conversation ends with model",
     {"prompt": [[user("a"), {"role": "model", "content": "b"}]]}, "must end with a user turn"),
    ("role typo usr", {"prompt": [[{"role": "usr", "content": "a"}]]}, "prompt.0.0.role"),
    ("role missing", {"prompt": [[{"content": "a"}]]}, "prompt.0.0.role"),
    ("content missing", {"prompt": [[{"role": "user"}]]}, "prompt.0.0.content"),
    ("content a number", {"prompt": [[{"role": "user", "content": 3}]]}, "prompt.0.0.content"),
    ("extra key in a turn", {"prompt": [[{"role": "user", "content": "a", "name": "x"}]]},
     "prompt.0.0.name"),
    ("system turn in the middle",
     {"prompt": [[user("a"), {"role": "system", "content": "s"}, user("c")]]},
     "a system turn may only come first"),
    ("system turn and system_prompt",
     {"prompt": [[{"role": "system", "content": "s"}, user("c")]], "system_prompt": "t"},
     "system_prompt is set too"),
    ("temperature 1e-300", {"prompt": "hi", "temperature": [0, 1e-300]},
     "field 'temperature': a temperature of 1e-300 is under 1e-05"),
    ("a matrix of 10^9 requests", {"prompt": [f"p{k}" for k in range(1000)],
                                   "seed": list(range(1000)), "max_tokens": list(range(1, 1001))},
     "over the limit of 1,000,000 (raise it with --max-requests N)"),
]

TARGETS: list[tuple[str, str, str]] = [
    ("unknown scheme", "tgi://127.0.0.1:8080", "unknown target"),
    ("no scheme", "127.0.0.1:8000", "unknown target"),
    ("empty target", "", "unknown target"),
    ("unknown fault", "hf:builtin?fault=nope", "unknown fault"),
    ("unknown option", "hf:builtin?colour=red", "unknown option"),
    ("option without =", "hf:builtin?fualt", "without a value"),
    ("option with empty value", "hf:builtin?fault=", "without a value"),
    ("hf path missing", "hf:/does/not/exist", "not a folder"),
    ("triton port out of range", "triton://127.0.0.1:99999/ensemble", "port"),
    ("triton port not a number", "triton://127.0.0.1:abc/ensemble", "port"),
    ("triton port zero", "triton://127.0.0.1:0/ensemble", "port"),
    ("triton without model", "triton://127.0.0.1:8000", "HOST:PORT/MODEL"),
    ("triton without port", "triton://127.0.0.1/ensemble", "HOST:PORT/MODEL"),
    ("triton unknown option", "triton://127.0.0.1:1/ensemble?colour=red", "unknown option"),
    ("triton without reference", "triton://127.0.0.1:1/ensemble", "needs the reference"),
    ("triton bad concurrency", "triton://127.0.0.1:1/ensemble?template=builtin&concurrency=0",
     "concurrency"),
    ("triton bad stream value", "triton://127.0.0.1:1/ensemble?template=builtin&stream=maybe",
     "bad option value"),
    ("openai without host", "openai://", "openai://"),
    ("openai port out of range", "openai://127.0.0.1:70000", "port"),
    ("openai unknown option", "openai://127.0.0.1:1?colour=red", "unknown option"),
    ("openai timeout NaN", "openai://127.0.0.1:1?timeout=nan", "timeout"),
    ("openai timeout negative", "openai://127.0.0.1:1?timeout=-1", "timeout"),
    ("openai completions without reference", "openai://127.0.0.1:1?mode=completions",
     "needs the reference"),
    ("hf-endpoint unknown option", "hf-endpoint://127.0.0.1:1?colour=red", "unknown option"),
]


def generate_cases() -> list[Case]:
    cases = []
    for name, raw, where in PROMPTS_RAW:
        cases.append(Case("generate", f"prompts: {name}", lambda d, raw=raw: [
            "generate", str(write(d, "prompts.json", raw)), "--target", "hf:builtin",
            "--out", str(d / "r.json")], where))
    for name, obj, where in PROMPTS_JSON:
        cases.append(Case("generate", f"prompts: {name}", lambda d, obj=obj: [
            "generate", str(write(d, "prompts.json", obj)), "--target", "hf:builtin",
            "--out", str(d / "r.json")], where))
    for name, spec, where in TARGETS:
        cases.append(Case("generate", f"target: {name}", lambda d, spec=spec: [
            "generate", str(write(d, "p.json", {"prompt": "hi"})), "--target", spec,
            "--out", str(d / "r.json")], where))
    hi = {"prompt": "hi", "max_tokens": 2}
    cases += [
        Case("generate", "prompts file missing", lambda d: [
            "generate", str(d / "nope.json"), "--target", "hf:builtin", "--out", str(d / "r")],
            "file not found"),
        Case("generate", "prompts is a directory", lambda d: [
            "generate", str(d), "--target", "hf:builtin", "--out", str(d / "r.json")],
            "is a directory"),
        Case("generate", "--out is a directory", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "hf:builtin", "--out", str(d)],
            "--out"),
        Case("generate", "--target missing", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--out", str(d / "r.json")], "--target"),
        Case("generate", "--retries negative", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "hf:builtin", "--out",
            str(d / "r.json"), "--retries", "-1"], "--retries"),
        Case("generate", "--retries not a number", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "hf:builtin", "--out",
            str(d / "r.json"), "--retries", "abc"], "--retries"),
        Case("generate", "--reference missing folder", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "openai://127.0.0.1:1",
            "--reference", "/does/not/exist", "--out", str(d / "r.json")], "/does/not/exist"),
        Case("generate", "--reference broken template", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target",
            f"openai://127.0.0.1:1?mode=completions&template={broken_checkpoint(d)}",
            "--out", str(d / "r.json")], "chat template"),
        Case("generate", "--reference unsafe template", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target",
            f"hf:{broken_checkpoint(d, HOSTILE)}", "--out", str(d / "r.json")], "chat template"),
        Case("generate", "dead server (refused)", lambda d: [
            "generate", str(write(d, "p.json", {"prompt": [f"q{k}" for k in range(12)]})),
            "--target", f"openai://127.0.0.1:{dead_port()}/v1", "--retries", "0",
            "--out", str(d / "r.json")], "the server is gone"),
        Case("generate", "resume with another target", lambda d: resumed_with_other(d),
             "another target"),
        Case("generate", "credentials in the target URL", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target",
            "openai://alice:Sup3rSecretPw@127.0.0.1:9/v1", "--out", str(d / "r.json")],
            "openai://[redacted]@127.0.0.1:9/v1: credentials in the target spec"),
        Case("generate", "target: max_body_mb zero", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target",
            "openai://127.0.0.1:9/v1?max_body_mb=0", "--out", str(d / "r.json")],
            "max_body_mb must be"),
        Case("generate", "another generate writing the same --out", lambda d: second_writer(d),
             "is writing this file"),
        Case("generate", "--max-requests zero", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "hf:builtin", "--out",
            str(d / "r.json"), "--max-requests", "0"], "--max-requests"),
        Case("generate", "--max-requests under the matrix", lambda d: [
            "generate", str(write(d, "p.json", {"prompt": ["a", "b"], "seed": [1, 2]})),
            "--target", "hf:builtin", "--out", str(d / "r.json"), "--max-requests", "3"],
            "the matrix expands to 4 requests, over the limit of 3"),
        Case("generate", "--reference template with a huge power", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target",
            f"hf:{broken_checkpoint(d, POWER)}", "--out", str(d / "r.json")],
            "computes an integer over"),
        Case("generate", "--template-timeout zero", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "hf:builtin", "--out",
            str(d / "r.json"), "--template-timeout", "0"], "--template-timeout"),
        Case("generate", "--out holds garbage", lambda d: [
            "generate", str(write(d, "p.json", hi)), "--target", "hf:builtin", "--out",
            str(write(d, "r.jsonl", "garbage\n{}\n"))], "r.jsonl"),
    ]
    return cases


HOSTILE = "{{ cycler.__init__.__globals__.os.system('true') }}"
ECHO = "{% for m in messages %}{{ m.content }}{% endfor %}"
POWER = "{{ 10 ** (10 ** 10) }}" + ECHO
"""Minutes in one C call (at compile time: Jinja folds constants), before issue 29."""
REPEAT = "{{ 'x' * 10**10 }}" + ECHO
"""10 GB asked for at once, before issue 29."""
SLOW = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}" + ECHO


def broken_checkpoint(folder: Path, template: str = "{% for m in messages %}{{ m.content }") -> str:
    """A copy of the built-in tokenizer with ``template`` as its chat template."""
    from servecheck import Reference

    ckpt = folder / "ckpt"
    if not ckpt.exists():
        Reference("builtin").tokenizer.save_pretrained(ckpt)
        (ckpt / "config.json").write_text("{}")
        (ckpt / "chat_template.jinja").write_text(template)
    return str(ckpt)


def resumed_with_other(folder: Path) -> list[str]:
    prompts = write(folder, "p.json", {"prompt": "hi", "max_tokens": 2})
    out = folder / "r.json"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        main(["generate", str(prompts), "--target", "hf:builtin", "--out", str(out),
              "--no-progress"])
    return ["generate", str(prompts), "--target", "hf:builtin?fault=double-bos", "--out", str(out)]


# --- check: the responses file, the reference, the flags ---------------------------------------

def contents(*turns: dict) -> dict:
    return {"contents": list(turns)}


RESPONSES_RAW: list[tuple[str, str | bytes, str]] = [
    ("empty file", "", "file is empty"),
    ("only whitespace", "\n \n", "file is empty"),
    ("truncated array", '[{"conversations": {"contents": [{"role": "user", "con', "line 1 column"),
    ("garbage line in the middle", json.dumps(record()) + "\nnot json\n" + json.dumps(
        record(id="r2")) + "\n", "line 2"),
    ("garbage last line with newline", json.dumps(record()) + "\n}}}\n", "line 2"),
    ("plain text", "hello", "not JSON"),
    ("non-UTF-8 byte", b'{"conversations": "\xff"}\n', "not UTF-8"),
    ("UTF-16 file", json.dumps(record()).encode("utf-16"), "not UTF-8"),
    ("only brackets", "[\n]\n", "no records"),
    ("a number at top level", "3\n", "not JSON"),
    ("a list of numbers", "[1, 2]", "record 0"),
    ("a list of strings", '["a"]', "record 0"),
    ("a record that is a list", "[[1]]\n", "record 0"),
    ("an object of records", '{"r1": {"conversations": {}}}\n', "line 1"),
    ("a lone surrogate in an output", json.dumps(record()) + "\n" + json.dumps(
        record(id="r2")).replace("Hello.", "Hel\\ud800lo.") + "\n",
     "line 2: field 'output': a lone surrogate (\\ud800) at character 3"),
    ("a lone surrogate in an id", json.dumps(record()).replace('"r1"', '"r\\udc00"') + "\n",
     "line 1: field 'id': a lone surrogate"),
    ("nested thousands deep", json.dumps(record()) + "\n" + "[" * 5000 + "]" * 5000 + "\n",
     "line 2: nested deeper than 100 levels"),
    ("an integer of 5000 digits", json.dumps(record()) + "\n" + json.dumps(record())[:-1]
     + ', "sent": {"x": ' + "9" * 5000 + "}}\n", "line 2: a number of 5,000 digits"),
    ("an array nested thousands deep", "[\n" + json.dumps(record()) + ",\n" + "[" * 5000
     + "]" * 5000 + "\n]\n", "line 3: nested deeper than 100 levels"),
]

RECORDS: list[tuple[str, dict, str]] = [
    ("conversations missing", record(conversations=None), "field 'conversations'"),
    ("conversations a string", record(conversations="hi"), "field 'conversations'"),
    ("contents empty", record(conversations=contents()), "conversations.contents"),
    ("role typo", record(conversations=contents({"role": "usr", "content": "Hi."})),
     "conversations.contents.0.role"),
    ("content a number", record(conversations=contents({"role": "user", "content": 3})),
     "conversations.contents.0.content"),
    ("turns do not alternate", record(conversations=contents(user("a"), user("b"))),
     "record r1"),
    ("conversation starts with model",
     record(conversations=contents({"role": "model", "content": "a"}, user("b"))), "record r1"),
    ("output a number", record(output=3), "field 'output'"),
    ("input a list", record(input=["a"]), "field 'input'"),
    ("id a number", record(id=7), "field 'id'"),
    ("unknown field", record(outputs="x"), "unknown field 'outputs'"),
    ("unknown parameter", params(temp=0.5), "unknown field 'parameters.temp'"),
    ("temperature as string", params(temperature="0.7"), "parameters.temperature"),
    ("temperature true", params(temperature=True), "parameters.temperature"),
    ("temperature Infinity", params(temperature=float("inf")), "parameters.temperature"),
    ("temperature NaN", params(temperature=float("nan")), "parameters.temperature"),
    ("temperature negative", params(temperature=-0.5), "parameters.temperature"),
    ("top_p above one", params(top_p=1.2), "parameters.top_p"),
    ("top_k fractional", params(top_k=4.5), "parameters.top_k"),
    ("top_k as string", params(top_k="4"), "parameters.top_k"),
    ("seed 2^70", params(seed=2**70), "parameters.seed"),
    ("seed negative", params(seed=-1), "parameters.seed"),
    ("max_tokens zero", params(max_tokens=0), "parameters.max_tokens"),
    ("min_p NaN", params(min_p=float("nan")), "parameters.min_p"),
    ("parameters a list", record(parameters=[0.7]), "field 'parameters'"),
    ("parameters.prompt disagrees", params(prompt="something else"), "parameters.prompt"),
    ("parameters.system_prompt disagrees", params(system_prompt="be terse"),
     "parameters.system_prompt"),
    ("finish_reason unknown", record(finish_reason="eos"), "field 'finish_reason'"),
    ("schema_version from the future", record(schema_version=2), "field 'schema_version'"),
    ("schema_version as string", record(schema_version="1"), "field 'schema_version'"),
    ("output ids negative", record(output_token_ids=[5, -3]), "output_token_ids[1]"),
    ("output ids out of vocabulary", record(output_token_ids=[5, 10**7]), "output_token_ids[1]"),
    ("output ids strings", record(output_token_ids=["5"]), "output_token_ids.0"),
    ("output ids floats", record(output_token_ids=[5.0]), "output_token_ids.0"),
    ("prompt ids out of vocabulary", record(prompt_token_ids=[2, 10**7]), "prompt_token_ids[1]"),
    ("prompt ids a string", record(prompt_token_ids="2 3"), "field 'prompt_token_ids'"),
    ("log-probs longer than ids", record(output_token_ids=[5, 6], output_logprobs=[-1.0] * 5),
     "output_logprobs has 5 values for 2"),
    ("log-probs positive", record(output_logprobs=[-0.1, 0.7]), "output_logprobs[1]"),
    ("log-probs NaN", record(output_logprobs=[float("nan")]), "output_logprobs"),
    ("log-probs strings", record(output_logprobs=["-0.1"]), "output_logprobs.0"),
    ("timing without latency", record(timing={"started_at": "now"}), "timing.latency_s"),
    ("sent a string", record(sent="x"), "field 'sent'"),
    ("error a number", record(error=500), "field 'error'"),
    ("temperature 1e-300", params(temperature=1e-300), "field 'parameters.temperature': a "
                                                       "temperature of 1e-300 is under 1e-05"),
]


def check(d: Path, content: object, *flags: str, name: str = "r.jsonl") -> list[str]:
    return ["check", str(write(d, name, content)), "--reference", "builtin", "--no-progress",
            *flags]


_HELD: list[object] = []
"""Locks a case holds while its command runs (the other writer of ``second_writer``)."""


def second_writer(d: Path) -> list[str]:
    """Another generate holds ``--out``'s lock: taken here, in this process, on its own open
    file (flock locks one open file, so the command's own attempt is refused as another
    process's would be)."""
    from servecheck.formats.output_lock import OutputLock

    out = d / "r.jsonl"
    _HELD.clear()
    lock = OutputLock(out)
    lock.acquire()
    _HELD.append(lock)
    return ["generate", str(write(d, "p.json", {"prompt": "hi", "max_tokens": 2})), "--target",
            "hf:builtin", "--out", str(out)]


def shared_state(d: Path) -> list[str]:
    state = d / "state"
    state.mkdir()
    state.chmod(0o777)
    return check(d, jsonl(record(), record(id="r2")), "--records-per-chunk", "1", "--state",
                 str(state))


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


FLAGS: list[tuple[str, list[str], str]] = [
    ("--alpha zero", ["--alpha", "0"], "--alpha"),
    ("--alpha above one", ["--alpha", "1.5"], "--alpha"),
    ("--alpha NaN", ["--alpha", "nan"], "--alpha"),
    ("--alpha a word", ["--alpha", "small"], "--alpha"),
    ("--logit-tolerance negative", ["--logit-tolerance", "-1"], "--logit-tolerance"),
    ("--logit-tolerance infinite", ["--logit-tolerance", "inf"], "--logit-tolerance"),
    ("--numerics fp4", ["--numerics", "fp4"], "--numerics"),
    ("--dtype int8", ["--dtype", "int8"], "--dtype"),
    ("--device cuda without a GPU", ["--device", "cuda"], "--device cuda"),
    ("--penalty-scope unknown", ["--penalty-scope", "all"], "--penalty-scope"),
    ("--max-record-mb zero", ["--max-record-mb", "0"], "--max-record-mb"),
    ("--json is a directory", ["--json", "/tmp"], "--json"),
    ("--report is a directory", ["--report", "/tmp"], "--report"),
    ("--junit is a directory", ["--junit", "/tmp"], "--junit"),
    ("unknown flag", ["--colour"], "--colour"),
]


def check_cases() -> list[Case]:
    cases = []
    for name, raw, where in RESPONSES_RAW:
        cases.append(Case("check", f"responses: {name}", lambda d, raw=raw: check(d, raw), where))
    for name, rec, where in RECORDS:
        cases.append(Case("check", f"record: {name}", lambda d, rec=rec: check(d, jsonl(rec)),
                          where))
    for name, flags, where in FLAGS:
        cases.append(Case("check", f"flag: {name}", lambda d, flags=flags: check(
            d, jsonl(record()), *flags), where))
    big = record(output="x" * (2 * 2**20))
    cases += [
        Case("check", "record over the size limit", lambda d: check(
            d, jsonl(record(), big), "--max-record-mb", "1"), "line 2"),
        Case("check", "record over the size limit (array)", lambda d: check(
            d, [record(), big], "--max-record-mb", "1", name="r.json"), "record 1"),
        Case("check", "record beyond the reference's context", lambda d: check(
            d, jsonl(record(), record(id="r2", output="word " * 3000))), "record r2"),
        Case("check", "the same record twice with one bad", lambda d: check(
            d, jsonl(record(), params(temperature="hot"))), "line 2"),
        Case("check", "responses missing", lambda d: [
            "check", str(d / "nope.jsonl"), "--reference", "builtin"], "file not found"),
        Case("check", "responses is a directory", lambda d: [
            "check", str(d), "--reference", "builtin"], "no responses shards"),
        Case("check", "--reference missing", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record())))], "--reference"),
        Case("check", "--reference no such folder", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record()))), "--reference", "/nope"], "/nope"),
        Case("check", "--reference a file", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record()))), "--reference",
            str(write(d, "model.bin", "x"))], "model.bin"),
        Case("check", "--reference without config.json", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record()))), "--reference", str(d)],
            "config.json missing"),
        Case("check", "--reference broken template", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record()))), "--reference",
            broken_checkpoint(d)], "chat template"),
        Case("check", "--reference unsafe template", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record()))), "--reference",
            broken_checkpoint(d, HOSTILE)], "chat template"),
        Case("check", "--reference template with a huge power", lambda d: check(
            d, jsonl(record()), "--reference", broken_checkpoint(d, POWER)),
            "computes an integer over 65,536 bits"),
        Case("check", "--reference template with a huge repeat", lambda d: check(
            d, jsonl(record()), "--reference", broken_checkpoint(d, REPEAT)),
            "(raise with --template-max-mb MB)"),
        Case("check", "--reference template that renders for minutes", lambda d: check(
            d, jsonl(record()), "--reference", broken_checkpoint(d, SLOW), "--template-timeout",
            "0.5"), "took over 0.5 s to render (raise with --template-timeout S)"),
        Case("check", "--template-max-mb zero", lambda d: check(
            d, jsonl(record()), "--template-max-mb", "0"), "--template-max-mb"),
        Case("check", "shard named with an escape sequence", lambda d: escaped_shard(d),
             "logs/shard\\x1b[31m.jsonl: not JSON"),
        Case("check", "--state writable by others", lambda d: shared_state(d),
             "writable by group or others"),
        Case("check", "--json under a regular file", lambda d: check(
            d, jsonl(record()), "--json", str(write(d, "f", "x") / "s.json")),
            "s.json: cannot write (Not a directory)"),
        Case("check", "--junit on a full disk", lambda d: check(
            d, jsonl(record()), "--junit", "/dev/full"), "cannot write (No space left"),
        Case("check", "garbage Parquet shard", lambda d: check(
            d, "garbage\n", name="r.parquet"), "r.parquet: not a Parquet file ("),
        Case("check", "--reference template without the message", lambda d: [
            "check", str(write(d, "r.jsonl", jsonl(record()))), "--reference",
            broken_checkpoint(d, "constant")], "chat template"),
    ]
    return cases


def escaped_shard(d: Path) -> list[str]:
    """A shard whose name holds ESC: printed as ``\\x1b``, one line, no terminal colours."""
    (d / "logs").mkdir()
    write(d / "logs", "shard\x1b[31m.jsonl", "garbage\n")
    return ["check", str(d / "logs"), "--reference", "builtin", "--no-progress"]


# --- compare, probe, serve, schema -------------------------------------------------------------

def compare(d: Path, *flags: str, content: object = None) -> list[str]:
    data = jsonl(record()) if content is None else content
    return ["compare", str(write(d, "r.jsonl", data)), "--reference", "builtin", "--no-progress",
            *flags]


def probe(d: Path, *flags: str) -> list[str]:
    return ["probe", "--reference", "builtin", *flags]


def other_cases() -> list[Case]:
    dead = f"triton://127.0.0.1:{dead_port()}/ensemble"
    return [
        Case("compare", "--sample zero", lambda d: compare(d, "--sample", "0"), "--sample"),
        Case("compare", "--sample negative", lambda d: compare(d, "--sample", "-2"), "--sample"),
        Case("compare", "--sample a word", lambda d: compare(d, "--sample", "all"), "--sample"),
        Case("compare", "--seed negative", lambda d: compare(d, "--seed", "-1"), "--seed"),
        Case("compare", "--target unknown scheme", lambda d: compare(d, "--target", "tgi://x"),
             "unknown target"),
        Case("compare", "--target dead server", lambda d: compare(d, "--target", dead),
             "127.0.0.1"),
        Case("compare", "--html is a directory", lambda d: compare(d, "--html", str(d)), "--html"),
        Case("compare", "--reference missing", lambda d: [
            "compare", str(write(d, "r.jsonl", jsonl(record())))], "--reference"),
        Case("compare", "--reference no such folder", lambda d: [
            "compare", str(write(d, "r.jsonl", jsonl(record()))), "--reference", "/nope"], "/nope"),
        Case("compare", "responses garbage", lambda d: compare(d, content="garbage"), "r.jsonl"),
        Case("compare", "responses truncated", lambda d: compare(d, content='[{"id": "a'),
             "line 1 column"),
        Case("compare", "record with bad temperature", lambda d: compare(
            d, content=jsonl(params(temperature="0.7"))), "parameters.temperature"),
        Case("compare", "--template-timeout negative", lambda d: compare(
            d, "--template-timeout", "-1"), "--template-timeout"),
        Case("compare", "responses with a lone surrogate", lambda d: compare(
            d, content=jsonl(record(input="x\udfffy"))), "field 'input': a lone surrogate"),
        Case("compare", "only failed records", lambda d: compare(
            d, content=jsonl(record(error="refused"))), "no answered record"),
        Case("probe", "--target missing", lambda d: probe(d), "--target"),
        Case("probe", "--target unknown scheme", lambda d: probe(d, "--target", "tgi://x"),
             "unknown target"),
        Case("probe", "--target dead server", lambda d: probe(d, "--target", dead), "127.0.0.1"),
        Case("probe", "--reference missing", lambda d: ["probe", "--target", dead], "--reference"),
        Case("probe", "--repeats one", lambda d: probe(d, "--target", dead, "--repeats", "1"),
             "--repeats"),
        Case("probe", "--seeds zero", lambda d: probe(d, "--target", dead, "--seeds", "0"),
             "--seeds"),
        Case("probe", "--levels one", lambda d: probe(d, "--target", dead, "--levels", "1"),
             "--levels"),
        Case("probe", "--max-tokens zero", lambda d: probe(d, "--target", dead, "--max-tokens",
                                                           "0"), "--max-tokens"),
        Case("probe", "--alpha two", lambda d: probe(d, "--target", dead, "--alpha", "2"),
             "--alpha"),
        Case("probe", "--json is a directory", lambda d: probe(d, "--target", dead, "--json",
                                                               str(d)), "--json"),
        Case("probe", "prompts file garbage", lambda d: probe(
            d, str(write(d, "p.json", "garbage")), "--target", dead), "p.json"),
        Case("probe", "prompts file with a bad field", lambda d: probe(
            d, str(write(d, "p.json", {"prompt": "hi", "top_k": "4"})), "--target", dead),
            "top_k"),
        Case("serve", "triton --http-port out of range", lambda d: [
            "serve", "triton", "--http-port", "99999"], "--http-port"),
        Case("serve", "triton --grpc-port a word", lambda d: [
            "serve", "triton", "--grpc-port", "abc"], "--grpc-port"),
        Case("serve", "triton --metrics-port zero", lambda d: [
            "serve", "triton", "--metrics-port", "0"], "--metrics-port"),
        Case("serve", "triton HTTP port taken", lambda d: serve_taken("--http-port"),
             "--http-port"),
        Case("serve", "triton gRPC port taken", lambda d: serve_taken("--grpc-port"),
             "--grpc-port"),
        Case("serve", "triton metrics port taken", lambda d: serve_taken("--metrics-port"),
             "--metrics-port"),
        Case("serve", "triton --model no such folder", lambda d: [
            "serve", "triton", "--model", "/nope", *free_triton_ports()], "/nope"),
        Case("serve", "triton --model broken template", lambda d: [
            "serve", "triton", "--model", broken_checkpoint(d), *free_triton_ports()],
            "chat template"),
        Case("serve", "triton --seed-name unknown", lambda d: [
            "serve", "triton", "--seed-name", "rng"], "--seed-name"),
        Case("serve", "triton --fail-after a word", lambda d: [
            "serve", "triton", "--fail-after", "x"], "--fail-after"),
        Case("serve", "endpoint with a Triton fault flag", lambda d: [
            "serve", "endpoint", "--echo"], "--echo"),
        Case("serve", "endpoint --http-port out of range", lambda d: [
            "serve", "endpoint", "--http-port", "65536"], "--http-port"),
        Case("serve", "endpoint --model no such folder", lambda d: [
            "serve", "endpoint", "--model", "/nope", "--http-port", str(dead_port())], "/nope"),
        Case("serve", "endpoint port taken", lambda d: [
            "serve", "endpoint", "--http-port", str(taken_port())], "--http-port"),
        Case("serve", "unknown server", lambda d: ["serve", "tgi"], "tgi"),
        Case("schema", "unknown format", lambda d: ["schema", "requests"], "requests"),
        Case("generate", "unknown command", lambda d: ["gen", "p.json"], "gen"),
    ]


def serve_taken(flag: str) -> list[str]:
    ports = dict(zip(("--http-port", "--grpc-port", "--metrics-port"),
                     (str(p) for p in free_ports(3)), strict=True))
    ports[flag] = str(taken_port())
    return ["serve", "triton", *(x for kv in ports.items() for x in kv)]


def free_triton_ports() -> list[str]:
    """Three distinct free ports (three separate ``dead_port`` calls can return one port twice,
    and the command then refuses the pair, not the case under test)."""
    http, grpc, metrics = free_ports(3)
    return ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]


def all_cases() -> list[Case]:
    return generate_cases() + check_cases() + other_cases()

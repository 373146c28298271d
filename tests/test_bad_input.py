"""Bad input: one clear message naming the file and the field, exit code 2, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from servecheck.reference.model import Reference


def _generate(run_cli, tmp_path: Path, prompts: object, raw: str | None = None) -> int:
    p = tmp_path / "prompts.json"
    p.write_text(raw if raw is not None else json.dumps(prompts))
    return run_cli("generate", p, "--target", "hf:builtin", "--out", tmp_path / "r.json",
                   "--no-progress")


@pytest.mark.parametrize(("prompts", "raw", "expect"), [
    (None, "", "file is empty"),
    (None, "{\"prompt\": [\"hi\",]}", "not valid JSON"),
    ({"prompt": []}, None, "field 'prompt'"),
    ({"prompt": "hi", "temperature": "hot"}, None, "field 'temperature.0"),
    ({"prompt": "hi", "temperature": []}, None, "field 'temperature'"),
    ({"prompt": "hi", "temprature": 0.5}, None, "unknown field 'temprature'"),
    ({"prompt": "hi", "top_p": 1.5}, None, "field 'top_p'"),
    ([], None, "no variation blocks"),
    ([{"prompt": "hi"}, 3], None, "block 1"),
    ({"prompt": [[{"role": "user", "content": "a"}, {"role": "model", "content": "b"}]]}, None,
     "must end with a user turn"),
    ({"prompt": [[{"role": "robot", "content": "a"}]]}, None, "field 'prompt"),
])
def test_bad_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], prompts: object,
                          raw: str | None, expect: str, run_cli) -> None:
    assert _generate(run_cli, tmp_path, prompts, raw) == 2
    err = capsys.readouterr().err
    assert expect in err
    assert "prompts.json" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r.json").exists()  # nothing half-done left behind


def test_missing_prompts_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    code = run_cli("generate", tmp_path / "nope.json", "--target", "hf:builtin", "--out",
                   tmp_path / "r.json")
    assert code == 2
    assert "nope.json: file not found" in capsys.readouterr().err


@pytest.mark.parametrize(("target", "expect"), [
    ("tgi://x", "unknown target"),
    ("hf:builtin?fault=nope", "unknown fault"),
    ("hf:builtin?colour=red", "unknown option"),
    ("triton://127.0.0.1:1/ensemble?colour=red", "unknown option(s) ['colour']"),
    ("openai://127.0.0.1:1?colour=red", "unknown option(s) ['colour']"),
    ("hf-endpoint://127.0.0.1:1?colour=red", "unknown option(s) ['colour']"),
    ("hf:/does/not/exist", "not a folder"),
])
def test_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str,
                    expect: str, run_cli, lite_prompts: Path) -> None:
    code = run_cli("generate", lite_prompts, "--target", target, "--out", tmp_path / "r.json",
                   "--no-progress")
    assert code == 2
    assert expect in capsys.readouterr().err


@pytest.mark.parametrize(("body", "expect"), [
    ("", "file is empty"),
    ("[1, 2]", "record 0: expected a record object"),
    ('[{"conversations": {"contents": []}, "input": "x", "output": "y"}]',
     "field 'conversations.contents'"),
    ('[{"conversations": {"contents": [{"role": "user", "content": "hi"}]}, "input": 3}]',
     "field 'input'"),
    ('[{"conversations": {"contents": [{"role": "user", "content": "hi"}]},'
     ' "parameters": {"temperature": 0, "beam": 4}}]', "unknown field 'parameters.beam'"),
    ('{"b": 2\n{"c": 3}\n', "line 1 is not valid JSON"),
])
def test_bad_responses_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str,
                            expect: str, run_cli) -> None:
    p = tmp_path / "responses.json"
    p.write_text(body)
    assert run_cli("check", p, "--reference", "builtin") == 2
    err = capsys.readouterr().err
    assert expect in err and "responses.json" in err and "Traceback" not in err


def test_reference_not_a_checkpoint(tmp_path: Path, lite_responses: Path,
                                    capsys: pytest.CaptureFixture[str], run_cli) -> None:
    (tmp_path / "empty").mkdir()
    assert run_cli("check", lite_responses, "--reference", tmp_path / "empty") == 2
    assert "not a Hugging Face checkpoint: config.json missing" in capsys.readouterr().err
    assert run_cli("check", lite_responses, "--reference", tmp_path / "missing") == 2
    assert "not a folder" in capsys.readouterr().err


# Regression cases of issue 15: inputs that once ended in a traceback with exit 1.

def _no_traceback(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_prompts_file_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    p = tmp_path / "prompts.json"
    p.write_bytes(b'{"prompt": ["caf\xe9"]}')  # Latin-1, as an old editor saves it
    assert run_cli("generate", p, "--target", "hf:builtin", "--out", tmp_path / "r.json") == 2
    err = _no_traceback(capsys)
    assert "prompts.json: not UTF-8: byte 0xe9 at offset 16 (line 1)" in err


def test_responses_file_not_utf8(tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"conversations": {"contents": []}, "output": "\xff"}\n')
    assert run_cli("check", p, "--reference", "builtin") == 2
    assert "r.jsonl: not UTF-8" in _no_traceback(capsys)


def test_a_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    from servecheck.formats.prompts import expand

    p = tmp_path / "prompts.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": ["hi"], "seed": [1, 2]}).encode())
    assert len(expand(p)) == 2


def test_a_directory_where_a_file_is_expected(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              run_cli, lite_prompts: Path) -> None:
    assert run_cli("generate", tmp_path, "--target", "hf:builtin", "--out", tmp_path / "r") == 2
    assert "is a directory, not a file" in _no_traceback(capsys)
    for args in (["generate", lite_prompts, "--target", "hf:builtin", "--out", tmp_path],
                 ["check", lite_prompts, "--reference", "builtin", "--report", tmp_path],
                 ["check", lite_prompts, "--reference", "builtin", "--json", tmp_path]):
        assert run_cli(*args) == 2  # argparse: before any work starts
        assert "is a directory; name a file to write" in _no_traceback(capsys)


@pytest.mark.parametrize(("prompts", "expect"), [
    ({"prompt": "hi", "seed": 2**70}, "field 'seed"),
    ({"prompt": "hi", "seed": -1}, "field 'seed"),
    ({"prompt": [[]]}, "at least one turn"),
    ({"prompt": [[{"role": "model", "content": "a"}, {"role": "user", "content": "b"}]]},
     "must start with a user turn"),
    ({"prompt": [[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]]},
     "turns 0 and 1 are both 'user'"),
    ({"prompt": [[{"role": "user", "content": "a"}, {"role": "system", "content": "b"},
                  {"role": "user", "content": "c"}]]}, "a system turn may only come first"),
])
def test_bad_values_and_conversations(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      prompts: object, expect: str, run_cli) -> None:
    assert _generate(run_cli, tmp_path, prompts) == 2
    err = _no_traceback(capsys)
    assert expect in err and "prompts.json" in err


@pytest.mark.parametrize("value", ["99999", "0", "abc"])
def test_bad_port(value: str, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    assert run_cli("serve", "triton", "--http-port", value) == 2
    assert "a port is" in _no_traceback(capsys)


@pytest.mark.parametrize(("field", "ids", "expect"), [
    ("output_token_ids", [5, 10**6], "output_token_ids[1] = 1000000 is not an id"),
    ("prompt_token_ids", [-3], "prompt_token_ids[0] = -3 is not an id"),
])
def test_token_ids_outside_the_vocabulary(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          field: str, ids: list[int], expect: str,
                                          run_cli) -> None:
    p = tmp_path / "r.jsonl"
    p.write_text(json.dumps({"id": "r7", "conversations": {"contents": [
        {"role": "user", "content": "hi"}]}, "parameters": {"temperature": 0}, "output": "x",
        field: ids}) + "\n")
    assert run_cli("check", p, "--reference", "builtin", "--no-progress") == 2
    err = _no_traceback(capsys)
    assert "record r7" in err and expect in err


@pytest.mark.slow  # 224 commands in one process (about 20 s)
def test_every_bad_input_in_the_table_holds(root: Path, tmp_path: Path) -> None:
    """``benchmarks/bad_inputs.py``: every case exits 2, with no traceback, naming where. The
    script writes the table into a scratch file here; ``docs/bad-inputs.md`` is its committed
    run."""
    out = tmp_path / "bad-inputs.md"
    run = subprocess.run([sys.executable, "benchmarks/bad_inputs.py", "--check", "--out", str(out)],
                         cwd=root, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr[-4000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ") and
            line.count("|") >= 6 and "bad input" not in line]
    assert len(rows) >= 150 and not any("| **no** |" in row for row in rows)


@pytest.mark.slow  # starts check twice and interrupts it
@pytest.mark.parametrize("after_s", [3.0, 8.0])  # loading, teacher forcing
def test_ctrl_c_stops_check_at_every_stage(after_s: float, root: Path, tmp_path: Path,
                                           lite_records) -> None:
    import signal
    import time

    records = [r.model_copy(update={"id": f"{r.id}-{k}"}) for k in range(120) for r in lite_records]
    path = tmp_path / "r.jsonl"
    path.write_text("".join(r.model_dump_json(exclude_none=True) + "\n" for r in records))
    # the libraries read once first: after the vLLM tests the page cache may have dropped
    # torch's shared objects, and a signal that lands in a cold import waits for the disk
    # (32 s once on CI), which is the disk's time, not this test's subject
    subprocess.run([sys.executable, "-c", "import torch, transformers, servecheck.cli"],
                   cwd=root, check=True, timeout=300)
    proc = subprocess.Popen([sys.executable, "-m", "servecheck.cli", "check", str(path),
                             "--reference", "builtin", "--no-progress"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(after_s)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    # a signal during a C extension's import (torch._C, seconds on a cold CI disk) lands when
    # that import returns: late by as much, never lost
    assert time.monotonic() - sent < 30, "Ctrl-C took effect late"
    # -2: Python ends by re-raising SIGINT after its own shutdown, which a shell reports as 130
    assert proc.returncode in (130, -2) and "interrupted" in err and "Traceback" not in err


def test_a_torn_last_line_is_a_warning_with_its_number(tmp_path: Path, lite_records, run_cli,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """What a run killed mid-write leaves: the last record half written, no newline. check reads
    the rest and says which line it left out; anything else broken is an error."""
    lines = [r.model_dump_json(exclude_none=True) for r in lite_records[:6]]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40])
    assert run_cli("check", path, "--reference", "builtin", "--no-progress") in (0, 1, 3)
    err = capsys.readouterr().err
    assert f"servecheck: warning: {path} line 6 is cut short" in err and "Traceback" not in err
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:40] + "\n")  # newline: not a tear
    assert run_cli("check", path, "--reference", "builtin", "--no-progress") == 2
    assert "line 6 is not valid JSON" in capsys.readouterr().err


# Issue 29: inputs that passed reading and crashed later, or ran for minutes.

GOOD = {"id": "r1", "conversations": {"contents": [{"role": "user", "content": "Hi."}]},
        "parameters": {"temperature": 0.7, "max_tokens": 8},
        "input": "<bos><start_of_turn>user\nHi.<end_of_turn>\n<start_of_turn>model\n",
        "output": "Hello.<end_of_turn>"}


@pytest.mark.parametrize(("raw", "expect"), [
    ('{"prompt": ["ok", "bad \\ud800"]}',
     "prompts.json: field 'prompt.1': a lone surrogate (\\ud800) at character 4: not valid "
     "Unicode text"),
    ('{"prompt": "a", "chat_template_kwargs": {"x": ' + "[" * 5000 + "]" * 5000 + "}}",
     "prompts.json: nested deeper than 100 levels"),
    ('{"prompt": "a",\n "seed": ' + "9" * 5000 + "}",
     "prompts.json line 2: a number of 5,000 digits (at most 4,300)"),
    ('{"prompt": "a", "temperature": [0, 1e-300]}',
     "prompts.json: field 'temperature': a temperature of 1e-300 is under 1e-05: write 0 for "
     "greedy (vLLM and others treat a temperature under 1e-5 as greedy)"),
])
def test_prompts_that_crashed_later_are_refused_when_read(tmp_path: Path, raw: str, expect: str,
                                                          capsys: pytest.CaptureFixture[str],
                                                          run_cli) -> None:
    """A lone surrogate once passed reading and crashed writing the records, leaving a 0-byte
    --out behind; the others were tracebacks."""
    assert _generate(run_cli, tmp_path, None, raw) == 2
    err = _no_traceback(capsys)
    assert expect in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize(("body", "expect"), [
    (json.dumps(GOOD) + "\n" + json.dumps({**GOOD, "id": "r2"}).replace("Hello.", "He\\ud800"),
     "r.jsonl line 2: field 'output': a lone surrogate (\\ud800) at character 2: not valid "
     "Unicode text"),
    (json.dumps(GOOD) + "\n" + "[" * 5000 + "]" * 5000, "r.jsonl line 2: nested deeper than 100"),
    (json.dumps(GOOD).replace('"temperature": 0.7', '"seed": ' + "9" * 5000),
     "r.jsonl line 1: a number of 5,000 digits"),
    (json.dumps({**GOOD, "parameters": {"temperature": 1e-300}}),
     "r.jsonl line 1: field 'parameters.temperature': a temperature of 1e-300 is under 1e-05"),
])
def test_responses_that_crashed_later_are_refused_when_read(tmp_path: Path, body: str,
                                                            expect: str, run_cli,
                                                            capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text(body + "\n")
    report = tmp_path / "report.html"
    assert run_cli("check", path, "--reference", "builtin", "--no-progress", "--report",
                   report) == 2
    err = _no_traceback(capsys)
    assert expect in err and len(err.strip().splitlines()) == 1


def test_a_matrix_over_the_limit_is_refused_and_the_flag_raises_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    prompts = {"prompt": [f"p{k}" for k in range(1000)], "seed": list(range(1000)),
               "max_tokens": list(range(1, 1001))}
    assert _generate(run_cli, tmp_path, prompts) == 2
    assert ("prompts.json: the matrix expands to 1,000,000,000 requests, over the limit of "
            "1,000,000 (raise it with --max-requests N)") in _no_traceback(capsys)
    p = tmp_path / "small.json"
    p.write_text(json.dumps({"prompt": ["a", "b"], "seed": [1, 2], "max_tokens": 1}))
    out = tmp_path / "r.jsonl"
    assert run_cli("generate", p, "--target", "hf:builtin", "--out", out, "--no-progress",
                   "--max-requests", "3") == 2
    assert "expands to 4 requests, over the limit of 3" in _no_traceback(capsys)
    assert run_cli("generate", p, "--target", "hf:builtin", "--out", out, "--no-progress",
                   "--max-requests", "4") == 0
    assert len(out.read_text().splitlines()) == 4


def test_a_slow_template_is_refused_and_the_flag_sets_the_bound(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    ckpt = tmp_path / "ckpt"
    Reference("builtin").tokenizer.save_pretrained(ckpt)
    (ckpt / "config.json").write_text("{}")
    (ckpt / "chat_template.jinja").write_text(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        "{% for m in messages %}{{ m.content }}{% endfor %}")
    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    assert run_cli("check", path, "--reference", ckpt, "--no-progress",
                   "--template-timeout", "0.5") == 2
    assert (f"servecheck: error: {ckpt}: the chat template took over 0.5 s to render (raise "
            f"with --template-timeout S)") in _no_traceback(capsys)


def test_control_characters_in_a_shard_name_stay_on_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "shard\x1b[31m.jsonl").write_text("garbage\n")
    (logs / "shard\n2.jsonl").write_text(json.dumps(GOOD) + "\n")
    assert run_cli("check", logs, "--reference", "builtin", "--no-progress") == 2
    err = _no_traceback(capsys)
    assert len(err.strip().splitlines()) == 1 and "\x1b" not in err
    assert f"{logs}/shard\\n2.jsonl" in err or f"{logs}/shard\\x1b[31m.jsonl" in err

"""``servecheck compare``: a reproducible pick, a replay on the ground truth, verdicts on both sides.

The lite responses come from the in-process reference with the requests' own seeds, so a replay
with the same seed would give the same text. The sampled records here get another seed, as if
another engine's RNG had drawn them: the texts then differ, and both sides must still be
plausible. One record with a doubled BOS must be implausible and make the exit code 1.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servecheck.formats.responses import read_records
from servecheck.workflows.compare import pick


def test_pick_is_reproducible(lite_responses: Path) -> None:
    records = read_records(lite_responses)
    first = pick(records, 5, seed=0)
    assert first == pick(records, 5, seed=0) and len(first) == 5 == len(set(first))
    assert first == sorted(first)
    assert pick(records, 5, seed=1) != first
    assert len(pick(records, 100, seed=0)) == len(records)
    records[first[0]].error = "timeout"
    assert first[0] not in pick(records, 100, seed=0)


@pytest.fixture(scope="module")
def compared(lite_responses: Path, tmp_path_factory: pytest.TempPathFactory,
             write_records) -> dict:
    out = tmp_path_factory.mktemp("compare")
    records = read_records(lite_responses)
    sampled = [r for r in records if not r.parameters.greedy
               and len(r.conversations.contents) == 1][:4]
    for r in sampled:
        r.parameters.seed = 777  # the "server" drew them with another RNG than the replay's
    faulty = next(r for r in records if r.parameters.greedy)
    faulty.input = "<bos>" + faulty.input
    faulty.prompt_token_ids = None
    path = write_records(out / "responses.json", [*sampled, faulty])
    html = out / "compare.html"
    return {"path": path, "html": html, "args": ("compare", path, "--reference", "builtin",
                                                 "--sample", "10", "--seed", "3", "--html", html,
                                                 "--no-progress")}


def test_compare_side_by_side(compared: dict, capsys: pytest.CaptureFixture[str], run_cli) -> None:
    code = run_cli(*compared["args"])
    out = capsys.readouterr().out
    assert code == 1, out  # the doubled BOS
    assert "5 record(s)" in out and "ground truth: hf:builtin" in out
    assert "served: 4/5 plausible · ground truth: 5/5 plausible" in out
    assert "template: double BOS" in out
    both = int(out.split("pair(s) with different texts, both plausible")[0].split("·")[-1])
    assert both >= 2, out  # different texts, and both could have come from a correct server
    page = compared["html"].read_text(encoding="utf-8")
    assert page.count('<div class="pair">') == 5
    assert page.count(">IMPLAUSIBLE</span>") == 1 and page.count(">PLAUSIBLE</span>") == 9
    assert 'class="sp del">&lt;bos&gt;</span>' in page  # the extra BOS, marked in the diff
    assert 'title="token 0: ' in page


def test_compare_is_reproducible(compared: dict, capsys: pytest.CaptureFixture[str],
                                 run_cli) -> None:
    run_cli(*compared["args"])
    first = capsys.readouterr().out
    run_cli(*compared["args"])
    assert capsys.readouterr().out == first


@pytest.mark.parametrize("args, message", [
    (("--sample", "0"), "argument --sample: expected a whole number ≥ 1"),
    (("--target", "nope:x"), "unknown target"),
    (("--reference", "/nonexistent"), "not a folder"),
])
def test_compare_bad_input(compared: dict, capsys: pytest.CaptureFixture[str], args: tuple,
                           message: str, run_cli) -> None:
    assert run_cli("compare", compared["path"], "--reference", "builtin", *args, "--no-progress") == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_compare_all_failed(tmp_path: Path, lite_responses: Path,
                            capsys: pytest.CaptureFixture[str], run_cli, write_records) -> None:
    records = read_records(lite_responses)[:2]
    for r in records:
        r.error, r.output = "connection refused", ""
    path = write_records(tmp_path / "failed.json", records)
    assert run_cli("compare", path, "--reference", "builtin", "--no-progress") == 2
    assert "no answered record to compare" in capsys.readouterr().err


def test_a_set_too_large_to_hold_is_sampled_from_the_stream(lite_responses: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the chunk size ``compare`` keeps positions, not records, and picks the same records
    (a file without retries streams in the order it is held)."""
    import servecheck.workflows.compare as compare_module

    held = [r.id for r in compare_module.sampled(lite_responses, 5, seed=3)]
    monkeypatch.setattr(compare_module, "RECORDS_PER_CHUNK", 4)
    assert [r.id for r in compare_module.sampled(lite_responses, 5, seed=3)] == held


HOSTILE = ("\x1b]0;pwned\x07\x1b]52;c;cHduZWQ=\x07\x1b]8;;http://evil.example/\x1b\\link"
           "\x1b]8;;\x1b\\\x1b[2J\rPASS\x9b1m\u202eevil <script>alert(1)</script>")


def test_compare_shows_hostile_output_without_obeying_it(
        lite_responses: Path, tmp_path: Path, run_cli, write_records,
        capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """A served output with terminal escapes (window title, clipboard, a hidden link, clearing
    the screen, overwriting the line, a C1 CSI, a bidi override), under a hostile id: the side by
    side shows each escape written out, the terminal obeys none, the page escapes the markup."""
    monkeypatch.setenv("FORCE_COLOR", "1")  # styled as for a real terminal
    record = next(r for r in read_records(lite_responses) if not r.parameters.greedy)
    record.id, record.output = f"id{HOSTILE}", f"{record.output}\n{HOSTILE}\nend"
    record.output_token_ids = record.output_logprobs = None
    path = write_records(tmp_path / "responses.json", [record])
    html = tmp_path / "compare.html"
    code = run_cli("compare", path, "--reference", "builtin", "--no-progress", "--html", html)
    out = capsys.readouterr().out
    assert code in (0, 1), out
    assert "\x1b[1m" in out or "\x1b[1;" in out  # servecheck's own styling reaches the terminal
    for payload in ("]0;pwned", "]52;c;cHduZWQ=", "]8;;http://evil.example/", "[2J"):
        assert "\\x1b" + payload in out and "\x1b" + payload not in out, payload
    for raw in ("\x07", "\x9b", "\r", "\u202e"):
        assert raw not in out, raw
    assert "\\rPASS" in out and "\\u202eevil" in out and "id\\x1b]0;pwned" in out
    page = html.read_bytes().decode("utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page

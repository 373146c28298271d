"""``servecheck compare --ids``: exactly the records asked for, by id, from a list, a text file
or the failing checks of a ``check --json`` summary; an id that names no record is bad input.

The ids are parsed and matched without a model first (``wanted``, ``select``); then the command
replays chosen records of the lite responses on the in-process reference.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.formats.conversation import Conversation, Message
from servecheck.formats.parameters import Parameters
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records
from servecheck.workflows.compare import Wanted, labelled, select, wanted


def _record(rid: str | None, **kw) -> ResponseRecord:
    return ResponseRecord(id=rid, conversations=Conversation(
        contents=[Message(role="user", content="Name a colour.")]),
        parameters=Parameters(temperature=1.0, seed=1), output="Blue.", **kw)


RECORDS = [_record("alpha-1"), _record(None), _record("beta-2"), _record("gamma-3"),
           _record("failed", error="timeout")]


@pytest.fixture()
def warned() -> Iterator[list[str]]:
    """servecheck's warnings while the test runs (the CLI prints each to stderr)."""
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("servecheck").addHandler(handler)
    yield seen
    logging.getLogger("servecheck").removeHandler(handler)


def test_ids_are_listed_text_or_a_summary(tmp_path: Path, warned: list[str]) -> None:
    assert wanted("beta-2, #1,beta-2,").labels == ["beta-2", "#1"]
    text = tmp_path / "ids.txt"
    text.write_text("gamma-3\n\n  alpha-1  \n#1\n", encoding="utf-8")
    assert wanted(f"@{text}").labels == ["gamma-3", "alpha-1", "#1"]
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"schema_version": 1, "verdict": "fail", "responses": "r.json",
                                   "checks": [
        {"name": "template", "verdict": "fail", "findings": [
            {"record": "gamma-3", "message": "double BOS"},
            {"record": "#1", "message": "double BOS"}], "findings_total": 3},
        {"name": "greedy", "verdict": "pass", "findings": [{"record": "alpha-1", "message": "x"}]},
        {"name": "fit", "verdict": "fail", "findings": [
            {"record": "T=1.0", "message": "a parameter group"},
            {"record": "gamma-3", "message": "again"},
            {"record": "failed", "message": "error: timeout"}]}]}), encoding="utf-8")
    asked = wanted(f"@{summary}")
    assert asked.labels == ["gamma-3", "#1", "T=1.0", "failed"] and asked.summary
    assert warned == [f"{summary} lists only the worst findings of check(s) 'template': the "
                      f"records of the others are not compared"]
    picked = select(labelled(RECORDS), asked, "r.json")
    assert [r.id for r in picked] == ["gamma-3", "#1"]  # the group and the failed one skipped
    assert warned[1] == (f"{summary}: skipped 1 label(s) that name no record of the file "
                         f"(parameter groups?): 'T=1.0'; 1 record(s) without an answer to "
                         f"compare (a failed request, or one decoded under a grammar no "
                         f"reference applies): 'failed'")


def test_records_come_in_the_order_asked() -> None:
    picked = select(labelled(RECORDS), wanted("gamma-3,alpha-1,#1"), "r.json")
    assert [r.id for r in picked] == ["gamma-3", "alpha-1", "#1"]
    assert [r.output for r in picked] == ["Blue."] * 3


@pytest.mark.parametrize("ids, message", [
    ("beta-2,bta-2,nope", "r.json: --ids: 2 id(s) name no record of the file: 'bta-2' (did you "
                          "mean 'beta-2'?), 'nope'"),
    ("#9", "r.json: --ids: 1 id(s) name no record of the file: '#9'"),
    ("failed", "r.json: --ids: none of the records --ids names can be compared"),
    (" , ", "--ids: --ids names no record"),
])
def test_ids_that_name_no_record_are_refused(ids: str, message: str) -> None:
    with pytest.raises(InputError) as e:
        select(labelled(RECORDS), wanted(ids), "r.json")
    assert str(e.value) == message


@pytest.mark.parametrize("content, message", [
    ({"verdict": "pass", "checks": [{"name": "template", "verdict": "pass", "findings": []}]},
     "the summary has no failing check that names a record"),
    ({"verdict": "fail"}, "not a `servecheck check --json` summary"),
    ("{oops", "cannot be read: Expecting property name"),
])
def test_a_summary_that_names_no_record_is_refused(tmp_path: Path, content, message: str) -> None:
    path = tmp_path / "summary.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    with pytest.raises(InputError) as e:
        wanted(f"@{path}")
    assert message in str(e.value) and str(e.value).startswith(f"{path}: --ids @FILE: ")
    with pytest.raises(InputError, match="No such file"):
        wanted(f"@{tmp_path / 'missing.json'}")


def test_a_summary_of_another_file_is_refused() -> None:
    elsewhere = Wanted(["zeta-9", "T=1.0"], "s.json", summary=True)  # no label is a record here
    with pytest.raises(InputError, match="2 id\\(s\\) name no record"):
        select(labelled(RECORDS), elsewhere, "r.json")


@pytest.fixture(scope="module")
def served(lite_responses: Path, tmp_path_factory: pytest.TempPathFactory, write_records
           ) -> dict:
    """Three sampled records drawn with another seed than the replay's, and a greedy one with a
    doubled BOS (the one ``check`` fails)."""
    out = tmp_path_factory.mktemp("compare-ids")
    records = read_records(lite_responses)
    sampled = [r for r in records if not r.parameters.greedy
               and len(r.conversations.contents) == 1][:3]
    for r in sampled:
        r.parameters.seed = 777
    faulty = next(r for r in records if r.parameters.greedy)
    faulty.input = "<bos>" + (faulty.input or "")
    faulty.prompt_token_ids = None
    path = write_records(out / "responses.json", [*sampled, faulty])
    return {"path": path, "dir": out, "sampled": [r.id for r in sampled], "faulty": faulty.id}


def _titles(out: str, ids: list[str]) -> list[str]:
    """The ids in the order their side-by-side tables appear."""
    return sorted(ids, key=lambda i: out.index(f"{i} · "))


def test_compare_replays_the_records_named(served: dict, run_cli,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    asked = [served["sampled"][2], served["faulty"]]
    code = run_cli("compare", served["path"], "--reference", "builtin", "--ids", ",".join(asked),
                   "--no-progress")
    out = capsys.readouterr().out
    assert code == 1, out  # the doubled BOS is implausible
    assert "2 record(s) of" in out and "(named by --ids)" in out
    assert _titles(out, asked) == asked
    for other in served["sampled"][:2]:
        assert f"{other} · " not in out
    assert "served: 1/2 plausible" in out and "template: double BOS" in out


def test_compare_replays_the_failures_of_a_check_summary(
        served: dict, run_cli, check_json, capsys: pytest.CaptureFixture[str]) -> None:
    code, summary = check_json(served["path"], served["dir"], "builtin")
    assert code == 1
    template = next(c for c in summary["checks"] if c["name"] == "template")
    assert template["verdict"] == "fail" and \
        [f["record"] for f in template["findings"]] == [served["faulty"]]
    capsys.readouterr()
    code = run_cli("compare", served["path"], "--reference", "builtin", "--ids",
                   f"@{served['dir'] / 'summary.json'}", "--no-progress")
    out = capsys.readouterr().out
    named = {f["record"] for c in summary["checks"] if c["verdict"] == "fail"
             for f in c["findings"]}
    replayed = [i for i in [*served["sampled"], served["faulty"]] if i in named]
    assert code == 1, out
    assert f"{len(replayed)} record(s) of" in out and "named by" in out and "summary.json" in out
    assert served["faulty"] in replayed and all(f"{i} · " in out for i in replayed)
    assert all(f"{i} · " not in out for i in served["sampled"] if i not in named)


def test_compare_ids_from_a_text_file(served: dict, run_cli, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    ids = tmp_path / "ids.txt"
    ids.write_text(f"{served['sampled'][1]}\n{served['sampled'][0]}\n", encoding="utf-8")
    code = run_cli("compare", served["path"], "--reference", "builtin", "--ids", f"@{ids}",
                   "--no-progress")
    out = capsys.readouterr().out
    assert code == 0, out
    assert "2 record(s) of" in out and f"(named by {ids})" in out
    assert _titles(out, served["sampled"][:2]) == [served["sampled"][1], served["sampled"][0]]


@pytest.mark.parametrize("args, message", [
    (("--ids", "{typo},nope"), "2 id(s) name no record of the file: '{typo}' (did you mean "
                               "'{id}'?), 'nope'"),
    (("--ids", "x", "--sample", "2"), "argument --sample: not allowed with argument --ids"),
])
def test_compare_refuses_ids_it_cannot_replay(served: dict, run_cli, args: tuple, message: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    rid = served["sampled"][0]
    typo = rid[:-1]
    args = tuple(a.format(typo=typo, id=rid) for a in args)
    assert run_cli("compare", served["path"], "--reference", "builtin", *args,
                   "--no-progress") == 2
    err = capsys.readouterr().err
    assert message.format(typo=typo, id=rid) in err and err.count("\n") == 1, err


def test_a_set_too_large_to_hold_is_picked_from_the_stream(lite_responses: Path, tmp_path: Path,
                                                           write_records,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the chunk size the records are streamed, not held: the same ones come back, an id
    missing is still refused with the closest one, and a record without id is ``#position``."""
    import servecheck.workflows.compare as compare_module

    records = read_records(lite_responses)
    records[5].id = None
    path = write_records(tmp_path / "responses.json", records)
    asked = f"{records[7].id},#5,{records[2].id}"
    held = select(labelled(path), wanted(asked), str(path))
    monkeypatch.setattr(compare_module, "RECORDS_PER_CHUNK", 4)
    streamed = select(labelled(path), wanted(asked), str(path))
    assert [r.id for r in streamed] == [r.id for r in held] == [records[7].id, "#5", records[2].id]
    assert [r.output for r in streamed] == [records[i].output for i in (7, 5, 2)]
    with pytest.raises(InputError, match=f"did you mean '{records[3].id}'"):
        select(labelled(path), wanted(records[3].id[1:]), str(path))


def test_a_record_decoded_under_a_grammar_is_never_picked() -> None:
    """No reference judges a record whose ``tool_choice`` forced a call: the random pick leaves
    it out (it used to pick it and fail with a KeyError), as ``--ids`` does."""
    from servecheck.workflows.compare import pick

    forced = _record("forced")
    forced.parameters.tool_choice = "required"
    assert pick([forced, *RECORDS[:2]], 10, seed=0) == [1, 2]
    with pytest.raises(InputError, match="decoded under a grammar"):
        pick([forced], 1, seed=0)
    with pytest.raises(InputError, match="none of the records --ids names can be compared"):
        select(labelled([forced]), wanted("forced"), "r.json")

"""A chunk's checks on a thread while the next chunk is scored (``workflows.finisher``): the calls
run in order, one at a time, the caller never runs more than ``behind`` ahead, an error reaches
the caller; and a chunked check made that way reports exactly what the chunks checked one after
another report, saves the same state and resumes from it.

The GPU is where the overlap is on by default; here ``SERVECHECK_OVERLAP=1`` turns it on over
the CPU's scoring (the same threads, locks and order), with each sequence scored alone so that
every record is scored alike whatever runs beside it. Deterministic (fixed seeds)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from servecheck.collect.collector import collect
from servecheck.workflows import gathered
from servecheck.workflows.finisher import Finisher


def test_calls_run_in_order_on_one_thread_and_the_caller_stays_within_its_bound() -> None:
    done: list[int] = []
    threads: set[str] = set()
    finisher = Finisher(True)
    for i in range(6):
        finisher.wait(behind=1)
        assert len(done) >= i - 1  # never more than one call left behind when the next goes in
        finisher.submit(lambda i=i: (time.sleep(0.01), done.append(i),
                                     threads.add(threading.current_thread().name)))
    finisher.wait()
    assert done == list(range(6)) and threads == {"servecheck-checks"}


def test_an_error_in_a_call_reaches_the_caller_and_stops_the_calls_after_it() -> None:
    done: list[str] = []
    finisher = Finisher(True)
    finisher.submit(lambda: done.append("a"))
    finisher.submit(lambda: 1 / 0)
    finisher.submit(lambda: done.append("c"))
    with pytest.raises(ZeroDivisionError):
        finisher.wait()
    assert done == ["a"]
    with pytest.raises(ZeroDivisionError):  # and at the next submit too: nothing runs past it
        finisher.submit(lambda: done.append("d"))


def test_a_stopped_finisher_ends_the_call_in_hand_and_runs_nothing_more() -> None:
    done: list[int] = []
    started = threading.Event()
    finisher = Finisher(True)
    finisher.submit(lambda: (started.set(), time.sleep(0.2), done.append(1)))
    finisher.submit(lambda: done.append(2))
    started.wait(5)
    finisher.stop()  # Ctrl-C while the first call runs: it ends, the second never starts
    assert done == [1] and finisher.unfinished == 0


def test_off_it_calls_at_once_in_the_callers_thread() -> None:
    seen: list[str] = []
    Finisher(False).submit(lambda: seen.append(threading.current_thread().name))
    assert seen == [threading.current_thread().name]


def _outputs_part(page: str) -> str:
    return page[page.index('<h2 id="template">'):page.index("</main>")]


@pytest.mark.slow  # 32 records collected, checked in 4 chunks three times
def test_checks_beside_the_next_chunks_scoring_report_what_one_after_another_reports(
        tmp_path: Path, lite_prompts: Path, check_json, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    out = tmp_path / "dropped.jsonl"
    collect(lite_prompts, "hf:builtin?fault=drop-system", out, show_progress=False)
    checked_on: list[str] = []
    checks = gathered.run_scored

    def run_scored(*args, **kwargs):
        checked_on.append(threading.current_thread().name)
        return checks(*args, **kwargs)

    monkeypatch.setattr(gathered, "run_scored", run_scored)
    runs = {}
    for overlap in ("0", "1"):
        monkeypatch.setenv("SERVECHECK_OVERLAP", overlap)
        where = tmp_path / overlap
        where.mkdir()
        runs[overlap] = check_json(out, where, "builtin", "--records-per-chunk", "10", "--state",
                                   where / "state", "--report", where / "r.html")
    (code, one_by_one), (code_overlapped, overlapped) = runs["0"], runs["1"]
    assert code == code_overlapped == 1 and overlapped["chunks"] == 4
    main = threading.current_thread().name
    assert checked_on == [main] * 4 + ["servecheck-checks"] * 4  # the overlap was on, off, then on
    assert overlapped == one_by_one  # every row, p-value, finding and the digest
    pages = [(tmp_path / o / "r.html").read_text() for o in ("0", "1")]
    assert _outputs_part(pages[0]) == _outputs_part(pages[1])
    saved = {o: sorted(p.name for p in (tmp_path / o / "state").iterdir()) for o in ("0", "1")}
    assert saved["0"] == saved["1"] == [f"chunk-0000{j}.json" for j in range(4)]
    # stopped before chunk 3 was saved: the overlapped rerun checks it alone, as before
    (tmp_path / "1" / "state" / "chunk-00002.json").unlink()
    code, resumed = check_json(out, tmp_path / "1", "builtin", "--records-per-chunk", "10",
                               "--state", tmp_path / "1" / "state")
    assert resumed["resumed_chunks"] == 3
    assert {**resumed, "resumed_chunks": 0} == {**overlapped, "resumed_chunks": 0}

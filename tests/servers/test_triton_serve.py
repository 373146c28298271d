"""``servecheck serve triton`` from the user's side: one line when it is ready (naming the models,
the ports and the log file), every model at one rate from the first request on, none of the
errors that every CPU-only start of tritonserver prints on the terminal (they stay in the log
file), and SIGTERM ends the whole process tree within 5 s.

The slow tests share one fresh server (``fresh_serve``): it is started, timed and stopped once,
and each test reads what it recorded. Rates are compared within that one run (the first requests
against the later ones), never against a fixed number, so a loaded machine slows both sides.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path

import pytest

MODELS = ("ensemble", "tensorrt_llm", "tensorrt_llm_bls")
ORDER = ("ensemble", "tensorrt_llm_bls", "tensorrt_llm", "ensemble")
"""The windows of requests, in order: the first is the fresh server's first requests."""
WINDOW = 32
READY = re.compile(r"^ready: .*$", re.MULTILINE)
TRITON_RECORD = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d", re.MULTILINE)


def _generate(port: int, model: str, i: int) -> None:
    """A short sampled completion through /generate, under the model's own input names."""
    llmapi = model == "tensorrt_llm"
    body = {"text_input": f"Request {i}: say hello.",
            "sampling_param_max_tokens" if llmapi else "max_tokens": 8,
            "sampling_param_temperature" if llmapi else "temperature": 0.8,
            "sampling_param_seed" if llmapi else "seed": i}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/generate",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=120) as answer:
        assert answer.status == 200


def _answering(port: int) -> list[str]:
    """The models whose ready endpoint says so now."""
    found = []
    for model in MODELS:
        with suppress(OSError), urllib.request.urlopen(
                f"http://127.0.0.1:{port}/v2/models/{model}/ready", timeout=2):
            found.append(model)
    return found


def _live() -> dict[int, int]:
    """Every process but the zombies, pid → parent pid."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        with suppress(OSError):
            text = Path(f"/proc/{name}/stat").read_text()
            fields = text[text.rindex(")") + 2:].split()
            if fields[0] != "Z":
                found[int(name)] = int(fields[1])
    return found


def _tree(pid: int) -> set[int]:
    live, found, todo = _live(), set(), [pid]
    while todo:
        found.add(here := todo.pop())
        todo += [child for child, parent in live.items() if parent == here]
    return found


@pytest.fixture(scope="module")
def fresh_serve(root: Path, free_ports, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One ``serve triton`` run: started, its ready line awaited (or, from a version without
    one, all models answering), ``WINDOW`` requests to each model of ``ORDER`` timed, SIGTERM
    sent and the process tree watched until it is gone. Returns what was seen."""
    ports = free_ports(3)
    terminal = tmp_path_factory.mktemp("serve") / "terminal.txt"
    args = [a for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports,
                                    strict=True) for a in (flag, str(port))]
    with terminal.open("wb") as out:  # a file, not a pipe: nothing blocks on a full pipe
        proc = subprocess.Popen([sys.executable, "-m", "servecheck.cli", "serve", "triton", *args],
                                cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: dict = {"ports": ports}
    tree: set[int] = set()
    try:
        deadline, answered_at = time.monotonic() + 240, None
        while (ready := READY.search(terminal.read_text())) is None:
            assert proc.poll() is None, terminal.read_text()[-3000:]
            assert time.monotonic() < deadline, terminal.read_text()[-3000:]
            if answered_at is None and len(_answering(ports[0])) == len(MODELS):
                answered_at = time.monotonic()
            if answered_at is not None and time.monotonic() - answered_at > 5:
                break  # all models answer, and no ready line came: a version without one
            time.sleep(0.1)
        seen["ready_line"] = ready[0] if ready else None
        seen["answering_at_ready_line"] = _answering(ports[0])
        with ThreadPoolExecutor(2) as pool:
            seen["windows_s"] = []
            for model in ORDER:
                start = time.perf_counter()
                list(pool.map(lambda i, m=model: _generate(ports[0], m, i), range(WINDOW)))
                seen["windows_s"].append(time.perf_counter() - start)
        tree = _tree(proc.pid)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        seen["code"] = proc.wait(timeout=60)
        while tree & set(_live()) and time.monotonic() - start < 30:
            time.sleep(0.05)
        seen["tree_gone_s"] = time.monotonic() - start
        seen["left"] = sorted(tree & set(_live()))
        seen["terminal"] = terminal.read_text()
        log = Path(seen["ready_line"].split("Triton's log: ", 1)[-1]) if ready else None
        seen["log"] = log.read_text() if log and log.is_file() else ""
        if log:
            log.unlink(missing_ok=True)
    finally:
        for pid in tree & set(_live()):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return seen


@pytest.mark.slow  # a Triton start (shared by the slow tests here)
def test_ready_line_names_models_ports_and_log_once_all_answer(fresh_serve: dict) -> None:
    http, grpc, metrics = fresh_serve["ports"]
    line = fresh_serve["ready_line"]
    assert line is not None, fresh_serve["terminal"]
    assert line.startswith(f"ready: models ensemble, tensorrt_llm, tensorrt_llm_bls at "
                           f"http://127.0.0.1:{http} (grpc {grpc}, metrics {metrics}); "
                           f"Triton's log: "), line
    assert fresh_serve["terminal"].count("ready: ") == 1
    assert fresh_serve["answering_at_ready_line"] == list(MODELS)  # not before they answer
    assert "successfully loaded 'tensorrt_llm'" in fresh_serve["log"]  # the log named is Triton's


@pytest.mark.slow  # a Triton start (shared by the slow tests here)
def test_every_model_answers_at_one_rate_from_the_first_request(fresh_serve: dict) -> None:
    """The fresh server's first requests (to ``ensemble``) are no slower than later ones to
    each model: no warm-up, lazy load or spinning thread pool that a first request to another
    model would have ended (what users saw: 2–5 requests/s until then, ~100 after)."""
    first, *later = fresh_serve["windows_s"]
    windows = dict(zip([f"{k + 1}. {m}" for k, m in enumerate(ORDER)],
                       [f"{WINDOW / s:.1f} req/s" for s in fresh_serve["windows_s"]],
                       strict=True))
    assert first <= 3 * statistics.median(later), windows


@pytest.mark.slow  # a Triton start (shared by the slow tests here)
def test_terminal_shows_none_of_the_errors_every_cpu_start_prints(fresh_serve: dict) -> None:
    """tritonserver on a machine without a GPU logs errors about CUDA and about pytriton's model
    configs at every start; they stay in the log file, and nothing of Triton's own log (its
    records, its tables) reaches the terminal of a healthy run."""
    terminal, log = fresh_serve["terminal"], fresh_serve["log"]
    assert TRITON_RECORD.findall(terminal) == [], terminal
    assert "Traceback" not in terminal and "UserWarning" not in terminal, terminal
    for expected in ("CudaDriverHelper has not been initialized",
                     "Failed to set config modification time"):
        assert expected in log and expected not in terminal


@pytest.mark.slow  # a Triton start (shared by the slow tests here)
def test_sigterm_ends_the_whole_process_tree_within_5_s(fresh_serve: dict) -> None:
    assert fresh_serve["code"] == 0, fresh_serve["terminal"][-3000:]
    assert fresh_serve["left"] == []
    assert fresh_serve["tree_gone_s"] <= 5.0, fresh_serve["tree_gone_s"]


@pytest.mark.slow  # a Triton start
def test_stop_in_process_is_quick_and_leaves_nothing(free_ports) -> None:
    """The host the tests and benchmarks start in their own process stops as ``serve triton``
    does: tritonserver and its stubs killed, then nothing left of them (the shared memory and
    the model copies a killed tritonserver leaves included) and no log file."""
    from servecheck.servers.supervise import bind_problem
    from servecheck.servers.triton_host import TritonHost

    ports = free_ports(3)
    before = _tree(os.getpid())
    host = TritonHost("builtin", "127.0.0.1", *ports)
    host.start()
    try:
        _generate(ports[0], "tensorrt_llm", 0)
        # tritonserver and all below it; this process's own resource tracker stays with it
        new = {pid for pid, parent in _live().items() if parent == os.getpid()} - before
        started = set().union(*(_tree(pid) for pid in new if b"resource_tracker" not in
                                Path(f"/proc/{pid}/cmdline").read_bytes()))
        triton = host._triton  # where this server keeps its files
        workspace = triton._workspace.path
        shm = triton._python_backend_config["shm-region-prefix-name"]
        log = host.log_path
    finally:
        start = time.monotonic()
        host.stop()
        elapsed = time.monotonic() - start
    assert elapsed <= 5, elapsed
    assert started and not started & set(_live())
    assert [p for p in ports if bind_problem("127.0.0.1", p)] == []
    assert not workspace.exists() and log is not None and not log.exists()
    assert list(Path("/dev/shm").glob(f"{shm}*")) == []
    assert [f for f in Path("/tmp").glob("folder??????/config.pbtxt")
            if f'"{workspace}"'.encode() in f.read_bytes()] == []


def _records() -> list[tuple[str, bool]]:
    """Lines as tritonserver and its stubs print them, and whether the terminal gets each."""
    when = "1206 21:46:50.586800 31022"
    return [
        (f"I{when} server.cc:604] ", False),
        ("+---------+------+", False),
        ("| Backend | Path |", False),
        ("", False),
        (f'E{when} server.cc:241] "CudaDriverHelper has not been initialized."', False),
        (f'E{when} model_repository_manager.cc:470] "Failed to set config modification time: '
         f'model_config_content_name_ is empty"', False),
        (f'I{when} model_lifecycle.cc:839] "successfully loaded \'ensemble\'"', False),
        ("Traceback (most recent call last):", True),  # a stub's own output: no Triton record
        ('  File "model.py", line 1, in <module>', True),
        (f'E{when} model_lifecycle.cc:638] "failed to load \'tensorrt_llm\' version 1"', True),
        ("    a second line of that error", True),
        (f'W{when} http_server.cc:100] "something unusual"', True),
        (f'I{when} server.cc:305] "Waiting for in-flight requests to complete."', False),
        ("Signal (2) received.", False),
    ]


def test_triton_log_keeps_all_and_shows_what_needs_a_look(tmp_path: Path) -> None:
    from servecheck.servers.triton_host import TritonLog

    terminal = io.StringIO()
    log = TritonLog(tmp_path / "triton.log", terminal)
    text = "".join(line + "\n" for line, _ in _records())
    for k in range(0, len(text), 7):  # in chunks, as pytriton's unbuffered reader passes them
        log.feed(text[k:k + 7].encode())
    log.muted = True  # a stop kills the stubs: what they print next is its doing
    log.feed('E1206 21:46:59.000000 31022 pb_stub.cc:1] "Stub process is unhealthy"\n')
    log.close()
    assert terminal.getvalue().splitlines() == [line for line, shown in _records() if shown]
    assert (tmp_path / "triton.log").read_text() == \
        text + 'E1206 21:46:59.000000 31022 pb_stub.cc:1] "Stub process is unhealthy"\n'

"""``servecheck serve triton`` starts and stops as a whole: a taken port is one line and exit 2
before anything starts, a server that lost the race for a port never talks to the one that won
it, and neither ``kill -9`` nor SIGTERM nor Ctrl-C of the command leaves a tritonserver, a
backend stub, a bound port, a shared-memory region or a workspace behind.

All against the real Triton binary of the nvidia-pytriton wheel; the other servers are plain
listening sockets and a small HTTP server that records what it is sent (a stand-in for a
production server on the same port, where an unload would take models down).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from servecheck.errors import InputError
from servecheck.servers.supervise import bind_problem
from servecheck.servers.triton_host import wait_ready

MODELS = ("ensemble", "tensorrt_llm_bls", "tensorrt_llm")
FLAGS = ("--http-port", "--grpc-port", "--metrics-port")


@contextmanager
def _listening(port: int) -> Iterator[None]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        yield


@contextmanager
def _recording_server(port: int) -> Iterator[list[str]]:
    """An HTTP server on ``port`` that answers 200 to everything and records each request as
    "METHOD path" (a live server, so that a client that probes it would go on to unload)."""
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            seen.append(f"{self.command} {self.path}")
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = do_HEAD = _answer

        def log_message(self, *_args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        server.shutdown()
        server.server_close()


def _serve(root: Path, ports: list[int], log: Path) -> subprocess.Popen:
    args = [a for flag, port in zip(FLAGS, ports, strict=True) for a in (flag, str(port))]
    with log.open("wb") as out:  # a file, not a pipe: tritonserver's log would fill a pipe
        return subprocess.Popen([sys.executable, "-m", "servecheck.cli", "serve", "triton", *args],
                                cwd=root, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _state(pid: int) -> tuple[str, str, int] | None:
    """(name, state, parent pid) from /proc, None once the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return text[text.index("(") + 1:text.rindex(")")], fields[0], int(fields[1])


def _tree(root: int) -> dict[int, str]:
    """``root`` and all its descendants, pid → name."""
    procs = {int(d): s for d in os.listdir("/proc") if d.isdigit() and (s := _state(int(d)))}
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in procs:
            tree[pid] = procs[pid][0]
            todo += [p for p, (_, _, ppid) in procs.items() if ppid == pid]
    return tree


def _alive(pids: dict[int, str]) -> dict[int, str]:
    """Those still running (a zombie has finished: it only waits to be reaped)."""
    return {pid: name for pid, name in pids.items()
            if (s := _state(pid)) is not None and s[1] != "Z"}


@contextmanager
def _running_server(root: Path, free_ports: Callable[[int], list[int]], log: Path
                    ) -> Iterator[tuple[subprocess.Popen, list[int], dict[int, str]]]:
    """A ready ``serve triton``, its ports and its process tree; whatever is left of the tree is
    killed afterwards, so that a failed test leaves no server behind for the next."""
    ports = free_ports(3)
    proc = _serve(root, ports, log)
    tree: dict[int, str] = {}
    try:
        for model in MODELS:
            assert wait_ready(ports[0], proc, 180, model=model), log.read_text()[-3000:]
        deadline = time.monotonic() + 30  # the models answer a moment before it says so
        while "ready: " not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = _tree(proc.pid)
        names = list(tree.values())
        assert "tritonserver" in names and names.count("triton_python_b") == len(MODELS), tree
        yield proc, ports, tree
    finally:
        for pid in _alive(tree):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for line in log.read_text().splitlines():  # the command keeps Triton's log: not here
            if line.startswith("ready: ") and "Triton's log: " in line:
                Path(line.split("Triton's log: ", 1)[1]).unlink(missing_ok=True)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _wait_gone(pids: dict[int, str], timeout: float) -> dict[int, str]:
    deadline = time.monotonic() + timeout
    while (left := _alive(pids)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def _triton_files(tree: dict[int, str]) -> tuple[Path, str]:
    """pytriton's workspace (a copy of the Triton binaries, the model store) and the prefix of
    the backend's shared-memory regions, read off tritonserver's command line (its binary is
    WORKSPACE/tritonserver/bin/tritonserver). The prefix holds a random part besides the pid:
    pids come round again, and /dev/shm may hold regions of long-dead servers."""
    (pid,) = [p for p, name in tree.items() if name == "tritonserver"]
    args = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    (prefix,) = [a.split("=", 1)[1] for a in args if "shm-region-prefix-name=" in a]
    return Path(args[0]).parents[2], prefix


def _assert_nothing_left(tree: dict[int, str], ports: list[int], files: tuple[Path, str]) -> None:
    workspace, prefix = files
    assert not _alive(tree)
    assert [p for p in ports if bind_problem("127.0.0.1", p)] == []
    regions = {f.name: round(time.time() - f.stat().st_mtime, 1)  # seconds old
               for f in Path("/dev/shm").glob(f"{prefix}*")}
    assert regions == {}
    assert not workspace.exists()
    mark = f'"{workspace}'.encode()  # tritonserver's model copies name the workspace
    copies = [f for f in Path("/tmp").glob("folder??????/config.pbtxt")
              if mark in f.read_bytes()]
    assert copies == []


@pytest.mark.slow  # three starts of the CLI (torch is imported before the check)
@pytest.mark.parametrize("taken", [2, 1, 0], ids=["metrics", "grpc", "http-held-by-a-server"])
def test_taken_port_is_one_line_and_exit_2(taken: int, free_ports, root: Path,
                                           tmp_path: Path) -> None:
    ports = free_ports(3)
    holder = _recording_server(ports[taken]) if taken == 0 else _listening(ports[taken])
    log = tmp_path / "serve.log"
    with holder as seen:
        start = time.monotonic()
        proc = _serve(root, ports, log)
        try:
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:  # its own session: the group is all of it
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        elapsed = time.monotonic() - start
    out = log.read_text()
    assert code == 2, out
    assert elapsed < 8, elapsed  # the check comes before the model load: start-up time only
    assert f"{FLAGS[taken]} {ports[taken]}" in out and "already in use" in out, out
    assert "Traceback" not in out and len(out.strip().splitlines()) == 1, out
    if taken == 0:
        assert seen == []  # not even a probe of the server that owns the port


@pytest.mark.slow  # one model load and a tritonserver start
def test_lost_port_race_never_touches_the_other_server(free_ports, monkeypatch) -> None:
    """The check passed, then another server took the HTTP port before tritonserver bound it:
    the start fails at once with one message, and the other server is sent nothing (pytriton
    alone would load its models there, and unload them on exit)."""
    from servecheck.servers import triton_host

    monkeypatch.setattr(triton_host, "check_ports", lambda host, ports: None)
    http, grpc, metrics = free_ports(3)
    server = triton_host.TritonHost("builtin", "127.0.0.1", http, grpc, metrics)
    with _recording_server(http) as seen:
        before = set(_tree(os.getpid()))
        start = time.monotonic()
        try:
            with pytest.raises(InputError, match="exited during start-up"):
                server.start()
        finally:
            server.stop()
            if server.log_path is not None:  # kept for the user after a failed start
                server.log_path.unlink(missing_ok=True)
        elapsed = time.monotonic() - start
        time.sleep(0.5)  # anything an exit handler would still send
    assert seen == []
    assert elapsed < 30, elapsed
    assert not _alive({p: n for p, n in _tree(os.getpid()).items() if p not in before})


@pytest.mark.slow  # a Triton start
def test_kill_9_of_serve_leaves_nothing(free_ports, root: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with _running_server(root, free_ports, log) as (proc, ports, tree):
        files = _triton_files(tree)
        proc.kill()
        assert proc.wait(timeout=5) == -signal.SIGKILL
        start = time.monotonic()
        while _answers(ports[0]) and time.monotonic() - start < 15:
            time.sleep(0.05)
        refused_after = time.monotonic() - start
        left = _wait_gone(tree, 15)
        assert not left, f"still running 15 s after kill -9: {left}"
        _assert_nothing_left(tree, ports, files)
    assert refused_after < 5  # killed means gone: no server winding down while clients go on


@pytest.mark.slow  # a Triton start each
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)],
                         ids=["sigterm", "ctrl-c"])
def test_stop_signal_stops_cleanly(sig: int, code: int, free_ports, root: Path,
                                   tmp_path: Path) -> None:
    """Within 5 s of the signal the command has exited and nothing of the server is left (it
    took 7–10 s while Triton unloaded model after model and polled once a second)."""
    log = tmp_path / "serve.log"
    with _running_server(root, free_ports, log) as (proc, ports, tree):
        files = _triton_files(tree)
        start = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == code, log.read_text()[-3000:]
        left = _wait_gone(tree, 2)
        elapsed = time.monotonic() - start
        assert not left, f"left behind after the command exited: {left}"
        _assert_nothing_left(tree, ports, files)
    assert elapsed <= 5, elapsed
    assert "Traceback" not in log.read_text()

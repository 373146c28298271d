"""Tie a server's whole process tree to the command that started it, and check its ports first.

``servecheck serve triton`` starts tritonserver (through pytriton), which starts one Python
backend stub per model, each with a multiprocessing resource tracker and a tensor store. pytriton
arms a parent-death signal on tritonserver only, and tritonserver answers it with a graceful
shutdown that takes seconds, so a ``kill -9`` of ``serve`` left a server answering on the port for
a while and a workspace on disk for good. So the command is a thin supervisor: the real host runs
as a child in a session (hence a process group) of its own, armed with ``PR_SET_PDEATHSIG``, and
whichever of the two outlives the other kills the group. It is killed process by process, not
with ``killpg``, so that the child can kill its group without killing itself first.

Ports are checked before anything starts because a server that cannot bind one fails late and
badly: tritonserver exits, pytriton waits 120 s for it, and its exit handler then unloads models
on whichever server does own the port. Linux only (``prctl``, ``/proc``), like tritonserver.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NoReturn

from servecheck.errors import EXIT_FAIL, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_PASS, InputError

PR_SET_PDEATHSIG = 1
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
ENV_PARENT = "SERVECHECK_SUPERVISOR"
ERROR_FILE = "input-error.txt"
SERVER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
"""The child's environment unless the command's own sets these. The server's engine is torch, whose
OpenMP threads (GNU libgomp) spin for milliseconds after each parallel region while libgomp has no
more threads than CPUs; on a small machine shared with tritonserver, the backend stubs and the
clients the spinning starves them: on 2 cores a request took 35–700 ms instead of ~10, until a
second model's first request gave libgomp a third thread and it stopped spinning
(docs/client-rate.md). libgomp reads it once, when torch loads: hence here, before the child
starts."""
Leftovers = Callable[[int, Path], None]
"""Removes what a dead server process (its pid, its scratch folder) left outside that folder."""


def bind_problem(host: str, port: int) -> str | None:
    """Why ``port`` of ``host`` cannot be bound now ("in use" when something listens there), or
    None when it can. ``SO_REUSEADDR`` as servers set it: a port that only has connections in
    TIME_WAIT (a server just stopped) is free, one with a listening socket is not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        return f"{host!r} is not an address of this machine ({e.strerror})"
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            return "in use" if e.errno == errno.EADDRINUSE else e.strerror or str(e)
    return None


def check_ports(host: str, ports: Mapping[str, int]) -> None:
    """Raise an ``InputError`` naming the flag and the port for the first of ``ports`` (flag →
    port) that is given twice or cannot be bound."""
    seen: dict[int, str] = {}
    for flag, port in ports.items():
        if port in seen:
            raise InputError(f"{flag} {port} is also {seen[port]}; give each its own port")
        seen[port] = flag
        problem = bind_problem(host, port)
        if problem == "in use":
            raise InputError(f"{flag} {port} on {host} is already in use (another server?); "
                             f"stop what holds it or pick another port with {flag}")
        if problem:
            raise InputError(f"{flag} {port} on {host} cannot be bound: {problem}")


def _processes() -> dict[int, tuple[str, int, int]]:
    """Every process as pid → (state, parent pid, process group), read from /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                text = Path(f"/proc/{name}/stat").read_text()
            except OSError:  # gone meanwhile
                continue
            fields = text[text.rindex(")") + 2:].split()  # the name may hold spaces and ")"
            found[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def group(pgid: int) -> list[int]:
    """The live members of process group ``pgid`` (a zombie has stopped: it only waits for its
    parent to read its status)."""
    return [pid for pid, (state, _, g) in _processes().items() if g == pgid and state != "Z"]


def children(pid: int) -> list[int]:
    return [p for p, (state, ppid, _) in _processes().items() if ppid == pid and state != "Z"]


def listening_holders(port: int, among: list[int]) -> set[int]:
    """Those of the processes ``among`` that hold a socket listening on TCP ``port`` (any
    address): a server that answers on a port is not necessarily the one that was started."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    holders = set()
    for pid in among:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    holders.add(pid)
                    break
            except OSError:
                continue
    return holders


def kill_group(pgid: int) -> None:
    """SIGKILL every live member of group ``pgid`` but this process (``kill_all``)."""
    kill_all(lambda: [pid for pid in group(pgid) if pid != os.getpid()])


def kill_all(left: Callable[[], list[int]]) -> None:
    """SIGKILL the processes ``left()`` names, until it names none. No SIGTERM first: a graceful
    stop is the child's job while it lives, and a tritonserver winding down keeps answering for
    seconds, which a client must not see after a kill. Resource trackers are spared a moment: once
    the processes they track are gone they unlink those processes' shared memory and exit."""

    def tracker(pid: int) -> bool:
        with contextlib.suppress(OSError):
            return b"multiprocessing.resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()
        return False

    for spare in (tracker, lambda _pid: False):
        for pid in left():
            if not spare(pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 2.0
        while left() and time.monotonic() < deadline:
            time.sleep(0.05)


def stop_session(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop a server started in a session of its own (``start_new_session``): SIGTERM to its
    group, then SIGKILL to what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _load(name: str) -> Callable[..., Any]:
    module, _, attribute = name.partition(":")
    return getattr(importlib.import_module(module), attribute)


class _Supervisor:
    """The command's side: forward the first stop request, kill the group on a second one or when
    the child takes longer than ``grace`` seconds to stop."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.child: subprocess.Popen | None = None
        self.signals: list[int] = []
        self.sent = 0
        self.asked_at: float | None = None

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        self.forward()

    def forward(self) -> None:
        """Pass on the stop requests not passed on yet (one may come before the child exists)."""
        while self.child is not None and self.sent < len(self.signals):
            self.sent += 1
            if self.sent == 1:
                self.asked_at = time.monotonic()
                _kill(self.child.pid, signal.SIGINT)  # the child stops Triton gracefully
            else:
                _kill(-self.child.pid, signal.SIGKILL)  # asked twice: now

    def wait(self) -> int:
        assert self.child is not None
        while True:
            try:
                return self.child.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                if self.asked_at is not None and time.monotonic() - self.asked_at > self.grace:
                    _kill(-self.child.pid, signal.SIGKILL)


def _kill(pid: int, sig: int) -> None:
    """``os.kill``, where a negative pid names a process group; one already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(-pid, sig) if pid < 0 else os.kill(pid, sig)


def run_supervised(target: str, kwargs: dict[str, Any], leftovers: str | None = None,
                   grace: float = 3.0) -> int:
    """Run ``target`` ("module:function", called as ``function(scratch, **kwargs)``) in a child
    process in a session of its own, with ``SERVER_ENV``, until it returns or a stop signal comes;
    then end whatever is left of its process group, call ``leftovers`` (also "module:function")
    with its pid and the scratch folder, and remove that folder. A child asked to stop has
    ``grace`` seconds before its group is killed. Returns 130 after SIGINT, 0 after SIGTERM or
    SIGHUP (the server was asked to stop and did), else the child's exit code; an ``InputError``
    of the child is raised again here, so that it reaches the user (or a caller that captures
    ``sys.stderr``) as any other command's does."""
    scratch = Path(tempfile.mkdtemp(prefix="servecheck-serve-"))
    spec = json.dumps({"target": target, "kwargs": kwargs, "leftovers": leftovers,
                       "scratch": str(scratch)})
    boss = _Supervisor(grace)
    previous = {s: signal.signal(s, boss.on_signal) for s in STOP_SIGNALS}
    code, error = EXIT_FAIL, None
    try:
        boss.child = subprocess.Popen([sys.executable, "-m", __name__, spec],
                                      start_new_session=True,
                                      env={**SERVER_ENV, **os.environ, ENV_PARENT: str(os.getpid())})
        boss.forward()
        code = boss.wait()
    finally:
        if boss.child is not None:
            if boss.child.poll() is None:  # this loop failed: the child must not outlive it
                _kill(-boss.child.pid, signal.SIGKILL)
                boss.child.wait()
            kill_group(boss.child.pid)
            if leftovers:
                _load(leftovers)(boss.child.pid, scratch)
        with contextlib.suppress(OSError):
            error = (scratch / ERROR_FILE).read_text()
        shutil.rmtree(scratch, ignore_errors=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    if boss.signals:
        return EXIT_INTERRUPTED if boss.signals[0] == signal.SIGINT else EXIT_PASS
    if code == EXIT_INPUT and error:
        raise InputError(error)
    if code < 0:
        print(f"servecheck: error: the server process was killed by "
              f"{signal.Signals(-code).name}", file=sys.stderr)
        return EXIT_FAIL
    return code


class _Child:
    """The child's side. A stop request while the supervisor lives becomes a KeyboardInterrupt
    (the server's own graceful stop); once the supervisor is gone (its parent-death signal, or the
    watchdog for a main thread stuck in C code) nobody else will clean up, so the child ends its
    whole group, removes its leftovers and exits at once."""

    def __init__(self, parent: int, scratch: Path) -> None:
        self.parent = parent
        self.scratch = scratch
        self.leftovers: Leftovers | None = None
        self.stopping = False
        self.lock = threading.RLock()  # one thread ends the group; a nested signal may re-enter

    def orphaned(self) -> bool:
        return os.getppid() != self.parent

    def arm(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        for s in STOP_SIGNALS:
            signal.signal(s, self.on_signal)
        threading.Thread(target=self.watch, name="supervisor-watchdog", daemon=True).start()
        if self.orphaned():  # the supervisor died before the death signal was armed
            self.die()

    def on_signal(self, _signum: int, _frame: object) -> None:
        if self.orphaned():
            self.die()
        if not self.stopping:  # a second request while stopping: the supervisor escalates
            self.stopping = True
            raise KeyboardInterrupt

    def watch(self) -> None:
        while not self.orphaned():
            time.sleep(0.5)
        self.die()

    def die(self) -> NoReturn:
        with self.lock:
            kill_group(os.getpgid(0))
            if self.leftovers is not None:
                self.leftovers(os.getpid(), self.scratch)
            shutil.rmtree(self.scratch, ignore_errors=True)
            os._exit(EXIT_INTERRUPTED)  # no atexit: pytriton's stop would wait on the dead


def _child_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    child = _Child(int(os.environ.pop(ENV_PARENT)), Path(spec["scratch"]))
    child.arm()  # before the slow imports, so that an early kill of the supervisor is seen
    try:
        if spec["leftovers"]:
            child.leftovers = _load(spec["leftovers"])
        _load(spec["target"])(Path(spec["scratch"]), **spec["kwargs"])
    except InputError as e:  # the supervisor says it, as its own
        (Path(spec["scratch"]) / ERROR_FILE).write_text(str(e))
        return EXIT_INPUT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return EXIT_PASS


if __name__ == "__main__":  # no interpreter teardown, a second with torch and pytriton loaded
    os._exit(_child_main(sys.argv[1]))

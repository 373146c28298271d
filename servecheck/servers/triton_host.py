"""``servecheck serve triton``: a real Triton server hosting an HF checkpoint, TensorRT-LLM style.

The original notes' "host the HF checkpoint as an endpoint" approach, on the real Triton server
binary that ships inside the ``nvidia-pytriton`` wheel (Python backend, CPU is enough). The same
model is bound three times, with the interfaces users meet in production:

- ``ensemble`` and ``tensorrt_llm_bls``: STRING ``text_input``, INT32 ``max_tokens``, FP32
  ``temperature``/``top_p``/penalties, INT32 ``top_k``/``end_id``, UINT64 ``seed`` (or
  ``random_seed``, the name before the 2025 rename: ``--seed-name``), STRING ``stop_words``,
  BOOL ``return_log_probs``/``exclude_input_in_output``/``stream``; outputs ``text_output``,
  ``output_log_probs`` (one per generated token, the end token included, none for an echoed
  prompt; absent unless ``return_log_probs``), ``cum_log_probs``;
- ``tensorrt_llm``: the newer llmapi model's ``sampling_param_*`` names, with ``finish_reason``,
  and the token-level side of TensorRT-LLM's own ``tensorrt_llm`` model: INT32 ``output_ids``
  (the prompt's ids first when it is echoed) and, in place of ``text_input``, INT32 ``input_ids``,
  which reach the model as they are (no preprocessing, so no added BOS).

``exclude_input_in_output`` defaults to false, as in TensorRT-LLM: the prompt is echoed unless
the client asks otherwise. ``--decoupled`` makes every model decoupled (TensorRT-LLM's streaming
deployment): one response per token, read through ``generate_stream`` or gRPC streaming. The
HF-side behaviours that matter are switches: ``--add-special-tokens`` tokenizes the templated
text with special tokens added (Triton preprocessing's default, and the classic double BOS);
``--echo`` returns the prompt whatever ``exclude_input_in_output`` says; ``--fail-after N``
raises after N tokens, so a stream carries good frames and then an error frame;
``--ignore-seed`` runs every request with seed 0; ``--batch-variant`` adds a logit of noise to
requests that share a batch (greedy output that changes under load).

Binds 127.0.0.1 unless told otherwise. Its ports are checked before the start, and it only talks
to the server it started: pytriton would wait 120 s for a server that died at start-up, load its
models into whichever server answered on the port meanwhile, and unload them there on exit. The
``serve triton`` command runs it under ``servecheck.servers.supervise`` (``serve_child``), so that
no part of it outlives the command.

The model is loaded and run once before tritonserver starts, so the first request is as fast as
the others; ``serve triton`` says ``ready: …`` once every model answers. tritonserver's log goes to
a file (named in the ready line); the terminal gets its warnings and errors but those that every
start on a CPU-only machine prints (``TritonLog``). A stop kills tritonserver and its stubs at
once and cleans up after them, in about 2 s: Triton's own graceful stop unloads model after model
and polls once a second, 7–10 s on a 2-core machine.

This module is the server's life (ports, start, stop, what a killed one leaves behind); what the
models take and answer, and the fault switches, are ``triton_models``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import TextIO

from servecheck.errors import InputError
from servecheck.servers.supervise import check_ports, children, kill_all, listening_holders
from servecheck.servers.triton_models import Models

START_TIMEOUT_S = 120.0
EXPECTED = (
    # a tritonserver built for GPUs, started on a machine without one: every start says so
    "CudaDriverHelper has not been initialized",
    # pytriton hands Triton each model's config as content, not as a file with a time
    "Failed to set config modification time: model_config_content_name_ is empty",
)
"""Warnings and errors of tritonserver that every CPU-only start prints: the log file only."""
RECORD = re.compile(r"([IWEF])\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]]+\] ")
"""The first line of one of tritonserver's log records (glog: severity, date, time, thread)."""
LAYOUT = re.compile(r"\s*$|[+|]|Signal \(\d+\) received\.$")
"""Lines under a record that belong to it: blanks, the tables of the start-up report, and the
notice of the signal that stops it."""


def libdir_on_loader_path() -> None:
    """The bundled tritonserver links against libpython; a pyenv interpreter keeps it off the
    default loader path, and pytriton copies this environment into the server process."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


class TritonLog:
    """What tritonserver and its backend stubs print: all of it to a file, and to ``terminal``
    what needs a look: warnings and errors but the ``EXPECTED`` ones, and lines that belong to
    no record of tritonserver's (a stub's traceback). Fed in chunks, from pytriton's reader
    thread."""

    def __init__(self, path: Path, terminal: TextIO | None = None) -> None:
        self.path = path
        self.terminal = terminal
        """Where shown lines go; None: ``sys.stderr`` as it is when they come."""
        self._file = path.open("a", encoding="utf-8")
        self._partial = ""
        self._shown = True  # whether the record being read is shown, its lines with it
        self.muted = False
        """Set by a stop, which kills the stubs: their resource trackers' notices follow."""
        self._lock = threading.Lock()

    def feed(self, chunk: bytes | str) -> None:
        text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        with self._lock:
            if self._file.closed:
                return
            self._file.write(text)
            self._file.flush()
            *lines, self._partial = (self._partial + text).split("\n")
            for line in lines:
                if self.shows(line) and not self.muted:
                    print(line, file=self.terminal or sys.stderr, flush=True)

    def shows(self, line: str) -> bool:
        record = RECORD.match(line)
        if record:
            self._shown = record[1] != "I" and not any(e in line for e in EXPECTED)
            return self._shown
        return self._shown or not LAYOUT.match(line)

    def close(self) -> None:
        with self._lock:
            if self._partial and self.shows(self._partial) and not self.muted:
                print(self._partial, file=self.terminal or sys.stderr, flush=True)
            self._partial = ""
            self._file.close()


class TritonHost:
    """The server: its address, its workspace, its log, its start and stop; ``models`` answer."""

    def __init__(self, model: str = "builtin", host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, seed_name: str = "seed",
                 add_special_tokens: bool = False, decoupled: bool = False, echo: bool = False,
                 fail_after: int | None = None, ignore_seed: bool = False,
                 batch_variant: bool = False, workspace: Path | None = None,
                 keep_log: bool = False) -> None:
        self.models = Models(model, seed_name, add_special_tokens, decoupled, echo, fail_after,
                             ignore_seed, batch_variant)
        self.address = dict(host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port)
        self.workspace = workspace
        """pytriton's folder (binaries, model store); None: a fresh one in ~/.cache/pytriton."""
        self.log_path: Path | None = None
        """tritonserver's whole log (``log_file``), kept after a stop with ``keep_log`` or
        after a failure."""
        self._log: TritonLog | None = None
        self._keep_log = keep_log
        self._triton = None

    def ports(self) -> dict[str, int]:
        """The ports by the ``serve triton`` flag that sets them, the name an error gives."""
        a = self.address
        return {"--http-port": a["http_port"], "--grpc-port": a["grpc_port"],
                "--metrics-port": a["metrics_port"]}

    def ready_line(self) -> str:
        a = self.address
        names = ", ".join(sorted(name for name, _ in self.models.bound()))
        return (f"ready: models {names} at http://{a['host']}:{a['http_port']} (grpc "
                f"{a['grpc_port']}, metrics {a['metrics_port']}); Triton's log: {self.log_path}")

    def start(self) -> None:
        """Start the server in the background; returns once the models are ready (and leaves
        nothing running when it raises)."""
        self._bind()
        try:
            self._launch()
        except BaseException:
            self._keep_log = True
            self.stop()
            raise

    def serve_forever(self) -> None:
        """Serve until a KeyboardInterrupt (Ctrl-C, or the supervisor's stop request); a server
        that stops by itself is an error, not a finished job."""
        self._bind()
        try:
            self._launch()
            print(self.ready_line(), flush=True)
            while self._triton is not None and self._triton.is_alive():
                time.sleep(0.5)
            self._keep_log = True
        finally:
            self.stop()
        raise SystemExit(f"servecheck: error: the Triton server stopped by itself (its log: "
                         f"{self.log_path})")

    def _launch(self) -> None:
        """Warm the model up, start tritonserver and connect only once it holds all its ports:
        until then whatever answers on them may be another server (one that took a port after
        the check), and pytriton's connect would wait 120 s for a server that already exited."""
        triton = self._triton
        assert triton is not None
        self.models.warm_up()
        self.log_path = log_file(self.address["http_port"])
        self._log = TritonLog(self.log_path)
        triton._initialize_server()
        server = triton._triton_server
        server._record_logs = self._log.feed  # in place of print-and-keep-all
        server._handle_exit = lambda *_args: None  # its "exited with failure" after a stop's kill
        me = os.getpid()
        before = set(children(me))
        triton._run_server()  # pytriton's start without its connect
        ports = list(self.ports().values())
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ours = [pid for pid in children(me) if pid not in before]
            if not ours:
                raise InputError(f"the Triton server exited during start-up (its log: "
                                 f"{self.log_path}); was one of its ports taken meanwhile?")
            if all(listening_holders(port, ours) for port in ports):
                break
            if time.monotonic() > deadline:
                raise InputError(f"the Triton server did not open its ports in "
                                 f"{START_TIMEOUT_S:.0f} s (its log: {self.log_path})")
            time.sleep(0.1)
        triton.connect()

    def _bind(self) -> None:
        a = self.address
        check_ports(a["host"], self.ports())
        libdir_on_loader_path()
        from pytriton.model_config import DynamicBatcher, ModelConfig
        from pytriton.triton import Triton, TritonConfig

        config = TritonConfig(http_address=a["host"], http_port=a["http_port"],
                              grpc_address=a["host"], grpc_port=a["grpc_port"],
                              metrics_address=a["host"], metrics_port=a["metrics_port"],
                              allow_gpu_metrics=False, exit_timeout_secs=5)
        models = self.models
        # --batch-variant holds requests 20 ms so that concurrent ones share a batch
        batcher = DynamicBatcher(max_queue_delay_microseconds=20_000 if models.batch_variant else 0)
        model_config = (ModelConfig(batching=False, decoupled=True) if models.decoupled
                        else ModelConfig(max_batch_size=8, batcher=batcher))
        self._triton = triton = Triton(config=config, workspace=self.workspace)
        triton._triton_server_config["pinned_memory_pool_byte_size"] = 0  # no GPU to pin for
        # only ``stop`` below stops this server: pytriton's own stop (at exit, or when the server
        # or a model ends) is the slow graceful one, and it unloads models over HTTP from
        # whatever answers on the port by then, which may be another server
        atexit.unregister(triton.stop)
        atexit.register(self.stop)
        triton._on_model_event = lambda *_args, **_kwargs: None
        for name, names in models.bound():
            inputs, outputs = models.signature(names)
            triton.bind(name, models.infer_with(names), inputs, outputs, config=model_config,
                        strict=True)

    def stop(self) -> None:
        """Stop the server now and leave nothing: tritonserver and its stubs are killed, this
        side's proxy threads stopped (about 1 s, the models side by side) and its hold on their
        shared memory released, the workspace and what the killed processes leave outside it
        removed (``remove_leftovers``)."""
        triton, self._triton = self._triton, None
        atexit.unregister(self.stop)
        if triton is not None:
            with triton._cv:
                triton._stopped = True
            server = triton._triton_server
            running = server._tritonserver_running_cmd if server is not None else None
            if running is not None:
                self._log.muted = True
                tree = _tree(running.pid)
                kill_all(lambda: [pid for pid in tree if _running(pid)])
            cleaners = [threading.Thread(target=m.clean) for m in triton._model_manager.models]
            for t in cleaners:
                t.start()
            for t in cleaners:
                t.join()
            triton._workspace.clean()
            prefix = triton._python_backend_config["shm-region-prefix-name"]
            remove_leftovers(os.getpid(), triton._workspace.path, prefix)
        if self._log is not None:
            self._log.close()
            self._log = None
            if not self._keep_log and self.log_path is not None:
                self.log_path.unlink(missing_ok=True)


def log_file(http_port: int) -> Path:
    """A new file for a server's log, in the temporary folder, named after its HTTP port."""
    handle, name = tempfile.mkstemp(prefix=f"servecheck-triton-{http_port}-", suffix=".log")
    os.close(handle)
    return Path(name)


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo += children(found[-1])
    return found


def _running(pid: int) -> bool:
    """Not gone and not a zombie (one that only waits for its parent to read its status)."""
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2] != "Z"
    return False


def serve_child(scratch: Path, **kwargs) -> None:
    """``servecheck serve triton``'s server, run by ``supervise.run_supervised`` in a process of
    its own; its workspace goes in the supervisor's scratch folder, removed whatever happens."""
    TritonHost(**kwargs, workspace=scratch / "workspace", keep_log=True).serve_forever()


def remove_leftovers(pid: int, scratch: Path, prefix: str | None = None) -> None:
    """What a killed server leaves outside its workspace (a graceful stop removes it): the Python
    backend's shared memory, 4 MiB a region, named ``prefix``…, which pytriton makes of the
    process ``pid`` that ran it and a random part (None: every region of that pid); and
    tritonserver's copy of each model in /tmp/folderXXXXXX, whose config names the workspace:
    ``scratch`` or a folder inside it."""
    for path in Path("/dev/shm").glob(f"{prefix or f'pytrtion{pid}-'}*"):
        path.unlink(missing_ok=True)
    for folder in Path("/tmp").glob("folder??????"):
        try:
            config = (folder / "config.pbtxt").read_bytes()
        except OSError:
            continue
        if f'"{scratch}/'.encode() in config or f'"{scratch}"'.encode() in config:
            shutil.rmtree(folder, ignore_errors=True)


def wait_ready(http_port: int, proc: subprocess.Popen, timeout: float, host: str = "127.0.0.1",
               model: str = "ensemble") -> bool:
    """Poll a Triton server started as ``proc`` until ``model`` is ready: True
    when it is, False when ``proc`` exits or ``timeout`` seconds pass (the caller decides what a
    start-up failure means: a failed test, a benchmark that stops). Here, not in the tests'
    fixtures, because the benchmarks use it too and may not import the tests."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://{host}:{http_port}/v2/models/{model}/ready",
                                        timeout=2):
                return True
        except OSError:
            if proc.poll() is not None:
                return False
        time.sleep(0.5)
    return False


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports of ``host`` that were free a moment ago (for a server's HTTP, gRPC
    and metrics ports, where the defaults may be taken); the tests' ``free_ports`` fixture and the
    benchmarks share it."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()

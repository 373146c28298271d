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

This module is the server's life (ports, start, stop, what a killed one leaves behind); what the
models take and answer, and the fault switches, are ``triton_models``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from servecheck.errors import InputError
from servecheck.servers.supervise import check_ports, children, listening_holders
from servecheck.servers.triton_models import Models

if TYPE_CHECKING:
    from pytriton.triton import Triton

START_TIMEOUT_S = 120.0


def libdir_on_loader_path() -> None:
    """The bundled tritonserver links against libpython; a pyenv interpreter keeps it off the
    default loader path, and pytriton copies this environment into the server process."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


class TritonHost:
    """The server: its address, its workspace, its start and stop; ``models`` answer."""

    def __init__(self, model: str = "builtin", host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, seed_name: str = "seed",
                 add_special_tokens: bool = False, decoupled: bool = False, echo: bool = False,
                 fail_after: int | None = None, ignore_seed: bool = False,
                 batch_variant: bool = False, workspace: Path | None = None) -> None:
        self.models = Models(model, seed_name, add_special_tokens, decoupled, echo, fail_after,
                             ignore_seed, batch_variant)
        self.address = dict(host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port)
        self.workspace = workspace
        """pytriton's folder (binaries, model store); None: a fresh one in ~/.cache/pytriton."""
        self._triton = None

    def ports(self) -> dict[str, int]:
        """The ports by the ``serve triton`` flag that sets them, the name an error gives."""
        a = self.address
        return {"--http-port": a["http_port"], "--grpc-port": a["grpc_port"],
                "--metrics-port": a["metrics_port"]}

    def start(self) -> None:
        """Start the server in the background; returns once the models are ready (and leaves
        nothing running when it raises)."""
        self._bind()
        try:
            self._launch()
        except BaseException:
            self.stop()
            raise

    def serve_forever(self) -> None:
        """Serve until a KeyboardInterrupt (Ctrl-C, or the supervisor's stop request); a server
        that stops by itself is an error, not a finished job."""
        self._bind()
        try:
            self._launch()
            while self._triton is not None and self._triton.is_alive():
                time.sleep(0.5)
        finally:
            self.stop()
        raise SystemExit("servecheck: error: the Triton server stopped by itself (its log is above)")

    def _launch(self) -> None:
        """Start tritonserver and connect only once it holds all its ports: until then whatever
        answers on them may be another server (one that took a port after the check), and
        pytriton's connect would wait 120 s for a server that already exited."""
        assert self._triton is not None
        me = os.getpid()
        before = set(children(me))
        self._triton._run_server()  # pytriton's start without its connect
        ports = list(self.ports().values())
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            ours = [pid for pid in children(me) if pid not in before]
            if not ours:
                raise InputError("the Triton server exited during start-up (its log is above); "
                                 "was one of its ports taken meanwhile?")
            if all(listening_holders(port, ours) for port in ports):
                break
            if time.monotonic() > deadline:
                raise InputError(f"the Triton server did not open its ports in "
                                 f"{START_TIMEOUT_S:.0f} s (its log is above)")
            time.sleep(0.1)
        self._triton.connect()

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
        self._triton = Triton(config=config, workspace=self.workspace)
        _no_remote_unload(self._triton)
        for name, names in models.bound():
            inputs, outputs = models.signature(names)
            self._triton.bind(name, models.infer_with(names), inputs, outputs,
                              config=model_config, strict=True)

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None


def _no_remote_unload(triton: Triton) -> None:
    """pytriton's stop ends tritonserver first and then unloads the models over HTTP from
    whatever answers on the port: never this server, which is gone by then, only another one
    that owns the port. So its models are cleaned up on this side only."""
    manager = triton._model_manager

    def clean() -> None:
        for model in manager.models:
            model.clean()

    manager.clean = clean


def serve_child(scratch: Path, **kwargs) -> None:
    """``servecheck serve triton``'s server, run by ``supervise.run_supervised`` in a process of
    its own; its workspace goes in the supervisor's scratch folder, removed whatever happens."""
    TritonHost(**kwargs, workspace=scratch / "workspace").serve_forever()


def remove_leftovers(pid: int, scratch: Path) -> None:
    """What a killed server leaves outside its workspace (a graceful stop removes it): the Python
    backend's shared memory, 4 MiB a region, which pytriton names after the process ``pid`` that
    ran it; and tritonserver's copy of each model in /tmp/folderXXXXXX, whose config names the
    workspace inside ``scratch``."""
    for path in Path("/dev/shm").glob(f"pytrtion{pid}-*"):
        path.unlink(missing_ok=True)
    mark = f'"{scratch}/'.encode()
    for folder in Path("/tmp").glob("folder??????"):
        try:
            ours = mark in (folder / "config.pbtxt").read_bytes()
        except OSError:
            continue
        if ours:
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

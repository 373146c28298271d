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
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from servecheck.collect.targets.hf import HFTarget
from servecheck.collect.targets.trtllm import ENSEMBLE_NAMES, LLMAPI_NAMES
from servecheck.errors import InputError
from servecheck.formats.records import Parameters
from servecheck.reference.model import Reference
from servecheck.servers.supervise import check_ports, children, listening_holders

if TYPE_CHECKING:
    from pytriton.triton import Triton

TRTLLM_MODELS = ("ensemble", "tensorrt_llm_bls")
LLMAPI_MODEL = "tensorrt_llm"
TYPES = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32,
         "top_k": np.int32, "seed": np.uint64, "repetition_penalty": np.float32,
         "presence_penalty": np.float32, "frequency_penalty": np.float32, "exclude": np.bool_,
         "stream": np.bool_, "log_probs": np.bool_, "end_id": np.int32, "stop": bytes,
         "finish_reason": np.bool_}
START_TIMEOUT_S = 120.0


def libdir_on_loader_path() -> None:
    """The bundled tritonserver links against libpython; a pyenv interpreter keeps it off the
    default loader path, and pytriton copies this environment into the server process."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def _values(data: dict, name: str | None) -> list:
    """An input's values, flattened and decoded; none when the request did not send it."""
    if name is None or name not in data:
        return []
    return [v.decode("utf-8") if isinstance(v, bytes) else v
            for v in np.asarray(data[name]).reshape(-1).tolist()]


@dataclass
class Ask:
    """One request as the engine understands it, whichever names it came under."""

    text: str
    ids: list[int] | None
    """The prompt as ``input_ids``, when it came as ids (``text`` is then their decoding)."""
    params: Parameters
    exclude: bool
    log_probs: bool
    end_ids: list[int] | None
    stop: list[str]

    @classmethod
    def parse(cls, data: dict, names: dict[str, str]) -> Ask:
        def one(key: str, kind: type):
            v = _values(data, names.get(key))
            return kind(v[0]) if v else None

        p = Parameters(max_tokens=one("max_tokens", int), temperature=one("temperature", float),
                       top_p=one("top_p", float), top_k=one("top_k", int),
                       seed=one("seed", int), repetition_penalty=one("repetition_penalty", float))
        end = one("end_id", int)
        texts, ids = _values(data, "text_input"), _values(data, "input_ids")
        if not texts and not ids:
            raise ValueError("the request has neither text_input nor input_ids")
        return cls(texts[0] if texts else "", [int(t) for t in ids] if ids else None, p,
                   bool(one("exclude", bool)), bool(one("log_probs", bool)),
                   [end] if end is not None else None,
                   [s for s in _values(data, names.get("stop")) if s])

    def engine_text(self, ref: Reference) -> str:
        """The text to hand the engine: ``input_ids`` decoded, when they survive the round trip
        through the tokenizer unchanged (the engine tokenizes; ids it would change are refused
        rather than silently served as other ids)."""
        if self.ids is None:
            return self.text
        text = ref.decode(self.ids)
        if ref.encode(text) != self.ids:
            raise ValueError("input_ids are not the tokenizer's own tokenization of their text; "
                             "this host cannot feed them to the model unchanged")
        return text


class TritonHost:
    def __init__(self, model: str = "builtin", host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, seed_name: str = "seed",
                 add_special_tokens: bool = False, decoupled: bool = False, echo: bool = False,
                 fail_after: int | None = None, ignore_seed: bool = False,
                 batch_variant: bool = False, workspace: Path | None = None) -> None:
        self.engine = HFTarget(model)
        self.address = dict(host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port)
        self.workspace = workspace
        """pytriton's folder (binaries, model store); None: a fresh one in ~/.cache/pytriton."""
        self.names = {**ENSEMBLE_NAMES, "seed": seed_name}
        self.add_special_tokens = add_special_tokens
        self.decoupled = decoupled
        self.echo = echo
        self.fail_after = fail_after
        self.ignore_seed = ignore_seed
        self.batch_variant = batch_variant
        self._triton = None

    def _pieces(self, data: dict, names: dict[str, str], batch: int = 1) -> Iterator[dict]:
        """The responses to one request: one per token, the prompt first when it is echoed."""
        ask = Ask.parse(data, names)
        if self.ignore_seed:
            ask.params = ask.params.model_copy(update={"seed": 0})
        noise = 1.0 if self.batch_variant and batch > 1 else 0.0
        ref = self.engine.ref
        text = ask.engine_text(ref)
        # ids are the engine's input as they are; text goes through preprocessing's tokenizer
        special = self.add_special_tokens and ask.ids is None
        (c,) = self.engine.complete([text], ask.params, special, ask.end_ids, ask.stop or None,
                                    noise)
        finished = c.finished or len(c.output_ids) < (ask.params.max_tokens or 1)
        if self.echo or not ask.exclude:
            yield {"text": text, "ids": c.prompt_ids, "logprobs": []}
        shown = ""
        for k in range(len(c.output_ids)):
            if k == self.fail_after:
                raise RuntimeError(f"injected failure after {k} tokens (--fail-after)")
            # decoded with special tokens: a finished answer's text ends with its end marker
            decoded = ref.decode(c.output_ids[: k + 1])
            yield {"text": decoded[len(shown):], "ids": c.output_ids[k:k + 1],
                   "logprobs": c.logprobs[k:k + 1] if ask.log_probs else [],
                   "last": k == len(c.output_ids) - 1, "finished": finished}
            shown = decoded

    def _tensors(self, piece: dict, names: dict[str, str], reason: str | None
                 ) -> dict[str, np.ndarray]:
        """One response's tensors, batched as [1, …]: text, and ids or log-probs by model."""
        lp = np.asarray(piece["logprobs"], dtype=np.float32)
        out = {"text_output": np.array([[piece["text"].encode("utf-8")]], dtype=object)}
        if names is LLMAPI_NAMES:
            out["finish_reason"] = np.array([[(reason or "").encode()]], dtype=object)
            out["output_ids"] = np.asarray(piece["ids"], dtype=np.int32).reshape(1, 1, -1)
        elif lp.size:  # pytriton cannot send an empty tensor: no log-probs, no outputs for them
            out["output_log_probs"] = lp.reshape(1, 1, -1)
            out["cum_log_probs"] = np.array([[lp.sum()]], dtype=np.float32)
        # decoupled models are bound unbatched, so their tensors lose the batch dimension
        return {k: v[0] for k, v in out.items()} if self.decoupled else out

    def _whole(self, data: dict, names: dict[str, str], batch: int = 1) -> dict[str, np.ndarray]:
        pieces = list(self._pieces(data, names, batch))
        reason = "stop" if pieces and pieces[-1].get("finished") else "length"
        whole = {key: ("" if key == "text" else []) for key in ("text", "ids", "logprobs")}
        for piece in pieces:
            for key in whole:
                whole[key] += piece[key]
        return self._tensors(whole, names, reason)

    def _infer_with(self, names: dict[str, str]):
        def infer(requests: list) -> list[dict]:
            return [self._whole(r.data, names, len(requests)) for r in requests]

        def stream(requests: list) -> Iterator[list[dict]]:
            for r in requests:  # decoupled models are bound unbatched: one request per call
                for piece in self._pieces(r.data, names):
                    reason = ("stop" if piece.get("finished") else "length") if piece.get("last") else None
                    yield [self._tensors(piece, names, reason)]

        return stream if self.decoupled else infer

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

    def _signature(self, names: dict[str, str]) -> tuple[list, list]:
        from pytriton.model_config import Tensor

        ids = names is LLMAPI_NAMES  # one of text_input and input_ids, as Ask.parse checks
        inputs = [Tensor(name="text_input", dtype=bytes, shape=(1,), optional=ids)]
        if ids:
            inputs.append(Tensor(name="input_ids", dtype=np.int32, shape=(-1,), optional=True))
        for key, name in names.items():
            shape = (-1,) if key == "stop" else (1,)
            inputs.append(Tensor(name=name, dtype=TYPES[key], shape=shape,
                                 optional=key != "max_tokens"))
        outputs = [Tensor(name="text_output", dtype=bytes, shape=(-1,))]
        if ids:
            outputs += [Tensor(name="finish_reason", dtype=bytes, shape=(-1,)),
                        Tensor(name="output_ids", dtype=np.int32, shape=(-1, -1))]
        else:
            outputs += [Tensor(name="output_log_probs", dtype=np.float32, shape=(-1, -1)),
                        Tensor(name="cum_log_probs", dtype=np.float32, shape=(-1,))]
        return inputs, outputs

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
        # --batch-variant holds requests 20 ms so that concurrent ones share a batch
        batcher = DynamicBatcher(max_queue_delay_microseconds=20_000 if self.batch_variant else 0)
        model_config = (ModelConfig(batching=False, decoupled=True) if self.decoupled
                        else ModelConfig(max_batch_size=8, batcher=batcher))
        self._triton = Triton(config=config, workspace=self.workspace)
        _no_remote_unload(self._triton)
        for name, names in [(m, self.names) for m in TRTLLM_MODELS] + [(LLMAPI_MODEL, LLMAPI_NAMES)]:
            inputs, outputs = self._signature(names)
            self._triton.bind(name, self._infer_with(names), inputs, outputs,
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
    start-up failure means: a failed test, a benchmark that stops)."""
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
    and metrics ports, where the defaults may be taken)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()

"""``servecheck serve triton``: a real Triton server hosting an HF checkpoint, TensorRT-LLM style.

The original notes' "host the HF checkpoint as an endpoint" approach, on the real Triton server
binary that ships inside the ``nvidia-pytriton`` wheel (Python backend, CPU is enough). The model
is bound as ``ensemble`` and as ``tensorrt_llm_bls`` with the TensorRT-LLM interface: STRING
``text_input``, INT32 ``max_tokens``, FP32 ``temperature``/``top_p``, INT32 ``top_k``, UINT64
``seed`` (``random_seed`` before the 2025 rename: ``--seed-name``), BOOL ``return_log_probs`` and
``exclude_input_in_output`` (default false, as in TensorRT-LLM: the prompt is echoed unless the
client asks otherwise); outputs ``text_output`` and ``output_log_probs``. The HF-side behaviours
that matter are switches: ``--add-special-tokens`` tokenizes the templated text with special
tokens added, Triton preprocessing's default and the classic double-BOS bug.

Binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import os
import sysconfig

import numpy as np

from servecheck.records import Parameters
from servecheck.targets.hf import HFTarget

MODEL_NAMES = ("ensemble", "tensorrt_llm_bls")


def _libdir_on_loader_path() -> None:
    """The bundled tritonserver links against libpython; a pyenv interpreter keeps it off the
    default loader path, and pytriton copies this environment into the server process."""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    current = os.environ.get("LD_LIBRARY_PATH", "")
    if libdir and libdir not in current.split(":"):
        os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{current}" if current else libdir


def _scalar(data: dict, name: str, kind: type | None = None):
    if name not in data:
        return None
    value = np.asarray(data[name]).reshape(-1)[0]
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return kind(value) if kind else value


class TritonHost:
    def __init__(self, model: str = "builtin", host: str = "127.0.0.1", http_port: int = 8000,
                 grpc_port: int = 8001, metrics_port: int = 8002, seed_name: str = "seed",
                 add_special_tokens: bool = False) -> None:
        self.engine = HFTarget(model)
        self.address = dict(host=host, http_port=http_port, grpc_port=grpc_port,
                            metrics_port=metrics_port)
        self.seed_name = seed_name
        self.add_special_tokens = add_special_tokens
        self._triton = None

    def _answer(self, data: dict) -> dict:
        text = _scalar(data, "text_input")
        p = Parameters(
            max_tokens=_scalar(data, "max_tokens", int),
            temperature=_scalar(data, "temperature", float),  # float32 on the wire: 0.9 → 0.8999…
            top_p=_scalar(data, "top_p", float), top_k=_scalar(data, "top_k", int),
            seed=_scalar(data, self.seed_name, int))
        (c,) = self.engine.complete([text], p, self.add_special_tokens)
        out = self.engine.ref.decode(c.output_ids)
        if not _scalar(data, "exclude_input_in_output", bool):
            out = text + out
        logprobs = np.asarray(c.logprobs if _scalar(data, "return_log_probs", bool) else [],
                              dtype=np.float32)
        return {"text_output": np.array([[out.encode("utf-8")]], dtype=object),
                "output_log_probs": logprobs.reshape(1, 1, -1),
                "cum_log_probs": np.array([[logprobs.sum()]], dtype=np.float32)}

    def infer(self, requests: list) -> list[dict]:
        return [self._answer(r.data) for r in requests]

    def start(self) -> None:
        """Start the server in the background; returns once the models are ready."""
        self._bind()
        assert self._triton is not None
        self._triton.run()

    def serve_forever(self) -> None:
        self._bind()
        assert self._triton is not None
        self._triton.serve()

    def _bind(self) -> None:
        _libdir_on_loader_path()
        from pytriton.model_config import ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig

        a = self.address
        config = TritonConfig(http_address=a["host"], http_port=a["http_port"],
                              grpc_address=a["host"], grpc_port=a["grpc_port"],
                              metrics_address=a["host"], metrics_port=a["metrics_port"],
                              allow_gpu_metrics=False, exit_timeout_secs=5)
        optional = [("temperature", np.float32), ("top_p", np.float32), ("top_k", np.int32),
                    (self.seed_name, np.uint64), ("return_log_probs", np.bool_),
                    ("exclude_input_in_output", np.bool_), ("stream", np.bool_)]
        inputs = [Tensor(name="text_input", dtype=bytes, shape=(1,)),
                  Tensor(name="max_tokens", dtype=np.int32, shape=(1,))]
        inputs += [Tensor(name=n, dtype=t, shape=(1,), optional=True) for n, t in optional]
        outputs = [Tensor(name="text_output", dtype=bytes, shape=(-1,)),
                   Tensor(name="output_log_probs", dtype=np.float32, shape=(-1, -1)),
                   Tensor(name="cum_log_probs", dtype=np.float32, shape=(-1,))]
        self._triton = Triton(config=config)
        for name in MODEL_NAMES:
            self._triton.bind(name, self.infer, inputs, outputs,
                              config=ModelConfig(max_batch_size=8), strict=True)

    def stop(self) -> None:
        if self._triton is not None:
            self._triton.stop()
            self._triton = None

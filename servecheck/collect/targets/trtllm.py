"""The TensorRT-LLM interface of a Triton model, learnt from the model's own config.

Deployments differ in names: the ``ensemble`` and ``tensorrt_llm_bls`` models take ``max_tokens``,
``temperature``, ``seed`` (``random_seed`` before the 2025 rename) …; the newer ``llmapi`` model
takes ``sampling_param_max_tokens``, ``sampling_param_seed`` …; the C++ ``tensorrt_llm`` model
itself takes ``request_output_len``, ``runtime_top_k`` … . Rather than guess from a version
number, the client reads the config Triton reports and sends only inputs the model declares,
each in the type the config gives. That type also says how the server will decode the value:
an FP32 input turns 0.9 into 0.8999999762, and the record keeps both.

Token ids come where the deployment has them, because ids are what the checks score and text
alone leaves the tokenization to be guessed: a model that declares ``input_ids`` is sent the
reference tokenization of the prompt (the preprocessing that would add a second BOS is then not
in the path), and the ``output_ids`` a model returns are recorded. The ``ensemble`` and BLS
models have neither; their ``output_log_probs`` (one per generated token) at least tell the
checks how many tokens the text is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from servecheck.collect.targets.answers import Reader, get
from servecheck.errors import TargetError
from servecheck.formats.parameters import Parameters

ENSEMBLE_NAMES = {
    "max_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "repetition_penalty": "repetition_penalty", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "exclude": "exclude_input_in_output",
    "stream": "stream", "log_probs": "return_log_probs", "end_id": "end_id", "stop": "stop_words",
}
LLMAPI_NAMES = {
    "max_tokens": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
    "top_p": "sampling_param_top_p", "top_k": "sampling_param_top_k",
    "presence_penalty": "sampling_param_presence_penalty",
    "frequency_penalty": "sampling_param_frequency_penalty",
    "exclude": "sampling_param_exclude_input_from_output", "stream": "streaming",
    "stop": "sampling_param_stop", "seed": "sampling_param_seed",
    "finish_reason": "return_finish_reason",
}
CPP_NAMES = {
    "max_tokens": "request_output_len", "temperature": "temperature", "top_p": "runtime_top_p",
    "top_k": "runtime_top_k", "repetition_penalty": "repetition_penalty",
    "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
    "exclude": "exclude_input_in_output", "stream": "streaming", "log_probs": "return_log_probs",
    "end_id": "end_id",
}
"""The C++ ``tensorrt_llm`` model's own names; its stop words are token ids (``stop_words_list``)."""
SEED_NAMES = ("seed", "random_seed")

NUMPY = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT32": np.int32,
         "INT64": np.int64, "UINT32": np.uint32, "UINT64": np.uint64, "BOOL": np.bool_,
         "BYTES": np.object_, "STRING": np.object_}


@dataclass(frozen=True)
class Options:
    """What the user asked of the transport beyond the request's sampling parameters."""

    end_id: int | None = None
    stop_words: tuple[str, ...] = ()
    stream: bool | None = None
    """None: stream exactly when the model is decoupled (it can answer no other way)."""


@dataclass(frozen=True)
class Interface:
    model: str
    inputs: dict[str, str]
    """Declared input name → Triton data type (``FP32``, ``INT32``, ``BYTES`` …)."""
    batched: bool
    """``max_batch_size`` > 0: tensors carry a leading batch dimension."""
    decoupled: bool

    @classmethod
    def from_config(cls, model: str, config: dict[str, Any]) -> Interface:
        read = Reader(f"the config of model '{model}'")
        inputs = {}
        for k, i in enumerate(read.items(config.get("input"), "input", optional=True)):
            i = read.obj(i, f"input[{k}]")
            name = read.text(get(i, "name"), f"input[{k}].name")
            kind = read.text(i.get("data_type", "TYPE_BYTES"), f"input[{k}].data_type")
            inputs[name] = kind.removeprefix("TYPE_")  # type: ignore[union-attr]
        if "text_input" not in inputs and "input_ids" not in inputs:
            raise TargetError(f"model '{model}' has neither text_input nor input_ids: not a "
                              f"TensorRT-LLM model (inputs: {sorted(inputs)})")
        policy = read.obj(config.get("model_transaction_policy"), "model_transaction_policy",
                          optional=True)
        batch = read.integer(config.get("max_batch_size"), "max_batch_size", optional=True)
        return cls(model, inputs, (batch or 0) > 0, bool(policy.get("decoupled")))

    @property
    def llmapi(self) -> bool:
        return "sampling_param_max_tokens" in self.inputs

    @property
    def takes_ids(self) -> bool:
        """The prompt goes as ``input_ids`` (the reference tokenization), not as text."""
        return "input_ids" in self.inputs

    @property
    def names(self) -> dict[str, str]:
        if self.llmapi:
            return dict(LLMAPI_NAMES)
        names = dict(CPP_NAMES if "request_output_len" in self.inputs else ENSEMBLE_NAMES)
        names["seed"] = next((n for n in SEED_NAMES if n in self.inputs), "seed")
        return names

    def streams(self, options: Options) -> bool:
        return self.decoupled if options.stream is None else options.stream

    def build(self, prompt: str | list[int], p: Parameters, max_tokens: int, options: Options
              ) -> dict[str, Any]:
        """The inputs to send, in the model's names; a requested setting it lacks is an error.
        ``prompt`` is the templated text, or its token ids for a model that ``takes_ids``."""
        names = self.names
        wanted: dict[str, Any] = {"max_tokens": max_tokens, "exclude": True}
        for key in ("temperature", "top_p", "top_k", "seed", "repetition_penalty",
                    "presence_penalty", "frequency_penalty"):
            if getattr(p, key) is not None:
                wanted[key] = getattr(p, key)
        if p.min_p is not None:
            raise TargetError("the TensorRT-LLM interface has no min_p")
        if options.end_id is not None:
            wanted["end_id"] = options.end_id
        if options.stop_words:
            wanted["stop"] = list(options.stop_words)
        wanted["stream"] = self.streams(options)
        if isinstance(prompt, str):
            sent: dict[str, Any] = {"text_input": prompt}
        else:
            sent = {"input_ids": prompt}
            if "input_lengths" in self.inputs:  # the C++ model's companion of input_ids
                sent["input_lengths"] = len(prompt)
        for key, value in wanted.items():
            name = names.get(key)
            if name in self.inputs:
                sent[name] = value
            elif key in ("max_tokens", "temperature", "top_p", "top_k", "seed", "end_id", "stop",
                         "repetition_penalty", "presence_penalty", "frequency_penalty"):
                expected = f"expected '{name}'" if name else "it takes them as token ids, not sent here"
                raise TargetError(f"model '{self.model}' declares no input for {key} "
                                  f"({expected}); it would be silently ignored")
        for optional in ("log_probs", "finish_reason"):
            if names.get(optional) in self.inputs:
                sent[names[optional]] = True
        return sent

    def as_received(self, sent: dict[str, Any]) -> dict[str, Any]:
        """Each sent value as the server decodes it from its declared type (FP32 rounds)."""
        out: dict[str, Any] = {}
        for name, value in sent.items():
            if name in ("text_input", "input_ids"):  # the record's input / prompt_token_ids
                continue
            dtype = NUMPY.get(self.inputs.get(name, ""))
            if dtype in (np.float32, np.float16) and isinstance(value, float | int):
                out[name] = float(dtype(value))
            else:
                out[name] = value
        return out

    def array(self, name: str, value: Any) -> np.ndarray:
        """A tensor for gRPC: the declared dtype, with the batch dimension when batched."""
        dtype = NUMPY.get(self.inputs[name], np.object_)
        values = value if isinstance(value, list) else [value]
        if dtype is np.object_:
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        arr = np.array(values, dtype=dtype)
        return arr.reshape(1, -1) if self.batched else arr


@dataclass
class Answer:
    """The pieces of one response, joined across stream frames (a decoupled model sends the new
    tokens' text, ids and log-probs in each frame). Beam width is never sent, so it is 1 and a
    flattened ``output_ids`` ([batch, beam, tokens]) is the one sequence."""

    text: str | None = None
    """None when the model sends no ``text_output`` (the C++ ``tensorrt_llm`` model)."""
    ids: list[int] | None = None
    logprobs: list[float] | None = None
    finish_reason: str | None = None
    frames: int = 0

    def add(self, outputs: dict[str, Any]) -> None:
        """Add one response's outputs (JSON values or numpy arrays, both flattened). Each value
        must be of its output's type: ``["Blue.", 7, null]`` is a broken answer, not the text
        "Blue.7None"."""
        self.frames += 1
        if "error" in outputs:
            raise TargetError(f"error frame after {self.frames - 1} good frame(s): "
                              f"{short_error(outputs['error'])}")
        read = Reader(f"frame {self.frames}" if self.frames > 1 else "")
        if self.frames == 1 and "text_output" not in outputs and "output_ids" not in outputs:
            raise read.broken("text_output and output_ids", f"are both missing: "
                              f"{str(outputs)[:200]}")
        if "text_output" in outputs:
            self.text = (self.text or "") + "".join(
                read.texts(_flat(outputs["text_output"]) or [], "text_output"))
        if "output_ids" in outputs:
            self.ids = (self.ids or []) + (read.integers(
                _flat(outputs["output_ids"]) or [], "output_ids") or [])
        lp = _flat(outputs.get("output_log_probs"))
        if lp is not None:
            self.logprobs = (self.logprobs or []) + [
                float(x) for x in read.logprobs(lp, "output_log_probs") or []]
        reason = _flat(outputs.get("finish_reason"))
        if reason:
            self.finish_reason = read.texts(reason, "finish_reason")[-1]


def short_error(message: object, limit: int = 500) -> str:
    """A server's error message, cut to what names the problem: a Python backend sends its whole
    traceback, whose last unindented lines are the exception itself."""
    text = str(message).strip()
    if "Traceback (most recent call last)" in text:
        lines = text.splitlines()
        frame = max((k for k, line in enumerate(lines) if line.startswith('  File "')), default=-1)
        rest = lines[frame + 1:]
        if rest and rest[0].startswith("    "):  # the frame's source line
            rest = rest[1:]
        text = " ".join(line.strip() for line in rest) or text
    return text[:limit]


def _flat(value: Any) -> list | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.reshape(-1).tolist()
    return value if isinstance(value, list) else [value]

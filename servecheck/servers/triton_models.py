"""The models ``serve triton`` binds: what they take, what they answer, the faults they inject.

Kept apart from ``triton_host`` (the server's start, stop and ports), since this half is
TensorRT-LLM's interface, not the running of Triton: the tensors of each model's signature, a
request read whichever names it came under (``Ask``), and the HF engine's answer cut into the
responses a TensorRT-LLM deployment sends, token by token when it is decoupled. The fault
switches of ``servecheck serve triton`` (``--echo``, ``--fail-after``, …) act here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from servecheck.collect.targets.hf import HFTarget
from servecheck.collect.targets.trtllm import ENSEMBLE_NAMES, LLMAPI_NAMES
from servecheck.formats.parameters import Parameters
from servecheck.reference.model import Reference

TRTLLM_MODELS = ("ensemble", "tensorrt_llm_bls")
LLMAPI_MODEL = "tensorrt_llm"
TYPES = {"max_tokens": np.int32, "temperature": np.float32, "top_p": np.float32,
         "top_k": np.int32, "seed": np.uint64, "repetition_penalty": np.float32,
         "presence_penalty": np.float32, "frequency_penalty": np.float32, "exclude": np.bool_,
         "stream": np.bool_, "log_probs": np.bool_, "end_id": np.int32, "stop": bytes,
         "finish_reason": np.bool_}


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


class Models:
    """The HF engine behind all three models, with the switches that make it misbehave."""

    def __init__(self, model: str = "builtin", seed_name: str = "seed",
                 add_special_tokens: bool = False, decoupled: bool = False, echo: bool = False,
                 fail_after: int | None = None, ignore_seed: bool = False,
                 batch_variant: bool = False) -> None:
        self.engine = HFTarget(model)
        self.names = {**ENSEMBLE_NAMES, "seed": seed_name}
        self.add_special_tokens = add_special_tokens
        self.decoupled = decoupled
        self.echo = echo
        self.fail_after = fail_after
        self.ignore_seed = ignore_seed
        self.batch_variant = batch_variant

    def warm_up(self) -> None:
        """Load the checkpoint and generate once, sampled, before the server takes requests: the
        weights load on first use and a first generation imports what later ones reuse, which
        cost the first request about 2.5 s on a 2-core machine."""
        self.engine.complete(["Hello"], Parameters(max_tokens=2, temperature=1.0, top_p=0.9,
                                                   top_k=40, seed=0))

    def bound(self) -> list[tuple[str, dict[str, str]]]:
        """Each model's name and its input names: the ensemble's twice, then the llmapi one."""
        return [(m, self.names) for m in TRTLLM_MODELS] + [(LLMAPI_MODEL, LLMAPI_NAMES)]

    def pieces(self, data: dict, names: dict[str, str], batch: int = 1) -> Iterator[dict]:
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

    def tensors(self, piece: dict, names: dict[str, str], reason: str | None
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

    def whole(self, data: dict, names: dict[str, str], batch: int = 1) -> dict[str, np.ndarray]:
        """A non-streaming model's one response: the pieces joined."""
        pieces = list(self.pieces(data, names, batch))
        reason = "stop" if pieces and pieces[-1].get("finished") else "length"
        whole = {key: ("" if key == "text" else []) for key in ("text", "ids", "logprobs")}
        for piece in pieces:
            for key in whole:
                whole[key] += piece[key]
        return self.tensors(whole, names, reason)

    def infer_with(self, names: dict[str, str]):
        """The inference callable pytriton binds for a model with these input names."""
        def infer(requests: list) -> list[dict]:
            return [self.whole(r.data, names, len(requests)) for r in requests]

        def stream(requests: list) -> Iterator[list[dict]]:
            for r in requests:  # decoupled models are bound unbatched: one request per call
                for piece in self.pieces(r.data, names):
                    reason = ("stop" if piece.get("finished") else "length") if piece.get("last") else None
                    yield [self.tensors(piece, names, reason)]

        return stream if self.decoupled else infer

    def signature(self, names: dict[str, str]) -> tuple[list, list]:
        """pytriton's input and output tensors for a model with these input names."""
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

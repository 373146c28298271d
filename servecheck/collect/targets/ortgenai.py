"""``ortgenai:PATH``: an ONNX Runtime GenAI model, in process (``onnxruntime-genai`` from PyPI).

PATH is a folder its model builder wrote (``python -m onnxruntime_genai.models.builder``, or
``servers/convert.py``). Everything is the engine's own: its tokenizer and its chat template
engine (``og.Tokenizer``), its kernels, its sampler, its random generator; transformers is not
used. The search options go as ``genai_config.json`` names them.

What ONNX Runtime GenAI does its own way (../shared/reference/engines.md, measured again here):

- settings: ``do_sample`` (default **false**: greedy, whatever the temperature, unless the
  deployment turns it on), ``top_k`` (builder default **50**; 0 means no top_k, **and then
  top_p is not applied either**), ``top_p``, ``temperature``, ``repetition_penalty``,
  ``random_seed`` (per request: a fresh generator each, so requests with one seed share their
  draws); no min_p, presence or frequency penalty (a request setting one is refused);
- order: repetition penalty (prompt and output tokens), top_k, temperature, top_p;
- ``max_length`` counts the prompt too and must cover the sliding window of Gemma 3 models, so
  the target stops at max_tokens itself;
- no log-prob API: the logits output after each step is the row after the repetition penalty,
  before the temperature, and its log-softmax is recorded as the served log-prob;
- its decoder drops special tokens, so the end marker is put back on a finished output.

A neutral deployment (the default) spells "no top_k" as the vocabulary size, so top_p still
applies; ``?top_k_zero=1`` sends 0 as the request spells it, which is the engine's own trap.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from servecheck.collect.targets.engine import EngineTarget, Generation
from servecheck.errors import InputError, TargetError
from servecheck.formats.prompts import Request

SEED_MAX = 2**31 - 1


class OrtGenAITarget(EngineTarget):
    engine = "ONNX Runtime GenAI"
    lacks = frozenset({"min_p", "presence_penalty", "frequency_penalty"})
    extra_options = ("top_k_zero",)

    def __init__(self, spec: str, path: Path, opts: dict[str, str]) -> None:
        super().__init__(spec, path, opts)
        import onnxruntime_genai as og

        config = path / "genai_config.json"
        if not config.exists():
            raise InputError("not an ONNX Runtime GenAI model: genai_config.json missing",
                             where=spec)
        self.top_k_zero = opts.get("top_k_zero", "0") == "1"
        self.og = og
        try:
            self.model = og.Model(str(path))
        except Exception as e:  # og raises RuntimeError and its own types
            raise InputError(f"ONNX Runtime GenAI cannot open the model: {e}", where=spec) from None
        self.tokenizer = og.Tokenizer(self.model)
        meta = json.loads(config.read_text())["model"]
        self.vocab = int(meta["vocab_size"])
        eos = meta.get("eos_token_id")
        self.end_ids = set(eos if isinstance(eos, list) else [eos])
        window = (meta.get("decoder", {}).get("sliding_window") or {}).get("window_size", 0)
        self.min_length = int(window) + 1
        self.context = int(meta.get("context_length", 0)) or None
        self.markers = self._special_tokens(path)
        self._version = og.__version__

    @staticmethod
    def _special_tokens(path: Path) -> dict[int, str]:
        """id → text of the tokenizer's special tokens (its decoder drops them)."""
        try:
            added = json.loads((path / "tokenizer.json").read_text()).get("added_tokens", [])
        except (OSError, ValueError):
            return {}
        return {t["id"]: t["content"] for t in added if t.get("special")}

    @property
    def version(self) -> str:
        return self._version

    def render(self, request: Request) -> str:
        messages = [{"role": m["role"], "content": m["content"]}
                    for m in request.conversation.hf_messages()]
        return self.tokenizer.apply_chat_template(json.dumps(messages),
                                                  add_generation_prompt=True)

    def run(self, prompt: str, settings: dict[str, Any], greedy: bool, max_tokens: int,
            seed: int | None) -> tuple[Generation, dict[str, Any]]:
        og = self.og
        ids = [int(t) for t in self.tokenizer.encode(prompt)]
        length = max(len(ids) + max_tokens, self.min_length)
        if self.context:
            length = min(length, self.context)
        sent: dict[str, Any] = {"max_length": length}
        if greedy:
            sent["do_sample"] = False
        else:
            if not self.engine_defaults:
                sent["do_sample"] = True
            for name in ("temperature", "top_p", "top_k"):
                if settings[name] is not None:
                    sent[name] = settings[name]
            if sent.get("top_k") == 0 and not self.top_k_zero:
                sent["top_k"] = self.vocab  # "no top_k" without turning top_p off
        if settings.get("repetition_penalty") is not None:
            sent["repetition_penalty"] = settings["repetition_penalty"]
        if seed is not None:
            if seed > SEED_MAX:
                raise TargetError(f"ONNX Runtime GenAI takes a random_seed up to {SEED_MAX} (a "
                                  f"signed 32-bit int); this request asks for {seed}")
            sent["random_seed"] = seed
        params = og.GeneratorParams(self.model)
        params.set_search_options(**sent)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        out: list[int] = []
        logprobs: list[float] = []
        while not generator.is_done() and len(out) < max_tokens:
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            row = np.asarray(generator.get_output("logits"), dtype=np.float64)
            row = row.reshape(-1, row.shape[-1])[-1]
            logprobs.append(float(row[token] - np.logaddexp.reduce(row)))
            out.append(token)
        finished = bool(out) and out[-1] in self.end_ids
        return Generation(ids, out, logprobs, finished), sent

    def text(self, generation: Generation) -> str:
        ids = generation.output_ids
        body = ids[:-1] if generation.finished else ids
        return self.tokenizer.decode(body) + (self.markers.get(ids[-1], "")
                                              if generation.finished else "")

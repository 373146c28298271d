"""In-process transformers generation: ``hf:PATH`` or ``hf:builtin``.

The original notes' first approach (host the HF checkpoint and generate), and servecheck's
ground truth: templating with the checkpoint's own chat template, tokenizing without adding
special tokens, sampling with HF's own warpers at the requested temperature/top_p/top_k/min_p/
repetition penalty/seed/max_tokens, and the raw log-probs of the generated tokens recorded.

``?fault=NAME[,NAME]`` turns on a deployment bug seen in the wild (``targets/faults.py``), so the
demo, the tests and the benchmarks have a faulty server whose fault is known:

- template and termination: ``double-bos`` (templated prompt tokenized with special tokens
  added), ``assistant-role`` (answering role written ``assistant``), ``drop-system``, ``echo``
  (prompt returned in front of the output), ``strip-end`` (end-of-turn marker stripped),
  ``ignore-eos`` (generation runs past the end of turn);
- sampling: ``temperature-ignored``, ``temperature-twice``, ``top-p-ignored``,
  ``top-k-off-by-one``, ``nucleus-boundary``, ``repetition-penalty``;
- weights: ``int8``, ``int4`` (weight-only round-to-nearest quantisation);
- seeds: ``seed-ignored`` (every request sampled with seed 0);
- after generation (``serving.py``): ``tools-dropped``, ``thinking-ignored``, ``stop-ignored``,
  ``stop-leaked``, ``usage-off-by-one``, ``identical-choices``, ``arguments-reescaped``,
  ``call-lost``, ``answer-as-reasoning``.

``?dtype=bfloat16`` runs the model in bf16, ``?round_params=float32`` sends sampling parameters
through float32 as Triton does (0.9 → 0.8999999762): correct servers with other numerics.
``?order=llama.cpp`` samples in llama.cpp's order (top_k, top_p and min_p on temperature-1
probabilities, then temperature): a correct server of another engine family.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import numpy as np

from servecheck.collect.targets import DEFAULT_MAX_TOKENS, Target, serving, spec_options
from servecheck.collect.targets.clock import Stopwatch
from servecheck.collect.targets.faults import (
    FAULTS,
    SAMPLING_FAULTS,
    WEIGHT_FAULTS,
    FaultySampler,
    LogitNoise,
    quantize_weights,
)
from servecheck.errors import InputError, TargetError
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord, Timing
from servecheck.reference.markup import markup_of
from servecheck.reference.model import Reference
from servecheck.reference.sampling import HF, ORDERS, Sampling


@dataclass
class Completion:
    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]
    """Raw log-probs of the generated tokens."""
    finished: bool
    """Ended on an end-of-turn token (else: max_tokens)."""


def _round_float32(p: Parameters) -> Parameters:
    f32 = {k: float(np.float32(v)) for k, v in p.model_dump().items()
           if isinstance(v, float)}
    return p.model_copy(update=f32)


class HFTarget(Target):
    takes = frozenset({"tools", "chat_template_kwargs", "stop", "n"})
    def __init__(self, model: str = "builtin", faults: frozenset[str] = frozenset(),
                 dtype: str = "float32", spec: str | None = None, round_params: bool = False,
                 order: str = "hf") -> None:
        unknown = faults - FAULTS
        if unknown:
            raise InputError(f"unknown fault {sorted(unknown)} (known: {sorted(FAULTS)})",
                             where=spec or model)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise InputError(f"unsupported dtype '{dtype}'", where=spec or model)
        self.spec = spec or f"hf:{model}"
        self.faults = faults
        self.ref = Reference(model, dtype=dtype)
        self.round_params = round_params
        if order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}",
                             where=spec or model)
        self.convention = ORDERS[order]
        for f in faults & set(WEIGHT_FAULTS):
            quantize_weights(self.ref.model, WEIGHT_FAULTS[f])

    @classmethod
    def from_spec(cls, spec: str, rest: str) -> HFTarget:
        path, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in spec_options(query, ("fault", "dtype", "round_params", "order"),
                                                  spec).items()}
        faults = frozenset(f for f in opts.get("fault", "").split(",") if f)
        rounding = opts.get("round_params")
        if rounding not in (None, "float32"):
            raise InputError("round_params takes only 'float32'", where=spec)
        return cls(path or "builtin", faults, opts.get("dtype", "float32"), spec,
                   rounding == "float32", opts.get("order", "hf"))

    def template(self, request: Request) -> str:
        messages = request.conversation.hf_messages()
        if "drop-system" in self.faults:
            messages = [m for m in messages if m["role"] != "system"]
        kwargs = request.conversation.template_kwargs()
        if "tools-dropped" in self.faults:
            kwargs.pop("tools", None)
        if "thinking-ignored" in self.faults:
            kwargs = {k: v for k, v in kwargs.items() if k == "tools"}
        text = self.ref.render_messages(messages, **kwargs)
        if "assistant-role" in self.faults:
            text = self._rename_answer_role(messages, text)
        return text

    def _rename_answer_role(self, messages: list[dict[str, str]], text: str) -> str:
        """Write the generation header's role word as ``assistant`` wherever the header occurs."""
        header = text[len(self.ref.render_messages(messages, add_generation_prompt=False)):]
        word = re.search(r"[A-Za-z]+", self.ref.strip_special(header))
        if not word or word.group() == "assistant":
            raise TargetError("the assistant-role fault needs a template whose answering role "
                              "is not already 'assistant'")
        return text.replace(header, header.replace(word.group(), "assistant"))

    def _generate_kwargs(self, p: Parameters) -> dict:
        ends = self.ref.end_ids
        kwargs: dict = dict(
            max_new_tokens=p.max_tokens or DEFAULT_MAX_TOKENS, do_sample=not p.greedy,
            eos_token_id=None if "ignore-eos" in self.faults else ends,
            pad_token_id=self.ref.tokenizer.pad_token_id or ends[0],
            output_logits=True, return_dict_in_generate=True)
        if p.greedy:
            return kwargs
        if self.faults & set(SAMPLING_FAULTS) or self.convention != HF:
            # HF's warpers off; the faulty sampler returns the whole distribution.
            from transformers import LogitsProcessorList

            kwargs.update(temperature=1.0, top_p=1.0, top_k=0, logits_processor=LogitsProcessorList(
                [FaultySampler(Sampling.of(p), self.faults, self.convention)]))
            return kwargs
        kwargs.update(temperature=p.temperature if p.temperature is not None else 1.0,
                      top_p=p.top_p if p.top_p is not None else 1.0, top_k=p.top_k or 0,
                      min_p=p.min_p)
        if p.repetition_penalty is not None:
            kwargs["repetition_penalty"] = p.repetition_penalty
        return kwargs

    def complete(self, prompts: list[str], p: Parameters, add_special_tokens: bool = False,
                 end_ids: list[int] | None = None, stop_strings: list[str] | None = None,
                 logit_noise: float = 0.0) -> list[Completion]:
        """Continue already-templated prompts, batched and left-padded, as a serving engine does.

        This is what a server receives (Triton's ``text_input``); ``generate_batch`` adds the
        templating. The RNG is seeded once per call from ``p.seed``. ``end_ids`` replaces the
        checkpoint's end tokens (a server's ``end_id``); ``stop_strings`` also end generation.
        """
        import torch

        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(p, name):
                raise TargetError(f"the hf target has no {name}")
        sent = _round_float32(p) if self.round_params else p
        tok = self.ref.tokenizer
        tok.padding_side = "left"
        enc = tok(prompts, add_special_tokens=add_special_tokens, return_tensors="pt",
                  padding=True)
        width = enc["input_ids"].shape[1]
        seed_ignored = "seed-ignored" in self.faults
        torch.manual_seed(p.seed if p.seed is not None and not seed_ignored else 0)
        kwargs = self._generate_kwargs(sent)
        ends = end_ids or self.ref.end_ids
        if end_ids and kwargs["eos_token_id"] is not None:
            kwargs["eos_token_id"] = end_ids
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=tok)
        if logit_noise:
            from transformers import LogitsProcessorList

            kwargs["logits_processor"] = LogitsProcessorList(
                [*kwargs.get("logits_processor", []), LogitNoise(logit_noise)])
        with torch.inference_mode():
            out = self.ref.model.generate(**enc, **kwargs)
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B, steps, V]
        done = []
        for row in range(len(prompts)):
            out_ids = out.sequences[row, width:].tolist()
            cut = next((k + 1 for k, t in enumerate(out_ids) if t in ends), None)
            if "ignore-eos" not in self.faults:
                out_ids = out_ids[:cut] if cut else out_ids
            done.append(Completion(
                prompt_ids=enc["input_ids"][row][enc["attention_mask"][row] == 1].tolist(),
                output_ids=out_ids,
                logprobs=logprobs[row, torch.arange(len(out_ids)), torch.tensor(out_ids)].tolist(),
                finished=cut is not None and "ignore-eos" not in self.faults))
        return done

    def generate_batch(self, requests: list[Request]) -> list[ResponseRecord]:
        """Answer requests that share their sampling parameters in one batched ``generate``;
        per-request seeds are not honoured here (one seed per batch)."""
        clock = Stopwatch()
        p = requests[0].parameters
        if any(Sampling.of(r.parameters) != Sampling.of(p) or (r.parameters.max_tokens, r.parameters.stop,
               r.parameters.n) != (p.max_tokens, p.stop, p.n) for r in requests):
            raise ValueError("generate_batch needs requests with the same sampling parameters")
        rows = [(r, k) for r in requests for k in range(serving.choices(p))]
        prompts = [self.template(r) for r, _ in rows]
        stops = None if "stop-ignored" in self.faults else p.stop
        completions = self.complete(prompts, p, add_special_tokens="double-bos" in self.faults,
                                    stop_strings=stops)
        if "identical-choices" in self.faults:
            completions = [completions[i - k] for i, (_, k) in enumerate(rows)]
        timing = clock.timing(share=len(requests))
        records = []
        for (request, k), prompt, c in zip(rows, prompts, completions, strict=True):
            records.append(self._record(request, k, prompt, c, timing))
        return records

    def _record(self, request: Request, choice: int, prompt: str, c: Completion,
                timing: Timing) -> ResponseRecord:
        """One choice as an OpenAI-compatible server returns it (stop strings cut, parsers run,
        usage counted: ``serving.py``)."""
        hidden = bool(self.faults & {"echo", "strip-end"})  # ids would contradict the text
        text = self.ref.decode(c.output_ids)
        text, stopped = serving.cut_at_stop(text, request.parameters.stop, self.faults)
        ids, logprobs = c.output_ids, c.logprobs
        if stopped:  # the ids that spell the text kept; a token across the cut loses them all
            keep = next((n for n in range(len(ids), -1, -1)
                         if self.ref.decode(ids[:n]) == text), None)
            hidden = hidden or keep is None
            ids, logprobs = ids[:keep or 0], logprobs[:keep or 0]
        if "strip-end" in self.faults:
            text = self.ref.strip_special(text)
        if "echo" in self.faults:
            text = self.ref.tokenizer.decode(c.prompt_ids, skip_special_tokens=True) + text
        parts = serving.parsed_fields(text, request.conversation, markup_of(self.ref),
                                      self.faults)
        reason = "stop" if c.finished or stopped else "length"
        return ResponseRecord(
            id=request.id, conversations=request.conversation, parameters=request.parameters,
            input=prompt, output=text, target=self.spec,
            finish_reason="tool_calls" if parts.get("tool_calls") and reason == "stop" else reason,
            choice=choice if request.parameters.n else None,
            prompt_token_ids=c.prompt_ids, output_token_ids=None if hidden else ids,
            output_logprobs=None if hidden else logprobs,
            usage=serving.usage(c.prompt_ids, c.output_ids, self.faults), **parts,
            timing=timing)

    def _generate_sync(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        records = self.generate_batch([request])
        return records if request.parameters.n else records[0]

    async def generate(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        return await asyncio.to_thread(self._generate_sync, request)

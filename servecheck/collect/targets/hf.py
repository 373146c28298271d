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
  ``call-lost``, ``answer-as-reasoning``;
- deployment: ``window-off-by-one`` (sliding layers see one key more), ``window-ignored``
  (sliding layers attend globally; ``window.py``), ``kv-fp8`` (keys and values stored in FP8
  E4M3; ``kv_cache.py``), ``prefix-cache-stale`` (a prefix cache matching on its first block;
  ``prefix_cache.py``), ``spec-lossy`` (speculation without the rejection test;
  ``speculative.py``).

Every row (each request of a batch, each of its ``n`` choices) samples with its own generator
(``rng.py``), so a seeded request gives the same tokens whatever else runs in the process.

``?dtype=bfloat16`` runs the model in bf16, ``?round_params=float32`` sends sampling parameters
through float32 as Triton does (0.9 → 0.8999999762): correct servers with other numerics.
``?order=llama.cpp`` samples in llama.cpp's order (top_k, top_p and min_p on temperature-1
probabilities, then temperature): a correct server of another engine family.
``?prefix_cache=on`` reuses the keys and values of earlier prompts in 16-token blocks
(``usage.cached_tokens`` says how many); ``?speculative=draft`` decodes speculatively with the
checkpoint's first layer as its draft, losslessly: correct servers with other machinery, whose
records say so (``serving``). Both serve one row at a time.
"""

from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from functools import cached_property

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
from servecheck.collect.targets.grammar_decoding import decoding_for, forced_call_of
from servecheck.collect.targets.kv_cache import new_cache
from servecheck.collect.targets.prefix_cache import PrefixCache, Restored
from servecheck.collect.targets.rng import RowSampler, generator, hf_warpers, row_seed
from servecheck.collect.targets.window import WINDOW_FAULTS, serve_window
from servecheck.errors import InputError, TargetError
from servecheck.formats.grammar import Grammar
from servecheck.formats.parameters import Parameters, template_variables
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord, Serving, Timing
from servecheck.reference.grammar import masks_for
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
    cached_tokens: int | None = None
    """Prompt tokens restored from the prefix cache (None: no prefix cache)."""


def _round_float32(p: Parameters) -> Parameters:
    f32 = {k: float(np.float32(v)) for k, v in p.model_dump().items()
           if isinstance(v, float)}
    return p.model_copy(update=f32)


OPTIONS = ("fault", "dtype", "round_params", "order", "prefix_cache", "speculative")
SWITCHES = {"prefix_cache": ("on", "off"), "speculative": ("draft", "off")}


class HFTarget(Target):
    takes = frozenset({"tools", "chat_template_kwargs", "stop", "n", "reasoning_effort",
                       "response_format", "structured_outputs", "tool_choice"})

    def __init__(self, model: str = "builtin", faults: frozenset[str] = frozenset(),
                 dtype: str = "float32", spec: str | None = None, round_params: bool = False,
                 order: str = "hf", prefix_cache: bool = False, speculative: bool = False) -> None:
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
        windows = sorted(faults & set(WINDOW_FAULTS))
        if len(windows) > 1:
            raise InputError(f"choose one of {windows}", where=self.spec)
        for f in windows:
            serve_window(self.ref.model, f, self.spec)
        self.fp8 = "kv-fp8" in faults
        self.speculative = speculative or "spec-lossy" in faults
        self.prefix = (PrefixCache(self.fp8, stale="prefix-cache-stale" in faults)
                       if prefix_cache or "prefix-cache-stale" in faults else None)
        self._tokenizing = threading.Lock()
        """The fast tokenizer's padding settings are state: one thread sets them at a time."""

    @classmethod
    def from_spec(cls, spec: str, rest: str) -> HFTarget:
        path, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in spec_options(query, OPTIONS, spec).items()}
        faults = frozenset(f for f in opts.get("fault", "").split(",") if f)
        rounding = opts.get("round_params")
        if rounding not in (None, "float32"):
            raise InputError("round_params takes only 'float32'", where=spec)
        for name, (on, off) in SWITCHES.items():
            if opts.get(name, off) not in (on, off):
                raise InputError(f"{name} takes '{on}' or '{off}', got {opts[name]!r}", where=spec)
        return cls(path or "builtin", faults, opts.get("dtype", "float32"), spec,
                   rounding == "float32", opts.get("order", "hf"),
                   opts.get("prefix_cache") == "on", opts.get("speculative") == "draft")

    @cached_property
    def draft(self):
        from servecheck.collect.targets.speculative import draft_model

        return draft_model(self.ref.model)

    @property
    def served_under(self) -> Serving | None:
        """What the records say they were served under: None for the plain server."""
        if not (self.speculative or self.fp8 or self.prefix):
            return None
        return Serving(speculative="draft" if self.speculative else "off",
                       kv_cache_dtype="fp8" if self.fp8 else "auto",
                       prefix_caching=self.prefix is not None)

    def template(self, request: Request) -> str:
        messages = request.conversation.hf_messages()
        if "drop-system" in self.faults:
            messages = [m for m in messages if m["role"] != "system"]
        kwargs = template_variables(request.conversation, request.parameters)
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

    def _generate_kwargs(self, p: Parameters, gens: list, ends: list[int],
                         stop_strings: list[str] | None, logit_noise: float = 0.0,
                         grammar: Grammar | None = None) -> dict:
        """``generate``'s arguments: HF's warpers (or a faulty sampler) and then each row's own
        draw (``rng.RowSampler``), after the logit noise of ``serve triton --batch-variant``."""
        from transformers import LogitsProcessorList

        kwargs: dict = dict(
            max_new_tokens=p.max_tokens or DEFAULT_MAX_TOKENS, do_sample=not p.greedy,
            eos_token_id=None if "ignore-eos" in self.faults else ends,
            pad_token_id=self.ref.tokenizer.pad_token_id or self.ref.end_ids[0],
            output_logits=True, return_dict_in_generate=True)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=self.ref.tokenizer)
        processors: list = [LogitNoise(logit_noise)] if logit_noise else []
        grammar = grammar or p.grammar
        if grammar is not None:  # the mask first, as vLLM's structured outputs
            decoding = decoding_for(masks_for(self.ref), grammar, len(gens), self.faults)
            processors += [decoding] if decoding else []
        if not p.greedy:
            # generate's own warpers off: ours run before the row's draw, in HF's order
            kwargs.update(temperature=1.0, top_p=1.0, top_k=0, min_p=None)
            if self.faults & set(SAMPLING_FAULTS) or self.convention != HF:
                processors.append(FaultySampler(Sampling.of(p), self.faults, self.convention))
            else:
                processors += hf_warpers(p.temperature, p.top_k, p.top_p, p.min_p)
                if p.repetition_penalty is not None:  # HF's own, before every processor here
                    kwargs["repetition_penalty"] = p.repetition_penalty
            processors.append(RowSampler(gens))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        return kwargs

    def _seed(self, p: Parameters) -> int:
        """The seed a request is sampled with: its own; 0 without one or under ``seed-ignored``."""
        return 0 if p.seed is None or "seed-ignored" in self.faults else p.seed

    def complete(self, prompts: list[str], p: Parameters, add_special_tokens: bool = False,
                 end_ids: list[int] | None = None, stop_strings: list[str] | None = None,
                 logit_noise: float = 0.0, seeds: list[int] | None = None,
                 grammar: Grammar | None = None) -> list[Completion]:
        """Continue already-templated prompts, batched and left-padded, as a serving engine does.

        This is what a server receives (Triton's ``text_input``); ``generate_batch`` adds the
        templating. Row r samples with its own generator seeded ``seeds[r]`` (default: the
        request's seed, choice r: ``rng.row_seed``). ``end_ids`` replaces the checkpoint's end
        tokens (a server's ``end_id``); ``stop_strings`` also end generation. With a prefix
        cache or speculation on, rows are served one at a time. ``grammar`` (a forced tool
        call's) replaces the request's own structured output.
        """
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(p, name):
                raise TargetError(f"the hf target has no {name}")
        sent = _round_float32(p) if self.round_params else p
        with self._tokenizing:
            tok = self.ref.tokenizer
            tok.padding_side = "left"
            enc = tok(prompts, add_special_tokens=add_special_tokens, return_tensors="pt",
                      padding=True)
        gens = [generator(s) for s in seeds or [row_seed(self._seed(p), r)
                                                for r in range(len(prompts))]]
        ends = end_ids or self.ref.end_ids
        if self.prefix is None and not self.speculative:
            rows = self._batched(enc, sent, gens, ends, stop_strings, logit_noise, grammar)
        elif logit_noise:
            raise TargetError("logit noise is not served with a prefix cache or speculation")
        else:
            rows = [self._one(ids[mask == 1].tolist(), sent, g, ends, stop_strings, grammar)
                    for ids, mask, g in zip(enc["input_ids"], enc["attention_mask"], gens,
                                            strict=True)]
        done = []
        for prompt_ids, out_ids, logprobs, cached in rows:
            cut = next((k + 1 for k, t in enumerate(out_ids) if t in ends), None)
            if "ignore-eos" not in self.faults:
                out_ids = out_ids[:cut] if cut else out_ids
            done.append(Completion(prompt_ids, out_ids, logprobs[:len(out_ids)],
                                   cut is not None and "ignore-eos" not in self.faults, cached))
        return done

    def _batched(self, enc, p: Parameters, gens: list, ends: list[int],
                 stop_strings: list[str] | None, logit_noise: float,
                 grammar: Grammar | None = None) -> list[tuple]:
        """One batched ``generate``: (prompt ids, output ids, log-probs, None) a row."""
        import torch

        kwargs = self._generate_kwargs(p, gens, ends, stop_strings, logit_noise, grammar)
        if self.fp8:
            kwargs["cache"] = new_cache(True, self.ref.model.config)
        with torch.inference_mode():
            out = self.ref.model.generate(**enc, **kwargs)
        logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B, steps, V]
        width, steps = enc["input_ids"].shape[1], torch.arange(len(out.logits))
        tokens = out.sequences[:, width:width + len(out.logits)]
        return [(enc["input_ids"][r][enc["attention_mask"][r] == 1].tolist(), tokens[r].tolist(),
                 logprobs[r, steps, tokens[r]].tolist(), None) for r in range(len(gens))]

    def _one(self, ids: list[int], p: Parameters, gen, ends: list[int],
             stop_strings: list[str] | None, grammar: Grammar | None = None) -> tuple:
        """One row through the prefix cache and/or speculation."""
        import torch

        found = self.prefix.lookup(ids) if self.prefix else Restored(new_cache(self.fp8), 0)
        with torch.inference_mode():
            if self.speculative:
                out_ids, logprobs = self._speculate(ids, p, gen, ends, stop_strings, found.cache)
            else:
                kwargs = self._generate_kwargs(p, [gen], ends, stop_strings, grammar=grammar)
                out = self.ref.model.generate(input_ids=torch.tensor([ids]), cache=found.cache,
                                              **kwargs)
                out_ids = out.sequences[0, len(ids):].tolist()
                logprobs = [float(row[0].float().log_softmax(-1)[t])
                            for row, t in zip(out.logits, out_ids, strict=True)]
        if self.prefix:
            self.prefix.store(ids, found.cache)
        return ids, out_ids, logprobs, found.tokens if self.prefix else None

    def _speculate(self, ids: list[int], p: Parameters, gen, ends: list[int],
                   stop_strings: list[str] | None, cache) -> tuple[list[int], list[float]]:
        from servecheck.collect.targets.speculative import Speculation, ending, transform_of

        s = Sampling.of(p)  # greedy stays greedy under a sampling fault, as in generate
        sampler = FaultySampler(s, frozenset() if s.greedy else self.faults, self.convention)
        spec = Speculation(self.ref.model, self.draft, transform_of(sampler), gen,
                           lossy="spec-lossy" in self.faults)
        decoded = spec.decode(ids, p.max_tokens or DEFAULT_MAX_TOKENS, ending(
            set() if "ignore-eos" in self.faults else set(ends), stop_strings, self.ref.decode),
            cache, new_cache(self.fp8))
        return decoded.ids, decoded.logprobs

    def generate_batch(self, requests: list[Request]) -> list[ResponseRecord]:
        """Answer requests that share their sampling parameters in one batched ``generate``, each
        row with its own seed (``rng.row_seed`` of the request's seed and its choice)."""
        clock = Stopwatch()
        p = requests[0].parameters
        if any(Sampling.of(r.parameters) != Sampling.of(p) or (r.parameters.max_tokens, r.parameters.stop,
               r.parameters.n) != (p.max_tokens, p.stop, p.n) for r in requests):
            raise ValueError("generate_batch needs requests with the same sampling parameters")
        rows = [(r, k) for r in requests for k in range(serving.choices(p))]
        prompts = [self.template(r) for r, _ in rows]
        stops = None if "stop-ignored" in self.faults else p.stop
        completions = self.complete(prompts, p, add_special_tokens="double-bos" in self.faults,
                                    stop_strings=stops,
                                    seeds=[row_seed(self._seed(r.parameters), k) for r, k in rows],
                                    grammar=forced_call_of(requests, markup_of(self.ref)))
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
        markup = markup_of(self.ref)
        parts = serving.parsed_fields(
            text, request.conversation, markup, self.faults,
            structured=request.parameters.grammar is not None,
            prefilled=markup.think_open is not None and prompt.rstrip().endswith(markup.think_open.strip()))
        reason = "stop" if c.finished or stopped else "length"
        return ResponseRecord(
            id=request.id, conversations=request.conversation, parameters=request.parameters,
            input=prompt, output=text, target=self.spec,
            finish_reason="tool_calls" if parts.get("tool_calls") and reason == "stop" else reason,
            choice=choice if request.parameters.n else None,
            prompt_token_ids=c.prompt_ids, output_token_ids=None if hidden else ids,
            output_logprobs=None if hidden else logprobs,
            usage=serving.usage(c.prompt_ids, c.output_ids, self.faults, c.cached_tokens),
            serving=self.served_under, **parts, timing=timing)

    def _generate_sync(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        records = self.generate_batch([request])
        return records if request.parameters.n else records[0]

    async def generate(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        return await asyncio.to_thread(self._generate_sync, request)

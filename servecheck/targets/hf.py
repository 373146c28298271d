"""In-process transformers generation: ``hf:PATH`` or ``hf:builtin``.

The original notes' first approach (host the HF checkpoint and generate), and servecheck's
ground truth: templating with the checkpoint's own chat template, tokenizing without adding
special tokens, sampling with the requested temperature/top_p/top_k/min_p/seed/max_tokens.

``?fault=NAME[,NAME]`` turns on a deployment bug seen in the wild, so the demo, the tests and the
benchmarks have a faulty server whose fault is known:

- ``double-bos``: the templated prompt is tokenized with special tokens added (two BOS);
- ``assistant-role``: the answering role is written ``assistant`` where the template says otherwise;
- ``drop-system``: the system prompt never reaches the template;
- ``echo``: the prompt is returned in front of the output (exclude_input_in_output ignored);
- ``strip-end``: special tokens are stripped from the output, the end-of-turn marker with them;
- ``ignore-eos``: generation runs on past the end of turn until max_tokens.

``?dtype=bfloat16`` runs the model in bf16 (a correct server with other numerics).
"""

from __future__ import annotations

import asyncio
import re
import time
from datetime import datetime, timezone
from urllib.parse import parse_qs

from servecheck.errors import InputError, TargetError
from servecheck.prompts import Request
from servecheck.records import ResponseRecord, Timing
from servecheck.reference import Reference
from servecheck.targets import Target

FAULTS = {"double-bos", "assistant-role", "drop-system", "echo", "strip-end", "ignore-eos"}
DEFAULT_MAX_TOKENS = 256


class HFTarget(Target):
    def __init__(self, model: str = "builtin", faults: frozenset[str] = frozenset(),
                 dtype: str = "float32", spec: str | None = None) -> None:
        unknown = faults - FAULTS
        if unknown:
            raise InputError(f"unknown fault {sorted(unknown)} (known: {sorted(FAULTS)})",
                             where=spec or model)
        if dtype not in ("float32", "bfloat16", "float16"):
            raise InputError(f"unsupported dtype '{dtype}'", where=spec or model)
        self.spec = spec or f"hf:{model}"
        self.faults = faults
        self.ref = Reference(model, dtype=dtype)

    @classmethod
    def from_spec(cls, spec: str, rest: str) -> HFTarget:
        path, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in parse_qs(query).items()}
        faults = frozenset(f for f in opts.pop("fault", "").split(",") if f)
        dtype = opts.pop("dtype", "float32")
        if opts:
            raise InputError(f"unknown option(s) {sorted(opts)} (known: fault, dtype)", where=spec)
        return cls(path or "builtin", faults, dtype, spec)

    def template(self, request: Request) -> str:
        messages = request.conversation.hf_messages()
        if "drop-system" in self.faults:
            messages = [m for m in messages if m["role"] != "system"]
        text = self.ref.render_messages(messages)
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

    def _generate_sync(self, request: Request) -> ResponseRecord:
        import torch

        started = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        t0 = time.perf_counter()
        p = request.parameters
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(p, name):
                raise TargetError(f"the hf target has no {name}")
        prompt = self.template(request)
        ids = self.ref.tokenizer(prompt, add_special_tokens="double-bos" in self.faults,
                                 return_tensors="pt")
        greedy = p.greedy
        ends = self.ref.end_ids
        kwargs = dict(
            max_new_tokens=p.max_tokens or DEFAULT_MAX_TOKENS, do_sample=not greedy,
            eos_token_id=None if "ignore-eos" in self.faults else ends,
            pad_token_id=self.ref.tokenizer.pad_token_id or ends[0])
        if not greedy:
            kwargs.update(temperature=p.temperature if p.temperature is not None else 1.0,
                          top_p=p.top_p if p.top_p is not None else 1.0, top_k=p.top_k or 0,
                          min_p=p.min_p)
        if p.repetition_penalty is not None:
            kwargs["repetition_penalty"] = p.repetition_penalty
        torch.manual_seed(p.seed if p.seed is not None else 0)
        with torch.inference_mode():
            out = self.ref.model.generate(**ids, **kwargs)
        prompt_ids = ids["input_ids"][0].tolist()
        out_ids = out[0, len(prompt_ids):].tolist()
        text = self.ref.decode(out_ids)
        if "strip-end" in self.faults:
            text = self.ref.strip_special(text)
        if "echo" in self.faults:
            text = self.ref.tokenizer.decode(prompt_ids, skip_special_tokens=True) + text
        finished = bool(out_ids) and out_ids[-1] in ends and "ignore-eos" not in self.faults
        return ResponseRecord(
            id=request.id, conversations=request.conversation, parameters=p, input=prompt,
            output=text, target=self.spec, finish_reason="stop" if finished else "length",
            prompt_token_ids=prompt_ids,
            output_token_ids=None if self.faults & {"echo", "strip-end"} else out_ids,
            timing=Timing(started_at=started, latency_s=round(time.perf_counter() - t0, 4)))

    async def generate(self, request: Request) -> ResponseRecord:
        return await asyncio.to_thread(self._generate_sync, request)

"""``ct2:PATH``: a CTranslate2 model, in process (``ctranslate2`` from PyPI).

PATH is a folder ``ct2-transformers-converter`` wrote (or ``servers/convert.py``), with the
checkpoint's tokenizer files copied beside the weights (``--copy_files tokenizer.json
tokenizer_config.json chat_template.jinja generation_config.json``): CTranslate2 has no
tokenizer, so a deployment templates and tokenizes with the checkpoint's own files, and so does
this target. Generation is CTranslate2's own: its kernels, its sampler, its random generator.

What CTranslate2 does its own way (../shared/reference/engines.md, measured again here):

- settings: ``sampling_topk`` (default **1**: greedy unless a deployment sets it; 0 = the whole
  vocabulary), ``sampling_topp``, ``sampling_temperature``, ``repetition_penalty``; no min_p,
  presence or frequency penalty (a request setting one is refused);
- order: penalty, top_k, temperature, top_p; the repetition penalty counts generated tokens
  only, never the prompt's;
- log-probs (``return_scores`` with a step callback): after the repetition penalty, before the
  temperature;
- end tokens: the config's single eos unless ``end_token`` lists more (a neutral deployment
  lists the checkpoint's); the end token is returned only with ``return_end_token``;
- seeds: ``set_random_seed`` seeds each worker's generator once per process, so a request's
  ``seed`` cannot be honoured per request: the process is seeded once (``?seed=N``, default 0)
  and each record's ``sent.seed`` says so.

Options: ``compute_type=float32|int8|…`` (CTranslate2's own; ``int8`` is a quantised
deployment), ``threads=N``, and the deployment defaults of ``targets/engine.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from servecheck.collect.targets.engine import EngineTarget, Generation
from servecheck.errors import InputError
from servecheck.formats.prompts import Request
from servecheck.reference.model import Reference


class CT2Target(EngineTarget):
    engine = "CTranslate2"
    # the checkpoint's own template renders them
    takes = frozenset({"tools", "chat_template_kwargs", "reasoning_effort"})
    lacks = frozenset({"min_p", "presence_penalty", "frequency_penalty"})
    extra_options = ("compute_type",)

    def __init__(self, spec: str, path: Path, opts: dict[str, str]) -> None:
        super().__init__(spec, path, opts)
        import ctranslate2

        if not (path / "model.bin").exists():
            raise InputError("not a CTranslate2 model: model.bin missing", where=spec)
        self.tokenizer = Reference(str(path))  # the checkpoint's tokenizer and template files
        self.compute_type = opts.get("compute_type", "default")
        try:
            self.generator = ctranslate2.Generator(str(path), device="cpu",
                                                   compute_type=self.compute_type,
                                                   intra_threads=self.threads)
        except (RuntimeError, ValueError) as e:
            raise InputError(f"CTranslate2 cannot open the model: {e}", where=spec) from None
        ctranslate2.set_random_seed(self.seed)
        self._version = ctranslate2.__version__

    @property
    def version(self) -> str:
        return self._version

    def render(self, request: Request) -> str:
        return self.tokenizer.render(request.conversation, parameters=request.parameters)

    def run(self, prompt: str, settings: dict[str, Any], greedy: bool, max_tokens: int,
            seed: int | None) -> tuple[Generation, dict[str, Any]]:
        ids = self.tokenizer.encode(prompt)
        sent: dict[str, Any] = {"max_length": max_tokens, "include_prompt_in_result": False,
                                "return_end_token": True}
        if greedy:
            sent["sampling_topk"] = 1
        else:
            names = {"temperature": "sampling_temperature", "top_k": "sampling_topk",
                     "top_p": "sampling_topp"}
            sent.update({names[k]: v for k, v in settings.items() if k in names and v is not None})
        if settings.get("repetition_penalty") is not None:
            sent["repetition_penalty"] = settings["repetition_penalty"]
        if not self.engine_defaults:
            sent["end_token"] = list(self.tokenizer.end_ids)
        steps: list[tuple[int, float]] = []

        def step(s: Any) -> bool:
            steps.append((int(s.token_id), float(s.log_prob)))
            return False

        self.generator.generate_batch(
            [self.tokenizer.tokenizer.convert_ids_to_tokens(ids)], return_scores=True,
            callback=step, **sent)
        out = [t for t, _ in steps]
        ends = sent.get("end_token") or [self.tokenizer.tokenizer.convert_tokens_to_ids(
            self.tokenizer.tokenizer.eos_token)]
        finished = bool(out) and out[-1] in ends
        sent["seed"] = (f"not per request: CTranslate2 seeds its generator once per process "
                        f"(set_random_seed({self.seed}))")
        return Generation(ids, out, [lp for _, lp in steps], finished), sent

    def text(self, generation: Generation) -> str:
        return self.tokenizer.decode(generation.output_ids)

"""A Hugging Face Inference Endpoints custom handler for any chat checkpoint, seeded.

The toolkit's contract: ``EndpointHandler(path)`` once, then ``handler(data)`` per request with
``data = {"inputs": …, "parameters": {…}}``, returning JSON-serialisable results. This file
imports only torch and transformers (and the standard library), so it can be copied as
``handler.py`` into an endpoint repository next to the checkpoint (``servecheck endpoint-files``
writes it with a requirements file of version ranges: torch is left to the endpoint's image where
that one is new enough, so its CUDA build is kept; the notes keep model dependencies apart, per
model).

Weights: on a CUDA GPU the checkpoint is loaded in its own dtype (its config's ``dtype``) and
spread over the GPUs (``device_map="auto"``, which needs accelerate); on CPU in float32.
``load_options`` makes that choice.

``inputs``, as the Inference Endpoints convention has it for chat models:

- a list of chat messages (``[{"role": …, "content": …}, …]``): templated with the
  checkpoint's own chat template, with the generation prompt;
- a string: one user turn, templated the same way as ``[{"role": "user", "content": inputs}]``;
- a raw prompt, sent to the model as it is (already templated by the caller; tokenized without
  adding special tokens, so a templated ``<bos>`` is not doubled): ``{"prompt": "…"}`` as
  ``inputs``, or a string ``inputs`` with ``parameters.raw_prompt: true``.

``parameters``: ``temperature`` (0 = greedy), ``top_p``, ``top_k``, ``min_p``,
``repetition_penalty``, ``seed``, ``max_new_tokens`` (or ``max_tokens``), ``raw_prompt``. The
answer carries what servecheck needs to check it: the prompt text and ids the model ran on, how
``inputs`` was read (``inputs_as``: ``messages``, ``user_turn`` or ``raw_prompt``), the output ids,
their raw log-probs and whether generation ended on an end token.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

DEFAULT_MAX_NEW_TOKENS = 256


def load_options(cuda_available: bool, config_dtype: torch.dtype | str | None) -> dict[str, Any]:
    """``from_pretrained`` keywords: with a CUDA GPU, the checkpoint's own dtype (``"auto"``, read
    from the weights, where its config names none) spread over the GPUs; on CPU, float32."""
    if not cuda_available:
        return {"dtype": torch.float32}
    if isinstance(config_dtype, str):
        config_dtype = getattr(torch, config_dtype.removeprefix("torch."), None)
    dtype = config_dtype if isinstance(config_dtype, torch.dtype) else "auto"
    return {"device_map": "auto", "dtype": dtype}


def _config_dtype(path: str) -> Any:
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    text = getattr(config, "text_config", None)
    return getattr(config, "dtype", None) or getattr(text, "dtype", None)


class EndpointHandler:
    def __init__(self, path: str = "") -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        options = load_options(torch.cuda.is_available(), _config_dtype(path))
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                          **options).eval()
        try:
            config = GenerationConfig.from_pretrained(path, local_files_only=True)
            ends = config.eos_token_id
        except OSError:
            ends = None
        ends = ends if ends is not None else self.tokenizer.eos_token_id
        self.end_ids = [ends] if isinstance(ends, int) else list(ends)

    def _template(self, messages: list[dict[str, Any]]) -> str:
        if not self.tokenizer.chat_template:
            raise ValueError("this checkpoint has no chat template: send an already-templated "
                             'prompt as inputs {"prompt": …} or with parameters.raw_prompt true')
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=True)

    def _prompt(self, inputs: Any, raw: bool) -> tuple[str, str]:
        """The prompt the model runs on, and how ``inputs`` was read."""
        if isinstance(inputs, dict) and set(inputs) == {"prompt"} and isinstance(
                inputs["prompt"], str):
            return inputs["prompt"], "raw_prompt"
        if isinstance(inputs, str):
            if raw:
                return inputs, "raw_prompt"
            return self._template([{"role": "user", "content": inputs}]), "user_turn"
        if raw:
            raise ValueError("parameters.raw_prompt needs inputs to be a string")
        if isinstance(inputs, list) and all(isinstance(m, dict) for m in inputs):
            return self._template(inputs), "messages"
        raise ValueError('inputs must be a list of chat messages, a string (one user turn) or '
                         '{"prompt": an already-templated string}')

    def _sampling(self, p: dict[str, Any]) -> dict[str, Any]:
        temperature = p.get("temperature")
        greedy = temperature == 0 or p.get("top_k") == 1
        kwargs: dict[str, Any] = {
            "max_new_tokens": int(p.get("max_new_tokens") or p.get("max_tokens")
                                  or DEFAULT_MAX_NEW_TOKENS),
            "do_sample": not greedy, "eos_token_id": self.end_ids,
            "pad_token_id": self.tokenizer.pad_token_id or self.end_ids[0],
            "output_logits": True, "return_dict_in_generate": True}
        if not greedy:
            kwargs.update(temperature=1.0 if temperature is None else float(temperature),
                          top_p=float(p.get("top_p") or 1.0), top_k=int(p.get("top_k") or 0),
                          min_p=p.get("min_p"))
        if p.get("repetition_penalty") is not None:
            kwargs["repetition_penalty"] = float(p["repetition_penalty"])
        return kwargs

    def __call__(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        params = data.get("parameters") or {}
        raw = params.get("raw_prompt", False)
        if not isinstance(raw, bool):
            raise ValueError("parameters.raw_prompt must be true or false")
        prompt, inputs_as = self._prompt(data.get("inputs"), raw)
        enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        enc = enc.to(self.model.device)
        seed = params.get("seed")
        torch.manual_seed(int(seed) if seed is not None else 0)  # every device's generator
        with torch.inference_mode():
            out = self.model.generate(**enc, **self._sampling(params))
        width = enc["input_ids"].shape[1]
        ids = out.sequences[0, width:].tolist()
        cut = next((k + 1 for k, t in enumerate(ids) if t in self.end_ids), None)
        ids = ids[:cut] if cut else ids
        chosen: list[float] = []
        if ids:  # gathered where the logits are (a GPU), only the chosen ones copied back
            logprobs = torch.stack(out.logits[:len(ids)], dim=1)[0].float().log_softmax(-1)
            picks = torch.tensor(ids, dtype=torch.long, device=logprobs.device).unsqueeze(-1)
            chosen = logprobs.gather(-1, picks).squeeze(-1).tolist()
        return [{"generated_text": self.tokenizer.decode(ids, skip_special_tokens=False),
                 "prompt_text": prompt, "prompt_token_ids": enc["input_ids"][0].tolist(),
                 "inputs_as": inputs_as, "token_ids": ids, "logprobs": chosen,
                 "finish_reason": "stop" if cut else "length"}]

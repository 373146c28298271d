"""A Hugging Face Inference Endpoints custom handler for any chat checkpoint, seeded.

The toolkit's contract: ``EndpointHandler(path)`` once, then ``handler(data)`` per request with
``data = {"inputs": …, "parameters": {…}}``, returning JSON-serialisable results. This file
imports only torch and transformers, so it can be copied as ``handler.py`` into an endpoint
repository next to the checkpoint (``servecheck endpoint-files`` writes it with a requirements
file pinned to the versions servecheck was tested with: the notes keep model dependencies
apart, per model).

``inputs`` is a list of chat messages (templated here with the checkpoint's own template) or an
already-templated string (tokenized without adding special tokens, so its ``<bos>`` is not
doubled). ``parameters``: ``temperature`` (0 = greedy), ``top_p``, ``top_k``, ``min_p``,
``repetition_penalty``, ``seed``, ``max_new_tokens`` (or ``max_tokens``). The answer carries
what servecheck needs to check it: the prompt text and ids the model ran on, the output ids,
their raw log-probs and whether generation ended on an end token.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

DEFAULT_MAX_NEW_TOKENS = 256


class EndpointHandler:
    def __init__(self, path: str = "") -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True,
                                                          dtype=torch.float32).eval()
        try:
            config = GenerationConfig.from_pretrained(path, local_files_only=True)
            ends = config.eos_token_id
        except OSError:
            ends = None
        ends = ends if ends is not None else self.tokenizer.eos_token_id
        self.end_ids = [ends] if isinstance(ends, int) else list(ends)

    def _prompt(self, inputs: Any) -> str:
        if isinstance(inputs, str):
            return inputs
        if isinstance(inputs, list) and all(isinstance(m, dict) for m in inputs):
            return self.tokenizer.apply_chat_template(inputs, tokenize=False,
                                                      add_generation_prompt=True)
        raise ValueError("inputs must be a templated string or a list of chat messages")

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
        prompt = self._prompt(data.get("inputs"))
        params = data.get("parameters") or {}
        enc = self.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        seed = params.get("seed")
        torch.manual_seed(int(seed) if seed is not None else 0)
        with torch.inference_mode():
            out = self.model.generate(**enc, **self._sampling(params))
        width = enc["input_ids"].shape[1]
        ids = out.sequences[0, width:].tolist()
        cut = next((k + 1 for k, t in enumerate(ids) if t in self.end_ids), None)
        ids = ids[:cut] if cut else ids
        logprobs = torch.stack(out.logits, dim=1)[0].float().log_softmax(-1)
        chosen = logprobs[torch.arange(len(ids)), torch.tensor(ids, dtype=torch.long)].tolist()
        return [{"generated_text": self.tokenizer.decode(ids, skip_special_tokens=False),
                 "prompt_text": prompt, "prompt_token_ids": enc["input_ids"][0].tolist(),
                 "token_ids": ids, "logprobs": chosen,
                 "finish_reason": "stop" if cut else "length"}]

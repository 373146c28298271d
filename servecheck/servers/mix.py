"""The realistic request mix the engine tests and benchmarks send, as a prompts file.

Greedy and sampled requests (temperature 0.7 and 1, top_p 0.9 and 1, top_k 0 and 40), with
and without a system prompt, single turns and conversations, from the example prompts. Each
request is its own block, so each has its own seed: an engine that seeds a fresh generator per
request (llama.cpp, ONNX Runtime GenAI) shares its draws across every request sent one seed,
and a matrix crossing one seed list with every prompt tests far fewer independent draws than it
has records (``checks.core.shared_seeds`` says how many). Seeds stay below 2³¹, ONNX Runtime GenAI's
bound.

Two spellings of the same settings: ``neutral`` spells every one out (min_p 0, a repetition
penalty of 1), as a deployment that wants none of its server's defaults must; ``shipped``
writes only what cuts (a top_p below 1, a top_k above 0), leaving the rest to the server, as
most clients do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

EXAMPLES = Path(__file__).parents[1] / "examples" / "prompts.json"
SYSTEMS = [None, None, "Be brief.", "Answer in capital letters.",
           "Always end your answer with a smile."]
SAMPLED = [dict(temperature=t, top_p=p, top_k=k) for t in (0.7, 1.0) for p in (0.9, 1.0)
           for k in (0, 40)]
GREEDY_SHARE = 0.1
MAX_TOKENS = 48
PER_BLOCK = 1000
"""Seeds of one block of requests: ``rep`` × this + j, so blocks never overlap."""


def conversations() -> list[Any]:
    """The example prompts (single turns and conversations)."""
    return json.loads(EXAMPLES.read_text())[0]["prompt"]


def blocks(n: int, rep: int, style: str = "neutral") -> list[dict[str, Any]]:
    """``n`` requests (at most ``PER_BLOCK``) of seed block ``rep``, as prompts-file blocks."""
    if not 0 < n <= PER_BLOCK or style not in ("neutral", "shipped"):
        raise ValueError(f"n must be 1…{PER_BLOCK} and style neutral or shipped")
    prompts = conversations()
    out = []
    for j in range(n):
        k = rep * 7919 + j
        params: dict[str, Any] = dict(temperature=0.0, top_p=1.0, top_k=0) \
            if j < GREEDY_SHARE * n else dict(SAMPLED[j % len(SAMPLED)])
        if style == "neutral":
            params.update(min_p=0.0, repetition_penalty=1.0)
        else:
            params = {key: v for key, v in params.items()
                      if key == "temperature" or (key == "top_p" and v < 1)
                      or (key == "top_k" and v)}
        out.append({"prompt": prompts[k % len(prompts)],
                    "system_prompt": SYSTEMS[(k // len(prompts)) % len(SYSTEMS)],
                    "seed": rep * PER_BLOCK + j, "max_tokens": MAX_TOKENS, **params})
    return out


def write(path: Path, n: int, rep: int, style: str = "neutral") -> Path:
    path.write_text(json.dumps(blocks(n, rep, style)))
    return path

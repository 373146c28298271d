"""Sliding-window attention served wrong: the window one key too wide, or never applied.

transformers' sliding layers let a query at position i see the keys j with i − j < W (the
``sliding_window`` of the config: W keys, the query's own included). Two bugs of real stacks:

- ``window-off-by-one``: a left-inclusive window, i − j ≤ W, one key more than the checkpoint
  was trained with (TensorRT-LLM's off-by-one). Nothing changes before position W.
- ``window-ignored``: the window never reaches the kernel and the sliding layers attend to the
  whole context, each still rotating with its local RoPE (its layer type is kept).

Both are made the way the engines make them, in the width the kernel and the cache are given:
the config's window (which builds the mask and sizes each sliding layer's cache) and the
attention modules' own copy of it. The layer types, and with them the RoPE bases, stay as they
are.
"""

from __future__ import annotations

import torch

from servecheck.errors import InputError

__all__ = ["UNBOUNDED", "WINDOW_FAULTS", "serve_window"]

WINDOW_FAULTS = {
    "window-off-by-one": "sliding layers see W + 1 keys (i − j ≤ W) where the model has W",
    "window-ignored": "sliding layers attend to the whole context, keeping their local RoPE",
}
UNBOUNDED = 1 << 30
"""A window no sequence reaches: sliding layers become global."""


def serve_window(model: torch.nn.Module, fault: str, where: str) -> int:
    """Give the kernel the window ``fault`` gives it; the window now in force."""
    config = model.config.get_text_config()
    window = getattr(config, "sliding_window", None)
    if not window or "sliding_attention" not in (getattr(config, "layer_types", None) or ()):
        raise InputError(f"the {fault} fault needs a model with sliding-window layers",
                         where=where)
    served = window + 1 if fault == "window-off-by-one" else UNBOUNDED
    config.sliding_window = served
    for module in model.modules():
        if getattr(module, "is_sliding", False) and hasattr(module, "sliding_window"):
            module.sliding_window = served
    return served

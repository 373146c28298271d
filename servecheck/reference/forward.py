"""The decoder's forward pass over a batch of prompt + output ids: compiled where that repays.

``torch.compile`` of the decoder layers doubles the decoder's throughput on CUDA but costs ~25 s
once per process, so whether to compile depends on how many tokens the process will score
(``plan_compile``) and ``SERVECHECK_COMPILE``; a compile that fails falls back to eager. Kept
apart from ``scoring`` because this state is per process, not per call.
"""

from __future__ import annotations

import os
import threading
import warnings

import torch

from servecheck.reference.model import Reference

__all__ = ["COMPILED_SHAPES", "COMPILE_FROM_TOKENS", "compile_layers", "forward_hidden", "plan_compile"]

COMPILED_SHAPES: set[int] = set()
COMPILE_FROM_TOKENS = 10_000_000
"""Compiling the layers costs ~25 s once per process and speeds scoring from ~130k to ~200k
tokens/s on one H200 (1B shape), which repays it past ~9M tokens; below, a cold run is faster
eager (docs/performance.md, "Scale")."""
_PLANNED: dict[str, int] = {}
_ONE_AT_A_TIME = threading.Lock()
"""A chunked run checks one chunk while it scores the next (``workflows.finisher``), so two
threads may forward at once: each forward (and a first call's compile, which dynamo does not
make safe across threads) takes its turn; the GPU work each launches still overlaps."""


def plan_compile(tokens: int) -> None:
    """Tell the scorer how many tokens this process is about to score (the most it was told
    wins): with ``SERVECHECK_COMPILE`` unset, layers are compiled only when that repays."""
    _PLANNED["tokens"] = max(_PLANNED.get("tokens", 0), tokens)


def _compiling(ids: torch.Tensor) -> bool:
    """``SERVECHECK_COMPILE``: 1 always, 0 never, unset: when the planned tokens repay it (no
    plan, as for a caller of ``score`` alone: always)."""
    mode = os.environ.get("SERVECHECK_COMPILE", "")
    if not ids.is_cuda or mode == "0":
        return False
    return mode == "1" or _PLANNED.get("tokens", COMPILE_FROM_TOKENS) >= COMPILE_FROM_TOKENS


def compile_layers(ref: Reference) -> None:
    """Regional compilation: ``torch.compile`` each decoder layer (one graph serves all layers of
    a kind), fusing the norms, rotary and activation kernels between the matmuls. Costs ~25 s
    once per process and doubles the decoder's throughput on an H100 (docs/performance.md)."""
    model = ref.model
    if id(model) in COMPILED_SHAPES:
        return
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    for layer in model.get_decoder().layers:
        layer.compile(dynamic=True)
    COMPILED_SHAPES.add(id(model))


def forward_hidden(ref: Reference, ids: torch.Tensor) -> torch.Tensor:
    """Last hidden states; compiled layers on CUDA where that repays (``_compiling``), and eager
    again if compiling fails (an old compiler, a model it cannot trace).

    cuDNN's attention is left out: it builds a graph on the CPU for every new batch shape (2.7 ms
    a layer, measured), and every batch here has a new shape; flash attention needs none."""
    with _ONE_AT_A_TIME:
        return _forward(ref, ids)


def _forward(ref: Reference, ids: torch.Tensor) -> torch.Tensor:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    decoder = ref.model.get_decoder()
    if _compiling(ids):
        compile_layers(ref)
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    try:
        with sdpa_kernel(backends):
            return decoder(input_ids=ids, use_cache=False).last_hidden_state
    except Exception as e:
        if id(ref.model) not in COMPILED_SHAPES:
            raise
        warnings.warn(f"torch.compile failed, scoring eagerly: {e}", stacklevel=2)
        for layer in decoder.layers:
            layer._compiled_call_impl = None
        os.environ["SERVECHECK_COMPILE"] = "0"
        COMPILED_SHAPES.discard(id(ref.model))
        with sdpa_kernel(backends):
            return decoder(input_ids=ids, use_cache=False).last_hidden_state

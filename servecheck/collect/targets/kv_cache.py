"""The KV cache the ``hf:`` target decodes with: transformers' own, or one stored in FP8.

``kv-fp8`` is vLLM's ``--kv-cache-dtype fp8`` with its default scales: every key and value is
rounded to FP8 E4M3 (scale 1.0, saturating at ±448) as it is written, and attention reads the
rounded values back, the token's own included (vLLM writes the cache before its attention kernel
reads it). A checkpoint calibrated for it would carry scales; one that is not loses about two
decimal digits of every key and value, which moves log-probs a little everywhere and flips a
token now and then.

The prefix cache and speculation need caches they can restore into and roll back: every layer
kept whole (``DynamicLayer``), a sliding layer's window applied by the attention mask alone.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

__all__ = ["E4M3_MAX", "Fp8KVCache", "kv_of", "new_cache", "restored", "to_e4m3"]

E4M3_MAX = 448.0
"""The largest finite FP8 E4M3 value: a cast past it gives NaN, so values saturate first."""


def to_e4m3(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``x`` as the cache stores it: x / scale rounded to the nearest E4M3 value, times scale."""
    q = (x.float() / scale).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
    return (q.float() * scale).to(x.dtype)


class Fp8KVCache(DynamicCache):
    """A ``DynamicCache`` whose every write is rounded to E4M3 before it is stored and read."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int,
               *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        return super().update(to_e4m3(key_states), to_e4m3(value_states), layer_idx,
                              *args, **kwargs)


def new_cache(fp8: bool, config=None) -> DynamicCache:
    """An empty cache: with ``config``, transformers' layout (sliding layers keep their window
    only); without, every layer whole."""
    cls = Fp8KVCache if fp8 else DynamicCache
    return cls(config=config) if config is not None else cls()


def kv_of(cache: DynamicCache, length: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every layer's keys and values of the first ``length`` positions, copied out of the cache
    (whose own tensors grow and are cut as it decodes)."""
    return [(layer.keys[..., :length, :].clone(), layer.values[..., :length, :].clone())
            for layer in cache.layers]


def restored(kv: list[tuple[torch.Tensor, torch.Tensor]], length: int, fp8: bool) -> DynamicCache:
    """A whole-layer cache holding the first ``length`` positions of ``kv``. The values go in
    as stored (an FP8 cache's are already rounded), not through ``update``."""
    cache = new_cache(fp8)
    for k, v in kv:
        layer = cache.layer_class_to_replicate()
        layer.update(k[..., :length, :], v[..., :length, :])
        cache.layers.append(layer)
    return cache

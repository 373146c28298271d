"""Automatic prefix caching for ``hf:builtin?prefix_cache=on``, and the stale one of a fault.

vLLM keeps the keys and values of earlier prompts in 16-token blocks; a new prompt that starts
with the same blocks reuses them and computes only the rest. The correct cache here does the same
on whole prompts: the longest block-aligned prefix the new prompt shares with any stored one is
restored, never the prompt's last token (its logits give the first output token, so they are
always computed), the least recently used prompts evicted past a bound. A warm answer then
differs from a cold one only in the order of float sums.

``prefix-cache-stale`` is a lookup keyed on the first block alone that then restores the stored
prompt's keys and values for as many positions as both prompts have: past the point where they
diverge, the model attends to another request's context. ``cached_tokens`` says how many came
from the cache either way, as vLLM reports it (``prompt_tokens_details.cached_tokens``).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from servecheck.collect.targets.kv_cache import kv_of, new_cache, restored

__all__ = ["BLOCK", "CAPACITY_TOKENS", "PrefixCache", "Restored"]

BLOCK = 16
"""vLLM's default block size: a prefix is reused in whole blocks only."""
CAPACITY_TOKENS = 1 << 16
"""Prompt tokens kept, at most, before the least recently used prompt is dropped."""


@dataclass
class Restored:
    cache: object
    """A cache holding the restored positions, to decode on from."""
    tokens: int
    """Prompt tokens restored (0: a miss, nothing reused)."""


class PrefixCache:
    """Stored prompts and their keys and values, shared by every request to one target."""

    def __init__(self, fp8: bool = False, stale: bool = False,
                 capacity_tokens: int = CAPACITY_TOKENS) -> None:
        self.fp8 = fp8
        self.stale = stale
        self.capacity = capacity_tokens
        self._entries: OrderedDict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = \
            OrderedDict()
        self._lock = threading.Lock()

    def lookup(self, ids: list[int]) -> Restored:
        """A cache for ``ids`` with what may be reused already in it."""
        with self._lock:
            found = self._stale_match(ids) if self.stale else self._match(ids)
            if found is None:
                return Restored(new_cache(self.fp8), 0)
            key, length = found
            self._entries.move_to_end(key)
            kv = self._entries[key]
        return Restored(restored(kv, length, self.fp8), length)

    def _match(self, ids: list[int]) -> tuple[tuple[int, ...], int] | None:
        """The stored prompt sharing the most whole blocks with ``ids``, and how many tokens of
        it to reuse (whole blocks, short of the last prompt token)."""
        best, most = None, 0
        limit = len(ids) - 1
        for key in self._entries:
            shared = _shared(key, ids, limit) // BLOCK * BLOCK
            if shared > most:
                best, most = key, shared
        return (best, most) if best is not None else None

    def _stale_match(self, ids: list[int]) -> tuple[tuple[int, ...], int] | None:
        """The latest stored prompt whose first block is ``ids``' first block, reused for as many
        positions as both prompts have, whatever follows that block."""
        if len(ids) <= BLOCK:
            return None
        head = tuple(ids[:BLOCK])
        for key in reversed(self._entries):
            if key[:BLOCK] == head:
                return key, min(len(key), len(ids) - 1)
        return None

    def store(self, ids: list[int], cache) -> None:
        """Keep the prompt's keys and values (the cache holds at least the prompt's positions)."""
        if len(ids) < BLOCK:
            return
        key = tuple(ids)
        kv = kv_of(cache, len(ids))
        with self._lock:
            self._entries[key] = kv
            self._entries.move_to_end(key)
            while sum(len(k) for k in self._entries) > self.capacity and len(self._entries) > 1:
                self._entries.popitem(last=False)


def _shared(a: tuple[int, ...], b: list[int], limit: int) -> int:
    """How many leading tokens ``a`` and ``b`` share, at most ``limit``."""
    n = min(len(a), len(b), limit)
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n

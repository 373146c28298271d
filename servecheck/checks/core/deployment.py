"""What the records say about how the deployment ran (``ResponseRecord.serving``: speculation,
the KV-cache type, prefix caching), and the causes a failure is named by when it was on.

A failure's generic cause ("other weights, or a sampling setting off") sends a serving engineer
looking in the wrong place when the records say speculative decoding or an FP8 KV cache was on:
those are the likelier causes, and the words here name them. Nothing here makes a verdict: a
setting that was on names a cause only where a check already failed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from servecheck.formats.records import ResponseRecord

__all__ = ["LOSSY_SPECULATION", "OFF", "SPECULATION_SHOWS", "ZERO_LOGPROBS", "kv_cache_counts",
           "kv_cache_dtype", "speculating", "speculation", "speculation_counts"]

OFF = {"", "off", "none", "false", "no", "0"}
"""How a record says a setting was off (``serving.speculative: off``)."""
LOSSY_SPECULATION = ("speculative decoding's acceptance is lossy: draft tokens accepted without "
                     "exact rejection sampling")
"""The cause of a sampled distribution off the reference's where speculation was on: a
verifier that keeps draft tokens the target would not have drawn (lossless speculation, by the
rejection rule of Leviathan et al. 2023, keeps the target's distribution exactly)."""
SPECULATION_SHOWS = ("fit", "temperature", "sampler", "greedy")
"""The rows a lossy verifier fails: the sampled tokens' distribution (fit, temperature, the
sampler's alternatives) and, where it keeps a greedy draft token the target's argmax is not,
greedy."""
ZERO_LOGPROBS = "served log-probs are all 0.0: a known fault of speculative decoding in some servers"
"""Served log-probs of exactly 0.0 (probability 1) on tokens the reference finds uncertain: the
log-probs of accepted draft tokens never filled in."""


def _counts(values: Iterable[str | None]) -> Counter[str]:
    return Counter(v for v in values if v is not None and v.strip().lower() not in OFF)


def speculating(record: ResponseRecord) -> bool:
    """The record says it was served with speculative decoding on."""
    method = record.serving.speculative if record.serving is not None else None
    return method is not None and method.strip().lower() not in OFF


def speculation(records: Iterable[ResponseRecord]) -> str | None:
    """The speculative-decoding method the records say was on (the most common), or None."""
    counts = speculation_counts(records)
    return counts.most_common(1)[0][0] if counts else None


def speculation_counts(records: Iterable[ResponseRecord]) -> Counter[str]:
    """How many records say each speculative-decoding method was on, in the order first seen:
    a chunk's counts add up to its set's."""
    return _counts(r.serving.speculative for r in records if r.serving is not None)


def kv_cache_counts(records: Iterable[ResponseRecord]) -> Counter[str]:
    """How many records say each KV-cache type other than the model's own (``fp8``…), in the
    order first seen: a chunk's counts add up to its set's."""
    return _counts(r.serving.kv_cache_dtype for r in records if r.serving is not None
                   and (r.serving.kv_cache_dtype or "auto").lower() != "auto")


def kv_cache_dtype(records: Iterable[ResponseRecord]) -> str | None:
    """The KV-cache type the records say was used where it is not the model's own, or None
    (``auto``, or not said)."""
    counts = kv_cache_counts(records)
    return counts.most_common(1)[0][0] if counts else None

"""What the user knows of a deployment and the server's answers do not say.

No OpenAI-compatible server, Triton or TGI reports its KV-cache type, whether speculative
decoding or a prefix cache is on; the operator knows (``--kv-cache-dtype fp8``,
``--speculative-config``). Said on the target's spec (``?kv_cache_dtype=fp8``,
``?speculative=ngram``, ``?prefix_caching=1``), it is written on every record
(``ResponseRecord.serving``), so that a finding is named by what was on ("the records say the KV
cache is fp8") rather than guessed.
"""

from __future__ import annotations

from servecheck.errors import InputError
from servecheck.formats.records import Serving

__all__ = ["DECLARED", "declared"]

DECLARED = ("kv_cache_dtype", "speculative", "prefix_caching")
FLAGS = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}


def declared(opts: dict[str, str], spec: str) -> Serving | None:
    """The deployment facts among a spec's options (last value of each), or None if none."""
    given = {k: opts[k] for k in DECLARED if k in opts}
    if not given:
        return None
    caching = given.get("prefix_caching")
    if caching is not None and caching.lower() not in FLAGS:
        raise InputError(f"prefix_caching must be 1 or 0 (on, off), not {caching!r}", where=spec)
    return Serving(kv_cache_dtype=given.get("kv_cache_dtype"),
                   speculative=given.get("speculative"),
                   prefix_caching=None if caching is None else FLAGS[caching.lower()])

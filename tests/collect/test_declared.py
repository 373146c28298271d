"""Deployment facts the user declares on an HTTP target's spec reach every record, and a bad one
is named before anything is sent."""

from __future__ import annotations

import pytest

from servecheck.collect.targets.declared import declared
from servecheck.collect.targets.openai import OpenAITarget
from servecheck.collect.targets.triton import TritonTarget
from servecheck.errors import InputError
from servecheck.formats.records import Serving


def test_declared_facts_are_read_from_the_spec() -> None:
    target = OpenAITarget.from_spec("openai://127.0.0.1:9/v1?kv_cache_dtype=fp8&prefix_caching=on",
                                    "//127.0.0.1:9/v1?kv_cache_dtype=fp8&prefix_caching=on")
    assert target.serving == Serving(kv_cache_dtype="fp8", prefix_caching=True)
    spec = "triton://127.0.0.1:9/ensemble?speculative=ngram"
    triton = TritonTarget.from_spec(spec, spec.partition(":")[2], reference="builtin")
    assert triton.serving == Serving(speculative="ngram")
    assert declared({"mode": "chat"}, "x") is None  # nothing said: records say nothing


def test_a_bad_declaration_is_named() -> None:
    with pytest.raises(InputError, match="prefix_caching must be 1 or 0"):
        declared({"prefix_caching": "maybe"}, "openai://h:1")
    with pytest.raises(InputError, match=r"known: .*kv_cache_dtype"):
        OpenAITarget.from_spec("openai://h:1/v1?kv_cache=fp8", "//h:1/v1?kv_cache=fp8")

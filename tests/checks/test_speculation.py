"""Speculative decoding named where the records say it was on: a lossy verifier as the likely
cause of a sampled distribution off the reference's, served log-probs of exactly 0.0 as the
fault they are, and lossless speculation passing every check as a correct server does.

The end-to-end runs use ``hf:builtin?speculative=draft`` (Leviathan et al.'s rejection rule,
exact) and the ``spec-lossy`` fault (every draft token the target allows accepted), with fixed
requests and seeds: their outcomes are fixed. The lossless run's false-failure rate is the
run's α (0.01), as for any correct server.
"""

from __future__ import annotations

import pytest

from servecheck.checks.core.context import CheckContext
from servecheck.checks.core.deployment import LOSSY_SPECULATION, ZERO_LOGPROBS
from servecheck.checks.core.digest import RecordFacts, digest
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.results import CheckResult, Finding
from servecheck.checks.logprobs import check_logprobs
from servecheck.formats.records import Serving
from servecheck.reference.model import Reference
from servecheck.workflows.check import check


def _zeroed(records: list, speculative: str | None = None) -> list:
    return [r.model_copy(update={"output_logprobs": [0.0] * len(r.output_logprobs),
                                 "serving": Serving(speculative=speculative)})
            for r in records]


def test_served_logprobs_all_zero_are_named_as_what_they_are(lite_records,
                                                             ref: Reference) -> None:
    r = check_logprobs(CheckContext(_zeroed(lite_records), ref))
    assert r.verdict == "fail" and r.details.likely_cause() == ZERO_LOGPROBS
    assert r.summary.endswith(ZERO_LOGPROBS) and r.details.zeros >= len(lite_records) // 2
    assert all(f.message.startswith("all ") and "served log-probs are 0.0" in f.message
               for f in r.findings)
    assert (r.reason or "").startswith("FAIL: ") and "speculation" not in (r.reason or "")
    said = check_logprobs(CheckContext(_zeroed(lite_records, "draft"), ref))
    assert "(the records say speculation, draft, was on)" in (said.reason or "")


def test_correct_logprobs_are_no_zeros(lite_records, ref: Reference) -> None:
    r = check_logprobs(CheckContext(lite_records, ref, CheckOptions(numerics="fp32")))
    assert r.verdict == "pass" and r.details.zeros is None


def _failing(name: str) -> CheckResult:
    return CheckResult(name, "fail", f"{name} failed", findings=[Finding("r1", "off", 1.0)])


def test_the_digest_names_lossy_speculation_where_it_was_on() -> None:
    results = [_failing("fit"), _failing("sampler"), _failing("template")]
    on = digest(results, {"r1"}, RecordFacts(records=10, speculative=10))
    causes = {f.check: f.cause for f in on.failures}
    assert causes["fit"].startswith(LOSSY_SPECULATION + " (the records say speculative "
                                    "decoding was on in 10 of 10); else: fit failed")
    assert causes["sampler"].startswith(LOSSY_SPECULATION)
    assert causes["template"] == "template failed"  # not a row speculation fails
    off = digest(results, {"r1"}, RecordFacts(records=10))
    assert {f.cause for f in off.failures} == {"fit failed", "sampler failed", "template failed"}


@pytest.mark.slow
def test_lossy_speculation_is_named_and_lossless_passes(serve, long_requests,
                                                        ref: Reference) -> None:
    requests = long_requests(seed=7, turns=(0, 1, 2, 3), repeats=10, temperatures=(0.0, 1.0),
                             max_tokens=48)
    lossless = check(serve("hf:builtin?speculative=draft", requests), reference=ref)
    assert lossless.verdict == "pass", [(r.name, r.summary) for r in lossless.results
                                        if r.verdict != "pass"]
    assert all(r.serving.speculative == "draft" for r in lossless.context.records)
    lossy = check(serve("hf:builtin?fault=spec-lossy", requests), reference=ref)
    failed = {f.check: f.cause for f in lossy.digest.failures}
    assert "fit" in failed and all(failed[c].startswith(LOSSY_SPECULATION)
                                   for c in ("fit", "temperature", "sampler") if c in failed)

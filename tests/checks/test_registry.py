"""The checks are declared once (``@check``), and the registry is what the run, the α shares,
``plan`` and ``servecheck list`` read: the set is pinned here, so a check that stops registering
(or a new one) is a deliberate change of this file, not a silent one."""

from __future__ import annotations

import pytest

from servecheck.checks.core import registry
from servecheck.checks.core.registry import alpha_share, check, specs, table_specs

TABLE = ["records", "template", "termination", "tool calls", "reasoning", "stop strings", "usage",
         "grammar", "detokenization", "greedy", "support", "fit", "temperature", "sampler", "mask", "context",
         "cache", "logprobs", "seeds"]


def test_the_set_of_checks_is_pinned() -> None:
    assert [n for s in table_specs() for n in s.names] == TABLE
    assert [s.name for s in specs() if s.kind == "record"] == ["plausibility"]
    assert {s.name for s in specs() if s.screens} == {"template", "termination", "detokenization",
                                                          "grammar"}
    assert all(s.source == "built-in" and s.module.startswith("servecheck.checks.")
               for s in specs())


def test_alpha_shares_come_from_the_specs_and_sum_to_one() -> None:
    shares = {s.name: alpha_share(s.name) for s in specs() if s.alpha_share}
    assert shares == pytest.approx({"fit": 0.42, "sampler": 0.42, "context": 0.02, "cache": 0.02,
                                    "mask": 0.02, "seeds": 0.05, "plausibility": 0.05})
    assert sum(shares.values()) == pytest.approx(1.0)
    assert alpha_share("temperature") == shares["fit"]  # one Holm family
    assert {s.kind for s in specs() if s.alpha_share} == {"statistical", "record"}


def test_a_statistical_check_needs_a_share_and_a_deterministic_one_none() -> None:
    with pytest.raises(ValueError, match="α share"):
        check("x", order=1, kind="statistical")
    with pytest.raises(ValueError, match="α share"):
        check("x", order=1, alpha_share=0.1)


def test_two_checks_of_one_name_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))

    def run(ctx: object) -> list:
        return []

    run.__module__ = "somebody.else"
    with pytest.raises(ValueError, match="two checks are named 'greedy'"):
        check("greedy", order=1)(run)


def test_servecheck_list_names_every_check_and_target(run_cli, capsys: pytest.CaptureFixture[str]
                                                      ) -> None:
    assert run_cli("list") == 0
    out = capsys.readouterr().out
    for name in [*TABLE[:-6], "sampler", "context", "cache", "logprobs", "plausibility",
                 "openai", "triton+grpc", "ortgenai", "ct2"]:
        assert name in out, name
    assert "0.42" in out and "0.02" in out and "built-in" in out


def test_a_pooled_check_reading_evidence_no_check_gives_is_named(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``Pooling.reads`` names another pooled check's evidence; a name that gives none is
    refused when the checks are listed, not met as a KeyError at the end of a long run."""
    fake = registry.CheckSpec("mine", 200, "statistical", lambda ctx: [], 0.01,
                              pooling=registry.Pooling(lambda ctx: None, lambda *a: [],
                                                       reads=("fitt",)), source="my-checks")
    real = registry.specs()
    monkeypatch.setattr(registry, "specs", lambda: (*real, fake))
    with pytest.raises(RuntimeError, match=r"'mine' \(my-checks\) reads the pooled evidence "
                                           r"of 'fitt'"):
        registry.pooled_specs()

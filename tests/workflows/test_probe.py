"""``servecheck probe`` against the real Triton host: a correct server passes every probe; a
server that ignores the seed fails the seed probe (and ``check`` on its responses fails the
seed check); a server whose greedy output changes when requests share a batch fails batch
invariance. Fault switches are the host's (``--ignore-seed``, ``--batch-variant``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

PROBE = ("--reference", "builtin", "--repeats", "3", "--seeds", "6", "--levels", "4", "8",
         "--max-tokens", "24", "--numerics", "fp32")


pytestmark = pytest.mark.slow  # each test starts a real Triton server and probes it


@pytest.fixture(scope="session")
def probe(run_cli) -> Callable[[dict[str, str], Path], tuple[int, dict[str, dict]]]:
    """``probe(address, tmp_path)``: ``servecheck probe`` against a Triton host; the exit code
    and the results by name."""

    def run(address: dict[str, str], tmp_path: Path) -> tuple[int, dict[str, dict]]:
        out = tmp_path / "probe.json"
        code = run_cli("probe", "--target", f"triton://{address['http']}/ensemble", *PROBE,
                       "--json", out)
        return code, {r["name"]: r for r in json.loads(out.read_text())}

    return run


def test_correct_server_passes_every_probe(tmp_path: Path, triton_host, probe) -> None:
    with triton_host() as address:
        code, results = probe(address, tmp_path)
    assert code == 0, {k: (v["summary"], v["findings"]) for k, v in results.items()}
    assert [results[k]["verdict"] for k in ("repeatability", "seeds", "batch invariance", "stream")] \
        == ["pass"] * 4


def test_ignored_seed_is_caught_by_probe_and_check(tmp_path: Path, triton_host, probe, run_cli,
                                                   check_json, check_named) -> None:
    prompts = tmp_path / "p.json"
    prompts.write_text(json.dumps({"prompt": ["Tell me a story about the fox.", "Name a colour."],
                                   "temperature": 1.0, "seed": list(range(6)), "max_tokens": 24}))
    out = tmp_path / "r.jsonl"
    with triton_host(ignore_seed=True) as address:
        code, results = probe(address, tmp_path)
        assert run_cli("generate", prompts, "--target", f"triton://{address['http']}/ensemble",
                       "--out", out, "--no-progress", "--reference", "builtin") == 0
    assert code == 1 and results["seeds"]["verdict"] == "fail", results["seeds"]
    assert results["repeatability"]["verdict"] == "pass"  # deterministic, just not seeded
    check_code, summary = check_json(out, tmp_path, "builtin", "--numerics", "fp32")
    assert check_code == 1 and check_named(summary, "seeds")["verdict"] == "fail"


def test_batch_dependent_greedy_output_is_caught(tmp_path: Path, triton_host, probe) -> None:
    with triton_host(batch_variant=True) as address:
        code, results = probe(address, tmp_path)
    batch = results["batch invariance"]
    assert code == 1 and batch["verdict"] == "fail", batch
    # a probe reports in the checks' shape: each line of evidence is a finding
    assert any("below the reference argmax" in f["message"] for f in batch["findings"])

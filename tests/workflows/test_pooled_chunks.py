"""A set checked in chunks pools the evidence of the checks that can merge it (fit, temperature,
sampler, mask, context, cache, seeds), and tests it once at the check's full α: the verdicts and
p-values are those of one process, a request whose seeds lie in different chunks is tested
whole, and a resumed run merges the evidence it saved. Each sequence is scored alone
(``SERVECHECK_TOKEN_BUDGET=1``), so that both runs score every record alike, and the p-values
agree to 1e-9.

The records are served by the in-process ``hf:builtin`` target, honest and with the
``seed-ignored`` fault, and laid out seed by seed, so that no chunk holds two seeds of one
request: checked chunk by chunk, no chunk could test a seed at all. These runs are
deterministic (fixed seeds); the check's own false-alarm rate is its α share (0.05 of α = 0.01).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from servecheck.checks.core.seed_tests import GroupDraws, SeedEvidence, Text
from servecheck.workflows.saved_state import StateError, dumps, loads

PROMPTS = ["Tell me about the owl.", "What does the cat say?", "Name a colour.",
           "Tell me a story.", "What is a dog?", "Describe the sea.", "Count to five.",
           "What do birds eat?"]
SEEDS = [21, 22, 23, 24]


@pytest.fixture(scope="module")
def seed_major(tmp_path_factory: pytest.TempPathFactory, run_cli) -> dict[str, Path]:
    """Per target, its responses ordered seed by seed: each run of 8 records holds every
    prompt once and no request twice."""
    work = tmp_path_factory.mktemp("pooled")
    prompts = work / "prompts.json"
    prompts.write_text(json.dumps({"prompt": PROMPTS, "temperature": [1.0], "seed": SEEDS,
                                   "max_tokens": 16}))
    out = {}
    for name, spec in (("honest", "hf:builtin"), ("ignored", "hf:builtin?fault=seed-ignored")):
        path = work / f"{name}.jsonl"
        assert run_cli("generate", prompts, "--target", spec, "--out", path,
                       "--no-progress") == 0
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert len(lines) == len(PROMPTS) * len(SEEDS)
        lines.sort(key=lambda r: r["parameters"]["seed"])
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        out[name] = path
    return out


def _seeds(summary: dict) -> dict:
    return _row(summary, "seeds")


def _row(summary: dict, name: str) -> dict:
    return next(c for c in summary["checks"] if c["name"] == name)


def _same_fit(chunked: dict, whole: dict) -> None:
    for name in ("fit", "temperature"):
        a, b = _row(chunked, name), _row(whole, name)
        assert a["verdict"] == b["verdict"], (name, a["summary"], b["summary"])
        assert a["details"]["seed_design"] == pytest.approx(b["details"]["seed_design"],
                                                            rel=1e-9, nan_ok=True)
    tests = [(_row(s, "fit")["details"]["tests"]) for s in (chunked, whole)]
    assert tests[1] and len(tests[0]) == len(tests[1])
    for x, y in zip(*tests, strict=True):
        assert (x["group"], x["name"], x["n"]) == (y["group"], y["name"], y["n"])
        assert x["p"] == pytest.approx(y["p"], rel=0, abs=1e-9)
        assert x["effect"] == pytest.approx(y["effect"], rel=1e-9, abs=1e-12)
    rows = [_row(s, "temperature")["details"]["groups"] for s in (chunked, whole)]
    assert rows[1] and rows[0].keys() == rows[1].keys()
    for g in rows[1]:
        assert rows[0][g]["test"]["p"] == pytest.approx(rows[1][g]["test"]["p"], rel=0,
                                                        abs=1e-9)
        assert rows[0][g]["estimate"] == pytest.approx(rows[1][g]["estimate"], rel=1e-9)


def _same_sampler(chunked: dict, whole: dict, tol: float = 1e-9) -> None:
    a, b = _row(chunked, "sampler"), _row(whole, "sampler")
    assert a["verdict"] == b["verdict"], (a["summary"], b["summary"])
    x, y = a["details"], b["details"]
    assert (x["tokens"], x["groups"], x["family_size"]) == (y["tokens"], y["groups"],
                                                            y["family_size"])
    for u, v in zip(x["alternatives"], y["alternatives"], strict=True):
        assert (u["setting"], u["grid_value"], u["scope"]) == (v["setting"], v["grid_value"],
                                                               v["scope"])
        assert u["test"]["p"] == pytest.approx(v["test"]["p"], rel=0, abs=tol)
        assert u["estimate"] == pytest.approx(v["estimate"], rel=tol, abs=1e-12)
        assert u["gain"] == pytest.approx(v["gain"], rel=tol, abs=tol)
    assert x["detectable"].keys() == y["detectable"].keys()
    for k, v in y["detectable"].items():
        assert x["detectable"][k] == (v if v is None else pytest.approx(v, rel=tol)), k


def _same_tests(chunked: dict, whole: dict) -> None:
    assert chunked["verdict"] == whole["verdict"]
    a, b = chunked["details"], whole["details"]
    assert a["pooled_p"] == pytest.approx(b["pooled_p"], rel=0, abs=1e-9)
    assert [g["label"] for g in a["groups"]] == [g["label"] for g in b["groups"]]
    for x, y in zip(a["groups"], b["groups"], strict=True):
        assert (x["seeds"], x["distinct"], x["most_common"]) == \
            (y["seeds"], y["distinct"], y["most_common"])
        assert x["p_value"] == pytest.approx(y["p_value"], rel=0, abs=1e-9)
        assert x["p_text"] == pytest.approx(y["p_text"], rel=1e-9, abs=1e-12)


@pytest.mark.slow  # two generations of 32 requests, four checks
@pytest.mark.parametrize(("server", "verdict"), [("honest", "pass"), ("ignored", "fail")])
def test_chunks_pool_fit_and_seeds_into_the_verdicts_of_one_process(
        seed_major: dict[str, Path], tmp_path: Path, check_json, server: str,
        verdict: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    path = seed_major[server]
    _, whole = check_json(path, tmp_path)
    _, chunked = check_json(path, tmp_path, "builtin", "--records-per-chunk", "8",
                            "--state", tmp_path / "state")
    assert chunked["chunks"] == 4
    seeds = _seeds(chunked)
    assert seeds["verdict"] == verdict, seeds["summary"]
    assert len(seeds["details"]["groups"]) == len(PROMPTS)  # every request, whole
    assert all(g["seeds"] == len(SEEDS) for g in seeds["details"]["groups"])
    assert seeds["details"]["alpha"] == pytest.approx(_seeds(whole)["details"]["alpha"])
    _same_tests(seeds, _seeds(whole))
    _same_fit(chunked, whole)
    _same_sampler(chunked, whole)
    if server == "honest":  # the ignored seed's 8 draws are too few to estimate the sampler
        family = _row(whole, "sampler")["details"]["family_size"]
        assert family >= 10  # truncations, temperature and penalties all tested
    assert chunked["pooled_checks"] == ["fit", "temperature", "sampler", "mask", "context", "cache",
                                        "logprobs", "seeds"]
    # the fit counts a text the ignored seed served to several seeds once, as one process does
    design = _row(chunked, "fit")["details"]["seed_design"]
    assert design["one_stream"] is (server == "ignored")


@pytest.mark.slow
def test_a_resumed_run_merges_the_evidence_it_saved(seed_major: dict[str, Path],
                                                    tmp_path: Path, check_json,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    path, state = seed_major["ignored"], tmp_path / "state"
    args = ("--records-per-chunk", "8", "--state", state)
    _, first = check_json(path, tmp_path, "builtin", *args)
    (state / "chunk-00002.json").unlink()  # as if stopped before the third chunk was saved
    _, resumed = check_json(path, tmp_path, "builtin", *args)
    _same_tests(_seeds(resumed), _seeds(first))
    _same_fit(resumed, first)
    _same_sampler(resumed, first)
    assert _seeds(resumed)["verdict"] == "fail" and resumed["resumed_chunks"] == 3


def _group(label: str, members: dict, texts: dict) -> GroupDraws:
    return GroupDraws(label, members, {t: Text(lp, False) for t, lp in texts.items()})


def test_merging_keeps_set_order_and_the_first_of_a_repeated_draw() -> None:
    a = SeedEvidence({"r": _group("r", {(1, None): "x", (2, None): "y"}, {"x": -1.0, "y": -2.0})})
    b = SeedEvidence({"r": _group("r", {(2, None): "z", (3, None): "x"}, {"z": -3.0, "x": -1.0}),
                      "s": _group("s", {(1, None): "w"}, {"w": -0.5})})
    c = SeedEvidence({"s": _group("s", {(2, None): "w"}, {"w": -0.5})})
    ab = a.merge(b)
    # seed 2 was first served "y": the later copy of that draw is not a second draw
    assert ab.groups["r"].members == {(1, None): "x", (2, None): "y", (3, None): "x"}
    assert list(ab.groups) == ["r", "s"]
    assert ab.merge(c) == a.merge(b.merge(c)) == a.merge(b, c)  # any grouping, in set order
    assert [len(g.members) for g in ab.merge(c).tested()] == [3, 2]
    assert loads(dumps(ab.merge(c))) == ab.merge(c)  # the chunk state round trip


def test_evidence_arrays_round_trip_exactly_and_a_planted_array_is_refused() -> None:
    arrays = {"pit": np.array([0.25, np.nan, 1e-38], dtype=np.float32),
              "profile": np.arange(6, dtype=np.float64).reshape(2, 3) / 7,
              "n": np.array([3, 0], dtype=np.int64)}
    back = loads(dumps(arrays))
    for key, a in arrays.items():
        assert back[key].dtype == a.dtype and back[key].shape == a.shape
        assert np.array_equal(back[key], a, equal_nan=True)
    good = json.loads(dumps(arrays["n"]))
    for bad in (["object", [2], good["data"]["$ndarray"][2]],  # not a plain numeric dtype
                ["int64", [3], good["data"]["$ndarray"][2]],  # a shape its bytes do not fill
                ["int64", [2], "not base64!"], "int64"):
        with pytest.raises(StateError):
            loads(json.dumps({**good, "data": {"$ndarray": bad}}))
    with pytest.raises(TypeError):  # an array of objects is never written
        dumps(np.array([object()], dtype=object))


@pytest.mark.slow  # 64 stored records, checked whole and in 4 chunks
def test_later_chunks_judge_under_the_orders_the_first_could_not_rule_out(
        tmp_path: Path, check_json, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that ignores the temperature puts a few tokens outside HF's top_p nucleus but
    inside llama.cpp's order's, which its records cannot rule out: one process does not count
    them against the server. Later chunks once took only the order the first chunk chose, not
    those it left undecided, so the support row failed in 2 of 4 chunks and the pooled sampler
    named "top_p as requested was not applied" before the temperature. Every row must read as
    one process's (the golden ``temperature-ignored`` set, fixed seeds)."""
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    path = Path(__file__).parents[1] / "golden" / "temperature-ignored.responses.jsonl"
    _, whole = check_json(path, tmp_path)
    _, chunked = check_json(path, tmp_path, "builtin", "--records-per-chunk", "16",
                            "--state", tmp_path / "state")
    assert chunked["chunks"] == 4
    assert [(c["name"], c["verdict"]) for c in chunked["checks"]] == \
        [(c["name"], c["verdict"]) for c in whole["checks"]]
    assert _row(chunked, "support")["verdict"] == "pass"
    assert _row(chunked, "sampler")["summary"].startswith("temperature ≈ requested × 1.9")
    # the records the order search scored are kept and it scores them in its own batches, so
    # the first chunk's (16 records) and one process's (64) differ by float32 rounding
    _same_sampler(chunked, whole, tol=1e-6)


@pytest.mark.slow  # 64 records generated, checked whole and in 4 chunks
def test_a_first_chunk_that_cannot_tell_the_orders_apart_leaves_the_search_to_the_next(
        tmp_path: Path, run_cli, check_json, monkeypatch: pytest.MonkeyPatch) -> None:
    """A llama.cpp-order server (top_p on temperature-1 probabilities) whose first 16 records
    are greedy: the first chunk has no record the orders score differently, so it settled on
    HF's order by default, and the later chunks, judged under it, failed the support row on
    every token inside llama.cpp's nucleus and outside HF's; one process does not rule
    llama.cpp's order out from those records. The search now moves on to the first chunk that
    can tell."""
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    parts = []
    for name, params in (("greedy", {"temperature": [0.0], "seed": [1, 2]}),
                         ("sampled", {"temperature": [0.7], "top_p": [0.8],
                                      "seed": [3, 4, 5, 6, 7, 8]})):
        prompts = tmp_path / f"{name}.json"
        prompts.write_text(json.dumps({"prompt": PROMPTS, "max_tokens": 32, **params}))
        out = tmp_path / f"{name}.jsonl"
        assert run_cli("generate", prompts, "--target", "hf:builtin?order=llama.cpp", "--out",
                       out, "--no-progress") == 0
        parts.append(out.read_text())
    path = tmp_path / "responses.jsonl"
    path.write_text("".join(parts))
    _, whole = check_json(path, tmp_path)
    _, chunked = check_json(path, tmp_path, "builtin", "--records-per-chunk", "16",
                            "--state", tmp_path / "state")
    assert chunked["chunks"] == 4
    # the order is searched on records that tell the orders apart (chunk 2's), not settled
    # by default on the first chunk's greedy ones
    assert chunked["convention"]["records"] > 0, chunked["convention"]
    assert [(c["name"], c["verdict"]) for c in chunked["checks"]] == \
        [(c["name"], c["verdict"]) for c in whole["checks"]]
    assert _row(chunked, "support")["verdict"] == "pass"


@pytest.mark.slow  # a torchrun of two processes and a Dask cluster of two, each loading the model
@pytest.mark.parametrize("server", ["honest", "ignored"])
def test_the_pooled_path_over_torchrun_ranks_and_dask_workers_equals_one_process(
        seed_major: dict[str, Path], tmp_path: Path, check_json, server: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 5's verdicts: two torchrun ranks (gloo, on this CPU) and a local Dask cluster of two
    workers score the same 4 chunks as one process, and the pooled summaries are equal in every
    field, p-values included (each sequence scored alone, so every way scores alike)."""
    import os
    import subprocess
    import sys

    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    path = seed_major[server]
    chunks = ("--records-per-chunk", "8", "--no-progress")
    for part in ("one", "dask"):
        (tmp_path / part).mkdir()
    code, one = check_json(path, tmp_path / "one", "builtin", *chunks, "--state", tmp_path / "s1")
    dask_code, dask = check_json(path, tmp_path / "dask", "builtin", *chunks,
                                 "--state", tmp_path / "s2", "--dask", "local:2")
    two = tmp_path / "two.json"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node=2", "-m", "servecheck.cli", "check", str(path),
                          "--reference", "builtin", "--json", str(two), *chunks],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == code == dask_code, run.stderr[-2000:]
    assert run.stdout.count("summary written to") == 1  # rank 0 alone reports
    assert one["chunks"] == 4 and "logprobs" in one["pooled_checks"]
    assert _seeds(one)["verdict"] == ("pass" if server == "honest" else "fail")
    assert json.loads(two.read_text()) == one
    assert dask == one


def _logprobs_row(chunked: dict, whole: dict) -> dict:
    a, b = _row(chunked, "logprobs"), _row(whole, "logprobs")
    assert a["verdict"] == b["verdict"]
    x, y = a["details"], b["details"]
    assert {k: v for k, v in x.items() if not isinstance(v, (dict, float))} == \
        {k: v for k, v in y.items() if not isinstance(v, (dict, float))}
    assert x["max_abs_diff"] == pytest.approx(y["max_abs_diff"], rel=0, abs=1e-9)
    for key in ("mean_abs_diff", "prompt_fit"):
        assert set(x.get(key, {})) == set(y.get(key, {}))
        for name, value in x.get(key, {}).items():
            assert value == pytest.approx(y[key][name], rel=0, abs=1e-9)
    return a


@pytest.mark.slow  # four checks of 32 records
def test_the_logprobs_row_is_judged_on_the_whole_sets_mean_not_a_chunks(
        seed_major: dict[str, Path], tmp_path: Path, check_json,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The first chunk's served log-probs are all 0.35 low, the rest honest: the set's mean |Δ|
    (0.089) is within the tolerance 0.1 and the first chunk's (0.35) is not. One process passes
    the row; a run that judged the row chunk by chunk failed it (it did before the row
    pooled), a false alarm of the chunking alone."""
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    lines = [json.loads(line) for line in seed_major["honest"].read_text().splitlines()]
    for r in lines[:8]:
        r["output_logprobs"] = [x - 0.35 for x in r["output_logprobs"]]
    path = tmp_path / "shifted.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    _, whole = check_json(path, tmp_path)
    _, chunked = check_json(path, tmp_path, "builtin", "--records-per-chunk", "8",
                            "--state", tmp_path / "state")
    assert chunked["chunks"] == 4
    row = _logprobs_row(chunked, whole)
    assert row["verdict"] == "pass", row["summary"]
    assert 0.08 < row["details"]["mean_abs_diff"]["raw"] < 0.1 < row["details"]["max_abs_diff"]


@pytest.mark.slow  # a generation of 32 requests, two checks
def test_a_double_bos_is_diagnosed_from_the_whole_sets_worst_records(
        tmp_path: Path, run_cli, check_json, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records of a double-BOS server with no prompt ids (as TensorRT-LLM serves them): only the
    served log-probs show the extra BOS. Checked in 4 chunks, each chunk rescores its own worst
    records under each convention and the set's 16 worst are picked at the end: the diagnosis
    and its two fits are one process's."""
    monkeypatch.setenv("SERVECHECK_TOKEN_BUDGET", "1")
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"prompt": PROMPTS, "temperature": [0.0, 1.0], "seed": [5, 6],
                                   "max_tokens": 16}))
    path = tmp_path / "double-bos.jsonl"
    assert run_cli("generate", prompts, "--target", "hf:builtin?fault=double-bos", "--out", path,
                   "--no-progress") == 0
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for r in lines:
        r.pop("prompt_token_ids")
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    code, whole = check_json(path, tmp_path)
    chunked_code, chunked = check_json(path, tmp_path, "builtin", "--records-per-chunk", "8",
                                       "--state", tmp_path / "state")
    assert code == chunked_code == 1 and chunked["chunks"] == 4
    row = _logprobs_row(chunked, whole)
    assert row["verdict"] == "fail" and "double BOS" in row["details"]["prompt_diagnosis"]

"""The GPU's busy fraction in ``SERVECHECK_TIMINGS`` (issue 34: whether the GPU waits on
Python). This machine has no GPU, so what a GPU run writes is measured on the device
(docs/performance.md); here: a CPU run says it used none, and each phase gets the mean of the
samples taken inside it. The samples are planted, not NVML's: no card here gives any."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from servecheck.workflows import gpu_busy, progress


def test_a_cpu_run_writes_its_phases_and_no_gpu_fraction(run_cli, root: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    timings = tmp_path / "t.json"
    monkeypatch.setenv("SERVECHECK_TIMINGS", str(timings))
    assert run_cli("check", root / "tests" / "golden" / "honest.responses.jsonl", "--reference",
                   "builtin", "--no-progress", "--json", tmp_path / "s.json") == 0
    written = json.loads(timings.read_text())
    assert written["gpu_busy"] is None
    assert written["phases_s"]["teacher forcing"] > 0 and "checks" in written["phases_s"]


def test_each_phase_gets_the_mean_of_the_samples_inside_it(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setattr(gpu_busy, "_samples", [(0.5, 0.0), (1.5, 1.0), (2.5, 0.8), (3.5, 0.0)])
    monkeypatch.setattr(gpu_busy, "_state", {"thread": None})
    spans = {"teacher forcing": [(1.0, 2.0), (2.2, 3.0)], "checks": [(3.2, 3.9)],
             "read and validate": [(0.0, 0.1)]}
    out = gpu_busy.fractions(spans)
    assert out == {"run": 0.45, "samples": 4, "period_s": gpu_busy.PERIOD_S,
                   "teacher forcing": 0.9, "checks": 0.0}


def test_without_nvml_the_timings_say_why(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("no pynvml here")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    monkeypatch.setattr(gpu_busy, "_state", {})
    gpu_busy.watch("0000")
    assert "nvidia-ml-py" in gpu_busy.fractions(progress.SPANS)["not measured"]

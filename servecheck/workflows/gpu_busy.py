"""How busy the GPU is while a run goes: the share of time a kernel was running, per phase.

The question a slow run on a GPU raises is whether the GPU waits on Python. NVML answers it the
way ``nvidia-smi`` does (utilization: the share of the last sample period in which one or more
kernels ran), so a thread samples it every ``PERIOD_S`` once a run puts the reference on a GPU,
and ``fractions`` averages the samples that fall inside each phase ``progress.timed`` recorded.
CUDA events would need a pair around every launch on two streams and would count the gaps inside
a forward as busy; NVML counts what the card did, whoever launched it. NVML comes with the
driver; its Python binding (``nvidia-ml-py``, the ``gpu`` extra) is optional: without it, or on
a CPU, the timings say the fraction was not measured and why.
"""

from __future__ import annotations

import threading
import time

__all__ = ["PERIOD_S", "fractions", "watch"]

PERIOD_S = 0.1
"""Between samples: NVML's own period is 1/6 s to 1 s by card, so faster adds nothing."""

_samples: list[tuple[float, float]] = []
"""(``time.perf_counter()``, busy fraction) since ``watch``."""
_state: dict[str, object] = {}


def watch(uuid: str) -> None:
    """Sample the utilization of the GPU with this UUID (torch's, which NVML spells with a
    ``GPU-`` prefix: CUDA's indices are renumbered by ``CUDA_VISIBLE_DEVICES``, NVML's are
    not) from now until the process ends; once a process."""
    if "thread" in _state or "missing" in _state:
        return
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}".encode())
    except Exception as e:  # no binding, no driver: said in the timings, never fatal
        _state["missing"] = f"{type(e).__name__}: {e}" if not isinstance(e, ImportError) else \
            "no NVML binding (pip install nvidia-ml-py, the gpu extra)"
        return

    def sample() -> None:
        while True:
            try:
                busy = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100
            except Exception:  # the driver went away: keep what was sampled
                return
            _samples.append((time.perf_counter(), busy))
            time.sleep(PERIOD_S)

    _state["thread"] = threading.Thread(target=sample, name="servecheck-gpu-busy", daemon=True)
    _state["thread"].start()  # type: ignore[attr-defined]


def fractions(spans: dict[str, list[tuple[float, float]]]) -> dict[str, object] | None:
    """The mean busy fraction within each phase's (start, end) spans, and over all samples
    (``run``); None where no run used a GPU."""
    if "missing" in _state:
        return {"not measured": _state["missing"]}
    if not _samples:
        return None
    seen = list(_samples)
    out: dict[str, object] = {"run": round(sum(b for _, b in seen) / len(seen), 3),
                              "samples": len(seen), "period_s": PERIOD_S}
    for phase, windows in spans.items():
        inside = [b for t, b in seen if any(a <= t <= z for a, z in windows)]
        if inside:
            out[phase] = round(sum(inside) / len(inside), 3)
    return out

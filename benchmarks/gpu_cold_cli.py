"""``servecheck check`` from a cold command line on one GPU: wall time from process start to
exit (reading, loading the checkpoint, teacher forcing, the checks, the JSON and the HTML report),
the GPU's busy fraction over the run, and the CPU seconds, for this code against an older copy.

The reference is a Gemma-3-1B-shaped checkpoint of random weights (bf16) with the built-in
tokenizer and template, written to disk first so that each run loads it as a user's would. The
records are ``check_scale.synthetic``'s: the 5,376 honest ones of ``check_time.py`` repeated
with new ids to each size, as JSON Lines (the published rows gave every copy a suffixed id; the
first copy now keeps its own, which changes no cost). The busy fraction is the mean of
``nvidia-smi``'s utilization (the share of time a kernel was running) sampled every 100 ms while
the command ran. Random weights disagree with every served token, so most checks fail: what is
compared is the time and that both codes give the same verdicts.

    python benchmarks/gpu_cold_cli.py --sizes 1000,10000 --code before=OLD --code after=. \\
        --dask-gpu 10000 --out /tmp/out/gpu_cold_cli.json
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from check_scale import synthetic  # noqa: E402 - the same records as the CPU benchmark

BUILTIN = ROOT / "servecheck" / "tinymodels" / "builtin"


def checkpoint(folder: Path) -> Path:
    """The 1B-shaped model of random weights, saved with the built-in tokenizer and template."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    if (folder / "model.safetensors").exists() or list(folder.glob("*.safetensors*")):
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                 "generation_config.json"):
        shutil.copy(BUILTIN / name, folder / name)
    small = json.loads((BUILTIN / "config.json").read_text())
    cfg = Gemma3TextConfig(vocab_size=small["vocab_size"], hidden_size=1152,
                           intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=256, sliding_window=512,
                           max_position_embeddings=32768, query_pre_attn_scalar=256,
                           tie_word_embeddings=True, bos_token_id=small.get("bos_token_id"),
                           eos_token_id=small.get("eos_token_id"),
                           pad_token_id=small.get("pad_token_id"))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        model.model.norm.weight.fill_(9.0)  # logits ×10: a trained model's entropy range
    model.save_pretrained(folder)
    return folder


class GpuSampler:
    """``nvidia-smi`` utilization every 100 ms in the background."""

    def __init__(self) -> None:
        self.values: list[float] = []
        if not shutil.which("nvidia-smi"):
            self.proc = None
            return
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits", "-lms", "100"],
                                     stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.values.append(float(line.split(",")[0]))

    def stop(self) -> dict:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        v = self.values
        return {"gpu_busy_mean": round(sum(v) / len(v) / 100, 3) if v else None,
                "gpu_samples": len(v)}


def cold(code: Path, path: Path, ckpt: Path, out: Path, extra: list[str],
         caches: Path, setting: dict[str, str] | None = None) -> dict:
    """One ``check`` in a new process; ``caches``: where its bytecode and Triton kernels are
    kept (an empty folder: a machine's first run)."""
    # an image that sets PYTHONDONTWRITEBYTECODE (the lent GPU machine's does) compiles every
    # module from source in every process, ~4.5 s that no installed package pays: the bytecode
    # goes to ``caches`` as pip's install would have written it
    base = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env = {**base, "PYTHONPATH": os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]),
           "SERVECHECK_STATE": str(out / "state"), "SERVECHECK_TIMINGS": str(out / "t.json"),
           "PYTHONPYCACHEPREFIX": str(caches / "pyc"), "TRITON_CACHE_DIR": str(caches / "triton"),
           **(setting or {})}
    (out / "t.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "servecheck.cli", "check", str(path), "--reference", str(ckpt),
           "--dtype", "bfloat16", "--no-progress", "--json", str(out / "s.json"), "--report",
           str(out / "r.html"), *extra]
    (out / "s.json").unlink(missing_ok=True)
    shutil.rmtree(out / "state", ignore_errors=True)  # every run from zero
    sampler = GpuSampler()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    gpu = sampler.stop()
    exit_ = os.waitstatus_to_exitcode(status)
    if exit_ not in (0, 1, 3):
        return {"error": f"exit {exit_}: {proc.stderr.read()[-1500:]}", "wall_s": round(wall, 2)}
    doc = json.loads((out / "s.json").read_text())
    timings = out / "t.json"
    written = json.loads(timings.read_text()) if timings.exists() else {}
    phases = written.get("phases_s", written)  # older code wrote the phases alone
    return {"wall_s": round(wall, 2), "exit": exit_, **gpu, "phases_s": phases,
            "gpu_busy_servecheck": written.get("gpu_busy"),
            "startup_and_imports_s": round(wall - sum(phases.values()), 2) if phases else None,
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "chunks": doc.get("chunks", 1),
            # the whole JSON summary: two settings that must agree to the bit compare by it
            "summary_sha256": hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16],
            "verdicts": [(c["name"], c["verdict"]) for c in doc["checks"]]}


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--code", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--dask-gpu", default="", help="sizes also run with --dask local-gpu (last code)")
    ap.add_argument("--first-run", help="records of one run with empty caches first (last code)")
    ap.add_argument("--ab", metavar="VAR", help="each code run twice, with VAR=0 and VAR=1 "
                    "(SERVECHECK_OVERLAP: a chunk's checks beside the next chunk's scoring)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/servecheck-cold"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_cold_cli.json")
    a = ap.parse_args()
    codes = {k: Path(v).resolve() for k, v in (c.split("=", 1) for c in a.code)} or {"after": ROOT}
    a.work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    ckpt = checkpoint(a.work / "gemma-1b-shape")
    built = time.perf_counter() - t
    rows = []
    warm = a.work / "caches"
    if a.first_run:  # a machine's first run: no bytecode, no compiled kernels
        n = int(a.first_run)
        name, code = list(codes.items())[-1]
        fresh = a.work / f"fresh-{time.time_ns()}"
        rows.append({"code": f"{name}, first run on the machine", "records": n,
                     **cold(code, synthetic(n, a.work), ckpt, a.work, [], fresh)})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "verdicts"}), flush=True)
    for code in codes.values():  # bytecode and kernels cached, as after any first run
        cold(code, synthetic(200, a.work), ckpt, a.work, [], warm)
    for n in (int(s) for s in a.sizes.split(",") if s):
        path = synthetic(n, a.work)
        runs: list[tuple[str, Path, list[str], dict[str, str]]] = \
            [(name, code, [], {}) for name, code in codes.items()]
        if a.ab:
            runs = [(f"{name}, {a.ab}={v}", code, [], {a.ab: v}) for name, code, _, _ in runs
                    for v in "01"]
        if str(n) in a.dask_gpu.split(","):
            name, code = list(codes.items())[-1]
            runs.append((f"{name}, --dask local-gpu", code, ["--dask", "local-gpu"], {}))
        for name, code, extra, setting in runs:
            row = {"code": name, "records": n, **cold(code, path, ckpt, a.work, extra, warm,
                                                      setting)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "verdicts"}), flush=True)
        same = {json.dumps(r.get("verdicts")) for r in rows if r["records"] == n
                and "first run" not in r["code"]}
        print(f"{n} records: verdicts {'agree' if len(same) == 1 else 'DIFFER'}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"device": torch.cuda.get_device_name() if torch.cuda.is_available()
                                 else "none", "torch": torch.__version__, "cpus": os.cpu_count(),
                                 "checkpoint_build_s": round(built, 1), "rows": rows}, indent=1))
    print(f"written {a.out}")


if __name__ == "__main__":
    main()

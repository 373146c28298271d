"""Requests per second of servecheck's collection client against Triton's own perf_analyzer.

One real Triton server (from nvidia-pytriton) serves an echo model with the TensorRT-LLM
``ensemble`` interface, so the server costs almost nothing and the clients are what is measured.
In the same run, at each concurrency, perf_analyzer (C++, Triton's load generator) and
servecheck's ``generate`` (the whole path a user runs: prompt expansion, chat templating, the
model-config lookup, HTTP generate, the record written and flushed to disk) send requests to it.
Goal: servecheck ≥ 0.8 × perf_analyzer's rate at equal concurrency.

perf_analyzer speaks KServe ``/infer``, servecheck the ``/generate`` extension (what TensorRT-LLM
users call); both reach the same model. It ships in the ``tritonclient`` 2.51.0 wheel (the
server's version; later wheels ship a placeholder), needs ``libb64-0d`` (Debian) and
``libcudart.so.12`` (pip ``nvidia-cuda-runtime-cu12``), even on CPU: ``--setup`` fetches all three
into benchmarks/.cache/.

    .venv/bin/python benchmarks/client_rate.py --setup --concurrency 1 4 8 16 --repeats 3

``--serve-triton`` measures the other side instead: ``servecheck serve triton`` (the real
command, the built-in model) in a fresh server each run, the rate of each of its three models
right after start-up, in the order ensemble, tensorrt_llm_bls, tensorrt_llm, ensemble; its time to
ready, the lines it shows, and how long SIGTERM takes to stop it and its whole process tree.
``--tree`` runs another copy of the code (``git archive HEAD | tar -x -C DIR``: the code before a
change), interleaved with this one:

    .venv/bin/python benchmarks/client_rate.py --serve-triton --tree before=/tmp/head \
        --tree before-passive=/tmp/head --env before-passive:OMP_WAIT_POLICY=PASSIVE --repeats 3

``--omp-teams`` isolates the cause found that way, without Triton: the built-in model generating
in one long-lived thread (a model's inference thread), with and without a second thread that has
generated once (a second model's first request), and with ``OMP_WAIT_POLICY=PASSIVE``; first on
a machine as it is, then with one busy process per two cores beside it (as the client,
tritonserver and other jobs keep a core busy).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "perf_analyzer"
sys.path.insert(0, str(ROOT))


from servecheck.collect.collector import collect  # noqa: E402
from servecheck.formats.conversation import Conversation, Message  # noqa: E402
from servecheck.reference.model import Reference  # noqa: E402
from servecheck.servers.triton_host import free_ports, libdir_on_loader_path, wait_ready  # noqa: E402


def setup() -> Path:
    """perf_analyzer and the two libraries it loads, into benchmarks/.cache/perf_analyzer."""
    binary = CACHE / "perf_analyzer"
    if binary.exists():
        return binary
    CACHE.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "download", "-q", "--no-deps", "tritonclient==2.51.0", "-d", CACHE],
                   check=True)
    wheel = next(CACHE.glob("tritonclient-2.51.0-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        binary.write_bytes(z.read("tritonclient-2.51.0.data/data/bin/perf_analyzer"))
    binary.chmod(0o755)
    subprocess.run([*pip, "install", "-q", "--target", CACHE / "cudart",
                    "nvidia-cuda-runtime-cu12"], check=True)
    if not Path("/usr/lib/x86_64-linux-gnu/libb64.so.0d").exists():
        subprocess.run(["apt-get", "install", "-y", "-q", "libb64-0d"], check=True,
                       stdout=subprocess.DEVNULL)
    return binary


def perf_env() -> dict[str, str]:
    libs = [str(p.parent) for p in CACHE.glob("cudart/**/libcudart.so.12")]
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = ":".join([*libs, env.get("LD_LIBRARY_PATH", "")])
    return env


def echo_server(http: int, grpc: int, metrics: int, block: bool = False):
    """The TensorRT-LLM ensemble's tensors, answered by echoing ``text_input``."""
    libdir_on_loader_path()
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    def infer(requests: list) -> list[dict]:
        return [{"text_output": np.asarray(r.data["text_input"], dtype=object).reshape(1, 1),
                 "output_log_probs": np.zeros((1, 1, 1), dtype=np.float32)} for r in requests]

    inputs = [Tensor(name="text_input", dtype=bytes, shape=(1,)),
              Tensor(name="max_tokens", dtype=np.int32, shape=(1,))]
    inputs += [Tensor(name=n, dtype=t, shape=(1,), optional=True) for n, t in [
        ("temperature", np.float32), ("seed", np.uint64), ("exclude_input_in_output", np.bool_),
        ("return_log_probs", np.bool_), ("stream", np.bool_)]]
    outputs = [Tensor(name="text_output", dtype=bytes, shape=(-1,)),
               Tensor(name="output_log_probs", dtype=np.float32, shape=(-1, -1))]
    triton = Triton(config=TritonConfig(
        http_address="127.0.0.1", http_port=http, grpc_address="127.0.0.1", grpc_port=grpc,
        metrics_address="127.0.0.1", metrics_port=metrics, allow_gpu_metrics=False,
        exit_timeout_secs=5, log_verbose=0),
        # perf_analyzer reads the statistics API, which pytriton restricts by default; this server
        # binds 127.0.0.1 and lives for the benchmark only
        security_config=TritonSecurityConfig(restricted_endpoints=[]))
    triton.bind("ensemble", infer, inputs, outputs, config=ModelConfig(max_batch_size=8),
                strict=True)
    triton.serve() if block else triton.run()
    return triton


_runs = itertools.count()


def servecheck_rate(http: int, concurrency: int, n: int, work: Path) -> float:
    run = next(_runs)
    prompts = work / f"prompts-{run}.json"
    prompts.write_text(json.dumps({"prompt": [f"Request {run}.{i}: say hello." for i in range(n)],
                                   "temperature": 0.8, "seed": 1, "max_tokens": 16}))
    out = work / f"r-{run}.jsonl"  # a fresh file and fresh ids: nothing is skipped as answered
    t0 = time.perf_counter()
    summary = collect(prompts, f"triton://127.0.0.1:{http}/ensemble?concurrency={concurrency}",
                      out, show_progress=False, retries=0, reference="builtin")
    elapsed = time.perf_counter() - t0
    assert summary.written == n and not summary.errors, summary.errors[:3]
    return n / elapsed


def perf_analyzer_rate(binary: Path, http: int, concurrency: int, work: Path) -> float:
    # the very inputs servecheck sends (its `sent` field): same tensors, same prompt lengths
    ref = Reference("builtin")
    data = work / "input.json"
    data.write_text(json.dumps({"data": [
        {"text_input": [ref.render(Conversation(contents=[Message(
            role="user", content=f"Request 0.{i}: say hello.")]))],
         "max_tokens": [16], "exclude_input_in_output": [True], "temperature": [0.8],
         "seed": [1], "stream": [False], "return_log_probs": [True]} for i in range(64)]}))
    cmd = [str(binary), "-m", "ensemble", "-u", f"127.0.0.1:{http}", "-i", "http",
           "--concurrency-range", str(concurrency), "--input-data", str(data),
           "--measurement-interval", "4000", "--stability-percentage", "20",
           "--max-trials", "6"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=perf_env(), timeout=600)
    match = re.findall(r"Throughput: ([\d.]+) infer/sec", done.stdout)
    if done.returncode != 0 or not match:
        raise RuntimeError(f"perf_analyzer failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return float(match[-1])


def start_pinned_server(ports: list[int], core: int) -> subprocess.Popen:
    """The echo server in its own process (and process group) on one core, as on its own
    machine: client and server then never share a core, for perf_analyzer and servecheck alike."""
    proc = subprocess.Popen([sys.executable, __file__, "--serve", *map(str, ports)],
                            preexec_fn=lambda: os.sched_setaffinity(0, {core}),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    if wait_ready(ports[0], proc, 120):
        return proc
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("the echo server did not start")


SERVE_ORDER = ("ensemble", "tensorrt_llm_bls", "tensorrt_llm", "ensemble")


def _generate(port: int, model: str, i: int) -> None:
    """One /generate request of a short sampled completion, under the model's own names."""
    names = ({"max_tokens": "sampling_param_max_tokens", "temperature": "sampling_param_temperature",
              "seed": "sampling_param_seed"} if model == "tensorrt_llm" else {})
    body = {names.get(k, k): v for k, v in
            {"max_tokens": 8, "temperature": 0.8, "seed": i}.items()}
    body["text_input"] = f"Request {i}: say hello."
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{model}/generate",
                                     data=json.dumps(body).encode())
    with urllib.request.urlopen(request, timeout=300) as answer:
        answer.read()


def _live() -> dict[int, int]:
    """Every process but the zombies, pid → parent pid."""
    found = {}
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            text = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z":
            found[int(name)] = int(fields[1])
    return found


def _tree_of(pid: int) -> set[int]:
    """``pid`` and its live descendants."""
    live = _live()
    found, todo = set(), [pid]
    while todo:
        found.add(here := todo.pop())
        todo += [child for child, parent in live.items() if parent == here]
    return found


def serve_run(tree: Path, requests: int, concurrency: int, work: Path,
              env: dict[str, str] | None = None) -> dict:
    """One fresh ``servecheck serve triton`` from the code in ``tree`` (with ``env`` added to
    the environment): see the module's doc."""
    ports = free_ports(3)
    log = work / f"serve-{next(_runs)}.log"
    args = [a for flag, port in zip(("--http-port", "--grpc-port", "--metrics-port"), ports,
                                    strict=True) for a in (flag, str(port))]
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "servecheck.cli", "serve", "triton", *args],
                                cwd=tree, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={**os.environ, **(env or {})})
    try:
        if not all(wait_ready(ports[0], proc, 300, model=m) for m in SERVE_ORDER):
            raise RuntimeError(f"serve triton did not start:\n{log.read_text()[-3000:]}")
        row = {"ready_s": round(time.perf_counter() - t0, 1), "rps": {}}
        with ThreadPoolExecutor(concurrency) as pool:
            for k, model in enumerate(SERVE_ORDER):
                start = time.perf_counter()
                list(pool.map(lambda i, m=model: _generate(ports[0], m, i), range(requests)))
                row["rps"][f"{k + 1}. {model}"] = round(requests / (time.perf_counter() - start), 1)
        processes = _tree_of(proc.pid)
        start = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
        row["sigterm_exit_s"] = round(time.perf_counter() - start, 2)
        while processes & set(_live()):  # the stubs outlive tritonserver, under init
            time.sleep(0.05)
        row["sigterm_tree_gone_s"] = round(time.perf_counter() - start, 2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    shown = log.read_text(errors="replace").splitlines()
    row["terminal_lines"] = len(shown)
    row["terminal_error_lines"] = sum(bool(re.match(r"E\d{4} ", line)) for line in shown)
    row["ready_line"] = next((line for line in shown if line.startswith("ready: ")), None)
    return row


def serve_main(a: argparse.Namespace) -> None:
    trees = [(label, Path(path)) for label, _, path in (t.partition("=") for t in a.tree)]
    trees.append(("this", ROOT))
    envs: dict[str, dict[str, str]] = {}
    for spec in a.env:
        label, _, assignment = spec.partition(":")
        envs.setdefault(label, {}).update([assignment.split("=", 1)])
    runs: dict[str, list[dict]] = {label: [] for label, _ in trees}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.repeats):  # interleaved, so drifting load hits every tree alike
            for label, tree in trees:
                runs[label].append(serve_run(tree, a.requests, a.serve_concurrency, Path(tmp),
                                             envs.get(label)))
                print(json.dumps({"tree": label, **runs[label][-1]}), flush=True)
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d")}
    summary = {label: {key: statistics.median(r["rps"][key] for r in rows) for key in rows[0]["rps"]}
               for label, rows in runs.items()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine, "requests": a.requests,
                                 "concurrency": a.serve_concurrency, "median_rps": summary,
                                 "runs": runs}, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"written {a.out}")


OMP_VARIANTS = (("one team", "one", {}), ("two teams", "two", {}),
                ("one team, OMP_WAIT_POLICY=PASSIVE", "one", {"OMP_WAIT_POLICY": "PASSIVE"}))


def omp_child(mode: str, requests: int = 40) -> None:
    """Print the mean ms per request of the built-in model generating in one long-lived thread;
    with ``mode`` "two", another live thread has generated once before."""
    import queue
    import threading

    from servecheck.collect.targets.hf import HFTarget
    from servecheck.formats.parameters import Parameters

    engine = HFTarget("builtin")

    def worker(jobs: queue.Queue, done: queue.Queue) -> None:
        while True:
            done.put(engine.complete([jobs.get()], Parameters(max_tokens=4, temperature=0.8,
                                                              seed=1)))

    threads = []
    for _ in range(2 if mode == "two" else 1):
        jobs, done = queue.Queue(), queue.Queue()
        threading.Thread(target=worker, args=(jobs, done), daemon=True).start()
        jobs.put("Hello")
        done.get()
        threads.append((jobs, done))
    jobs, done = threads[0]
    start = time.perf_counter()
    for i in range(requests):
        jobs.put(f"Request {i}: say hello.")
        done.get()
    print(json.dumps({"ms_per_request": round((time.perf_counter() - start) * 1000 / requests, 1)}))


def omp_main(repeats: int) -> None:
    base = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    for busy in (0, max(1, (os.cpu_count() or 2) // 2)):
        hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        runs: dict[str, list[float]] = {label: [] for label, _, _ in OMP_VARIANTS}
        try:
            for _ in range(repeats):  # interleaved, as the load of a shared machine drifts
                for label, mode, env in OMP_VARIANTS:
                    done = subprocess.run([sys.executable, __file__, "--omp-child", mode],
                                          check=True, capture_output=True, text=True,
                                          env={**base, **env})
                    runs[label].append(json.loads(done.stdout.splitlines()[-1])["ms_per_request"])
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
        for label, values in runs.items():
            print(json.dumps({"busy_processes": busy, "variant": label, "ms_per_request": values,
                              "median": statistics.median(values)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setup", action="store_true", help="fetch perf_analyzer and its libraries")
    ap.add_argument("--perf-analyzer", type=Path, default=CACHE / "perf_analyzer")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    ap.add_argument("--requests", type=int,
                    help="servecheck requests per run (2000); --serve-triton: per model (48)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per client and level (median)")
    ap.add_argument("--shared-cores", action="store_true",
                    help="let client and server share every core (default: one core each)")
    ap.add_argument("--serve", type=int, nargs=3, metavar="PORT", help=argparse.SUPPRESS)
    ap.add_argument("--serve-triton", action="store_true",
                    help="measure `servecheck serve triton`'s models instead (see the doc)")
    ap.add_argument("--tree", action="append", default=[], metavar="LABEL=DIR",
                    help="with --serve-triton: also run the code in DIR (repeatable)")
    ap.add_argument("--env", action="append", default=[], metavar="LABEL:VAR=VALUE",
                    help="with --serve-triton: set VAR for the runs of tree LABEL (repeatable)")
    ap.add_argument("--serve-concurrency", type=int, default=4)
    ap.add_argument("--omp-teams", action="store_true", help="the OpenMP experiment (see the doc)")
    ap.add_argument("--omp-child", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    if a.serve:
        echo_server(*a.serve, block=True)  # until SIGINT
        return
    if a.omp_child:
        omp_child(a.omp_child)
        return
    if a.omp_teams:
        omp_main(a.repeats)
        return
    if a.serve_triton:
        a.requests = a.requests or 48
        a.out = a.out or ROOT / "benchmarks" / "results" / "serve_triton_rates.json"
        serve_main(a)
        return
    a.out = a.out or ROOT / "benchmarks" / "results" / "client_rate.json"
    a.requests = a.requests or 2000
    binary = setup() if a.setup else a.perf_analyzer
    if not binary.exists() and not shutil.which(str(binary)):
        sys.exit(f"{binary} not found: run with --setup")
    ports = free_ports(3)
    cores = sorted(os.sched_getaffinity(0))
    pinned = not a.shared_cores and len(cores) >= 2
    server = start_pinned_server(ports, cores[0]) if pinned else None
    if pinned:
        os.sched_setaffinity(0, set(cores[1:]))  # this process and perf_analyzer, its child
    else:
        in_process = echo_server(*ports)
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            servecheck_rate(ports[0], 4, 200, Path(tmp))  # warm-up: imports, template, connections
            for c in a.concurrency:
                pa, sc = [], []
                for _ in range(a.repeats):  # interleaved, so drifting load hits both alike
                    pa.append(perf_analyzer_rate(binary, ports[0], c, Path(tmp)))
                    sc.append(servecheck_rate(ports[0], c, a.requests, Path(tmp)))
                pa_m, sc_m = statistics.median(pa), statistics.median(sc)
                rows.append({"concurrency": c, "perf_analyzer_rps": round(pa_m, 1),
                             "servecheck_rps": round(sc_m, 1), "ratio": round(sc_m / pa_m, 3),
                             "perf_analyzer_runs": [round(x, 1) for x in pa],
                             "servecheck_runs": [round(x, 1) for x in sc]})
                print(json.dumps(rows[-1]), flush=True)
    finally:
        if server is not None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
        else:
            in_process.stop()
    machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
               "python": platform.python_version(), "date": time.strftime("%Y-%m-%d"),
               "placement": "server on one core, client on the rest" if pinned else "shared"}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"machine": machine, "requests": a.requests, "rows": rows},
                                indent=2) + "\n")
    print(f"written {a.out}")


if __name__ == "__main__":
    main()

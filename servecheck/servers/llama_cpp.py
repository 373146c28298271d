"""llama-cpp-python's OpenAI server over a checkpoint converted to GGUF: a real llama.cpp to check.

llama.cpp shares no code with transformers: its own kernels, tokenizer, chat-template engine,
sampler chain and defaults. servecheck reaches it as users do, with the ``openai://`` target;
this module starts one for the tests and the benchmarks, from the environment
``.ci/llama-cpp-env`` builds (``servers/convert.llama_venv``), on 127.0.0.1.

What it is started with, and why: ``--n_ctx`` the checkpoint's context; ``--type_k 0
--type_v 0`` keeps the KV cache in float32 unless asked otherwise (llama.cpp's F16 default costs
1e-3 to 6e-3 in log-probs, which a ``--numerics fp32`` check counts against it: a real coarser KV
cache); one thread, so that several servers and the checks share a small machine; ``--verbose
False``. Its sampling defaults (top_k 40, top_p 0.95, min_p 0.05, repeat_penalty 1.1, temperature
0.8) cannot be changed from the command line: a request that wants a neutral sampler sets each of
them, which is what the tests do.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from servecheck.servers.convert import converted, llama_venv
from servecheck.servers.supervise import stop_session

START_TIMEOUT_S = 120


def python() -> Path:
    return llama_venv() / "bin" / "python"


def available() -> bool:
    return (llama_venv() / ".servecheck-ready").exists()


KV_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8}
"""ggml's type ids for ``--type_k``/``--type_v``. A quantized V cache needs flash attention in
llama.cpp, so ``q8_0`` and ``q4_0`` quantize the keys and keep the values f16."""


DRAFTS = ("prompt-lookup-decoding",)
"""The speculation llama-cpp-python's server offers: drafts copied from earlier n-grams of the
sequence, each verified by sampling the target at that position and kept while they agree
(``Llama.generate``), which is lossless whatever the sampler."""


def start(gguf: Path, port: int, log: Path, context: int = 1024, threads: int = 1,
          kv_cache: str = "f32", draft: str | None = None) -> subprocess.Popen:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    out = log.open("w")
    k = KV_TYPES[kv_cache]
    v = KV_TYPES["f16"] if kv_cache.startswith("q") else k
    if draft and draft not in DRAFTS:
        raise ValueError(f"llama.cpp drafts with {DRAFTS}, not {draft!r}")
    speculation = ["--draft_model", draft] if draft else []
    return subprocess.Popen(
        [str(python()), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", str(context), "--type_k", str(k), "--type_v", str(v),
         "--n_threads", str(threads), "--n_threads_batch", str(threads), "--verbose", "False",
         *speculation],
        env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp exited during start-up:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"llama.cpp did not start in {START_TIMEOUT_S} s")


@contextlib.contextmanager
def serving(checkpoint: Path, port: int, work: Path, threads: int = 1,
            kv_cache: str = "f32", draft: str | None = None) -> Iterator[str]:
    """llama.cpp serving ``checkpoint`` (converted to GGUF once per machine) on ``port``, its
    KV cache of type ``kv_cache`` (``KV_TYPES``), decoding speculatively with ``draft``
    (``DRAFTS``) if given; yields ``127.0.0.1:PORT``, and stops it on the way out."""
    gguf = converted("gguf", checkpoint) / "model.gguf"
    log = work / f"llama-{port}.log"
    proc = start(gguf, port, log, threads=threads, kv_cache=kv_cache, draft=draft)
    try:
        wait_ready(proc, port, log)
        yield f"127.0.0.1:{port}"
    finally:
        stop_session(proc)

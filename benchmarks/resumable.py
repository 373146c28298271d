"""Runs of a benchmark in worker processes, each row appended to a JSON Lines file as it
finishes, so that a stopped benchmark resumes where it stopped (the callers skip the rows the
file already has)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any


def run_all(todo: list[tuple], one_run: Callable[..., dict], results: Path, rows: list[dict],
            workers: int, initializer: Callable[..., None], initargs: tuple = (),
            every: int = 10) -> None:
    """``one_run(*job)`` for every job of ``todo``; each row is appended to ``rows`` and to the
    file ``results`` as it comes, with a progress line every ``every`` runs."""
    t0 = time.time()
    pool = ProcessPoolExecutor(workers, initializer=initializer, initargs=initargs)
    with pool, results.open("a") as fh:
        futures = [pool.submit(one_run, *job) for job in todo]
        for k, fut in enumerate(as_completed(futures), 1):
            row: dict[str, Any] = fut.result()
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            if k % every == 0:
                print(f"{k}/{len(todo)} runs, {time.time() - t0:.0f}s", flush=True)

"""The statistics of one batch run while the decoder runs the next: a worker thread, a side stream.

Scoring alternates two kinds of GPU work: the decoder forward (matmuls) and the per-row
statistics (streaming passes, with a few host decisions per block, such as whether every nucleus
lies among the sorted candidates). Each decision is a sync; on one thread a sync drains the queue
and the GPU then waits while the host launches the next batch (building its token ids, the
compiled layers' guards). Here the statistics go to a worker thread with its own CUDA stream, so
its syncs wait on its own stream only, the main thread keeps the decoder's queue full, and the
two kinds of kernels fill each other's gaps.

Calls run in the order submitted. A tensor handed over is recorded on the side stream, so the
allocator does not reuse its memory while the worker still reads it. An exception in the worker
is raised in the caller, at the next ``submit`` or at the end. Off CUDA, ``submit`` just calls.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

import torch

DEPTH = 2
"""Submitted calls waiting at most: bounds the hidden states held (75 MB per 32k-token batch)."""


class Overlap:
    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        if self.cuda and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self.error: BaseException | None = None
        self.stop = False

    def __enter__(self) -> Overlap:
        if self.cuda:
            self.stream = torch.cuda.Stream(self.device)
            self.waiting: queue.Queue[tuple[Callable[..., None], tuple[Any, ...], Any] | None] = \
                queue.Queue(maxsize=DEPTH)
            self.thread = threading.Thread(target=self._work, name="servecheck-stats", daemon=True)
            self.thread.start()
        return self

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        if not self.cuda:
            fn(*args)
            return
        if self.error is not None:
            raise self.error
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        for a in args:
            if isinstance(a, torch.Tensor) and a.is_cuda:
                a.record_stream(self.stream)
        self.waiting.put((fn, args, ready))

    def _work(self) -> None:
        torch.cuda.set_device(self.device)  # the current device is per thread
        with torch.inference_mode(), torch.cuda.stream(self.stream):
            while (job := self.waiting.get()) is not None:
                fn, args, ready = job
                if self.error is not None or self.stop:
                    continue  # drain: the caller raises, or was interrupted
                self.stream.wait_event(ready)
                try:
                    fn(*args)
                except BaseException as e:  # re-raised in the caller's thread
                    self.error = e

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if not self.cuda:
            return
        self.stop = kind is not None
        self.waiting.put(None)
        self.thread.join()
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        if kind is None and self.error is not None:
            raise self.error

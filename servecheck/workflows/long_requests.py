"""The long prompts as requests: what the long-context and prefix-cache probes send and the
deployment benchmark replays. They go through the prompts file's own expansion (written to a
temporary file and read back), so a probe sends exactly what ``servecheck long-prompts`` would
have written for the same checkpoint."""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

from servecheck.formats.prompts import Request, expand
from servecheck.reference.long_prompts import build, prompts_file, sliding_window
from servecheck.reference.model import Reference
from servecheck.workflows.long_prompts import dumps

__all__ = ["long_requests"]


def long_requests(ref: Reference, max_tokens: int | None = None, first_seed: int = 1,
                  variant: int = 0) -> list[Request]:
    """Every request of the long prompts file for ``ref`` (greedy, then each sampled setting
    under its seeds), ``max_tokens`` replacing the file's where given; none where the checkpoint
    has no sliding window to size them from."""
    if not sliding_window(ref):
        return []
    prompts, _ = build(ref, variant=variant)
    with tempfile.TemporaryDirectory(prefix="servecheck-long-") as work:
        path = Path(work) / "prompts-long.json"
        path.write_text(dumps(prompts_file(prompts, first_seed)))
        requests = expand(path)
    if max_tokens is None:
        return requests
    return [replace(r, parameters=r.parameters.model_copy(update={"max_tokens": max_tokens}))
            for r in requests]

"""A responses set of any size, checked in chunks: bounded memory, and a rerun resumes.

A day of gateway logs does not fit one process's memory once scored (each output token carries
some hundred statistics). So the set is streamed (``formats.stream``): a first pass validates
every record, then chunks of at most ``records_per_chunk`` records and ``tokens_per_chunk``
tokens are checked one after another, and freed. A check that pools its evidence
(``checks.core.registry.Pooling``: fit, temperature, sampler, mask, context, cache, log-probs,
seeds) keeps what its verdict needs of each chunk, merges it over the chunks and is decided
once, a test at its full share of α: a request whose seeds lie in different chunks is tested
whole, with the power of the whole set, and the log-probs row judges the set's mean |Δ|. Every
other check runs on each chunk as a run of its own at ``α / k`` (``checks.core.combine`` merges
the verdicts); the per-record verdict bounds each record at the
whole set's α/N, N counted on the first pass (``plausibility.counted``). Each
chunk's verdicts are saved as it finishes, keyed by a digest of its records and the options, so
a check stopped by Ctrl-C, a lost machine or a crash resumes at the first chunk not yet saved,
not from zero. A set that fits one chunk is checked exactly as before, in one piece. With
``SERVECHECK_OVERLAP=1`` a chunk's checks run on a thread while the next chunk is teacher-forced
(``workflows.finisher``), so at most two chunks' scores are held; the verdicts are the same,
made and saved in set order.

The saved state is one JSON file a chunk (``chunk-NNNNN.json``, ``saved_state``: plain data
with a format version) in a directory of servecheck's own, by default under
``~/.cache/servecheck/check-state``. Reading it back builds only servecheck's own result
dataclasses, so a file planted there runs no code: one that does not decode is checked again,
with a warning. A directory another user owns, or one group or others may write to, is refused
all the same: whoever can write there decides what the resumed run reports. Pickled state of
older versions (``chunk-NNNNN.pkl``) is never read.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from servecheck.checks import decide_pooled
from servecheck.checks.core.attribution import attribute
from servecheck.checks.core.combine import combine
from servecheck.checks.core.conventions import ConventionFit
from servecheck.checks.core.digest import Digest
from servecheck.checks.core.digest import digest as digest_of
from servecheck.checks.core.options import CheckOptions
from servecheck.checks.core.registry import Evidence, pooled_names, pooled_specs, specs, table_specs
from servecheck.checks.core.results import CheckResult, overall
from servecheck.checks.plausibility import counted
from servecheck.errors import __version__
from servecheck.formats.answers import latest
from servecheck.formats.raw import MAX_RECORD_BYTES
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import read_records
from servecheck.formats.stream import StreamIndex, fingerprint, index, records
from servecheck.reference.forward import plan_compile
from servecheck.reference.scoring import score
from servecheck.workflows import chunk_state
from servecheck.workflows.check import CheckRun, Engine, check, open_engine, score_records
from servecheck.workflows.finisher import Finisher
from servecheck.workflows.gathered import Draw, Gathered, finish
from servecheck.workflows.heap import between_chunks
from servecheck.workflows.interrupts import noted
from servecheck.workflows.prefetch import ahead
from servecheck.workflows.progress import spinner, timed

RECORDS_PER_CHUNK = 20_000
"""Records scored and held at once, at most."""
TOKENS_PER_CHUNK = 2_000_000
"""Tokens scored and held at once, at most (about 1 GB of statistics): long records make
chunks of fewer records."""


@dataclass(frozen=True)
class Chunking:
    records_per_chunk: int = RECORDS_PER_CHUNK
    tokens_per_chunk: int = TOKENS_PER_CHUNK
    state: Path | None = None
    """Where chunks' verdicts are saved; None: under ``$SERVECHECK_STATE`` (default
    ``~/.cache/servecheck/check-state``), one directory per responses set and options."""
    resume: bool = True
    """Reuse saved chunks (False: check every chunk again, overwriting what was saved)."""


@dataclass
class SetRun:
    """A whole responses set's results, chunked or not."""

    results: list[CheckResult]
    convention: ConventionFit
    records: int
    chunks: int
    tokens: dict[str, Any]
    rank: int = 0
    report_chunk: int | None = None
    """The chunk whose records the HTML report shows (None: the report covers the whole set)."""
    shown: str = ""
    """What ``draw`` made of that chunk's records: the page is laid around it, with the whole
    set's verdicts, once every chunk is done."""
    shown_records: tuple[int, int] = (0, 0)
    """Where that chunk's records start in the set, and how many there are."""
    resumed: int = 0
    """Chunks taken from an earlier run's saved state."""
    state: Path | None = None
    whole: CheckRun | None = None
    """The run itself where the set was checked in one piece (its records and scores held)."""
    digest: Digest | None = None

    @property
    def verdict(self) -> str:
        return overall(self.results)


def state_dir(path: Path, options: CheckOptions, chunking: Chunking) -> Path:
    """One directory per responses set (its resolved path), options and chunk size."""
    if chunking.state:
        return chunking.state
    base = Path(os.environ.get("SERVECHECK_STATE") or
                Path.home() / ".cache" / "servecheck" / "check-state")
    key = f"{path.resolve()}|{_options_key(options, chunking)}"
    return base / hashlib.sha256(key.encode()).hexdigest()[:20]


def _options_key(options: CheckOptions, chunking: Chunking) -> str:
    """What a chunk's verdicts depend on besides its records and α/k: the options (not where
    it scores), the chunk caps and servecheck's version."""
    scoring = replace(options, device=None, dask=None)
    pooled = ",".join(s.name for s in pooled_specs())  # state saved before they pooled: no match
    return f"{scoring!r}|{chunking.records_per_chunk}|{chunking.tokens_per_chunk}|{__version__}|" \
           f"pooled:{pooled}"


def _chunks(found: StreamIndex, plan: list[int], max_bytes: int
            ) -> Iterator[list[ResponseRecord]]:
    stream = records(found, max_bytes)
    for size in plan:
        batch = list(itertools.islice(stream, size))
        if not batch:
            return
        yield batch


def _fingerprinted(batches: Iterator[list[ResponseRecord]]
                   ) -> Iterator[tuple[list[ResponseRecord], str]]:
    """Each chunk with the digest of its records (``stream.fingerprint``), made as it is read:
    on the reading thread, not between the GPU's chunks."""
    for batch in batches:
        yield batch, fingerprint(batch)


def _waited(batches: Iterator[tuple[list[ResponseRecord], str]]
            ) -> Iterator[tuple[list[ResponseRecord], str]]:
    """``batches``, the time the run waits for each counted as reading (read ahead, that is
    only what the thread had not finished while the chunk before was checked)."""
    while True:
        with timed("read and validate"):
            batch = next(batches, None)
        if batch is None:
            return
        yield batch


def check_set(path: Path, options: CheckOptions, console: Console, progress: bool = True,
              max_record_bytes: int = MAX_RECORD_BYTES, chunking: Chunking = Chunking(),
              draw: Draw | None = None) -> SetRun:
    """Check a responses file or shard set. In chunks, ``draw(run, chunk)`` (given where a
    report is asked for) draws what the report shows of one chunk's records while they are
    held (``SetRun.shown``); in one piece the caller has the run (``SetRun.whole``)."""
    size = chunking.records_per_chunk
    with spinner(console, f"reading {path}…", progress), timed("read and validate"):
        found = index(path, max_record_bytes, keep=size, tally=counted)
    plan = found.plan(size, chunking.tokens_per_chunk)
    k = len(plan)
    if k == 1:  # the whole set at once: exactly the in-memory run
        with timed("read and validate"):
            held = latest(found.held) if found.held is not None else \
                read_records(path, max_record_bytes)
        run = check(held, options, console, progress)
        return SetRun(run.results, run.convention, found.records, 1,
                      run.context.token_sources(), run.rank, whole=run, digest=run.digest)
    return _check_chunks(found, options, console, progress, max_record_bytes, chunking, plan,
                         draw)


def _check_chunks(found: StreamIndex, options: CheckOptions, console: Console, progress: bool,
                  max_bytes: int, chunking: Chunking, plan: list[int], draw: Draw | None
                  ) -> SetRun:
    k = len(plan)
    starts = [0, *itertools.accumulate(plan)][:-1]
    engine = open_engine(options)
    # under torchrun every rank must take the same chunks: no saved state to disagree about
    directory = state_dir(found.path, options, chunking) if not engine.rank and \
        int(os.environ.get("WORLD_SIZE", "1")) <= 1 else None
    if directory:
        specs()  # every check, so every result type saved state may name, loaded before it is read
        try:             # (the decoder builds only types already loaded: it never imports)
            chunk_state.private_dir(directory)
        except BaseException:
            engine.close()
            raise
    alpha = options.alpha / k
    # each record is judged alone at the whole set's bound, as one process judges it
    each = replace(options, alpha=alpha, record_bound=(options.alpha, found.tally()))
    run_key = f"{_options_key(options, chunking)}|{k}"
    if engine.rank:  # another torchrun rank: rank 0 writes the report
        draw = None
    pools = ", ".join(pooled_names())
    console.print(f"{found.records} records in {k} chunks of up to {max(plan)}: each checked at "
                  f"α/{k} = {alpha:.2g}" + (f", but {pools}: pooled over the chunks, decided "
                                            f"once (the tests at α)" if pools else "")
                  + (f"; verdicts saved in {directory}" if directory else ""))
    fit: ConventionFit | None = None  # the set's order: the first chunk that settles it
    last: ConventionFit | None = None
    got = Gathered()
    taken: set[int] = set()  # chunks whose verdicts an earlier run saved
    # a chunk's checks run while the next chunk is scored: two chunks held at most
    finisher = Finisher(overlapped(engine))
    beside = str(engine.ref.device) if finisher.enabled and \
        str(engine.ref.device).startswith("cuda") else None  # the checks' stream of their own
    try:
        with noted() as lost:  # a Ctrl-C a finalizer swallowed: asked for at each chunk
            for j, (batch, read) in enumerate(_waited(ahead(_fingerprinted(
                    _chunks(found, plan, max_bytes))))):
                with timed("saved verdicts (digest, load, save)"):
                    # the records, the options, α/k, and (past the first) the orders found there
                    first = starts[j]
                    order = f"{fit.chosen!r}, undecided {fit.undecided!r}" if fit else ""
                    digest = hashlib.sha256(f"{read}|{run_key}|{order}"
                                            .encode()).hexdigest()
                    saved = chunk_state.load(directory, j, digest) if directory and chunking.resume else None
                if saved is None:
                    console.print(f"chunk {j + 1}/{k}: records {first}–{first + len(batch) - 1}")
                    finisher.wait(behind=1)  # the chunk before the last is done: its scores freed
                    between_chunks()
                    lost()
                    if j:
                        engine.ref.forget_encodings()  # the cache's bound; the next chunk's texts
                    scored = score_records(batch, each, engine, console, progress, first, fit)
                    plan_compile(scored.context.total_tokens() * (k - j - 1))  # what is left to score
                    convention = fit or scored.convention
                    finisher.submit(finish, j, first, batch, digest, scored, convention, got,
                                    engine.rank, directory, draw, beside)
                    del scored
                else:
                    taken.add(j)
                    convention = saved.convention
                    finisher.submit(got.add, j, saved)
                if fit is None and _decided(convention):
                    fit = convention
                last = convention
            lost()
            finisher.wait()
    except KeyboardInterrupt:
        finisher.stop()  # the chunk in hand is finished and saved: a rerun resumes after it
        if directory:
            console.print(f"interrupted after {len(got.pieces)} of {k} chunks: the same command "
                          f"resumes from chunk {len(got.pieces) + 1} ({directory})")
        raise
    except BaseException:
        finisher.stop()
        raise
    finally:
        engine.close()
    resumed = len(taken)
    if resumed:
        console.print(f"resumed: {resumed} of {k} chunks were checked by an earlier run")
    fit = fit or last  # no chunk held a record the orders score differently
    assert fit is not None
    with timed("checks"):
        pooled = [replace(r, summary=f"{r.summary} (pooled over the {k} chunks, tested once)")
                  for r in decide_pooled(merged(got.evidence), options)]
        # a pooled row that names a cause (context, cache, mask, sampler) points the rows it
        # explains to it, as in one process; no chunk could, holding none of those rows
        results = attribute(in_table_order(combine(got.pieces, alpha) + pooled))
    target = next((n for n, (_, _, r) in enumerate(got.pieces) if overall(r) == "fail"), 0)
    if draw and got.report_chunk != target:  # saved by a run that asked for no report
        got.shown = _redraw(found, each, console, target, plan, max_bytes, fit, draw)
        got.report_chunk, got.shown_records = target, (starts[target], plan[target])
    elif draw and target in taken:
        console.print(f"the HTML report shows chunk {target + 1} as the run that checked it "
                      f"drew it")
    return SetRun(results, fit, found.records, k, {"sources": got.tokens}, engine.rank,
                  got.report_chunk if draw else None, got.shown, got.shown_records, resumed,
                  directory, digest=digest_of(results, got.flagged, got.facts))


def overlapped(engine: Engine) -> bool:
    """Whether a chunk's checks run while the next is scored: where ``SERVECHECK_OVERLAP=1``
    asks for it, on a GPU scored in this process (not yet the default: not yet measured to
    repay on one; under torchrun every scoring call is a collective, made in step)."""
    return os.environ.get("SERVECHECK_OVERLAP", "") == "1" and engine.scorer is score and \
        int(os.environ.get("WORLD_SIZE", "1")) <= 1


def _decided(fit: ConventionFit) -> bool:
    """The order is settled for the set: given by the user, or found from records that the
    candidate orders score differently. A chunk without such a record (sampled with T ≠ 1 and
    top_p or min_p, or penalised) is judged alike under every order, so it settles nothing and
    the next chunk searches again: the set is never judged under an order its first chunk
    could not have told apart (a llama.cpp server's records checked under HF's order, failing
    every nucleus boundary, because its telling records came late in the file)."""
    return not fit.found or fit.records > 0


def merged(evidence: dict[str, list[Evidence]]) -> dict[str, Evidence]:
    """Each pooled check's evidence over the chunks, joined once, in set order."""
    return {name: pieces[0].merge(*pieces[1:]) for name, pieces in evidence.items()}


def in_table_order(results: list[CheckResult]) -> list[CheckResult]:
    """``results`` as the table lists their checks (a result no spec names, last)."""
    place = {n: (s.order, s.name) for s in table_specs() for n in s.names}
    return sorted(results, key=lambda r: place.get(r.name, (10 ** 9, r.name)))


def _redraw(found: StreamIndex, each: CheckOptions, console: Console, j: int, plan: list[int],
            max_bytes: int, fit: ConventionFit, draw: Draw) -> str:
    """The chunk the report shows came from saved state without its drawing (the run that
    checked it asked for no report): check it again (``each``: a chunk's options), since its
    records are no longer in memory."""
    with timed("read and validate"):
        batch = next(itertools.islice(_chunks(found, plan, max_bytes), j, None))
    console.print(f"checking chunk {j + 1} again for the HTML report")
    run = check(batch, each, console, False, first_index=sum(plan[:j]), order=fit)
    return draw(run, j)


__all__ = ["RECORDS_PER_CHUNK", "Chunking", "Draw", "SetRun", "check_set", "in_table_order", "merged",
           "state_dir"]

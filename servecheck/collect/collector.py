"""Collect responses: expand the prompts matrix, skip what is answered, ask the target, append.

Every record is on disk the moment it exists (``ResponseWriter``), so Ctrl-C or a dead server
loses at most the requests in flight, and the same command run again picks up where it stopped.
A failed request becomes a record with ``error`` set: it is reported, and retried on the next run.
So does an answer that breaks the interface (a field a target cannot parse, a record that does
not validate): one bad answer is one error record, never the end of the run.
Within a run, only a transient failure (refused connection, HTTP 429/503, gRPC UNAVAILABLE) is
retried, with exponential backoff and jitter, honouring a server's Retry-After; a 4xx or an error
frame is final at once, since the same request would fail the same way.

``reference`` (``generate --reference``) is the checkpoint a target templates with or takes end
markers from; it is handed to the target and to nothing else. What a target must tell the user
about its records (``Target.notes``: an end marker it could not restore) comes back once in the
summary, for the command to print once, not once a request.

A run holds ``OutputLock`` on its ``--out`` from before it reads the records there until after
compaction, so a second run on the same file is refused rather than appending to a file the
first is about to replace. When the file cannot be written (a full or read-only disk), the run
stops sending at once: answers that cannot be kept are requests wasted, and a server's time.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import random
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servecheck.collect.progress import RequestRateColumn, bar
from servecheck.collect.targets import Target, open_target, refuse_unsupported
from servecheck.errors import InputError, TargetError, redact
from servecheck.formats.limits import MAX_REQUESTS
from servecheck.formats.output_lock import OutputLock
from servecheck.formats.prompts import Request, expand
from servecheck.formats.records import ResponseRecord
from servecheck.formats.responses import ResponseWriter, WriteFailed, compact, read_records


@dataclass
class CollectSummary:
    planned: int
    skipped: int
    written: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)
    interrupted: bool = False
    retried: int = 0
    notes: list[str] = field(default_factory=list)
    """The target's ``notes()``: what the user must know about how these records were made."""
    gone: str | None = None
    """Set when the server was plainly unreachable: the circuit breaker's reason, and the run
    stopped there (what was answered is kept; the same command resumes)."""
    unreachable: int = 0
    """Failed requests that found the server unreachable (``TargetError.gone``)."""
    compacted: int = 0
    """Superseded error records dropped when the finished file was rewritten."""

    def error_groups(self) -> list[tuple[str, int, str]]:
        """(message, count, first id), most frequent first: one line per distinct failure."""
        counts = Counter(message for _, message in self.errors)
        first = {}
        for rid, message in self.errors:
            first.setdefault(message, rid)
        return [(m, n, first[m]) for m, n in counts.most_common()]


BACKOFF_S = 0.5
MAX_WAIT_S = 30.0
BREAKER_AFTER = 5
"""Requests in a row that found the server unreachable, after their retries, before the run
stops: one dead server once cost 979 requests × 3 retries, five minutes for nothing."""


async def ask(target: Target, request: Request, retries: int, summary: CollectSummary
              ) -> ResponseRecord | list[ResponseRecord]:
    """``target.generate`` with retries of transient failures only."""
    delay = BACKOFF_S
    for attempt in range(retries + 1):
        try:
            return await target.generate(request)
        except TargetError as e:
            if not e.transient or attempt == retries:
                raise
            summary.retried += 1
            wait = e.retry_after if e.retry_after is not None else delay * random.uniform(0.5, 1.0)
            await asyncio.sleep(min(wait, MAX_WAIT_S))
            delay *= 2
    raise AssertionError("unreachable")


def _error_record(request: Request, target: Target, message: str) -> ResponseRecord:
    return ResponseRecord(id=request.id, conversations=request.conversation,
                          parameters=request.parameters, target=target.spec,
                          error=redact(message))


def _broken_answer(e: Exception, target: Target) -> str:
    """The error of a record whose answer could not be made into a record, on one line."""
    said = " ".join(str(e).split())
    return redact(f"the server's answer broke the interface: {type(e).__name__}: "
                  f"{said[:300]}{'…' if len(said) > 300 else ''}",
                  target.secrets)


FLUSH_EVERY_S = 0.05
"""Records that arrive in a burst are flushed together, at most this long after the first."""


async def _collect(todo: list[Request], target: Target, writer: ResponseWriter,
                   summary: CollectSummary, advance: Callable[[], None], retries: int) -> None:
    pending = iter(todo)  # shared by the workers: each request is taken exactly once
    loop = asyncio.get_running_loop()
    flush_timer: list[asyncio.TimerHandle] = []

    failed: list[WriteFailed] = []  # set: nothing more can be kept, so nothing more is sent

    def flush() -> None:
        flush_timer.clear()
        try:
            writer.flush()
        except WriteFailed as e:
            failed.append(e)

    unreachable_in_a_row = 0

    async def worker() -> None:
        nonlocal unreachable_in_a_row
        for request in pending:
            if summary.gone or failed:
                return
            try:
                answer = await ask(target, request, retries, summary)
                unreachable_in_a_row = 0
            except TargetError as e:
                answer = _error_record(request, target, str(e))
                summary.errors.append((request.id, str(e)))
                unreachable_in_a_row = unreachable_in_a_row + 1 if e.gone else 0
                summary.unreachable += e.gone
                if unreachable_in_a_row >= BREAKER_AFTER and not summary.gone:
                    summary.gone = (f"{unreachable_in_a_row} requests in a row found the server "
                                    f"unreachable ({str(e)[:300]})")
            except InputError:
                raise  # the user's input, not this answer: the run cannot go on
            except Exception as e:  # not BaseException: Ctrl-C and cancellation still stop it
                message = _broken_answer(e, target)
                answer = _error_record(request, target, message)
                summary.errors.append((request.id, message))
                unreachable_in_a_row = 0
            if failed:
                return
            try:
                for record in answer if isinstance(answer, list) else [answer]:
                    writer.write(record, flush=False)
            except WriteFailed as e:
                failed.append(e)
                return
            if not flush_timer:
                flush_timer.append(loop.call_later(FLUSH_EVERY_S, flush))
            summary.written += 1
            advance()

    try:
        await asyncio.gather(*(worker() for _ in range(max(1, target.max_concurrency))))
    finally:
        for timer in flush_timer:
            timer.cancel()
        try:
            writer.flush()
        except WriteFailed as e:
            failed.append(e)
        await target.aclose()
    if failed:
        raise failed[0]


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (Linux): it roughly doubles what one core can send per second."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def collect(prompts: Path, target_spec: str, out: Path, show_progress: bool = True,
            retries: int = 3, reference: str | None = None, max_requests: int = MAX_REQUESTS
            ) -> CollectSummary:
    """Run the whole matrix against a target into ``out``; resumable, see the module docstring.
    ``reference``: the checkpoint the user named for the target (None: none; never a default);
    ``max_requests``: the largest matrix expanded (``generate --max-requests``)."""
    requests = expand(prompts, max_requests)
    with _locked(out):  # before the target opens: a second writer is refused at once
        target = open_target(target_spec, reference=reference)  # a bad spec is named even
        try:                                                    # with nothing left to ask
            return _collect_into(requests, target, out, show_progress, retries)
        finally:
            target.close()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """``out``'s ``OutputLock`` for the whole run; a lock file that cannot be made (a read-only
    directory) is the write failure it is, said before anything is sent."""
    lock = OutputLock(out)
    try:
        lock.acquire()
    except OSError as e:
        raise InputError(f"cannot write ({e.strerror or e}): nothing was sent; "
                         f"{_cure(e.errno)} and run the same command", where=str(out)) from None
    try:
        yield
    finally:
        lock.release()


def _cure(code: int | None) -> str:
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "free space"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "make it writable (or name another --out)"
    return "fix that"


def _collect_into(requests: list[Request], target: Target, out: Path, show_progress: bool,
                  retries: int) -> CollectSummary:
    existing = read_records(out) if out.exists() and out.stat().st_size else []
    _same_target(existing, target.spec, out)
    done = {r.id for r in existing if r.id and r.error is None}
    todo = [r for r in requests if r.id not in done]
    refuse_unsupported(todo, target)
    summary = CollectSummary(planned=len(requests), skipped=len(requests) - len(todo))
    summary.notes = target.notes()
    if not todo:
        summary.compacted = compact(out)
        return summary
    try:
        with ResponseWriter(out) as writer, \
                bar("generate", len(todo), RequestRateColumn(), enabled=show_progress) as advance:
            run_loop(_collect(todo, target, writer, summary, advance, retries))
    except KeyboardInterrupt:
        summary.interrupted = True
        return summary
    except WriteFailed as e:
        raise InputError(f"cannot write ({e.reason}): stopped sending; the {e.kept} record(s) "
                         f"written before it are kept; {_cure(e.error.errno)} and run the same "
                         f"command to resume", where=str(out)) from None
    summary.notes = target.notes()  # again: some are known only once the server answered
    if summary.errors and not summary.gone and summary.unreachable == summary.written:
        summary.gone = f"every request found the server unreachable ({summary.errors[0][1][:300]})"
    if not summary.gone:
        summary.compacted = compact(out)
    return summary


def _same_target(existing: list[ResponseRecord], spec: str, out: Path) -> None:
    """A rerun appends to a file; records of another server in it would be checked as if this
    one had answered them. So the target must be the one the file's records name."""
    others = sorted({r.target for r in existing if r.target and r.target != spec})
    if others:
        raise InputError(f"holds records from another target ({', '.join(others[:3])}); this run "
                         f"asks {spec}. Name another --out for this target, or remove the file "
                         f"to start over", where=str(out))

"""The one error type a user sees: bad input, named with where it is.

Anything raised as ``InputError`` reaches the command line as a single message and exit code 2,
with no traceback; everything else is a bug in servecheck and keeps its traceback. Every exit
code is listed once, under ``EXIT_PASS`` … ``EXIT_INTERRUPTED`` below.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__version__ = "0.1.0"
"""servecheck's version (the package root re-exports it). It lives here, in the one module of
the lowest stage, so a module that needs it (``workflows.chunked`` keys saved verdicts by it)
reads it without importing the package root, which imports every stage."""

REDACTED = "[redacted]"
_TOKEN_SHAPES = re.compile(
    r"(?P<bearer>Bearer\s+)\S+"  # an Authorization value
    r"|\bsk-[A-Za-z0-9_\-]{8,}"   # OpenAI-style keys
    r"|\bhf_[A-Za-z0-9]{8,}",     # Hugging Face tokens
    re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret and every token-shaped string replaced.

    A server that rejects a key often quotes it back ("Incorrect API key provided: sk-…"). Its
    message becomes a record's ``error``, and from there reaches the console, the JSON summary,
    JUnit and the report. So it is cut out where the message first enters servecheck: every
    ``TargetError`` is redacted when it is made. ``secrets`` are the values known to be secret
    (the key read from the environment). A value under 4 characters is skipped, since it would
    blank ordinary words."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, REDACTED)
    return _TOKEN_SHAPES.sub(lambda m: (m.group("bearer") or "") + REDACTED, text)


class InputError(Exception):
    """Bad input from the user: a file, a field, a target, a reference path."""

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class TargetError(Exception):
    """A target failed on one request (server down, timeout, error frame); the run goes on.

    ``transient`` marks what a retry may cure (connection refused or reset, a name that does
    not resolve, HTTP 429 or 503, gRPC UNAVAILABLE or RESOURCE_EXHAUSTED); ``retry_after`` is
    the server's own hint in seconds, when it gave one. A 4xx or an error frame is never
    transient: the same request would fail the same way.
    """

    def __init__(self, message: str, *, transient: bool = False, gone: bool = False,
                 retry_after: float | None = None, secrets: Iterable[str] = ()) -> None:
        self.transient = transient or gone
        self.gone = gone
        """The server could not be reached at all (refused, reset, a name that does not
        resolve, gRPC UNAVAILABLE): what the collector's circuit breaker counts."""
        self.retry_after = retry_after
        super().__init__(redact(message, secrets))

    def redacted(self, secrets: Iterable[str]) -> TargetError:
        """This error, its message cleared of ``secrets`` too (the target's own, known only
        where it was opened): what ``Target.generate`` does to every error that leaves it."""
        self.args = (redact(str(self), secrets),)
        return self


EXIT_PASS, EXIT_FAIL, EXIT_INPUT, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
"""The exit codes of every command, listed here once (``cli.EXIT_CODES`` shows them in each
command's ``--help``; other docstrings point here):

- 0 ``EXIT_PASS``: every check passed (or the command did its job);
- 1 ``EXIT_FAIL``: a check or probe failed (``compare``: a served output is not plausible),
  or a request failed (``generate``: it is in the file with ``error`` set, and a rerun retries
  it);
- 2 ``EXIT_INPUT``: bad input or an error, an ``InputError``: one line naming the file, record
  and field, no traceback;
- 3 ``EXIT_INCONCLUSIVE``: inconclusive, a check had too few records to decide (``check``;
  ``--inconclusive-ok`` makes it 0);
- 130 ``EXIT_INTERRUPTED``: interrupted (what was collected is on disk; the same command
  resumes)."""

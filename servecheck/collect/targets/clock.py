"""A request's ``Timing``, measured one way by every target.

Each target used to take the wall-clock start and a ``perf_counter`` by hand; one place means
every record's ``started_at`` has the same form (UTC, milliseconds) and its ``latency_s`` the
same clock and rounding, whichever target wrote it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

from servecheck.formats.records import Timing


@dataclass(frozen=True)
class Stopwatch:
    """Started when made (``Stopwatch()``); ``timing()`` is the time since, as a record's."""

    started_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(
        timespec="milliseconds"))
    t0: float = field(default_factory=time.perf_counter)

    def timing(self, share: int = 1) -> Timing:
        """The ``Timing`` up to now; ``share``: the requests answered together (a batch), each
        given its share of the latency."""
        return Timing(started_at=self.started_at,
                      latency_s=round((time.perf_counter() - self.t0) / share, 4))

"""What the token search reads of the check's context, and what it hands back.

Declared apart from the search so that neither the search nor the context imports the other's
module for its types: the context hands itself to ``TokenSearch`` as a ``SearchContext`` and
puts each ``Searched`` record's tokens and scores in its own caches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from servecheck.reference.token_scores import ScoreItem, TokenScores
from servecheck.reference.tokenization import PromptSource, TokenBytes, TokenSource

if TYPE_CHECKING:
    from servecheck.checks.core.options import CheckOptions, Numerics
    from servecheck.formats.records import ResponseRecord
    from servecheck.reference.model import Reference
    from servecheck.reference.sampling import Convention, Sampling


def departures(chosen: list[int], canonical: list[int], tb: TokenBytes,
               hidden: frozenset[int] = frozenset()) -> tuple[int, ...]:
    """Positions in ``chosen`` whose token is not the canonical token at the same byte offset;
    a ``hidden`` token (one the detokenizer skipped) departs and spells nothing."""
    at = {}
    offset = 0
    for t in canonical:
        at[offset] = t
        offset += len(tb(t))
    out, offset = [], 0
    for k, t in enumerate(chosen):
        if at.get(offset) != t:
            out.append(k)
        offset += 0 if t in hidden and at.get(offset) != t else len(tb(t))
    return tuple(out)


@dataclass(frozen=True)
class Searched:
    """A record's tokenization as the search left it, where it is not the canonical one."""

    ids: list[int]
    scores: TokenScores
    departures: tuple[int, ...]
    """The output token positions where ``ids`` depart from the canonical tokenization."""


class SearchContext(Protocol):
    """What the search reads of the check's context: ``checks.core.context.CheckContext`` is
    one, hands itself to ``TokenSearch`` and applies what ``run`` returns."""

    records: list[ResponseRecord]
    ref: Reference
    options: CheckOptions
    tolerances: Numerics
    sampling: list[Sampling]
    undecided: list[Convention]
    lost_at: dict[int, int]

    @property
    def token_bytes(self) -> TokenBytes: ...
    def scorer(self, ref: Reference, items: list[ScoreItem], convention: Convention
               ) -> list[TokenScores]: ...
    def score_items(self, items: list[ScoreItem]) -> list[TokenScores]: ...
    def item(self, i: int) -> ScoreItem: ...
    def output_ids(self, i: int) -> tuple[list[int], TokenSource]: ...
    def scores(self, indices: list[int], search: bool = True) -> dict[int, TokenScores]: ...
    def prompt_ids(self, i: int) -> tuple[list[int], PromptSource]: ...
    def served_count(self, i: int) -> int | None: ...
    def seed(self, i: int) -> int: ...

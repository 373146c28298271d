"""Checks: each takes the records and the reference and returns one verdict with its evidence.

``CheckContext`` holds what several checks share and is costly to make (reference prompts,
token ids, teacher-forced scores), computed once and only when a check asks for it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from servecheck.latent import TokenSearch
from servecheck.records import ResponseRecord
from servecheck.reference import Reference
from servecheck.sampling import HF, Convention, Sampling
from servecheck.scoring import ScoreItem, TokenScores, score
from servecheck.tokenization import CANONICAL, LOST, SERVER_IDS, TokenBytes

Verdict = Literal["pass", "fail", "skipped"]

@dataclass(frozen=True)
class Numerics:
    """Tolerances set by the server's numerics, for the deterministic checks.

    ``logit``: a non-argmax greedy token (or a token just outside top_k) whose logit is within
    this of the boundary is a numerical near-tie, not a bug. ``mass``: the same for the top_p and
    min_p boundaries, in probability. ``logprob``: mean |served - reference| log-prob allowed.
    Measured on the built-in model, bf16 against the fp32 reference: differences of logit gaps
    among the top 10 tokens p99 0.08, max 0.20; L1 distance of the distributions p99 0.032, max
    0.052; the top_p boundary, at temperature 0.7, moved by up to 0.045 in 400 benchmark runs.
    The bf16 values sit above those maxima; deeper models drift more, so pick the row of
    the server's numerics, or set your own with ``--logit-tolerance``.
    """

    name: str
    logit: float
    mass: float
    logprob: float


NUMERICS = {n.name: n for n in [Numerics("fp32", 0.01, 1e-3, 0.01),
                                Numerics("fp16", 0.1, 0.02, 0.05),
                                Numerics("bf16", 0.25, 0.06, 0.1),
                                Numerics("fp8", 0.5, 0.15, 0.3)]}


@dataclass
class Finding:
    record: str
    message: str
    severity: float = 0.0
    """Bigger is worse; findings are listed worst first."""


@dataclass
class CheckResult:
    name: str
    verdict: Verdict
    summary: str
    details: dict[str, Any] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)

    def worst_first(self) -> list[Finding]:
        return sorted(self.findings, key=lambda f: -f.severity)


def label(record: ResponseRecord, index: int) -> str:
    return record.id or f"#{index}"


class CheckContext:
    def __init__(self, records: list[ResponseRecord], ref: Reference, numerics: str = "bf16",
                 convention: Convention = HF, alpha: float = 0.01, search_tokens: bool = True,
                 token_choice: Literal["posterior", "max"] = "posterior") -> None:
        self.all_records = records
        self.records = [r for r in records if r.error is None]
        self.labels = [label(r, i) for i, r in enumerate(records) if r.error is None]
        self.ref = ref
        self.numerics = NUMERICS[numerics]
        self.convention = convention
        self.alpha = alpha
        self.search_tokens = search_tokens
        """Text-only records scored on their most plausible tokenization (else canonical: the
        scoring benchmark's baseline)."""
        self.token_choice = token_choice
        """How a sampled record's tokenization is chosen: a posterior draw (calibrated), or the
        most likely one (biased towards "too cold"; kept to measure that bias)."""
        self._scores: dict[int, TokenScores] = {}
        self.score_fn: Callable[..., list[TokenScores]] = score
        """``score``, or ``parallel.score_data_parallel`` under torchrun (every rank calls it
        with the same items in the same order, so the collective lines up)."""
        self._prompt_ids: dict[int, tuple[list[int], str]] = {}
        self._output_ids: dict[int, tuple[list[int], str]] = {}
        self.lost_at: dict[int, int] = {}
        """Per text-only record holding U+FFFD: the character where the server's bytes were lost
        (a token that was no whole UTF-8 character, replaced when the text was decoded). Its
        tokens are scored up to there: what follows was conditioned on bytes nobody recorded."""
        self.departures: dict[int, tuple[int, ...]] = {}
        """Per text-only record whose tokenization was searched: the output token positions
        where the chosen tokens depart from the canonical tokenization."""

    @cached_property
    def expected_prompts(self) -> list[str | Exception]:
        """The reference rendering of each record's conversation (or why it cannot be rendered)."""
        out: list[str | Exception] = []
        for r in self.records:
            try:
                out.append(self.ref.render(r.conversations))
            except Exception as e:
                out.append(e)
        return out

    def prompt_ids(self, i: int) -> tuple[list[int], str]:
        """What the server conditioned on: its reported ids, else its input text, tokenized."""
        if i not in self._prompt_ids:
            self._prompt_ids[i] = self._find_prompt_ids(i)
        return self._prompt_ids[i]

    def _find_prompt_ids(self, i: int) -> tuple[list[int], str]:
        r = self.records[i]
        if r.prompt_token_ids:
            return r.prompt_token_ids, "server prompt token ids"
        if r.input:
            return self.ref.encode(r.input), "served input text"
        expected = self.expected_prompts[i]
        if isinstance(expected, Exception):
            return [], "none"
        return self.ref.encode(expected), "reference template"

    def output_ids(self, i: int) -> tuple[list[int], str]:
        """The served output tokens up to and including the first end marker."""
        if i not in self._output_ids:
            self._output_ids[i] = self._find_output_ids(i)
        return self._output_ids[i]

    def _find_output_ids(self, i: int) -> tuple[list[int], str]:
        r = self.records[i]
        ends = set(self.ref.end_ids)
        if r.output_token_ids is not None:
            ids, source = list(r.output_token_ids), SERVER_IDS
        else:
            text = r.output
            lost = text.find(LOST)
            if lost >= 0:  # the server's bytes there are unknown: score what comes before
                self.lost_at[i] = lost
                text = text[:lost]
            ids, source = self.ref.encode(text), CANONICAL
        for k, t in enumerate(ids):
            if t in ends:
                return ids[: k + 1], source
        return ids, source

    def scores(self, indices: list[int], search: bool = True) -> dict[int, TokenScores]:
        """Teacher-forced scores for the records at ``indices`` (cached across checks); with
        ``search``, text-only ones end on their most plausible tokenization."""
        cache = self._scores
        missing = [i for i in indices if i not in cache]
        if missing:
            items = [self._item(i) for i in missing]
            for i, s in zip(missing, self.score_fn(self.ref, items, self.convention), strict=True):
                cache[i] = s
            if search and self.search_tokens:
                self._search_tokens([i for i in missing if self.output_ids(i)[1] == CANONICAL])
        return {i: cache[i] for i in indices}

    @cached_property
    def token_bytes(self) -> TokenBytes:
        return TokenBytes(self.ref.tokenizer)

    def _search_tokens(self, idx: list[int]) -> None:
        """Text-only records: the canonical tokens replaced by the most plausible tokenization
        (``servecheck.latent``), rescoring only the records with a proposal."""
        self.departures.update(TokenSearch(self).run(idx))

    def prefetch(self, advance: Callable[[int], None] | None = None,
                 chunk_tokens: int = 32768) -> None:
        """Score every record now, in length-sorted chunks, calling ``advance(records)`` after
        each chunk: the one slow step of ``check`` gets a progress bar, and the checks that
        follow read the cache. The tokenization search runs once over all chunks, so each of
        its rounds is one batch however many chunks there are."""
        todo = sorted((i for i in range(len(self.records)) if i not in self._scores),
                      key=lambda i: -(len(self.prompt_ids(i)[0]) + len(self.output_ids(i)[0])))
        chunk: list[int] = []
        size = 0
        for i in todo:
            chunk.append(i)
            size += len(self.prompt_ids(i)[0]) + len(self.output_ids(i)[0])
            if size >= chunk_tokens:
                self.scores(chunk, search=False)
                if advance:
                    advance(len(chunk))
                chunk, size = [], 0
        if chunk:
            self.scores(chunk, search=False)
            if advance:
                advance(len(chunk))
        if self.search_tokens:
            self._search_tokens([i for i in todo if self.output_ids(i)[1] == CANONICAL])

    def describe_tokens(self, i: int) -> str:
        """The record's token source, for people: with where a non-canonical split was chosen."""
        source = self.output_ids(i)[1]
        at = self.departures.get(i)
        if at:
            source += f" (non-canonical at output token(s) {', '.join(map(str, at))})"
        if i in self.lost_at:
            source += (f"; scored up to character {self.lost_at[i]}, where the text has U+FFFD "
                       f"for bytes the server's detokenizer lost")
        return source

    def token_sources(self) -> dict[str, Any]:
        """Per record, which tokens were scored: the JSON summary's ``tokens`` section."""
        counts: dict[str, int] = {}
        for i in range(len(self.records)):
            counts[self.output_ids(i)[1]] = counts.get(self.output_ids(i)[1], 0) + 1
        return {"sources": counts, "records": [
            {"record": self.labels[i], "source": self.output_ids(i)[1],
             **({"non_canonical_at": list(self.departures[i])} if i in self.departures else {}),
             **({"scored_up_to_char": self.lost_at[i]} if i in self.lost_at else {})}
            for i in range(len(self.records))]}

    def seed(self, i: int) -> int:
        """The seed of record i's PIT uniforms and tokenization draws: from its label, stable."""
        return int.from_bytes(hashlib.sha256(self.labels[i].encode()).digest()[:4], "little")

    def _item(self, i: int) -> ScoreItem:
        return ScoreItem(self.prompt_ids(i)[0], self.output_ids(i)[0],
                         Sampling.of(self.records[i].parameters), self.seed(i))

    def sampled(self) -> list[int]:
        return [i for i, r in enumerate(self.records) if not Sampling.of(r.parameters).greedy]


def run_checks(ctx: CheckContext) -> list[CheckResult]:
    from servecheck.checks.detokenization import check_detokenization
    from servecheck.checks.distribution import check_distribution
    from servecheck.checks.greedy import check_greedy
    from servecheck.checks.logprobs import check_logprobs
    from servecheck.checks.records import check_records
    from servecheck.checks.seeds import check_seeds
    from servecheck.checks.support import check_support
    from servecheck.checks.template import check_template
    from servecheck.checks.termination import check_termination

    return [check_records(ctx), check_template(ctx), check_termination(ctx),
            check_detokenization(ctx), check_greedy(ctx),
            check_support(ctx), *check_distribution(ctx), check_logprobs(ctx), check_seeds(ctx)]

"""What the checks of a run share and is costly to make: reference prompts, token ids and
teacher-forced scores, each computed once and only when a check asks for it.

Every score a check needs goes through ``CheckContext.scores`` (or ``score_items`` for tokens
that are no record's, such as a prompt rescored under a hypothesis): the one scoring seam. It
batches, caches across checks, and calls the run's scorer, which under torchrun is the
data-parallel one, so every rank makes the same calls in the same order and shares the work.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, Protocol

from servecheck.checks.core.admission import check_ids, check_lengths, render_prompts
from servecheck.checks.core.end_counting import EndCounting, find_end_counting
from servecheck.checks.core.options import CheckOptions, Numerics
from servecheck.checks.core.record_markup import RecordMarkup
from servecheck.checks.core.registry import alpha_share
from servecheck.checks.core.structured import Structured, judged
from servecheck.checks.core.token_search import TokenSearch
from servecheck.errors import InputError
from servecheck.formats.records import ResponseRecord
from servecheck.reference.model import Reference
from servecheck.reference.sampling import HF, Convention, Sampling
from servecheck.reference.scoring import score
from servecheck.reference.token_scores import ScoreItem, TokenScores
from servecheck.reference.tokenization import LOST, PromptSource, TokenBytes, TokenSource


class Scorer(Protocol):
    """``reference.scoring.score``, or ``reference.parallel.score_data_parallel`` under torchrun."""

    def __call__(self, ref: Reference, items: Sequence[ScoreItem], convention: Convention
                 ) -> list[TokenScores]: ...


def _as_scored(r: ResponseRecord) -> ResponseRecord:
    """A record decoded under a grammar without its served log-probs: engines give them masked
    (vLLM) or raw (HF's ``generate``), so they say nothing of the model a check could rely on."""
    if not r.parameters.constrained or r.output_logprobs is None:
        return r
    return r.model_copy(update={"output_logprobs": None})


def label(record: ResponseRecord, index: int) -> str:
    """How findings name a record: its id, else its position in the file."""
    return record.id or f"#{index}"


class CheckContext:
    def __init__(self, records: list[ResponseRecord], ref: Reference,
                 options: CheckOptions | None = None, scorer: Scorer = score,
                 first_index: int = 0) -> None:
        self.first_index = first_index
        """Where these records start in the responses set (a chunk of a larger one): records
        without an id are named by their position in the set."""
        self.options = options or CheckOptions(reference=ref.spec)
        self.tolerances: Numerics = self.options.tolerances
        self.all_records = records
        checked = [(_as_scored(r), label(r, first_index + i)) for i, r in enumerate(records)
                   if r.error is None and judged(r)]
        self.records = [r for r, _ in checked]
        """The answered records the checks judge; one decoded under a grammar is scored under
        its masks (``structured``)."""
        self.labels = [name for _, name in checked]
        self.constrained = sum(r.error is None and not judged(r) for r in records)
        """Forced tool calls whose raw text the collector rebuilt from the parsed calls: not
        what the engine decoded under its grammar, so counted here, not judged."""
        self.sampling = [Sampling.of(r.parameters) for r in self.records]
        """Each answered record's sampling transform, defaults filled in as a server would."""
        self.ref = ref
        self.convention: Convention = self.options.convention or HF
        """The sampling convention every score is made under; where the options leave it
        unset, ``use_convention`` sets the one the records show (``checks.core.conventions``)
        before anything is scored."""
        self.undecided: list[Convention] = []
        """Other orders the records could not rule out (``ConventionFit.undecided``), put with
        the convention: a token one of them holds is no support violation."""
        check_ids(self.records, self.labels, ref)
        check_lengths(self.records, self.labels, ref)
        self.expected_prompts = render_prompts(self.records, self.labels, ref)
        """The reference rendering of each record's conversation (a refusal is bad input)."""
        self.ref.encode_many([*self.expected_prompts, *(r.input for r in self.records if r.input),
                              *(r.output for r in self.records if r.output_token_ids is None)])
        self.scorer = scorer
        self._scores: dict[int, TokenScores] = {}
        self._prompt_ids: dict[int, tuple[list[int], PromptSource]] = {}
        self._output_ids: dict[int, tuple[list[int], TokenSource]] = {}
        self.lost_at: dict[int, int] = {}
        """Per text-only record holding U+FFFD: the character where the server's bytes were lost
        (a token that was no whole UTF-8 character, replaced when the text was decoded). Its
        tokens are scored up to there: what follows was conditioned on bytes nobody recorded."""
        self._derived: dict[str, Any] = {}
        self.left_out: dict[int, list[str]] = {}
        """Records a screening check failed (``checks.screen``), with the checks that failed
        them: the statistical checks leave them out."""
        self.departures: dict[int, tuple[int, ...]] = {}
        """Per text-only record whose tokenization was searched: the output token positions
        where the chosen tokens depart from the canonical tokenization."""

    def check_alpha(self, name: str) -> float:
        """Check ``name``'s family-wise rate: its declared share of the run's α."""
        return self.options.alpha * alpha_share(name)

    def use_convention(self, convention: Convention, undecided: list[Convention],
                       scored: dict[int, TokenScores]) -> None:
        """Score under ``convention`` (found from the records, ``checks.core.conventions``),
        with the orders the records could not rule out, keeping the records ``scored`` under it
        while it was found; only before anything else is scored."""
        if self._scores:
            raise RuntimeError("the sampling convention is set before any record is scored")
        self.convention, self.undecided = convention, list(undecided)
        self._scores.update(scored)

    def once(self, key: str, make: Callable[[], Any]) -> Any:
        """A fact about the records that several checks need (the seed tests), made once per
        run by whichever asks first."""
        if key not in self._derived:
            self._derived[key] = make()
        return self._derived[key]

    @cached_property
    def outputs(self) -> RecordMarkup:
        """The tool calls and thinking in each output, parsed once (``record_markup``)."""
        return RecordMarkup(self.ref, self.records, self.expected_prompts)

    @cached_property
    def end_counting(self) -> EndCounting:
        """Whether the server counts the end token in usage and gives it a log-prob
        (``checks.core.end_counting``), found from the records."""
        return find_end_counting(self.records, self.ref)

    def served_count(self, i: int) -> int | None:
        """How many of record i's scored output tokens its served log-probs stand for: their
        number, plus the end token where the server gives it none."""
        served = self.records[i].output_logprobs
        if not served:
            return None
        return len(served) + (not self.end_counting.logprob_for_end and self.ends_on_end_token(i))

    def ends_on_end_token(self, i: int) -> bool:
        """Whether record i's scored output ends on an end token (it finished)."""
        ids = self.output_ids(i)[0]
        return bool(ids) and ids[-1] in set(self.ref.end_ids)

    def prompt_ids(self, i: int) -> tuple[list[int], PromptSource]:
        """What the server conditioned on: its reported ids, else its input text, tokenized."""
        return self._prompt_ids.get(i) or self._prompt_ids.setdefault(i, self._find_prompt_ids(i))

    def _find_prompt_ids(self, i: int) -> tuple[list[int], PromptSource]:
        r = self.records[i]
        if r.prompt_token_ids:
            return r.prompt_token_ids, PromptSource.SERVER_IDS
        if r.input:
            return self.ref.encode(r.input), PromptSource.INPUT_TEXT
        return self.ref.encode(self.expected_prompts[i]), PromptSource.TEMPLATE

    def output_ids(self, i: int) -> tuple[list[int], TokenSource]:
        """The served output tokens up to and including the first end marker."""
        return self._output_ids.get(i) or self._output_ids.setdefault(i, self._find_output_ids(i))

    def _find_output_ids(self, i: int) -> tuple[list[int], TokenSource]:
        r = self.records[i]
        ends = set(self.ref.end_ids)
        if r.output_token_ids is not None:
            ids, source = list(r.output_token_ids), TokenSource.SERVER_IDS
        else:
            text = r.output
            lost = text.find(LOST)
            if lost >= 0:  # the server's bytes there are unknown: score what comes before
                self.lost_at[i] = lost
                text = text[:lost]
            ids, source = self.ref.encode(text), TokenSource.CANONICAL
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
            for i, s in zip(missing, self.score_items([self.item(i) for i in missing]),
                            strict=True):
                cache[i] = s
            if search and self.options.search_tokens:
                self._search_tokens([i for i in missing if self._searchable(i)])
        return {i: cache[i] for i in indices}

    def score_items(self, items: list[ScoreItem]) -> list[TokenScores]:
        """Score tokens that are no record's own (a prompt under a hypothesis, a proposed
        tokenization): one batch through the run's scorer, uncached."""
        return self.scorer(self.ref, items, self.convention) if items else []

    def _searchable(self, i: int) -> bool:
        """A text-only record whose tokenization may be searched: not one decoded under a
        grammar, which the statistics leave out (``Structured.text_only``)."""
        return self.output_ids(i)[1] is TokenSource.CANONICAL and \
            not self.records[i].parameters.constrained

    def is_text_only(self, i: int) -> bool:
        return self.output_ids(i)[1] is not TokenSource.SERVER_IDS

    @cached_property
    def token_bytes(self) -> TokenBytes:
        return TokenBytes(self.ref.tokenizer)

    def _search_tokens(self, idx: list[int]) -> None:
        """Text-only records: the canonical tokens replaced by the most plausible tokenization
        (``checks.core.token_search``), rescoring only the records with a proposal."""
        for i, found in TokenSearch(self).run(idx).items():
            self._output_ids[i] = (found.ids, TokenSource.SEARCHED)
            self._scores[i] = found.scores
            self.departures[i] = found.departures

    def prefetch(self, advance: Callable[..., None] | None = None,
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
                    advance(len(chunk), tokens=size)
                chunk, size = [], 0
        if chunk:
            self.scores(chunk, search=False)
            if advance:
                advance(len(chunk), tokens=size)
        if self.options.search_tokens:
            self._search_tokens([i for i in todo if self._searchable(i)])

    def total_tokens(self) -> int:
        """Prompt and output tokens of every checked record: the teacher-forcing work."""
        return sum(len(self.prompt_ids(i)[0]) + len(self.output_ids(i)[0])
                   for i in range(len(self.records)))

    def describe_tokens(self, i: int) -> str:
        """The record's token source, for people: with where a non-canonical split was chosen."""
        source = self.output_ids(i)[1].value
        at = self.departures.get(i)
        if at:
            source += f" (non-canonical at output token(s) {', '.join(map(str, at))})"
        if i in self.lost_at:
            source += (f"; scored up to character {self.lost_at[i]}, where the text has U+FFFD "
                       f"for bytes the server's detokenizer lost")
        return source

    def source_counts(self) -> dict[str, int]:
        """How many records were scored on each token source."""
        counts: dict[str, int] = {}
        for i in range(len(self.records)):
            source = self.output_ids(i)[1].value
            counts[source] = counts.get(source, 0) + 1
        return counts

    def token_sources(self) -> dict[str, Any]:
        """Per record, which tokens were scored: the JSON summary's ``tokens`` section."""
        return {"sources": self.source_counts(), "records": [
            {"record": self.labels[i], "source": self.output_ids(i)[1].value,
             **({"non_canonical_at": list(self.departures[i])} if i in self.departures else {}),
             **({"scored_up_to_char": self.lost_at[i]} if i in self.lost_at else {})}
            for i in range(len(self.records))]}

    def seed(self, i: int) -> int:
        """The seed of record i's PIT uniforms and tokenization draws: from its label, stable."""
        return int.from_bytes(hashlib.sha256(self.labels[i].encode()).digest()[:4], "little")

    def item(self, i: int, spelling: list[int] | None = None) -> ScoreItem:
        """What the scorer gets for record i: its prompt and output tokens (or ``spelling``,
        another tokenization of its text), its sampling, its seed and, under a grammar, its
        masks (some checks score it again under another order or penalty)."""
        prompt = self.prompt_ids(i)[0]
        output = self.output_ids(i)[0] if spelling is None else spelling
        limit = self.ref.context_length
        if limit and len(prompt) + len(output) > limit:  # memory and meaning both end here
            raise InputError(f"prompt and output are {len(prompt)} + {len(output)} tokens, beyond "
                             f"the reference's context of {limit}: a record of another model, or "
                             f"a server that ran past its context",
                             where=self.records[i].named(self.labels[i]))
        allowed, watch = self.structured.masks(i, spelling)
        return ScoreItem(prompt, output, self.sampling[i], self.seed(i), allowed, watch)

    @cached_property
    def structured(self) -> Structured:
        """The records decoded under a grammar: their grammars, where each begins, their masks."""
        me = weakref.ref(self)  # not ``self``: a context in a cycle outlives its chunk (heap.py)
        return Structured(self.ref, self.records, lambda i: me().output_ids(i)[0], self.outputs)

    def leave_out(self, reasons: dict[str, list[str]]) -> None:
        """Leave the records named in ``reasons`` (label → the checks they failed) out of the
        statistical checks."""
        for i, name in enumerate(self.labels):
            if name in reasons:
                self.left_out[i] = reasons[name]

    def kept(self) -> list[int]:
        """Records the statistical checks use: every answered one not left out."""
        return [i for i in range(len(self.records)) if i not in self.left_out]

    def left_out_counts(self) -> dict[str, int]:
        """How many records each screening check left out (a record may count under two)."""
        counts: dict[str, int] = {}
        for names in self.left_out.values():
            for name in dict.fromkeys(names):
                counts[name] = counts.get(name, 0) + 1
        return counts

    def sampled(self) -> list[int]:
        return [i for i in self.kept() if not self.sampling[i].greedy]

    def greedy(self) -> list[int]:
        return [i for i in self.kept() if self.sampling[i].greedy]

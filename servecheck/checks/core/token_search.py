"""The search for a text-only record's latent tokens, on the check's shared scores.

``servecheck.reference.tokenization`` says why and what it proposes; this is the loop that runs
it over a whole check: every record's proposals of a round go to the scorer as one batch
(``CheckContext.score_items``, so under torchrun the ranks share them too), and only records
whose last proposal was kept take part in the next round. It reads the ``CheckContext``
through ``SearchContext`` (``search_context``) and returns what it found; the context puts it
in its caches.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from servecheck.checks.core.search_context import SearchContext, Searched, departures
from servecheck.reference.token_scores import ScoreItem, TokenScores
from servecheck.reference.tokenization import (
    MAX_ROUNDS,
    Proposal,
    barker,
    greedy_key,
    propose,
    sampled_loglik,
)

IMPLAUSIBLE_LOGQ = -11.5
"""A sampled token of requested probability below e^-11.5 ≈ 1e-5 is put to the search as if it
were impossible: a correct server draws one rarely, but a canonical ``LL`` where the server drew
``L`` ``L`` looks exactly like that (q ≈ 1e-9 in a capital-letters answer at T = 0.7, where the
argmax after ``U`` is no prefix of it, so nothing else proposed a split). Barker's rule still
decides, so a token the server did draw stays where its split is no likelier."""

VARIANTS = [(merge, rank, fine, back) for back in (False, True) for rank in (0, 1, 2)
            for merge, fine in ((False, False), (True, False), (False, True))]
"""How a suspect token's bytes may be re-split (``tokenization.propose``): from it or from the
token before, the longest, second and third longest other token the text starts with there,
with the rest canonical, merged into the next token, or one character a token. Only records
with a suspect token try them all (a few in a hundred); they are scored in the round's one
batch, and ``better`` picks one to put to ``keep``."""

HIDDEN_PLACES = 16
"""Places tried for a skipped special token when nothing shows where it was."""
SERVED_LOGPROB_NATS = 1.0
"""Where served log-probs count other tokens than the ones scored, a token whose served and
reference log-probs differ by more than this marks where the tokenizations part."""


class TokenSearch:
    def __init__(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        self.tb = ctx.token_bytes
        self.frozen = set(ctx.ref.special_ids)
        self.hideable = ctx.ref.hideable_ids
        self.view: dict[int, TokenScores] = {}
        """Each record's scores as the search judges them (``_views``)."""
        self.tokens: dict[int, list[int]] = {}
        """Each searched record's current tokens (its canonical ones to begin with)."""
        self.current: dict[int, TokenScores] = {}
        """Their scores under the run's convention: what the checks will read."""

    def _views(self, items: list[ScoreItem], scores: list[TokenScores]) -> list[TokenScores]:
        """The scores as the search judges them. Where the records could not tell the sampling
        order (``ctx.undecided``), a token's log q is its best under any plausible order: a
        llama.cpp server's ``E`` after ``BL`` lies inside its nucleus (top_p on temperature-1
        probabilities) and outside HF's, and a search that held it impossible would re-split a
        correct text to escape it. The scores the checks read stay the chosen order's."""
        if not self.ctx.undecided or not items:
            return scores
        others = [self.ctx.scorer(self.ctx.ref, items, c) for c in self.ctx.undecided]
        out = []
        for k, s in enumerate(scores):
            if "logq" not in s.stats:
                out.append(s)
                continue
            best = s.stats["logq"]
            for other in others:
                best = np.maximum(best, other[k].stats["logq"])
            out.append(replace(s, stats={**s.stats, "logq": best}))
        return out

    def _judged(self, i: int) -> TokenScores:
        return self.view[i] if i in self.view else self.current[i]

    def run(self, idx: list[int]) -> dict[int, Searched]:
        """Search the records at ``idx`` (scored on their canonical tokens); returns, for each
        one that ends on other tokens, those tokens, their scores and where they depart from
        the canonical ones (the context puts them in its caches)."""
        ctx, tb = self.ctx, self.tb
        canonical = {i: ctx.output_ids(i)[0] for i in idx}
        if not self._pieces_join(canonical):
            return {}  # a decoder whose pieces do not join back to the text: canonical it is
        self.tokens = dict(canonical)
        self.current = ctx.scores(idx, search=False)
        live, moved = idx, set()
        doubtful = [i for i in idx if "logq" in self.current[i].stats and
                    not (self.current[i].stats["logq"] >= IMPLAUSIBLE_LOGQ).all()]
        if ctx.undecided and doubtful:
            self.view.update(zip(doubtful, self._views([ctx.item(i) for i in doubtful],
                                                       [self.current[i] for i in doubtful]),
                                 strict=True))
        for round_ in range(MAX_ROUNDS):
            proposals = {}
            for i in live:
                s, suspect = self._judged(i), self.suspect(i)
                short = (ctx.served_count(i) or 0) > len(s)
                if not suspect.any() and not short and not tb.may_split(s.token_ids, s.argmax):
                    continue
                found = {}
                for variant in VARIANTS if suspect.any() else VARIANTS[:1]:
                    p = propose(self.tokens[i], s.argmax, tb, ctx.ref.encode,
                                self.frozen, suspect, *variant)
                    if p is not None:
                        found.setdefault(tuple(p.ids), p)
                for p in [*self.hidden(i, suspect), *self.other_ends(i, suspect)]:
                    found.setdefault(tuple(p.ids), p)
                if found:
                    proposals[i] = list(found.values())
            if not proposals:
                break
            order = [(i, p) for i in proposals for p in proposals[i]]
            items = [ctx.item(i, p.ids) for i, p in order]
            best: dict[int, tuple[TokenScores, TokenScores, list[int]]] = {}
            scored = ctx.score_items(items)
            for (i, p), s, v in zip(order, scored, self._views(items, scored), strict=True):
                if i not in best or self.better(i, v, best[i][1]):
                    best[i] = (s, v, p.ids)
            live = []
            for i, (s, v, ids) in best.items():
                if self.keep(i, v, round_):
                    self.tokens[i], self.current[i], self.view[i] = ids, s, v
                    live.append(i)
                    moved.add(i)
        hidden = frozenset(self.hideable)
        return {i: Searched(self.tokens[i], self.current[i],
                            departures(self.tokens[i], canonical[i], tb, hidden))
                for i in idx if i in moved}

    def hidden(self, i: int, suspect: np.ndarray) -> list[Proposal]:
        """A special token the detokenizer skipped, put back before the first suspect token:
        a server that skips special tokens (vLLM's and llama.cpp's default) leaves no trace of a
        ``<start_of_turn>`` its model wrote mid-answer, and the token after it then looks
        impossible where it follows the text before. Where the served log-probs count one token
        more than the text holds and no token looks off (the hidden token's log-prob happened
        to be near the next one's), each of the first ``HIDDEN_PLACES`` places is tried. Only
        ``Reference.hideable_ids`` are tried, one per proposal."""
        ids = self.tokens[i]
        if any(t in self.hideable for t in ids):
            return []
        at = np.flatnonzero(suspect)
        if len(at):
            places = [int(at[0])]
        elif (self.ctx.served_count(i) or 0) > len(ids):  # one token short, and no place shows
            places = list(range(min(len(ids), HIDDEN_PLACES)))  # where: try each
        else:
            return []
        return [Proposal([*ids[:k], v, *ids[k:]], (k,)) for k in places for v in self.hideable]

    def other_ends(self, i: int, suspect: np.ndarray) -> list[Proposal]:
        """The end token of a text-only output is latent too: its text shows the turn's end
        marker, whoever wrote it (servers strip the end token, and clients such as the
        ``openai://`` target put the reference's turn end back), but the model may have ended on
        any of the checkpoint's end tokens (``<eos>`` as well as ``<end_of_turn>``), each a
        correct end. Where the one the text shows looks impossible (``suspect``), each other
        one is proposed, and the reference's own odds decide."""
        ids = self.tokens[i]
        ends = self.ctx.ref.end_ids
        if not ids or ids[-1] not in ends or not suspect[len(ids) - 1]:
            return []
        return [Proposal([*ids[:-1], e], (len(ids) - 1,)) for e in ends if e != ids[-1]]

    def _impossible(self, s: TokenScores) -> int:
        """Tokens a correct server could not have produced: outside the support (sampled) or
        hard argmax mismatches (greedy)."""
        if "logq" in s.stats:
            return int(np.isinf(s.stats["logq"]).sum())
        return greedy_key(s.token_ids, s.argmax, s.margin, s.logprob, self.ctx.tolerances.logit)[0]

    def _possible_special(self, s: TokenScores) -> bool:
        """Whether the special token put back is one a correct server could have produced there:
        inside the support (sampled), or no hard argmax mismatch (greedy)."""
        at = np.flatnonzero(np.isin(s.token_ids, self.hideable))
        if "logq" in s.stats:
            return bool(np.isfinite(s.stats["logq"][at]).all())
        return not bool(((s.token_ids != s.argmax) & (s.margin > self.ctx.tolerances.logit))[at]
                        .any())

    def _hides(self, s: TokenScores) -> bool:
        return bool(self.hideable) and bool(np.isin(s.token_ids, self.hideable).any())

    def _lines_up(self, i: int, s: TokenScores) -> bool:
        """Whether the served log-probs match these tokens' reference log-probs (raw or after
        the transform) within ``SERVED_LOGPROB_NATS`` everywhere: a lost ordinary token is no
        skipped special one, however the counts agree."""
        served = np.asarray(self.ctx.records[i].output_logprobs, dtype=np.float64)
        n = min(len(served), len(s))
        diff = np.abs(served[:n] - s.logprob[:n])
        if "logq" in s.stats:
            diff = np.minimum(diff, np.abs(served[:n] - s.stats["logq"][:n]))
        return bool(np.all(diff <= SERVED_LOGPROB_NATS))

    def _pieces_join(self, canonical: dict[int, list[int]], sample: int = 32) -> bool:
        """Whether token bytes join back to the output text (checked on a sample: a decoder
        that does not is wrong for nearly every record)."""
        for i in list(canonical)[:sample]:
            joined = self.tb.joined(canonical[i])
            if joined != self.ctx.records[i].output.encode("utf-8")[: len(joined)]:
                return False
        return True

    def suspect(self, i: int) -> np.ndarray:
        """Tokens a correct server could hardly have produced in this tokenization: outside
        the support of a sampled record or below ``IMPLAUSIBLE_LOGQ``, a hard argmax mismatch in
        a greedy one, and, where the served log-probs count other tokens than these, those whose
        log-prob is far off."""
        s = self._judged(i)
        if "logq" in s.stats:
            out = ~(s.stats["logq"] >= IMPLAUSIBLE_LOGQ)
        else:
            out = (s.token_ids != s.argmax) & (s.margin > self.ctx.tolerances.logit)
        served = self.ctx.records[i].output_logprobs
        if served and self.ctx.served_count(i) != len(s) and i not in self.ctx.lost_at:
            n = min(len(served), len(s))
            lp = np.asarray(served[:n], dtype=np.float64)
            diff = np.abs(lp - s.logprob[:n])
            if "logq" in s.stats:
                diff = np.minimum(diff, np.abs(lp - s.stats["logq"][:n]))
            out[:n] |= diff > SERVED_LOGPROB_NATS
        return out

    def better(self, i: int, a: TokenScores, b: TokenScores) -> bool:
        """Of two proposals for one record, whether ``a`` is the one to put to ``keep``: fewer
        impossible tokens, then the likelier (a choice only between the two ways of splitting
        at one place, never against the current tokens, which ``keep`` draws for)."""
        def key(s: TokenScores) -> tuple[float, ...]:
            served = self._served_fit(i, s)
            if "logq" in s.stats:
                return (*served, int(np.isinf(s.stats["logq"]).sum()),
                        -sampled_loglik(s.stats["logq"]))
            return (*served, *greedy_key(s.token_ids, s.argmax, s.margin, s.logprob,
                                         self.ctx.tolerances.logit))
        return key(a) < key(b)

    def _served_fit(self, i: int, s: TokenScores) -> tuple[float, ...]:
        """Where the server gave log-probs, how far these tokens are from them: the count first,
        then whether every token's reference log-prob matches the served one within
        ``SERVED_LOGPROB_NATS`` (the served log-probs name the tokens the server drew: ``Ġ``
        ``WHITE`` where the text's own split is ``ĠWHITE``). Empty where it gave none."""
        ctx = self.ctx
        if not ctx.records[i].output_logprobs or i in ctx.lost_at:
            return ()
        n = ctx.served_count(i)
        assert n is not None
        return float(abs(len(s) - n)), float(not self._lines_up(i, s))

    def keep(self, i: int, new: TokenScores, round_: int) -> bool:
        """Whether a proposed tokenization replaces the current one: the server's token count
        first when its log-probs tell it, then the argmax path for greedy records and a
        posterior draw (or, to measure its bias, the likelier one) for sampled ones."""
        ctx = self.ctx
        r, current = ctx.records[i], self._judged(i)
        if self._hides(new) and not self._hides(current):
            if r.output_logprobs:
                if not self._lines_up(i, new):
                    return False  # a special token put back must be the one the log-probs name
            elif not self._possible_special(new) or \
                    self._impossible(new) >= self._impossible(current):
                return False  # …or, without them, be a token the server could have drawn and
                # make the text possible, not trade one slip for another
        fit_new, fit_current = self._served_fit(i, new), self._served_fit(i, current)
        if fit_new != fit_current:  # the served count, then the served log-probs, decide
            return fit_new < fit_current
        if ctx.sampling[i].greedy or "logq" not in new.stats:
            delta = ctx.tolerances.logit
            return greedy_key(new.token_ids, new.argmax, new.margin, new.logprob, delta) < \
                greedy_key(current.token_ids, current.argmax, current.margin, current.logprob,
                           delta)
        ll_new = sampled_loglik(new.stats["logq"])
        ll_current = sampled_loglik(current.stats["logq"])
        if ctx.options.token_choice == "max":
            return ll_new > ll_current
        return barker(ll_new, ll_current, float(np.random.default_rng([ctx.seed(i), round_]).random()))

"""The latent tokens of a text-only record: the tokenization the reference finds most plausible.

Most records carry only text (the original notes' ``response.json``, Triton's ``text_output``).
Re-tokenizing that text canonically is not what the model did: a model writing capitals one by
one emits ``L``, ``L`` where the tokenizer merges ``LL``. Scoring the canonical tokens then shows
the reference a token that was never sampled, and an honest server fails the greedy and support
checks. So the text is scored under the tokenization the reference itself prefers.

The search is batched like the rest of the scorer and costs nothing for records that need none:

1. Score the canonical tokenization (the normal pass).
2. Where the reference's argmax at a position is a *different* token whose bytes also continue
   the text there (a different split of the same bytes), propose the split: take the argmax and
   re-tokenize only up to the next canonical token boundary. Every such place in a record is
   split at once, so one round fixes a whole capitalised answer.
3. Rescore only the records with a proposal, in one batch, and keep or drop each proposal.
   Repeat (at most ``MAX_ROUNDS``, rarely more than 3); each round starts from what the last one kept.

How a proposal is kept, and what that costs the statistics (measured in docs/validation-power.md):

- **Greedy records** keep the proposal with fewer hard argmax mismatches (then the higher raw
  log-likelihood). If some tokenization of the text follows the argmax at every step, these
  rounds walk to it, one divergence region per round, so the greedy check is exact.
- **Sampled records** draw the tokenization from its posterior instead of maximising: the
  proposal replaces the current tokenization with probability q(new) / (q(new) + q(current))
  (Barker's rule, q the requested sampling distribution over the whole output). Picking the most
  likely tokenization would bias every statistic towards "too cold", since it can only raise the
  likelihood; a draw from p(tokens | text) leaves (tokens, text) distributed as a correct server
  produced them, so the PIT stays uniform. The residual bias is the posterior mass outside the
  proposals (splits the argmax never points to), which the benchmark measures.
- A record that carries served log-probs but no ids tells how many tokens the server produced:
  a tokenization with that count is preferred over any other.

Tokens are compared as bytes (byte-level BPE, SentencePiece with ``<0xNN>`` byte fallback, or
plain pieces), so a split inside a multi-byte character is found too. A text whose canonical
tokens do not join back to its bytes (a decoder this module does not know) is scored canonically
and said so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache

import numpy as np

MAX_ROUNDS = 16
"""Rounds of proposals at most; each fixes every divergence region that the last scoring showed,
and rescoring only the records whose last proposal was kept, so a round costs what it fixes."""
class Source(str, Enum):
    """A named value that prints as its value (in f-strings too): how the JSON summary and the
    report name it."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class TokenSource(Source):
    """Where a record's scored output tokens came from."""

    SERVER_IDS = "server token ids"
    CANONICAL = "reference tokenization of the output text"
    SEARCHED = "most plausible tokenization of the output text"


class PromptSource(Source):
    """Where a record's scored prompt tokens came from: what the server conditioned on, best
    known."""

    SERVER_IDS = "server prompt token ids"
    INPUT_TEXT = "served input text"
    TEMPLATE = "reference template"


SERVER_IDS, CANONICAL, SEARCHED = TokenSource.SERVER_IDS, TokenSource.CANONICAL, TokenSource.SEARCHED
LOST = "\ufffd"
"""What a detokenizer writes for bytes that are no whole UTF-8 character: the bytes are gone, so
a text-only record is scored only up to the first one (``CheckContext.lost_at``). Leaving out
what follows conditions the kept tokens on the next one being whole; such tokens are rare
(a hot sampler's stray byte), so that bias is small next to scoring bytes nobody sampled."""
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def _byte_level_decoder() -> dict[str, int]:
    """GPT-2's printable-character alphabet for the 256 bytes, inverted (byte-level BPE)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(keep, chars, strict=True)}


class TokenBytes:
    """The bytes each token id stands for, and the way back for text and stray bytes."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None)
        decoder = str(getattr(backend, "decoder", "")) if backend is not None else ""
        self.byte_level = "ByteLevel" in decoder
        self.special = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
        self._cache: dict[int, bytes] = {}
        self._ids: dict[bytes, int] | None = None
        self._pairs: dict[int, bool] = {}
        self._longest: int | None = None

    def __call__(self, token: int) -> bytes:
        hit = self._cache.get(token)
        if hit is None:
            hit = self._cache[token] = self._bytes(token)
        return hit

    def _bytes(self, token: int) -> bytes:
        if token in self.special:
            return self.special[token].encode("utf-8")
        piece = self.tok.convert_ids_to_tokens(int(token))
        if piece is None:
            return b""
        m = _BYTE_TOKEN.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        if self.byte_level:
            table = _byte_level_decoder()
            if all(c in table for c in piece):
                return bytes(table[c] for c in piece)
        return piece.replace("▁", " ").encode("utf-8")

    def joined(self, ids: list[int]) -> bytes:
        return b"".join(self(t) for t in ids)

    def may_split(self, ids: np.ndarray, argmax: np.ndarray) -> bool:
        """Whether any position's argmax could be another split of the same bytes: one token a
        proper prefix of the other. Vectorised over the record, each distinct pair decided once
        (the per-record search runs only where this says yes: a few records in a hundred)."""
        off = ids != argmax
        if not off.any():
            return False
        pairs = np.unique(ids[off].astype(np.int64) * (1 << 32) + argmax[off].astype(np.int64))
        known = self._pairs
        for key in pairs.tolist():
            hit = known.get(key)
            if hit is None:
                y, a = self(key >> 32), self(key & 0xFFFFFFFF)
                hit = known[key] = bool(a and y and a != y and (y.startswith(a) or a.startswith(y)))
            if hit:
                return True
        return False

    def lookup(self, data: bytes) -> int | None:
        """The ordinary (non-special) token spelling exactly ``data``, if there is one."""
        if self._ids is None:
            ids: dict[bytes, int] = {}
            for tid in range(len(self.tok)):
                if tid not in self.special:
                    ids.setdefault(self(tid), tid)
            self._ids = ids
        return self._ids.get(data)

    def fewest(self, data: bytes) -> int | None:
        """The fewest ordinary tokens that spell ``data`` (None: none do). A sampler's own
        split of a text may take more tokens than the tokenizer's canonical one, and also fewer
        (BPE's merges are not the shortest split), so a bound on what a server generated is
        this, not the canonical count."""
        self.lookup(b"")  # builds the spelling table
        if self._longest is None:
            self._longest = max(map(len, self._ids or ()), default=0)
        best = [0] + [None] * len(data)
        for end in range(1, len(data) + 1):
            options = [best[end - n] + 1 for n in range(1, min(self._longest, end) + 1)
                       if best[end - n] is not None and self.lookup(data[end - n:end]) is not None]
            best[end] = min(options) if options else None
        return best[-1]

    def byte_token(self, byte: int) -> int | None:
        """The token for one raw byte (``<0xNN>`` or a byte-level single byte), if any."""
        return self.lookup(bytes([byte]))

    def starting(self, text: bytes, at: int, other_than: int, rank: int = 0, longer_than: int = 0
                 ) -> int | None:
        """The longest token other than ``other_than`` that spells a prefix of ``text[at:]``,
        or with ``rank`` r the (r+1)-th longest: for a canonical ``ELL`` ``AC``, ``ELLA`` if
        there is one, then ``EL``, then ``E``; for `` RIVE`` ``ROG``, `` RIVER``. Only tokens
        of more than ``longer_than`` bytes count."""
        if self._longest is None:
            self.lookup(b"")  # builds the spelling table
            self._longest = max(map(len, self._ids or ()), default=0)
        for n in range(min(self._longest, len(text) - at), longer_than, -1):
            tid = self.lookup(text[at:at + n])
            if tid is not None and tid != other_than:
                if not rank:
                    return tid
                rank -= 1
        return None

    def characters(self, data: bytes) -> list[int] | None:
        """One token per character of ``data`` (``L`` ``L`` for ``LL``), where each has one."""
        try:
            chars = data.decode("utf-8")
        except UnicodeDecodeError:
            return None
        out = []
        for c in chars:
            tid = self.lookup(c.encode("utf-8"))
            if tid is None:
                return None
            out.append(tid)
        return out

    def encode(self, data: bytes, encode_text) -> list[int] | None:
        """Canonical tokens of ``data``; bytes of a character cut in two become byte tokens.
        None when that is impossible (no byte token for such a byte)."""
        head = 0
        while head < len(data) and 0x80 <= data[head] < 0xC0:  # the tail of a split character
            head += 1
        tail = len(data)
        for back in range(1, min(4, len(data) - head) + 1):  # the head of a split character
            b = data[len(data) - back]
            if b >= 0xC0:
                need = 2 if b < 0xE0 else 3 if b < 0xF0 else 4
                if back < need:
                    tail = len(data) - back
                break
            if b < 0x80:
                break
        try:
            middle = encode_text(data[head:tail].decode("utf-8")) if tail > head else []
        except UnicodeDecodeError:
            return None
        edges = [self.byte_token(b) for b in data[:head]], [self.byte_token(b) for b in data[tail:]]
        if None in edges[0] or None in edges[1]:
            return None
        return [*edges[0], *middle, *edges[1]]  # type: ignore[list-item]


@dataclass(frozen=True)
class Proposal:
    ids: list[int]
    departures: tuple[int, ...]
    """Output token positions (in ``ids``) where a split departs from the previous tokens."""


def propose(ids: list[int], argmax: np.ndarray, tb: TokenBytes, encode_text,
            frozen: set[int], impossible: np.ndarray, merge: bool = False, rank: int = 0,
            fine: bool = False, back: bool = False) -> Proposal | None:
    """Every place where the argmax is another split of the same bytes, split at once.

    Where a token is ``impossible`` (outside the support of a sampled record, or a hard greedy
    mismatch) and the argmax is no split of it, the longest other token that the text starts
    with there is proposed instead (a prefix of it, or a longer one):
    a sampled ``L`` need not be the argmax to be the token the server drew. Only the first such
    place is split per round: the scores after a split saw the old context, and a token that was
    impossible there (``AT`` after ``LL``) may be the right one after ``L``, ``L``.

    A token split into exactly its own bytes (``LL`` → ``L``, ``L``) is split the same way where
    it repeats right after, since the scores there saw the old context: a run of 18 ``LL`` takes
    one round, not 18. ``frozen`` token ids are never split or merged (special tokens:
    ``<end_of_turn>`` is one token whatever the text looks like).

    With ``merge``, the bytes an impossible token's prefix leaves over join the next token where
    that makes fewer tokens ("MS" "ad" → "M" "Sad"); without, they stay apart ("LL" "U" → "L"
    "L" "U"). Which one the server did, only the scores tell: the search tries both. ``rank``
    takes another token that the text starts with there (``EL`` or ``E`` for ``ELL``; a longer
    `` RIVER`` for `` RIVE`` ``ROG``), and ``fine`` spells the left-over
    bytes one character a token (``E`` ``L`` ``L``): a served split two tokens away from the
    canonical one is reached in one round, where a step through ``EL`` ``L``, no likelier than
    ``ELL``, would be refused. ``back`` re-splits from the token before the suspect one, with a
    longer token that reaches into it (``w`` ``er`` → ``wer``)."""
    pieces = [tb(t) for t in ids]
    starts = np.cumsum([0, *map(len, pieces)]).tolist()
    text = b"".join(pieces)
    out: list[int] = []
    departures: list[int] = []
    run: tuple[int, list[int], int] | None = None  # (token, its split, where the run ends)
    i = 0
    while i < len(ids):
        if run is not None and ids[i] == run[0] and starts[i] == run[2]:
            out += run[1]
            run = (run[0], run[1], starts[i + 1])
            i += 1
            continue
        a = int(argmax[i])
        at = starts[i]
        forced = False
        if impossible[i] and not departures and ids[i] not in frozen:
            split = a != ids[i] and text.startswith(tb(a), at)  # the argmax is a prefix of it
            b = a if split and not rank else tb.starting(text, at, ids[i], rank)
            a, forced = (a, False) if b is None else (b, True)
            if back and i and ids[i - 1] not in frozen:  # the token before reaches into it
                b = tb.starting(text, starts[i - 1], ids[i - 1], rank, len(pieces[i - 1]))
                if b is not None:
                    i, a, forced = i - 1, b, True
                    at = starts[i]
                    out.pop()
        if a != ids[i] and ids[i] not in frozen and a not in frozen:
            ab = tb(a)
            if ab and ab != pieces[i] and text.startswith(ab, at):
                end = at + len(ab)
                j = next(k for k in range(i + 1, len(ids) + 1) if starts[k] >= end)
                if not any(ids[k] in frozen for k in range(i, j)):
                    rest = tb.encode(text[end:starts[j]], encode_text)
                    if fine and forced:
                        rest = tb.characters(text[end:starts[j]]) or rest
                    if merge and forced and rest is not None and j < len(ids) and \
                            ids[j] not in frozen:
                        # the cut-off bytes may belong to the next token ("MS" "ad" served
                        # as "M" "Sad"): where they merge with it into fewer tokens, they do
                        merged = tb.encode(text[end:starts[j + 1]], encode_text)
                        if merged is not None and len(merged) < len(rest) + 1:
                            rest, j = merged, j + 1
                    if rest is not None:
                        departures.append(len(out))
                        out += [a, *rest]
                        run = (ids[i], [a, *rest], starts[j]) if j == i + 1 else None
                        i = j
                        continue
        run = None
        out.append(ids[i])
        i += 1
    if not departures or tb.joined(out) != text:
        return None
    return Proposal(out, tuple(departures))


def greedy_key(token_ids: np.ndarray, argmax: np.ndarray, margin: np.ndarray, logprob: np.ndarray,
               delta: float) -> tuple[int, float]:
    """Smaller is better: (hard argmax mismatches beyond δ, minus the raw log-likelihood)."""
    hard = int(np.sum((token_ids != argmax) & (margin > delta)))
    return hard, -float(np.sum(logprob))


def sampled_loglik(logq: np.ndarray) -> float:
    """log q of a whole output; a token outside the support costs 1000 nats, so that among
    tokenizations that all leave it the likelier one still wins."""
    finite = np.isfinite(logq)
    return float(np.sum(logq[finite])) - 1000.0 * int(np.sum(~finite))


def barker(new: float, current: float, u: float) -> bool:
    """Take ``new`` with probability e^new / (e^new + e^current)."""
    d = current - new
    return u < (1.0 / (1.0 + np.exp(d)) if d < 700 else 0.0)

"""Prompts of controlled token length around a checkpoint's sliding window, as a prompts file.

servecheck's usual requests are a few dozen tokens, and a fault that only acts on a long context
cannot show in them: a sliding window applied to every layer, or to none (the model's local
layers attending past their window), a KV cache that drops or reorders blocks, a prefix cache
that hands one request another's blocks. So these prompts are sized from the checkpoint's own
window W (``sliding_window`` in its config): 0.9 W (all inside the window), 1.1 W (just past
it), 2 W and 4 W (long past it), each counted in the reference's tokens over the rendered chat
template (generation prompt included: what the server runs on), exactly where the tokenizer
allows and never more than ``TOLERANCE`` tokens off.

Their next tokens depend on context far back, so a server that loses it is judged on tokens
that show it: *copy* (a list of words at the start, filler, then "say the list again") and
*recall* (two facts at the start, filler, a question about one). The facts contradict the
animals' usual homes and foods, so only the distant context holds the answer a capable model
gives; the two recall questions share everything but their last sentence, so a prefix cache
serves one from the other's blocks. The words are those the built-in model learnt
(``tinymodels/corpus.py``): a tiny model does not recall, but its distributions stay those of
text it knows. Filler is short stories drawn from a seeded generator, cut a word at a time to
the length.

Every prompt is asked greedily and at two sampled settings, each seeded apart, with
``max_tokens`` 64 (``prompts_file``). A checkpoint with no sliding window gets lengths only
from a ``window`` the user names: its full attention has no boundary to straddle, and a guess
would pass for one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from servecheck.errors import InputError
from servecheck.formats.conversation import Conversation, Message
from servecheck.reference.model import Reference
from servecheck.words import ADJECTIVES, ANIMALS, COLORS, FOODS, HOMES, PLACES, SOUNDS, VERBS

__all__ = ["FACTORS", "LongPrompt", "build", "prompts_file", "sliding_window"]

FACTORS = (0.9, 1.1, 2.0, 4.0)
"""Prompt lengths, in windows: inside, just past, and well past the sliding window."""
MAX_TOKENS = 64
SAMPLED: tuple[dict[str, float], ...] = ({"temperature": 0.7, "top_p": 0.9}, {"temperature": 1.0})
SEEDS = 3
"""Seeds per prompt and sampled setting; every request has its own (``prompts_file``)."""
TOLERANCE = 2
"""The most tokens a prompt may be off its length: a tokenizer that merges across words may
leave no word that fills the last gap exactly."""
EXTRA_WORDS = 48
"""Filler words tried past the longest fit for one that closes the last gap."""



@dataclass(frozen=True)
class LongPrompt:
    """One user message of a planned length, and the length it has."""

    name: str
    """``copy@2W``, ``recall-home@0.9W``…: the task and the length in windows."""
    task: str
    factor: float
    target: int
    """The planned length: round(factor × window) tokens."""
    tokens: int
    """Its length in the reference's tokens, over the rendered template."""
    text: str


def sliding_window(ref: Reference) -> int | None:
    """The checkpoint's sliding window in tokens, or None where no layer slides (no
    ``sliding_window``, ``use_sliding_window`` false as in Qwen2's configs, or no
    ``sliding_attention`` among its ``layer_types``)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(ref.path, local_files_only=True)
    config = getattr(config, "text_config", None) or config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or getattr(config, "use_sliding_window", True) is False or (
            types and "sliding_attention" not in types):
        return None
    return int(window)


def _filler(rng: random.Random, avoid: set[str], words: int) -> list[str]:
    """At least ``words`` words of short stories, leaving out the animals a task asks about."""
    animals = [a for a in ANIMALS if a not in avoid]
    out: list[str] = []
    while len(out) < words:
        a, b = rng.choice(animals), rng.choice(animals)
        out += rng.choice([
            f"The {rng.choice(ADJECTIVES)} {a} {rng.choice(VERBS)} to the {rng.choice(PLACES)}.",
            f"It sees a {rng.choice(COLORS)} {b}.",
            f"There it meets a {rng.choice(ADJECTIVES)} {b}.",
            f"Then it {rng.choice(VERBS)} home.",
            f"The {b} says {SOUNDS[b]}.",
        ]).split()
    return out


def _tasks(rng: random.Random) -> list[tuple[str, str, str, set[str]]]:
    """(task, head, question, animals to keep out of the filler): one copy task and two recall
    questions on one head (the recall pair shares its filler too)."""
    pool = [*ANIMALS, *COLORS, *PLACES, *ADJECTIVES]
    listed = " ".join(rng.sample(pool, 6))
    a, b = rng.sample(ANIMALS, 2)
    home = rng.choice([h for h in HOMES.values() if h != HOMES[a]])
    food = rng.choice([f for f in FOODS.values() if f != FOODS[b]])
    head = f"Remember this: the {a} lives in {home} and the {b} eats {food}."
    return [("copy", f"Remember this list: {listed}.", "Now say the list again.", set()),
            ("recall-home", head, f"Where does the {a} live?", {a, b}),
            ("recall-food", head, f"What does the {b} eat?", {a, b})]


class _Fitter:
    """Counts a user message's tokens over the rendered template, and fits filler to a length."""

    def __init__(self, ref: Reference) -> None:
        self.ref = ref

    def count(self, text: str) -> int:
        conversation = Conversation(contents=[Message(role="user", content=text)])
        return len(self.ref.encode(self.ref.render(conversation)))

    def fit(self, head: str, question: str, words: list[str], target: int) -> tuple[str, int]:
        """The message ``head + filler + question`` nearest ``target`` tokens from below: the
        longest run of filler that fits (the count only grows with words), then later words
        that close the gap, skipping those too long for it. A filler cut inside a sentence is
        closed with a period where that still lands on the length."""
        best = ("", -1)
        for close in (True, False):
            def text(chosen: list[str], close: bool = close) -> str:
                filler = " ".join(chosen)
                if close and filler and not filler.endswith("."):
                    filler += "."
                return " ".join(x for x in (head, filler, question) if x)

            low, high = 0, len(words)
            if self.count(text([])) > target:
                raise InputError(f"a prompt without filler is already over {target} tokens: "
                                 f"the window is too small to plan lengths from",
                                 where=self.ref.spec)
            while low < high:  # the largest n with count(words[:n]) <= target
                mid = (low + high + 1) // 2
                low, high = (mid, high) if self.count(text(words[:mid])) <= target else \
                    (low, mid - 1)
            chosen, tokens = words[:low], self.count(text(words[:low]))
            for word in words[low + 1: low + 1 + EXTRA_WORDS]:
                if tokens == target:
                    break
                n = self.count(text([*chosen, word]))
                if n <= target:
                    chosen, tokens = [*chosen, word], n
            if tokens > best[1]:
                best = (text(chosen), tokens)
            if tokens == target:
                break
        return best


def build(ref: Reference, window: int | None = None, factors: tuple[float, ...] = FACTORS,
          variant: int = 0) -> tuple[list[LongPrompt], list[str]]:
    """The long prompts for ``ref``, sized from ``window`` (default: its sliding window), and
    notes on what was left out (a length past the model's positions). ``variant`` draws other
    words and filler (a benchmark's fresh, uncached prefixes); 0 is the shipped file's."""
    found = sliding_window(ref)
    window = window or found
    if window is None:
        raise InputError("the checkpoint has no sliding window (its config sets no "
                         "sliding_window, or no layer uses one), so there is no boundary to "
                         "size the prompts from: name a length scale with --window N to test the "
                         "KV and prefix caches (a quarter of the context you serve makes the "
                         "longest prompts fill it)",
                         where=ref.spec)
    if window < 16:
        raise InputError(f"a window of {window} tokens is too small to plan prompts around",
                         where=ref.spec)
    fitter, notes, out = _Fitter(ref), [], []
    for factor in factors:
        target = round(factor * window)
        if ref.context_length and target + MAX_TOKENS > ref.context_length:
            notes.append(f"{factor:g}W = {target} tokens left out: with {MAX_TOKENS} to generate "
                         f"it passes the model's {ref.context_length} positions")
            continue
        rng = random.Random(f"long-prompts {variant} {factor}")
        tasks = _tasks(rng)
        fillers: dict[str, list[str]] = {}
        for task, head, question, avoid in tasks:
            key = head  # the recall pair: one filler, so they share all but the question
            if key not in fillers:
                fillers[key] = _filler(rng, avoid, target + 64)
            text, tokens = fitter.fit(head, question, fillers[key], target)
            if abs(tokens - target) > TOLERANCE:
                raise InputError(f"{task} at {factor:g}W: {tokens} tokens where {target} were "
                                 f"planned (no filler word closes the gap)", where=ref.spec)
            out.append(LongPrompt(f"{task}@{factor:g}W", task, factor, target, tokens, text))
    return out, notes


def prompts_file(prompts: list[LongPrompt], first_seed: int = 1) -> list[dict[str, Any]]:
    """The prompts file: one greedy block of every prompt, then each prompt at each sampled
    setting under ``SEEDS`` seeds of its own (seeds shared across prompts would read one
    random stream, which the pooled tests must discount)."""
    blocks: list[dict[str, Any]] = [{"prompt": [p.text for p in prompts], "temperature": 0,
                                     "max_tokens": MAX_TOKENS}]
    seed = first_seed
    for p in prompts:
        for setting in SAMPLED:
            blocks.append({"prompt": p.text, **setting,
                           "seed": list(range(seed, seed + SEEDS)), "max_tokens": MAX_TOKENS})
            seed += SEEDS
    return blocks

"""Synthetic multi-turn chats that the tiny built-in model is trained on.

The statistical checks need a model whose next-token distributions are of both kinds: peaked
(facts, counting, copying, arithmetic: one right answer) and flat (name a colour, tell a story:
many right answers). So each task family below is one or the other, and system prompts change
the style of the answer (capitals, brevity, a suffix) so that a dropped or misplaced system prompt
changes what a correct model says. Everything is drawn from one seeded ``random.Random``: the
same seed gives the same corpus on any machine.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from servecheck.words import ADJECTIVES, ANIMALS, COLORS, FOODS, HOMES, PLACES, SOUNDS, VERBS

OPPOSITES = dict(big="small", small="big", hot="cold", cold="hot", up="down", down="up",
                 day="night", night="day", fast="slow", slow="fast", happy="sad", sad="happy")
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten"]

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "Answer in capital letters.",
    "Always end your answer with a smile.",
    "Be brief.",
]

Turn = tuple[str, str, str]  # (user text, full answer, brief answer)


def _fact(rng: random.Random, animal: str | None = None) -> tuple[Turn, Callable[[str], Turn]]:
    """A peaked question about an animal, and a follow-up asking the same of another one."""
    kind = rng.choice(["sound", "home", "food"])
    animal = animal or rng.choice(ANIMALS)

    def ask(a: str, follow_up: bool) -> Turn:
        if kind == "sound":
            q = f"What does the {a} say?"
            full, brief = f"The {a} says {SOUNDS[a]}.", f"{SOUNDS[a].capitalize()}."
        elif kind == "home":
            q = f"Where does the {a} live?"
            full, brief = f"The {a} lives in {HOMES[a]}.", f"In {HOMES[a]}."
        else:
            q = f"What does the {a} eat?"
            full, brief = f"The {a} eats {FOODS[a]}.", f"{FOODS[a].capitalize()}."
        return (f"And the {a}?" if follow_up else q), full, brief

    return ask(animal, False), lambda a: ask(a, True)


def _count(rng: random.Random) -> Turn:
    a = rng.randint(1, 12)
    b = a + rng.randint(2, 6)
    seq = ", ".join(str(i) for i in range(a, b + 1))
    return f"Count from {a} to {b}.", f"{seq}.", f"{seq}."


def _add(rng: random.Random) -> Turn:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.", f"{a + b}."


def _opposite(rng: random.Random) -> Turn:
    w = rng.choice(sorted(OPPOSITES))
    return (f"What is the opposite of {w}?", f"The opposite of {w} is {OPPOSITES[w]}.",
            f"{OPPOSITES[w].capitalize()}.")


def _repeat(rng: random.Random) -> Turn:
    pool = ANIMALS + COLORS + PLACES + ADJECTIVES
    words = " ".join(rng.choice(pool) for _ in range(rng.randint(2, 5)))
    return f"Repeat after me: {words}", f"{words}", f"{words}"


def _pick(rng: random.Random) -> Turn:
    """Flat: several answers are equally right."""
    kind = rng.choice(["color", "animal", "number", "place"])
    if kind == "color":
        c = rng.choice(COLORS)
        return "Name a color.", f"{c.capitalize()}.", f"{c.capitalize()}."
    if kind == "animal":
        a = rng.choice(ANIMALS)
        return "Name an animal.", f"The {a}.", f"{a.capitalize()}."
    if kind == "place":
        p = rng.choice(PLACES)
        return "Where should we go?", f"Let us go to the {p}.", f"The {p}."
    n = rng.randint(1, 10)
    return "Pick a number between 1 and 10.", f"{n}.", f"{n}."


def _story(rng: random.Random) -> Turn:
    """Flat inside a fixed grammar: word choices are free, the sentence shape is not."""
    a = rng.choice(ANIMALS)
    sentences = [f"The {rng.choice(ADJECTIVES)} {a} {rng.choice(VERBS)} to the {rng.choice(PLACES)}."]
    for _ in range(rng.randint(1, 2)):
        other = rng.choice(ANIMALS)
        sentences.append(rng.choice([
            f"It sees a {rng.choice(COLORS)} {other}.",
            f"There it meets a {rng.choice(ADJECTIVES)} {other}.",
            f"Then it {rng.choice(VERBS)} home.",
            f"The {other} says {SOUNDS[other]}.",
        ]))
    return f"Tell me a story about the {a}.", " ".join(sentences), sentences[0]


def _spell(rng: random.Random) -> Turn:
    w = rng.choice(ANIMALS + COLORS)
    return f"Spell the word {w}.", "-".join(w.upper()), "-".join(w.upper())


def _count_words(rng: random.Random) -> Turn:
    n = rng.randint(1, 10)
    return (f"Say the number {n} in words.", f"{n} is {NUMBER_WORDS[n]}.",
            f"{NUMBER_WORDS[n].capitalize()}.")


SIMPLE_TASKS: list[Callable[[random.Random], Turn]] = [
    _count, _add, _opposite, _repeat, _pick, _pick, _story, _story, _spell, _count_words,
]


def _styled(turn: Turn, system: str | None) -> str:
    _, full, brief = turn
    if system == "Answer in capital letters.":
        return full.upper()
    if system == "Always end your answer with a smile.":
        return f"{full} :)"
    if system == "Be brief.":
        return brief
    return full


def chat(rng: random.Random) -> list[dict[str, str]]:
    """One conversation in HF message form (roles system/user/assistant)."""
    system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.45 else None
    messages: list[dict[str, str]] = []
    if system:
        messages.append({"role": "system", "content": system})
    n_turns = rng.choices([1, 2, 3], weights=[0.55, 0.3, 0.15])[0]
    previous: str | None = None
    follow: Callable[[str], Turn] | None = None
    for _ in range(n_turns):
        r = rng.random()
        if follow is not None and r < 0.35:
            turn = follow(rng.choice(ANIMALS))
            follow = None
        elif previous is not None and r < 0.5:
            turn = ("Say that again.", previous, previous)
        elif r < 0.75:
            turn, follow = _fact(rng)
        else:
            turn = rng.choice(SIMPLE_TASKS)(rng)
            follow = None
        answer = _styled(turn, system) if turn[0] != "Say that again." else previous
        assert answer is not None
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": answer}]
        previous = answer
    return messages


def corpus(n: int, seed: int) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)
    return [chat(rng) for _ in range(n)]


def tokenizer_text(seed: int) -> list[str]:
    """Plain text for training the BPE tokenizer: chats plus every printable character."""
    lines = [m["content"] for c in corpus(4000, seed) for m in c]
    lines += ["0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ .,;:!?'\"()-:)"] * 5
    return lines

"""Chats with tools and thinking, for the second built-in model (``builtin-tools``).

The tool, reasoning and stop-string checks need a model that behaves like a modern chat model in
the ways servers get wrong: it calls a function only when the function is offered (so a server
that drops ``tools`` from the prompt changes what it says), it writes well-formed Hermes-style
calls (``<tool_call>{"name": …, "arguments": {…}}</tool_call>``, sometimes two in one turn, so a
parser that loses one is seen), it reads tool results back in a later turn, and it thinks before
answering when thinking is on and not when the template switches it off. Everything comes from
one seeded ``random.Random``, like the plain corpus, whose chats make up the other half.
"""

from __future__ import annotations

import json
import random
from typing import Any

from servecheck.tinymodels import corpus

CITIES = ["Paris", "Oslo", "Lima", "Cairo", "Tokyo", "Rome", "Quito", "Delhi"]
SKIES = ["sunny", "rainy", "cloudy", "windy", "snowy", "foggy"]


def _function(name: str, description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties,
                       "required": sorted(properties)}}}


TOOLS: dict[str, dict[str, Any]] = {
    "get_weather": _function("get_weather", "Current weather in a city.",
                             {"city": {"type": "string", "enum": CITIES}}),
    "add": _function("add", "Add two whole numbers.",
                     {"a": {"type": "integer"}, "b": {"type": "integer"}}),
    "find_home": _function("find_home", "Where an animal lives.",
                           {"animal": {"type": "string", "enum": corpus.ANIMALS}}),
}
"""The functions the model knows, as OpenAI ``tools`` entries (JSON Schema parameters)."""

Message = dict[str, Any]


def _call(name: str, **arguments: Any) -> dict[str, Any]:
    """An assistant tool call the way HF templates take it: arguments as a mapping."""
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def _weather(rng: random.Random) -> dict[str, Any]:
    return {"sky": rng.choice(SKIES), "degrees": rng.randint(-5, 35)}


def _tool_task(rng: random.Random, offered: list[str]) -> list[Message]:
    """One user question and the turns that answer it: calls and results where the needed
    function is offered, a direct answer (or a refusal, for the weather) where it is not."""
    kind = rng.choice(["weather", "weather2", "add", "home"])
    if kind.startswith("weather"):
        cities = rng.sample(CITIES, 2 if kind == "weather2" else 1)
        question = ("What is the weather in " + " and in ".join(cities) + "?")
        if "get_weather" not in offered:
            plan = "I have no way to check the weather."
            return _answer(question, plan, "I cannot check the weather.")
        results = [_weather(rng) for _ in cities]
        plan = "I will call get_weather for " + " and ".join(cities) + "."
        reply = " ".join(f"It is {r['sky']} and {r['degrees']} degrees in {c}."
                         for c, r in zip(cities, results, strict=True))
        return _with_calls(question, plan, [_call("get_weather", city=c) for c in cities],
                           [dict(city=c, **r) for c, r in zip(cities, results, strict=True)], reply)
    if kind == "add":
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        question = f"Add {a} and {b}."
        if "add" not in offered:
            return _answer(question, f"I add {a} and {b} myself.", f"{a} plus {b} is {a + b}.")
        return _with_calls(question, "I will call add.", [_call("add", a=a, b=b)],
                           [{"sum": a + b}], f"The sum is {a + b}.")
    animal = rng.choice(corpus.ANIMALS)
    question = f"Where does the {animal} live?"
    home = corpus.HOMES[animal]
    if "find_home" not in offered:
        return _answer(question, f"I know where the {animal} lives.",
                       f"The {animal} lives in {home}.")
    return _with_calls(question, "I will call find_home.", [_call("find_home", animal=animal)],
                       [{"home": home}], f"The {animal} lives in {home}.")


def _answer(question: str, plan: str, reply: str) -> list[Message]:
    return [{"role": "user", "content": question},
            {"role": "assistant", "content": reply, "reasoning_content": plan}]


def _with_calls(question: str, plan: str, calls: list[dict[str, Any]],
                results: list[dict[str, Any]], reply: str) -> list[Message]:
    turns: list[Message] = [{"role": "user", "content": question},
                            {"role": "assistant", "content": "", "tool_calls": calls,
                             "reasoning_content": plan}]
    turns += [{"role": "tool", "content": json.dumps(r)} for r in results]
    turns.append({"role": "assistant", "content": reply,
                  "reasoning_content": "The tool answered."})
    return turns


def tool_chat(rng: random.Random) -> tuple[list[Message], list[dict[str, Any]] | None, bool]:
    """One training chat: (messages, tools offered or None, thinking on).

    Half the chats are the plain corpus's (no tools); the rest offer a random subset of the
    functions in a random order. With thinking off, every reasoning text is empty, which the
    template renders as the empty think block it also puts in the generation prompt.
    """
    thinking = rng.random() < 0.5
    if rng.random() < 0.5:
        messages: list[Message] = corpus.chat(rng)
        last = messages[-1]
        last["reasoning_content"] = f"The user said: {messages[-2]['content']}"
        tools = None
    else:
        offered = rng.sample(sorted(TOOLS), rng.randint(0, len(TOOLS)))
        system = rng.choice([corpus.SYSTEM_PROMPTS[0], None, None])
        messages = ([{"role": "system", "content": system}] if system else [])
        messages += _tool_task(rng, offered)
        tools = [TOOLS[name] for name in offered] or None
    if not thinking:
        for m in messages:
            if "reasoning_content" in m:
                m["reasoning_content"] = ""
    return messages, tools, thinking


def tool_corpus(n: int, seed: int) -> list[tuple[list[Message], list[dict[str, Any]] | None, bool]]:
    rng = random.Random(seed)
    return [tool_chat(rng) for _ in range(n)]


def tokenizer_text(seed: int) -> list[str]:
    """Text for the BPE: the plain corpus's, plus tool schemas, calls and results."""
    lines = corpus.tokenizer_text(seed)
    lines += [json.dumps(t) for t in TOOLS.values()] * 200
    for messages, _, _ in tool_corpus(3000, seed):
        for m in messages:
            lines.append(m.get("content") or "")
            lines.append(m.get("reasoning_content") or "")
            lines += [json.dumps(c["function"]) for c in m.get("tool_calls", [])]
    return lines

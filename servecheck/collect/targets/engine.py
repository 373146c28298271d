"""In-process engines that share no code with transformers: what CTranslate2 and ONNX Runtime
GenAI targets have in common.

A target built from transformers (``hf:``, the Triton host) cannot show a convention
transformers does not have. These run another engine's own kernels, sampler, random generator,
defaults and end-token handling on a converted checkpoint (``servers/convert.py``), and record
what that engine returns, in its own names: the served log-probs are the engine's, whatever its
convention, and nothing is corrected here, because finding the conventions is ``check``'s job.

A deployment decides what a setting the request leaves unset becomes. The spec says it:

- ``defaults=neutral`` (the default): the OpenAI meaning (temperature 1, no top_k, top_p 1, no
  penalty), spelt as this engine needs it;
- ``defaults=engine``: nothing sent for it, so the engine's own default runs, as in a naive
  integration (CTranslate2 samples with top_k 1, ONNX Runtime GenAI with ``do_sample`` false);
- ``SETTING=VALUE`` (``repetition_penalty=1.1``): the deployment's own default for that setting,
  applied where the request leaves it unset, as a server flag does.

Each record's ``sent`` has the engine's option names and values, ``server`` names the engine,
and ``server_defaults`` lists the settings left to the engine.
"""

from __future__ import annotations

import asyncio
import threading
from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from servecheck.collect.targets import DEFAULT_MAX_TOKENS, Target, spec_options
from servecheck.collect.targets.clock import Stopwatch
from servecheck.errors import InputError
from servecheck.formats.parameters import Parameters
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord
from servecheck.formats.tools import Usage

NEUTRAL: dict[str, float] = {"temperature": 1.0, "top_p": 1.0, "top_k": 0,
                             "repetition_penalty": 1.0}
"""What an unset setting means in the OpenAI API: no transform at all."""
COMMON_OPTIONS = ("defaults", "seed", "threads", *NEUTRAL)


@dataclass(frozen=True)
class Generation:
    prompt_ids: list[int]
    output_ids: list[int]
    """Generated ids, the end token included when the engine stopped on one."""
    logprobs: list[float] | None
    """The engine's own log-prob of each generated token, as it reports it."""
    finished: bool
    """Stopped on an end token (else: on the token limit)."""


def _number(value: str, name: str, spec: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise InputError(f"option {name} must be a number, got {value!r}", where=spec) from None
    if name == "top_k":
        if out != int(out) or out < 0:
            raise InputError(f"option top_k must be a whole number ≥ 0, got {value!r}", where=spec)
        return int(out)
    return out


class EngineTarget(Target):
    """One engine in this process; a subclass opens it and runs one request."""

    engine: ClassVar[str]
    """The engine's name, for records and messages."""
    takes = frozenset()
    extra_options: ClassVar[tuple[str, ...]] = ()
    max_concurrency = 1  # one request at a time: the engine uses the cores itself

    def __init__(self, spec: str, path: Path, opts: dict[str, str]) -> None:
        self.spec = spec
        self.path = path
        mode = opts.get("defaults", "neutral")
        if mode not in ("neutral", "engine"):
            raise InputError(f"defaults must be neutral or engine, not {mode!r}", where=spec)
        self.engine_defaults = mode == "engine"
        self.deployment = {k: _number(opts[k], k, spec) for k in NEUTRAL if k in opts}
        """Defaults the deployment sets for what a request leaves unset (the spec's options)."""
        self.seed = int(_number(opts.get("seed", "0"), "seed", spec))
        self.threads = int(_number(opts.get("threads", "1"), "threads", spec))
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec: str, rest: str) -> EngineTarget:
        where, _, query = rest.partition("?")
        opts = {k: v[-1] for k, v in spec_options(query, (*COMMON_OPTIONS, *cls.extra_options),
                                                  spec).items()}
        path = Path(where)
        if not path.is_dir():
            raise InputError(f"not a folder: expected a model converted for {cls.engine}",
                             where=spec)
        return cls(spec, path, opts)

    @property
    def version(self) -> str:
        return ""

    def settings(self, p: Parameters) -> tuple[dict[str, Any], list[str]]:
        """(each sampling setting as this deployment runs the request, those left to the
        engine's own default). A value of None means: not sent."""
        out: dict[str, Any] = {}
        left = []
        for name, neutral in NEUTRAL.items():
            asked = getattr(p, name)
            if asked is not None:
                out[name] = asked
            elif name in self.deployment:
                out[name] = self.deployment[name]
            elif self.engine_defaults:
                out[name] = None
                left.append(name)
            else:
                out[name] = neutral
        return out, left

    @abstractmethod
    def render(self, request: Request) -> str:
        """The templated prompt, as this deployment builds it."""

    @abstractmethod
    def run(self, prompt: str, settings: dict[str, Any], greedy: bool, max_tokens: int,
            seed: int | None) -> tuple[Generation, dict[str, Any]]:
        """One request on the engine: what it generated and what was sent, in its own names."""

    @abstractmethod
    def text(self, generation: Generation) -> str:
        """The output as the deployment returns it, ending with the end marker when it
        finished (the notes' ``output``)."""

    def _generate_sync(self, request: Request) -> ResponseRecord:
        clock = Stopwatch()
        p = request.parameters
        settings, left = self.settings(p)
        greedy = p.greedy
        prompt = self.render(request)
        with self._lock:
            g, sent = self.run(prompt, settings, greedy, p.max_tokens or DEFAULT_MAX_TOKENS,
                               p.seed)
        sent = {**sent, "server": f"{self.engine} {self.version}".strip()}
        if left:
            sent["server_defaults"] = left
        return ResponseRecord(
            id=request.id, conversations=request.conversation, parameters=p, input=prompt,
            output=self.text(g), target=self.spec,
            finish_reason="stop" if g.finished else "length",
            prompt_token_ids=g.prompt_ids, output_token_ids=g.output_ids,
            output_logprobs=g.logprobs,
            usage=Usage(prompt_tokens=len(g.prompt_ids), completion_tokens=len(g.output_ids)),
            sent=sent, timing=clock.timing())

    async def generate(self, request: Request) -> ResponseRecord:
        return await asyncio.to_thread(self._generate_sync, request)

    def notes(self) -> list[str]:
        if self.engine_defaults:
            return [f"{self.spec}: settings a request leaves unset were left to {self.engine}'s "
                    f"own defaults (defaults=engine); each record's sent.server_defaults lists "
                    f"them"]
        return []

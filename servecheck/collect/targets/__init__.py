"""Targets: where responses come from. One required method, registered lazily.

A target turns a ``Request`` into a ``ResponseRecord``. Each kind is named by the scheme of its
spec (``hf:builtin``, later ``triton://…``, ``openai://…``) and lives in its own module, imported
only when a spec names it, so an optional client library is needed only by those who use it.
``registry`` says which class a scheme opens: servecheck's own, and those an installed package
registers (entry-point group ``servecheck.targets``).

A target that templates on the client or puts back an end marker the server stripped needs a
checkpoint for it, and takes it only from the user: its own ``?template=PATH|builtin`` or
``generate --reference PATH|builtin``, the option winning. Nothing falls back to the built-in
model, whose Gemma template and ``<end_of_turn>`` would be wrong for any other model: where a
target cannot know, it records what the server returned and says so (``Target.notes``), and
where it cannot work at all (a prompt to template) the missing reference is an ``InputError``.
"""

from __future__ import annotations

import functools
import re
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from servecheck.collect.targets.registry import REGISTRY as REGISTRY
from servecheck.collect.targets.registry import TargetInfo as TargetInfo
from servecheck.collect.targets.registry import load, schemes
from servecheck.collect.targets.registry import registered_targets as registered_targets
from servecheck.errors import REDACTED, InputError, TargetError, redact
from servecheck.formats.prompts import Request
from servecheck.formats.records import ResponseRecord

DEFAULT_MAX_TOKENS = 256
"""Sent when a request names no max_tokens, so every target caps generation the same way."""


def spec_options(query: str, known: Iterable[str], spec: str) -> dict[str, list[str]]:
    """The ``?key=value&…`` options of a target spec, every value of each key in order; an
    option the target does not know is bad input, named with the ones it does."""
    known = list(known)
    bare = [part for part in query.split("&") if part and not part.partition("=")[2]]
    if bare:
        raise InputError(f"option(s) {bare} without a value: write key=value (known: "
                         f"{', '.join(known)})", where=spec)
    opts = parse_qs(query)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise InputError(f"unknown option(s) {unknown} (known: {', '.join(known)})", where=spec)
    return opts


def named_reference(template: str | None, reference: str | None) -> str | None:
    """The checkpoint the user named for a target, or None. The spec's own ``?template=`` wins
    over ``generate --reference``: it belongs to this one target, while ``--reference`` is the
    run-wide default that probe and compare may hand to every target they open."""
    return template if template is not None else reference


def required_reference(spec: str, template: str | None, reference: str | None, why: str) -> str:
    """``named_reference`` for a target that cannot work without one (``why``: what it does with
    it); none named is bad input that says how to name one, never a silent built-in."""
    chosen = named_reference(template, reference)
    if chosen is None:
        raise InputError(f"{why}, so it needs the reference checkpoint: name it with "
                         f"'generate --reference PATH|builtin' or the option "
                         f"'?template=PATH|builtin' (servecheck never assumes the built-in model)",
                         where=spec)
    return chosen


def _redacting(generate: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``generate`` whose every escaping error is cleared of the target's secrets.

    A server may quote the key back anywhere: an error body, an SSE error frame, an info
    endpoint, a gRPC status. Each path that builds a message could be made to redact it, and a
    new one would forget; so the one door every message leaves a target by does it, whatever
    raised it. Other exceptions (a servecheck bug) have their text arguments cleared too, for
    whatever prints them."""

    @functools.wraps(generate)
    async def wrapper(self: Target, request: Any) -> Any:
        try:
            return await generate(self, request)
        except TargetError as e:
            raise e.redacted(self.secrets) from None
        except Exception as e:
            e.args = tuple(redact(a, self.secrets) if isinstance(a, str) else a for a in e.args)
            raise

    wrapper.redacting = True  # type: ignore[attr-defined]
    return wrapper


class Target(ABC):
    """A model behind some interface. Subclasses implement ``generate``; the rest is optional.

    Every subclass's ``generate`` is wrapped (``__init_subclass__``) so that no error leaves it
    carrying one of the target's ``secrets``."""

    spec: str
    max_concurrency: int = 1
    """How many requests the collector may have in flight at once."""
    takes_reference: ClassVar[bool] = False
    """Whether ``from_spec`` takes ``reference=``: True for a target that templates on the client
    or restores end markers. One that serves a checkpoint itself (``hf:``) has its own and is
    opened without it, so ``generate --reference`` does not reach it."""

    takes: ClassVar[frozenset[str]] = frozenset({"tools", "chat_template_kwargs",
                                                 "reasoning_effort"})
    """The newer request fields this target sends (``REQUEST_FIELDS``). A request that sets one
    it does not take is refused before anything is sent, never sent without it. Tools and
    template variables reach any target that templates with the reference."""
    lacks: ClassVar[frozenset[str]] = frozenset()
    """Sampling settings the engine behind this target has no way to apply (``min_p`` on
    CTranslate2). A request that sets one to anything but its neutral value is refused before
    anything is sent: the record would claim a setting the engine never ran."""

    secrets: tuple[str, ...] = ()
    """Values no message may carry (the API key read from the environment): a target that
    sends one sets it, and ``generate``'s errors are redacted with it."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("generate")
        if own is not None and not getattr(own, "redacting", False):
            cls.generate = _redacting(own)  # type: ignore[method-assign]

    @classmethod
    def from_spec(cls, spec: str, rest: str, reference: str | None = None) -> Target:
        """Open the target ``spec`` names (``rest``: the spec after ``scheme:``). ``reference`` is
        the checkpoint of ``generate --reference`` (None: the user named none); it is passed only
        when ``takes_reference`` is set. What ``open_target`` calls; every registered class has it."""
        raise NotImplementedError(f"{cls.__name__} cannot be opened from a spec")

    @abstractmethod
    async def generate(self, request: Request) -> ResponseRecord | list[ResponseRecord]:
        """Answer one request: a record, or one per choice when it asks for ``n``. Raise
        ``TargetError`` for a failure of this request only."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release models or other resources (outside the event loop)."""

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, inside the collector's event loop."""

    def notes(self) -> list[str]:
        """What the user must know about how this target's records are made (an end marker it
        cannot restore, say): ``generate`` prints each once per run, rather than once a record."""
        return []


REQUEST_FIELDS = ("tools", "chat_template_kwargs", "stop", "n", "tool_choice", "reasoning_effort",
                  "response_format", "structured_outputs")


def request_fields(request: Request) -> set[str]:
    """The newer fields a request sets."""
    conv, p = request.conversation, request.parameters
    values = {"tools": conv.tools, "chat_template_kwargs": conv.chat_template_kwargs,
              "stop": p.stop, "n": p.n, "tool_choice": p.tool_choice,
              "reasoning_effort": p.reasoning_effort, "response_format": p.response_format,
              "structured_outputs": p.structured_outputs}
    return {k for k, v in values.items() if v is not None}


NEUTRAL_VALUES = {"min_p": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                  "repetition_penalty": 1.0, "top_k": 0, "top_p": 1.0}


def refuse_unsupported(requests: list[Request], target: Target) -> None:
    """Bad input, before any request is sent, when a request sets a field the target cannot."""
    for request in requests:
        lacked = sorted(name for name in target.lacks if getattr(request.parameters, name)
                        not in (None, NEUTRAL_VALUES.get(name)))
        if lacked:
            raise InputError(f"{type(target).__name__} has no way to apply {', '.join(lacked)} "
                             f"(request {request.id}): leave "
                             f"{'it' if len(lacked) == 1 else 'them'} out of the prompts file "
                             f"for this target", where=target.spec)
        missing = sorted(request_fields(request) - target.takes)
        if missing:
            raise InputError(f"{type(target).__name__} does not send {', '.join(missing)} "
                             f"(request {request.id}): it would answer as if unset; leave "
                             f"{'it' if len(missing) == 1 else 'them'} out of the prompts file "
                             f"for this target", where=target.spec)


def open_target(spec: str, reference: str | None = None) -> Target:
    """The target a spec names; ``reference`` (``generate --reference``) goes to those that take
    one (``Target.takes_reference``), a spec's own ``?template=`` winning over it."""
    scheme, sep, rest = spec.partition(":")
    known = schemes()  # built-ins and installed packages' (``registry``)
    if not sep or scheme not in known:
        raise InputError(f"unknown target (known: {', '.join(f'{s}:…' for s in known)})",
                         where=spec)
    _refuse_userinfo(spec, rest)
    value, source = known[scheme]
    cls = load(scheme, value, source)
    if not (isinstance(cls, type) and issubclass(cls, Target)):
        raise InputError(f"{value}, registered for {scheme}: by {source}, is not a "
                         f"servecheck Target class", where=spec)
    _check_port(rest, spec)
    if cls.takes_reference:
        return cls.from_spec(spec, rest, reference=reference)
    return cls.from_spec(spec, rest)


_USERINFO = re.compile(r"(?<=//)[^/?#]*@")
"""The userinfo of a URL-shaped spec: what follows ``//`` up to the last ``@`` of the host."""


def _refuse_userinfo(spec: str, rest: str) -> None:
    """``openai://user:password@host`` would write the password into every record's
    ``target`` and send it nowhere (no target sends URL credentials): refused, and named with
    the credentials cut out, since this message reaches the console too."""
    if rest.startswith("//") and "@" in urlsplit("http:" + rest).netloc:
        raise InputError("credentials in the target spec are never sent, and would be written "
                         "into every record: put the key in an environment variable and name "
                         "it with the option ?api_key_env=NAME (openai://, hf-endpoint://)",
                         where=_USERINFO.sub(f"{REDACTED}@", spec, count=1))


def _check_port(rest: str, spec: str) -> None:
    """urllib raises a bare ValueError on ``:99999`` or ``:abc`` when a target reads its port;
    named here, once, for every URL-shaped spec."""
    if not rest.startswith("//"):
        return
    try:
        ok = urlsplit("http:" + rest).port != 0  # parses and range-checks the port
    except ValueError:
        ok = False
    if not ok:
        port = urlsplit("http:" + rest).netloc.rpartition(":")[2]
        raise InputError(f"the port must be a whole number from 1 to 65535, got {port!r}",
                         where=spec)

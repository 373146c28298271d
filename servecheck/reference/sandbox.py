"""Bounds on rendering a checkpoint's chat template: its time, and the size of what it builds.

A chat template is code from the checkpoint. transformers runs it in Jinja's
``ImmutableSandboxedEnvironment``, which stops it reaching Python's internals but not from
running long or allocating much: ``{{ 10 ** 10 ** 10 }}`` computed for minutes (in one C call,
at compile time: Jinja folds constants), ``{{ 'x' * 10**10 }}`` asked for 10 GB. Two bounds,
both raising ``TemplateTooCostly`` (bad input, naming the checkpoint and the flag that raises
the bound):

- **Size.** ``transformers.utils.chat_template_utils`` makes its environment from the module's
  ``ImmutableSandboxedEnvironment``; ``install`` puts a subclass there (and empties transformers'
  cache of compiled templates) that intercepts ``*``, ``**`` and ``+`` through Jinja's own hook
  for sandboxes (``intercepted_binops`` / ``call_binop``, which also stops constant folding of
  them at compile time) and refuses a result that would exceed the bounds *before* it is
  computed; and whose ``concat``, which joins the rendered output and every block, stops at
  ``max_chars``. Everything else is transformers' own environment (filters, globals,
  extensions), and an operation within bounds is the operation itself, so the rendering is
  byte-identical. Where transformers no longer has that module attribute, ``install`` says so
  and only the time bound holds.
- **Time.** ``SIGALRM`` via ``setitimer`` around each render, in the main thread (a signal is
  delivered nowhere else); an outer timer (a test harness's ``alarm``) is left to fire first
  and re-armed afterwards. A render in another thread has the size bounds only.

Not bounded: ``~`` (Jinja joins it outside the environment) and width arguments of filters
(``center(10**9)``); the time bound catches the slow ones, not one huge allocation.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache

from servecheck.errors import InputError


@dataclass(frozen=True)
class TemplateLimits:
    timeout_s: float = 10.0
    """Wall-clock seconds for one render (compiling included)."""
    max_chars: int = 16 * 2**20
    """Characters of output, and of any string or list the template builds with ``*``/``+``."""


DEFAULT_LIMITS = TemplateLimits()
MAX_INT_BITS = 2**16
"""The largest integer ``*`` or ``**`` may make: far past what a template can print (Python
writes at most 4300 digits, ~14,000 bits), and microseconds to compute."""
_limits: ContextVar[TemplateLimits] = ContextVar("template_limits", default=DEFAULT_LIMITS)


class TemplateTooCostly(InputError):
    """A chat template ran past a bound: the checkpoint's fault, whichever conversation it
    was rendering (callers that wrap a render's error per record let this one through)."""


class _TooLarge(Exception):
    """Raised inside Jinja by the bounded environment; ``bounded_render`` names it.
    ``flag``: the flag that raises the bound passed (none for the integer bound)."""

    def __init__(self, message: str, flag: str | None = "--template-max-mb MB") -> None:
        super().__init__(message)
        self.flag = flag


class _Timeout(Exception):
    """Raised inside Jinja by the timer's signal handler."""


@contextmanager
def template_limits(limits: TemplateLimits) -> Iterator[None]:
    """Within the block, every render is bounded by ``limits`` (the command line's flags)."""
    token = _limits.set(limits)
    try:
        yield
    finally:
        _limits.reset(token)


def current_limits() -> TemplateLimits:
    return _limits.get()


@contextmanager
def bounded_render(where: str) -> Iterator[None]:
    """Run a render (``apply_chat_template``) under the current limits; a bound it passes is a
    ``TemplateTooCostly`` naming ``where`` (the checkpoint)."""
    install()
    limits = _limits.get()
    try:
        with _deadline(limits.timeout_s):
            yield
    except _Timeout:
        raise TemplateTooCostly(f"the chat template took over {limits.timeout_s:g} s to render "
                                f"(raise with --template-timeout S)", where=where) from None
    except _TooLarge as e:
        how = f"raise with {e.flag}" if e.flag else "no chat template needs one"
        raise TemplateTooCostly(f"the chat template {e} ({how})", where=where) from None


def check_output(text: object, where: str) -> None:
    """A rendering longer than ``max_chars`` (where ``concat`` could not see it whole)."""
    limit = _limits.get().max_chars
    if isinstance(text, str) and len(text) > limit:
        raise TemplateTooCostly(f"the chat template rendered over {_mib(limit)} (raise with "
                                f"--template-max-mb MB)", where=where)


def install() -> bool:
    """Make transformers compile chat templates in the bounded environment (once per process;
    idempotent). False where its module no longer has the hook: then only the time bound holds."""
    try:
        import transformers.utils.chat_template_utils as ctu
    except ImportError:
        return False
    base = getattr(ctu, "ImmutableSandboxedEnvironment", None)
    compiled = getattr(ctu, "_compile_jinja_template", None)
    if not isinstance(base, type) or not hasattr(compiled, "cache_clear"):
        return False
    bounded = _bounded_environment()
    if base is not bounded:
        if not issubclass(bounded, base):
            return False  # another environment class than the one the subclass extends
        ctu.ImmutableSandboxedEnvironment = bounded
        compiled.cache_clear()  # templates compiled before now lack the interception
    return True


@lru_cache(maxsize=1)
def _bounded_environment() -> type:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """transformers' sandbox, with ``*``, ``**``, ``+`` and the output size bounded."""

        intercepted_binops = frozenset({"*", "**", "+"})

        def call_binop(self, context, operator: str, left, right):  # Jinja's signature
            _check_binop(operator, left, right, _limits.get())
            return super().call_binop(context, operator, left, right)

        def concat(self, parts: Iterable[str]) -> str:  # type: ignore[override]
            limit = _limits.get().max_chars
            kept: list[str] = []
            size = 0
            for part in parts:
                size += len(part)
                if size > limit:
                    raise _TooLarge(f"rendered over {_mib(limit)}")
                kept.append(part)
            return "".join(kept)

    return BoundedSandbox


def _check_binop(operator: str, left: object, right: object, limits: TemplateLimits) -> None:
    """Refuse ``left operator right`` when its result would pass a bound, before computing it."""
    sized = (str, list, tuple)
    items = 0
    if operator == "*" and isinstance(left, sized) and isinstance(right, int):
        items = len(left) * right
    elif operator == "*" and isinstance(right, sized) and isinstance(left, int):
        items = len(right) * left
    elif operator == "+" and isinstance(left, sized) and isinstance(right, sized):
        items = len(left) + len(right)
    if items > limits.max_chars:
        raise _TooLarge(f"builds a value of {items:,} items with '{operator}', over "
                        f"{_mib(limits.max_chars)}")
    if not (isinstance(left, int) and isinstance(right, int)):
        return
    if operator == "*":
        bits = left.bit_length() + right.bit_length()
    elif operator == "**" and right > 0 and abs(left) > 1:
        bits = right * math.log2(abs(left))
    else:
        return
    if bits > MAX_INT_BITS:
        raise _TooLarge(f"computes an integer over {MAX_INT_BITS:,} bits with '{operator}'", None)


def _mib(chars: int) -> str:
    return f"{chars / 2**20:g} Mi characters"


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """``_Timeout`` raised in the block after ``seconds`` of wall-clock time (main thread only).
    An interval timer already running (another deadline, a harness's ``alarm``) keeps its own
    deadline: when it would fire first this one stands aside, else it is re-armed after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    if outer_left and outer_left <= seconds:
        yield
        return
    previous = signal.getsignal(signal.SIGALRM)

    def expired(signum: int, frame: object) -> None:
        raise _Timeout

    start = time.monotonic()
    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)
            if outer_left:
                left = max(outer_left - (time.monotonic() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, outer_interval)

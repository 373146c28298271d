"""A Ctrl-C that lands while a finalizer runs is dropped by Python ("Exception ignored in
__del__"); within ``noted`` it is still raised, at the next chunk. The signal is real (sent to
this process); the finalizer stands for one a garbage-collection pass runs (``regex``'s, seen
in CI to swallow the Ctrl-C of a chunked run, which then ran to its end)."""

from __future__ import annotations

import os
import signal

import pytest

from servecheck.workflows.interrupts import noted


class _Interrupted:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)  # handled while this finalizer runs
        for _ in range(10_000):  # bytecodes for the handler to run in
            pass


def test_a_ctrl_c_a_finalizer_swallows_is_lost_as_python_has_it() -> None:
    x = _Interrupted()
    del x  # prints "Exception ignored in …": nothing is raised here


def test_a_ctrl_c_a_finalizer_swallows_is_raised_at_the_next_chunk() -> None:
    with noted() as lost:
        lost()  # none came yet
        x = _Interrupted()
        del x
        with pytest.raises(KeyboardInterrupt):
            lost()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_raises_at_once_as_before() -> None:
    with noted(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(10_000):
            pass

"""Deferred Ctrl-C/SIGTERM: a signal stops the tool only at safe places, never half-way through a write."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tuner import interrupt


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_outside_a_wait_is_held_until_the_next_checkpoint(signum: int) -> None:
    with interrupt.handling():
        os.kill(os.getpid(), signum)
        time.sleep(0.05)  # the handler has run by now (signals are handled between bytecodes)
        # Recorded, not raised: the code that was running (a storage write, say) carries on to its end.
        assert interrupt.requested() == signum
        # The next safe place raises it.
        with pytest.raises(KeyboardInterrupt):
            interrupt.checkpoint()


def test_a_signal_inside_a_wait_raises_at_once() -> None:
    with interrupt.handling():
        started = time.monotonic()
        # A 10 s sleep inside interruptible() is cut short by the signal, as a wait on a worker would be.
        with pytest.raises(KeyboardInterrupt), interrupt.interruptible():
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            previous = signal.signal(signal.SIGALRM, lambda *_: os.kill(os.getpid(), signal.SIGTERM))
            try:
                time.sleep(10)
            finally:
                signal.signal(signal.SIGALRM, previous)
        assert time.monotonic() - started < 5


def test_a_pending_signal_raises_on_entering_a_wait() -> None:
    with interrupt.handling():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        # Received during bookkeeping: the next wait is not started.
        with pytest.raises(KeyboardInterrupt), interrupt.interruptible():
            pytest.fail("the wait body ran although a stop was pending")


def test_a_second_signal_raises_wherever_it_lands() -> None:
    with interrupt.handling(), pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        # The user insists: the second one raises at once, outside any wait.
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)


def test_handlers_are_restored_and_the_state_is_cleared_after() -> None:
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interrupt.handling():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)
    # Leaving handling() puts back what was there and forgets the held signal.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert interrupt.requested() is None

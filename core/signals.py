"""Signals while a command works: SIGTERM and SIGHUP unwind like Ctrl-C (`exit_on_signals`), a signal whose
exception a finalizer swallowed is raised again at the next safe point (`raise_pending_signal`), and a block an
exception must not enter part-way holds signals until it ends (`signals_held`).

Python's default for SIGTERM and SIGHUP ends the process on the spot: no `finally`, no `with` cleanup, so
xtm.atomic's temporaries and half-made staging directories would stay behind. Training has its own handler
(xtm.trainer.loop.stopping.StopFlag: it stops at a step boundary and checkpoints).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

__all__ = ["STOP_SIGNALS", "exit_on_signals", "raise_pending_signal", "signals_held"]

# The signals that ask a command to stop: Ctrl-C, a service manager's stop, a closed terminal.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)

# The signal exit_on_signals last turned into an exception, until it is raised again or the outermost block
# ends. Python runs a handler between bytecodes of the main thread, which may be inside a finalizer (__del__, a
# weakref callback): an exception raised there is printed as "Exception ignored in ..." and lost, and the command
# went on (1 load in 14 in a review). A long command checks it at its next safe point (raise_pending_signal).
_pending: int | None = None
_depth = 0  # exit_on_signals blocks open (nested in one thread)


def raise_pending_signal() -> None:
    """Raise again a signal whose exception was lost (see _pending): KeyboardInterrupt for SIGINT, else
    SystemExit(128 + its number). Called where work would start that a signal must not let begin (training)."""
    global _pending
    pending, _pending = _pending, None  # raised once: what catches it decides what follows
    if pending is None:
        return
    if pending == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + pending)


@contextmanager
def exit_on_signals(signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGHUP)) -> Iterator[None]:
    """While active, SIGTERM/SIGHUP raise SystemExit(128 + signal number) in the main thread.

    Their default action ends the process on the spot: `with atomic_open(...)` blocks never run
    their cleanup and multi-hundred-MB temporaries stay behind. As an exception they unwind like
    Ctrl-C does. Further signals are ignored while the first one unwinds (a second SIGTERM would
    otherwise interrupt the cleanup). A signal already ignored stays ignored (`nohup` ignores SIGHUP so that a
    closed terminal does not end the command: it did, exit 129). Outside the main thread this does nothing
    (Python allows handlers only there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    global _pending, _depth
    signals = tuple(s for s in signals if signal.getsignal(s) is not signal.SIG_IGN)
    previous = {s: signal.getsignal(s) for s in signals}

    def handler(signum: int, _frame: Any) -> None:
        global _pending
        _pending = signum
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    def interrupt(signum: int, _frame: Any) -> None:  # Ctrl-C as Python's own handler, remembered
        global _pending
        _pending = signum
        raise KeyboardInterrupt

    for s in signals:
        signal.signal(s, handler)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        previous[signal.SIGINT] = signal.default_int_handler
        signal.signal(signal.SIGINT, interrupt)
    _depth += 1
    try:
        yield
    finally:
        _depth -= 1
        if _depth == 0:  # the outermost block ends (a nested one keeps what is remembered for its outer one)
            _pending = None
        for s, h in previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


@contextmanager
def signals_held(signals: tuple[int, ...] = STOP_SIGNALS, on_hold: Callable[[int], None] | None = None
                 ) -> Iterator[None]:
    """Run a block that an exception must not enter part-way: a signal that comes meanwhile is held, and
    delivered to the handler installed before (exit_on_signals', Python's Ctrl-C, a library user's own) as soon
    as the block ends. A second signal while one is held ends the holding at once: the handlers are put back and
    every held signal is delivered, in order (the user insists; what the block protects is then theirs to lose).
    A signal that was ignored (SIG_IGN: SIGINT in a background job) stays ignored and is never held.

    For torch's dynamo exporter: SystemExit raised from a handler inside its traced frames crashed xtm-export
    with SIGSEGV (exit -11 instead of 143, seen under load in the test suite) instead of ending it cleanly.
    `on_hold(signum)` is called when the first signal is held, so the user hears that it was (a Ctrl-C that
    seems ignored is pressed again). Outside the main thread it does nothing (handlers belong to the main
    thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # Not held: an ignored signal, and one whose handler was set outside Python (None: it could not be put back).
    previous = {s: h for s in signals if (h := signal.getsignal(s)) is not signal.SIG_IGN and h is not None}
    held: list[int] = []
    restored = False

    def restore() -> None:  # once: a handler's own changes afterwards (exit_on_signals ignoring more) are kept
        nonlocal restored
        if not restored:
            restored = True
            for s, h in previous.items():
                signal.signal(s, h)

    def hold(signum: int, _frame: Any) -> None:
        held.append(signum)
        if len(held) > 1:
            restore()
            _deliver(held)
        elif on_hold is not None:
            with suppress(Exception):  # saying so must never be what breaks the block
                on_hold(signum)

    try:
        for s in previous:
            signal.signal(s, hold)
        yield
    finally:
        if not restored:
            restore()
            _deliver(held)


def _deliver(signums: list[int]) -> None:
    """Raise each signal again, in order, through the handlers now installed (one that raises ends the list)."""
    pending, signums[:] = list(signums), []
    for signum in pending:
        signal.raise_signal(signum)

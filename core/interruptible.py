"""Long C calls that Ctrl-C still interrupts at once.

Python runs a signal handler only between the main thread's bytecodes, so a KeyboardInterrupt waits for a
C call to return: sklearn's SVM fits hold the main thread for minutes on the benchmark corpora (the
published protocol's RBF SVC on ECNews's 40,000 documents a language), and "Ctrl-C to skip" at the end of
a run waited that long. `interruptible` runs such a call in a worker thread (sklearn's SVMs release the
GIL) while the main thread waits in short joins, where the handler runs at once.

A worker left running cannot be stopped, and the interpreter must not tear down under it: a process that
exited while one was inside libsvm died of SIGSEGV (measured). Commands leave through `exit_now`, which
skips the teardown when a worker still runs; any other program waits for its workers at exit (atexit).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

logger = logging.getLogger("xtm")

# Workers abandoned to a signal, by the event each sets when it ends. Their own flag, not is_alive():
# after a join that a KeyboardInterrupt cut short, CPython 3.11 reports a running thread as not alive.
_abandoned: list[threading.Event] = []


def interruptible(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """fn(*args, **kwargs), with signals handled while it runs.

    On a KeyboardInterrupt (or any exception a signal handler raises) the worker is left to finish on its
    own and its result is dropped: give it only values nothing else writes to. Outside the main thread,
    where no handler runs anyway, fn is called directly.
    """
    if threading.current_thread() is not threading.main_thread():
        return fn(*args, **kwargs)
    box: dict[str, Any] = {}
    began, done = threading.Event(), threading.Event()

    def work() -> None:
        began.set()
        try:
            box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller as it is
            box["error"] = e
        finally:
            done.set()

    try:
        # started inside: a signal can land in start() itself, before or after the worker exists
        threading.Thread(target=work, name="xtm-interruptible", daemon=True).start()
        while not done.wait(0.1):
            pass
    except BaseException:
        if not _abandoned:
            atexit.register(_wait_for_abandoned)
        _abandoned.append(done)
        if not began.wait(1.0):
            done.set()  # the signal came before the worker was created: it never runs
        raise
    if "error" in box:
        raise box["error"]
    return box["value"]


def running_abandoned() -> bool:
    """Whether a worker left to a signal is still running."""
    return any(not done.is_set() for done in _abandoned)


def exit_now(code: int) -> NoReturn:
    """sys.exit(code), or, while an abandoned worker still runs, leave without the interpreter's teardown
    (after flushing what was written): it would crash under the worker instead of exiting with `code`."""
    if running_abandoned():
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


def _wait_for_abandoned() -> None:
    if running_abandoned():
        logger.info("waiting for an interrupted computation to end before exiting")
    for done in _abandoned:
        done.wait()

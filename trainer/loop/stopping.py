"""Stopping training on a signal: SIGINT (Ctrl-C), SIGTERM or SIGHUP end it at a step boundary (at once inside an
abandonable section, such as an evaluation, or on a second signal).

`StopFlag` is the handler the training loop (xtm.trainer.loop.training) installs for one run. It is apart
from the loop because it knows nothing of models, data or checkpoints: only when a signal may end work at once
and when it must wait.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from xtm.signals import STOP_SIGNALS, raise_pending_signal

__all__ = ["StopFlag"]


class StopFlag:
    """SIGINT (Ctrl-C), SIGTERM, SIGHUP while training: finish the current step, checkpoint, stop.

    The first signal is only recorded, never raised mid-step: a half-applied optimizer step could
    not be resumed exactly. A second one stops at once (KeyboardInterrupt), except inside a
    critical section (the optimizer step and its bookkeeping), which it lets finish first. Inside
    an abandonable section (the `--eval-every` evaluation: minutes of SVM fits on a large corpus;
    a phase-2 refinement: minutes of LLM answers; neither needed by a checkpoint) the first one
    stops at once too. Printing is left to the loop: writing to stderr from a handler can collide
    with tqdm's own writes.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.last: int | None = None
        self.critical = False
        self.abandonable = False
        self.forced = False
        self._previous: dict[int, Any] = {}

    @property
    def stop(self) -> bool:
        return self.signum is not None

    def __call__(self, signum: int, frame: Any) -> None:
        self.last = signum
        first = self.signum is None
        if first:
            self.signum = signum
        if self.critical:
            self.forced = self.forced or not first
        elif not first or self.abandonable:
            raise KeyboardInterrupt

    def install(self) -> None:
        # A signal that came while the data loaded and whose exception a finalizer swallowed stops the run here,
        # before its first step (xtm.signals._pending).
        raise_pending_signal()
        if _in_main_thread():
            for s in STOP_SIGNALS:
                if signal.getsignal(s) is signal.SIG_IGN:  # nohup's SIGHUP, a background job's SIGINT: still ignored
                    continue
                previous = signal.signal(s, self)
                self._previous[s] = previous if previous is not None else signal.SIG_DFL

    def restore(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    @contextlib.contextmanager
    def abandonable_section(self) -> Iterator[None]:
        """Work a signal may end at once; one that came just before it stops it from starting."""
        if self.stop:
            raise KeyboardInterrupt
        self.abandonable = True
        try:
            yield
        finally:
            self.abandonable = False

    def enter(self) -> None:
        self.critical = True

    def leave(self) -> None:
        self.critical = False
        if self.forced:
            raise KeyboardInterrupt


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

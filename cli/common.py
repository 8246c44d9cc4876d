"""What every xtm command shares: user errors become one clean line and exit code 2."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from xtm.errors import XtmError


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised like Ctrl-C so outputs being written are cleaned up (xtm.atomic)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


def stop_on_signals() -> None:
    """SIGTERM and SIGHUP end the command as Ctrl-C does: clean up, exit 128 + the signal's number.

    (By default they kill the process on the spot, leaving temporary files behind.) Training
    replaces these handlers with its own while it trains (xtm.trainer.loop: save, then stop).
    """
    for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if s is not None:
            signal.signal(s, _raise_interrupted)


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors -> `error: ...` and exit 2; interrupts -> exit 128 + signal (130 for Ctrl-C)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except XtmError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt as e:
            click.echo("interrupted", err=True)
            sys.exit(128 + getattr(e, "signum", signal.SIGINT))
        except BrokenPipeError:
            raise  # the reader went away (`| head`): not a user error to report
        except OSError as e:
            # The environment refused (read-only or full disk, permissions, /proc): say what and where.
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(2)

    return wrapper

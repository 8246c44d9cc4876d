"""What every xtm command shares: user errors become one clean line and exit code 2, and the
library's log records (`logging.getLogger("xtm...")`) reach the terminal as `PROG: message` lines.

Library code never prints: it logs, and the command that runs it decides what goes to the terminal.
Used as a library, xtm stays quiet except for warnings (Python's last-resort handler).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click

from xtm.errors import XtmError


def friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors and refusals of the system (a read-only or full disk, /proc) -> `error: ...`, exit 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except XtmError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:
            raise  # the reader went away (`| head`): not a user error to report
        except OSError as e:
            # The environment refused (read-only or full disk, permissions, /proc): say what and where.
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            sys.exit(2)

    return wrapper


class _CommandFormatter(logging.Formatter):
    """`xtm-train: message`, and `xtm-train: warning: message` for warnings and errors."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{self.prog}: warning: {msg}"
        return f"{self.prog}: {msg}"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when the record is emitted (tests and tqdm swap it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def setup_logging(prog: str, level: int = logging.INFO) -> None:
    """Send the `xtm` loggers' records to stderr as `PROG: message` lines, once per process.

    Under torchrun only rank 0 reports progress; other ranks keep warnings and errors.
    """
    root = logging.getLogger("xtm")
    for h in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(h)
    handler = _StderrHandler()
    handler.setFormatter(_CommandFormatter(prog))
    root.addHandler(handler)
    rank = os.environ.get("RANK", "0")
    root.setLevel(level if rank in ("", "0") else max(level, logging.WARNING))
    root.propagate = False

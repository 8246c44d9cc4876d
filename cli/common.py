"""What every xtm command shares: user errors become one clean line and exit code 2, and the
library's log records (`logging.getLogger("xtm...")`) reach the terminal as `PROG: message` lines.

Library code never prints: it logs, and the command that runs it decides what goes to the terminal.
Used as a library, xtm stays quiet except for warnings (Python's last-resort handler).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from functools import wraps
from typing import Any

import click

from xtm import __version__
from xtm.errors import XtmError
from xtm.interruptible import exit_now, running_abandoned

# Distributions --version names beside xtm's own version (looked up in metadata, never imported).
_VERSION_OF = ("onnxruntime", "onnxruntime-gpu", "torch")
LOG_LEVELS = ("debug", "info", "warning", "error")


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
            exit_now(130)  # not sys.exit: a computation Ctrl-C left running (xtm.interruptible) must not crash it
        except SystemExit as e:
            # SIGTERM / SIGHUP (exit_on_signals), or an exit code chosen after one: the same care
            if running_abandoned():
                exit_now(0 if e.code is None else e.code if isinstance(e.code, int) else 1)
            raise
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
    if not getattr(warnings.showwarning, "xtm_command", False):
        warnings.showwarning = _command_warning(warnings.showwarning)


def _command_warning(show: Callable[..., Any]) -> Callable[..., Any]:
    """warnings.showwarning for a command: a warning xtm's own code raised is a `PROG: warning: message` line like
    every other (it was printed as `/path/to/xtm/trainer/run.py:201: UserWarning: message` and its source
    line); a library's keeps Python's form, which says where it came from."""

    def command_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                        file: Any = None, line: str | None = None) -> None:
        if file is None and _in_xtm(filename):
            logging.getLogger("xtm").warning("%s", message)
            return
        show(message, category, filename, lineno, file, line)

    command_warning.xtm_command = True  # type: ignore[attr-defined]
    return command_warning


def _in_xtm(filename: str) -> bool:
    # xtm's packages are several directories in an editable install (core/, trainer/, ...), one when installed.
    dirs = {os.path.dirname(os.path.abspath(m.__file__)) + os.sep for name, m in list(sys.modules.items())
            if (name == "xtm" or name.startswith("xtm.")) and getattr(m, "__file__", None)}
    path = os.path.abspath(filename)
    return any(path.startswith(d) for d in dirs)


def version_option(prog: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--version`: `PROG (xtm) VERSION`, then the installed ONNX Runtime and torch versions, which a
    bug report needs (from their metadata: nothing is imported)."""

    def show(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
        if not value or ctx.resilient_parsing:
            return
        import importlib.metadata

        lines = [f"{prog} (xtm) {__version__}"]
        for dist in _VERSION_OF:
            try:
                lines.append(f"{dist} {importlib.metadata.version(dist)}")
            except importlib.metadata.PackageNotFoundError:
                continue
        click.echo("\n".join(lines))
        ctx.exit(0)

    return click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=show,
                        help="Show the version (and those of onnxruntime and torch) and exit.")


def log_level_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`-v/--verbose` (debug lines: bundle, providers, timings), `-q/--quiet` (warnings only) and
    `--log-level LEVEL`; the command gets `log_level` (a logging level) from `resolve_log_level`."""
    fn = click.option("--log-level", type=click.Choice(LOG_LEVELS, case_sensitive=False),
                      help="Lines on stderr from this level up (default info: progress and summary).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr (= --log-level "
                      "warning).")(fn)
    return click.option("-v", "--verbose", is_flag=True, help="Also debug lines: the bundle, the execution "
                        "providers in use, timings (= --log-level debug).")(fn)


def resolve_log_level(verbose: bool, quiet: bool, log_level: str | None) -> int:
    """The logging level of -v / -q / --log-level (one of them at most)."""
    given = [name for name, on in (("-v", verbose), ("-q", quiet), ("--log-level", log_level)) if on]
    if len(given) > 1:
        raise XtmError(f"{' and '.join(given)} contradict each other: give one")
    if log_level:
        return int(getattr(logging, log_level.upper()))
    return logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO


def require_modules(prog: str, install: str, imported: Sequence[str], present: Sequence[str] = ()) -> None:
    """XtmError naming the install line when a module the command needs is missing.

    imported: imported now (the command imports them next anyway; a broken install shows here,
    with its reason). present: only looked up, for modules the command imports later or on some
    paths only. A runtime-only install (`pip install xtm`) has no torch: xtm-train, xtm-export and
    xtm-contextual then say TRAIN_INSTALL and exit 2 instead of a traceback."""
    for name in imported:
        try:
            importlib.import_module(name)
        except ImportError as e:
            detail = "" if isinstance(e, ModuleNotFoundError) and e.name == name else f" ({e})"
            raise XtmError(f"{prog} needs {name}, which is not installed{detail}: {install}") from e
    for name in present:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise XtmError(f"{prog} needs {name}, which is not installed: {install}")


def check_cache_settings() -> None:
    """A bad $XTM_EMBEDDINGS_CACHE_MB is said when the command starts, not after the training it would follow."""
    from xtm.models_zoo.embedding_cache import cache_budget

    cache_budget()

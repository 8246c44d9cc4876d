"""What every xtm command shares: user errors become one clean line and exit code 2."""

from __future__ import annotations

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

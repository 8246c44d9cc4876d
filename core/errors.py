"""User-facing errors: one exception type the CLI turns into a clean message, never a traceback."""

from __future__ import annotations

import errno
from pathlib import Path

# What a runtime-only install is told to run for training, export and the contextual fit. torch first, as the
# README does: with no torch installed, the extra's plain `torch` requirement pulls a multi-GB CUDA build.
TRAIN_INSTALL = 'pip install torch==2.13.0 "xtm[train]" (a CPU torch; for a GPU, your CUDA build of torch first)'


class XtmError(ValueError):
    """An error caused by user input (a file, a flag, a setting), with where it happened.

    A ValueError: what it reports is a bad value (a file's content, a flag, an argument), so code
    that handles bad values in general (`except ValueError`, sklearn-style checks) handles it too.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | Path | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = str(path) if path is not None else None
        self.line = line
        self.field = field
        self.reason = message
        where = ""
        if self.path is not None:
            where = self.path
            if line is not None:
                where += f":{line}"
            where += ": "
        if field is not None:
            message = f"field '{field}': {message}"
        super().__init__(where + message)


class BundleChangedError(XtmError):
    """The bundle directory no longer holds the bundle a TopicModel loaded (re-exported or replaced in place, a
    redeploy): the model cannot read the rest of its files. Load it again; retrying the same model fails alike."""


class TransientError(XtmError):
    """The system ran short for a moment (open files, memory, a resource busy): nothing is wrong with the input or
    the bundle, and the same call may succeed when retried. A service answers it as its own failure (503), not the
    caller's."""


# errnos of a shortage that passes: too many open files (this process or the system), no memory or buffers, a
# resource busy for a moment.
_TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS, errno.EAGAIN, errno.EBUSY})


def os_error(message: str, e: OSError, path: str | Path | None = None) -> XtmError:
    """The XtmError for an OSError met while reading `path`: TransientError for a passing shortage (its strerror
    said), else XtmError(message)."""
    if e.errno in _TRANSIENT_ERRNOS:
        return TransientError(f"{e.strerror or type(e).__name__}: a passing shortage of this system, retry", path=path)
    return XtmError(message, path=path)


def exception_text(e: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception raised by a third-party library, for an XtmError's one line:
    whitespace runs (newlines included) become one space, unprintable characters '?', at most `limit`
    characters of message (transformers and sentence-transformers raise pages of advice)."""
    message = " ".join(str(e).split())[:limit]
    return f"{type(e).__name__}: " + "".join(c if c.isprintable() else "?" for c in message)

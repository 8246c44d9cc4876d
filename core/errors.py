"""User-facing errors: one exception type the CLI turns into a clean message, never a traceback."""

from __future__ import annotations

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


def exception_text(e: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception raised by a third-party library, for an XtmError's one line:
    whitespace runs (newlines included) become one space, unprintable characters '?', at most `limit`
    characters of message (transformers and sentence-transformers raise pages of advice)."""
    message = " ".join(str(e).split())[:limit]
    return f"{type(e).__name__}: " + "".join(c if c.isprintable() else "?" for c in message)

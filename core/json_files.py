"""Reading a JSON file someone else may have written (a manifest, a run's record, an index).

One way to do it, so every reader refuses the same hostile files the same way: invalid UTF-8, not
JSON, nesting deep enough to exhaust the parser's recursion (RecursionError), and integers longer than
Python parses (ValueError since 3.11's int-digit limit) all become an XtmError naming the file.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

from xtm.errors import XtmError, os_error

__all__ = ["is_missing", "json_default", "parse_json_bytes", "read_json"]


def read_json(path: str | Path, *, missing: str = "missing") -> Any:
    """The JSON value in `path`. XtmError naming the file when it is missing (with the message
    `missing`, for callers that can say what a missing file means), unreadable or not JSON."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise XtmError(missing, path=path) from None
    except OSError as e:
        raise os_error(f"cannot read: {e.strerror or e}", e, path=path) from None
    return parse_json_bytes(data, path)


def parse_json_bytes(data: bytes, path: str | Path) -> Any:
    """The JSON value in `data`, a file's bytes already read (and checked against a checksum): read_json's
    checks, its errors naming `path`."""
    path = Path(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XtmError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    try:
        return json.loads(text)
    except RecursionError:
        raise XtmError("invalid JSON: nested too deeply", path=path) from None
    except ValueError as e:  # JSONDecodeError, and an integer too long to parse
        raise XtmError(f"invalid JSON: {e}", path=path) from None


def json_default(value: Any) -> Any:
    """json's `default=` for values a caller's numpy data puts in a record: a numpy scalar (an id or label
    from a DataFrame column, np.int64) is written as the Python number, boolean or string it holds. Anything
    else is json's own TypeError."""
    import numpy as np

    if isinstance(value, np.generic):
        plain = value.item()
        if isinstance(plain, (bool, int, float, str)):
            return plain
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def is_missing(value: Any) -> bool:
    """A missing value as a caller's table holds one: None, a NaN (a pandas column's missing entry; numpy floats
    included) or pandas' NA."""
    if value is None or type(value).__name__ == "NAType":
        return True
    return isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral) and bool(value != value)

"""A setting's value given in Python (xtm.train's keywords) or read from a run's config.json, checked as its
command-line option checks it: one rule for the API and for a resume's recorded settings."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

from xtm.config import WORD_LIST_SETTINGS, check_device_name, cli_spec, default_of
from xtm.errors import XtmError
from xtm.text_files import is_one_word

__all__ = ["check_setting"]


def check_setting(cls: type, name: str, value: Any) -> Any:
    """`value` for setting `cls.name`, checked as its command-line option checks it: its type (a whole number where
    the option takes one: numpy integers and whole floats are converted, 2.5 is refused), its range and choices.
    None is the default of a setting whose default is None (the recipe's, or automatic), refused elsewhere."""
    spec = cli_spec(cls, name)
    default = default_of(cls, name)
    if value is None:
        if default is None:
            return None
        raise XtmError(f"{name} must not be None: leave it out for its default ({default!r})")
    if name in WORD_LIST_SETTINGS:  # words, where the command line takes a file of them
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise XtmError(f"{name} must be a list of words, got {type(value).__name__}")
        words = sorted(value, key=str) if isinstance(value, (set, frozenset)) else list(value)  # a set: repeatable
        bad = next((w for w in words if not is_one_word(w)), None)
        if bad is not None:
            raise XtmError(f"{name} must be single words, got {bad!r}")
        return tuple(dict.fromkeys(words))
    if spec is None or spec.parse is not None or spec.path is not None:
        return value  # hparams (a dict, checked by the backbone), cache_dir (a path)
    if spec.choices is not None:
        if not isinstance(value, str):
            raise XtmError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
        match = [c for c in spec.choices if (c == value if spec.case_sensitive else c.lower() == value.lower())]
        if not match:
            raise XtmError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
        return match[0]
    kind = spec.type or type(default)
    if kind is bool:
        if not isinstance(value, bool):
            raise XtmError(f"{name} must be True or False, got {value!r}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise XtmError(f"{name} must be a string, got {value!r}")
        if name == "device":
            check_device_name(value)  # before anything is written (torch would say so only inside training)
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise XtmError(f"{name} must be a number, got {value!r}")
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):  # NaN passes every comparison below
        # (an int is finite, and math.isfinite(10**400) is an OverflowError)
        raise XtmError(f"{name} must be a finite number, got {value!r}")
    if kind is int:
        if not isinstance(value, numbers.Integral) and not float(value).is_integer():
            raise XtmError(f"{name} must be a whole number, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    low_bad = spec.min is not None and (value <= spec.min if spec.min_open else value < spec.min)
    high_bad = spec.max is not None and (value >= spec.max if spec.max_open else value > spec.max)
    if low_bad or high_bad:
        lo = "" if spec.min is None else f"{'>' if spec.min_open else '>='} {spec.min:g}"
        hi = "" if spec.max is None else f"{'<' if spec.max_open else '<='} {spec.max:g}"
        raise XtmError(f"{name} must be {' and '.join(x for x in (lo, hi) if x)}, got {value!r}")
    return value

"""`library_logging`: the "xtm" logger as a Python user of the library has it, for one test.

An xtm command run in-process (click's CliRunner) calls xtm.cli.common.setup_logging, which gives
the "xtm" logger a stderr handler and stops propagation for the rest of the pytest session; a
test about what the library itself logs or writes needs the state a library user has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def library_logging() -> Iterator[logging.Logger]:
    """No handler on "xtm", level unset, propagating (pytest's capture sees every record); restored after."""
    root = logging.getLogger("xtm")
    saved = (root.handlers[:], root.level, root.propagate)
    root.handlers, root.level, root.propagate = [], logging.NOTSET, True
    try:
        yield root
    finally:
        root.handlers, root.level, root.propagate = saved

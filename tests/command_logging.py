"""`train_stderr`: the "xtm" loggers as xtm-train sets them up, for one test that calls the library directly.

Library code logs; xtm-train (xtm.cli.common.setup_logging) turns the records into `xtm-train: ...` and
`xtm-train: warning: ...` lines on stderr. A test that checks what a user of the command reads on
stderr (a warning's text, that no API key appears) gets that setup here, and the logger's state is
restored afterwards so the rest of the session keeps a library user's logging.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture
def train_stderr() -> Iterator[logging.Logger]:
    from xtm.cli.common import setup_logging

    root = logging.getLogger("xtm")
    saved = (root.handlers[:], root.level, root.propagate)
    setup_logging("xtm-train")
    try:
        yield root
    finally:
        root.handlers, root.level, root.propagate = saved

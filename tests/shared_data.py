"""Where the tests find the benchmark corpora: ../shared/data beside the repository, or $XTM_SHARED_DATA."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def shared_data_dir() -> Path:
    env = os.environ.get("XTM_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def need(*parts: str) -> Path:
    """The path under the shared data, or skip the test cleanly when it is absent."""
    p = shared_data_dir().joinpath(*parts)
    if not p.exists():
        pytest.skip(f"benchmark data not found: {p}")
    return p

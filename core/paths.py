"""Where xtm keeps reusable files (embedding caches, jieba's prefix dictionary)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XTM_CACHE_DIR, else $XDG_CACHE_HOME/xtm, else ~/.cache/xtm (not created here)."""
    if os.environ.get("XTM_CACHE_DIR"):
        return Path(os.environ["XTM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xtm"

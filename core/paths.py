"""File locations: where xtm keeps reusable files (embedding caches, jieba's prefix dictionary),
and which file names stay inside their directory."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$XTM_CACHE_DIR, else $XDG_CACHE_HOME/xtm, else ~/.cache/xtm (not created here)."""
    if os.environ.get("XTM_CACHE_DIR"):
        return Path(os.environ["XTM_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xtm"


def is_plain_file_name(name: str) -> bool:
    """Whether `name` names a file directly inside a directory (no separators, no "." or "..", no NUL):
    what a bundle's manifest or a run's contextual.json may name, so neither can point outside."""
    return bool(name) and name not in (".", "..") and not any(c in name for c in "/\\\0")

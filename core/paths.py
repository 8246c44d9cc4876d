"""File locations: where xtm keeps reusable files (embedding caches, jieba's prefix dictionary),
which file names stay inside their directory, and which entries a directory reader skips."""

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


def is_hidden_name(name: str) -> bool:
    """Whether a directory entry is hidden (its name starts with "."): never an input put there, but a tool's copy or
    sidecar (Jupyter's checkpoints, a Mac's "._NAME" AppleDouble files, .git). Every reader that lists a directory for
    inputs skips them; a hidden path the user names itself is still read."""
    return name.startswith(".")

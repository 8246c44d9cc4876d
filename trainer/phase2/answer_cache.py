"""The on-disk LLM answer cache: one small JSON file per (generator, prompt, round, sampling), under a size
bound. It lets a resumed or repeated run, and xtm-label, make no call an earlier one already made.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
from dataclasses import asdict
from pathlib import Path

from xtm.atomic import atomic_open
from xtm.config import Sampling
from xtm.errors import XtmError

logger = logging.getLogger(__name__)


_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}\.json$")


class AnswerCache:
    """One small JSON file per (generator, prompt, round, sampling), written atomically, under a size bound.

    The bound: an entry larger than `max_entry_bytes` is not written (the answer is still used), and
    when the directory would grow past `max_bytes` the least recently used entries (oldest
    modification time; a hit refreshes it) are deleted until it is back under 90 % of the bound, so
    eviction is rare rather than once per write. Only files named like our entries
    (`<2 hex>/<64 hex>.json`) are counted or deleted; anything else in the directory is left alone.
    A cache that cannot be written (read-only, disk full, a file in the way) is reported once and
    then skipped: caching saves calls, it is never a reason to stop training.
    """

    MAX_BYTES = 256 * 2**20
    MAX_ENTRY_BYTES = 2**20
    LOW_WATER = 0.9

    def __init__(self, directory: Path | None, max_bytes: int = MAX_BYTES, max_entry_bytes: int = MAX_ENTRY_BYTES
                 ) -> None:
        self.dir = Path(directory) / "llm-answers" if directory is not None else None
        self.max_bytes, self.max_entry_bytes = int(max_bytes), int(max_entry_bytes)
        self._lock = threading.Lock()
        self._size: int | None = None            # bytes of our entries, scanned on the first write
        self._broken = False

    @staticmethod
    def key(generator_id: str, prompt: str, round_index: int, sampling: Sampling) -> str:
        blob = json.dumps({"g": generator_id, "p": prompt, "r": round_index, "s": asdict(sampling)},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        """The cached text; None when there is no entry; "" (an unusable answer) for an entry that is
        there but oversized, corrupt or of another shape, so the caller counts it and asks again."""
        if self.dir is None:
            return None
        p = self._path(key)
        try:
            if p.stat().st_size > self.max_entry_bytes:
                return ""
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError, RecursionError):
            return ""
        text = entry.get("text") if isinstance(entry, dict) else None
        if not isinstance(text, str):
            return ""
        try:
            os.utime(p)                          # recently used: evicted last
        except OSError:
            pass
        return text

    def put(self, key: str, text: str) -> None:
        if self.dir is None or self._broken:
            return
        data = (json.dumps({"text": text}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        if len(data) > self.max_entry_bytes:
            return
        path = self._path(key)
        with self._lock:
            try:
                if self._size is None:
                    self._size = sum(size for _, size, _ in self._entries())
                if self._size + len(data) > self.max_bytes:
                    self._evict(int(self.max_bytes * self.LOW_WATER) - len(data))
                old = path.stat().st_size if path.exists() else 0
                with atomic_open(path, "wb", encoding=None) as f:
                    f.write(data)
                self._size += len(data) - old
            except (OSError, XtmError) as e:      # atomic_open says XtmError for a path it cannot write
                self._broken = True
                logger.warning(f"the LLM answer cache at {self.dir} cannot be written ({type(e).__name__}); "
                               "answers are used but not cached")

    def _entries(self) -> list[tuple[int, int, Path]]:
        """(mtime_ns, size, path) of every file that is one of our entries."""
        assert self.dir is not None
        out = []
        for p in self.dir.glob("[0-9a-f][0-9a-f]/*.json"):
            if _ENTRY_NAME.match(p.name) and p.parent.name == p.name[:2]:
                try:
                    st = p.stat()
                except OSError:
                    continue
                out.append((st.st_mtime_ns, st.st_size, p))
        return out

    def _evict(self, target: int) -> None:
        """Delete least recently used entries until ours total at most `target` bytes."""
        entries = sorted(self._entries(), key=lambda e: (e[0], e[2].name))
        total = sum(size for _, size, _ in entries)
        for _, size, p in entries:
            if total <= max(target, 0):
                break
            try:
                p.unlink()
                total -= size
            except FileNotFoundError:
                total -= size
        self._size = total

"""The on-disk LLM answer cache: one small JSON file per (generator, prompt, round, sampling), under a size
bound. It lets a resumed or repeated run, and xtm-label, make no call an earlier one already made.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
import threading
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path

from xtm.atomic import (
    NotRegularFileError,
    file_kind,
    open_directory,
    open_entry,
    remove_stale_temporaries,
    replacing_at,
)
from xtm.config import Sampling

logger = logging.getLogger(__name__)


_ENTRY = r"[0-9a-f]{64}\.json"
_ENTRY_NAME = re.compile(f"^{_ENTRY}$")
_SHARD_NAME = re.compile(r"^[0-9a-f]{2}$")


class AnswerCache:
    """One small JSON file per (generator, prompt, round, sampling), written atomically, under a size bound.

    The bound: an entry larger than `max_entry_bytes` is not written (the answer is still used), and
    when the directory would grow past `max_bytes` the least recently used entries (oldest
    modification time; a hit refreshes it) are deleted until it is back under 90 % of the bound, so
    eviction is rare rather than once per write. Only files named like our entries
    (`<2 hex>/<64 hex>.json`) are counted or deleted; anything else in the directory is left alone.
    A cache that cannot be written (read-only, disk full, a file in the way) is reported once and
    then skipped: caching saves calls, it is never a reason to stop training. An answer that cannot be
    stored (a lone surrogate, which UTF-8 cannot encode) is used and not cached, with one warning.

    An entry is only ever a regular file of ours. One that is a symlink, a FIFO, a device or a socket
    (planted in a shared cache directory, or left by another tool) is never read through: lstat first,
    then opened with O_NOFOLLOW | O_NONBLOCK, so reading it is a miss and never blocks. It is never
    written through either: a new entry is written to a temporary beside it and renamed over the path,
    which replaces the link or node itself and never its target. A directory there is left alone (the
    answer is not cached). The same rule as the embeddings cache (docs/reliability.md).
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
        self._warned: set[str] = set()           # the kinds of warning given already (each once per cache)

    @staticmethod
    def key(generator_id: str, prompt: str, round_index: int, sampling: Sampling) -> str:
        blob = json.dumps({"g": generator_id, "p": prompt, "r": round_index, "s": asdict(sampling)},
                          sort_keys=True, ensure_ascii=False)
        # surrogatepass: a prompt holding a lone surrogate still has a key (valid text hashes as before).
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / key[:2] / f"{key}.json"

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            logger.warning(message)

    def _not_ours(self, path: Path, what: str) -> None:
        self._warn_once("not-ours", f"{path} in the LLM answer cache is {what}, not an entry of ours: it is "
                                    "neither read nor written through (a cache miss)")

    def get(self, key: str) -> str | None:
        """The cached text; None when there is no entry (or what is there is not a regular file: a symlink,
        a FIFO, a device; or its shard directory is a symlink); "" (an unusable answer) for an entry that is
        there but oversized, corrupt or of another shape, so the caller counts it and asks again."""
        if self.dir is None:
            return None
        p = self._path(key)
        try:
            shard = open_directory(p.parent)     # the shard itself never through a link
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            if e.errno == errno.ELOOP:
                self._not_ours(p.parent, "a symlink")
                return None
            return ""
        try:
            return self._read_entry(p, shard)
        finally:
            os.close(shard)

    def _read_entry(self, p: Path, shard: int) -> str | None:
        try:
            fd = open_entry(shard, p.name)       # never follows a link, never opens a FIFO or device
        except (FileNotFoundError, NotADirectoryError):
            return None
        except NotRegularFileError as e:
            self._not_ours(p, e.kind)
            return None
        except OSError:
            return ""
        try:
            if os.fstat(fd).st_size > self.max_entry_bytes:
                return ""
            raw = _read_at_most(fd, self.max_entry_bytes + 1)
            if len(raw) > self.max_entry_bytes:
                return ""
            entry = json.loads(raw.decode("utf-8"))
            text = entry.get("text") if isinstance(entry, dict) else None
            if not isinstance(text, str):
                return ""
            with suppress(OSError, NotImplementedError, TypeError):
                os.utime(fd)                     # recently used: evicted last (the file opened, not a path)
            return text
        except (OSError, ValueError, RecursionError):  # ValueError: not UTF-8, not JSON
            return ""
        finally:
            os.close(fd)

    def put(self, key: str, text: str) -> None:
        """Cache `text` under `key`; never raises: a write that fails is a warning and the answer is used."""
        if self.dir is None or self._broken:
            return
        try:
            data = (json.dumps({"text": text}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        except (ValueError, TypeError, RecursionError) as e:  # UnicodeEncodeError: a lone surrogate
            self._warn_once("unstorable", f"an LLM answer cannot be stored in the answer cache at {self.dir} "
                                          f"({type(e).__name__}); it is used but not cached")
            return
        if len(data) > self.max_entry_bytes:
            return
        path = self._path(key)
        with self._lock:
            try:
                if self._size is None:
                    self._size = sum(e[1] for e in self._entries())
                if self._size + len(data) > self.max_bytes:
                    self._evict(int(self.max_bytes * self.LOW_WATER) - len(data))
                old = self._write(path, data)
                if old is not None:
                    self._size += len(data) - old
            except OSError as e:  # read-only, disk full, a file where a directory should be
                self._broken = True
                logger.warning(f"the LLM answer cache at {self.dir} cannot be written ({type(e).__name__}); "
                               "answers are used but not cached")

    def _write(self, path: Path, data: bytes) -> int | None:
        """Write one entry with `replacing_at`, relative to the shard directory opened once without following a
        link (a link swapped in after a check cannot redirect the write): whatever non-directory is at the path
        (a planted symlink or FIFO) is itself replaced, never its target. The size of the regular file replaced
        (0 when there was none), or None when nothing was written (a directory at the path, a symlink where the
        shard directory should be). OSError for a cache that cannot be written."""
        try:
            shard = open_directory(path.parent, create=True)
        except OSError as e:
            if e.errno == errno.ELOOP:           # a link to somewhere else: never written into
                self._not_ours(path.parent, "a symlink")
                return None
            raise
        try:
            try:
                est = os.lstat(path.name, dir_fd=shard)
            except FileNotFoundError:
                est = None
            if est is not None and stat.S_ISDIR(est.st_mode):
                self._not_ours(path, "a directory")
                return None
            if est is not None and not stat.S_ISREG(est.st_mode):
                self._not_ours(path, file_kind(est.st_mode))  # replaced below, its target untouched
            with replacing_at(shard, path.name) as f:
                f.write(data)
            return est.st_size if est is not None and stat.S_ISREG(est.st_mode) else 0
        finally:
            os.close(shard)

    def _entries(self) -> list[tuple[int, int, str, str]]:
        """(mtime_ns, size, shard, name) of every regular file that is one of our entries, listed relative to each
        shard directory opened without following a link (symlinks are not followed, into a shard or out of one).
        Temporaries left by killed writers are removed here."""
        assert self.dir is not None
        out = []
        try:
            shards = [s.name for s in os.scandir(self.dir)
                      if _SHARD_NAME.match(s.name) and s.is_dir(follow_symlinks=False)]
        except OSError:
            return out
        for shard in shards:
            try:
                fd = open_directory(self.dir / shard)
            except OSError:
                continue
            try:
                remove_stale_temporaries(fd, _ENTRY)  # killed writers' (xtm.atomic's rule)
                for e in os.scandir(fd):
                    if not (_ENTRY_NAME.match(e.name) and e.name[:2] == shard):
                        continue
                    with suppress(OSError):
                        st = e.stat(follow_symlinks=False)
                        if stat.S_ISREG(st.st_mode):
                            out.append((st.st_mtime_ns, st.st_size, shard, e.name))
            except OSError:
                continue
            finally:
                os.close(fd)
        return out

    def _evict(self, target: int) -> None:
        """Delete least recently used entries until ours total at most `target` bytes (each relative to its shard
        directory opened without following a link, as listed)."""
        assert self.dir is not None
        entries = sorted(self._entries(), key=lambda e: (e[0], e[3]))
        total = sum(e[1] for e in entries)
        for _, size, shard, name in entries:
            if total <= max(target, 0):
                break
            try:
                fd = open_directory(self.dir / shard)
            except OSError:
                continue                          # not removed: still counted
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass                              # gone already (another process evicting)
            except OSError:
                continue
            finally:
                os.close(fd)
            total -= size
        self._size = total


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks, n = [], 0
    while n < limit:
        chunk = os.read(fd, min(limit - n, 1 << 16))
        if not chunk:
            break
        chunks.append(chunk)
        n += len(chunk)
    return b"".join(chunks)

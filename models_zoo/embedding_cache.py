"""The embedding cache: vectors an encoder computed for a list of texts, kept in CACHE_DIR/embeddings/ so a rerun,
a resume or a contextual fit does not embed the same corpus again.

Entries are ours by name (`<encoder>-<24 hex digits of the texts' hash>.npy`), in `embeddings/` (which may be a
link the user made), and never read or written through a link. The cache keeps at most XTM_EMBEDDINGS_CACHE_MB
megabytes of entries (default 4096; 0: no limit): every corpus a run embeds adds one (ECNews's 97,000 documents
under the default encoder: 190 MB) and nothing removed them, so a machine that trains often filled its disk.
When a new entry takes the cache past the limit, the least recently used entries go (a read counts as a use).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from xtm.atomic import NotRegularFileError, open_directory, open_entry, replacing_at
from xtm.errors import XtmError, exception_text
from xtm.npy_header import read_npy_header

__all__ = ["CACHE_BUDGET_ENV", "DEFAULT_CACHE_BUDGET_MB", "cache_budget", "cached_vectors", "texts_key"]

logger = logging.getLogger(__name__)

CACHE_BUDGET_ENV = "XTM_EMBEDDINGS_CACHE_MB"
DEFAULT_CACHE_BUDGET_MB = 4096
# What cached_vectors names its entries (its keys: use-multilingual, use-multilingual-pooled-t<N>, st_<model>) and
# what they hold (a float32 matrix): an entry is removed only when both say ours (a user's "doc-<24 hex>.npy" in a
# linked embeddings/ matched a looser pattern).
_ENTRY_NAME = re.compile(r"(use-multilingual(-pooled-t[0-9]+)?|st_[^/\0]+)-[0-9a-f]{24}\.npy")
_MAX_BUDGET_MB = 1 << 30  # a petabyte: past it, a typo


def texts_key(encoder_name: str, texts: list[str]) -> str:
    h = hashlib.sha256(encoder_name.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def cached_vectors(key_name: str, texts: list[str], cache_dir: Path | None,
                   compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """`compute(texts)` (float32 [n, d], as every encoder gives), read from `cache_dir` when vectors under
    the same `key_name` were computed for the same texts before. A cache entry is only a copy: one that cannot
    be read back as such is a miss, recomputed and rewritten; a cache that cannot be written is a warning.

    Entries are ours by name, in `embeddings/` (which may be a link the user made), and never read or written
    through a link: the directory is opened once and everything is relative to it (xtm.atomic's `open_entry`
    and `replacing_at`). Something other than a regular file at an entry (a symlink, a FIFO) is not read, and
    the recomputed vectors replace it itself, never its target; a directory there is left alone. The same rule
    as the LLM answer cache."""
    if cache_dir is None:
        return _checked(_computed(compute, texts, key_name, "not cached"), key_name, texts)
    cache_budget()  # a bad $XTM_EMBEDDINGS_CACHE_MB is said before the work, not after it
    directory = Path(cache_dir) / "embeddings"
    name = f"{key_name.replace('/', '_').replace(':', '_')}-{texts_key(key_name, texts)}.npy"
    emb = _read_cached(directory, name, len(texts))
    if emb is not None:
        return emb
    emb = _checked(_computed(compute, texts, key_name, f"once: cached in {directory}"), key_name, texts)
    _write_cached(directory, name, emb)
    return emb


# A pass over this many texts takes seconds to minutes (about 1,000 per second with the default encoder on 2
# cores): said in the log, where a progress bar is not shown (a non-interactive log) or gone afterwards.
_SAID_FROM = 1000


def _computed(compute: Callable[[list[str]], np.ndarray], texts: list[str], key_name: str,
              caching: str) -> np.ndarray:
    """`compute(texts)`, with a line before and after a long pass (a training log was silent for the minutes
    XTRA spent embedding Rakuten's 40,000 documents before its first epoch)."""
    if len(texts) < _SAID_FROM:
        return compute(texts)
    logger.info(f"embedding {len(texts):,} texts with {key_name} ({caching})")
    t0 = time.perf_counter()
    emb = compute(texts)
    seconds = time.perf_counter() - t0
    logger.info(f"embedded {len(texts):,} texts in {seconds:.1f}s ({len(texts) / max(seconds, 1e-9):,.0f}/s)")
    return emb


def _checked(emb: np.ndarray, key_name: str, texts: list[str]) -> np.ndarray:
    """`emb`, unless a row holds NaN or infinities: never trained on, never cached (a cached NaN would be a
    miss on every later run)."""
    bad = ~np.isfinite(emb).all(axis=1) if emb.ndim == 2 else np.zeros(0, bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise XtmError(f"'{key_name}' gave NaN or infinite values for {int(bad.sum())} of {len(texts)} texts "
                       f"(the first: #{first + 1}, {texts[first][:60]!r})")
    return emb


def _read_cached(directory: Path, name: str, rows: int) -> np.ndarray | None:
    """The float32 [rows, d] array cached as `directory/name`, or None: nothing there, or (with a warning naming
    the file) anything else. A file cut short by a full disk or a crash of an older xtm, damaged on disk, or
    written by something else costs its recomputation, never the run (a truncated one was a ValueError
    traceback on every rerun of xtm-train and xtm-contextual)."""
    path = directory / name
    try:
        dfd = open_directory(directory, follow=True)  # embeddings/ may be a link the user made (a bigger disk)
    except FileNotFoundError:
        return None
    except OSError as e:
        logger.warning(f"embedding cache directory {directory} cannot be used ({_os_reason(e)}): vectors recomputed")
        return None
    try:
        fd = open_entry(dfd, name)  # a regular file, never through a link; a FIFO or device is never opened
    except FileNotFoundError:
        return None
    except NotRegularFileError as e:
        _not_read(path, f"is {e.kind}, not a regular file")
        return None
    except OSError as e:
        _not_read(path, f"cannot be read ({_os_reason(e)})")
        return None
    finally:
        os.close(dfd)
    size = os.fstat(fd).st_size
    with os.fdopen(fd, "rb") as f:
        try:
            # The header first: shape and type are checked before anything is allocated (a header may claim
            # terabytes); then exactly that many values, or the file is short.
            shape, fortran, dtype = read_npy_header(f)
            if len(shape) != 2 or shape[0] != rows or shape[1] < 1 or dtype != np.float32:
                raise ValueError(f"{dtype} {list(shape)}, expected float32 [{rows}, d]")
            nbytes = shape[0] * shape[1] * dtype.itemsize
            if size - f.tell() != nbytes:
                raise ValueError(f"holds {size - f.tell()} bytes of values, its header says {nbytes}")
            raw = bytearray(nbytes)  # writable: the array below is the caller's own, not a read-only view
            if f.readinto(raw) != nbytes:
                raise ValueError("changed while it was read")
            emb = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
            emb = np.ascontiguousarray(emb, dtype=np.float32)
            if not np.isfinite(emb).all():  # what cached_vectors writes never holds one: damaged, or not ours
                raise ValueError("holds NaN or infinite values")
            _used(f.fileno())
            return emb
        except (OSError, ValueError, EOFError) as e:
            logger.warning(f"embedding cache entry {path} is unreadable ({exception_text(e, 200)}): recomputing it")
            return None


def _write_cached(directory: Path, name: str, emb: np.ndarray) -> None:
    """`emb` as `directory/name`, replacing whatever non-directory is there (never through a link); a cache that
    cannot be written is a warning, the vectors are used."""
    path = directory / name
    try:
        dfd = open_directory(directory, create=True, follow=True)
    except OSError as e:
        logger.warning(f"embedding cache directory {directory} cannot be written ({_os_reason(e)}): vectors not cached")
        return
    try:
        with replacing_at(dfd, name) as f:
            np.save(f, emb, allow_pickle=False)
        _keep_within_budget(dfd, directory, name)
    except OSError as e:  # a directory at the entry, a read-only or full disk
        logger.warning(f"embedding cache entry {path} cannot be written ({_os_reason(e)}): vectors not cached")
    finally:
        os.close(dfd)


def _used(fd: int) -> None:
    """Mark an entry as just used (its mtime: what eviction orders by; atime is not kept on most mounts)."""
    try:
        os.utime(fd)
    except OSError:  # a read-only cache: it is read, never evicted from here
        pass


def cache_budget() -> int | None:
    """The most bytes of entries the cache keeps ($XTM_EMBEDDINGS_CACHE_MB; None: no limit)."""
    raw = os.environ.get(CACHE_BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_CACHE_BUDGET_MB << 20
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not (mb == 0 or 1 <= mb <= _MAX_BUDGET_MB):
        raise XtmError(f"${CACHE_BUDGET_ENV} must be a number of megabytes from 1 to {_MAX_BUDGET_MB:,} (0: no "
                       f"limit), got {raw!r}")
    return None if mb == 0 else int(mb * (1 << 20))


def _keep_within_budget(dfd: int, directory: Path, keep: str) -> None:
    """Remove the least recently used entries until they are within the budget; never `keep` (just written), never
    anything not provably an entry (xtm's name and a float32 matrix, a regular file, not a link): a user's files
    in a linked folder are neither counted nor removed."""
    budget = cache_budget()
    if budget is None:
        return
    entries = []
    for name in os.listdir(dfd):
        if not _ENTRY_NAME.fullmatch(name):
            continue
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and _holds_vectors(dfd, name):
            entries.append((st.st_mtime_ns, name, st.st_size))
    total = sum(size for _, _, size in entries)
    if total <= budget:
        return
    removed, freed = 0, 0
    for _, name, size in sorted(entries):
        if total <= budget:
            break
        if name == keep:
            continue
        try:
            os.unlink(name, dir_fd=dfd)
        except OSError:
            continue
        total, removed, freed = total - size, removed + 1, freed + size
    if removed:
        logger.info(f"embedding cache {directory} over {budget / (1 << 20):,.0f} MB: removed the {removed} least "
                    f"recently used entries ({freed / (1 << 20):,.1f} MB; ${CACHE_BUDGET_ENV} sets the limit)")


def _holds_vectors(dfd: int, name: str) -> bool:
    """Whether entry `name` is an .npy file of a float32 matrix, as cached_vectors writes (read without a link)."""
    try:
        fd = open_entry(dfd, name)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as f:
        try:
            shape, _, dtype = read_npy_header(f)
        except (OSError, ValueError, EOFError):
            return False
    return len(shape) == 2 and dtype == np.float32


def _not_read(path: Path, what: str) -> None:
    logger.warning(f"embedding cache entry {path} {what}: not read, the vectors are recomputed")


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__



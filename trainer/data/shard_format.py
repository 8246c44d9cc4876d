"""The shard directory format: its files, how they are written and read back.

A shard directory (built by xtm.trainer.data.sharding) holds, per language `<L>`:
  `<L>/train-00000.npz`, `<L>/test-00000.npz`, ...  fixed-size CSR shards, each an .npz of plain
                                                     arrays (indptr, indices, data, shape, labels),
                                                     read with allow_pickle=False;
  `vocab_<L>.txt`                                    the vocabulary (xtm.vocabulary);
  `word_counts_<L>.npy`                              whole-training-set word counts;
and `index.json`, written atomically and last (a directory with an index is complete): format,
fingerprint, settings, languages with their shards' document and non-zero counts and vocabulary
sha256, label names, corpus info. Whatever is damaged is an XtmError saying to rebuild.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.errors import XtmError
from xtm.json_files import read_json

__all__ = ["INDEX", "SHARD_FORMAT", "ShardWriter", "index_fingerprint", "load_shard", "load_word_counts",
           "read_index", "save_shard", "vocab_hash"]

SHARD_FORMAT = 1
INDEX = "index.json"
# What a readable index must hold (the rest is informational).
_INDEX_KEYS = ("name", "langs", "languages", "settings", "info")
_LANGUAGE_KEYS = ("vocab_sha256", "train", "test")


def save_shard(path: Path, m: sp.csr_matrix, labels: np.ndarray | None) -> None:
    """A CSR matrix (+ labels) as plain arrays in an .npz, written under a temp name then renamed."""
    arrays: dict[str, np.ndarray] = {"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int32),
                                     "data": m.data.astype(np.float32), "shape": np.asarray(m.shape, np.int64)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def load_shard(path: Path) -> tuple[sp.csr_matrix, np.ndarray | None]:
    """A shard's matrix and labels (None: the corpus has none)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(x) for x in z["shape"])
            m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, KeyError, ValueError) as e:
        raise XtmError(f"unreadable shard ({type(e).__name__}: {e}); rebuild the shards "
                       "(delete the shard directory)", path=path) from None
    return m, labels


def load_word_counts(path: Path, vocab_size: int) -> np.ndarray:
    """A language's whole-training-set word counts, one per vocabulary word."""
    try:
        counts = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise XtmError(f"unreadable word counts ({type(e).__name__}: {e}); rebuild the shards "
                       "(delete the shard directory)", path=path) from None
    if counts.shape != (vocab_size,):
        raise XtmError(f"word counts of shape {counts.shape} for a vocabulary of {vocab_size} words; rebuild the "
                       "shards (delete the shard directory)", path=path)
    return counts


class ShardWriter:
    """Rows in, fixed-size shards `<lang>/<split>-NNNNN.npz` out; keeps at most one shard's rows in memory.

    `shards` lists what was written (file, docs, nnz), for the index.
    """

    def __init__(self, root: Path, lang: str, split: str, size: int) -> None:
        self.root, self.lang, self.split, self.size = root, lang, split, size
        self.parts: list[sp.csr_matrix] = []
        self.labels: list[np.ndarray] = []
        self.rows = 0
        self.shards: list[dict[str, Any]] = []
        (root / lang).mkdir(parents=True, exist_ok=True)

    @property
    def docs(self) -> int:
        """Documents written so far (flushed shards only)."""
        return sum(sh["docs"] for sh in self.shards)

    def add(self, m: sp.csr_matrix, labels: np.ndarray | None) -> None:
        start = 0
        while start < m.shape[0]:
            take = min(self.size - self.rows, m.shape[0] - start)
            self.parts.append(m[start:start + take])
            if labels is not None:
                self.labels.append(labels[start:start + take])
            self.rows += take
            start += take
            if self.rows == self.size:
                self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        m = sp.vstack(self.parts, format="csr") if len(self.parts) > 1 else self.parts[0]
        labels = np.concatenate(self.labels) if self.labels else None
        name = f"{self.lang}/{self.split}-{len(self.shards):05d}.npz"
        save_shard(self.root / name, sp.csr_matrix(m), labels)
        self.shards.append({"file": name, "docs": int(m.shape[0]), "nnz": int(m.nnz)})
        self.parts, self.labels, self.rows = [], [], 0


def vocab_hash(vocab: Sequence[str]) -> str:
    """The index's `vocab_sha256`: a vocabulary file edited after the build is noticed."""
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


def index_fingerprint(directory: Path) -> str | None:
    """The fingerprint a complete shard directory was built with; None when there is no readable index in
    this shard format (a directory to rebuild, or, for `sharding.refuse_foreign_shard_dir`, not one)."""
    try:
        index = read_json(directory / INDEX) if (directory / INDEX).is_file() else None
    except XtmError:
        return None
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        return None
    fingerprint = index.get("fingerprint")
    return fingerprint if isinstance(fingerprint, str) else None


def read_index(directory: Path) -> dict[str, Any]:
    """The index of a complete shard directory, checked to hold what opening it needs."""
    path = directory / INDEX
    if not path.exists():
        raise XtmError("not a complete shard directory (no index.json): preprocessing did not finish; "
                       "run again to rebuild it", path=directory)
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != SHARD_FORMAT:
        found = index.get("format") if isinstance(index, dict) else None
        raise XtmError(f"shard format {found} is not supported (this xtm writes {SHARD_FORMAT}); rebuild the "
                       "shards", path=path)
    _check_index(index, path)
    return index


def _check_index(index: dict[str, Any], path: Path) -> None:
    missing = [k for k in _INDEX_KEYS if k not in index]
    if not missing:
        langs, languages = index["langs"], index["languages"]
        if not isinstance(langs, list) or not isinstance(languages, dict):
            missing = ["langs", "languages"]
        else:
            missing = [f"languages.{x}.{k}" for x in langs for k in _LANGUAGE_KEYS
                       if not isinstance(x, str) or not isinstance(languages.get(x), dict) or k not in languages[x]]
    if missing:
        raise XtmError(f"damaged shard index (missing {', '.join(missing)}); rebuild the shards "
                       "(delete the shard directory)", path=path)

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
import math
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.atomic import atomic_open, temporary_names
from xtm.config import TOKEN_RULES, known_token_rules
from xtm.errors import XtmError
from xtm.json_files import read_json
from xtm.npy_header import read_npy_header
from xtm.trainer.data.batches import RowsDigest

__all__ = ["ATOMIC_TMP_NAME", "INDEX", "SHARD_FORMAT", "SHARD_NAME", "VOCAB_NAME", "WORD_COUNTS_NAME", "ShardWriter",
           "check_shard_file", "index_fingerprint", "load_shard", "load_word_counts", "read_index", "save_shard",
           "save_word_counts", "vocab_file", "vocab_hash", "word_counts_file"]

SHARD_FORMAT = 1
INDEX = "index.json"
# The layout's names, for whoever lists a shard directory (a rebuild deletes only these).
_SHARD = r"(?:train|test)-[0-9]+\.npz"
# A shard inside a language directory, xtm.atomic's temporary of one (a build killed while writing it), or the
# fixed-name temporary `.train-00000.npz.tmp` an older xtm's save_shard wrote (a half-built directory of one
# stays ours, and a rebuild clears it; nothing writes that name any more).
SHARD_NAME = re.compile(f"{_SHARD}|{temporary_names(_SHARD).pattern}|\\.{_SHARD}\\.tmp")
VOCAB_NAME, WORD_COUNTS_NAME = re.compile(r"vocab_(.+)\.txt"), re.compile(r"word_counts_(.+)\.npy")
# xtm.atomic's temporary of the index, a vocabulary or word counts, left by a build killed while writing it.
ATOMIC_TMP_NAME = temporary_names(r"index\.json|vocab_.+\.txt|word_counts_.+\.npy")


def vocab_file(shard_dir: Path, lang: str) -> Path:
    return shard_dir / f"vocab_{lang}.txt"


def word_counts_file(shard_dir: Path, lang: str) -> Path:
    return shard_dir / f"word_counts_{lang}.npy"
# What a readable index must hold (the rest is informational).
_INDEX_KEYS = ("name", "langs", "languages", "settings", "info")
_LANGUAGE_KEYS = ("vocab_sha256", "train", "test")


def save_shard(path: Path, m: sp.csr_matrix, labels: np.ndarray | None) -> None:
    """A CSR matrix (+ labels) as plain arrays in an .npz, replaced whole and durable (xtm.atomic: a temporary,
    fsync, rename): the index, written last, never lists a shard a power cut left empty."""
    arrays: dict[str, np.ndarray] = {"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int32),
                                     "data": m.data.astype(np.float32), "shape": np.asarray(m.shape, np.int64)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    with atomic_open(path, "wb", encoding=None) as f:
        np.savez(f, **arrays)


def save_word_counts(path: Path, counts: np.ndarray) -> None:
    """A language's word counts, replaced whole and durable before the index is written (xtm.atomic)."""
    with atomic_open(path, "wb", encoding=None) as f:
        np.save(f, counts, allow_pickle=False)


# What a shard file cut short, corrupted or written by something else raises while it is read and checked.
_DAMAGE = (OSError, KeyError, ValueError, EOFError, MemoryError, zipfile.BadZipFile)


def _damaged(path: Path, what: str) -> XtmError:
    return XtmError(f"damaged shard file ({what}); rebuild the shards (delete the shard directory)", path=path)


def _sized_members(path: Path) -> None:
    """Every member of the .npz is a .npy whose header agrees with its size: a header claiming terabytes, or a
    member cut short, is refused before numpy allocates or reads it."""
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                shape, _, dtype = read_npy_header(f)
                if dtype.hasobject:
                    raise ValueError(f"member {info.filename} holds Python objects")
                if f.tell() + math.prod(shape) * dtype.itemsize != info.file_size:
                    raise ValueError(f"member {info.filename}'s header says {list(shape)} {dtype}, which is not "
                                     f"its {info.file_size} bytes")


def check_shard_file(path: Path) -> None:
    """The cheap part of load_shard's checks (the zip directory and each member's header against its size, no
    values read): a shard cut short or emptied by a crash or a power cut is found before training starts."""
    try:
        _sized_members(path)
    except _DAMAGE as e:
        raise _damaged(path, f"{type(e).__name__}: {e}"[:300]) from None


def load_shard(path: Path, *, rows: int, cols: int, num_labels: int | None) -> tuple[sp.csr_matrix,
                                                                                     np.ndarray | None]:
    """A shard's matrix and labels (None: the corpus has none), checked to be what the index and vocabulary say:
    `rows` documents over `cols` words, a valid CSR matrix (a decreasing or out-of-range indptr crashed scipy
    with a segmentation fault), positive finite counts, labels in 0..num_labels-1. Anything else is an
    XtmError saying to rebuild, never a traceback or silently wrong training."""
    try:
        _sized_members(path)
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(x) for x in z["shape"])
            data, indices, indptr = z["data"], z["indices"], z["indptr"]
            labels = z["labels"] if "labels" in z.files else None
        if shape != (rows, cols):
            raise ValueError(f"shape {list(shape)}, the index and vocabulary say [{rows}, {cols}]")
        if data.dtype.kind != "f" or indices.dtype.kind not in "iu" or indptr.dtype.kind not in "iu":
            raise ValueError(f"array types {data.dtype} / {indices.dtype} / {indptr.dtype}")
        m = sp.csr_matrix((data, indices, indptr), shape=shape)
        m.check_format(full_check=True)
        if m.data.size and not (np.isfinite(m.data).all() and (m.data > 0).all()):
            raise ValueError("word counts that are not positive finite numbers")
        if labels is not None:
            if labels.dtype.kind not in "iu" or labels.shape != (rows,):
                raise ValueError(f"labels of type {labels.dtype} and shape {list(labels.shape)} for {rows} documents")
            if num_labels is None or (labels.size and (labels.min() < 0 or labels.max() >= num_labels)):
                raise ValueError(f"label codes outside the index's {num_labels or 0} label names")
    except _DAMAGE as e:
        raise _damaged(path, f"{type(e).__name__}: {e}"[:300]) from None
    return m, labels


def load_word_counts(path: Path, vocab_size: int) -> np.ndarray:
    """A language's whole-training-set word counts, one finite count >= 0 per vocabulary word."""
    try:
        with open(path, "rb") as f:
            shape, _, dtype = read_npy_header(f)
            if shape != (vocab_size,) or dtype.kind not in "iuf":
                raise ValueError(f"{dtype} {list(shape)} for a vocabulary of {vocab_size} words")
            f.seek(0)
            counts = np.load(f, allow_pickle=False)
        if not (np.isfinite(counts).all() and (counts >= 0).all()):
            raise ValueError("counts that are not finite numbers >= 0")
    except (OSError, ValueError, EOFError) as e:
        raise XtmError(f"unreadable word counts ({type(e).__name__}: {e}); rebuild the shards "
                       "(delete the shard directory)", path=path) from None
    return counts


class ShardWriter:
    """Rows in, fixed-size shards `<lang>/<split>-NNNNN.npz` out; keeps at most one shard's rows in memory.

    `shards` lists what was written (file, docs, nnz), for the index; `digest` the rows written, in order (the
    index's train_sha256, which a resumed run compares).
    """

    def __init__(self, root: Path, lang: str, split: str, size: int) -> None:
        self.root, self.lang, self.split, self.size = root, lang, split, size
        self.parts: list[sp.csr_matrix] = []
        self.labels: list[np.ndarray] = []
        self.rows = 0
        self.shards: list[dict[str, Any]] = []
        self.digest = RowsDigest()
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
        self.digest.add(m)
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
    # The values opening the shards relies on, with the right types (a string where a count belongs was a
    # TypeError traceback): what is wrong is named, and the directory rebuilt as any damaged one.
    problems = []
    if not isinstance(index["info"], dict):
        problems.append("info is not an object")
    settings = index["settings"]
    if not isinstance(settings, dict) or type(settings.get("shard_size")) is not int:
        problems.append("settings is not an object with a whole-number shard_size")
    elif not known_token_rules(settings.get("token_rules", TOKEN_RULES)):
        problems.append(f"settings.token_rules is not one of 1 to {TOKEN_RULES}")
    names = index.get("label_names")
    if names is not None and not isinstance(names, list):
        problems.append("label_names is not a list")
    for x in index["langs"]:
        for split in ("train", "test"):
            entries = index["languages"][x][split]
            if not isinstance(entries, list) or not all(_shard_entry(e, x, split) for e in entries):
                problems.append(f"languages.{x}.{split} is not a list of shards (file, docs, nnz)")
    if problems:
        raise XtmError(f"damaged shard index ({'; '.join(problems)}); rebuild the shards (delete the shard "
                       "directory)", path=path)


def _shard_entry(entry: Any, lang: str, split: str) -> bool:
    """An index entry as ShardWriter writes it: `<lang>/<split>-NNNNN.npz` (never a path out of the directory)
    and whole-number counts."""
    def count(key: str) -> bool:
        return type(entry.get(key)) is int and entry[key] >= 0

    return isinstance(entry, dict) and isinstance(entry.get("file"), str) \
        and re.fullmatch(rf"{re.escape(lang)}/{split}-[0-9]+\.npz", entry["file"]) is not None \
        and count("docs") and count("nnz")

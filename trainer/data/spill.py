"""The out-of-core preprocessor's pass-1 spill: tokenized documents on disk, read back in chunks.

Per language, flat binary files in a temporary directory (`ids`, `counts`: int32 per (document,
distinct token); `lens`: tokens per document; `labels`: int32 label code, -1 for none; `splits`:
int8, 0 none, 1 train, 2 test). Only the token -> id table (the distinct words) stays in memory.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["CHUNK_DOCS", "Spill"]

# Documents per chunk when reading the spill back (vocabulary counting, pass 2).
CHUNK_DOCS = 50_000
# Spill buffers are written out at this many entries (4 MB of int32).
_FLUSH = 1 << 20
_SPLIT_CODE = {None: 0, "train": 1, "test": 2}
_FILES = {"ids": "i", "counts": "i", "lens": "i", "labels": "i", "splits": "b"}


class Spill:
    """One language's tokenized documents, appended to flat int32/int8 files in a temp dir.

    Close it (`close`, or `discard` when the build failed) before reading it back.
    """

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.token_index: dict[str, int] = {}
        self.n = 0
        self.explicit = 0
        self.n_labeled = 0
        self.has_split = False
        self._buf = {k: array(code) for k, code in _FILES.items()}
        self._files = {k: open(d / f"{k}.bin", "wb") for k in self._buf}  # noqa: SIM115 - closed in close()

    def add(self, tokens: dict[str, int], label_code: int, split: str | None, explicit: bool) -> None:
        index = self.token_index
        ids, counts = self._buf["ids"], self._buf["counts"]
        for tok, c in tokens.items():
            tid = index.get(tok)
            if tid is None:
                tid = index[tok] = len(index)
            ids.append(tid)
            counts.append(c)
        self._buf["lens"].append(len(tokens))
        self._buf["labels"].append(label_code)
        self._buf["splits"].append(_SPLIT_CODE[split])
        self.n += 1
        self.explicit += explicit
        self.n_labeled += label_code >= 0
        self.has_split |= split is not None
        if len(ids) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        for k, buf in self._buf.items():
            if len(buf):
                buf.tofile(self._files[k])
                del buf[:]

    def close(self) -> None:
        self.flush()
        self.discard()

    def discard(self) -> None:
        """Close the files without writing what is buffered (the build failed; the spill is deleted)."""
        for f in self._files.values():
            f.close()

    def read(self, name: str, dtype: type, start: int, count: int) -> np.ndarray:
        """`count` entries of a spill file from entry `start`, without reading the rest."""
        item = np.dtype(dtype).itemsize
        with open(self.dir / f"{name}.bin", "rb") as f:
            f.seek(start * item)
            return np.fromfile(f, dtype=dtype, count=count)

    def test_flags(self) -> np.ndarray:
        """Per document: its `split` field says test (one byte per document)."""
        return self.read("splits", np.int8, 0, self.n) == _SPLIT_CODE["test"]

    def label_codes(self) -> set[int]:
        """The label codes its documents carry (-1, no label, left out)."""
        seen: set[int] = set()
        for start in range(0, self.n, CHUNK_DOCS):
            codes = self.read("labels", np.int32, start, min(CHUNK_DOCS, self.n - start))
            seen.update(np.unique(codes[codes >= 0]).tolist())
        return seen

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first doc, lens, ids, counts) for consecutive chunks of documents."""
        pos = 0
        for start in range(0, self.n, CHUNK_DOCS):
            lens = self.read("lens", np.int32, start, min(CHUNK_DOCS, self.n - start))
            k = int(lens.sum())
            yield start, lens, self.read("ids", np.int32, pos, k), self.read("counts", np.int32, pos, k)
            pos += k

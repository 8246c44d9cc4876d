"""Bags of words: tokenized documents counted over a vocabulary, in the encoders' input formats.

The one owner of how a batch of texts becomes encoder input, shared by `TopicModel` (inference)
and anyone who feeds an exported encoder directly (the exporter's parity check, benchmarks):

    bags = count_words(texts, tokenizer, vocab, V)     # BagsOfWords, CSR-style
    ids, counts = bags.padded(rows)                    # sparse encoders: word ids + counts [n, L]
    dense = bags.dense(rows, V)                        # dense encoders: counts [n, V]
    bags = BagsOfWords.from_csr(scipy_csr_matrix)      # bags someone else counted

Sparse encoders (bundle schema 2) read a document as its distinct word ids and their counts,
padded to the batch's longest document with id 0 and count 0 (which adds nothing). numpy only:
the runtime never needs torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np

__all__ = ["BagsOfWords", "concat", "count_words"]


@dataclass(frozen=True)
class BagsOfWords:
    """Bags of words of a list of documents, CSR-style: document i's distinct word ids are
    words[indptr[i]:indptr[i+1]] (ascending) and their counts the same slice of counts.

    tokens and known count every token of a document and those found in the vocabulary (the
    runtime's oov_ratio); bags built from a matrix (`from_csr`) have no tokens to count and
    take the in-vocabulary totals for both.
    """

    indptr: np.ndarray  # int64 [n + 1]
    words: np.ndarray   # int64 [nnz]
    counts: np.ndarray  # float32 [nnz]
    tokens: np.ndarray  # int64 [n], every token of each document, in the vocabulary or not
    known: np.ndarray   # int64 [n], tokens found in the vocabulary

    @classmethod
    def from_csr(cls, m: Any) -> BagsOfWords:
        """Bags of a scipy.sparse matrix [n, V] of counts (duplicates summed, indices sorted)."""
        import scipy.sparse as sp

        m = sp.csr_matrix(m, dtype=np.float32)
        m.sum_duplicates()
        m.sort_indices()
        indptr = m.indptr.astype(np.int64)
        totals = np.rint(np.asarray(m.sum(axis=1), dtype=np.float64).ravel()).astype(np.int64)
        return cls(indptr=indptr, words=m.indices.astype(np.int64), counts=m.data.astype(np.float32),
                   tokens=totals, known=totals)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def lengths(self) -> np.ndarray:
        """Distinct in-vocabulary words per document, int64 [n]."""
        return np.diff(self.indptr)

    def dense(self, rows: np.ndarray, V: int) -> np.ndarray:
        """float32 [len(rows), V] counts of documents `rows`: the dense encoders' input."""
        lens = self.lengths()[rows]
        pos = _ranges(self.indptr[rows], lens)
        out = np.zeros((len(rows), V), dtype=np.float32)
        out[np.repeat(np.arange(len(rows)), lens), self.words[pos]] = self.counts[pos]
        return out

    def csr(self, V: int) -> Any:
        """All documents as a scipy.sparse CSR matrix [n, V] float32 (indices sorted)."""
        try:
            import scipy.sparse as sp
        except ImportError:  # (a runtime-only install: a bare ModuleNotFoundError before)
            from xtm.errors import XtmError

            raise XtmError("sparse bags of words need scipy, which a runtime-only install leaves out: pip install "
                           "scipy (or ask for sparse=False: a dense numpy array)") from None

        return sp.csr_matrix((self.counts, self.words, self.indptr), shape=(len(self), V))

    @cached_property
    def _with_sentinel(self) -> tuple[np.ndarray, np.ndarray]:
        return np.append(self.words, 0), np.append(self.counts, np.float32(0))

    def padded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(word ids int64 [n, L], counts float32 [n, L]) of documents `rows`, L their longest
        length (at least 1); padding is id 0 with count 0, which adds nothing. The sparse
        encoders' input."""
        lens = self.lengths()[rows]
        L = max(1, int(lens.max(initial=0)))
        col = np.arange(L)
        pos = self.indptr[rows][:, None] + col
        # Out-of-row slots read a sentinel (id 0, count 0) appended at the end.
        pos = np.where(col < lens[:, None], pos, len(self.words))
        words, counts = self._with_sentinel
        return words[pos], counts[pos]


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Concatenated arange(s, s + n) for each (s, n), vectorised."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lens)
    return np.arange(total, dtype=np.int64) + np.repeat(starts - (ends - lens), lens)


def count_words(texts: Sequence[str], tok: Callable[[str], list[str]], vocab: dict[str, int],
                V: int) -> BagsOfWords:
    """Tokenize `texts` with `tok` and count their tokens over `vocab` (word -> column < V);
    tokens outside the vocabulary are only counted in `tokens`.

    Token -> id lookups run in C (map over dict.get) and the counting is one np.unique over
    doc * V + id: no per-token Python bytecode beyond the tokenizer.
    """
    n = len(texts)
    flat: list[str] = []
    lens = np.empty(n, dtype=np.int64)
    for j, text in enumerate(texts):
        toks = tok(text)
        flat += toks
        lens[j] = len(toks)
    ids = np.fromiter(map(vocab.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    keep = ids >= 0
    cells, counts = np.unique(rows[keep] * V + ids[keep], return_counts=True)
    doc = cells // V
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc, minlength=n), out=indptr[1:])
    return BagsOfWords(indptr=indptr, words=cells - doc * V, counts=counts.astype(np.float32), tokens=lens,
                       known=np.bincount(rows[keep], minlength=n).astype(np.int64))


def concat(parts: list[BagsOfWords]) -> BagsOfWords:
    """One BagsOfWords of the documents of `parts`, in order (counting batch by batch keeps only
    word ids, never token strings, for a whole window of documents)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [int(p.indptr[-1]) for p in parts[:-1]])
    indptr = np.concatenate([np.zeros(1, dtype=np.int64)] + [p.indptr[1:] + o for p, o in zip(parts, offsets,
                                                                                              strict=True)])
    return BagsOfWords(indptr=indptr, words=np.concatenate([p.words for p in parts]),
                       counts=np.concatenate([p.counts for p in parts]),
                       tokens=np.concatenate([p.tokens for p in parts]),
                       known=np.concatenate([p.known for p in parts]))

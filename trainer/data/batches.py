"""Where training batches come from: one interface, an in-memory and a streamed implementation.

The training loop consumes a `BatchSource` and nothing else about the training documents:
  - `sizes()`                         training documents per language;
  - `fingerprint()`                   what a resumed run checks it is training on the same data: per
                                      language the counts and a digest of the documents' word counts
                                      (`same_data` compares them);
  - `epoch(rng, batch, rank, world, start_step)`
                                      this rank's steps of one epoch from its `start_step`-th on,
                                      each a list (one entry per language) of (CSR rows, their
                                      document indices);
  - `sequential(i, batch)`            every training document of language i once, in order
                                      (the exact batch-norm statistics after training).
`InMemoryBatches` slices a `Corpus`'s CSR matrices; `xtm.trainer.data.shard_batches.ShardedBatches`
streams shards from disk. Both draw an epoch's whole order from the loop's generator when the
epoch starts, and nothing else, so a run resumed at an epoch boundary continues exactly, and one
stopped inside an epoch redraws the same order from the saved generator state and skips the
steps it had done (`start_step`: their batches are never sliced). Every rank of a distributed run draws the
same order and keeps the steps s with s % world == rank: disjoint documents, equal step counts.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from xtm.corpus import Corpus

Step = list[tuple[sp.csr_matrix, np.ndarray]]


class BatchSource(Protocol):
    def sizes(self) -> list[int]: ...

    def fingerprint(self) -> dict[str, Any]: ...

    def epoch(self, rng: np.random.Generator, batch_size: int, rank: int = 0, world: int = 1,
              start_step: int = 0) -> Iterator[Step]: ...

    def sequential(self, lang_index: int, batch_size: int) -> Iterator[sp.csr_matrix]: ...


def steps_per_epoch(sizes: Sequence[int], batch_size: int, world: int = 1) -> int:
    """ceil(max N / batch) steps, rounded up to a multiple of the number of ranks: every rank runs
    the same number of steps (collectives need that) and together they see every document."""
    return max(1, math.ceil(max(sizes) / (batch_size * world))) * world


def epoch_batches(sizes: list[int], batch_size: int, rng: np.random.Generator,
                  world: int = 1) -> list[list[np.ndarray]]:
    """Index batches for one epoch: steps x languages, each language shuffled and cycled to fit."""
    steps = steps_per_epoch(sizes, batch_size, world)
    per_lang = []
    for n in sizes:
        need = steps * batch_size
        order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(need / n))])[:need]
        per_lang.append(order.reshape(steps, batch_size))
    return [[per_lang[i][s] for i in range(len(sizes))] for s in range(steps)]


class RowsDigest:
    """SHA-256 of the rows of CSR matrices added in order: another document, another count or another order of
    the same documents is another digest; how the rows are cut into matrices is not (a corpus in memory and its
    shards at any --shard-size digest alike), nor the arrays' index or value types."""

    def __init__(self) -> None:
        # one stream each for the row lengths, the column ids and the values: each is the same bytes whatever
        # the cut, where one stream of interleaved matrices would not be
        self._streams = [hashlib.sha256() for _ in range(3)]
        self.columns = -1

    def add(self, m: sp.csr_matrix) -> None:
        c = sp.csr_matrix(m)
        if not c.has_sorted_indices:
            c = c.sorted_indices()
        self.columns = c.shape[1]
        for h, array, dtype in zip(self._streams, (np.diff(c.indptr), c.indices, c.data),
                                   (np.int64, np.int64, np.float64), strict=True):
            h.update(np.ascontiguousarray(array, dtype=dtype).tobytes())

    def hexdigest(self) -> str:
        return hashlib.sha256(f"{self.columns}:".encode() + b"".join(h.digest() for h in self._streams)).hexdigest()


def rows_digest(matrices: Iterable[sp.csr_matrix]) -> str:
    """RowsDigest of `matrices`' rows, in order."""
    digest = RowsDigest()
    for m in matrices:
        digest.add(m)
    return digest.hexdigest()


def data_differences(saved: Any, now: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """How the training data `now` differs from the fingerprint a checkpoint `saved`, per language, said for a
    user; empty when the same. Only what both record is compared: a checkpoint written before a key was recorded
    (the documents' digest) is judged on the rest."""
    if not isinstance(saved, dict) or set(saved) != set(now):
        return [f"languages {sorted(saved) if isinstance(saved, dict) else saved} then, {sorted(now)} now"]
    out = []
    for lang, fp in now.items():
        then = saved[lang]
        if not isinstance(then, dict):  # (a checkpoint edited by hand: nothing to compare is a difference)
            out.append(f"'{lang}': the checkpoint records {str(then)[:40]}")
            continue
        counts = [f"{key} {then.get(key)} then, {fp[key]} now" for key in ("docs", "nnz", "vocab")
                  if key in then and then[key] != fp[key]]
        if counts:
            out.append(f"'{lang}': {', '.join(counts)}")
        elif any(key in then and then[key] != value for key, value in fp.items()):
            out.append(f"'{lang}': as many documents and words, but other documents or another order")
    return out


class InMemoryBatches:
    """Batches sliced from the corpus's CSR training matrices."""

    def __init__(self, corpus: Corpus) -> None:
        self.corpus = corpus
        self.bows = [lc.train_bow for lc in corpus.languages]

    def sizes(self) -> list[int]:
        return [b.shape[0] for b in self.bows]

    def fingerprint(self) -> dict[str, Any]:
        return {lc.lang: {"vocab": lc.vocab_size, "docs": lc.num_train, "nnz": int(lc.train_bow.nnz),
                          "train_sha256": rows_digest([lc.train_bow])}
                for lc in self.corpus.languages}

    def epoch(self, rng: np.random.Generator, batch_size: int, rank: int = 0, world: int = 1,
              start_step: int = 0) -> Iterator[Step]:
        batches = epoch_batches(self.sizes(), batch_size, rng, world)
        for rows in batches[rank::world][start_step:]:
            yield [(self.bows[i][r], r) for i, r in enumerate(rows)]

    def sequential(self, lang_index: int, batch_size: int) -> Iterator[sp.csr_matrix]:
        bow = self.bows[lang_index]
        for start in range(0, bow.shape[0], batch_size):
            yield bow[start:start + batch_size]

"""The training loop's batch source over a shard directory (xtm.trainer.data.batches.BatchSource).

The out-of-core counterpart of `InMemoryBatches`: the same interface and the same guarantees (an
epoch's order drawn from the loop's generator, exact resumption, disjoint steps per rank), with at
most `buffer_shards` shards per language in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from xtm.errors import XtmError
from xtm.trainer.data.batches import Step, steps_per_epoch

if TYPE_CHECKING:
    from xtm.trainer.data.sharding import ShardedCorpus

__all__ = ["ShardedBatches"]


class ShardedBatches:
    """The training loop's batch source over shards (see xtm.trainer.loop.BatchSource).

    Each epoch and language: shards in a fresh random order, read `buffer_shards` at a time,
    rows shuffled within that buffer, cut into batches; leftover rows carry into the next buffer,
    and a language with fewer documents starts another pass, as the in-memory source cycles.
    Everything is drawn from the epoch's seed, so a run resumed at an epoch boundary continues
    exactly; every rank of a distributed run draws the same order and keeps its own batches.
    """

    def __init__(self, corpus: ShardedCorpus, buffer_shards: int = 4) -> None:
        if buffer_shards < 1:
            raise XtmError(f"buffer_shards must be >= 1, got {buffer_shards}")
        self.corpus = corpus
        self.buffer_shards = buffer_shards
        self._offsets = [np.concatenate([[0], np.cumsum([s["docs"] for s in lc.train])]) for lc in corpus.languages]

    def sizes(self) -> list[int]:
        return [lc.num_train for lc in self.corpus.languages]

    def fingerprint(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for lc in self.corpus.languages:
            out[lc.lang] = {"vocab": len(lc.vocab), "docs": lc.num_train, "nnz": int(sum(s["nnz"] for s in lc.train))}
            if lc.train_sha256 is not None:  # (shards cut before the digest was recorded: counts only)
                out[lc.lang]["train_sha256"] = lc.train_sha256
        return out

    def _stream(self, i: int, rng: np.random.Generator, batch_size: int,
                keep: Iterator[bool]) -> Iterator[tuple[sp.csr_matrix, np.ndarray] | None]:
        lc = self.corpus.languages[i]
        offsets = self._offsets[i]
        carry: sp.csr_matrix | None = None
        carry_ids = np.zeros(0, dtype=np.int64)
        while True:
            order = rng.permutation(len(lc.train))
            for g in range(0, len(order), self.buffer_shards):
                parts = [] if carry is None else [carry]
                ids = [carry_ids]
                for j in order[g:g + self.buffer_shards]:
                    m, _ = self.corpus.load(lc.train[j])
                    parts.append(m)
                    ids.append(np.arange(offsets[j], offsets[j] + m.shape[0]))
                m = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
                row_ids = np.concatenate(ids)
                perm = rng.permutation(m.shape[0])
                full = (m.shape[0] // batch_size) * batch_size
                for s in range(0, full, batch_size):
                    rows = perm[s:s + batch_size]
                    # Other ranks' batches are skipped without slicing them.
                    yield (m[rows], row_ids[rows]) if next(keep) else None
                rest = perm[full:]
                carry, carry_ids = m[rest], row_ids[rest]

    def epoch(self, rng: np.random.Generator, batch_size: int, rank: int = 0,
              world: int = 1, start_step: int = 0) -> Iterator[Step]:
        steps = steps_per_epoch(self.sizes(), batch_size, world)
        seeds = rng.integers(0, 2**63 - 1, size=len(self.corpus.languages))

        def wanted(step: int) -> bool:
            # This rank's steps, from its `start_step`-th on (a resumed epoch skips the ones done).
            return step % world == rank and step // world >= start_step

        def mine() -> Iterator[bool]:
            k = 0
            while True:
                yield wanted(k)
                k += 1

        streams = [self._stream(i, np.random.default_rng(int(seed)), batch_size, mine())
                   for i, seed in enumerate(seeds)]
        for step in range(steps):
            batch = [next(s) for s in streams]
            if wanted(step):
                yield batch  # type: ignore[misc]

    def sequential(self, lang_index: int, batch_size: int) -> Iterator[sp.csr_matrix]:
        for entry in self.corpus.languages[lang_index].train:
            m, _ = self.corpus.load(entry)
            for start in range(0, m.shape[0], batch_size):
                yield m[start:start + batch_size]


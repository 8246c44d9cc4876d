"""InfoCTM (Wu et al., 2023): topic alignment by mutual information between linked words (TAMI).

Two independent VAE topic models (separate encoders, free topic-word weights phi_l) plus TAMI:
every word's topic representation (its column of phi, L2-normalised) is contrasted against the
other language's words. Positives come from cross-lingual vocabulary linking: word i of language
a is linked to word j of b when i, or a monolingual neighbour of i (word-vector cosine >= 0.4),
translates to j; link counts weight the positives. Negatives are all unlinked words of b.

    l_a(i, j) = -log( e^{s_ij} / (e^{s_ij} + sum_{j' unlinked to i} e^{s_ij'}) ),   s = cos / tau
    L_TAMI = w_MI * (sum P_a l_a + sum P_b l_b) / (sum P_a + sum P_b)

The reference code materialises dense V_a x V_b masks and multiplies them every step (~2 s per
batch on 2 cores). Here the negative sum is the full row (or column) sum of e^s minus the few
linked entries, one V_a x V_b similarity matrix, walked in row blocks and never kept, serves both
directions and gives the linked pairs' similarities, and links stay sparse.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor

from xtm.corpus import Corpus
from xtm.models_zoo.base import BuildContext, sparse_to_aux
from xtm.models_zoo.components import Bow
from xtm.models_zoo.vae import TwoLanguageVAE


def neighbour_matrix(vectors: np.ndarray | None, vocab_size: int, threshold: float,
                     chunk: int = 1024) -> sp.csr_matrix:
    """Binary V x V matrix of monolingual neighbours (cosine >= threshold, self included)."""
    if vectors is None:
        return sp.identity(vocab_size, dtype=np.float32, format="csr")
    v = np.asarray(vectors, dtype=np.float32)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    rows, cols = [], []
    for start in range(0, v.shape[0], chunk):
        sims = v[start:start + chunk] @ v.T
        r, c = np.nonzero(sims >= threshold)
        rows.append(r + start)
        cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(v.shape[0], v.shape[0]))
    m.setdiag(1.0)  # a word with a zero vector is still its own neighbour
    return m


def linked_pairs(neighbours: sp.csr_matrix, translations: sp.spmatrix) -> sp.csr_matrix:
    """P = S @ T: counts of (word, word-or-neighbour-translates-to) links, shape (V_src, V_dst)."""
    t = sp.csr_matrix(translations, dtype=np.float32)
    t.data[:] = 1.0
    return sp.csr_matrix(neighbours @ t)


class PairPlan(NamedTuple):
    """Where the linked pairs sit in the [V_a, V_b] similarity matrix, sorted by row so that each row block
    finds its pairs in one slice: flat positions (row * V_b + col), the sort order, block boundaries."""

    flat: Tensor    # [P] sorted flat positions
    order: Tensor   # [P] original pair index of each sorted position
    bounds: list[int]  # bounds[k]:bounds[k + 1] are the sorted pairs of row block k

    @classmethod
    def of(cls, rows: Tensor, cols: Tensor, n_rows: int, n_cols: int, block: int) -> PairPlan:
        flat, order = torch.sort(rows.long() * n_cols + cols.long(), stable=True)
        starts = torch.arange(0, n_rows + block, block, dtype=torch.long, device=flat.device) * n_cols
        return cls(flat, order, torch.searchsorted(flat, starts).tolist())


class ExpSimilaritySums(torch.autograd.Function):
    """Row and column sums of exp(S), S = A @ B^T, and S at given (row, col) pairs, without keeping the
    [V_a, V_b] matrix alive.

    Forward and backward walk row blocks that fit in cache; backward recomputes each block. The pairs'
    values are read from the same blocks (and their gradient added to the block's dS), instead of
    gathering [P, K] rows of A and B: on ECNews (167,535 pairs) the gathers, products and scatter-adds
    took as long as the dense part. Same value and gradient as the plain expression.
    """

    # 64 rows: a [64, V_b] block (1.3 MB at V_b = 5,000) stays in L2 between the matmul, the exp and
    # the sums. The dense part of a TAMI step at one thread, V = 5,000 / 10,000: 188 / 905 ms at 512
    # rows, 118 / 479 at 64 (32: 127 / 512; 128: 127 / 500).
    BLOCK = 64

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, plan: PairPlan) -> tuple[Tensor, Tensor, Tensor]:  # noqa: D102
        n_cols, blk_size = b.shape[0], ExpSimilaritySums.BLOCK
        rows = a.new_empty(a.shape[0])
        cols = a.new_zeros(n_cols)
        pairs_sorted = a.new_empty(plan.flat.shape[0])
        for k, start in enumerate(range(0, a.shape[0], blk_size)):
            e = a[start:start + blk_size] @ b.t()
            lo, hi = plan.bounds[k], plan.bounds[k + 1]
            pairs_sorted[lo:hi] = e.view(-1)[plan.flat[lo:hi] - start * n_cols]
            e.exp_()
            rows[start:start + e.shape[0]] = e.sum(1)
            cols += e.sum(0)
        pairs = torch.empty_like(pairs_sorted).index_copy_(0, plan.order, pairs_sorted)
        ctx.save_for_backward(a, b)
        ctx.plan = plan
        return rows, cols, pairs

    @staticmethod
    def backward(ctx, g_rows: Tensor | None, g_cols: Tensor | None,
                 g_pairs: Tensor | None) -> tuple[Tensor, Tensor, None]:  # noqa: D102
        a, b = ctx.saved_tensors
        plan: PairPlan = ctx.plan
        n_cols, blk_size = b.shape[0], ExpSimilaritySums.BLOCK
        g_rows = torch.zeros_like(a[:, 0]) if g_rows is None else g_rows
        g_cols = torch.zeros_like(b[:, 0]) if g_cols is None else g_cols
        g_sorted = None if g_pairs is None else g_pairs.index_select(0, plan.order)
        grad_a = torch.empty_like(a)
        grad_b = torch.zeros_like(b)
        for k, start in enumerate(range(0, a.shape[0], blk_size)):
            blk = a[start:start + blk_size]
            e = torch.exp(blk @ b.t())
            e.mul_(g_rows[start:start + blk.shape[0], None] + g_cols[None, :])   # dS from the sums
            if g_sorted is not None:
                lo, hi = plan.bounds[k], plan.bounds[k + 1]
                e.view(-1).index_add_(0, plan.flat[lo:hi] - start * n_cols, g_sorted[lo:hi])  # + dS at the pairs
            grad_a[start:start + blk.shape[0]] = e @ b
            grad_b.addmm_(e.t(), blk)
        return grad_a, grad_b, None


class InfoCTM(TwoLanguageVAE):
    name: ClassVar[str] = "infoctm"
    # tami_every: the exact TAMI gradient is computed on every N-th training step and reused on the
    # steps between (see `_tami_reusing_gradient`). 1 is the paper's every-step TAMI.
    # mi_decay_from: the position in phase 1 (0-1) from which TAMI's weight falls linearly to mi_floor (a
    # fraction of weight_mi) at its end (see `mi_factor`); 1 is the paper's constant weight.
    defaults: ClassVar[dict[str, Any]] = {**TwoLanguageVAE.defaults, "tau": 0.2, "pos_threshold": 0.4,
                                          "weight_mi": 30.0, "tami_every": 1, "mi_decay_from": 1.0,
                                          "mi_floor": 0.0}
    needs_dictionary: ClassVar[bool] = True  # TAMI's positives are dictionary-linked words
    # The reused TAMI gradient is training state (a resumed run must reuse the same one); checkpoints
    # from before it existed load with an empty cache, which the next step refills.
    optional_state: ClassVar[tuple[str, ...]] = ("tami_cache_step", "tami_cache_value", "tami_cache_grad_0",
                                                 "tami_cache_grad_1")
    # before they existed, TAMI ran every step with a constant weight
    legacy_hparams: ClassVar[dict[str, Any]] = {**TwoLanguageVAE.legacy_hparams, "tami_every": 1,
                                                "mi_decay_from": 1.0, "mi_floor": 0.0}

    def __init__(self, langs: list[str], vocab_sizes: list[int], num_topics: int,
                 aux: dict[str, Tensor] | None = None, **hparams: Any) -> None:
        super().__init__(langs, vocab_sizes, num_topics, aux=aux, **hparams)
        # (tami_every, mi_decay_from and mi_floor are range-checked with the other numbers: base.check_hparam)
        # Training steps taken with reuse on (-1: nothing cached), the cached loss and its gradient.
        self.register_buffer("tami_cache_step", torch.tensor(-1, dtype=torch.long))
        self.register_buffer("tami_cache_value", torch.zeros(()))
        for i, p in enumerate(self.phi):
            self.register_buffer(f"tami_cache_grad_{i}", torch.zeros_like(p))

    @classmethod
    def prepare_aux(cls, corpus: Corpus, num_topics: int, context: BuildContext,
                    **hparams: Any) -> dict[str, Tensor]:
        a, b = corpus.langs
        aux: dict[str, Tensor] = {}
        for src, dst, key in ((a, b, "pa"), (b, a, "pb")):
            lc = corpus.lang(src)
            s = neighbour_matrix(lc.word_vectors, lc.vocab_size, hparams["pos_threshold"])
            aux.update(sparse_to_aux(linked_pairs(s, corpus.link_matrix(src, dst)), key))
        return aux

    def alignment_losses(self, bows: list[Bow], thetas: list[Tensor],
                         rows: list[Tensor] | None) -> dict[str, Tensor]:
        if self.aux_pa_values.numel() == 0 and self.aux_pb_values.numel() == 0:
            return {}  # no links at all: nothing to align (training refuses this: check_capabilities)
        factor = self.mi_factor()
        if self.hparams["weight_mi"] == 0 or factor == 0:
            return {}  # the term switched off: skip its [V x V] pass, most of a step's time
        if self.hparams["tami_every"] > 1 and self.training and torch.is_grad_enabled():
            tami = self._tami_reusing_gradient()
        else:
            tami = self.hparams["weight_mi"] * self.tami()
        return {"tami": tami if factor == 1 else factor * tami}

    def mi_factor(self) -> float:
        """TAMI's weight at this training position, as a multiple of weight_mi: 1 until mi_decay_from of
        phase 1, then falling linearly to mi_floor at phase 1's end, mi_floor in phase 2.

        Not the paper's (a constant weight), and not the default: TAMI aligns the languages early and costs
        topic uniqueness the longer it pulls (InfoCTM on Rakuten_Amazon without it: TU 0.96, cross-lingual
        classification at chance; with it, constant: TU 0.85 at 100 epochs). Fading it over the last 60% of
        phase 1 gives Rakuten_Amazon the published TU within 100 epochs with its classification cells; to 0
        it halves CNPMI, to a floor of 0.3 it costs 13% of it, and either costs ECNews about 8 points of
        ZH-C (docs/benchmarks.md, "TAMI fading").
        """
        start, position = float(self.hparams["mi_decay_from"]), self.training_position
        if start >= 1 or position <= start:
            return 1.0
        floor = float(self.hparams["mi_floor"])
        return floor + (1.0 - floor) * max(0.0, (1.0 - position) / (1.0 - start))

    def schedule_spans_epochs(self) -> bool:
        return float(self.hparams["mi_decay_from"]) < 1

    def _tami_reusing_gradient(self) -> Tensor:
        """Weighted TAMI whose value and gradient are those of the last exact evaluation, refreshed every
        `tami_every` training steps.

        TAMI depends on phi alone, not on the batch, and phi moves little in a step, so the gradient a
        few steps old is close to the current one; reusing it (rather than skipping TAMI and doubling its
        weight) keeps every step's update and Adam's moments as they were. The dense similarity pass is
        74% of an ECNews step. A departure from the paper, measured in docs/benchmarks.md.
        """
        phis = list(self.phi)
        grads = [getattr(self, f"tami_cache_grad_{i}") for i in range(len(phis))]
        step = int(self.tami_cache_step)
        if step < 0 or step % self.hparams["tami_every"] == 0:
            value = self.hparams["weight_mi"] * self.tami()
            fresh = torch.autograd.grad(value, phis)
            with torch.no_grad():
                for g, f in zip(grads, fresh, strict=True):
                    g.copy_(f)
                self.tami_cache_value.copy_(value.detach())
            step = max(step, 0)
        self.tami_cache_step.fill_(step + 1)
        # Value: the cached loss; gradient with respect to phi: the cached gradient.
        return self.tami_cache_value + sum(((p - p.detach()) * g).sum() for p, g in zip(phis, grads, strict=True))

    def tami(self) -> Tensor:
        tau = self.hparams["tau"]
        fa = F.normalize(self.phi[0].t(), dim=1)   # [V_a, K]
        fb = F.normalize(self.phi[1].t(), dim=1)   # [V_b, K]
        # |s| <= 1/tau (5 at tau=0.2), so exp cannot overflow: no max-shift is needed. One pass over the
        # [V_a, V_b] similarities gives both directions' sums (rows for a, columns for b) and every
        # linked pair's similarity (a's pairs at (i, j), b's at (j, i)).
        total_a, total_b, s_pos = ExpSimilaritySums.apply(fa / tau, fb, self._pair_plan(fa.shape[0], fb.shape[0]))
        n_a = self.aux_pa_values.shape[0]

        def direction(key: str, totals: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
            i = getattr(self, f"aux_{key}_indices")[0]
            w = getattr(self, f"aux_{key}_values")
            # Sum of e^s over the anchor's linked words, removed from the full row sum -> negatives only.
            linked = torch.zeros_like(totals).index_add(0, i, torch.exp(s))
            neg = (totals - linked).clamp_min(0.0)
            loss = -(s - torch.log(torch.exp(s) + neg.index_select(0, i) + 1e-10))
            return (w * loss).sum(), w.sum()

        la, wa = direction("pa", total_a, s_pos[:n_a])
        lb, wb = direction("pb", total_b, s_pos[n_a:])
        return (la + lb) / (wa + wb).clamp_min(1.0)

    def _pair_plan(self, v_a: int, v_b: int) -> PairPlan:
        """The linked pairs' places in the similarity matrix: built once (the links never change; a
        reloaded state is checked through the index tensors' identity and version)."""
        pa, pb = self.aux_pa_indices, self.aux_pb_indices
        key = (pa.data_ptr(), pa._version, pb.data_ptr(), pb._version, v_a, v_b, ExpSimilaritySums.BLOCK)
        cached = getattr(self, "_plan_cache", None)
        if cached is None or cached[0] != key:
            plan = PairPlan.of(torch.cat([pa[0], pb[1]]), torch.cat([pa[1], pb[0]]), v_a, v_b,
                               ExpSimilaritySums.BLOCK)
            cached = self._plan_cache = (key, plan)
        return cached[1]

"""NMTM (Wu et al., 2020): two VAE topic models whose topic-word matrices borrow from each other.

Each language has its own first encoder layer; the rest of the encoder is shared. The decoder's
topic-word weights mix a language's own phi with the other language's phi carried across the
dictionary:  beta_a = lam * phi_b @ M_{b->a} + (1 - lam) * phi_a  (lam = 0.8), where
M_{b->a}[i, j] = (f_i * T[i, j] + 1) / sum_j' (f_i * T[i, j'] + 1), f_i the training count of word
i and T the binary translation matrix (the reference construction, +1 smoothing included).
M is dense in the reference code (25M cells, most of NMTM's per-epoch cost there); here it is
applied as a sparse product plus a rank-one term, which is the same arithmetic.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor, nn

from xtm.corpus import Corpus
from xtm.models_zoo.base import BuildContext, aux_to_sparse, sparse_to_aux
from xtm.models_zoo.components import BowEncoder, InputLayer
from xtm.models_zoo.vae import TwoLanguageVAE


def smoothed_map_factors(links: sp.spmatrix, counts: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray]:
    """For M = diag(1/Z) (diag(f) T + 1): return (diag(f/Z) T as sparse, 1/Z) so phi @ M is cheap."""
    t = sp.csr_matrix(links, dtype=np.float32)
    t.data[:] = 1.0
    degree = np.asarray(t.sum(axis=1)).ravel()
    z = counts * degree + t.shape[1]
    return sp.csr_matrix(sp.diags((counts / z).astype(np.float32)) @ t), (1.0 / z).astype(np.float32)


class NMTM(TwoLanguageVAE):
    name: ClassVar[str] = "nmtm"
    defaults: ClassVar[dict[str, Any]] = {**TwoLanguageVAE.defaults, "lam": 0.8,
                                          "bn_eps": 1e-3, "bn_momentum": 1e-3}
    needs_dictionary: ClassVar[bool] = True  # beta borrows across dictionary links

    def make_encoders(self) -> nn.ModuleList:
        hid = self.hparams["hidden"]
        shared = self.body(hid)  # one body object in both encoders = shared weights
        return nn.ModuleList(BowEncoder(InputLayer(v, hid), shared) for v in self.vocab_sizes)

    @classmethod
    def prepare_aux(cls, corpus: Corpus, num_topics: int, context: BuildContext,
                    **hparams: Any) -> dict[str, Tensor]:
        a, b = corpus.langs
        aux: dict[str, Tensor] = {}
        for src, dst, key in ((a, b, "ab"), (b, a, "ba")):
            counts = corpus.lang(src).word_counts()
            scaled, inv_z = smoothed_map_factors(corpus.link_matrix(src, dst), counts)
            aux.update(sparse_to_aux(scaled, f"map_{key}"))
            aux[f"map_{key}_invz"] = torch.from_numpy(inv_z)
        return aux

    def _carry(self, phi_src: Tensor, key: str) -> Tensor:
        """phi_src [K, V_src] @ M_{src->dst} -> [K, V_dst]."""
        sparse_part = torch.sparse.mm(self._map_t(key), phi_src.t()).t()     # (M_scaled^T phi^T)^T
        uniform_part = phi_src @ getattr(self, f"aux_map_{key}_invz")        # [K]
        return sparse_part + uniform_part[:, None]

    def _map_t(self, key: str) -> Tensor:
        # The maps are constant: build the transposed sparse tensor once per device.
        cache = self.__dict__.setdefault("_map_cache", {})
        dev = getattr(self, f"aux_map_{key}_values").device
        if (key, dev) not in cache:
            cache[(key, dev)] = aux_to_sparse(self, f"map_{key}").t().coalesce()
        return cache[(key, dev)]

    def topic_word(self) -> list[Tensor]:
        lam = self.hparams["lam"]
        beta_a = lam * self._carry(self.phi[1], "ba") + (1 - lam) * self.phi[0]
        beta_b = lam * self._carry(self.phi[0], "ab") + (1 - lam) * self.phi[1]
        return [beta_a, beta_b]

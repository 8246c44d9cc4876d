"""XTRA (Nguyen et al., 2025): cross-lingual topics aligned through representations and topics.

No dictionary and no word vectors: alignment comes from a multilingual sentence encoder.
  * Documents of both languages are embedded; K-means (K clusters) on the first language's
    u-SVD-reduced embeddings, the other language assigned to the nearest centroid. Cluster k
    initialises topic k's word weights (cluster BoW, tf-idf over clusters) and the prior's alpha.
  * Encoders: a language-specific projection (V -> 1000, ReLU, dropout) then one shared
    ProdLDA encoder (1000 -> 300 -> 300 -> K).
  * Losses besides reconstruction + KL:
      - cluster contrast: supervised-contrastive loss on the step's thetas of both languages,
        positives = documents in the same cluster (tau = 0.2);
      - representation alignment: InfoNCE between a linear projection of theta and the
        document's own sentence embedding (other documents of the batch are negatives, tau = 1);
      - topic alignment: InfoNCE between the two languages' topic-word rows projected to a
        shared space, positive = the same topic index (tau = 1), in both directions.
The reference code's reverse topic-alignment term applies each language's projection to the
other language's matrix (it only runs because both vocabularies have 5,000 words); here each
language's projection is applied to its own matrix, as the paper's description reads.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtm.config import DEFAULT_ENCODER
from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext
from xtm.models_zoo.cluster_init import embed_and_cluster
from xtm.models_zoo.components import Bow, BowEncoder, EncoderBody, InputLayer
from xtm.models_zoo.vae import TwoLanguageVAE


class XTRA(TwoLanguageVAE):
    name: ClassVar[str] = "xtra"
    defaults: ClassVar[dict[str, Any]] = {
        **TwoLanguageVAE.defaults, "hidden": 300, "share_dim": 1000, "dropout": 0.2,
        "tau_cluster": 0.2, "weight_cluster": 5.0, "weight_infonce": 80.0, "weight_beta": 7.0,
        "beta_proj_dim": 384, "encoder": DEFAULT_ENCODER, "grad_clip": 1.0, "init": "clusters",
    }
    needs_dictionary: ClassVar[bool] = False  # aligns through sentence embeddings
    reads_links: ClassVar[bool] = False       # never: a resume with another --dict (or none) changes nothing
    in_memory_only: ClassVar[str | None] = (
        "it embeds the text of every training document, clusters all embeddings at once (K-means) and "
        "keeps them in memory for its per-document losses")

    def __init__(self, langs: list[str], vocab_sizes: list[int], num_topics: int,
                 aux: dict[str, Tensor] | None = None, **hparams: Any) -> None:
        super().__init__(langs, vocab_sizes, num_topics, aux=aux, **hparams)
        h = self.hparams
        emb_dim = int(self.aux_embedding_dim.item())
        self.theta_proj = nn.Linear(num_topics, emb_dim)      # shared by both languages
        self.beta_proj = nn.ModuleList(nn.Linear(v, h["beta_proj_dim"]) for v in self.vocab_sizes)

    def make_encoders(self) -> nn.ModuleList:
        h = self.hparams
        shared = EncoderBody([h["share_dim"], h["hidden"], h["hidden"]], self.num_topics, h["dropout"],
                             h["bn_eps"], h["bn_momentum"])
        return nn.ModuleList(BowEncoder(InputLayer(v, h["share_dim"], "relu", h["dropout"]), shared)
                             for v in self.vocab_sizes)

    def prior_alpha(self) -> Tensor:
        return self.aux_prior_alpha

    @classmethod
    def prepare_aux(cls, corpus: Corpus, num_topics: int, context: BuildContext,
                    **hparams: Any) -> dict[str, Tensor]:
        emb, labels = embed_and_cluster(corpus, num_topics, hparams["encoder"], context)
        sizes = np.bincount(np.concatenate(labels), minlength=num_topics).astype(np.float64)
        alpha = sizes / sizes.mean() + 1e-6
        return {"prior_alpha": torch.from_numpy(alpha.astype(np.float32)),
                "embedding_dim": torch.tensor(emb[0].shape[1])}

    def prepare_training(self, corpus: Corpus, context: BuildContext) -> None:
        emb, labels = embed_and_cluster(corpus, self.num_topics, self.hparams["encoder"], context)
        for i in range(2):
            self.register_buffer(f"doc_emb_{i}", torch.from_numpy(np.ascontiguousarray(emb[i])), persistent=False)
            self.register_buffer(f"cluster_{i}", torch.from_numpy(labels[i]), persistent=False)

    # ---- losses ---------------------------------------------------------------------------------
    def alignment_losses(self, bows: list[Bow], thetas: list[Tensor],
                         rows: list[Tensor] | None) -> dict[str, Tensor]:
        h = self.hparams
        if rows is None:
            raise XtmError("xtra's training step needs the batch's document indices")
        out = {"cluster": h["weight_cluster"] * self._cluster_contrast(thetas, rows),
               "infonce": h["weight_infonce"] * sum(self._theta_infonce(thetas[i], rows[i], i) for i in range(2)),
               "topic_align": h["weight_beta"] * self._topic_alignment()}
        return out

    def _cluster_contrast(self, thetas: list[Tensor], rows: list[Tensor]) -> Tensor:
        z = F.normalize(torch.cat(thetas), dim=1)
        labels = torch.cat([self.cluster_0[rows[0]], self.cluster_1[rows[1]]])
        logits = z @ z.t() / self.hparams["tau_cluster"]
        n = z.shape[0]
        self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        pos = (labels[:, None] == labels[None, :]) & ~self_mask
        n_pos = pos.sum(1)
        has = n_pos > 0
        if not bool(has.any()):
            return z.sum() * 0.0
        mean_pos = torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(1)[has] / n_pos[has]
        return -mean_pos.mean()

    def _theta_infonce(self, theta: Tensor, rows: Tensor, lang: int) -> Tensor:
        r = F.normalize(F.dropout(self.theta_proj(theta), self.hparams["dropout"], self.training), dim=1)
        g = F.normalize(getattr(self, f"doc_emb_{lang}")[rows], dim=1)
        logits = r @ g.t()   # temperature 1, as the reference
        return F.cross_entropy(logits, torch.arange(len(rows), device=logits.device))

    def _topic_alignment(self) -> Tensor:
        d = self.hparams["dropout"]
        q = [F.normalize(F.dropout(self.beta_proj[i](self.phi[i]), d, self.training), dim=1) for i in range(2)]
        logits = q[0] @ q[1].t()
        target = torch.arange(self.num_topics, device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))

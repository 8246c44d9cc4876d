"""GloCTM (seed 000): topics in a global context space built by polyglot augmentation.

  * Polyglot augmentation (models_zoo/polyglot.py): every document is also seen in the unified
    vocabulary V_a + V_b, its bag of words expanded with the cross-lingual neighbours of its
    words (multilingual word embeddings, the dictionary, or both; no dictionary needed).
  * Dual pathway: per language, a local encoder on the original bag of words; one global
    encoder, shared by both languages, on the augmented bag. One topic-word matrix phi over the
    unified vocabulary: the global decoder reconstructs the augmented bag from all of it, each
    local decoder its own language from its slice, so topic k is the same topic in both
    languages by construction. Internal regularisation: symmetric KL between the local and the
    global theta of each document.
  * CKA grounding: 1 - CKA between the global theta of the step's documents (both languages
    together) and their multilingual sentence embeddings (linear, or RBF with median bandwidth):
    documents that mean the same get similar topic mixtures, across languages.
Inference and export use the local encoders (bag of words -> theta, like every backbone), which
the internal regularisation keeps in agreement with the global pathway; the runtime is unchanged.

The seed is a summary without equations or hyper-parameters; the choices above and the defaults
below are ours, documented in docs/gloctm.md and measured in benchmarks/gloctm.py.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtm.config import DEFAULT_ENCODER
from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext, CrossLingualTopicModel, ExtraLosses, aux_to_sparse, sparse_to_aux
from xtm.models_zoo.components import (
    Bow,
    BowDecoder,
    BowEncoder,
    EncoderBody,
    InputLayer,
    LaplacePrior,
    SparseRows,
    reconstruction_nll,
    reparameterize,
    xavier_topic_matrix,
)
from xtm.models_zoo.encoders import embed_cached
from xtm.models_zoo.polyglot import (
    NEIGHBOUR_SOURCES,
    augment,
    combine,
    dictionary_neighbours,
    embedding_neighbours,
)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019) between row-aligned representations x [n, p], y [n, q]."""
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = (y.t() @ x).pow(2).sum()
    return cross / ((x.t() @ x).pow(2).sum().sqrt() * (y.t() @ y).pow(2).sum().sqrt() + 1e-12)


def rbf_cka(x: Tensor, y: Tensor) -> Tensor:
    """RBF-kernel CKA, bandwidth = median pairwise distance of each representation."""
    def gram(z: Tensor) -> Tensor:
        d2 = torch.cdist(z, z).pow(2)
        with torch.no_grad():
            off = d2[~torch.eye(len(z), dtype=torch.bool, device=z.device)]
            sigma2 = off.median().clamp_min(1e-12)
        return torch.exp(-d2 / (2 * sigma2))

    def center(k: Tensor) -> Tensor:
        return k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()

    kx, ky = center(gram(x)), center(gram(y))
    return (kx * ky).sum() / ((kx * kx).sum().sqrt() * (ky * ky).sum().sqrt() + 1e-12)


def symmetric_kl(p: Tensor, q: Tensor, eps: float = 1e-10) -> Tensor:
    lp, lq = torch.log(p + eps), torch.log(q + eps)
    return 0.5 * ((p * (lp - lq)).sum(1) + (q * (lq - lp)).sum(1)).mean()


class GloCTM(CrossLingualTopicModel):
    name: ClassVar[str] = "gloctm"
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": 200, "dropout": 0.0, "alpha": 1.0, "bn_eps": 1e-5, "bn_momentum": 0.1,
        # polyglot augmentation
        "neighbour_source": "auto",      # auto: both when a dictionary is given, else embedding
        "neighbours": 5, "min_similarity": 0.3, "aug_weight": 0.5,
        # dual pathway and grounding
        "dual": True, "weight_internal": 1.0, "weight_cka": 50.0, "cka": "linear",
        "encoder": DEFAULT_ENCODER,
    }
    needs_dictionary: ClassVar[bool] = False  # a dictionary is optional (neighbour_source)
    in_memory_only: ClassVar[str | None] = (
        "its dual pathway keeps an augmented copy of every training document, and its CKA grounding every "
        "document's sentence embedding, in memory")

    def __init__(self, langs: list[str], vocab_sizes: list[int], num_topics: int,
                 aux: dict[str, Tensor] | None = None, **hparams: Any) -> None:
        super().__init__(langs, vocab_sizes, num_topics, aux=aux, **hparams)
        h = self.hparams
        if h["cka"] not in ("linear", "rbf"):
            raise XtmError(f"gloctm: cka must be 'linear' or 'rbf', got {h['cka']!r}")
        hid, total = h["hidden"], sum(self.vocab_sizes)

        def body() -> EncoderBody:
            return EncoderBody([hid, hid], num_topics, h["dropout"], h["bn_eps"], h["bn_momentum"])

        self.encoders = nn.ModuleList(BowEncoder(InputLayer(v, hid), body()) for v in self.vocab_sizes)
        self.global_encoder = BowEncoder(InputLayer(total, hid), body())
        self.decoders = nn.ModuleList(BowDecoder(v, h["bn_eps"], h["bn_momentum"]) for v in self.vocab_sizes)
        self.global_decoder = BowDecoder(total, h["bn_eps"], h["bn_momentum"])
        self.prior = LaplacePrior(num_topics, float(h["alpha"]))
        self.phi = nn.Parameter(xavier_topic_matrix(num_topics, total))
        self._aug: list[sp.csr_matrix] | None = None

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def prepare_aux(cls, corpus: Corpus, num_topics: int, context: BuildContext,
                    **hparams: Any) -> dict[str, Tensor]:
        a, b = corpus.langs
        source = hparams["neighbour_source"]
        has_dict = corpus.link_matrix(a, b).nnz > 0
        if source == "auto":
            source = "both" if has_dict else "embedding"
        if source not in NEIGHBOUR_SOURCES:
            raise XtmError(f"gloctm: neighbour_source must be auto or one of {NEIGHBOUR_SOURCES}, got {source!r}")
        if source in ("dictionary", "both") and not has_dict:
            raise XtmError(f"gloctm: neighbour_source={source} needs --dict; use neighbour_source=embedding")
        vectors = None
        if source in ("embedding", "both"):
            vectors = [embed_cached(hparams["encoder"], corpus.lang(x).vocab, context.cache_dir,
                                    progress=context.progress) for x in (a, b)]
        aux: dict[str, Tensor] = {}
        for i, (src, dst, key) in enumerate(((a, b, "ab"), (b, a, "ba"))):
            emb = dic = None
            if vectors is not None:
                emb = embedding_neighbours(vectors[i], vectors[1 - i], hparams["neighbours"],
                                           hparams["min_similarity"])
            if source in ("dictionary", "both"):
                dic = dictionary_neighbours(corpus.link_matrix(src, dst))
            aux.update(sparse_to_aux(combine(emb, dic), f"map_{key}"))
        context.scratch["gloctm_source"] = source
        return aux

    def prepare_training(self, corpus: Corpus, context: BuildContext) -> None:
        maps = [self.neighbour_map("ab"), self.neighbour_map("ba")]
        w = float(self.hparams["aug_weight"])
        self._aug = [augment(lc.train_bow, maps[i], w, own_first=(i == 0)) for i, lc in enumerate(corpus.languages)]
        if self.hparams["weight_cka"] > 0:
            emb = []
            for lc in corpus.languages:
                if lc.train_texts is None:
                    raise XtmError(f"gloctm's CKA grounding embeds the documents' text; the corpus has none for "
                                   f"'{lc.lang}' (or pass --set weight_cka=0)")
                emb.append(embed_cached(self.hparams["encoder"], lc.train_texts, context.cache_dir,
                                        progress=context.progress))
            for i in range(2):
                self.register_buffer(f"doc_emb_{i}", torch.from_numpy(np.ascontiguousarray(emb[i])),
                                     persistent=False)

    def neighbour_map(self, key: str) -> sp.csr_matrix:
        t = aux_to_sparse(self, f"map_{key}").cpu()
        idx = t.indices().numpy()
        return sp.csr_matrix((t.values().numpy(), (idx[0], idx[1])), shape=tuple(t.shape))

    # ---- the interface --------------------------------------------------------------------------
    def topic_word(self) -> list[Tensor]:
        return list(torch.split(self.phi, self.vocab_sizes, dim=1))

    def _encode(self, encoder: BowEncoder, bow: Bow) -> tuple[Tensor, Tensor, Tensor]:
        mu, logvar = encoder(bow)
        theta = F.softmax(reparameterize(mu, logvar, self.training), dim=1)
        return theta, mu, logvar

    def forward(self, bows: list[Bow], rows: list[Tensor] | None = None,
                extra: ExtraLosses | None = None) -> dict[str, Tensor]:
        h = self.hparams
        betas = self.topic_word()
        losses: dict[str, Tensor] = {}
        local, glob = [], []
        for i, (bow, beta) in enumerate(zip(bows, betas, strict=True)):
            lang = self.langs[i]
            theta, mu, logvar = self._encode(self.encoders[i], bow)
            losses[f"recon_{lang}"] = reconstruction_nll(bow, self.decoders[i](theta, beta)).mean()
            losses[f"kl_{lang}"] = self.prior.kl(mu, logvar).mean()
            local.append(theta)
            if h["dual"]:
                if rows is None or self._aug is None:
                    raise XtmError("gloctm's training step needs the batch's document indices and prepared data")
                aug = SparseRows.from_csr(self._aug[i][rows[i].cpu().numpy()], theta.device)
                g_theta, g_mu, g_logvar = self._encode(self.global_encoder, aug)
                losses[f"recon_global_{lang}"] = reconstruction_nll(aug, self.global_decoder(g_theta, self.phi)).mean()
                losses[f"kl_global_{lang}"] = self.prior.kl(g_mu, g_logvar).mean()
                glob.append(g_theta)
        if h["dual"] and h["weight_internal"] > 0:
            losses["internal"] = h["weight_internal"] * sum(symmetric_kl(a, b) for a, b in zip(local, glob,
                                                                                               strict=True))
        if h["weight_cka"] > 0:
            if rows is None:
                raise XtmError("gloctm's CKA loss needs the batch's document indices")
            theta = torch.cat(glob if h["dual"] else local)
            emb = torch.cat([getattr(self, f"doc_emb_{i}")[rows[i]] for i in range(2)])
            cka = linear_cka(theta, emb) if h["cka"] == "linear" else rbf_cka(theta, emb)
            losses["cka"] = h["weight_cka"] * (1.0 - cka)
        if extra is not None:
            losses.update(extra(local, betas, rows))
        losses["loss"] = sum(losses.values())
        return losses

"""The two-language VAE skeleton NMTM, InfoCTM and XTRA share (Wu et al. 2020; 2023; Nguyen et al. 2025).

Per language l: an encoder bow -> (mu, logvar), theta = softmax(z); a decoder
p(w | d) = softmax(BN(theta @ beta_l)); topic-word weights phi_l [K, V_l]. Each backbone decides
how encoders are shared, how beta is formed from phi, and which alignment losses it adds.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtm.config import DEFAULT_ENCODER
from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext, CrossLingualTopicModel, ExtraLosses
from xtm.models_zoo.cluster_init import cluster_topic_init, embed_and_cluster
from xtm.models_zoo.components import (
    Bow,
    BowDecoder,
    BowEncoder,
    EncoderBody,
    InputLayer,
    LaplacePrior,
    reconstruction_nll,
    reparameterize,
    xavier_topic_matrix,
)


class TwoLanguageVAE(CrossLingualTopicModel):
    """Defaults every VAE backbone understands; subclasses extend `defaults`."""

    # init: how the topic-word weights phi start. "random" (Xavier uniform) is the papers';
    # "clusters" starts topic k from the words of the k-th K-means cluster of the training documents'
    # multilingual sentence embeddings (as XTRA does), the same cluster in every language.
    # grad_clip: the phase-1 gradient norm is clipped at this (0: not clipped, as in the NMTM and InfoCTM
    # papers' code and TopMost; the LLM-XTM authors' runner clips every backbone at 1.0, XTRA's default).
    defaults = {"hidden": 200, "dropout": 0.0, "alpha": 1.0, "bn_eps": 1e-5, "bn_momentum": 0.1,
                "init": "random", "grad_clip": 0.0}
    # runs saved before grad_clip was a setting of every VAE backbone trained unclipped (XTRA saved its own)
    legacy_hparams: ClassVar[dict[str, Any]] = {"grad_clip": 0.0}
    INITS = ("random", "clusters")

    def __init__(self, langs: list[str], vocab_sizes: list[int], num_topics: int,
                 aux: dict[str, Tensor] | None = None, **hparams: Any) -> None:
        super().__init__(langs, vocab_sizes, num_topics, aux=aux, **hparams)
        h = self.hparams
        self.encoders = self.make_encoders()
        self.decoders = nn.ModuleList(BowDecoder(v, h["bn_eps"], h["bn_momentum"]) for v in self.vocab_sizes)
        self.prior = LaplacePrior(num_topics, self.prior_alpha())
        self.phi = nn.ParameterList(nn.Parameter(xavier_topic_matrix(num_topics, v)) for v in self.vocab_sizes)

    @classmethod
    def from_corpus(cls, corpus: Corpus, num_topics: int, context: BuildContext | None = None,
                    **hparams: Any) -> CrossLingualTopicModel:
        init = {**cls.defaults, **hparams}["init"]
        if init not in cls.INITS:
            raise XtmError(f"{cls.name}: init={init!r} is not one of {', '.join(cls.INITS)}")
        asked_for_clusters = init == "clusters" and cls.defaults["init"] != "clusters"  # XTRA explains itself
        if asked_for_clusters and any(lc.train_texts is None for lc in corpus.languages):
            raise XtmError(f"{cls.name}: init=clusters embeds the training documents, but this corpus keeps no "
                           "text (an out-of-core run keeps none): use --set init=random")
        context = context or BuildContext()
        model = super().from_corpus(corpus, num_topics, context, **hparams)
        if init == "clusters":
            encoder = model.hparams.get("encoder", DEFAULT_ENCODER)
            _, labels = embed_and_cluster(corpus, num_topics, encoder, context)
            with torch.no_grad():
                for i, lc in enumerate(corpus.languages):
                    model.phi[i].copy_(torch.from_numpy(cluster_topic_init(lc.train_bow, labels[i], num_topics)))
        return model

    def body(self, in_dim: int) -> EncoderBody:
        h = self.hparams
        return EncoderBody([in_dim, h["hidden"]], self.num_topics, h["dropout"], h["bn_eps"], h["bn_momentum"])

    def make_encoders(self) -> nn.ModuleList:
        """Default (InfoCTM): fully separate encoders, softplus input layer of width `hidden`."""
        hid = self.hparams["hidden"]
        return nn.ModuleList(BowEncoder(InputLayer(v, hid), self.body(hid)) for v in self.vocab_sizes)

    def prior_alpha(self) -> float | Tensor:
        return float(self.hparams["alpha"])

    def encode(self, bow: Bow, lang_index: int) -> tuple[Tensor, Tensor, Tensor]:
        theta, _, mu, logvar = self._encode(bow, lang_index)
        return theta, mu, logvar

    def _encode(self, bow: Bow, lang_index: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(theta for the decoder, theta as a distribution, mu, logvar)."""
        mu, logvar = self.encoders[lang_index](bow)
        dist = F.softmax(reparameterize(mu, logvar, self.training), dim=1)
        # The reference models apply dropout to the training theta as well (p=0 except XTRA);
        # dropout breaks the sum-to-one, so losses that need a distribution get `dist`.
        return F.dropout(dist, self.hparams["dropout"], self.training), dist, mu, logvar

    def topic_word(self) -> list[Tensor]:
        return list(self.phi)

    def topic_model_losses(self, bows: list[Bow],
                           betas: list[Tensor]) -> tuple[dict[str, Tensor], list[Tensor], list[Tensor]]:
        """Reconstruction + KL per language (batch means); also each language's decoder theta and
        theta distribution (they differ only under dropout)."""
        losses: dict[str, Tensor] = {}
        thetas, dists = [], []
        for i, (bow, beta) in enumerate(zip(bows, betas, strict=True)):
            theta, dist, mu, logvar = self._encode(bow, i)
            losses[f"recon_{self.langs[i]}"] = reconstruction_nll(bow, self.decoders[i](theta, beta)).mean()
            losses[f"kl_{self.langs[i]}"] = self.prior.kl(mu, logvar).mean()
            thetas.append(theta)
            dists.append(dist)
        return losses, thetas, dists

    def alignment_losses(self, bows: list[Bow], thetas: list[Tensor],
                         rows: list[Tensor] | None) -> dict[str, Tensor]:
        return {}

    def forward(self, bows: list[Bow], rows: list[Tensor] | None = None,
                extra: ExtraLosses | None = None) -> dict[str, Tensor]:
        betas = self.topic_word()
        losses, thetas, dists = self.topic_model_losses(bows, betas)
        losses.update(self.alignment_losses(bows, thetas, rows))
        if extra is not None:
            losses.update(extra(dists, betas, rows))
        losses["loss"] = sum(losses.values())
        return losses

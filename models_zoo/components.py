"""Pieces every VAE backbone shares: the bag-of-words encoder, the Dirichlet-like prior, the decoder.

The encoder follows the ProdLDA/NMTM family: two softplus layers, batch-normalised mean and
log-variance, theta = softmax(z). The prior is the Laplace approximation of a symmetric
Dirichlet(alpha) in the softmax basis (Srivastava & Sutton 2017), which NMTM and InfoCTM use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class SparseRows:
    """A batch of bag-of-words rows kept sparse: (word index, count) pairs plus row boundaries.

    Training never densifies batches: the first encoder layer is an EmbeddingBag sum over the
    non-zeros and the reconstruction loss gathers only the words a document contains. This is
    the same arithmetic as a dense [N, V] matmul at a fraction of the cost (~11 non-zeros per
    ECNews document against 5,000 columns).
    """

    indices: Tensor   # [nnz] word ids
    offsets: Tensor   # [N] start of each row in `indices`
    weights: Tensor   # [nnz] counts
    row_ids: Tensor   # [nnz] row of each non-zero
    num_rows: int
    vocab_size: int

    @classmethod
    def from_csr(cls, m: sp.csr_matrix, device: torch.device | str = "cpu") -> SparseRows:
        m = sp.csr_matrix(m)
        counts = np.diff(m.indptr)
        to = lambda a, dt: torch.from_numpy(np.ascontiguousarray(a, dtype=dt)).to(device)  # noqa: E731
        return cls(indices=to(m.indices, np.int64), offsets=to(m.indptr[:-1], np.int64),
                   weights=to(m.data, np.float32),
                   row_ids=to(np.repeat(np.arange(m.shape[0]), counts), np.int64),
                   num_rows=int(m.shape[0]), vocab_size=int(m.shape[1]))

    def dense(self) -> Tensor:
        out = torch.zeros(self.num_rows, self.vocab_size, device=self.weights.device)
        out.index_put_((self.row_ids, self.indices), self.weights, accumulate=True)
        return out


Bow = Tensor | SparseRows


class SparseLinear(nn.Module):
    """Linear layer over bags of words that accepts SparseRows (EmbeddingBag) or a dense tensor.

    The weight is stored [V, H] so the sparse path is a weighted embedding-bag sum; the dense
    path (used by ONNX export) is the same affine map.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))

    def forward(self, x: Bow) -> Tensor:
        if isinstance(x, SparseRows):
            return F.embedding_bag(x.indices, self.weight, x.offsets, mode="sum",
                                   per_sample_weights=x.weights) + self.bias
        return x @ self.weight + self.bias


class InputLayer(nn.Module):
    """Language-specific first layer: bag of words -> hidden, with its activation (and dropout)."""

    def __init__(self, vocab_size: int, out_dim: int, activation: str = "softplus", dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = SparseLinear(vocab_size, out_dim)
        self.activation = activation
        self.drop = nn.Dropout(dropout)

    def forward(self, bow: Bow) -> Tensor:
        h = self.linear(bow)
        h = F.relu(h) if self.activation == "relu" else F.softplus(h)
        return self.drop(h)


class EncoderBody(nn.Module):
    """hidden -> (mu, logvar): softplus layers, dropout, batch-normed Gaussian heads.

    The heads' batch norm has its scale frozen at 1 (only the shift learns): this keeps the
    posterior from collapsing early, which is what makes ProdLDA-style encoders train stably.
    It does not stop every collapse: BN divides by sqrt(var + eps), so a head whose outputs vary
    less than eps is no longer standardised and mu shrinks towards the shift (`mu_variance`).
    """

    def __init__(self, dims: list[int], num_topics: int, dropout: float = 0.0,
                 bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.drop = nn.Dropout(dropout)
        self.fc_mu = nn.Linear(dims[-1], num_topics)
        self.fc_logvar = nn.Linear(dims[-1], num_topics)
        self.bn_mu = nn.BatchNorm1d(num_topics, eps=bn_eps, momentum=bn_momentum)
        self.bn_logvar = nn.BatchNorm1d(num_topics, eps=bn_eps, momentum=bn_momentum)
        for bn in (self.bn_mu, self.bn_logvar):
            bn.weight.requires_grad_(False)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        for layer in self.layers:
            h = F.softplus(layer(h))
        h = self.drop(h)
        return self.bn_mu(self.fc_mu(h)), self.bn_logvar(self.fc_logvar(h))

    def mu_variance(self) -> float:
        """Median over topics of the mean head's variance before its batch norm (running statistics).

        Below the batch norm's eps the encoder is near posterior collapse: mu = shift + (x - mean) /
        sqrt(var + eps) varies with sd sqrt(var / eps) < 1 instead of 1, and theta is close to
        uniform. Measured on ECNews with InfoCTM: English ends there in 3 runs of 4 (1e-6 against
        eps 1e-5) while Chinese does not (docs/benchmarks.md, "Near-collapse").
        """
        return float(self.bn_mu.running_var.median())


def near_collapsed_languages(encoders: nn.ModuleList, langs: list[str]) -> dict[str, tuple[float, float]]:
    """Languages whose encoder's mean head varies less than its batch norm's eps: {lang: (variance, eps)}.

    A body shared by all languages (NMTM) is one state for all of them, so it never tells one
    language apart from another; the caller decides what a collapse of every language means.
    """
    out = {}
    for lang, encoder in zip(langs, encoders, strict=True):
        for body in encoder.modules():
            if isinstance(body, EncoderBody):
                variance, eps = body.mu_variance(), float(body.bn_mu.eps)
                if variance < eps:
                    out[lang] = (variance, eps)
                    break
    return out


class BowEncoder(nn.Module):
    """Bag of words [N, V] -> (mu, logvar) [N, K]: a language's input layer then a (maybe shared) body."""

    def __init__(self, input_layer: InputLayer, body: EncoderBody) -> None:
        super().__init__()
        self.input_layer = input_layer
        self.body = body

    def forward(self, bow: Bow) -> tuple[Tensor, Tensor]:
        return self.body(self.input_layer(bow))


def reparameterize(mu: Tensor, logvar: Tensor, training: bool) -> Tensor:
    if not training:
        return mu
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


class LaplacePrior(nn.Module):
    """KL(q(z|x) || p(z)) with p the Laplace approximation of Dirichlet(alpha) (constant buffers)."""

    def __init__(self, num_topics: int, alpha: float | Tensor = 1.0) -> None:
        super().__init__()
        a = alpha.float() if torch.is_tensor(alpha) else torch.full((num_topics,), float(alpha))
        mu = torch.log(a) - torch.log(a).mean()
        var = (1.0 / a) * (1.0 - 2.0 / num_topics) + (1.0 / a).sum() / num_topics**2
        self.register_buffer("prior_mu", mu, persistent=False)
        self.register_buffer("prior_var", var, persistent=False)
        self.register_buffer("prior_logvar", torch.log(var), persistent=False)

    def kl(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """Per-document KL, shape [N]."""
        var = torch.exp(logvar)
        k = mu.shape[1]
        return 0.5 * (
            (var / self.prior_var).sum(1)
            + ((mu - self.prior_mu) ** 2 / self.prior_var).sum(1)
            + (self.prior_logvar - logvar).sum(1)
            - k
        )


class BowDecoder(nn.Module):
    """theta [N, K] and topic-word weights [K, V] -> log p(word | doc) [N, V] (batch-normed logits).

    The batch norm keeps its shift trainable and its scale frozen at 1, as the reference models do.
    """

    def __init__(self, vocab_size: int, bn_eps: float = 1e-5, bn_momentum: float = 0.1) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(vocab_size, eps=bn_eps, momentum=bn_momentum)
        self.bn.weight.requires_grad_(False)

    def forward(self, theta: Tensor, beta: Tensor) -> Tensor:
        return F.log_softmax(self.bn(theta @ beta), dim=1)


def reconstruction_nll(bow: Bow, log_probs: Tensor) -> Tensor:
    """Multinomial negative log-likelihood per document, shape [N]."""
    if isinstance(bow, SparseRows):
        picked = log_probs[bow.row_ids, bow.indices] * bow.weights
        return -torch.zeros(bow.num_rows, device=log_probs.device, dtype=log_probs.dtype).index_add(
            0, bow.row_ids, picked)
    return -(bow * log_probs).sum(1)


def xavier_topic_matrix(num_topics: int, vocab_size: int, generator: torch.Generator | None = None) -> Tensor:
    bound = math.sqrt(6.0 / (num_topics + vocab_size))
    w = torch.empty(num_topics, vocab_size)
    w.uniform_(-bound, bound, generator=generator)
    return w

"""The two losses LLM-XTM adds in phase 2 (seed 001, sections 2.3, 3.3 and 3.4), batched over topics.

Where the public implementation and the paper differ, these follow the paper:
  * doc-align is KL(theta || theta_hat) in the direction written, with theta used as the
    distribution the encoder produced (the reference code passes log_softmax(theta) to
    F.kl_div, which is KL(theta_hat || softmax(theta)): the other direction of a twice-softmaxed
    theta);
  * the sum over documents is taken as a batch mean (so lambda_qa does not depend on the batch
    size), averaged over languages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_distance(x: Tensor, y: Tensor) -> Tensor:
    """Pairwise chordal distance sqrt(2 - 2 cos) between rows of x [K,n,d] and y [K,m,d].

    A distance induced by the cosine (Euclidean distance of the unit vectors): the Gaussian
    kernel on it, exp(-(1 - cos) / sigma^2), is positive definite, so MMD^2 >= 0 always.
    """
    cos = torch.bmm(F.normalize(x, dim=-1), F.normalize(y, dim=-1).transpose(1, 2))
    return torch.sqrt(torch.clamp(2.0 - 2.0 * cos, min=0.0) + 1e-12)


def median_bandwidth(dists: list[Tensor], masks: list[Tensor]) -> Tensor:
    """Median heuristic per topic over the pooled positive pairwise distances of both samples.

    "Positive" is > 1e-3: a word paired with itself comes out at ~1e-4 from float32 rounding of
    the cosine, and two different words are orders of magnitude further apart.
    """
    pooled = torch.cat([torch.where(m & (d > 1e-3), d, torch.nan).flatten(1)
                        for d, m in zip(dists, masks, strict=True)], 1)
    sigma = torch.nanmedian(pooled, dim=1).values
    return torch.nan_to_num(sigma, nan=1.0).clamp_min(1e-3)


def weighted_mmd2(x: Tensor, wx: Tensor, y: Tensor, wy: Tensor, scales: tuple[float, ...] = (1.0,)) -> Tensor:
    """Squared MMD per topic between weighted samples (x [K,n,d], wx [K,n]) and (y [K,m,d], wy [K,m]).

    Weights of a topic sum to 1 (zero weight = padding). Gaussian kernel on the cosine-induced
    distance, bandwidth sigma by the median heuristic; with several `scales` the kernel is the
    mean of Gaussians at sigma * scale (a small multi-kernel set). Differentiable in the weights.
    """
    dxx, dyy, dxy = cosine_distance(x, x), cosine_distance(y, y), cosine_distance(x, y)
    px, py = wx > 0, wy > 0
    with torch.no_grad():
        sigma = median_bandwidth([dxx, dyy, dxy], [px[:, :, None] & px[:, None, :], py[:, :, None] & py[:, None, :],
                                                    px[:, :, None] & py[:, None, :]])
    total = x.new_zeros(x.shape[0])
    for s in scales:
        two_s2 = 2.0 * (sigma * s) ** 2

        def k(d: Tensor, two_s2: Tensor = two_s2) -> Tensor:
            return torch.exp(-(d * d) / two_s2[:, None, None])

        total = total + (torch.einsum("kn,knm,km->k", wx, k(dxx), wx) + torch.einsum("kn,knm,km->k", wy, k(dyy), wy)
                         - 2.0 * torch.einsum("kn,knm,km->k", wx, k(dxy), wy))
    return total / len(scales)


def union_raw_distribution(betas: list[Tensor], idx: list[Tensor], masks: list[Tensor] | None = None) -> Tensor:
    """beta_k^(raw) normalised over the union (`--no-balanced-mmd`, the form before issue 15): the softmax
    probabilities of each language's words `idx` [K, n] (top-N, taken at every step), renormalised over the
    union, so a language weighs its share of the softmax mass. `masks` [K, n]: False marks padding (weight 0).
    Weights [K, L*n], summing to 1."""
    w = [F.softmax(beta, dim=1).gather(1, i) for beta, i in zip(betas, idx, strict=True)]
    if masks is not None:
        w = [p * m for p, m in zip(w, masks, strict=True)]
    u = torch.cat(w, dim=1)
    return u / u.sum(1, keepdim=True).clamp_min(1e-12)


def top_indices(betas: list[Tensor], top_n: int) -> list[Tensor]:
    """Each language's top-N word indices per topic [K, N] (no gradient: which words, not how much)."""
    with torch.no_grad():
        return [torch.topk(beta, min(top_n, beta.shape[1]), dim=1).indices for beta in betas]


def balanced_raw_distribution(betas: list[Tensor], idx: list[Tensor], masks: list[Tensor] | None = None) -> Tensor:
    """beta_k^(raw) as a language-balanced mixture (seed 001 section 3.3; the public code's form): each
    language's probabilities of its words `idx` renormalised over them, then weighted 1/L, so every
    language carries the same mass whatever its share of the softmax. Weights [K, L*N], summing to 1.

    Renormalising softmax(beta) over the chosen words is a softmax over their logits: the gradient
    reaches only those logits, never the rest of the vocabulary.
    """
    if masks is None:
        w = [F.softmax(beta.gather(1, i), dim=1) for beta, i in zip(betas, idx, strict=True)]
    else:  # masks [K, n]: False marks padding (weight 0); every row keeps at least one word
        w = [F.softmax(beta.gather(1, i).masked_fill(~m, float("-inf")), dim=1)
             for beta, i, m in zip(betas, idx, masks, strict=True)]
    return torch.cat(w, dim=1) / len(w)


def balanced_target_weights(counts: Tensor, lang_of: Tensor, num_langs: int) -> Tensor:
    """beta_k^(refined) as a language-balanced mixture: vote counts [K, M] normalised within each
    language (`lang_of` [K, M]: the column's language, -1 for padding), each present language weighted
    equally (a topic with refined words in one language only puts all its mass there)."""
    out = torch.zeros_like(counts)
    present = torch.zeros(counts.shape[0], dtype=counts.dtype, device=counts.device)
    for lang in range(num_langs):
        c = torch.where(lang_of == lang, counts, torch.zeros_like(counts))
        total = c.sum(1, keepdim=True)
        out = out + c / total.clamp_min(1e-12)
        present = present + (total[:, 0] > 0).to(counts.dtype)
    return out / present.clamp_min(1.0)[:, None]


def doc_align_kl(theta: Tensor, theta_hat: Tensor, eps: float = 1e-10) -> Tensor:
    """Mean over documents of KL(theta || theta_hat); both rows are distributions (no softmax here)."""
    return (theta * (torch.log(theta + eps) - torch.log(theta_hat + eps))).sum(1).mean()


def similarity_targets(doc_emb: Tensor, topic_emb: Tensor, tau: float) -> Tensor:
    """theta_hat = softmax(cos(h_d, t_k) / tau) for every document (section 3.4)."""
    return F.softmax(F.normalize(doc_emb, dim=1) @ F.normalize(topic_emb, dim=1).t() / tau, dim=1)

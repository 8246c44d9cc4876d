"""Passes over a model's documents outside its training steps: batch-norm recalibration, deterministic
inference (theta, the encoders' means) and the near-collapse check.

The training loop runs them on its checkpoints and at its end; evaluation, the contextual fit, the report
data and the benchmarks run them on a trained model. None of them steps an optimizer or changes the
training RNGs (recalibration draws from a fork), so they live apart from the loop (xtm.trainer.loop.training).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from xtm.models_zoo.base import CrossLingualTopicModel
from xtm.models_zoo.components import SparseRows, near_collapsed_languages
from xtm.trainer.data.batches import BatchSource

__all__ = ["infer_mean", "infer_theta", "lone_collapses", "recalibrate_batchnorm", "sparse_batch",
           "warn_near_collapse"]

logger = logging.getLogger(__name__)


def sparse_batch(bow: sp.csr_matrix, rows: np.ndarray, device: torch.device) -> SparseRows:
    return SparseRows.from_csr(bow[rows], device)


@torch.no_grad()
def recalibrate_batchnorm(model: CrossLingualTopicModel, data: BatchSource, device: torch.device,
                          batch_size: int = 2048) -> None:
    """Set the encoders' batch-norm running statistics to their exact values over the training data.

    Inference normalises with running statistics. With the reference momentum (1e-3 for NMTM) they
    lag far behind the weights in any run shorter than hundreds of epochs, and eval-time theta
    then collapses towards uniform. One pass with a cumulative average (momentum=None) over the
    training documents, for the final weights, fixes that; training itself is unchanged.
    """
    bns = [m for enc in model.encoders for m in enc.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    was_training = model.training
    model.train()
    # In train mode dropout draws random numbers: from a fork of the RNGs, so that recalibrating (a periodic
    # checkpoint, an --eval-every copy) leaves the run's own random sequence, and so the run, unchanged.
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            for i in range(len(data.sizes())):
                # Each language's encoder sees its own documents; a shared body sees both languages.
                for chunk in data.sequential(i, batch_size):
                    if chunk.shape[0] > 1:
                        model.encoders[i](SparseRows.from_csr(chunk, device))
    finally:  # also when a second Ctrl-C ends the pass: the caller restores the statistics themselves
        for bn, (momentum, tracked) in zip(bns, saved, strict=True):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        model.train(was_training)


def lone_collapses(model: CrossLingualTopicModel) -> dict[str, tuple[float, float]]:
    """The languages whose encoders are near posterior collapse while others' are not: {lang: (variance of the
    mean head, its batch norm's eps)}; {} when none is, or when every language is (NMTM's shared body always
    is one state for all: the method's state, not one language falling behind)."""
    collapsed = near_collapsed_languages(model.encoders, model.langs)
    return {} if len(collapsed) == len(model.langs) else collapsed


def warn_near_collapse(model: CrossLingualTopicModel, epoch: int | None = None,
                       collapsed: dict[str, tuple[float, float]] | None = None) -> bool:
    """Warn when some languages' encoders are near posterior collapse and others are not; True if it warned.

    Such a language's theta is close to uniform and on another scale than the others' (its
    documents' topics barely differ), which no loss printed during training makes obvious.
    `epoch`: said of a model still training (an `--eval-every` point or a periodic checkpoint: the state
    shows within a few epochs, hours before the end), else of the model training ended with. `collapsed`:
    `lone_collapses` as measured elsewhere (an evaluation's recalibrated copy), else measured on `model`.
    """
    collapsed = lone_collapses(model) if collapsed is None else collapsed
    if not collapsed:
        return False
    others = ", ".join(lang for lang in model.langs if lang not in collapsed)
    state = "ended" if epoch is None else f"is, at epoch {epoch},"
    for lang, (variance, eps) in collapsed.items():
        logger.warning(
            f"the {lang} encoder {state} near posterior collapse: its topic means vary less than its batch "
            f"norm's eps (variance {variance:.1e} < {eps:.0e}), so {lang} theta is close to uniform while "
            f"{others} theta is not. `--set bn_eps=1e-10` keeps every encoder open (docs/benchmarks.md, "
            "\"Near-collapse\", says what it changes)")
    return True


@torch.no_grad()
def infer_theta(model: CrossLingualTopicModel, bow: sp.csr_matrix, lang_index: int,
                device: torch.device, batch_size: int = 2048) -> np.ndarray:
    """Deterministic theta for every row of a sparse matrix, in batches."""
    return _eval_rows(model, bow, device, batch_size, lambda x: model.theta(x, lang_index))


@torch.no_grad()
def infer_mean(model: CrossLingualTopicModel, bow: sp.csr_matrix, lang_index: int,
               device: torch.device, batch_size: int = 2048) -> np.ndarray:
    """The encoder's eval-mode mean (pre-softmax) of every row: the features the public code behind
    the published tables classifies ("classification_published" in evaluation.metrics.evaluate)."""
    return _eval_rows(model, bow, device, batch_size, lambda x: model.encoders[lang_index](x)[0])


def _eval_rows(model: CrossLingualTopicModel, bow: sp.csr_matrix, device: torch.device, batch_size: int,
               fn: Callable[[Any], torch.Tensor]) -> np.ndarray:
    was_training = model.training
    model.eval()
    out = np.empty((bow.shape[0], model.num_topics), dtype=np.float32)
    for start in range(0, bow.shape[0], batch_size):
        rows = np.arange(start, min(start + batch_size, bow.shape[0]))
        out[rows] = fn(sparse_batch(bow, rows, device)).cpu().numpy()
    model.train(was_training)
    return out

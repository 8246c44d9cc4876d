"""A topic's top words: the ranking of a K x V topic-word matrix, one rule for every part that lists them.

numpy only (no torch, no scipy), so the exporters, the trainer's phase 2 and evaluation share it without
loading each other's dependencies: the exporters used to import all of xtm.evaluation.metrics (scipy) for it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from xtm.errors import XtmError

__all__ = ["TOP_WORDS", "top_word_ids", "top_words"]

# Top words per topic, as topics_<lang>.txt, the report, TU and the bundle's topics.json list them (the papers'
# 15). One constant: labels.json records a digest of the topics it labelled, which export compares.
TOP_WORDS = 15


def top_word_ids(beta: np.ndarray, n: int = TOP_WORDS) -> np.ndarray:
    """Column indices of the n highest-weighted words of each topic (rows of the K x V matrix beta), best
    first: a K x min(n, V) integer array. For callers that need the weights beside the words."""
    beta = np.asarray(beta)
    if beta.ndim != 2:
        raise XtmError(f"beta must be a K x V matrix, got shape {beta.shape}")
    if n < 1:
        raise XtmError(f"the number of top words must be >= 1, got {n}")
    # Stable sort on -beta: ties keep vocabulary order, so top words are reproducible.
    return np.argsort(-beta, axis=1, kind="stable")[:, :min(n, beta.shape[1])]


def top_words(beta: np.ndarray, vocab: Sequence[str], n: int = TOP_WORDS) -> list[list[str]]:
    """The n highest-weighted words of each topic (rows of the K x V matrix beta), best first."""
    beta = np.asarray(beta)
    if beta.ndim == 2 and beta.shape[1] != len(vocab):
        raise XtmError(f"beta has {beta.shape[1]} columns but the vocabulary has {len(vocab)} words")
    return [[vocab[j] for j in row] for row in top_word_ids(beta, n).tolist()]

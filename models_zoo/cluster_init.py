"""Document clusters from multilingual sentence embeddings, and topic-word rows started from them.

XTRA (Nguyen et al., 2025) starts its topics this way; the other VAE backbones can too
(`--set init=clusters`; measured in docs/benchmarks.md "Full length"): K-means groups the training
documents of both languages by meaning, so topic k starts as cluster k's words in every language,
already aligned across languages.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext
from xtm.models_zoo.encoders import embed_cached, encoder_languages

logger = logging.getLogger(__name__)


def document_embeddings(corpus: Corpus, encoder: str, context: BuildContext) -> list[np.ndarray]:
    """Every training document's sentence embedding, per language (cached on disk by text)."""
    out = []
    for lc in corpus.languages:
        if lc.train_texts is None:
            raise XtmError(f"the documents' sentence embeddings need their text, and the data has none for "
                           f"'{lc.lang}' (a benchmark directory without its train_texts_<language>.txt files): give "
                           "JSONL documents, or train a backbone that reads bags of words alone (--model infoctm or "
                           "nmtm, with --dict)")
        warn_unseen_language(encoder, lc.lang)
        out.append(embed_cached(encoder, lc.train_texts, context.cache_dir, progress=context.progress))
    return out


def warn_unseen_language(encoder: str, lang: str) -> None:
    """Say so when the encoder was not trained on `lang`: the embeddings then say little about what its
    documents mean, and topics aligned or started through them may not match across languages."""
    known = encoder_languages(encoder)
    if known and lang not in known:
        logger.warning(f"'{lang}' is not among the languages {encoder} was trained on ({', '.join(known)}): "
                       f"the '{lang}' documents' sentence embeddings say little about their meaning, so topics "
                       "aligned or started through them may not match across languages (--model infoctm or nmtm "
                       "with a bilingual dictionary, without --set init=clusters, do not use them)")


def cluster_documents(embeddings: list[np.ndarray], k: int, seed: int, svd_dims: int = 100) -> list[np.ndarray]:
    """K-means on language 0's reduced embeddings; other languages go to the nearest centroid."""
    from sklearn.cluster import KMeans

    stacked = np.concatenate(embeddings).astype(np.float64)
    # u-SVD: left singular vectors without singular-value scaling, as XTRA's reference does.
    u, _, _ = np.linalg.svd(stacked, full_matrices=False)
    u = u[:, : min(svd_dims, u.shape[1])]
    u /= np.maximum(np.linalg.norm(u, axis=1, keepdims=True), 1e-12)
    parts = np.split(u, np.cumsum([e.shape[0] for e in embeddings])[:-1])
    km = KMeans(n_clusters=k, random_state=seed, n_init=1, max_iter=300).fit(parts[0])
    labels = [km.labels_.astype(np.int64)]
    for p in parts[1:]:
        labels.append(np.argmax(p @ km.cluster_centers_.T, axis=1).astype(np.int64))
    return labels


def embed_and_cluster(corpus: Corpus, num_topics: int, encoder: str,
                      context: BuildContext) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(embeddings, cluster labels) per language, computed once per build (kept in context.scratch)."""
    key = ("clusters", encoder, num_topics, context.seed)
    if key not in context.scratch:
        emb = document_embeddings(corpus, encoder, context)
        context.scratch[key] = (emb, cluster_documents(emb, num_topics, context.seed))
    return context.scratch[key]


def cluster_topic_init(bow: sp.csr_matrix, labels: np.ndarray, k: int) -> np.ndarray:
    """Topic-word init from clusters: summed BoW per cluster, row-normalised, times cluster idf."""
    assign = sp.csr_matrix((np.ones(len(labels), np.float32), (labels, np.arange(len(labels)))),
                           shape=(k, bow.shape[0]))
    b = np.asarray((assign @ bow).todense(), dtype=np.float64)
    b /= np.maximum(b.sum(1, keepdims=True), 1e-12)
    df = (b > 0).sum(0)
    b *= np.log((k + 1) / (df + 1)) + 1
    b /= np.maximum(b.sum(1, keepdims=True), 1e-12)
    return (b + 1e-8).astype(np.float32)

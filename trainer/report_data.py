"""What report.html needs from the trained model, computed once at the end of training.

The renderer (xtm.evaluation.report) is torch-free and reads only run-directory files, so
everything that needs the model, its theta or the reference corpus is computed here and written
to RUN_DIR/report_data.json:

    prevalence        {lang: [K]} share of training documents whose top topic is k
    cnpmi_per_topic   [K] CNPMI of each topic's top words (only with a reference corpus);
                      refined_cnpmi_per_topic the same for phase 2's refined sets
    topic_map         {"x": [K], "y": [K], "explained": [2]}: PCA of the topics' word distributions
    confusion         top topic in language a vs in language b on aligned reference documents:
                      {"langs", "counts" K x K, "documents", "diagonal_share"} (only with a reference corpus)
    word_weights      {lang: [K][N]} p(word | topic) of each word of topics_<lang>.txt line k, in its order
                      (softmax of beta: the bars next to each topic's words)
    representative_docs  {lang: [K][<=3]} the training documents with the highest share of topic k:
                      {"id", "weight" (theta), "text" (shortened; a bag-of-words corpus without text shows
                      the document's words, and "bag": true)}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from xtm.corpus import Corpus
from xtm.evaluation.metrics import ReferenceCorpus, cnpmi_per_topic
from xtm.models_zoo.base import CrossLingualTopicModel
from xtm.trainer.loop.model_passes import infer_theta

SCHEMA_VERSION = 1
REPRESENTATIVE_DOCS = 3      # per topic and language
SNIPPET_CHARS = 240          # a representative document is shortened to this many characters


def word_weights(beta: np.ndarray, vocab: list[str], top: list[list[str]]) -> list[list[float]]:
    """p(word | topic) (softmax of beta's row) of each of topic k's top words, in their order."""
    z = np.exp(beta - beta.max(axis=1, keepdims=True))
    dist = z / z.sum(axis=1, keepdims=True)
    index = {w: i for i, w in enumerate(vocab)}
    return [[float(dist[k, index[w]]) if w in index else 0.0 for w in words] for k, words in enumerate(top)]


def shorten(text: str, limit: int = SNIPPET_CHARS) -> str:
    """One line of at most `limit` characters (whitespace collapsed; cut at a space where one is near)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return (cut[:space] if space > limit * 0.7 else cut).rstrip() + " …"


def bag_text(row: sp.csr_matrix, vocab: list[str], limit: int = SNIPPET_CHARS) -> str:
    """A document known only as a bag of words: its words, most frequent first."""
    order = np.argsort(-row.data, kind="stable")
    return shorten(" ".join(vocab[row.indices[i]] for i in order), limit)


def representative_docs(theta: np.ndarray, bows: sp.csr_matrix | None, vocab: list[str], texts: list[str] | None,
                        ids: list[str] | None, n: int = REPRESENTATIVE_DOCS) -> list[list[dict[str, Any]]]:
    """For each topic, the n training documents with the largest theta[:, k] (ties: document order)."""
    out = []
    for k in range(theta.shape[1]):
        col = theta[:, k]
        best = np.lexsort((np.arange(len(col)), -col))[:n] if len(col) else []
        docs = []
        for i in best:
            i = int(i)
            doc: dict[str, Any] = {"id": str(ids[i]) if ids is not None and i < len(ids) else None,
                                   "weight": float(col[i])}
            if texts is not None and i < len(texts):
                doc["text"] = shorten(texts[i])
            elif bows is not None and i < bows.shape[0]:
                doc["text"], doc["bag"] = bag_text(bows[i], vocab), True
            else:
                continue
            docs.append(doc)
        out.append(docs)
    return out


def prevalence(theta: np.ndarray, num_topics: int) -> list[float]:
    """Share of documents (rows of theta) whose most probable topic is k."""
    if theta.shape[0] == 0:
        return [0.0] * num_topics
    return (np.bincount(theta.argmax(axis=1), minlength=num_topics) / theta.shape[0]).tolist()


def topic_map(beta: dict[str, np.ndarray]) -> dict[str, list[float]]:
    """2-D PCA of each topic's word distributions, all languages side by side.

    A topic is the concatenation of sqrt(softmax(beta_lang[k])) over languages: Euclidean
    distance between such rows is the (scaled) Hellinger distance, so topics that share
    probability mass land close together whatever the vocabulary sizes.
    """
    parts = []
    for b in beta.values():
        z = np.exp(b - b.max(axis=1, keepdims=True))
        parts.append(np.sqrt(z / z.sum(axis=1, keepdims=True)))
    rows = np.hstack(parts).astype(np.float64)
    centered = rows - rows.mean(axis=0)
    u, s, _ = np.linalg.svd(centered, full_matrices=False)
    coords = np.zeros((rows.shape[0], 2))
    dims = min(2, len(s))
    coords[:, :dims] = u[:, :dims] * s[:dims]
    # SVD signs are arbitrary; fix them so the same model always draws the same map.
    for d in range(dims):
        if coords[np.abs(coords[:, d]).argmax(), d] < 0:
            coords[:, d] *= -1
    total = float((s ** 2).sum())
    explained = [float(s[d] ** 2 / total) if total > 0 and d < dims else 0.0 for d in range(2)]
    return {"x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(), "explained": explained}


def aligned_confusion(model: CrossLingualTopicModel, ref: ReferenceCorpus, langs: Sequence[str],
                      vocabs: dict[str, list[str]], device: torch.device) -> dict[str, Any] | None:
    """Counts of (top topic of the lang-a side, top topic of the lang-b side) over aligned pairs.

    A well-aligned model gives a pair the same topic in both languages, so the diagonal share is
    a direct, label-free measure of cross-lingual alignment. Pairs with no vocabulary word on
    either side are left out (their theta would be the prior, not the document).
    """
    a, b = langs[0], langs[1]
    if not ref.covers(a, b):
        return None
    bows = {lang: sp.csr_matrix(ref.word_counts(lang, vocabs[lang]), dtype=np.float32) for lang in (a, b)}
    keep = (bows[a].getnnz(axis=1) > 0) & (bows[b].getnnz(axis=1) > 0)
    k = model.num_topics
    counts = np.zeros((k, k), dtype=np.int64)
    n = int(keep.sum())
    if n:
        top = {lang: infer_theta(model, bows[lang][keep], i, device).argmax(axis=1)
               for i, lang in enumerate((a, b))}
        np.add.at(counts, (top[a], top[b]), 1)
    return {"langs": [a, b], "counts": counts.tolist(), "documents": n, "reference_documents": ref.num_docs,
            "diagonal_share": float(np.trace(counts) / n) if n else None}


def build_report_data(model: CrossLingualTopicModel, langs: Sequence[str], vocabs: dict[str, list[str]],
                      train_theta: dict[str, np.ndarray], beta: dict[str, np.ndarray],
                      top: dict[str, list[list[str]]], ref: ReferenceCorpus | None, device: torch.device,
                      refined: dict[str, list[list[str]]] | None = None,
                      corpus: Corpus | None = None) -> dict[str, Any]:
    """The content of report_data.json (JSON-serialisable); `train_theta` is evaluation's, reused.
    `corpus` (the training corpus) gives the representative documents."""
    k = model.num_topics
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "num_topics": k,
        "langs": list(langs),
        "prevalence": {lang: prevalence(train_theta[lang], k) for lang in langs},
        "topic_map": topic_map({lang: beta[lang] for lang in langs}),
        "word_weights": {lang: word_weights(beta[lang], vocabs[lang], top[lang]) for lang in langs},
    }
    if corpus is not None:
        data["representative_docs"] = {
            lc.lang: representative_docs(train_theta[lc.lang], lc.train_bow, lc.vocab, lc.train_texts, lc.train_ids)
            for lc in corpus.languages if lc.lang in train_theta}
    a, b = langs[0], langs[1]
    if ref is not None and ref.covers(a, b):
        n = max(len(t) for t in top[a])
        data["cnpmi_per_topic"] = cnpmi_per_topic(top[a], top[b], ref, a, b, n=n).tolist()
        if refined is not None:
            n = max(len(t) for t in refined[a])
            data["refined_cnpmi_per_topic"] = cnpmi_per_topic(refined[a], refined[b], ref, a, b, n=n).tolist()
        data["confusion"] = aligned_confusion(model, ref, langs, vocabs, device)
    return data

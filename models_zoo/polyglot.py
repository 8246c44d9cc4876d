"""Polyglot augmentation (GloCTM, seed 000): a document's bag of words, expanded with the
cross-lingual lexical neighbours of its words, in the unified vocabulary V_a + V_b.

A neighbour map M_{s->t} is a sparse [V_s, V_t] matrix whose row w spreads word w over its
neighbours in the other language, rows summing to 1. Neighbours come from multilingual word
embeddings (top-k by cosine above a floor: needs no dictionary), from a bilingual dictionary
(its links, uniformly weighted), or from both (the two row distributions averaged where both
exist). The augmented document of language a is [x, weight * x M_{a->b}]; of language b,
[weight * x M_{b->a}, x]. Everything stays sparse: k non-zeros per vocabulary row.

The authors' public code (tienphat140205/GloCTM, utils/data/TextData.py) augments by presence instead
(`augment_presence`): every word present in the document counts +1 for itself, +1 for each of its k
same-language neighbours and +1 for each of its k cross-lingual neighbours (binary maps, unweighted,
counts accumulate over the document's words; its own counts are ignored).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from xtm.errors import XtmError

NEIGHBOUR_SOURCES = ("embedding", "dictionary", "both")


def embedding_neighbours(src: np.ndarray, tgt: np.ndarray, k: int, min_similarity: float,
                         block: int = 1024, *, exclude_self: bool = False, binary: bool = False) -> sp.csr_matrix:
    """Row w: the k target words most similar to source word w (cosine >= min_similarity),
    weighted by similarity and normalised to sum 1; with `binary`, each neighbour is 1 (the public
    code's presence augmentation). `exclude_self` (src is tgt: same-language neighbours) never picks
    word w for row w. Blockwise: never a dense V_s x V_t matrix."""
    src = src / np.maximum(np.linalg.norm(src, axis=1, keepdims=True), 1e-12)
    tgt = tgt / np.maximum(np.linalg.norm(tgt, axis=1, keepdims=True), 1e-12)
    k = min(k, tgt.shape[0] - int(exclude_self))
    if k <= 0:
        return sp.csr_matrix((src.shape[0], tgt.shape[0]), dtype=np.float32)
    rows, cols, vals = [], [], []
    for start in range(0, src.shape[0], block):
        sims = src[start:start + block] @ tgt.T
        if exclude_self:
            n = sims.shape[0]
            sims[np.arange(n), np.arange(start, start + n)] = -np.inf
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(sims, top, axis=1)
        keep = np.isfinite(s) & (s >= min_similarity)
        r = np.repeat(np.arange(start, start + sims.shape[0]), k).reshape(-1, k)
        rows.append(r[keep])
        cols.append(top[keep])
        vals.append(np.ones(int(keep.sum())) if binary else s[keep])   # binary: a cosine of 0 is a link too
    m = sp.csr_matrix((np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(src.shape[0], tgt.shape[0]))
    return m if binary else row_normalize(m)


def binarize(m: sp.spmatrix) -> sp.csr_matrix:
    """Every stored neighbour counts 1 (presence augmentation: unweighted links)."""
    out = sp.csr_matrix(m, dtype=np.float32)
    out.eliminate_zeros()
    out.data[:] = 1.0
    return out


def dictionary_neighbours(links: sp.spmatrix) -> sp.csr_matrix:
    """Row w: w's dictionary translations, uniformly weighted."""
    m = sp.csr_matrix(links, dtype=np.float32)
    m.data[:] = 1.0
    return row_normalize(m)


def row_normalize(m: sp.csr_matrix) -> sp.csr_matrix:
    m = sp.csr_matrix(m, dtype=np.float32)
    sums = np.asarray(m.sum(axis=1)).ravel()
    inv = np.where(sums > 0, 1.0 / np.maximum(sums, 1e-12), 0.0).astype(np.float32)
    out = sp.diags(inv) @ m
    out.eliminate_zeros()
    return sp.csr_matrix(out)


def combine(emb: sp.csr_matrix | None, dic: sp.csr_matrix | None) -> sp.csr_matrix:
    """Average the two row distributions where a word has both; keep the one it has otherwise."""
    if emb is None or dic is None:
        m = emb if emb is not None else dic
        if m is None:
            raise XtmError("polyglot augmentation needs word embeddings or a dictionary")
        return m
    has_e = (np.asarray(emb.sum(axis=1)).ravel() > 0).astype(np.float32)
    has_d = (np.asarray(dic.sum(axis=1)).ravel() > 0).astype(np.float32)
    both = np.maximum(has_e + has_d, 1.0)
    return row_normalize(sp.diags(1.0 / both) @ (emb + dic))


def augment(bow: sp.csr_matrix, neighbours: sp.csr_matrix, weight: float, own_first: bool) -> sp.csr_matrix:
    """[x, weight * x M] (own_first) or [weight * x M, x]: the document in the unified vocabulary."""
    carried = sp.csr_matrix(bow @ neighbours, dtype=np.float32) * np.float32(weight)
    parts = [bow, carried] if own_first else [carried, bow]
    return sp.csr_matrix(sp.hstack(parts, format="csr"), dtype=np.float32)


def augment_presence(bow: sp.csr_matrix, same: sp.csr_matrix, cross: sp.csr_matrix, own_first: bool) -> sp.csr_matrix:
    """The public GloCTM code's global bag: with p the document's word presence (0/1), the own-language
    part is p (I + S) (+1 per word present, +1 per same-language neighbour) and the other part p C
    (+1 per cross-lingual neighbour); S and C are binary maps. [own, other] (own_first) or [other, own]."""
    present = sp.csr_matrix(bow, dtype=np.float32)
    present.eliminate_zeros()
    present.data[:] = 1.0
    own = present + sp.csr_matrix(present @ same, dtype=np.float32)
    other = sp.csr_matrix(present @ cross, dtype=np.float32)
    parts = [own, other] if own_first else [other, own]
    return sp.csr_matrix(sp.hstack(parts, format="csr"), dtype=np.float32)

"""The vocabulary rule for JSONL corpora: which words each language keeps, from document frequencies.

Shared by the in-memory loader, which counts document frequencies over its arrays, and the
out-of-core preprocessor, which counts them while streaming its spill: the same corpus gives the
same vocabulary either way. The rule (xtm.config.Preprocessing): the `vocab_size` words with the
highest document frequency among those in at least `min_df` training documents and at most a
`max_df` share of them; when nothing passes (tiny corpora) the filters are relaxed, with a warning.
"""

from __future__ import annotations

from numbers import Real
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xtm.config import TOKEN_RULES, WORD_LIST_SETTINGS, Preprocessing, known_token_rules
from xtm.errors import XtmError
from xtm.runtime.tokenize import user_words_problem
from xtm.text_files import is_one_word
from xtm.trainer.data.corpus_rules import warn_user

__all__ = ["bags_of_words", "check_preprocessing", "check_token_rules", "vocab_from_df", "warn_relaxed"]


def check_preprocessing(prep: Preprocessing) -> None:
    """Refuse settings the rule cannot apply (checked before any document is read)."""
    vocab_size, min_df, max_df, min_doc_tokens = prep.vocab_size, prep.min_df, prep.max_df, prep.min_doc_tokens
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise XtmError(f"vocab_size must be a positive integer, got {vocab_size!r}", field="vocab_size")
    if not isinstance(min_df, int) or min_df < 1:
        raise XtmError(f"min_df must be an integer >= 1, got {min_df!r}", field="min_df")
    # A string would pass float() and then be multiplied, not compared, by the frequency filter.
    if isinstance(max_df, bool) or not isinstance(max_df, Real) or not 0.0 < float(max_df) <= 1.0:
        raise XtmError(f"max_df must be a share of documents in (0, 1], got {max_df!r}", field="max_df")
    if not isinstance(min_doc_tokens, int) or min_doc_tokens < 1:
        raise XtmError(f"min_doc_tokens must be an integer >= 1, got {min_doc_tokens!r}",
                       field="min_doc_tokens")
    check_token_rules(prep.token_rules)
    for name in WORD_LIST_SETTINGS:
        words = getattr(prep, name)
        if not isinstance(words, tuple) or not all(map(is_one_word, words)):
            raise XtmError(f"{name} must be a list of single words, got {str(words)[:80]}", field=name)
    # what a bundle's manifest takes (checked here: a list training took once made a run no export could write)
    if (problem := user_words_problem(prep.user_words)) is not None:
        raise XtmError(f"user_words {problem}", field="user_words")


def check_token_rules(rules: object) -> None:
    """Refuse token rules this xtm does not know (xtm.config.TOKEN_RULES)."""
    if not known_token_rules(rules):
        raise XtmError(f"token_rules must be a whole number from 1 to {TOKEN_RULES}, got {rules!r}",
                       field="token_rules")


def vocab_from_df(token_index: dict[str, int], df: np.ndarray, n_train: int, *, vocab_size: int, min_df: int,
                  max_df: float) -> tuple[list[str], np.ndarray, str]:
    """The vocabulary (sorted words) and token id -> column (-1: not kept), from document frequencies.

    token_index: word -> token id; df[token id]: its document frequency over the `n_train` training
    documents. The third value is a non-empty message when the filters left nothing and were relaxed.
    """
    ok, fallback = _passing(df, n_train, min_df, max_df)
    cand = np.flatnonzero(ok)
    words = np.empty(len(token_index), dtype=object)
    for w, i in token_index.items():
        words[i] = w
    if len(cand) > vocab_size:
        # Highest document frequency first; ties broken by the word so the result is deterministic.
        order = sorted(cand.tolist(), key=lambda i: (-int(df[i]), words[i]))
        cand = np.asarray(order[:vocab_size])
    vocab = sorted(words[cand].tolist())
    col_of = np.full(len(token_index), -1, dtype=np.int64)
    col_of[[token_index[w] for w in vocab]] = np.arange(len(vocab))
    return vocab, col_of, fallback


def _passing(df: np.ndarray, n_train: int, min_df: int, max_df: float) -> tuple[np.ndarray, str]:
    """Tokens that pass the document-frequency filters, relaxed step by step until some do."""
    ok = (df >= min_df) & (df <= max_df * n_train)
    if ok.any():
        return ok, ""
    ok = df >= min_df
    if ok.any():
        return ok, "ignoring max_df"
    return df >= 1, "keeping every word of the training documents"


def warn_relaxed(source: Path, lang: str, min_df: int, max_df: float, n_train: int, fallback: str) -> None:
    """Tell the user the filters were relaxed for `lang` (`fallback`: vocab_from_df's message)."""
    warn_user(f"{source}: '{lang}': no word passes min_df={min_df}, max_df={max_df} over "
              f"{n_train} training documents; {fallback}")


def bags_of_words(lens: np.ndarray, ids: np.ndarray, counts: np.ndarray, col_of: np.ndarray,
                  vocab_size: int) -> sp.csr_matrix:
    """CSR rows (float32 counts) of consecutive documents, built straight from their token ids.

    lens[i]: distinct tokens of document i; ids, counts: its (token id, count) pairs, flat, in document
    order; col_of: vocab_from_df's token id -> column. Tokens outside the vocabulary are left out.
    """
    doc_of = np.repeat(np.arange(len(lens)), lens)
    cols = col_of[ids]
    keep = cols >= 0
    return sp.csr_matrix((counts[keep].astype(np.float32), (doc_of[keep], cols[keep])),
                         shape=(len(lens), vocab_size), dtype=np.float32)

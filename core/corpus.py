"""The corpus type every part of training shares: per-language sparse bags of words plus links.

Bags of words are scipy CSR float32 matrices from loading to the training batch: a corpus is
never densified as a whole (ECNews dense is 1.5 GB of float32; a user's corpus can be 100x).
Languages are ISO 639-1 codes and a corpus holds any number of them; backbones that are
bilingual by construction check that themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from xtm.errors import XtmError

if TYPE_CHECKING:
    import scipy.sparse as sp
# scipy.sparse is imported where used: the torch-free runtime imports TokenizerSpec from here,
# and scipy's import (0.2 s) was a third of xtm-infer's start-up.


@dataclass(frozen=True)
class TokenizerSpec:
    """How raw text of one language becomes tokens; saved with every model so inference matches.

    kind: "whitespace" (text already tokenized, tokens split on spaces), "words" (letters and digits
    with their combining marks, for space-delimited scripts), "regex" (the same without the marks: runs
    made before 2026-12-07), "jieba" (Chinese), "janome" or "mecab" (Japanese), "kiwi" (Korean).
    user_words: words the segmenter keeps whole (xtm-train --user-words), those of them this kind takes (Kiwi: the
    words with Hangul); written only when there are some, so older specs read and compare unchanged.
    """

    lang: str
    kind: str
    lowercase: bool = True
    min_token_length: int = 1
    user_words: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"lang": self.lang, "kind": self.kind, "lowercase": self.lowercase,
                             "min_token_length": self.min_token_length}
        if self.user_words:
            d["user_words"] = list(self.user_words)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenizerSpec:
        return cls(lang=d["lang"], kind=d["kind"], lowercase=bool(d.get("lowercase", True)),
                   min_token_length=int(d.get("min_token_length", 1)), user_words=tuple(d.get("user_words", ())))


@dataclass
class LanguageCorpus:
    """One language's documents as sparse counts over that language's vocabulary."""

    lang: str
    vocab: list[str]
    train_bow: sp.csr_matrix
    tokenizer: TokenizerSpec
    test_bow: sp.csr_matrix | None = None
    train_labels: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    # Pretrained word vectors row-aligned with `vocab` (V x d float32), when the source has them.
    word_vectors: np.ndarray | None = None
    # Document ids for JSONL input (row i of train_bow is train_ids[i]).
    train_ids: list[str] | None = None
    test_ids: list[str] | None = None
    # The documents' text (raw for JSONL, pre-tokenized for benchmark dirs), row-aligned with the
    # bags of words: sentence encoders (XTRA, contextual inference) embed these.
    train_texts: list[str] | None = None
    test_texts: list[str] | None = None
    # Word counts over ALL training documents when train_bow holds only a sample of them
    # (out-of-core corpora: xtm.trainer.data.sharding); None: the column sums of train_bow.
    train_word_counts: np.ndarray | None = None

    def __post_init__(self) -> None:
        import scipy.sparse as sp

        v = len(self.vocab)
        for name in ("train_bow", "test_bow"):
            m = getattr(self, name)
            if m is None:
                continue
            if not sp.issparse(m):
                raise XtmError(f"{self.lang}: {name} must be a scipy sparse matrix, got {type(m).__name__}")
            m = sp.csr_matrix(m, dtype=np.float32)
            if m.shape[1] != v:
                raise XtmError(f"{self.lang}: {name} has {m.shape[1]} columns but the vocabulary has {v} words")
            setattr(self, name, m)
        for bow, labels, name in ((self.train_bow, self.train_labels, "train_labels"),
                                  (self.test_bow, self.test_labels, "test_labels")):
            if labels is not None and bow is not None and len(labels) != bow.shape[0]:
                raise XtmError(f"{self.lang}: {name} has {len(labels)} rows but the bag of words has {bow.shape[0]}")
        if self.word_vectors is not None and self.word_vectors.shape[0] != v:
            raise XtmError(f"{self.lang}: word vectors have {self.word_vectors.shape[0]} rows, vocabulary {v}")

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @property
    def num_train(self) -> int:
        return int(self.train_bow.shape[0])

    def word_counts(self) -> np.ndarray:
        """Each vocabulary word's total count over the training documents (float64, length V)."""
        if self.train_word_counts is not None:
            return np.asarray(self.train_word_counts, dtype=np.float64)
        return np.asarray(self.train_bow.sum(axis=0), dtype=np.float64).ravel()


@dataclass
class Corpus:
    """A multilingual corpus: languages in a fixed order, plus cross-lingual word links.

    `links[(a, b)]` is a sparse binary matrix of shape (V_a, V_b): entry (i, j) = 1 when word i
    of language a translates to word j of language b (from a bilingual dictionary). Only one
    orientation is stored; `link_matrix` gives either.
    """

    languages: list[LanguageCorpus]
    links: dict[tuple[str, str], sp.csr_matrix] = field(default_factory=dict)
    name: str = "corpus"
    # Free-form provenance shown in metrics and reports (paths, counts of dropped documents, ...).
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        codes = [lc.lang for lc in self.languages]
        if len(set(codes)) != len(codes):
            raise XtmError(f"corpus lists a language twice: {codes}")

    @property
    def langs(self) -> list[str]:
        return [lc.lang for lc in self.languages]

    def lang(self, code: str) -> LanguageCorpus:
        for lc in self.languages:
            if lc.lang == code:
                return lc
        raise XtmError(f"language '{code}' is not in this corpus (it has {', '.join(self.langs)})")

    def link_matrix(self, a: str, b: str) -> sp.csr_matrix:
        """Links from language a's vocabulary to b's, shape (V_a, V_b); empty if none are known."""
        import scipy.sparse as sp

        if (a, b) in self.links:
            return self.links[(a, b)]
        if (b, a) in self.links:
            return sp.csr_matrix(self.links[(b, a)].T)
        return sp.csr_matrix((self.lang(a).vocab_size, self.lang(b).vocab_size), dtype=np.float32)

    @property
    def has_labels(self) -> bool:
        return all(lc.train_labels is not None and lc.test_labels is not None and lc.test_bow is not None
                   for lc in self.languages)

"""Load a multilingual corpus into memory: `load_corpus`, the one entry for both kinds of input.

Two sources, detected from the path:
- a benchmark directory in the public InfoCTM layout (`train_bow_matrix_<L>.npz`, `vocab_<L>`,
  ...): read as is, already preprocessed (xtm.trainer.data.benchmark);
- a JSONL file, or a directory of `*.jsonl` files: one document per line, read by
  xtm.trainer.data.jsonl and turned into sparse bags of words here, by the rules the out-of-core
  preprocessor shares (xtm.trainer.data.corpus_rules, vocab_rules).

Bags of words are built as CSR straight from token ids; nothing is ever densified.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from xtm.config import PREPROCESSING, Preprocessing
from xtm.corpus import Corpus, LanguageCorpus
from xtm.errors import XtmError
from xtm.runtime.tokenize import default_tokenizer_spec
from xtm.trainer.data.benchmark import BOW_PREFIX, is_benchmark_dir, load_benchmark
from xtm.trainer.data.corpus_rules import (
    HOLDOUT_FRACTION,
    choose_test_documents,
    corpus_info,
    label_names,
    language_order,
    normalize_langs,
    split_mode,
)
from xtm.trainer.data.dictionary import attach_links
from xtm.trainer.data.jsonl import Document, ReadStats, corpus_name, input_files, read_documents
from xtm.trainer.data.vocab_rules import (
    bags_of_words,
    check_preprocessing,
    check_token_rules,
    vocab_from_df,
    warn_relaxed,
)

__all__ = ["HOLDOUT_FRACTION", "load_corpus"]


def load_corpus(
    path: str | Path,
    *,
    dict_path: str | Path | None = None,
    langs: Sequence[str] | None = None,
    prep: Preprocessing = PREPROCESSING,
    seed: int = 0,
    progress: bool = True,
    **rules: Any,
) -> Corpus:
    """Load a corpus from a benchmark directory, a JSONL file or a directory of JSONL files.

    langs: ISO codes (aliases accepted) selecting and ordering the languages; default all found.
    dict_path: bilingual dictionary (`source<TAB>target`) linking the vocabularies.
    prep, seed: JSONL preprocessing only (xtm.config.Preprocessing; keyword `rules` replace single
    ones: `load_corpus(path, vocab_size=800)`). The vocabulary of each language is the `vocab_size`
    words with the highest document frequency among those in at least `min_df` training documents
    and at most a `max_df` share of them; documents with fewer than `min_doc_tokens` vocabulary
    tokens are dropped. When every document is labeled but none has a `split`, HOLDOUT_FRACTION of
    each language is held out as test set, chosen by `seed`.
    """
    prep = replace(prep, **rules) if rules else prep
    p = Path(path)
    if not p.exists():
        raise XtmError("corpus path does not exist", path=p)
    want = normalize_langs(langs)
    if p.is_dir() and is_benchmark_dir(p):
        check_token_rules(prep.token_rules)
        for name, flag in (("extra_stopwords", "--stopwords"), ("user_words", "--user-words")):
            if getattr(prep, name):
                raise XtmError(f"{flag} applies to JSONL documents: a benchmark directory's bags of words are read "
                               "as they are", path=p)
        corpus = load_benchmark(p, want, prep.token_rules)
    else:
        files = input_files(p, none_found=f"not a corpus directory: it has neither benchmark files "
                                          f"({BOW_PREFIX}<lang>.npz, vocab_<lang>) nor *.jsonl files")
        corpus = _load_jsonl(files, p, want, prep, seed, progress)
    if dict_path is not None:
        attach_links(corpus, Path(dict_path))
    return corpus


@dataclass
class _LangDocs:
    """One language's documents while reading: token ids and counts, flat, plus per-doc fields."""

    token_index: dict[str, int] = field(default_factory=dict)
    ids: array = field(default_factory=lambda: array("i"))      # token id per (doc, token)
    counts: array = field(default_factory=lambda: array("i"))   # its count in that doc
    offsets: list[int] = field(default_factory=lambda: [0])
    doc_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    labels: list[Any] = field(default_factory=list)
    splits: list[str | None] = field(default_factory=list)
    explicit: int = 0  # documents whose `lang` field named this language (the rest were detected)

    @property
    def n(self) -> int:
        return len(self.doc_ids)

    def add(self, doc: Document) -> None:
        index = self.token_index
        for tok, c in doc.tokens.items():
            tid = index.get(tok)
            if tid is None:
                tid = index[tok] = len(index)
            self.ids.append(tid)
            self.counts.append(c)
        self.offsets.append(len(self.ids))
        self.doc_ids.append(doc.doc_id)
        self.texts.append(doc.text)
        self.labels.append(doc.label)
        self.splits.append(doc.split)
        self.explicit += doc.explicit

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(distinct tokens per document, token ids, counts) as numpy arrays, without copying."""
        ids = np.frombuffer(self.ids, dtype=np.int32) if len(self.ids) else np.zeros(0, np.int32)
        counts = np.frombuffer(self.counts, dtype=np.int32) if len(self.counts) else np.zeros(0, np.int32)
        return np.diff(np.asarray(self.offsets, dtype=np.int64)), ids, counts


class _Rows(NamedTuple):
    """Some of a language's documents: their bags of words, ids, texts and labels (None: unlabeled).

    All None: no documents (a language without a test set).
    """

    bow: sp.csr_matrix | None
    ids: list[str] | None
    texts: list[str] | None
    labels: np.ndarray | None


def _load_jsonl(files: list[Path], source: Path, want: list[str] | None, prep: Preprocessing, seed: int,
                progress: bool) -> Corpus:
    check_preprocessing(prep)
    stats = ReadStats()
    docs = _read(files, want, progress, stats, prep)
    order = language_order({x: d.n for x, d in docs.items()}, {x: d.explicit for x, d in docs.items()},
                           want, source, stats)
    all_labels = [lab for x in order for lab in docs[x].labels]
    names = label_names(len(all_labels), sum(lab is not None for lab in all_labels),
                        {lab for lab in all_labels if lab is not None}, source)
    label_to_int = {v: i for i, v in enumerate(names)} if names is not None else None
    mode = split_mode(any(s is not None for x in order for s in docs[x].splits), names)
    rng = np.random.default_rng(seed)  # the hold-out draws, language after language
    languages: list[LanguageCorpus] = []
    lang_info: dict[str, Any] = {}
    for x in order:
        ld = docs.pop(x)  # its token arrays are freed once the language is built
        is_test = choose_test_documents(mode, ld.n, np.array([s == "test" for s in ld.splits], dtype=bool)
                                        if mode == "file" else None, rng)
        lc, lang_info[x] = _language(x, ld, is_test, label_to_int, prep, source, stats)
        languages.append(lc)
    info = corpus_info(source, files, stats, names, mode, lang_info, prep, seed)
    return Corpus(languages=languages, name=corpus_name(source), info=info)


def _read(files: list[Path], want: list[str] | None, progress: bool, stats: ReadStats,
          prep: Preprocessing) -> dict[str, _LangDocs]:
    """Every document, by language; a language met whose every document was dropped has an empty entry."""
    docs: dict[str, _LangDocs] = {}
    for doc in read_documents(files, want, progress, stats, prep.token_rules, prep.extra_stopwords, prep.user_words):
        ld = docs.get(doc.lang)
        if ld is None:
            ld = docs[doc.lang] = _LangDocs()
        ld.add(doc)
    for lang in stats.dropped_by_lang:
        docs.setdefault(lang, _LangDocs())
    return docs


def _language(x: str, ld: _LangDocs, is_test: np.ndarray, label_to_int: dict[Any, int] | None,
              prep: Preprocessing, source: Path, stats: ReadStats) -> tuple[LanguageCorpus, dict[str, Any]]:
    """One language's corpus (vocabulary, train and test rows) and its corpus.info entry."""
    lens, ids, counts = ld.arrays()
    vocab, col_of = _vocabulary(x, ld, lens, ids, is_test, prep, source)
    bow = bags_of_words(lens, ids, counts, col_of, len(vocab))
    too_short = np.asarray(bow.sum(axis=1)).ravel() < prep.min_doc_tokens
    if too_short.any():
        stats.drop("too_few_vocab_tokens", x, int(too_short.sum()))
    train = _rows(bow, ld, ~is_test & ~too_short, label_to_int)
    assert train.bow is not None
    if train.bow.shape[0] == 0:
        raise XtmError(f"no training documents left for language '{x}'", path=source)
    test_mask = is_test & ~too_short
    test = _rows(bow, ld, test_mask, label_to_int) if test_mask.any() else _Rows(None, None, None, None)
    lc = LanguageCorpus(
        lang=x, vocab=vocab, train_bow=train.bow, test_bow=test.bow,
        tokenizer=default_tokenizer_spec(x, prep.token_rules, prep.user_words), train_labels=train.labels,
        test_labels=test.labels,
        train_ids=train.ids, test_ids=test.ids, train_texts=train.texts, test_texts=test.texts,
    )
    info = {"train_docs": int(train.bow.shape[0]), "test_docs": 0 if test.bow is None else int(test.bow.shape[0]),
            "vocab_size": len(vocab), "distinct_tokens": len(ld.token_index),
            "dropped": dict(stats.dropped_by_lang.get(x, {}))}
    return lc, info


def _vocabulary(x: str, ld: _LangDocs, lens: np.ndarray, ids: np.ndarray, is_test: np.ndarray,
                prep: Preprocessing, source: Path) -> tuple[list[str], np.ndarray]:
    """The vocabulary rule over the training documents' document frequencies."""
    train_rows = ~is_test
    doc_of = np.repeat(np.arange(ld.n), lens)
    in_train = train_rows[doc_of] if len(doc_of) else np.zeros(0, dtype=bool)
    # Each (doc, token) appears once in `ids`, so counting ids gives document frequency.
    df = np.bincount(ids[in_train], minlength=len(ld.token_index))
    n_train = int(train_rows.sum())
    vocab, col_of, fallback = vocab_from_df(ld.token_index, df, n_train, vocab_size=prep.vocab_size,
                                            min_df=prep.min_df, max_df=float(prep.max_df))
    if fallback:
        warn_relaxed(source, x, prep.min_df, prep.max_df, n_train, fallback)
    return vocab, col_of


def _rows(bow: sp.csr_matrix, ld: _LangDocs, mask: np.ndarray, label_to_int: dict[Any, int] | None) -> _Rows:
    rows = np.flatnonzero(mask).tolist()
    labels = None
    if label_to_int is not None:
        labels = np.array([label_to_int[ld.labels[i]] for i in rows], dtype=np.int64)
    return _Rows(bow[rows], [ld.doc_ids[i] for i in rows], [ld.texts[i] for i in rows], labels)

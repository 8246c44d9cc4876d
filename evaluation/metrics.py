"""Evaluation of cross-lingual topic models: TU, CNPMI, TQ and intra/cross-lingual classification.

numpy / scipy / scikit-learn only (no torch), so metrics can be recomputed from saved beta and
theta anywhere. Protocols follow the public code the literature's tables come from:

- TU (Nan et al. 2019) as in BobXWu/InfoCTM `utils/TU.py`; the bilingual TU is the mean of the
  per-language TUs (BobXWu/InfoCTM README: "We use the average TU score of two languages").
- CNPMI (Hao et al. 2018) as in BobXWu/CNPMI `CNPMI.py`: each aligned document pair is one
  window, pairs (w_i of language a, w_j of language b) of the same topic, NPMI = 0 when the pair
  or either word never occurs, mean over all pairs. See `cnpmi` for the one deliberate deviation.
- TQ (Chang et al. 2024) = max(0, CNPMI) * TU.
- Classification as in BobXWu/TopMost `topmost/evaluations/classification.py`: "<L>-C" is a
  classifier trained on the *other* language's training theta and tested on L's test theta.
  TopMost uses `SVC()` (RBF) on the pre-softmax encoder mean; this project uses a linear SVM
  (`LinearSVC`, as the papers describe) on standardised theta, the distribution the runtime
  serves, so absolute numbers can differ from TopMost's. `evaluate` reports both when it is given
  the encoder means: "classification" (xtm's) and "classification_published" (the public code's,
  the one a published row is read against).
"""

from __future__ import annotations

import gzip
import itertools
import math
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.corpus import Corpus
from xtm.errors import XtmError
from xtm.interruptible import interruptible
from xtm.languages import dataset_suffixes, normalize_lang
from xtm.paths import is_hidden_name
from xtm.topic_words import TOP_WORDS, top_words

__all__ = [
    "ReferenceCorpus",
    "classification",
    "cnpmi",
    "cnpmi_per_topic",
    "crosslingual_tu",
    "evaluate",
    "has_labels",
    "load_reference_corpus",
    "unclassifiable_note",
    "published_protocol_note",
    "topic_quality",
    "topic_uniqueness",
    "topic_uniqueness_per_topic",
]


# --------------------------------------------------------------------------------------------
# Topic uniqueness (the top words themselves: xtm.topic_words)
# --------------------------------------------------------------------------------------------


def topic_uniqueness(topics: Sequence[Sequence[str]]) -> float:
    """TU (Nan et al. 2019): mean over topics of the mean over its words of 1 / cnt(word).

    cnt(word) is the number of topics whose word list contains the word. Identical topics give
    1/K, pairwise disjoint topics give 1.0. Matches BobXWu/InfoCTM `utils/TU.py` for topics
    without repeated words (which `top_words` never produces).
    """
    return float(np.mean(topic_uniqueness_per_topic(topics)))


def topic_uniqueness_per_topic(topics: Sequence[Sequence[str]]) -> list[float]:
    """Each topic's term of TU: the mean over its words of 1 / cnt(word) (see `topic_uniqueness`)."""
    if len(topics) == 0:
        raise XtmError("topic uniqueness needs at least one topic")
    if any(len(t) == 0 for t in topics):
        raise XtmError("topic uniqueness: a topic has no words")
    cnt: dict[str, int] = {}
    for t in topics:
        for w in set(t):
            cnt[w] = cnt.get(w, 0) + 1
    return [float(np.mean([1.0 / cnt[w] for w in t])) for t in topics]


def crosslingual_tu(topics_by_lang: dict[str, Sequence[Sequence[str]]]) -> dict[str, Any]:
    """TU per language and overall: {"TU": mean of the per-language TUs, "TU_per_language": {...}}.

    Each language's topics are scored on their own (words of different languages never count
    against each other) and the overall TU is the plain mean over languages, the way InfoCTM
    reports it (BobXWu/InfoCTM README: "the average TU score of two languages", computed with
    `utils/TU.py` once per language). TopMost has no bilingual TU of its own.
    """
    if not topics_by_lang:
        raise XtmError("crosslingual TU needs topics for at least one language")
    per = {lang: topic_uniqueness(t) for lang, t in topics_by_lang.items()}
    return {"TU": float(np.mean(list(per.values()))), "TU_per_language": per}


def topic_quality(cnpmi_value: float, tu: float) -> float:
    """TQ (Chang et al. 2024) = max(0, CNPMI) * TU: negative coherence is clipped to zero."""
    return float(max(0.0, float(cnpmi_value)) * float(tu))


# --------------------------------------------------------------------------------------------
# Reference corpus
# --------------------------------------------------------------------------------------------


@dataclass
class ReferenceCorpus:
    """Aligned document pairs for CNPMI: line i of every language is the same document.

    Per language, `counts[lang]` is a CSR (documents x reference words) matrix of token counts
    over the first `max_tokens` tokens of each document and `index[lang]` maps a word to its
    column. The whole reference vocabulary is kept (about 700k tokens per language for 14k
    documents at 50 tokens), so any model's topic words can be looked up without reloading.
    """

    langs: tuple[str, str]
    counts: dict[str, sp.csr_matrix]
    index: dict[str, dict[str, int]]
    max_tokens: int | None
    source: str = ""
    files: dict[str, list[str]] = field(default_factory=dict)
    _csc: dict[str, sp.csc_matrix] = field(default_factory=dict, repr=False)

    @property
    def num_docs(self) -> int:
        return int(self.counts[self.langs[0]].shape[0])

    def covers(self, a: str, b: str) -> bool:
        """Whether this corpus aligns languages a and b (aliases accepted, order free)."""
        x, y = normalize_lang(a), normalize_lang(b)
        return x != y and {x, y} == set(self.langs)

    def word_counts(self, lang: str, words: Sequence[str]) -> sp.csc_matrix:
        """Documents x len(words) token counts; a word absent from the reference is an empty column."""
        lang = self._lang(lang)
        if lang not in self._csc:
            # Column slicing is what CNPMI does; CSC makes it cheap and is built once per language.
            self._csc[lang] = self.counts[lang].tocsc()
        m = self._csc[lang]
        idx = self.index[lang]
        cols = np.array([idx.get(w, -1) for w in words], dtype=np.int64)
        known = cols >= 0
        if known.all():
            return sp.csc_matrix(m[:, cols], dtype=np.float64)
        # Unknown words: slice the known columns, then scatter them into place.
        sub = m[:, cols[known]].tocoo()
        positions = np.flatnonzero(known)
        return sp.csc_matrix((sub.data.astype(np.float64), (sub.row, positions[sub.col])),
                             shape=(m.shape[0], len(words)))

    def _lang(self, lang: str) -> str:
        code = normalize_lang(lang)
        if code not in self.langs:
            raise XtmError(f"the reference corpus aligns {'-'.join(self.langs)}, not language '{lang}'")
        return code


_TEXT_PATTERNS = (
    # Tokenized files first: a directory may also hold the raw text (kyoto_wiki.ja.txt.gz),
    # which a whitespace split would turn into whole sentences for Japanese or Chinese.
    ("*.{s}.tok.txt.gz", "*.{s}.tok.txt", "*_{s}.tok.txt.gz", "*_{s}.tok.txt"),
    ("*.{s}.txt.gz", "*.{s}.txt", "*_{s}.txt.gz", "*_{s}.txt"),
)


def _find_files(directory: Path, lang: str, tier: Sequence[str]) -> list[Path]:
    found: set[Path] = set()
    for suffix in dataset_suffixes(lang):
        for pattern in tier:
            # (a hidden "._wiki.en.tok.txt" beside wiki.en.tok.txt is a Mac's sidecar, not a second file to align)
            found.update(p for p in directory.glob(pattern.format(s=suffix))
                         if p.is_file() and not is_hidden_name(p.name))
    return sorted(found)


def _find_pair(directory: Path, a: str, b: str) -> dict[str, list[Path]] | None:
    """Files of both languages from the first pattern tier that has both (never tokenized + raw)."""
    for tier in _TEXT_PATTERNS:
        files = {lang: _find_files(directory, lang, tier) for lang in (a, b)}
        if files[a] and files[b]:
            return files
    return None


def _read_lines(path: Path) -> list[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
            return f.read().split("\n")
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:  # zlib.error: a damaged .gz stream
        raise XtmError(f"cannot read reference corpus file: {e}", path=path) from e


def _documents(path: Path) -> list[str]:
    lines = _read_lines(path)
    # A final newline ends the last document; it does not start an empty one.
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _count_matrix(docs: Iterable[str], max_tokens: int | None) -> tuple[sp.csr_matrix, dict[str, int]]:
    index: dict[str, int] = {}
    indptr = [0]
    cols: list[int] = []
    for line in docs:
        # maxsplit stops splitting after the tokens we keep (Kyoto articles average ~400 tokens).
        toks = line.split(None, max_tokens)[:max_tokens] if max_tokens is not None else line.split()
        cols.extend(index.setdefault(t, len(index)) for t in toks)
        indptr.append(len(cols))
    data = np.ones(len(cols), dtype=np.float32)
    m = sp.csr_matrix((data, np.asarray(cols, dtype=np.int64), np.asarray(indptr, dtype=np.int64)),
                      shape=(len(indptr) - 1, len(index)))
    m.sum_duplicates()  # repeated tokens in a document become counts
    return m, index


def _resolve_directory(path: Path, a: str, b: str) -> tuple[Path, dict[str, list[Path]] | None]:
    """`path` itself when it holds files of both languages, else a pair subfolder such as en_ja."""
    files = _find_pair(path, a, b)
    if files is not None:
        return path, files
    for sa, sb in itertools.product(dataset_suffixes(a), dataset_suffixes(b)):
        for name in (f"{sa}_{sb}", f"{sb}_{sa}", f"{sa}-{sb}", f"{sb}-{sa}"):
            sub = path / name
            if sub.is_dir() and (files := _find_pair(sub, a, b)) is not None:
                return sub, files
    return path, None


def load_reference_corpus(
    path: str | Path, langs: tuple[str, str] = ("en", "ja"), max_tokens: int | None = 50
) -> ReferenceCorpus:
    """Load an aligned reference corpus for CNPMI from a directory.

    The directory (or its `<a>_<b>` subfolder) holds one file per language, matched as
    `*.{lang}.tok.txt[.gz]` first, then `*.{lang}.txt[.gz]` (also `_{lang}` and dataset aliases
    such as `cn` for zh). Several files per language (WikiComp's 5 chunks) are paired in sorted
    order and concatenated. Each document keeps its first `max_tokens` whitespace tokens, the
    WikiComp convention of BobXWu/CNPMI (None keeps whole documents).
    """
    if len(langs) != 2:
        raise XtmError(f"a reference corpus aligns exactly two languages, got {list(langs)}")
    a, b = normalize_lang(langs[0]), normalize_lang(langs[1])
    if a == b:
        raise XtmError(f"a reference corpus needs two different languages, got {a} twice")
    if max_tokens is not None and max_tokens < 1:
        raise XtmError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    root = Path(path)
    if not root.is_dir():
        raise XtmError("reference corpus directory not found", path=root)
    directory, found = _resolve_directory(root, a, b)
    if found is None:
        missing = [lang for lang in (a, b)
                   if not any(_find_files(directory, lang, tier) for tier in _TEXT_PATTERNS)]
        which = f"language '{missing[0]}'" if missing else f"the same format in both {a} and {b}"
        raise XtmError(f"no reference corpus file for {which} (looked for *.<lang>.tok.txt[.gz], then "
                       f"*.<lang>.txt[.gz], aliases included, also in an {a}_{b} subfolder)", path=directory)
    files = found
    if len(files[a]) != len(files[b]):
        raise XtmError(f"reference corpus has {len(files[a])} {a} file(s) but {len(files[b])} {b} file(s); "
                       "each file needs its aligned partner", path=directory)
    docs: dict[str, list[str]] = {a: [], b: []}
    for fa, fb in zip(files[a], files[b], strict=True):
        da, db = _documents(fa), _documents(fb)
        if len(da) != len(db):
            raise XtmError(f"aligned reference files differ in length: {fa.name} has {len(da)} lines, "
                           f"{fb.name} has {len(db)}; line i of each must be the same document", path=fa)
        docs[a].extend(da)
        docs[b].extend(db)
    if not docs[a]:
        raise XtmError("reference corpus has no documents", path=directory)
    counts: dict[str, sp.csr_matrix] = {}
    index: dict[str, dict[str, int]] = {}
    for lang in (a, b):
        counts[lang], index[lang] = _count_matrix(docs[lang], max_tokens)
        docs[lang] = []  # free the raw text early: only the counts are kept
    return ReferenceCorpus(langs=(a, b), counts=counts, index=index, max_tokens=max_tokens,
                           source=str(directory), files={k: [str(p) for p in v] for k, v in files.items()})


# --------------------------------------------------------------------------------------------
# CNPMI
# --------------------------------------------------------------------------------------------


def _npmi_matrix(joint: np.ndarray, ca: np.ndarray, cb: np.ndarray, total: int) -> np.ndarray:
    """NPMI for every (a-word, b-word) pair from counts; BobXWu/CNPMI conventions for zeros."""
    joint = np.asarray(joint, dtype=np.float64)
    ca = np.asarray(ca, dtype=np.float64).reshape(-1, 1)
    cb = np.asarray(cb, dtype=np.float64).reshape(1, -1)
    out = np.zeros(joint.shape, dtype=np.float64)
    # CNPMI.py: NPMI = 0 when the pair or either word never occurs (not -1, and not skipped:
    # such pairs still count in the mean). This keeps unknown words from dominating the score.
    ok = (joint > 0) & (ca > 0) & (cb > 0)
    full = ok & (joint >= total)
    ok &= ~full
    pmi = np.log(np.where(ok, joint * total, 1.0) / np.where(ok, ca * cb, 1.0))
    denom = -np.log(np.where(ok, joint / total, 0.5))
    out[ok] = (pmi / denom)[ok]
    # A pair present in every window: -log p(wi, wj) = 0 and CNPMI.py would divide by zero.
    # Both words then occur only together, which NPMI scores as 1 (Bouma 2009).
    out[full] = 1.0
    return out


def cnpmi_per_topic(
    topics_a: Sequence[Sequence[str]],
    topics_b: Sequence[Sequence[str]],
    ref: ReferenceCorpus,
    lang_a: str,
    lang_b: str,
    n: int = 15,
    marginals: str = "documents",
) -> np.ndarray:
    """CNPMI of each topic: mean NPMI over its n x n cross-lingual word pairs. See `cnpmi`."""
    if len(topics_a) != len(topics_b):
        raise XtmError(f"CNPMI needs the same number of topics in both languages, got {len(topics_a)} "
                       f"and {len(topics_b)}")
    if len(topics_a) == 0:
        raise XtmError("CNPMI needs at least one topic")
    if marginals not in ("documents", "tokens"):
        raise XtmError(f"marginals must be 'documents' or 'tokens', got {marginals!r}")
    a, b = ref._lang(lang_a), ref._lang(lang_b)
    if a == b:
        raise XtmError(f"CNPMI compares two different languages, got {a} twice")
    ta = [list(t[:n]) for t in topics_a]
    tb = [list(t[:n]) for t in topics_b]
    if any(len(t) == 0 for t in ta + tb):
        raise XtmError("CNPMI: a topic has no words")
    ua = sorted({w for t in ta for w in t})
    ub = sorted({w for t in tb for w in t})
    ca = ref.word_counts(a, ua)
    cb = ref.word_counts(b, ub)
    pa = (ca > 0).astype(np.float64)
    pb = (cb > 0).astype(np.float64)
    # Joint document frequencies of all needed pairs at once: (|ua| x N) @ (N x |ub|).
    joint = (pa.T @ pb).toarray()
    if marginals == "documents":
        ma = np.asarray(pa.sum(axis=0)).ravel()
        mb = np.asarray(pb.sum(axis=0)).ravel()
    else:
        # BobXWu/CNPMI's own marginals: total token counts (CountVectorizer bow.sum(0)).
        ma = np.asarray(ca.sum(axis=0)).ravel()
        mb = np.asarray(cb.sum(axis=0)).ravel()
    npmi = _npmi_matrix(joint, ma, mb, ref.num_docs)
    pos_a = {w: i for i, w in enumerate(ua)}
    pos_b = {w: i for i, w in enumerate(ub)}
    scores = np.empty(len(ta), dtype=np.float64)
    for k, (wa, wb) in enumerate(zip(ta, tb, strict=True)):
        ia = np.array([pos_a[w] for w in wa])
        ib = np.array([pos_b[w] for w in wb])
        scores[k] = npmi[np.ix_(ia, ib)].mean()
    return scores


def cnpmi(
    topics_a: Sequence[Sequence[str]],
    topics_b: Sequence[Sequence[str]],
    ref: ReferenceCorpus,
    lang_a: str,
    lang_b: str,
    n: int = 15,
    marginals: str = "documents",
) -> float:
    """Cross-lingual NPMI (Hao et al. 2018) of aligned topics, averaged over topics.

    Topic k pairs every word of `topics_a[k][:n]` (language a) with every word of
    `topics_b[k][:n]`. With N aligned document pairs, p(wi, wj) = #pairs whose a-side contains wi
    and b-side contains wj, over N; NPMI = log(p(wi,wj) / (p(wi) p(wj))) / -log p(wi,wj).
    Conventions of BobXWu/CNPMI `CNPMI.py`: NPMI = 0 (kept in the mean) when the joint count or
    either word count is 0; each document pair is one window.

    Deviation: CNPMI.py takes p(w) from total token counts (`CountVectorizer` counts summed),
    not document frequencies, so a word repeated inside a document inflates its marginal and
    the score can leave [-1, 1]. The default here, `marginals="documents"`, uses document
    frequencies as Hao et al. define it; `marginals="tokens"` reproduces CNPMI.py.
    """
    return float(cnpmi_per_topic(topics_a, topics_b, ref, lang_a, lang_b, n=n, marginals=marginals).mean())


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


CLASSIFIERS = ("linear", "reference")


def _fit_svm(x_train: np.ndarray, y_train: np.ndarray, seed: int, classifier: str = "linear") -> Any:
    # imported here: sklearn is only needed for this metric
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    if len(np.unique(y_train)) < 2:
        raise XtmError("classification needs at least two classes in the training labels")
    if classifier == "reference":
        # What the public code behind the published tables runs (TopMost, LLM-XTM, XTRA, GloCTM
        # `utils/eval.py`): sklearn's SVC() as is (RBF, C=1, gamma='scale'), no scaling; the
        # features they pass are the encoder's eval-mode mean (pre-softmax), see `classification`.
        return SVC(gamma="scale").fit(x_train, y_train)
    if classifier != "linear":
        raise XtmError(f"classification: classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}")
    # C=1.0 is sklearn's (and TopMost's SVC) default; dual="auto" picks the primal solver when
    # documents outnumber topics, which converges fast; max_iter is raised so the dual solver
    # on small sets does not stop early with a ConvergenceWarning.
    # Features are standardised first: theta lives on the simplex (entries ~1/K), where an
    # unscaled linear SVM with C=1 underfits badly (measured on ECNews: 0.34 vs 0.53 EN-I).
    clf = make_pipeline(StandardScaler(), LinearSVC(C=1.0, dual="auto", max_iter=10000, random_state=seed))
    return clf.fit(x_train, y_train)


def classification(
    train_theta: dict[str, np.ndarray],
    train_labels: dict[str, np.ndarray],
    test_theta: dict[str, np.ndarray],
    test_labels: dict[str, np.ndarray],
    seed: int = 0,
    classifier: str = "linear",
) -> dict[str, float]:
    """Accuracy of a linear SVM (LinearSVC) on document-topic proportions, per language.

    `classifier="reference"` is the public code's protocol instead (SVC() with an RBF kernel, no
    scaling), meant for the encoder's pre-softmax mean as features: what the published tables used
    (benchmarks/reference_protocol.py puts both side by side).

    "<L>-I": trained on L's training theta, tested on L's test theta. "<L>-C": trained on the
    other language's training theta, tested on L's test theta (TopMost `cross_en` = train on cn,
    test on en), i.e. "EN-C" says how well English test documents are classified by a model
    that never saw English. With more than two languages, "<L>-C-<M>" is the classifier trained
    on M, and "<L>-C" the mean over all M != L. Keys use uppercase ISO codes.
    """
    def by_lang(d: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        out = {normalize_lang(k): np.asarray(v) for k, v in d.items()}
        if len(out) != len(d):
            raise XtmError(f"classification: a language is given twice in the {what} ({list(d)})")
        return out

    trx, trY = by_lang(train_theta, "train theta"), by_lang(train_labels, "train labels")
    tex, teY = by_lang(test_theta, "test theta"), by_lang(test_labels, "test labels")
    langs = list(trx)
    data: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for lang in langs:
        for d, what in ((trY, "train labels"), (tex, "test theta"), (teY, "test labels")):
            if lang not in d:
                raise XtmError(f"classification: no {what} for language '{lang}'")
        xtr, ytr = trx[lang].astype(np.float64), trY[lang].ravel()
        xte, yte = tex[lang].astype(np.float64), teY[lang].ravel()
        for x, y, part in ((xtr, ytr, "train"), (xte, yte, "test")):
            if x.ndim != 2:
                raise XtmError(f"classification: {lang} {part} theta must be 2-D, got shape {x.shape}")
            if len(y) != x.shape[0]:
                raise XtmError(f"classification: {lang} {part} theta has {x.shape[0]} rows but "
                               f"{len(y)} labels")
            if x.shape[0] == 0:
                raise XtmError(f"classification: {lang} has no {part} documents")
            if not np.isfinite(x).all():
                raise XtmError(f"classification: {lang} {part} theta holds NaN or infinite values")
        data[lang] = (xtr, ytr, xte, yte)
    dims = {d[0].shape[1] for d in data.values()} | {d[2].shape[1] for d in data.values()}
    if len(dims) != 1:
        raise XtmError(f"classification: theta of all languages must have the same number of topics, "
                       f"got {sorted(dims)}")

    # One classifier per training language serves its -I score and every other language's -C.
    # Fits and predictions run where Ctrl-C reaches them (xtm.interruptible): the RBF SVC takes minutes.
    models = {lang: interruptible(_fit_svm, data[lang][0], data[lang][1], seed, classifier) for lang in langs}

    def accuracy(train_lang: str, test_lang: str) -> float:
        _, _, xte, yte = data[test_lang]
        return float(np.mean(interruptible(models[train_lang].predict, xte) == yte))

    out: dict[str, float] = {f"{lang.upper()}-I": accuracy(lang, lang) for lang in langs}
    for lang in langs:
        cross = {m: accuracy(m, lang) for m in langs if m != lang}
        if not cross:
            continue
        if len(cross) > 1:
            out.update({f"{lang.upper()}-C-{m.upper()}": v for m, v in cross.items()})
        out[f"{lang.upper()}-C"] = float(np.mean(list(cross.values())))
    return out


# The published protocol's RBF SVC costs about n^2 in the training documents (ECNews's 40,000 per
# language: about 45 s a language on a quiet machine here); above this many it is skipped, with a note, rather than
# holding a large user corpus's run for hours at its very end.
PUBLISHED_PROTOCOL_MAX_DOCS = 50_000


def has_labels(corpus: Corpus) -> bool:
    """Whether every language has train and test labels, which classification needs."""
    return all(lc.train_labels is not None and lc.test_labels is not None for lc in corpus.languages)


def unclassifiable_note(corpus: Corpus) -> str | None:
    """Why classification cannot be computed although every language has labels, or None: a language whose
    training documents all share one label (nothing to tell apart), or one without test documents (nothing to
    score: a 0-row test split stopped the run's end in scikit-learn, before metrics.json was written)."""
    single = {lc.lang: np.unique(lc.train_labels) for lc in corpus.languages
              if lc.train_labels is not None and len(np.unique(lc.train_labels)) < 2}
    untested = [lc.lang for lc in corpus.languages if lc.test_labels is not None and len(lc.test_labels) == 0]
    if untested:
        return (f"not computed: {', '.join(repr(x) for x in untested)} has no test documents (the test split of "
                "the run's data is empty)")
    if not single:
        return None
    which = "; ".join(f"'{lang}': {len(v)} class{'es' if len(v) != 1 else ''}" for lang, v in single.items())
    return (f"not computed: a language's training documents must carry at least two labels ({which}; the labels "
            "are those of the run's data file)")


def published_protocol_note(corpus: Corpus) -> str | None:
    """Why "classification_published" is not computed for `corpus`, or None when it is affordable
    (no language above PUBLISHED_PROTOCOL_MAX_DOCS training documents)."""
    big = {lc.lang: lc.num_train for lc in corpus.languages if lc.num_train > PUBLISHED_PROTOCOL_MAX_DOCS}
    if not big:
        return None
    sizes = ", ".join(f"{lang} {n:,}" for lang, n in big.items())
    return (f"not computed: its RBF SVC grows with the square of the training documents ({sizes}; "
            f"at most {PUBLISHED_PROTOCOL_MAX_DOCS:,} a language)")


def _classify_corpus(corpus: Corpus, train_x: dict[str, np.ndarray], test_x: dict[str, np.ndarray],
                     classifier: str) -> dict[str, float]:
    """`classification` of the corpus's labelled languages on the given features."""
    langs = corpus.langs
    return classification(
        {x: train_x[x] for x in langs},
        {x: corpus.lang(x).train_labels for x in langs},  # type: ignore[misc]
        {x: test_x[x] for x in langs},
        {x: corpus.lang(x).test_labels for x in langs},  # type: ignore[misc]
        classifier=classifier,
    )


# --------------------------------------------------------------------------------------------
# All metrics
# --------------------------------------------------------------------------------------------


def evaluate(
    corpus: Corpus,
    train_theta: dict[str, np.ndarray],
    test_theta: dict[str, np.ndarray],
    beta: dict[str, np.ndarray],
    ref: ReferenceCorpus | None = None,
    n: int = TOP_WORDS,
    encoder_means: Callable[[], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] | None = None,
) -> dict[str, Any]:
    """Every metric of a trained model, as the content of metrics.json (JSON-serialisable).

    Keys: "TU", "TU_per_language", "CNPMI", "TQ", "classification" (None without labels or test
    theta), "top_words". CNPMI and TQ are None, with "CNPMI_note" saying why, unless `ref` aligns
    two of the corpus languages; CNPMI is never estimated from anything else. With a reference,
    "CNPMI_published" and "TQ_published" are the same under the public code's marginals (token
    counts, BobXWu/CNPMI), the convention of the published CNPMI (see `cnpmi`).

    Given `encoder_means` too (returning the encoders' eval-mode means, pre-softmax, of the training
    and test documents: a full encoder pass, so it is called only when used), "classification_published"
    is the same accuracies under the public code's protocol (`classifier="reference"`), the one the
    published tables were measured with: a run is read against a published row there. It is None,
    with "classification_published_note" saying why, above PUBLISHED_PROTOCOL_MAX_DOCS training
    documents in a language.
    """
    langs = corpus.langs
    beta_n = {normalize_lang(k): v for k, v in beta.items()}
    topics: dict[str, list[list[str]]] = {}
    for lang in langs:
        if lang not in beta_n:
            raise XtmError(f"evaluate: no beta for language '{lang}'")
        topics[lang] = top_words(beta_n[lang], corpus.lang(lang).vocab, n)
    ks = {len(t) for t in topics.values()}
    if len(ks) != 1:
        raise XtmError(f"evaluate: languages have different numbers of topics: {ks}")

    metrics: dict[str, Any] = {}
    metrics.update(crosslingual_tu(topics))

    value: float | None = None
    metrics["CNPMI_published"] = metrics["TQ_published"] = None  # (null, as CNPMI and TQ, when not computed)
    if ref is None:
        metrics["CNPMI_note"] = "no reference corpus was given, so CNPMI was not computed"
    else:
        pairs = [(x, y) for x, y in itertools.combinations(langs, 2) if ref.covers(x, y)]
        if not pairs:
            metrics["CNPMI_note"] = (f"the reference corpus aligns {'-'.join(ref.langs)}, which does not "
                                     f"cover this corpus's languages ({', '.join(langs)}); CNPMI was not "
                                     "computed")
        else:
            x, y = pairs[0]
            value = cnpmi(topics[x], topics[y], ref, x, y, n=n)
            # The public code's marginals (BobXWu/CNPMI: token counts), which the published CNPMI used: about
            # 10% under the document-frequency value on Rakuten/Kyoto. A published row is read against this one.
            published = cnpmi(topics[x], topics[y], ref, x, y, n=n, marginals="tokens")
            if not (math.isfinite(value) and math.isfinite(published)):  # never report a non-number as a score
                raise XtmError(f"CNPMI came out as {value} / {published}")
            metrics["CNPMI_pair"] = f"{x}-{y}"
            metrics["CNPMI_reference"] = {"source": ref.source, "documents": ref.num_docs,
                                          "max_tokens": ref.max_tokens, "marginals": "documents",
                                          "marginals_published": "tokens"}
            metrics["CNPMI_published"] = published
            metrics["TQ_published"] = topic_quality(published, metrics["TU"])
            if len(langs) > 2:
                metrics["CNPMI_note"] = f"CNPMI covers only the {x}-{y} pair the reference corpus aligns"
    metrics["CNPMI"] = value
    metrics["TQ"] = topic_quality(value, metrics["TU"]) if value is not None else None

    single = unclassifiable_note(corpus) if has_labels(corpus) else None
    if single is not None:  # a trained run is still evaluated and saved: only this metric is left out
        metrics["classification"] = metrics["classification_published"] = None
        metrics["classification_note"] = single
    elif has_labels(corpus) and all(x in train_theta and x in test_theta for x in langs):
        metrics["classification"] = _classify_corpus(corpus, train_theta, test_theta, "linear")
        note = published_protocol_note(corpus)
        if note is not None:
            metrics["classification_published"] = None
            metrics["classification_published_note"] = note
        elif encoder_means is not None:
            metrics["classification_published"] = _classify_corpus(corpus, *encoder_means(), "reference")
    else:
        metrics["classification"] = None
    metrics["top_words"] = topics
    return metrics

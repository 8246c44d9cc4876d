"""Load a multilingual corpus from a benchmark directory or from JSONL documents.

Two sources, detected from the path:
- a benchmark directory in the public InfoCTM layout (`train_bow_matrix_<L>.npz`, `vocab_<L>`,
  ...): read as is, already preprocessed;
- a JSONL file, or a directory of `*.jsonl` files: one document per line, tokenized, filtered
  and turned into sparse bags of words here.

Bags of words are built as CSR straight from token ids; nothing is ever densified.
"""

from __future__ import annotations

import sys
import warnings
from array import array
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.config import PREPROCESSING, Preprocessing
from xtm.corpus import Corpus, LanguageCorpus
from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.runtime.langid import detect_language
from xtm.runtime.records import decode_json_line
from xtm.runtime.tokenize import default_tokenizer_spec, make_tokenizer
from xtm.trainer.data.dictionary import build_links, read_dictionary
from xtm.trainer.data.stopwords import stopwords
from xtm.vocabulary import read_vocabulary

__all__ = ["HOLDOUT_FRACTION", "load_corpus"]

# Share of each language's documents held out as test set when every document is labeled but
# none says which split it belongs to: without a test set classification cannot be evaluated.
HOLDOUT_FRACTION = 0.2
# Show a progress bar from this input size on (smaller inputs load in about a second).
_PROGRESS_MIN_BYTES = 2_000_000
# Without `langs`, a language that only language detection produced and that holds less than
# this share of the documents is taken as misdetection (short texts read as Sotho, Latin, ...)
# and its documents are dropped, counted, with a warning.
_RARE_DETECTED_SHARE = 0.01
_BOW_PREFIX = "train_bow_matrix_"


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
    want = _normalize_langs(langs)
    if p.is_dir():
        if _is_benchmark_dir(p):
            corpus = _load_benchmark(p, want)
        else:
            files = sorted(f for f in p.glob("*.jsonl") if f.is_file())
            if not files:
                raise XtmError(f"not a corpus directory: it has neither benchmark files "
                               f"({_BOW_PREFIX}<lang>.npz, vocab_<lang>) nor *.jsonl files", path=p)
            corpus = _load_jsonl(files, p, want, vocab_size=prep.vocab_size, min_df=prep.min_df,
                                 max_df=prep.max_df, min_doc_tokens=prep.min_doc_tokens, seed=seed, progress=progress)
    else:
        corpus = _load_jsonl([p], p, want, vocab_size=prep.vocab_size, min_df=prep.min_df, max_df=prep.max_df,
                             min_doc_tokens=prep.min_doc_tokens, seed=seed, progress=progress)
    if dict_path is not None:
        _attach_links(corpus, Path(dict_path))
    return corpus


def _normalize_langs(langs: Sequence[str] | None) -> list[str] | None:
    if langs is None:
        return None
    if isinstance(langs, str):
        langs = [x for x in langs.replace(",", " ").split() if x]
    out: list[str] = []
    for code in langs:
        iso = normalize_lang(code)
        if iso in out:
            raise XtmError(f"language '{iso}' is listed twice in langs", field="langs")
        out.append(iso)
    if not out:
        raise XtmError("langs is empty", field="langs")
    return out


def _attach_links(corpus: Corpus, dict_path: Path) -> None:
    """Link every pair of languages the dictionary covers; error if it covers none."""
    pairs = read_dictionary(dict_path)
    stats_all: dict[str, Any] = {}
    for a, b in combinations(corpus.languages, 2):
        try:
            m, stats = build_links(pairs, a.vocab, b.vocab, names=(a.lang, b.lang))
        except XtmError:
            continue  # this pair of languages is not the dictionary's; others may be
        corpus.links[(a.lang, b.lang)] = m
        stats_all[f"{a.lang}-{b.lang}"] = stats
    if not stats_all:
        raise XtmError(f"the dictionary matches none of the vocabularies "
                       f"({', '.join(corpus.langs)}): it is probably for other languages", path=dict_path)
    corpus.info["dict"] = str(dict_path)
    corpus.info["links"] = stats_all


# --------------------------------------------------------------------------- benchmark layout


def _is_benchmark_dir(d: Path) -> bool:
    return any(d.glob(f"{_BOW_PREFIX}*.npz")) or any(d.glob("test_bow_matrix_*.npz"))


def _benchmark_langs(d: Path) -> dict[str, str]:
    """ISO code -> file suffix, for every language any of the core files mentions.

    Looking at all three kinds of file means a language with one file missing is still found,
    and the error names the missing file rather than reporting one language too few.
    """
    suffixes: dict[str, Path] = {}
    for pattern, prefix, ext in ((f"{_BOW_PREFIX}*.npz", _BOW_PREFIX, ".npz"),
                                 ("test_bow_matrix_*.npz", "test_bow_matrix_", ".npz"),
                                 ("vocab_*", "vocab_", "")):
        for f in sorted(d.glob(pattern)):
            suffix = f.name[len(prefix):len(f.name) - len(ext)]
            if suffix and "." not in suffix:  # vocab_en.txt and the like are not the layout's
                suffixes.setdefault(suffix, f)
    found: dict[str, str] = {}
    for suffix, f in sorted(suffixes.items()):
        try:
            iso = normalize_lang(suffix)
        except XtmError as e:
            raise XtmError(f"cannot tell the language of this file: {e.reason}", path=f) from None
        if iso in found:
            raise XtmError(f"two sets of files for language '{iso}': suffixes '{found[iso]}' and "
                           f"'{suffix}'", path=d)
        found[iso] = suffix
    return found


def _require(f: Path) -> Path:
    if not f.is_file():
        raise XtmError("required file is missing", path=f)
    return f


def _read_sparse(f: Path, *, cols: int | None = None, rows: int | None = None) -> sp.csr_matrix:
    try:
        m = sp.load_npz(f)  # allow_pickle stays False inside load_npz
    except Exception as e:  # a truncated zip, wrong arrays, a dense npz: all are bad input here
        raise XtmError(f"not a scipy sparse .npz matrix ({type(e).__name__}: {e})", path=f) from None
    m = sp.csr_matrix(m, dtype=np.float32)
    if cols is not None and m.shape[1] != cols:
        raise XtmError(f"matrix has {m.shape[1]} columns but the vocabulary has {cols} words", path=f)
    if rows is not None and m.shape[0] != rows:
        raise XtmError(f"matrix has {m.shape[0]} rows but the vocabulary has {rows} words", path=f)
    return m


def _read_word_vectors(f: Path, vocab_size: int) -> np.ndarray:
    try:
        with np.load(f, allow_pickle=False) as z:
            is_sparse = "format" in z.files and "indptr" in z.files
            dense = None if is_sparse else np.asarray(z[z.files[0]])
    except Exception as e:
        raise XtmError(f"cannot read word vectors ({type(e).__name__}: {e})", path=f) from None
    if is_sparse:
        vec = _read_sparse(f, rows=vocab_size).toarray()  # V x d is small (5000 x 300 = 6 MB)
    else:
        vec = dense
        if vec is None or vec.ndim != 2 or vec.shape[0] != vocab_size:
            shape = None if vec is None else vec.shape
            raise XtmError(f"word vectors must be a (vocab={vocab_size}) x dim matrix, got shape {shape}",
                           path=f)
    return np.ascontiguousarray(vec, dtype=np.float32)


def _read_labels(f: Path, n_rows: int) -> np.ndarray | None:
    if not f.is_file():
        return None
    lines = f.read_text(encoding="utf-8").split()
    try:
        labels = np.array(lines, dtype=np.int64)
    except ValueError:
        bad = next(i for i, x in enumerate(lines) if not x.lstrip("-").isdigit())
        raise XtmError(f"label {lines[bad]!r} is not an integer", path=f, line=bad + 1) from None
    if len(labels) != n_rows:
        raise XtmError(f"{len(labels)} labels but the bag-of-words matrix has {n_rows} documents", path=f)
    return labels


def _read_texts(f: Path, n_rows: int) -> list[str] | None:
    """The pre-tokenized documents of a benchmark split, one a line (optional file)."""
    if not f.is_file():
        return None
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise XtmError(f"cannot read document texts ({e})", path=f) from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n_rows:
        raise XtmError(f"{len(lines)} lines but the bag-of-words matrix has {n_rows} documents", path=f)
    return [x.rstrip("\r") for x in lines]


def _load_benchmark(d: Path, want: list[str] | None) -> Corpus:
    found = _benchmark_langs(d)
    if want is None:
        # English first when present, the order of the published tables (EN-ZH, EN-JA).
        order = sorted(found, key=lambda x: (x != "en", x))
    else:
        missing = [x for x in want if x not in found]
        if missing:
            raise XtmError(f"language(s) {', '.join(missing)} not in this benchmark directory "
                           f"(it has {', '.join(found)})", path=d, field="langs")
        order = want
    if len(order) < 2:
        raise XtmError(f"a cross-lingual corpus needs at least two languages, found {', '.join(order)}",
                       path=d)
    languages: list[LanguageCorpus] = []
    for iso in order:
        s = found[iso]
        vocab = read_vocabulary(_require(d / f"vocab_{s}"))
        v = len(vocab)
        train = _read_sparse(_require(d / f"{_BOW_PREFIX}{s}.npz"), cols=v)
        test = _read_sparse(_require(d / f"test_bow_matrix_{s}.npz"), cols=v)
        wv_path = d / f"word2vec_{s}.npz"
        languages.append(LanguageCorpus(
            lang=iso,
            vocab=vocab,
            train_bow=train,
            test_bow=test,
            tokenizer=default_tokenizer_spec(iso),
            train_labels=_read_labels(d / f"train_labels_{s}.txt", train.shape[0]),
            test_labels=_read_labels(d / f"test_labels_{s}.txt", test.shape[0]),
            word_vectors=_read_word_vectors(wv_path, v) if wv_path.is_file() else None,
            train_texts=_read_texts(d / f"train_texts_{s}.txt", train.shape[0]),
            test_texts=_read_texts(d / f"test_texts_{s}.txt", test.shape[0]),
        ))
    return Corpus(languages=languages, name=d.resolve().name,
                  info={"source": str(d), "format": "benchmark",
                        "file_suffixes": {iso: found[iso] for iso in order}})


# --------------------------------------------------------------------------- JSONL


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


_SPLITS = ("train", "test")


def _iter_lines(files: list[Path], progress: bool) -> Iterator[tuple[Path, int, bytes]]:
    total = 0
    for f in files:
        try:
            total += f.stat().st_size
        except OSError as e:
            raise XtmError(f"cannot read: {e.strerror or e}", path=f) from None
    bar = None
    if progress and total >= _PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="reading documents", file=sys.stderr)
    try:
        for f in files:
            try:
                fh = open(f, "rb")
            except OSError as e:
                raise XtmError(f"cannot read: {e.strerror or e}", path=f) from None
            with fh:
                for lineno, raw in enumerate(fh, start=1):
                    if bar is not None:
                        bar.update(len(raw))
                    yield f, lineno, raw
    finally:
        if bar is not None:
            bar.close()


def _doc_id(obj: dict[str, Any], f: Path, lineno: int, multi: bool) -> str:
    v = obj.get("id")
    if v is None:
        return f"{f.name}:{lineno}" if multi else str(lineno)
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise XtmError(f"must be a string or an integer, got {type(v).__name__}", path=f, line=lineno,
                       field="id")
    return str(v)


def _label(obj: dict[str, Any], f: Path, lineno: int) -> Any:
    v = obj.get("label")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise XtmError(f"must be an integer or a string, got {type(v).__name__}", path=f, line=lineno,
                       field="label")
    return v


def _split(obj: dict[str, Any], f: Path, lineno: int) -> str | None:
    v = obj.get("split")
    if v is None:
        return None
    if not isinstance(v, str) or v.strip().lower() not in _SPLITS:
        raise XtmError(f"must be \"train\" or \"test\", got {v!r}", path=f, line=lineno, field="split")
    return v.strip().lower()


def _check_preprocessing(vocab_size: int, min_df: int, max_df: float, min_doc_tokens: int) -> None:
    if not isinstance(vocab_size, int) or vocab_size < 1:
        raise XtmError(f"vocab_size must be a positive integer, got {vocab_size!r}", field="vocab_size")
    if not isinstance(min_df, int) or min_df < 1:
        raise XtmError(f"min_df must be an integer >= 1, got {min_df!r}", field="min_df")
    if not 0.0 < float(max_df) <= 1.0:
        raise XtmError(f"max_df must be a share of documents in (0, 1], got {max_df!r}", field="max_df")
    if not isinstance(min_doc_tokens, int) or min_doc_tokens < 1:
        raise XtmError(f"min_doc_tokens must be an integer >= 1, got {min_doc_tokens!r}",
                       field="min_doc_tokens")


@dataclass
class _Doc:
    """One usable document as read: its language, fields and token counts (stopwords removed)."""

    lang: str
    doc_id: str
    text: str
    label: Any
    split: str | None
    tokens: Counter[str]
    explicit: bool  # its `lang` field named the language (else detected)


@dataclass
class _ReadStats:
    """What reading dropped or skipped; `dropped_by_lang` has every language met, in order met."""

    dropped: Counter[str] = field(default_factory=Counter)
    dropped_by_lang: dict[str, Counter[str]] = field(default_factory=dict)
    skipped_lang: Counter[str] = field(default_factory=Counter)
    detected: int = 0


def _read_documents(files: list[Path], want: list[str] | None, progress: bool,
                    stats: _ReadStats) -> Iterator[_Doc]:
    """Parse, validate and tokenize JSONL documents one at a time.

    The one reader of JSONL corpora: the in-memory loader and the out-of-core preprocessor
    (xtm.trainer.data.sharding) both consume it, so they see the same documents and tokens. A bad
    line stops reading with an XtmError naming its file and line, whatever went wrong with it.
    """
    reader = _DocumentReader(want, stats, multi=len(files) > 1)
    for f, lineno, raw in _iter_lines(files, progress):
        try:
            doc = reader.parse(f, lineno, raw)
        except (XtmError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever one record does (a tokenizer's error included) is its own
            raise XtmError(f"cannot read this document ({type(e).__name__}: {e})", path=f, line=lineno) from None
        if doc is not None:
            yield doc


def _json_object(raw: bytes, f: Path, lineno: int) -> dict[str, Any]:
    """One JSONL line as an object; whatever makes it unreadable (invalid UTF-8 or JSON, nesting too
    deep, numbers Python refuses) is an XtmError naming the line (xtm.runtime.records.decode_json_line)."""
    obj, reason = decode_json_line(raw)
    if reason is not None:
        raise XtmError(reason, path=f, line=lineno)
    if not isinstance(obj, dict):
        raise XtmError(f"expected a JSON object per line, got {type(obj).__name__}", path=f, line=lineno)
    return obj


def _check_unicode(obj: dict[str, Any], f: Path, lineno: int) -> None:
    """A lone surrogate (JSON "\\ud800") is not Unicode text: it would fail when written or embedded later."""
    for key in ("id", "text", "lang", "label", "split"):
        v = obj.get(key)
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                raise XtmError(f"not valid Unicode text: a lone surrogate ({v[e.start]!r}) at character {e.start}",
                               path=f, line=lineno, field=key) from None


class _DocumentReader:
    """The per-line work of `_read_documents`: one raw line -> a usable document, or None (counted)."""

    def __init__(self, want: list[str] | None, stats: _ReadStats, multi: bool) -> None:
        self.want, self.stats, self.multi = want, stats, multi
        self.tokenizers: dict[str, tuple[Callable[[str], list[str]], frozenset[str]]] = {}

    def parse(self, f: Path, lineno: int, raw: bytes) -> _Doc | None:
        stats, want = self.stats, self.want
        dropped, dropped_by_lang = stats.dropped, stats.dropped_by_lang
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark (Windows editors) is not part of the JSON
        if not raw.strip():
            return None
        obj = _json_object(raw, f, lineno)
        if "text" not in obj:
            raise XtmError("missing: every document needs its text", path=f, line=lineno, field="text")
        text = obj["text"]
        if not isinstance(text, str):
            raise XtmError(f"must be a string, got {type(text).__name__}", path=f, line=lineno, field="text")
        _check_unicode(obj, f, lineno)
        raw_lang = obj.get("lang")
        doc_id = _doc_id(obj, f, lineno, self.multi)
        label = _label(obj, f, lineno)
        split = _split(obj, f, lineno)
        if raw_lang is not None:
            if not isinstance(raw_lang, str):
                raise XtmError(f"must be a language code string, got {type(raw_lang).__name__}",
                               path=f, line=lineno, field="lang")
            try:
                lang = normalize_lang(raw_lang)
            except XtmError as e:
                raise XtmError(e.reason, path=f, line=lineno, field="lang") from None
        elif not text.strip():
            dropped["empty_text"] += 1  # no language to detect; counted without one
            return None
        else:
            lang = detect_language(text, want)
            stats.detected += 1
        if want is not None and lang not in want:
            stats.skipped_lang[lang] += 1
            return None
        tok = self.tokenizers.get(lang)
        if tok is None:
            tok = self.tokenizers[lang] = (make_tokenizer(default_tokenizer_spec(lang)), stopwords(lang))
            dropped_by_lang[lang] = Counter()
        if not text.strip():
            dropped["empty_text"] += 1
            dropped_by_lang[lang]["empty_text"] += 1
            return None
        tokenize, stop = tok
        # Pure numbers make poor topic words (the benchmark vocabularies have none).
        tokens = Counter(t for t in tokenize(text) if t not in stop and not t.isdigit())
        if not tokens:
            dropped["no_tokens"] += 1
            dropped_by_lang[lang]["no_tokens"] += 1
            return None
        return _Doc(lang, doc_id, text, label, split, tokens, raw_lang is not None)


def _language_order(n_docs: dict[str, int], explicit: dict[str, int], want: list[str] | None, source: Path,
                    stats: _ReadStats) -> list[str]:
    """Languages in output order; a requested language without documents is an error."""
    dropped, dropped_by_lang = stats.dropped, stats.dropped_by_lang
    if want is not None:
        empty = [x for x in want if n_docs.get(x, 0) == 0]
        if empty:
            raise XtmError(f"no documents left for requested language(s) {', '.join(empty)}"
                           + (f" ({sum(dropped.values())} dropped as empty)" if dropped else ""),
                           path=source, field="langs")
        order = list(want)
    else:
        # Largest first (ties by code): a stable default; English first when present, the order
        # of the published tables.
        order = sorted(n_docs, key=lambda x: (x != "en", -n_docs[x], x))
        total = sum(n_docs[x] for x in order)
        rare = [x for x in order if explicit.get(x, 0) == 0 and 0 < n_docs[x] < _RARE_DETECTED_SHARE * total]
        if rare:
            k = sum(n_docs[x] for x in rare)
            dropped["rare_detected_language"] += k
            for x in rare:
                dropped_by_lang[x]["rare_detected_language"] += n_docs[x]
                order.remove(x)
            warnings.warn(f"{source}: dropped {k} document(s) detected as "
                          f"{', '.join(f'{x} ({n_docs[x]})' for x in rare)}: fewer than "
                          f"{_RARE_DETECTED_SHARE:.0%} of the documents each, probably misdetected; "
                          f"give documents a 'lang' field or pass langs", stacklevel=4)
        for x in [x for x in order if n_docs[x] == 0]:
            warnings.warn(f"{source}: every '{x}' document was dropped as empty; language ignored",
                          stacklevel=4)
            order.remove(x)
    if len(order) < 2:
        found = ", ".join(f"{x} ({n_docs.get(x, 0)} docs)" for x in order) or "none"
        raise XtmError(f"a cross-lingual corpus needs documents in at least two languages; found {found}",
                       path=source)
    return order


def _label_names(n_total: int, n_labeled: int, values: set[Any], source: Path) -> list[Any] | None:
    """Labels are all or nothing, mapped to 0..C-1 the same way in every language."""
    if n_labeled == n_total:
        return sorted(values, key=lambda v: (isinstance(v, str), v))
    if n_labeled:
        warnings.warn(f"{source}: only {n_labeled} of {n_total} documents have a label; "
                      f"labels are ignored", stacklevel=4)
    return None


def _split_mode(has_split: bool, label_names: list[Any] | None) -> str:
    return "file" if has_split else ("holdout" if label_names is not None else "none")


def _test_mask(split_mode: str, n: int, file_test: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Which of a language's n documents are test documents; draws from `rng` in holdout mode only."""
    if split_mode == "file":
        assert file_test is not None
        return file_test
    is_test = np.zeros(n, dtype=bool)
    if split_mode == "holdout":
        # At least one test document per language once there are two to split.
        n_test = max(1, int(round(HOLDOUT_FRACTION * n))) if n >= 2 else 0
        is_test[rng.permutation(n)[:n_test]] = True
    return is_test


def _corpus_info(source: Path, files: list[Path], stats: _ReadStats, label_names: list[Any] | None,
                 split_mode: str, lang_info: dict[str, Any], *, vocab_size: int, min_df: int, max_df: float,
                 min_doc_tokens: int, seed: int) -> dict[str, Any]:
    """corpus.info for JSONL input; warns about what was dropped or skipped."""
    dropped, skipped_lang = stats.dropped, stats.skipped_lang
    # Misdetected languages had their own warning.
    empty = {k: v for k, v in dropped.items() if k != "rare_detected_language"}
    if empty:
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(empty.items()))
        warnings.warn(f"{source}: dropped {sum(empty.values())} document(s) with no usable words "
                      f"({detail})", stacklevel=4)
    if skipped_lang:
        warnings.warn(f"{source}: skipped {sum(skipped_lang.values())} document(s) in languages not "
                      f"requested ({', '.join(f'{k}: {v}' for k, v in sorted(skipped_lang.items()))})",
                      stacklevel=4)
    return {
        "source": str(source),
        "format": "jsonl",
        "files": [str(f) for f in files],
        "dropped": {**dict(dropped), "total": sum(dropped.values())},
        "skipped_other_languages": dict(skipped_lang),
        "detected_lang": stats.detected,
        "label_names": label_names,
        "split": split_mode,
        "languages": lang_info,
        "preprocessing": {"vocab_size": vocab_size, "min_df": min_df, "max_df": float(max_df),
                          "min_doc_tokens": min_doc_tokens, "seed": seed, "stopwords": "built-in",
                          "holdout_fraction": HOLDOUT_FRACTION if split_mode == "holdout" else None},
    }


def corpus_name(source: Path) -> str:
    return source.stem if source.is_file() else source.resolve().name


def _load_jsonl(files: list[Path], source: Path, want: list[str] | None, *, vocab_size: int, min_df: int,
                max_df: float, min_doc_tokens: int, seed: int, progress: bool) -> Corpus:
    _check_preprocessing(vocab_size, min_df, max_df, min_doc_tokens)
    stats = _ReadStats()
    docs: dict[str, _LangDocs] = {}
    for doc in _read_documents(files, want, progress, stats):
        ld = docs.get(doc.lang)
        if ld is None:
            ld = docs[doc.lang] = _LangDocs()
        index = ld.token_index
        for tok, c in doc.tokens.items():
            tid = index.get(tok)
            if tid is None:
                tid = index[tok] = len(index)
            ld.ids.append(tid)
            ld.counts.append(c)
        ld.offsets.append(len(ld.ids))
        ld.doc_ids.append(doc.doc_id)
        ld.texts.append(doc.text)
        ld.labels.append(doc.label)
        ld.splits.append(doc.split)
        ld.explicit += doc.explicit
    for lang in stats.dropped_by_lang:  # languages met whose every document was dropped
        docs.setdefault(lang, _LangDocs())

    dropped, dropped_by_lang = stats.dropped, stats.dropped_by_lang
    order = _language_order({x: d.n for x, d in docs.items()}, {x: d.explicit for x, d in docs.items()},
                            want, source, stats)
    all_labels = [lab for x in order for lab in docs[x].labels]
    label_names = _label_names(len(all_labels), sum(lab is not None for lab in all_labels),
                               {lab for lab in all_labels if lab is not None}, source)
    label_to_int = {v: i for i, v in enumerate(label_names)} if label_names is not None else None
    split_mode = _split_mode(any(s is not None for x in order for s in docs[x].splits), label_names)
    rng = np.random.default_rng(seed)

    languages: list[LanguageCorpus] = []
    lang_info: dict[str, Any] = {}
    for x in order:
        ld = docs[x]
        n = ld.n
        is_test = _test_mask(split_mode, n, np.array([s == "test" for s in ld.splits], dtype=bool)
                             if split_mode == "file" else None, rng)
        ids = np.frombuffer(ld.ids, dtype=np.int32) if len(ld.ids) else np.zeros(0, np.int32)
        cnts = np.frombuffer(ld.counts, dtype=np.int32) if len(ld.counts) else np.zeros(0, np.int32)
        offsets = np.asarray(ld.offsets, dtype=np.int64)
        doc_of = np.repeat(np.arange(n), np.diff(offsets))

        vocab, col_of, fallback = _select_vocab(ld.token_index, ids, doc_of, ~is_test, vocab_size=vocab_size,
                                                min_df=min_df, max_df=float(max_df))
        if fallback:
            warnings.warn(f"{source}: '{x}': no word passes min_df={min_df}, max_df={max_df} over "
                          f"{int((~is_test).sum())} training documents; {fallback}", stacklevel=3)
        cols = col_of[ids]
        keep = cols >= 0
        bow_all = sp.csr_matrix((cnts[keep].astype(np.float32), (doc_of[keep], cols[keep])),
                                shape=(n, len(vocab)), dtype=np.float32)
        too_short = np.asarray(bow_all.sum(axis=1)).ravel() < min_doc_tokens
        if too_short.any():
            k = int(too_short.sum())
            dropped["too_few_vocab_tokens"] += k
            dropped_by_lang[x]["too_few_vocab_tokens"] += k

        def part(mask: np.ndarray, bow: sp.csr_matrix = bow_all, ld: _LangDocs = ld) -> tuple[
                sp.csr_matrix, list[str], list[str], np.ndarray | None]:
            rows = np.flatnonzero(mask).tolist()
            labels = None
            if label_to_int is not None:
                labels = np.array([label_to_int[ld.labels[i]] for i in rows], dtype=np.int64)
            return bow[rows], [ld.doc_ids[i] for i in rows], [ld.texts[i] for i in rows], labels

        train_bow, train_ids, train_texts, train_labels = part(~is_test & ~too_short)
        if train_bow.shape[0] == 0:
            raise XtmError(f"no training documents left for language '{x}'", path=source)
        test_mask = is_test & ~too_short
        test_bow: sp.csr_matrix | None = None
        test_ids: list[str] | None = None
        test_texts: list[str] | None = None
        test_labels: np.ndarray | None = None
        if test_mask.any():
            test_bow, test_ids, test_texts, test_labels = part(test_mask)
        languages.append(LanguageCorpus(
            lang=x, vocab=vocab, train_bow=train_bow, test_bow=test_bow,
            tokenizer=default_tokenizer_spec(x), train_labels=train_labels, test_labels=test_labels,
            train_ids=train_ids, test_ids=test_ids, train_texts=train_texts, test_texts=test_texts,
        ))
        lang_info[x] = {"train_docs": int(train_bow.shape[0]),
                        "test_docs": 0 if test_bow is None else int(test_bow.shape[0]),
                        "vocab_size": len(vocab), "distinct_tokens": len(ld.token_index),
                        "dropped": dict(dropped_by_lang.get(x, {}))}
        docs[x] = _LangDocs()  # free the token arrays early

    info = _corpus_info(source, files, stats, label_names, split_mode, lang_info, vocab_size=vocab_size,
                        min_df=min_df, max_df=max_df, min_doc_tokens=min_doc_tokens, seed=seed)
    return Corpus(languages=languages, name=corpus_name(source), info=info)


def _select_vocab(token_index: dict[str, int], ids: np.ndarray, doc_of: np.ndarray, train_rows: np.ndarray,
                  *, vocab_size: int, min_df: int, max_df: float) -> tuple[list[str], np.ndarray, str]:
    """Vocabulary (sorted words) from training documents and token id -> column (-1: not kept).

    Returns a non-empty message when the filters left nothing and were relaxed (tiny corpora).
    """
    in_train = train_rows[doc_of] if len(doc_of) else np.zeros(0, dtype=bool)
    # Each (doc, token) appears once in `ids`, so counting ids gives document frequency.
    df = np.bincount(ids[in_train], minlength=len(token_index))
    return _vocab_from_df(token_index, df, int(train_rows.sum()), vocab_size=vocab_size, min_df=min_df,
                          max_df=max_df)


def _vocab_from_df(token_index: dict[str, int], df: np.ndarray, n_train: int, *, vocab_size: int, min_df: int,
                   max_df: float) -> tuple[list[str], np.ndarray, str]:
    """The vocabulary rule, from document frequencies over `n_train` training documents.

    Shared by the in-memory loader and the out-of-core preprocessor, which counts `df` while
    streaming: the same corpus gives the same vocabulary either way.
    """
    n_tok = len(token_index)
    fallback = ""
    ok = (df >= min_df) & (df <= max_df * n_train)
    if not ok.any():
        ok = df >= min_df
        fallback = "ignoring max_df"
        if not ok.any():
            ok = df >= 1
            fallback = "keeping every word of the training documents"
    cand = np.flatnonzero(ok)
    words = np.empty(n_tok, dtype=object)
    for w, i in token_index.items():
        words[i] = w
    if len(cand) > vocab_size:
        # Highest document frequency first; ties broken by the word so the result is deterministic.
        order = sorted(cand.tolist(), key=lambda i: (-int(df[i]), words[i]))
        cand = np.asarray(order[:vocab_size])
    vocab = sorted(words[cand].tolist())
    col_of = np.full(n_tok, -1, dtype=np.int64)
    col_of[[token_index[w] for w in vocab]] = np.arange(len(vocab))
    return vocab, col_of, fallback

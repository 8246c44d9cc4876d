"""Benchmark directories in the public InfoCTM layout, read as they are (already preprocessed).

Per language, with the file suffix the benchmark uses (`cn` for Chinese in ECNews):
`vocab_<L>`, `train_bow_matrix_<L>.npz`, `test_bow_matrix_<L>.npz` (required), and optional
`train_labels_<L>.txt`, `test_labels_<L>.txt`, `word2vec_<L>.npz`, `train_texts_<L>.txt`,
`test_texts_<L>.txt`. Every file is checked against the others (columns = vocabulary size,
one label or text per document); a mismatch is an XtmError naming the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xtm.config import TOKEN_RULES
from xtm.corpus import Corpus, LanguageCorpus
from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.runtime.tokenize import default_tokenizer_spec
from xtm.trainer.data.corpus_rules import warn_user
from xtm.vocabulary import read_vocabulary

__all__ = ["BOW_PREFIX", "is_benchmark_dir", "load_benchmark"]

BOW_PREFIX = "train_bow_matrix_"  # the training matrices, whose presence marks a benchmark directory
_TEST_BOW_PREFIX = "test_bow_matrix_"


def is_benchmark_dir(d: Path) -> bool:
    """Whether `d` holds a benchmark's bag-of-words matrices (rather than JSONL documents)."""
    return any(d.glob(f"{BOW_PREFIX}*.npz")) or any(d.glob(f"{_TEST_BOW_PREFIX}*.npz"))


def load_benchmark(d: Path, want: list[str] | None, rules: int = TOKEN_RULES) -> Corpus:
    """The corpus of a benchmark directory; `want` selects and orders languages (None: all found,
    English first). Its bags of words are read as they are; `rules` (xtm.config.TOKEN_RULES) picks the tokenizer
    the run records for raw text."""
    found = _benchmark_langs(d)
    order = _language_order(d, found, want)
    languages = [_read_language(d, iso, found[iso], rules) for iso in order]
    _warn_missing_labels(d, languages, found)
    return Corpus(languages=languages, name=d.resolve().name,
                  info={"source": str(d), "format": "benchmark",
                        "file_suffixes": {iso: found[iso] for iso in order}})


def _warn_missing_labels(d: Path, languages: list[LanguageCorpus], found: dict[str, str]) -> None:
    """Classification needs every language's train and test labels: a label file missing (or misnamed) beside the
    others left it out with no word (JSONL input warns when some documents lack labels)."""
    missing = [f"{split}_labels_{found[lc.lang]}.txt" for lc in languages
               for split, labels in (("train", lc.train_labels), ("test", lc.test_labels)) if labels is None]
    if missing and len(missing) < 2 * len(languages):
        warn_user(f"{d}: no {', '.join(missing)} beside the other label files: classification needs every "
                  "language's train and test labels and is left out")


def _benchmark_langs(d: Path) -> dict[str, str]:
    """ISO code -> file suffix, for every language any of the core files mentions.

    Looking at all three kinds of file means a language with one file missing is still found,
    and the error names the missing file rather than reporting one language too few.
    """
    suffixes: dict[str, Path] = {}
    for pattern, prefix, ext in ((f"{BOW_PREFIX}*.npz", BOW_PREFIX, ".npz"),
                                 (f"{_TEST_BOW_PREFIX}*.npz", _TEST_BOW_PREFIX, ".npz"),
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


def _language_order(d: Path, found: dict[str, str], want: list[str] | None) -> list[str]:
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
    return order


def _read_language(d: Path, iso: str, s: str, rules: int) -> LanguageCorpus:
    """One language's files (suffix `s`), each checked against the vocabulary and the matrices."""
    vocab = read_vocabulary(_require(d / f"vocab_{s}"))
    v = len(vocab)
    train = _read_sparse(_require(d / f"{BOW_PREFIX}{s}.npz"), cols=v)
    test = _read_sparse(_require(d / f"{_TEST_BOW_PREFIX}{s}.npz"), cols=v)
    wv_path = d / f"word2vec_{s}.npz"
    return LanguageCorpus(
        lang=iso,
        vocab=vocab,
        train_bow=train,
        test_bow=test,
        tokenizer=default_tokenizer_spec(iso, rules),
        train_labels=_read_labels(d / f"train_labels_{s}.txt", train.shape[0]),
        test_labels=_read_labels(d / f"test_labels_{s}.txt", test.shape[0]),
        word_vectors=_read_word_vectors(wv_path, v) if wv_path.is_file() else None,
        train_texts=_read_texts(d / f"train_texts_{s}.txt", train.shape[0]),
        test_texts=_read_texts(d / f"test_texts_{s}.txt", test.shape[0]),
    )


# More documents a language than any benchmark matrix is read with (a bound on what a header may claim).
MAX_DOCUMENTS = 100_000_000


def _require(f: Path) -> Path:
    if not f.is_file():
        raise XtmError("required file is missing", path=f)
    return f


def _read_sparse(f: Path, *, cols: int | None = None, rows: int | None = None,
                 counts: bool = True) -> sp.csr_matrix:
    """A sparse .npz as float32 CSR: bag-of-words counts (`counts`: finite, non-negative), or word vectors."""
    try:
        m = sp.load_npz(f)  # allow_pickle stays False inside load_npz
    except Exception as e:  # a truncated zip, wrong arrays, a dense npz: all are bad input here
        raise XtmError(f"not a scipy sparse .npz matrix ({type(e).__name__}: {e})", path=f) from None
    # Checked before the conversion, which allocates per row: a matrix declaring 10**15 rows asked for PiB.
    if cols is not None and m.shape[1] != cols:
        raise XtmError(f"matrix has {m.shape[1]} columns but the vocabulary has {cols} words", path=f)
    if rows is not None and m.shape[0] != rows:
        raise XtmError(f"matrix has {m.shape[0]} rows but the vocabulary has {rows} words", path=f)
    if m.shape[0] > MAX_DOCUMENTS:
        raise XtmError(f"matrix declares {m.shape[0]:,} rows (documents), more than {MAX_DOCUMENTS:,}", path=f)
    if m.dtype.kind not in "biuf":
        raise XtmError(f"the matrix must hold real numbers, it holds {m.dtype}", path=f)
    # CSR, CSC, BSR: load_npz checks array lengths, not index values; an index past the columns segfaulted
    # training, a negative one corrupted the heap (the shard reader's check).
    if hasattr(m, "check_format"):
        try:
            m.check_format(full_check=True)
        except ValueError as e:
            raise XtmError(f"damaged sparse matrix: {e} (its index arrays do not describe a "
                           f"{m.shape[0]} x {m.shape[1]} matrix)", path=f) from None
    m = sp.csr_matrix(m, dtype=np.float32)
    if m.nnz and not (np.isfinite(m.data).all() and (m.data.min() >= 0 or not counts)):
        what = "word counts must be finite and non-negative" if counts else "word vectors must be finite"
        raise XtmError(f"{what} (the matrix holds NaN, infinite, too large or negative values)", path=f)
    return m


def _read_word_vectors(f: Path, vocab_size: int) -> np.ndarray:
    try:
        with np.load(f, allow_pickle=False) as z:
            is_sparse = "format" in z.files and "indptr" in z.files
            dense = None if is_sparse else np.asarray(z[z.files[0]])
    except Exception as e:
        raise XtmError(f"cannot read word vectors ({type(e).__name__}: {e})", path=f) from None
    if is_sparse:
        vec = _read_sparse(f, rows=vocab_size, counts=False).toarray()  # V x d is small (5000 x 300 = 6 MB)
    else:
        vec = dense
        if vec is None or vec.ndim != 2 or vec.shape[0] != vocab_size:
            shape = None if vec is None else vec.shape
            raise XtmError(f"word vectors must be a (vocab={vocab_size}) x dim matrix, got shape {shape}",
                           path=f)
        # As for a sparse file: strings were a traceback, NaN or complex vectors were trained on silently.
        if vec.dtype.kind not in "biuf":
            raise XtmError(f"word vectors must be real numbers, the array holds {vec.dtype}", path=f)
        with np.errstate(over="ignore"):  # a value past float32 becomes inf, refused just below
            vec = vec.astype(np.float32)
        if not np.isfinite(vec).all():
            raise XtmError("word vectors must be finite (the array holds NaN, infinite or too large values)", path=f)
    return np.ascontiguousarray(vec, dtype=np.float32)


def _read_labels(f: Path, n_rows: int) -> np.ndarray | None:
    if not f.is_file():
        return None
    # Each label with its line: an error named its place among the labels, a wrong line after blank lines.
    tokens = [(x, n) for n, line in enumerate(_read_lines(f, "labels"), start=1) for x in line.split()]
    # One label a line (document i's on line i): two on a line, with a line short elsewhere, kept the count and
    # shifted every label after it onto the next document, silently. (Line numbers only grow: neighbours tell.)
    first = next((b for (_, a), (_, b) in zip(tokens, tokens[1:], strict=False) if a == b), None)
    if first is not None:
        raise XtmError("more than one label on a line: a label file holds one label a line, document i's on "
                       "line i", path=f, line=first)
    try:
        labels = np.array([x for x, _ in tokens], dtype=np.int64)
    except (ValueError, OverflowError):
        (bad, lineno), reason = next(((x, n), r) for x, n in tokens if (r := _int64_problem(x)))
        raise XtmError(f"label {bad!r} {reason}", path=f, line=lineno) from None
    if len(labels) != n_rows:
        raise XtmError(f"{len(labels)} labels but the bag-of-words matrix has {n_rows} documents", path=f)
    return labels


def _read_lines(f: Path, what: str) -> list[str]:
    """The lines of a UTF-8 file, as Python's text mode reads them: a byte-order mark dropped, and lines ended by
    LF, CRLF or CR alone (the ends are not part of a line: a CRLF file's texts kept a "\r" each, a CR-only label
    file was one line)."""
    text = _read_utf8(f, what)
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _read_utf8(f: Path, what: str) -> str:
    try:
        data = f.read_bytes().removeprefix(b"\xef\xbb\xbf")  # a byte-order mark: not part of the first line
    except OSError as e:
        raise XtmError(f"cannot read {what}: {e.strerror or e}", path=f) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XtmError(f"{what} are not valid UTF-8 text (byte 0x{data[e.start]:02x})", path=f,
                       line=data.count(b"\n", 0, e.start) + 1) from None


def _int64_problem(x: str) -> str | None:
    """Why a label is not a 64-bit integer (None: it is one)."""
    try:
        np.array([x], dtype=np.int64)
    except ValueError:
        return "is not an integer"
    except OverflowError:
        return "is out of range for a 64-bit integer"
    return None


def _read_texts(f: Path, n_rows: int) -> list[str] | None:
    """The pre-tokenized documents of a benchmark split, one a line (optional file)."""
    if not f.is_file():
        return None
    lines = _read_lines(f, "document texts")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != n_rows:
        raise XtmError(f"{len(lines)} lines but the bag-of-words matrix has {n_rows} documents", path=f)
    return [x.rstrip("\r") for x in lines]

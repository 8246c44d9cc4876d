"""Reading JSONL corpora: one document per line, validated, its language found, tokenized.

`read_documents` is the one reader of JSONL documents: the in-memory loader
(xtm.trainer.data.loading) and the out-of-core preprocessor (xtm.trainer.data.sharding) both
consume it, so they see the same documents and the same tokens. A line is an object with `text`
and optional `lang` (detected when absent), `id`, `label` and `split` ("train" or "test"). A bad
line stops reading with an XtmError naming its file, line and field; a document left without
words is dropped and counted in `ReadStats`.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtm.config import TOKEN_RULES
from xtm.errors import XtmError
from xtm.field_names import OTHER_FIELD_NAMES, names_for
from xtm.languages import normalize_lang
from xtm.paths import is_hidden_name
from xtm.runtime import records
from xtm.runtime.langid import detect_language
from xtm.runtime.records import decode_json_line, drop_bom
from xtm.runtime.tokenize import default_tokenizer_spec, make_tokenizer
from xtm.trainer.data.stopwords import extra_stopwords, stopwords

__all__ = ["Document", "ReadStats", "check_jsonl_name", "check_unicode_text", "corpus_name", "input_files",
           "json_object", "jsonl_files", "read_documents"]

logger = logging.getLogger(__name__)

# Show a progress bar from this input size on (smaller inputs load in about a second).
_PROGRESS_MIN_BYTES = 2_000_000
_SPLITS = ("train", "test")


@dataclass
class Document:
    """One usable document as read: its language, fields and token counts (stopwords removed)."""

    lang: str
    doc_id: str
    text: str
    label: Any
    split: str | None
    tokens: Counter[str]
    explicit: bool  # its `lang` field named the language (else detected)


@dataclass
class ReadStats:
    """What reading dropped or skipped; `dropped_by_lang` has every language met, in order met.

    The corpus builders add their own drops (too few vocabulary words, misdetected languages), so
    `corpus.info` counts every document that did not make it into the corpus and why.
    """

    dropped: Counter[str] = field(default_factory=Counter)
    dropped_by_lang: dict[str, Counter[str]] = field(default_factory=dict)
    skipped_lang: Counter[str] = field(default_factory=Counter)
    detected: int = 0
    # "language -> lang": documents that lack a field xtm reads but carry a name other tools use for it.
    unread_fields: Counter[tuple[str, str]] = field(default_factory=Counter)  # (their name, xtm's field)

    def drop(self, reason: str, lang: str | None, k: int = 1) -> None:
        """Count `k` documents dropped for `reason` (per language when there is one)."""
        self.dropped[reason] += k
        if lang is not None:
            self.dropped_by_lang[lang][reason] += k


def input_files(path: Path, *, none_found: str) -> list[Path]:
    """The JSONL files a training corpus path names: a file, its name checked (check_jsonl_name), or the `*.jsonl`
    files of a directory (jsonl_files); `none_found` is the error for a directory without any. The in-memory
    loader and the out-of-core preprocessor both list their input here, so they read the same files."""
    if not path.is_dir():
        check_jsonl_name(path)
        return [path]
    files = jsonl_files(path)
    if not files:
        raise XtmError(none_found, path=path)
    return files


def jsonl_files(directory: Path) -> list[Path]:
    """The `*.jsonl` files of a corpus directory, in name order (their documents are read in this order). Hidden
    files are skipped, and counted in the log: a Jupyter `.docs-checkpoint.jsonl` doubled every document, a Mac's
    `._docs.jsonl` (binary) stopped training at an "invalid JSON" line of a file the user cannot see.

    Top level and `*.jsonl` only, unlike the Ray engine's inputs (xtm.runtime.ray.list_input_files: recursive,
    .ndjson/.json and Parquet too): a corpus's files and their order decide the documents' ids (`file:line`),
    the held-out split and the shards' fingerprint, so training reads only what the directory plainly holds (a
    run or shard directory kept inside it, or a Parquet copy of the same documents, are not read twice)."""
    found = sorted(f for f in directory.glob("*.jsonl") if f.is_file())
    hidden = [f.name for f in found if is_hidden_name(f.name)]
    if hidden:
        logger.info(f"skipped {len(hidden)} hidden file(s) in {directory}: {', '.join(hidden[:3])}"
                    f"{', ...' if len(hidden) > 3 else ''}")
    return [f for f in found if not is_hidden_name(f.name)]


# Formats xtm-infer reads and training does not, by the names input_format gives them.
_NOT_TRAINING_FORMATS = {"parquet": "Parquet", "csv": "CSV", "tsv": "TSV"}
_TRAINING_READS = "xtm-train reads JSONL documents (one JSON object a line) or a benchmark directory"


def check_jsonl_name(path: Path) -> None:
    """Refuse a JSONL input file whose name says another format: read as JSONL, a .jsonl.gz, .csv or .parquet file
    failed at its line 1 with "invalid UTF-8" or "invalid JSON". Formats are told apart as xtm-infer tells them
    (xtm.runtime.records.input_format); any other name is read as JSONL."""
    if path.name.lower().endswith(records.COMPRESSED_SUFFIXES):
        raise XtmError(f"compressed input is not read: decompress it first; {_TRAINING_READS}", path=path)
    fmt = _NOT_TRAINING_FORMATS.get(records.input_format(path.name))
    if fmt is not None:
        raise XtmError(f"{fmt} is not read for training: {_TRAINING_READS}; convert it to JSONL", path=path)


def corpus_name(source: Path) -> str:
    """A JSONL corpus's name: the file's stem, or the directory's name."""
    return source.stem if source.is_file() else source.resolve().name


def read_documents(files: list[Path], want: list[str] | None, progress: bool,
                   stats: ReadStats, rules: int = TOKEN_RULES, extra_stopwords: tuple[str, ...] = (),
                   user_words: tuple[str, ...] = ()) -> Iterator[Document]:
    """Parse, validate and tokenize JSONL documents one at a time, in file and line order.

    want: the languages to keep (None: all); documents in others are counted in `stats.skipped_lang`.
    rules: the token rules (xtm.config.TOKEN_RULES) that pick each language's tokenizer and stopwords.
    extra_stopwords: the user's words dropped besides each language's list (xtm-train --stopwords).
    user_words: words the segmenters keep whole (xtm-train --user-words; xtm.runtime.tokenize.taken_user_words).
    Whatever goes wrong with one line (a tokenizer's error included) is an XtmError naming it.
    """
    reader = _DocumentReader(want, stats, multi=len(files) > 1, rules=rules, extra=extra_stopwords,
                             user_words=user_words)
    for f, lineno, raw in _iter_lines(files, progress):
        try:
            doc = reader.parse(f, lineno, raw)
        except (XtmError, MemoryError):
            raise
        except Exception as e:  # noqa: BLE001 - whatever one record does (a tokenizer's error included) is its own
            raise XtmError(f"cannot read this document ({type(e).__name__}: {e})", path=f, line=lineno) from None
        if doc is not None:
            yield doc


def _iter_lines(files: list[Path], progress: bool) -> Iterator[tuple[Path, int, bytes]]:
    """(file, line number, raw line) for every line of `files`, with a progress bar for large inputs."""
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
            for lineno, raw in _file_lines(f):
                if bar is not None:
                    bar.update(len(raw))
                yield f, lineno, raw
    finally:
        if bar is not None:
            bar.close()


def _file_lines(f: Path) -> Iterator[tuple[int, bytes]]:
    try:
        fh = open(f, "rb")  # noqa: SIM115 - closed by the with below; open's own error is the user's
    except OSError as e:
        raise XtmError(f"cannot read: {e.strerror or e}", path=f) from None
    with fh:
        lineno = 0
        while True:
            # Bounded as xtm-infer's reader is: a file without newlines (/dev/zero, a binary) was read whole.
            raw = fh.readline(records.MAX_LINE_BYTES + 1)
            if not raw:
                return
            lineno += 1
            if len(raw) > records.MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise XtmError(f"line longer than {records.MAX_LINE_BYTES:,} bytes: not a JSONL document", path=f,
                               line=lineno)
            yield lineno, raw


# --------------------------------------------------------------------------- one line


def json_object(raw: bytes, f: Path, lineno: int) -> dict[str, Any]:
    """One JSONL line as an object (documents here, parallel text in xtm.trainer.contextual.parallel_text);
    whatever makes it unreadable (invalid UTF-8 or JSON, nesting too deep, numbers Python refuses) is an
    XtmError naming the line (xtm.runtime.records.decode_json_line)."""
    obj, reason = decode_json_line(raw)
    if reason is not None:
        raise XtmError(reason, path=f, line=lineno)
    if not isinstance(obj, dict):
        raise XtmError(f"expected a JSON object per line, got {type(obj).__name__}", path=f, line=lineno)
    return obj


def _unread_fields(obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(their name, xtm's field) for each field the document lacks while it carries another tool's name for it, or
    a misspelling of it (xtm.field_names)."""
    return [(other, name) for name in OTHER_FIELD_NAMES if name not in obj for other in names_for(obj, name)]


def _text(obj: dict[str, Any], f: Path, lineno: int) -> str:
    if "text" not in obj:
        near = names_for(obj, "text")
        hint = f" (this line has {near[0]!r}: xtm reads 'text')" if near else ""
        raise XtmError(f"missing: every document needs its text{hint}", path=f, line=lineno, field="text")
    text = obj["text"]
    if not isinstance(text, str):
        raise XtmError(f"must be a string, got {type(text).__name__}", path=f, line=lineno, field="text")
    return text


def _check_unicode(obj: dict[str, Any], f: Path, lineno: int) -> None:
    for key in ("id", "text", "lang", "label", "split"):
        v = obj.get(key)
        if isinstance(v, str):
            check_unicode_text(v, f, lineno, key)


def check_unicode_text(v: str, f: Path, lineno: int, key: str) -> None:
    """A lone surrogate (JSON "\\ud800") is not Unicode text: it would fail when written or embedded later."""
    try:
        v.encode("utf-8")
    except UnicodeEncodeError as e:
        raise XtmError(f"not valid Unicode text: a lone surrogate ({v[e.start]!r}) at character {e.start}",
                       path=f, line=lineno, field=key) from None


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


def _named_lang(raw_lang: Any, f: Path, lineno: int) -> str:
    if not isinstance(raw_lang, str):
        raise XtmError(f"must be a language code string, got {type(raw_lang).__name__}",
                       path=f, line=lineno, field="lang")
    try:
        return normalize_lang(raw_lang)
    except XtmError as e:
        raise XtmError(e.reason, path=f, line=lineno, field="lang") from None


class _DocumentReader:
    """The per-line work of `read_documents`: one raw line -> a usable document, or None (counted)."""

    def __init__(self, want: list[str] | None, stats: ReadStats, multi: bool, rules: int,
                 extra: tuple[str, ...], user_words: tuple[str, ...] = ()) -> None:
        self.want, self.stats, self.multi, self.rules, self.extra = want, stats, multi, rules, extra
        self.user_words = user_words
        self.tokenizers: dict[str, tuple[Callable[[str], list[str]], frozenset[str]]] = {}

    def parse(self, f: Path, lineno: int, raw: bytes) -> Document | None:
        raw = drop_bom(lineno, raw)
        if not raw.strip():
            return None
        obj = json_object(raw, f, lineno)
        text = _text(obj, f, lineno)
        for unread in _unread_fields(obj):
            self.stats.unread_fields[unread] += 1
        _check_unicode(obj, f, lineno)
        raw_lang = obj.get("lang")
        doc_id, label, split = _doc_id(obj, f, lineno, self.multi), _label(obj, f, lineno), _split(obj, f, lineno)
        lang = self._language(raw_lang, text, f, lineno)
        if lang is None:
            return None
        tokens = self._tokens(lang, text)
        if tokens is None:
            return None
        return Document(lang, doc_id, text, label, split, tokens, raw_lang is not None)

    def _language(self, raw_lang: Any, text: str, f: Path, lineno: int) -> str | None:
        """The document's language (named or detected), or None when it is not one to keep (counted)."""
        if raw_lang is not None:
            lang = _named_lang(raw_lang, f, lineno)
        elif not text.strip():
            self.stats.drop("empty_text", None)  # no language to detect; counted without one
            return None
        else:
            lang = detect_language(text, self.want, weighted=self.rules >= 3)
            self.stats.detected += 1
        if self.want is not None and lang not in self.want:
            self.stats.skipped_lang[lang] += 1
            return None
        return lang

    def _tokens(self, lang: str, text: str) -> Counter[str] | None:
        """Token counts of a kept document, or None when it has none (counted)."""
        tok = self.tokenizers.get(lang)
        if tok is None:
            tok = self.tokenizers[lang] = (make_tokenizer(default_tokenizer_spec(lang, self.rules, self.user_words)),
                                           stopwords(lang, self.rules)
                                           | extra_stopwords(lang, self.rules, self.extra, self.user_words))
            self.stats.dropped_by_lang[lang] = Counter()  # a language met, even if all its documents go
        if not text.strip():
            self.stats.drop("empty_text", lang)
            return None
        tokenize, stop = tok
        # Pure numbers make poor topic words (the benchmark vocabularies have none).
        tokens = Counter(t for t in tokenize(text) if t not in stop and not t.isdigit())
        if not tokens:
            self.stats.drop("no_tokens", lang)
            return None
        return tokens

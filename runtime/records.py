"""Batch inference records: one input row -> a checked document, one result -> one output JSON line.

The single definition of xtm-infer's row semantics and output format, used by the inference engine
(`xtm.runtime.engine`, which every batch run goes through: xtm-infer, the Ray engine, Python), so
all write byte-identical lines and report the same bad rows with the same reasons. Torch-free and
cheap to import (json and the language table only); the model is only touched through the
InferenceResult handed in. What to do with a bad row (skip, stop) is the engine's policy.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypeVar

from xtm.atomic import check_replaceable
from xtm.errors import XtmError
from xtm.field_names import names_for
from xtm.json_files import json_default

if TYPE_CHECKING:
    from xtm.runtime.model import InferenceResult, TopicModel

__all__ = ["CHUNK_BYTES", "CSV_LEADING_COLUMNS", "DECIMALS", "DEFAULT_FIELDS", "INPUT_FORMATS", "MAX_CHARS",
           "MAX_LINE_BYTES", "OUTPUT_FORMATS", "OUTPUT_WORDS", "PARQUET_SUFFIXES", "TEXT_SUFFIXES", "WEIGHT",
           "FieldNames", "LineFormatter", "Parsed", "TableShape", "TableStream", "binary_as_text", "check_fields",
           "check_input_name", "check_out_path", "chunked", "decode_json_line", "decode_text_line", "drop_bom",
           "encode_id", "encode_lines", "input_format", "is_infer_output", "line_chunks", "naming_read_errors",
           "output_format", "parquet_chunks", "parse_line", "parse_parquet_row", "parse_record", "read_lines",
           "without_surrogates"]

# Longer documents are cut (with a warning): tokenizing megabytes of one line is almost always a
# malformed record, and a bag of words of the first 100k characters already saturates the vocabulary.
MAX_CHARS = 100_000
# Longer lines are bad lines, skipped without being held in memory: a file without newlines (a
# binary, a mis-split dump) would otherwise be read whole. Far above any record a 100k-character
# text makes (at most ~600 kB, fully escaped), leaving room for large fields beside the text.
MAX_LINE_BYTES = 64 * 1024 * 1024
# Raw bytes a chunk of unparsed lines may hold before it is cut short of its line count: chunks go
# whole to worker processes (pickled, so held twice), 2 per worker in flight; 1,024 lines of 2 MB
# made one 2 GB chunk (xtm-infer --workers 2: 4.2 GB resident, against 1.1 GB in one process).
CHUNK_BYTES = 16 * 1024 * 1024
# The columns every CSV output begins with (TableShape.csv_header), which also tell an earlier output.
CSV_LEADING_COLUMNS = ("id", "lang", "lang_conf", "route", "empty", "oov_ratio")
# File name endings read as Parquet (any other file is JSONL), by both engines.
PARQUET_SUFFIXES = (".parquet", ".pq")
# File name endings read as plain text, one document per line, by the local engine's auto format.
TEXT_SUFFIXES = (".txt", ".text")
# What xtm-infer reads (--input-format) and writes (--format).
INPUT_FORMATS = ("jsonl", "text", "parquet", "csv", "tsv")
OUTPUT_FORMATS = ("jsonl", "csv", "parquet")
# Words per language shown for each topic in the output.
OUTPUT_WORDS = 10
# Decimals kept for weights: float32 carries about 7 significant digits, and 6 decimals keep the
# output about half as long as Python's full float repr. Written with "%.6f" (0.020000, 0.000001):
# one C formatting call per row is twice as fast as repr() per weight, and parses to the same numbers.
DECIMALS = 6
WEIGHT = f"%.{DECIMALS}f"
# Language confidence and out-of-vocabulary share: 3 decimals say all they mean.
SHARE = "%.3f"

# default=json_default: an id from a numpy column (np.int64) is its number; before, every such record was skipped.
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=json_default).encode
_dumps_ascii = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"), allow_nan=False,
                                default=json_default).encode
_SURROGATES = re.compile("[\ud800-\udfff]")

# (document, error, warning) for one input row; document is {"id", "id_json", "text", "lang"} when good.
Parsed = tuple[dict[str, Any] | None, str | None, str | None]


class FieldNames(NamedTuple):
    """The input fields (JSONL keys, Parquet columns, mapping keys) read as a record's text, language and id:
    xtm-infer's --text-field, --lang-field and --id-field. A pipeline's records keep their own names ('body',
    'locale', 'doc_id') instead of being rewritten first; the output line still says "id" and "lang"."""

    text: str = "text"
    lang: str = "lang"
    id: str = "id"

    def option(self, field: str) -> str:
        """How a message names field `field` ("text", "lang" or "id"): 'body' (--text-field) when renamed."""
        name = getattr(self, field)
        return repr(name) + (f" (--{field}-field)" if name != field else "")


DEFAULT_FIELDS = FieldNames()
# Longer field names are refused: a field name is a word, and it is shown in every bad line's message.
_MAX_FIELD_NAME = 200


def check_fields(text: Any = "text", lang: Any = "lang", id: Any = "id") -> FieldNames:  # noqa: A002
    """FieldNames from the three names, checked: non-empty strings of printable characters, no two the same."""
    given = {"text": text, "lang": lang, "id": id}
    for field, name in given.items():
        if not isinstance(name, str):
            raise XtmError(f"{field}_field must be a string, got {type(name).__name__}")
        if not name or len(name) > _MAX_FIELD_NAME or not name.isprintable():
            raise XtmError(f"{field}_field must be 1 to {_MAX_FIELD_NAME} printable characters, got {_show(name)}")
    if len(set(given.values())) < 3:
        raise XtmError(f"text_field, lang_field and id_field must be three different fields, got {text!r}, {lang!r} "
                       f"and {id!r}")
    return FieldNames(text, lang, id)


# -- reading ---------------------------------------------------------------------------------------

T = TypeVar("T")


def naming_read_errors(items: Iterator[T], name: str) -> Iterator[T]:
    """`items`, an I/O error while reading the input (a failing disk, a vanished network file, /proc/self/mem)
    raised as one XtmError naming the file: the command prints that line, where an OSError was a traceback
    (under Ray: its task's, without the file's name). Only the reading is covered, not what the caller does
    with each item."""
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except OSError as e:
            raise XtmError(f"cannot read: {e.strerror or e}", path=name) from e
        yield item


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in lists of `size` (the last one shorter)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_lines(stream: IO[bytes], max_bytes: int | None = None) -> Iterator[tuple[int, bytes | None]]:
    """(line number, raw line) for each non-blank line; raw is None for a line over `max_bytes`
    (default MAX_LINE_BYTES), which is skipped in pieces, never held whole."""
    if max_bytes is None:
        max_bytes = MAX_LINE_BYTES
    lineno = 0
    while True:
        raw = stream.readline(max_bytes + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > max_bytes and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # the rest of the line, a MiB at a time
                raw = stream.readline(1 << 20)
            yield lineno, None
            continue
        raw = drop_bom(lineno, raw)
        if not raw.strip():
            continue
        yield lineno, raw


def drop_bom(lineno: int, raw: bytes) -> bytes:
    """Line `lineno` without the UTF-8 byte-order mark a Windows editor puts at the start of a file:
    it is not part of the JSON. Every JSONL reader (inference, documents, parallel text) calls this."""
    return raw[3:] if lineno == 1 and raw.startswith(b"\xef\xbb\xbf") else raw


def line_chunks(stream: IO[bytes], size: int,
                max_bytes: int | None = None) -> Iterator[list[tuple[int, bytes | None]]]:
    """(line number, raw line) lists of up to `size` non-blank lines (see read_lines), each ended early
    once its lines hold `max_bytes` (default CHUNK_BYTES): a chunk holds at most that plus one line."""
    if max_bytes is None:
        max_bytes = CHUNK_BYTES
    chunk: list[tuple[int, bytes | None]] = []
    held = 0
    for item in read_lines(stream):
        chunk.append(item)
        held += len(item[1] or b"")
        if len(chunk) >= size or held >= max_bytes:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def decode_json_line(raw: bytes | None) -> tuple[Any, str | None]:
    """(value, None) for one JSON line, or (None, reason) when it cannot be read. Never raises for
    what the line contains: invalid UTF-8 or JSON, numbers Python refuses (over 4,300 digits),
    nesting deeper than the parser's recursion limit, a line too large for memory or over
    MAX_LINE_BYTES (raw None, from read_lines). For any reader of JSONL (inference, training)."""
    if raw is None:
        return None, f"line longer than {MAX_LINE_BYTES:,} bytes (skipped unread)"
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    try:
        return json.loads(line), None
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    except MemoryError:
        return None, "line too large to parse in memory"
    except ValueError as e:  # e.g. an integer of more digits than int() accepts
        return None, f"invalid JSON: {e}"


# -- checking --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _normalize_lang(lang: str) -> str:
    """normalize_lang, remembered: a file has a handful of distinct codes on millions of lines."""
    from xtm.languages import normalize_lang

    return normalize_lang(lang)


def _show(value: str) -> str:
    """A value from the input, quoted for a one-line message: escapes (newlines, control and terminal
    characters, lone surrogates) made visible, long values cut."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def parse_line(raw: bytes | None, lineno: int, served: Sequence[str] | None,
               fields: FieldNames = DEFAULT_FIELDS) -> Parsed:
    """(document, error, warning) for one JSONL line (see parse_record); raw None is an over-long line.

    served: the languages a good line may name; None accepts any valid code (contextual route)."""
    obj, error = decode_json_line(raw)
    if error is not None:
        return None, error, None
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", None
    return parse_record(obj, lineno, served, fields)


def parse_record(obj: dict[str, Any], lineno: int, served: Sequence[str] | None,
                 fields: FieldNames = DEFAULT_FIELDS) -> Parsed:
    """(document, error, warning) for one record already decoded (a JSON object, a Parquet row).

    document: {"id", "id_json" (the id as written in the output), "text", "lang"}, read from the record's
    `fields`. "id" defaults to `lineno` when the record has no such key (a present null stays null). Lone
    surrogates in the text (JSON's "\\ud800" escapes) become U+FFFD: no tokenizer or encoder can take them."""
    if fields.text not in obj:
        return None, f"missing field {fields.option('text')}{_text_hint(obj, fields)}", None
    text = obj[fields.text]
    if not isinstance(text, str):
        return None, f"field {fields.option('text')} must be a string, got {type(text).__name__}", None
    if not text.strip():
        return None, "empty text", None
    lang = obj.get(fields.lang)
    if lang is not None:
        if not isinstance(lang, str):
            return None, f"field {fields.option('lang')} must be a string, got {type(lang).__name__}", None
        try:
            code = _normalize_lang(lang)
        except XtmError:
            return None, f"field {fields.option('lang')}: invalid language code {_show(lang)}: expected an ISO " \
                         "639-1 code such as 'en', 'zh', 'ja'", None
        if served is not None and code not in served:
            return None, f"language {_show(lang)} is not served by this bundle (it serves {', '.join(served)})", None
        lang = code
    doc_id = obj.get(fields.id, lineno)
    try:
        id_json = encode_id(doc_id)
    except (TypeError, ValueError) as e:
        return None, f"field {fields.option('id')} cannot be written as JSON: {e}", None
    notes = _unread_fields(obj, fields)
    if len(text) > MAX_CHARS:
        notes.append(f"text has {len(text):,} characters; using the first {MAX_CHARS:,}")
        text = text[:MAX_CHARS]
    warning = "; ".join(notes) or None
    if not text.isascii():
        text = without_surrogates(text)
    return {"id": doc_id, "id_json": id_json, "text": text, "lang": lang}, None, warning


def _text_hint(obj: dict[str, Any], fields: FieldNames) -> str:
    """What a record without its text field has instead: another tool's name for it or a slip ('Text', 'content'),
    said with the option that reads it; nothing when the text field was renamed (the user chose that name)."""
    if fields.text != "text":
        return ""
    near = names_for(obj, "text")
    return f" (this line has {near[0]!r}: --text-field {shlex.quote(near[0])} reads it)" if near else ""


# What a record's field under another name or a slip ('Lang', 'language', 'doc_id') would have been read as: the
# language is then detected (or --lang's) and the id is the line number, so a pipeline's ids and languages were
# lost without a word (a newcomer's finding). Said as a warning; the line is still served. An id field renamed with
# --id-field and absent from a record is said the same way (the user named it to join on it); a record without its
# language is one to detect, renamed or not.
_UNREAD_MEANS = {"lang": "the language is detected", "id": "the id written is the line number"}


def _unread_fields(obj: dict[str, Any], fields: FieldNames) -> list[str]:
    """Warnings for `obj`'s missing lang or id: a renamed id field absent, or either under another name while the
    default one is absent."""
    notes = []
    for name, means in _UNREAD_MEANS.items():
        own = getattr(fields, name)
        if own in obj:
            continue
        if own != name:
            if name == "id":
                notes.append(f"no field {fields.option(name)} ({means})")
        elif near := [k for k in names_for(obj, name) if k not in fields]:  # (not a field read as another)
            notes.append(f"field {_show(near[0])} is not read ({means}): xtm reads '{name}' (--{name}-field "
                         f"{shlex.quote(near[0])} reads it)")
    return notes


def without_surrogates(text: str) -> str:
    """`text` with lone surrogates (from JSON's \\ud800 escapes) replaced by U+FFFD: UTF-8 cannot
    encode them, and C++ tokenizers (sentencepiece) raise on them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


def encode_id(doc_id: Any) -> str:
    """The id as it appears in the output line: compact JSON, valid UTF-8, non-ASCII kept.

    What JSON cannot hold is written so that the line stays valid JSON: NaN and +/-Infinity (which
    Python's json reads, and a number over 1e308 becomes) as the strings "NaN", "Infinity",
    "-Infinity"; a string with a lone surrogate with \\uXXXX escapes (Python's json reads it back
    as the same string); U+2028 and U+2029 escaped, so that no line reader splits the line there.
    Raises TypeError for a value of no JSON type (a timestamp, bytes; numpy numbers are written as numbers),
    ValueError for one nested too deeply to write."""
    try:
        try:
            s = _dumps(doc_id)
        except ValueError:  # NaN or Infinity somewhere inside
            s = _dumps(_finite(doc_id))
        if not s.isascii():
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: escaped, so the bytes stay UTF-8
                s = _dumps_ascii(_finite(doc_id))
            # Line and paragraph separators are valid raw inside JSON strings, but str.splitlines() and
            # many JSONL readers end a line there: escaped (they can only stand inside a string here).
            s = s.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")
    except RecursionError:
        raise ValueError("nested too deeply") from None
    return s


def _finite(value: Any) -> Any:
    """`value` with non-finite floats as strings (JSON has no NaN or Infinity); numpy numbers too."""
    if type(value).__module__ == "numpy" and hasattr(value, "item"):
        value = value.item()  # np.float32 is no float: its NaN would not be seen below
    if isinstance(value, float) and value != value:
        return "NaN"
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def check_out_path(out: str | Path | None, inputs: Sequence[str | Path]) -> None:
    """XtmError, before any work, when writing `out` would destroy a user's file: it is one of the
    inputs (`xtm-infer docs.jsonl --out docs.jsonl`: the atomic replace would destroy what the run
    reads), or an existing file that is not an xtm-infer output (`--out thesis.docx`, a typo, a
    path in the wrong directory). xtm-infer replaces only what it provably wrote: an empty file, or
    a JSONL, CSV or Parquet file that starts as its outputs do (`xtm.atomic.check_replaceable`: FIFOs
    and devices, written in place, pass; a directory is refused)."""
    if out is None or not os.path.exists(out):
        return
    for p in inputs:
        with contextlib.suppress(OSError):
            if os.path.isfile(p) and os.path.samefile(out, p):
                raise XtmError("--out is an input file: writing it would replace what is being read; choose "
                               "another output path", path=out)
    check_replaceable(out, is_infer_output, what="an xtm-infer output",
                      hint="xtm-infer replaces only its own outputs; remove the file or choose another --out")


def is_infer_output(path: str | Path) -> bool:
    """Whether the regular file `path` is empty or begins as xtm-infer's outputs do: a JSONL line
    with its keys, its CSV header, or a Parquet file with its columns. OSError when it cannot be read."""
    with open(path, "rb") as f:
        head = f.readline(MAX_LINE_BYTES + 1)   # an output line may be long (a long id); no longer than an input line
    if not head:
        return True
    if head.startswith(b"PAR1"):
        try:
            import pyarrow.parquet as pq

            return {"id", "lang", "route", "topics"} <= set(pq.read_schema(path).names)
        except Exception:  # no pyarrow, or not a readable Parquet footer: not provably ours
            return False
    first = head.rstrip(b"\r\n")
    if first.startswith(",".join(CSV_LEADING_COLUMNS).encode()):
        return True
    try:
        obj = json.loads(first)
    except (ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and {"id", "lang", "topics"} <= obj.keys()


def parquet_chunks(path: str, size: int,
                   fields: FieldNames = DEFAULT_FIELDS) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """(row number, record) lists of up to `size` rows of a Parquet file, streamed by record batch.

    A record holds the row's text, lang and id columns (`fields`; others are not read); a null cell is left
    out, as an absent JSON field: a null lang is detected, a null id becomes the row number.
    Raises XtmError when the file is not Parquet, has no text column (or lacks a renamed lang or id column),
    or cannot be read further."""
    pa, pq = _pyarrow(path, "reading")  # not a base dependency: the runtime serves JSONL without it
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise XtmError(f"cannot read as Parquet: {e}", path=path) from e
    names = pf.schema_arrow.names
    as_keys = dict.fromkeys(names)  # (names_for reads a record's keys)
    for field in ("text", "lang", "id"):  # a column the user named is one the file must have (text: always)
        name = getattr(fields, field)
        if name not in names and (field == "text" or name != field):
            near = names_for(as_keys, field) if name == field else []
            hint = f": --{field}-field {shlex.quote(near[0])} reads {near[0]!r}" if near else ""
            raise XtmError(f"Parquet file has no {fields.option(field)} column (it has {', '.join(names)}){hint}",
                           path=path)
    columns = [c for c in fields if c in names]
    # a language or id column under another name ('language', 'doc_id') is read too, for parse_record's warning
    # that it is not xtm's (the ids were replaced by row numbers without a word)
    columns += [near[0] for c in ("lang", "id") if getattr(fields, c) == c and c not in names
                and (near := [k for k in names_for(as_keys, c) if k not in columns])]
    row = 0
    batches = pf.iter_batches(batch_size=size, columns=columns)
    while True:
        try:  # a damaged row group shows only when it is reached
            rb = next(batches, None)
        except (OSError, pa.ArrowException) as e:
            raise XtmError(f"cannot read as Parquet after row {row}: {e}", path=path) from e
        if rb is None:
            return
        data = {c: _cells(rb.column(c), pa) for c in columns}
        yield [(row + i + 1, {c: data[c][i] for c in columns if data[c][i] is not None})
               for i in range(rb.num_rows)]
        row += rb.num_rows


class OutOfRangeValue:
    """A Parquet cell Python cannot hold (a date32 of 2**31 - 1 days, a timestamp beyond year 9999): its
    row is reported bad by parse_record (not a string, not writable as JSON), like any other wrong type."""

    def __repr__(self) -> str:
        return "OutOfRangeValue"


def _cells(column: Any, pa: Any) -> list[Any]:
    """A column's cells as Python values; a cell that cannot be converted (to_pylist raised
    OverflowError for the whole batch) becomes an OutOfRangeValue, so only its row is bad."""
    try:
        return column.to_pylist()
    except (OverflowError, ValueError, pa.ArrowException):
        cells: list[Any] = []
        for i in range(len(column)):
            try:
                cells.append(column[i].as_py())
            except (OverflowError, ValueError, pa.ArrowException):
                cells.append(OutOfRangeValue())
        return cells


def parse_parquet_row(obj: dict[str, Any], rownum: int, served: Sequence[str] | None,
                      fields: FieldNames = DEFAULT_FIELDS) -> Parsed:
    """parse_record for a Parquet row: its ids can be of types JSON cannot write (timestamps, bytes);
    parse_record reports such a row as bad, not a crash when its line is written. A text or lang column of
    Parquet's binary type (as Spark and Hive write strings) is read as UTF-8: every row was bad ("must be a
    string, got bytes")."""
    obj, error = binary_as_text(obj, fields)
    if error is not None:
        return None, error, None
    return parse_record(obj, rownum, served, fields)


def binary_as_text(obj: dict[str, Any], fields: FieldNames = DEFAULT_FIELDS) -> tuple[dict[str, Any], str | None]:
    """A Parquet row with its text, lang and id cells of the binary type (such writers store every string so) read
    as UTF-8, or (obj, the reason) when one is not UTF-8."""
    for field, name in zip(("text", "lang", "id"), fields, strict=True):
        value = obj.get(name)
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                obj = {**obj, name: bytes(value).decode("utf-8")}
            except UnicodeDecodeError as e:
                return obj, f"field {fields.option(field)} is binary and not UTF-8 text (byte at offset {e.start})"
    return obj, None


# -- writing ---------------------------------------------------------------------------------------


def _share(x: float) -> str:
    return "null" if x != x else SHARE % x


class LineFormatter:
    """Writes xtm-infer's output line for each document of an InferenceResult.

    Topic descriptions are the same for every document: each one is serialised once here.
    json.dumps of whole records was 60% of the CLI's time; records are assembled from these pieces.

    A line: {"id", "lang", "lang_conf", "route", "empty", "oov_ratio", "theta", "topics"}.
    lang_conf is the detector's probability of lang (null: given in the input); route "bow" or
    "contextual"; empty true when the document had no in-vocabulary token (its theta is the
    encoder's prior for an empty document and says nothing about it); oov_ratio the share of its
    tokens outside the vocabulary (null on the contextual route). Unsupported rows get no line.
    """

    def __init__(self, model: TopicModel, *, full_theta: bool = True) -> None:
        self.full_theta = full_theta
        # Topic words come from the bundle: encode_id's escaping keeps a damaged word list valid UTF-8.
        words_json = [encode_id({lang: ws[:OUTPUT_WORDS] for lang, ws in t.items()}) for t in model.topics]
        self._head = [f'{{"id":{k},"weight":' for k in range(model.num_topics)]
        # With labels (xtm-label), "label" follows the topic id: the label in the document's language, else
        # in the first training language (the contextual route's languages, and a topic without one there);
        # null for a topic without any. A bundle without labels writes the lines it always wrote.
        self._heads: dict[str | None, list[str]] = {}
        if getattr(model, "has_labels", False):
            for lang in [None, *model.languages]:
                self._heads[lang] = [f'{{"id":{k},"label":{encode_id(model.topic_label(k, lang))},"weight":'
                                     for k in range(model.num_topics)]
        self._tail = [f',"words":{w}}}' for w in words_json]
        self._theta_row = "[" + ",".join([WEIGHT] * model.num_topics) + "]"

    def lines(self, res: InferenceResult, id_json: Sequence[str]) -> list[str | None]:
        """One JSON line (no newline) per document, None for an unsupported one (see res.notes);
        id_json[i] is encode_id of document i's id."""
        full = res.theta.tolist() if self.full_theta else None
        top_ids, top_weights = res.top_ids.tolist(), res.top_weights.tolist()
        conf, oov, empty = res.lang_conf.tolist(), res.oov_ratio.tolist(), res.empty.tolist()
        unsupported = res.unsupported.tolist()
        head, tail, heads = self._head, self._tail, self._heads
        out: list[str | None] = []
        for i, doc_id in enumerate(id_json):
            if unsupported[i]:
                out.append(None)
                continue
            # Languages are validated codes; weights of the top topics are theta's own values,
            # so both places print the same digits.
            ws = [WEIGHT % w for w in top_weights[i]]
            ids = top_ids[i]
            if full is not None:
                theta_json = self._theta_row % tuple(full[i])
            else:
                theta_json = "{" + ",".join(f'"{k}":{w}' for k, w in zip(ids, ws, strict=True)) + "}"
            lang = res.langs[i]
            if heads:
                head = heads.get(lang) or heads[None]
            topics_json = ",".join(head[k] + w + tail[k] for k, w in zip(ids, ws, strict=True))
            lang_json = "null" if lang is None else f'"{lang}"'
            out.append(f'{{"id":{doc_id},"lang":{lang_json},"lang_conf":{_share(conf[i])},"route":"{res.routes[i]}",'
                       f'"empty":{"true" if empty[i] else "false"},"oov_ratio":{_share(oov[i])},'
                       f'"theta":{theta_json},"topics":[{topics_json}]}}')
        return out


def encode_lines(lines: Sequence[str]) -> bytes:
    """Output lines as UTF-8 bytes, one per line. Every piece is made encodable upstream (ids,
    topic words); should one still hold a lone surrogate, it is escaped, never fatal."""
    text = "\n".join(lines) + "\n"
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


# -- formats: plain text in, CSV and Parquet out ----------------------------------------------------


# Endings of inputs xtm-infer does not read, said before any work: a CSV file was read as JSONL ("invalid JSON" on
# every line, then "all lines were bad"), and a gzip file as "invalid UTF-8".
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip", ".7z")
# File name endings read as CSV and TSV (a header row, then one record a row), by the local engine's auto format.
DELIMITED_SUFFIXES = {".csv": "csv", ".tsv": "tsv"}
_NOT_READ = {COMPRESSED_SUFFIXES: "compressed input is not read: decompress it first (zcat FILE | xtm-infer - ...)"}


def check_input_name(path: str | os.PathLike[str]) -> None:
    """Refuse an input whose name says a format xtm does not read (_NOT_READ), naming it."""
    low = os.fspath(path).lower()
    for endings, why in _NOT_READ.items():
        if low.endswith(endings):
            raise XtmError(f"{why} (the local engine's --input-format jsonl or text reads it as such anyway)",
                           path=os.fspath(path))


def input_format(path: str, given: str | None = None) -> str:
    """The format to read `path` as: `given` (one of INPUT_FORMATS), else by its name: .parquet/.pq
    Parquet, .txt/.text plain text (one document per line), .csv CSV, .tsv TSV, compressed files refused
    (check_input_name), anything else (and "-") JSONL."""
    if given is not None and given != "auto":
        if given not in INPUT_FORMATS:
            raise XtmError(f"input format must be one of auto, {', '.join(INPUT_FORMATS)}, got {given!r}")
        return given
    check_input_name(path)
    low = str(path).lower()
    if low.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if low.endswith(tuple(DELIMITED_SUFFIXES)):
        return DELIMITED_SUFFIXES[os.path.splitext(low)[1]]
    return "text" if low.endswith(TEXT_SUFFIXES) else "jsonl"


def output_format(out: str | os.PathLike[str] | None, given: str | None = None) -> str:
    """The format to write: `given` (one of OUTPUT_FORMATS), else by --out's name: .csv CSV,
    .parquet/.pq Parquet, anything else (and stdout) JSONL."""
    if given is not None and given != "auto":
        if given not in OUTPUT_FORMATS:
            raise XtmError(f"output format must be one of auto, {', '.join(OUTPUT_FORMATS)}, got {given!r}")
        return given
    low = "" if out is None else os.fspath(out).lower()
    if low.endswith(".csv"):
        return "csv"
    if low.endswith(".tsv"):  # (written as JSONL, silently)
        raise XtmError("TSV is not written: --out FILE.csv writes CSV (or --format jsonl writes JSONL to this name)",
                       path=os.fspath(out))
    if low.endswith(COMPRESSED_SUFFIXES):  # (likewise: o.csv.gz held plain JSONL)
        raise XtmError("compressed output is not written: write to stdout and compress it (xtm-infer ... | gzip > "
                       "FILE), or --format to write this name uncompressed", path=os.fspath(out))
    return "parquet" if low.endswith(PARQUET_SUFFIXES) else "jsonl"


def decode_text_line(raw: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    """({"text": line}, None) for one line of a plain-text input (one document per line, its id the
    line number), or (None, reason): invalid UTF-8, or over MAX_LINE_BYTES (raw None)."""
    if raw is None:
        return None, f"line longer than {MAX_LINE_BYTES:,} bytes (skipped unread)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})"
    return {"text": text.rstrip("\r\n")}, None


class TableShape:
    """What a table of results holds: K theta columns (full theta only) and top_k topic columns."""

    def __init__(self, num_topics: int, top_k: int, full_theta: bool, labels: bool | None = None) -> None:
        self.num_topics, self.full_theta = int(num_topics), bool(full_theta)
        self.top_k = max(0, min(int(top_k), self.num_topics))
        # Label columns (label_i; Parquet: labels) when the bundle has labels. None: decided by the
        # first lines written (they carry "label" exactly when the bundle has labels: LineFormatter).
        self.labels = labels

    def csv_header(self) -> list[str]:
        head = list(CSV_LEADING_COLUMNS)
        for i in range(1, self.top_k + 1):
            head += [f"topic_{i}", f"weight_{i}"] + ([f"label_{i}"] if self.labels else [])
        if self.top_k:
            head.append("topic_1_words")
        if self.full_theta:
            head += [f"theta_{k}" for k in range(self.num_topics)]
        return head


def _id_text(value: Any) -> str | None:
    """An id as one text cell: a string as it is, null as null, anything else as its JSON (lone
    surrogates, which no UTF-8 table can hold, as U+FFFD)."""
    if value is None:
        return None
    return without_surrogates(value if isinstance(value, str) else _dumps(value))


class _Utf8Text:
    """str writes as UTF-8 bytes to a binary sink (csv.writer's file), never closing it."""

    def __init__(self, sink: IO[bytes]) -> None:
        self.sink = sink

    def write(self, text: str) -> int:
        self.sink.write(text.encode("utf-8"))
        return len(text)


# A cell a spreadsheet would run as a formula: it starts with one of these (OWASP's "CSV injection").
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _csv_safe(text: str | None) -> str | None:
    """A text cell from someone else (a document's id, a bundle's or an LLM's label) that a spreadsheet
    will not run: one that would start a formula ("=HYPERLINK(...)", "@SUM(...)", "-2+3") gets a
    leading apostrophe, which spreadsheets read as "text" and do not show; plain numbers ("-5") stay."""
    if text and text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _words_cell(words: dict[str, list[str]]) -> str:
    """"en: market stock bank | zh: 市场 股票": a topic's words per language, in one cell."""
    return without_surrogates(" | ".join(f"{lang}: {' '.join(ws)}" for lang, ws in words.items()))


class TableStream:
    """A binary sink for xtm-infer's output lines that writes them as CSV or Parquet instead.

    It takes exactly what the engine writes to any sink (whole UTF-8 lines, `encode_lines`), so the
    local engine, the Ray engine and `engine.open_output` callers all get the same table from the
    same lines: the JSON line stays the one definition of a result, a table is a view of it (the
    same digits: weights keep their 6 decimals). `close()` finishes the table (Parquet's footer);
    the sink itself stays open, for its owner to commit or drop.

    CSV (RFC 4180, UTF-8, a header row): id, lang, lang_conf, route, empty, oov_ratio, then per top
    topic i topic_i, weight_i (and label_i when the bundle has labels), topic_1_words ("en: w1 w2 ... |
    zh: ..."), then theta_0..theta_K-1 with full theta. Empty cells for null. Parquet (pyarrow): id
    (string), lang, lang_conf (float32), route, empty (bool), oov_ratio (float32), topics (list<int32>),
    weights (list<float32>), labels (list<string>, when the bundle has labels) and theta
    (list<float32>, full theta only); nulls for null.
    Ids become text in both (a string id as it is, any other id as its JSON), one type per column; in
    CSV an id or label that would start a spreadsheet formula gets a leading apostrophe (`_csv_safe`).
    """

    # Rows held before a Parquet row group is written: row groups of a few thousand rows or more
    # read efficiently; memory stays a few MB.
    ROW_GROUP = 65_536

    def __init__(self, sink: IO[bytes], fmt: str, shape: TableShape, name: str = "<output>") -> None:
        if fmt not in ("csv", "parquet"):
            raise XtmError(f"a table is csv or parquet, not {fmt!r}")
        self.sink, self.fmt, self.shape, self.name = sink, fmt, shape, name
        self._rows: list[dict[str, Any]] = []
        self._started = False
        self._writer: Any = None
        if fmt == "parquet":
            self._pa, self._pq = _pyarrow(name, "writing")

    # The engine's sink interface (sink_writer): write whole lines, then flush.
    def write(self, data: bytes) -> int:
        rows = [json.loads(line) for line in data.decode("utf-8").split("\n") if line]
        if self.fmt == "csv":
            self._write_csv(rows)
        else:
            self._rows.extend(rows)
            if len(self._rows) >= self.ROW_GROUP:
                self._write_parquet()
        return len(data)

    def flush(self) -> None:
        self.sink.flush()

    def close(self) -> None:
        """Finish the table: the CSV header of an empty result, Parquet's last row group and footer."""
        if self.fmt == "csv":
            self._write_csv([])
        else:
            self._write_parquet(last=True)
        self.sink.flush()

    def _decide_labels(self, rows: list[dict[str, Any]]) -> None:
        if self.shape.labels is None:
            self.shape.labels = any("label" in t for r in rows for t in r["topics"])

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        import csv

        if not self._started:
            self._decide_labels(rows)
            self._csv = csv.writer(_Utf8Text(self.sink))
            self._csv.writerow(self.shape.csv_header())
            self._started = True
        top_k, full, labels = self.shape.top_k, self.shape.full_theta, self.shape.labels
        out = []
        for r in rows:
            cells = [_csv_safe(_id_text(r["id"])), r["lang"], _cell(r["lang_conf"], SHARE), r["route"],
                     "true" if r["empty"] else "false", _cell(r["oov_ratio"], SHARE)]
            topics = r["topics"]
            for i in range(top_k):
                cells += [topics[i]["id"], WEIGHT % topics[i]["weight"]] if i < len(topics) else ["", ""]
                if labels:
                    cells.append(_csv_safe(topics[i].get("label") or "") if i < len(topics) else "")
            if top_k:
                cells.append(_words_cell(topics[0]["words"]) if topics else "")
            if full:
                cells += [WEIGHT % w for w in r["theta"]]
            out.append(cells)
        self._csv.writerows(out)

    def _write_parquet(self, last: bool = False) -> None:
        pa = self._pa
        if self._writer is None:
            self._decide_labels(self._rows)
            fields = [("id", pa.string()), ("lang", pa.string()), ("lang_conf", pa.float32()),
                      ("route", pa.string()), ("empty", pa.bool_()), ("oov_ratio", pa.float32()),
                      ("topics", pa.list_(pa.int32())), ("weights", pa.list_(pa.float32()))]
            if self.shape.labels:
                fields.append(("labels", pa.list_(pa.string())))
            if self.shape.full_theta:
                fields.append(("theta", pa.list_(pa.float32())))
            self._schema = pa.schema(fields)
            try:
                self._writer = self._pq.ParquetWriter(self.sink, self._schema)
            except (OSError, pa.ArrowException) as e:
                raise XtmError(f"cannot write Parquet: {e}", path=self.name) from e
        rows, self._rows = self._rows, []
        if rows or last:
            cols: dict[str, list[Any]] = {
                "id": [_id_text(r["id"]) for r in rows], "lang": [r["lang"] for r in rows],
                "lang_conf": [r["lang_conf"] for r in rows], "route": [r["route"] for r in rows],
                "empty": [r["empty"] for r in rows], "oov_ratio": [r["oov_ratio"] for r in rows],
                "topics": [[t["id"] for t in r["topics"]] for r in rows],
                "weights": [[t["weight"] for t in r["topics"]] for r in rows]}
            if self.shape.labels:
                cols["labels"] = [[t.get("label") for t in r["topics"]] for r in rows]
            if self.shape.full_theta:
                cols["theta"] = [r["theta"] for r in rows]
            try:
                if rows:
                    self._writer.write_table(pa.table(cols, schema=self._schema))
                if last:
                    self._writer.close()
            except (OSError, pa.ArrowException) as e:
                raise XtmError(f"cannot write Parquet: {e}", path=self.name) from e


def _cell(x: float | None, fmt: str) -> str:
    return "" if x is None else fmt % x


def _pyarrow(name: str, doing: str) -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or XtmError with the install line (pyarrow is optional)."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise XtmError(f'{doing} Parquet needs pyarrow: pip install "xtm[parquet]"', path=name) from e
    return pa, pq

"""Batch inference records: one input row -> a checked document, one result -> one output JSON line.

The single definition of xtm-infer's row semantics and output format, shared by the local engine
(`xtm.cli.infer`) and the Ray engine (`xtm.runtime.ray`), so both write byte-identical lines and
report the same bad rows with the same reasons. Torch-free and cheap to import (json and the
language table only); the model is only touched through the InferenceResult handed in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import IO, TYPE_CHECKING, Any

from xtm.errors import XtmError

if TYPE_CHECKING:
    from xtm.runtime.model import InferenceResult, TopicModel

__all__ = ["DECIMALS", "MAX_CHARS", "OUTPUT_WORDS", "WEIGHT", "LineFormatter", "Parsed", "encode_id", "line_chunks",
           "parquet_chunks", "parse_line", "parse_parquet_row", "parse_record", "served_languages"]

# Longer documents are cut (with a warning): tokenizing megabytes of one line is almost always a
# malformed record, and a bag of words of the first 100k characters already saturates the vocabulary.
MAX_CHARS = 100_000
# Words per language shown for each topic in the output.
OUTPUT_WORDS = 10
# Decimals kept for weights: float32 carries about 7 significant digits, and 6 decimals keep the
# output about half as long as Python's full float repr. Written with "%.6f" (0.020000, 0.000001):
# one C formatting call per row is twice as fast as repr() per weight, and parses to the same numbers.
DECIMALS = 6
WEIGHT = f"%.{DECIMALS}f"

_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

# (document, error, warning) for one input row; document is {"id", "text", "lang"} when good.
Parsed = tuple[dict[str, Any] | None, str | None, str | None]


def line_chunks(stream: IO[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
    """(line number, raw line) lists of up to `size` non-blank lines; never the whole input."""
    chunk: list[tuple[int, bytes]] = []
    for lineno, raw in enumerate(stream, start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]  # a UTF-8 byte-order mark (Windows editors) is not part of the JSON
        if not raw.strip():
            continue
        chunk.append((lineno, raw))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@functools.lru_cache(maxsize=1024)
def _normalize_lang(lang: str) -> str:
    """normalize_lang, remembered: a file has a handful of distinct codes on millions of lines."""
    from xtm.languages import normalize_lang

    return normalize_lang(lang)


def served_languages(model: TopicModel, route: str) -> list[str] | None:
    """Languages a good row may name: the bag-of-words languages, or None (any valid code) when the
    contextual route can read whatever the bow encoders cannot."""
    return None if model.has_contextual and route != "bow" else model.languages


def parse_line(raw: bytes, lineno: int, served: Sequence[str] | None) -> Parsed:
    """(document, error, warning) for one JSONL line; document is {"id", "text", "lang"} when good.

    served: the languages a good line may name; None accepts any valid code (contextual route)."""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})", None
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"invalid JSON: {e}", None
    if not isinstance(obj, dict):
        return None, f"expected a JSON object, got {type(obj).__name__}", None
    return parse_record(obj, lineno, served)


def parse_record(obj: dict[str, Any], lineno: int, served: Sequence[str] | None) -> Parsed:
    """(document, error, warning) for one record already decoded (a JSON object, a Parquet row).

    "id" defaults to `lineno` when the record has no such key (a present null stays null)."""
    if "text" not in obj:
        return None, "missing field 'text'", None
    text = obj["text"]
    if not isinstance(text, str):
        return None, f"field 'text' must be a string, got {type(text).__name__}", None
    if not text.strip():
        return None, "empty text", None
    lang = obj.get("lang")
    if lang is not None:
        if not isinstance(lang, str):
            return None, f"field 'lang' must be a string, got {type(lang).__name__}", None
        try:
            code = _normalize_lang(lang)
        except XtmError as e:
            return None, str(e), None
        if served is not None and code not in served:
            return None, f"language '{lang}' is not served by this bundle (it serves {', '.join(served)})", None
        lang = code
    warning = None
    if len(text) > MAX_CHARS:
        warning = f"text has {len(text):,} characters; using the first {MAX_CHARS:,}"
        text = text[:MAX_CHARS]
    return {"id": obj.get("id", lineno), "text": text, "lang": lang}, None, warning


def encode_id(doc_id: Any) -> str:
    """The id as it appears in the output line (compact JSON, non-ASCII kept).

    Raises TypeError for a value JSON cannot hold (only possible from Parquet: a timestamp, bytes)."""
    return _dumps(doc_id)


def parquet_chunks(path: str, size: int) -> Iterator[list[tuple[int, dict[str, Any]]]]:
    """(row number, record) lists of up to `size` rows of a Parquet file, streamed by record batch.

    A record holds the row's text, lang and id columns (others are not read); a null cell is left
    out, as an absent JSON field: a null lang is detected, a null id becomes the row number.
    Raises XtmError when the file is not Parquet or has no text column."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:  # not a base dependency: the runtime serves JSONL without it
        raise XtmError('reading Parquet needs pyarrow: pip install pyarrow (or "xtm[ray]")', path=path) from e
    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise XtmError(f"cannot read as Parquet: {e}", path=path) from e
    names = pf.schema_arrow.names
    if "text" not in names:
        raise XtmError(f"Parquet file has no 'text' column (it has {', '.join(names)})", path=path)
    columns = [c for c in ("text", "lang", "id") if c in names]
    row = 0
    for rb in pf.iter_batches(batch_size=size, columns=columns):
        data = {c: rb.column(c).to_pylist() for c in columns}
        yield [(row + i + 1, {c: data[c][i] for c in columns if data[c][i] is not None})
               for i in range(rb.num_rows)]
        row += rb.num_rows


def parse_parquet_row(obj: dict[str, Any], rownum: int, served: Sequence[str] | None) -> Parsed:
    """parse_record, plus the id check JSON input never needs: Parquet ids can be of types JSON
    cannot write (timestamps, bytes); such a row is bad, not a crash when its line is written."""
    doc, error, warning = parse_record(obj, rownum, served)
    if doc is not None:
        try:
            encode_id(doc["id"])
        except (TypeError, ValueError) as e:
            return None, f"field 'id' cannot be written as JSON: {e}", None
    return doc, error, warning


class LineFormatter:
    """Writes xtm-infer's output line for each document of an InferenceResult.

    Topic descriptions are the same for every document: each one is serialised once here.
    json.dumps of whole records was 60% of the CLI's time; records are assembled from these pieces.
    """

    def __init__(self, model: TopicModel, *, full_theta: bool = True, route: str = "auto") -> None:
        self.full_theta = full_theta
        # The "route" key appears exactly when the bundle could have used either route.
        self.with_route = model.has_contextual and route != "bow"
        words_json = [_dumps({lang: ws[:OUTPUT_WORDS] for lang, ws in t.items()}) for t in model.topics]
        self._head = [f'{{"id":{k},"weight":' for k in range(model.num_topics)]
        self._tail = [f',"words":{w}}}' for w in words_json]
        self._theta_row = "[" + ",".join([WEIGHT] * model.num_topics) + "]"

    def lines(self, res: InferenceResult, id_json: Sequence[str]) -> list[str]:
        """One JSON line (no newline) per document; id_json[i] is encode_id of document i's id."""
        full = res.theta.tolist() if self.full_theta else None
        top_ids, top_weights = res.top_ids.tolist(), res.top_weights.tolist()
        head, tail = self._head, self._tail
        out = []
        for i, doc_id in enumerate(id_json):
            # Languages are validated codes; weights of the top topics are theta's own values,
            # so both places print the same digits.
            ws = [WEIGHT % w for w in top_weights[i]]
            ids = top_ids[i]
            if full is not None:
                theta_json = self._theta_row % tuple(full[i])
            else:
                theta_json = "{" + ",".join(f'"{k}":{w}' for k, w in zip(ids, ws, strict=True)) + "}"
            topics_json = ",".join(head[k] + w + tail[k] for k, w in zip(ids, ws, strict=True))
            route_json = f'"route":"{res.routes[i]}",' if self.with_route else ""
            out.append(f'{{"id":{doc_id},"lang":"{res.langs[i]}",{route_json}"theta":{theta_json},'
                       f'"topics":[{topics_json}]}}')
        return out

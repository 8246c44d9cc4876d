"""CSV and TSV input for xtm-infer's local engine: each row after the header a record, as a JSONL line or a
Parquet row is one (`records.parse_record` checks it, under the same field names).

Spreadsheets and warehouse exports write CSV; before, it was refused ("convert it to JSONL"). What such files
hold and how each case is read:
- The first row is the header; the text, lang and id columns are found by name (--text-field etc.). A file
  without the text column, or naming one of the three twice, is an error before any row.
- An empty cell is an absent field (CSV has no null): an empty lang is detected, an empty id is the line number,
  an empty text is a bad row ("empty text"). Ids are the cells' strings ("7", not 7).
- Rows are numbered by the physical line they start on (a quoted field may span lines), as an editor shows.
- Malformed quoting (`"a"b`, a quote never closed) is a bad row with the reader's reason, and reading goes on
  after it; a quote never closed swallows the rest of the file into that one bad row, which the reason says.
- Bytes that are not UTF-8 make their row bad (naming the field); a byte-order mark (Excel's) is dropped.
- A cell longer than records.MAX_LINE_BYTES characters is a bad row, never a crash (the csv module's own limit,
  128 KiB, would have refused texts that JSONL truncates with a warning).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator, Sequence
from typing import IO, NamedTuple

from xtm.errors import XtmError
from xtm.runtime.records import (
    CHUNK_BYTES,
    DEFAULT_FIELDS,
    MAX_LINE_BYTES,
    FieldNames,
    Parsed,
    parse_record,
)

__all__ = ["DELIMITERS", "Unreadable", "csv_chunks", "parse_csv_row"]

# Input format -> delimiter.
DELIMITERS = {"csv": ",", "tsv": "\t"}
# What a byte that is not UTF-8 becomes when decoded with errors="surrogateescape": found in a cell, its row is bad.
_UNDECODED = re.compile("[\udc80-\udcff]")


class Unreadable(NamedTuple):
    """A row the CSV reader could not read (malformed quoting, an over-long cell), with the reason."""

    reason: str


def csv_chunks(stream: IO[bytes], size: int, fields: FieldNames = DEFAULT_FIELDS, *, delimiter: str = ",",
               name: str = "<stdin>") -> Iterator[list[tuple[int, dict[str, str] | Unreadable]]]:
    """(line number, record or Unreadable) lists of up to `size` rows, and of about CHUNK_BYTES of text at most,
    from a CSV (or, with delimiter "\\t", TSV) byte stream; the header is read first and checked (XtmError)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _rows(text, size, fields, delimiter, name)
    finally:
        text.detach()  # the caller's stream stays open (the wrapper would close it when collected)


def _rows(text: IO[str], size: int, fields: FieldNames, delimiter: str,
          name: str) -> Iterator[list[tuple[int, dict[str, str] | Unreadable]]]:
    _raise_field_limit()
    reader = csv.reader(text, delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise XtmError(f"cannot read the header: {e}", path=name, line=1) from e
    if header is None:
        return
    wanted = _columns(header, fields, name)
    chunk: list[tuple[int, dict[str, str] | Unreadable]] = []
    held = 0
    last = reader.line_num
    while True:
        start = last + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            item: dict[str, str] | Unreadable = Unreadable(_reason(e, start, reader.line_num))
        else:
            if not row:  # a blank line, as in JSONL: not a row
                last = reader.line_num
                continue
            # Empty cells are absent fields; cells past the row's end (a short row) too.
            item = {key: row[i] for key, i in wanted.items() if i < len(row) and row[i] != ""}
            held += sum(len(v) for v in item.values())
        last = reader.line_num
        chunk.append((start, item))
        if len(chunk) >= size or held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def parse_csv_row(item: dict[str, str] | Unreadable, lineno: int, served: Sequence[str] | None,
                  fields: FieldNames = DEFAULT_FIELDS) -> Parsed:
    """records.parse_record for one row of csv_chunks: its reader's reason, or bytes that were not UTF-8, make it
    bad."""
    if isinstance(item, Unreadable):
        return None, item.reason, None
    for field, key in zip(("text", "lang", "id"), fields, strict=True):
        value = item.get(key)
        if value is not None and (m := _UNDECODED.search(value)):
            return None, f"field {fields.option(field)} is not UTF-8 text (byte 0x{ord(m.group()) - 0xDC00:02x})", None
    return parse_record(item, lineno, served, fields)


def _columns(header: list[str], fields: FieldNames, name: str) -> dict[str, int]:
    """Column index of each of `fields` the header has; XtmError without the text column or with one named twice."""
    wanted: dict[str, int] = {}
    for field, key in zip(("text", "lang", "id"), fields, strict=True):
        at = [i for i, h in enumerate(header) if h == key]
        if len(at) > 1:
            raise XtmError(f"the header names column {key!r} {len(at)} times (columns {at[0] + 1} and "
                           f"{at[1] + 1}): which one to read is not clear", path=name, line=1)
        if at:
            wanted[key] = at[0]
        elif field == "text" or key != field:
            shown = ", ".join(repr(h) for h in header[:20]) + (", ..." if len(header) > 20 else "")
            raise XtmError(f"the header has no {fields.option(field)} column (it has {shown}; the first line is "
                           "read as the header)", path=name, line=1)
    return wanted


def _reason(e: csv.Error, start: int, end: int) -> str:
    if "field larger than field limit" in str(e):
        return f"a cell longer than {MAX_LINE_BYTES:,} characters (skipped)"
    reason = f"malformed CSV: {e}"
    if "unexpected end of data" in str(e):
        reason += f" (a quote opened on line {start} is never closed: lines {start}-{end} are this one row)"
    return reason


def _raise_field_limit() -> None:
    """The csv module's largest cell (a process-wide setting, 128 KiB by default) raised to MAX_LINE_BYTES, never
    lowered: a longer text is cut with a warning, as in JSONL, not refused."""
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)

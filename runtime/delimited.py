"""CSV and TSV input for xtm-infer's local engine: each row after the header a record, as a JSONL line or a
Parquet row is one (`records.parse_record` checks it, under the same field names).

Spreadsheets and warehouse exports write CSV; before, it was refused ("convert it to JSONL"). What such files
hold and how each case is read:
- The first row is the header; the text, lang and id columns are found by name (--text-field etc.). A file
  without the text column, or naming one of the three twice, is an error before any row; a 'language' or 'doc_id'
  column where 'lang' or 'id' is absent is read for the warning that it is not read, as in JSONL and Parquet.
- An empty cell is an absent field (CSV has no null): an empty lang is detected, an empty id is the line number;
  an empty text is a bad row ("empty text"). Ids are the cells' strings ("7", not 7).
- Rows are numbered by the physical line they start on (a quoted field may span lines), as an editor shows.
- Quoting that is broken (`"a"b`, a quote never closed) stops the run with an error naming the line, after the
  rows before it are written: the reader cannot tell where the broken row ends, so reading on gave pieces of one
  cell as rows of their own, and a quote never closed took the rest of the file (9,998 of 10,000 rows) as one bad
  row under exit 0.
- TSV is read with CSV's quoting, as pandas, Python's csv module and Excel write it (they quote a cell holding a
  quote or a newline); a TSV written without any quoting (Postgres COPY, Hive) reads the same unless a text begins
  with a quote, which is then the error above, saying so.
- Bytes that are not UTF-8 make their row bad (naming the field); a byte-order mark (Excel's) is dropped; a
  UTF-16 file (Excel's "Unicode Text") is an error saying so.
- A physical line longer than MAX_CSV_LINE characters is an error (the csv module holds a line and all of its
  cells at once: a 100 MB line of short cells took 1 GB); a longer text is cut with JSONL's warning (the csv
  module's own cell limit, 128 KiB, is raised to records.MAX_LINE_BYTES).
"""

from __future__ import annotations

import csv
import io
import re
import shlex
from collections.abc import Iterator, Sequence
from typing import IO

from xtm.errors import XtmError
from xtm.field_names import names_for
from xtm.runtime.records import (
    CHUNK_BYTES,
    DEFAULT_FIELDS,
    MAX_LINE_BYTES,
    FieldNames,
    Parsed,
    parse_record,
)

__all__ = ["DELIMITERS", "MAX_CSV_LINE", "csv_chunks", "parse_csv_row"]

# Input format -> delimiter.
DELIMITERS = {"csv": ",", "tsv": "\t"}
# The longest physical line read (characters): the csv module holds a line and all of its cells at once, so this
# bounds memory (8 M one-character cells, about 0.5 GB, at worst); a text over several lines may be longer.
MAX_CSV_LINE = 8 * 2**20
# What a byte that is not UTF-8 becomes when decoded with errors="surrogateescape": found in a cell, its row is bad.
_UNDECODED = re.compile("[\udc80-\udcff]")


def csv_chunks(stream: IO[bytes], size: int, fields: FieldNames = DEFAULT_FIELDS, *, delimiter: str = ",",
               name: str = "<stdin>") -> Iterator[list[tuple[int, dict[str, str]]]]:
    """(line number, record) lists of up to `size` rows, and of about CHUNK_BYTES of text at most, from a CSV (or,
    with delimiter "\\t", TSV) byte stream; the header is read first and checked. XtmError for what cannot be read
    with confidence (see the module docstring)."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline="")
    try:
        yield from _rows(text, size, fields, delimiter, name)
    finally:
        text.detach()  # the caller's stream stays open (the wrapper would close it when collected)


def _rows(text: IO[str], size: int, fields: FieldNames, delimiter: str,
          name: str) -> Iterator[list[tuple[int, dict[str, str]]]]:
    _raise_field_limit()
    reader = csv.reader(_lines(text, name), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as e:
        raise XtmError(f"cannot read the header: {e}", path=name, line=1) from None
    if header is None:
        return
    if header and header[0].startswith(("\udcff\udcfe", "\udcfe\udcff")):
        raise XtmError("the file is UTF-16 (Excel's \"Unicode Text\"): save it as \"CSV UTF-8\" (or convert it: "
                       "iconv -f UTF-16 -t UTF-8)", path=name, line=1)
    wanted = _columns(header, fields, name)
    chunk: list[tuple[int, dict[str, str]]] = []
    held = 0
    last = reader.line_num
    while True:
        start = last + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            if chunk:
                yield chunk  # the rows before it are written, as JSONL's before a bad line under --strict
            raise XtmError(_broken(e, start, reader.line_num, delimiter), path=name, line=start) from None
        last = reader.line_num
        if not row:  # a blank line, as in JSONL: not a row
            continue
        # Empty cells are absent fields (the text's: "empty text"); cells past the row's end (a short row) too.
        item = {key: row[i] for key, i in wanted.items() if i < len(row) and (row[i] != "" or key == fields.text)}
        held += sum(len(v) for v in item.values())
        chunk.append((start, item))
        if len(chunk) >= size or held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _lines(text: IO[str], name: str) -> Iterator[str]:
    """The physical lines of `text`, none longer than MAX_CSV_LINE characters (XtmError naming the line)."""
    lineno = 0
    while line := text.readline(MAX_CSV_LINE + 2):  # (+2: a line of MAX_CSV_LINE and its \r\n stays whole)
        lineno += 1
        if len(line.rstrip("\r\n")) > MAX_CSV_LINE:
            raise XtmError(f"a line longer than {MAX_CSV_LINE:,} characters: not a CSV or TSV row this reader takes "
                           "(JSONL or Parquet take long records)", path=name, line=lineno)
        yield line


def parse_csv_row(item: dict[str, str], lineno: int, served: Sequence[str] | None,
                  fields: FieldNames = DEFAULT_FIELDS) -> Parsed:
    """records.parse_record for one row of csv_chunks; bytes that were not UTF-8 make it bad."""
    for field, key in zip(("text", "lang", "id"), fields, strict=True):
        value = item.get(key)
        if value is not None and (m := _UNDECODED.search(value)):
            return None, f"field {fields.option(field)} is not UTF-8 text (byte 0x{ord(m.group()) - 0xDC00:02x})", None
    return parse_record(item, lineno, served, fields)


def _columns(header: list[str], fields: FieldNames, name: str) -> dict[str, int]:
    """Column index of each of `fields` the header has, and of another tool's name for lang or id where xtm's is
    absent (read for parse_record's warning); XtmError without the text column or with one named twice."""
    wanted: dict[str, int] = {}
    as_keys = dict.fromkeys(header)
    for field, key in zip(("text", "lang", "id"), fields, strict=True):
        at = [i for i, h in enumerate(header) if h == key]
        if len(at) > 1:
            raise XtmError(f"the header names column {key!r} {len(at)} times (columns {at[0] + 1} and "
                           f"{at[1] + 1}): which one to read is not clear", path=name, line=1)
        if at:
            wanted[key] = at[0]
            continue
        others = set(names_for(as_keys, field)) if key == field else set()  # (once: a header may be 100k wide)
        near = [h for h in header if h not in fields and (h.strip().lower() == key.lower() or h in others)]
        if field == "text" or key != field:
            shown = ", ".join(repr(h) for h in header[:20]) + (", ..." if len(header) > 20 else "")
            hint = f": --{field}-field {shlex.quote(near[0])} reads {near[0]!r}" if near else \
                " (the first line is read as the header)"
            raise XtmError(f"the header has no {fields.option(field)} column (it has {shown}){hint}", path=name,
                           line=1)
        if near:
            wanted[near[0]] = header.index(near[0])
    return wanted


def _broken(e: csv.Error, start: int, end: int, delimiter: str) -> str:
    """Why a CSV cannot be read on from line `start`, and what to do."""
    if "field larger than field limit" in str(e):
        return (f"a cell longer than {MAX_LINE_BYTES:,} characters (from line {start}): not a CSV this reader takes "
                "(JSONL or Parquet take long records)")
    # (TSV is read with CSV's quoting, as pandas, Python's csv module and Excel write it; a TSV that never quotes,
    # as Postgres COPY and Hive write it, breaks here only on a text that begins with a quote)
    unquoted = " (a TSV written without quoting, as Postgres COPY writes it: convert it to JSONL or Parquet)" \
        if delimiter == "\t" else ""
    if "unexpected end of data" in str(e):
        return (f"a quote opened on line {start} is never closed: lines {start}-{end} would be one cell; fix the "
                f"quoting (a text with a lone '\"' must be quoted, its quotes doubled), or export the file "
                f"again{unquoted}")
    return (f"malformed CSV ({e}): the rows after it cannot be told apart from pieces of this one; fix the quoting "
            f"(a text with '\"' must be quoted, its quotes doubled), or export the file again{unquoted}")


def _raise_field_limit() -> None:
    """The csv module's largest cell (a process-wide setting, 128 KiB by default) raised to MAX_LINE_BYTES, never
    lowered: a longer text is cut with a warning, as in JSONL, not refused."""
    if csv.field_size_limit() < MAX_LINE_BYTES:
        csv.field_size_limit(MAX_LINE_BYTES)

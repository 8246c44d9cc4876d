"""The inference engine: records in, xtm-infer's output lines out, bad records under one policy.

Every way documents reach a bundle in batch runs goes through this module, so they all give the
same bytes and the same bad-record reports: `xtm-infer` (it parses flags, opens files and prints
the summary; the rest is here), the Ray engine (`xtm.runtime.ray`: each actor runs
`Engine.infer` on its batch, the driver writes through an `OutputWriter`) and Python:

    from xtm.runtime import TopicModel
    from xtm.runtime.engine import InferenceOptions, infer_file

    model = TopicModel.load("bundles/ecnews")

    # A JSONL or Parquet file (or "-", or a binary stream) to a file, like
    # `xtm-infer docs.jsonl --out topics.jsonl --top-k 5`: written atomically, never half.
    counts = infer_file("docs.jsonl", model, "topics.jsonl", options=InferenceOptions(top_k=5))
    print(counts.written, counts.skipped)

    # Records from anywhere (dicts: "text", optional "lang" and "id") to output lines, lazily.
    for line in model.infer_records(rows, top_k=5):      # or engine.infer_records(model, rows)
        result = json.loads(line)                        # {"id", "lang", ..., "theta", "topics"}

`TopicModel.infer(texts)` stays the array API (theta, top topics as numpy); this module adds what a
pipeline needs around it: ids carried through, xtm-infer's line format (`records.LineFormatter`),
memory that stays flat on any input length (chunks of 4 encoder batches), and the bad-record policy:

- A bad record (unreadable JSON, no text, a language the route cannot read, a document inference
  fails on alone) is reported through `report(message)` as WHERE:LINE: reason and skipped.
  `strict` makes the first one an XtmError, `max_bad` N the (N+1)th, `max_bad` "P%" (or
  `max_share`, 0..1) the end of the run when a larger share of records was bad. Good lines before
  the failing record are still written (to a file, the atomic replace then never happens).
- Outcome, what `xtm-infer` turns into its exit status: `InferenceCounts` (results written: 0),
  `NoResultsError` (nothing could be inferred: 1), any other XtmError (2).

Every option (`InferenceOptions`, declared with `xtm.config.setting`: default, help, flag, range) and
the routes (`ROUTES`) are defined here once: xtm-infer's flags are made from the declaration
(`xtm.cli.options`), and the Python functions here, `TopicModel.infer_records` and the Ray engine take
`options=` plus keyword overrides of its fields. Cheap to import (no numpy, no onnxruntime): the CLI
reads the declarations at start-up; the model comes in as an argument.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import numbers
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, cast

from xtm.config import Cli, setting
from xtm.cpu import usable_cores
from xtm.errors import TransientError, XtmError
from xtm.languages import normalize_lang
from xtm.runtime import delimited, records
from xtm.runtime.records import LineFormatter, Parsed, TableShape, TableStream, encode_lines

if TYPE_CHECKING:
    from xtm.runtime.model import TopicModel

__all__ = ["CHUNK_BATCHES", "RAY_THREADS_PER_ACTOR", "ROUTES", "ROUTE_HELP", "BadLines", "Engine",
           "check_lang_served", "check_min_lang_conf", "InferenceCounts", "InferenceOptions", "NoResultsError",
           "OutputWriter", "Row", "WorkerPool", "check_route", "infer_file", "infer_records", "no_contextual_route",
           "open_output", "parse_max_bad", "sink_writer", "table_shape"]

logger = logging.getLogger(__name__)

# How documents reach theta: "bow" the training languages' bag-of-words encoders; "contextual" the
# bundle's multilingual sentence encoder (any language it knows); "auto" what the bundle's contextual
# entry says (`auto_route`): every language through the contextual route (new runs, issue 14: a
# document and its translation through the same network), or bag of words for the training languages
# and contextual for the others (bundles before issue 14); = "bow" for a bundle without a contextual route.
ROUTES = ("auto", "bow", "contextual")
ROUTE_HELP = ("auto: as the bundle's manifest says (auto_route): contextual (every new bundle) reads every language "
              "the sentence encoder knows through the contextual route; bow or none (older bundles): bag of words "
              "for the training languages, the contextual route for the others; no contextual route: bag of "
              "words. bow: training languages only. contextual: every document in a language the sentence "
              "encoder knows.")
# Records per engine step (local chunks, Ray actor calls): 4 encoder batches, so per-step overhead
# (formatting set-up, Arrow conversion, scheduling) stays small next to tokenizing and the encoder.
CHUNK_BATCHES = 4
# onnxruntime threads of each Ray actor when not given (the local engine lets onnxruntime choose).
RAY_THREADS_PER_ACTOR = 1
# Seconds before a batch whose inference raised is tried once more, before it is tried a document at a time.
RETRY_PAUSE_S = 1.0
# The most inference worker processes per usable core (a worker may wait on I/O; beyond this, memory only).
WORKERS_PER_CORE_MAX = 4


def check_route(route: Any) -> str:
    """`route` when it is one of ROUTES; XtmError naming them otherwise."""
    if route not in ROUTES:
        raise XtmError(f"route must be one of {', '.join(ROUTES)}, got {route!r}")
    return route


def no_contextual_route(bundle: str | Path | None, languages: Sequence[str] | None = None) -> XtmError:
    """The error for a contextual route a bundle does not have. With `languages` (a caller that did
    not ask for the route by flag): what the bundle can read instead."""
    how = "export a run that has one: xtm-contextual RUN_DIR, then xtm-export"
    if languages is None:
        return XtmError(f"--route contextual: this bundle has no contextual route ({how})", path=bundle)
    return XtmError(f"this bundle has no contextual route ({how}); it reads only its training languages: "
                    f"{', '.join(languages)}", path=bundle)


def parse_max_bad(value: str | int | None) -> tuple[int | None, float | None]:
    """--max-bad N or P%: (count, None) or (None, share in [0, 1]); (None, None) for no limit."""
    if value is None:
        return None, None
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise XtmError(f"--max-bad must be at least 0, got {value}")
        return value, None
    text = str(value).strip()
    try:
        if text.endswith("%"):
            share = float(text[:-1])
            if not 0 <= share <= 100:
                raise ValueError
            return None, share / 100
        count = int(text)
        if count < 0:
            raise ValueError
        return count, None
    except ValueError:
        raise XtmError(f"--max-bad takes a number of lines (10) or a percentage (0.5%), got {value!r}") from None


def check_min_lang_conf(value: Any) -> float:
    """`value` as the float a detection's confidence is compared with; XtmError unless a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) < 1.0:
        raise XtmError(f"min_lang_conf must be a number from 0 to under 1 (1 would refuse every detection), got "
                       f"{value!r}")
    return float(value)


def check_lang_served(options: InferenceOptions, served: Sequence[str] | None) -> None:
    """Refuse options.lang when the route does not serve it (before any work: the driver checks it for Ray)."""
    lang = options.lang
    if lang is not None and served is not None and lang not in served:
        raise XtmError(f"--lang '{lang}' is not served by this bundle on route {options.route} (it serves "
                       f"{', '.join(served)})")


def whole_number(name: str, value: Any, low: int = 1) -> int:
    """`value` as a plain int when it is a whole number >= low (numpy integers too); XtmError otherwise.

    The one check for every count the runtime takes (options, workers, TopicModel's arguments, Ray's
    actors), so each gives the same message."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise XtmError(f"{name} must be a whole number of at least {low}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class InferenceOptions:
    """How a batch run infers and writes, and when bad records stop it (xtm-infer's flags).

    top_k: topics listed per document. batch_size: documents per encoder call. route: see ROUTES.
    full_theta: all K weights per line, or only the top-k as {topic_id: weight}. strict / max_bad /
    max_share: the bad-record policy (module docstring); max_bad takes a count or "P%" (which sets
    max_share). threads: onnxruntime threads where the engine loads the model itself (xtm-infer,
    each Ray actor); a TopicModel already loaded keeps its own.

    Declared like every other configuration (`xtm.config.setting`, decision 12 of docs/architecture.md):
    xtm-infer's flags are made from these fields (`xtm.cli.options`), and the Python functions take
    `options=` plus keyword overrides of these fields (`with_overrides`).
    """

    top_k: int = setting(3, help="Topics listed per document (at most the bundle's K).", cli=Cli("--top-k", min=0))
    batch_size: int = setting(256, help="Documents per encoder call.", cli=Cli("--batch-size", min=1))
    route: str = setting("auto", help=ROUTE_HELP, cli=Cli("--route", choices=ROUTES))
    full_theta: bool = setting(True, help="All K topic weights, or only the top-k as {topic_id: weight}.",
                               cli=Cli("--full-theta", off="--sparse-theta"))
    strict: bool = setting(False, help="Fail (exit 2) at the first bad line instead of skipping it.",
                           cli=Cli("--strict", switch=True))
    max_bad: int | str | None = setting(
        None, help="Fail (exit 2) when more than N lines, or more than P percent of the lines, are bad.",
        cli=Cli("--max-bad", type=str, metavar="N|P%"))
    max_share: float | None = setting(None, help="Fail at the end when a larger share (0 to 1) of the records was "
                                                 "bad; max_bad \"P%\" (--max-bad P%) sets it.")
    threads: int | None = setting(
        None, help=f"onnxruntime threads (local default: all cores; ray: per actor, default {RAY_THREADS_PER_ACTOR}).",
        cli=Cli("--threads", type=int, min=1))
    # At the end: positional callers of the fields above keep their meaning.
    lang: str | None = setting(
        None, help="Language (ISO 639-1 code) of every line that names none, instead of detecting it: for plain text "
                   "files (--input-format text) and records without a lang field.",
        cli=Cli("--lang", type=str, metavar="CODE"))
    min_lang_conf: float = setting(
        0.0, help="A detected language under this probability (0 to under 1) makes the line unsupported, a bad line, "
                  "instead of a guess: a text of a word or two ('bank market', a spreadsheet cell) is read as the "
                  "served language it most resembles with a low lang_conf (0.02-0.1; a sentence: 0.98). Given "
                  "languages are not judged. 0: every detection is taken.",
        cli=Cli("--min-lang-conf", min=0, max=1, max_open=True, metavar="P"))
    text_field: str = setting("text", help="The input field (JSONL key, Parquet column) holding a record's text.",
                              cli=Cli("--text-field", metavar="NAME"))
    lang_field: str = setting("lang", help="The input field holding a record's language (absent or null: detected).",
                              cli=Cli("--lang-field", metavar="NAME"))
    id_field: str = setting("id", help="The input field holding a record's id, written as the output's \"id\" "
                                       "(absent: the line or row number).", cli=Cli("--id-field", metavar="NAME"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            # the whole-number settings' declared lower bound (--top-k 0 and up, --batch-size and --threads 1 and up)
            spec = f.metadata.get("cli")
            if spec is not None and spec.min is not None and (spec.type or type(f.default)) is int \
                    and getattr(self, f.name) is not None:
                object.__setattr__(self, f.name, whole_number(f.name, getattr(self, f.name), int(spec.min)))
        check_route(self.route)
        records.check_fields(self.text_field, self.lang_field, self.id_field)
        object.__setattr__(self, "min_lang_conf", check_min_lang_conf(self.min_lang_conf))
        if self.lang is not None:
            if not isinstance(self.lang, str):
                raise XtmError(f"lang must be a language code, got {type(self.lang).__name__}")
            object.__setattr__(self, "lang", normalize_lang(self.lang))
        count, share = parse_max_bad(self.max_bad)
        if share is not None:
            if self.max_share is not None and self.max_share != share:
                raise XtmError(f"max_bad {self.max_bad!r} and max_share {self.max_share} disagree: give one")
            object.__setattr__(self, "max_share", share)
        object.__setattr__(self, "max_bad", count)
        if self.max_share is not None and not 0 <= self.max_share <= 1:
            raise XtmError(f"max_share must be in [0, 1], got {self.max_share}")

    @classmethod
    def with_overrides(cls, options: InferenceOptions | None, overrides: Mapping[str, Any],
                       caller: str) -> InferenceOptions:
        """`options` (default: every field's default) with the fields `overrides` names replaced: what the Python
        functions taking `options=` and keyword arguments build. A keyword that names no field is an XtmError
        naming it and `caller` (a misspelt top_k must not be dropped or a TypeError from deep inside)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in overrides if k not in names]
        if unknown:
            raise XtmError(f"{caller}: unknown keyword argument{'s' if len(unknown) > 1 else ''} "
                           f"{', '.join(map(repr, unknown))} (InferenceOptions fields: {', '.join(names)})")
        if options is None:
            return cls(**overrides)
        if not isinstance(options, cls):
            raise XtmError(f"{caller}: options must be an InferenceOptions, got {type(options).__name__}")
        return dataclasses.replace(options, **overrides) if overrides else options

    @property
    def fields(self) -> records.FieldNames:
        """The input fields read as a record's text, language and id."""
        return records.FieldNames(self.text_field, self.lang_field, self.id_field)

    def policy(self, report: Callable[[str], None]) -> BadLines:
        """A fresh bad-record tally with these limits, reporting through `report`."""
        return BadLines(report, strict=self.strict, max_bad=self.max_bad, max_share=self.max_share)


# -- outcome and policy ----------------------------------------------------------------------------


class NoResultsError(XtmError):
    """Not one input row could be inferred (empty input, or every row bad): xtm-infer exits 1 and
    writes no --out file. total/skipped: the rows read and skipped."""

    total = skipped = 0


@dataclass(frozen=True)
class InferenceCounts:
    """What a run did: rows read (non-blank lines, Parquet rows, records), rows skipped as bad."""

    total: int
    skipped: int

    @property
    def written(self) -> int:
        return self.total - self.skipped


_DISTINCT_WARNINGS = 1000


class BadLines:
    """The count of rows read, bad and written, and the rules that stop a run on bad rows.

    strict: the first bad row is fatal. max_bad: more than that many bad rows is fatal, at the row
    that exceeds it. max_share: judged at the end (`finish`), when the share of bad rows over all
    rows read exceeds it. Fatal means XtmError: an --out file is then not written at all."""

    def __init__(self, report: Callable[[str], None], *, strict: bool = False, max_bad: int | None = None,
                 max_share: float | None = None) -> None:
        self.report, self.strict, self.max_bad, self.max_share = report, strict, max_bad, max_share
        self.total = self.skipped = 0
        # a warning said on many rows (a misnamed field on every line) is reported at its first row, then counted
        self._repeats: dict[str, int] = {}

    @property
    def written(self) -> int:
        return self.total - self.skipped

    def counts(self) -> InferenceCounts:
        return InferenceCounts(self.total, self.skipped)

    def bad(self, where: str, line: int, reason: str) -> None:
        """One bad row: reported as WHERE:LINE: reason, or XtmError when it makes the run fail."""
        self.skipped += 1
        if self.strict:
            raise XtmError(reason, path=where, line=line)
        if self.max_bad is not None and self.skipped > self.max_bad:
            raise XtmError(f"{reason}; too many bad lines: more than {self.max_bad} (--max-bad)", path=where,
                           line=line)
        self.report(f"{where}:{line}: {reason}")

    def warn(self, where: str, line: int, text: str) -> None:
        """A warning about a row that is served: reported as WHERE:LINE: warning: text the first time; the same text
        again is counted, and `finish` says on how many more rows (up to _DISTINCT_WARNINGS distinct texts are
        remembered; past them every warning is reported)."""
        if text in self._repeats:
            self._repeats[text] += 1
            return
        if len(self._repeats) < _DISTINCT_WARNINGS:
            self._repeats[text] = 0
        self.report(f"{where}:{line}: warning: {text}")

    def finish(self, name: str, *, require_results: bool = True) -> InferenceCounts:
        """End-of-run checks: the share of bad rows, and (require_results) that something was inferred."""
        for text, more in self._repeats.items():
            if more:
                self.report(f"{name}: the same warning on {more:,} more line{'s' if more > 1 else ''}: {text}")
        self._repeats.clear()
        if self.max_share is not None and self.total and self.skipped / self.total > self.max_share:
            share = 100 * self.skipped / self.total
            raise XtmError(f"too many bad lines: {self.skipped} of {self.total} ({share:.2f}%, --max-bad "
                           f"{100 * self.max_share:g}%)", path=name)
        if require_results and self.written == 0:
            e = NoResultsError("no documents in the input" if self.total == 0 else
                               f"no line could be inferred: all {self.total} lines were bad", path=name)
            e.total, e.skipped = self.total, self.skipped
            raise e
        return self.counts()


# -- one model: parsed records -> rows -------------------------------------------------------------


class Row(NamedTuple):
    """One record's outcome: its output line (None when bad), why it is bad, a warning about it."""

    output: str | None
    error: str | None
    warning: str | None


class Engine:
    """One model and its options: records parsed against the route, inferred, formatted.

    Stateless after construction, so one Engine serves any number of chunks (a Ray actor keeps
    one). `bundle` names the bundle in errors (default: the model's directory)."""

    def __init__(self, model: TopicModel, options: InferenceOptions | None = None, *,
                 bundle: str | Path | None = None) -> None:
        self.model = model
        self.options = options or InferenceOptions()
        if self.options.route == "contextual" and not model.has_contextual:
            raise no_contextual_route(bundle if bundle is not None else model.manifest.directory)
        # Languages a good record may name on this route (None: any valid code).
        self.served = model.served_languages(self.options.route)
        self.fields = self.options.fields
        check_lang_served(self.options, self.served)
        self.formatter = LineFormatter(model, full_theta=self.options.full_theta)

    @property
    def chunk_size(self) -> int:
        """Records per step: memory holds one chunk's documents and results, whatever the input length."""
        return self.options.batch_size * CHUNK_BATCHES

    def parse_line(self, raw: bytes | None, lineno: int) -> Parsed:
        """A JSONL line (raw None: over-long) checked against the route (`records.parse_line`)."""
        return records.parse_line(raw, lineno, self.served, self.fields)

    def parse_text_line(self, raw: bytes | None, lineno: int) -> Parsed:
        """A line of plain text: the whole line is the document, its id the line number, its
        language detected (`records.decode_text_line`; the field names do not apply)."""
        obj, error = records.decode_text_line(raw)
        if obj is None:
            return None, error, None
        return records.parse_record(obj, lineno, self.served)

    def parse_record(self, obj: Any, lineno: int, fields: records.FieldNames | None = None) -> Parsed:
        """A decoded record (JSON object, Parquet row, Python mapping) checked against the route; `fields`
        (default: the options') name its text, language and id."""
        fields = fields or self.fields
        if not isinstance(obj, Mapping):
            return None, f"expected a record (a mapping with a {fields.text!r} field), got {type(obj).__name__}", None
        return records.parse_record(obj if isinstance(obj, dict) else dict(obj), lineno, self.served, fields)

    def infer(self, parsed: Sequence[Parsed]) -> list[Row]:
        """One Row per parsed record, in order: its line, or the reason it is bad (a parse error,
        an unsupported language, a document inference fails on alone)."""
        results = iter(self._infer_docs([doc for doc, _, _ in parsed if doc is not None]))
        rows: list[Row] = []
        for doc, error, warning in parsed:
            line = None
            if doc is not None:
                line, error = next(results)
            rows.append(Row(line, error, warning))
        return rows

    def run(self, chunks: Iterable[Sequence[tuple[int, Parsed]]], out: OutputWriter, where: str,
            on_rows: Callable[[int], None] | None = None) -> None:
        """Infer and write chunk by chunk, in input order (see OutputWriter.take for bad rows)."""
        for chunk in chunks:
            try:
                rows = self.infer([p for _, p in chunk])
            except XtmError as e:
                if not chunk:
                    raise
                # which records: a long run's stop names the lines it was at (nothing is written: see the caller)
                raise XtmError(f"lines {chunk[0][0]}-{chunk[-1][0]}: {e.reason}", path=e.path or where,
                               line=e.line, field=e.field) from e
            out.take((where, lineno, row) for (lineno, _), row in zip(chunk, rows, strict=True))
            if on_rows is not None:
                on_rows(len(chunk))

    def _infer_docs(self, docs: Sequence[dict[str, Any]], again: bool = True) -> list[tuple[str | None, str | None]]:
        """(output line, None) or (None, error) for each parsed document, in order.

        The documents are inferred together; if that raises, one by one, so a document that breaks a
        tokenizer or an encoder costs its own line only. An unsupported document (see
        InferenceResult.unsupported) is an error with the reason. When every document fails alone with
        the same error, the cause is not in the documents: the batch is tried once more after a pause
        (`again`: a machine briefly out of threads or memory failed a whole batch, which stopped a long
        run), then XtmError (a broken model). (Pausing before the one-by-one pass cost every chunk holding
        one bad document a second.)"""
        if not docs:
            return []
        o = self.options
        try:
            res = self.model.infer([d["text"] for d in docs], [d["lang"] or o.lang for d in docs],
                                   batch_size=o.batch_size, top_k=o.top_k, route=o.route, min_lang_conf=o.min_lang_conf)
            lines = self.formatter.lines(res, [d["id_json"] for d in docs])
        except Exception as e:
            logger.debug("inference of a batch failed", exc_info=e)  # (-v: the traceback, for a report)
            if len(docs) == 1:
                return [(None, f"cannot infer this document: {_describe(e)}")]
            out = [self._infer_docs([d])[0] for d in docs]
            errors = {err for line, err in out if line is None}
            if all(line is None for line, _ in out) and len(errors) == 1:
                # (an XtmError says why itself and would come again, unless it is a passing shortage)
                if again and (isinstance(e, TransientError) or not isinstance(e, XtmError)):
                    logger.warning(f"inference of {len(docs)} documents failed alike, each alone too ({_describe(e)}); "
                                   f"trying them again in {RETRY_PAUSE_S:g} s")
                    time.sleep(RETRY_PAUSE_S)
                    return self._infer_docs(docs, again=False)
                raise XtmError(f"inference failed for each of these {len(docs)} documents alone, with the same "
                               f"error, so the cause is not in them (a damaged bundle, a machine out of memory or "
                               f"threads): {_describe(e)}") from e
            return out
        return [(line, None) if line is not None else (None, res.notes[i] or "unsupported")
                for i, line in enumerate(lines)]


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, XtmError) else f"{type(e).__name__}: {e}"


# -- rows -> a sink --------------------------------------------------------------------------------


class OutputWriter:
    """Good rows' lines to `write` in input order; bad rows and warnings through the policy.

    `write` takes a list of lines (see `sink_writer` for a binary stream)."""

    def __init__(self, policy: BadLines, write: Callable[[list[str]], None]) -> None:
        self.policy, self.write = policy, write

    def take(self, rows: Iterable[tuple[str, int, Row]]) -> None:
        """(where, line number, Row) for each row read, in input order. When a bad row is fatal
        (strict, max_bad), the good lines before it are written first, then XtmError is raised."""
        good: list[str] = []
        tally = self.policy
        try:
            for where, lineno, row in rows:
                tally.total += 1
                if row.error is not None:
                    tally.bad(where, lineno, row.error)
                    continue
                if row.warning is not None:
                    tally.warn(where, lineno, row.warning)
                good.append(row.output)  # type: ignore[arg-type]  # good rows have a line
        except XtmError:
            if good:
                self.write(good)
            raise
        if good:
            self.write(good)


def table_shape(model: TopicModel, options: InferenceOptions) -> TableShape:
    """The columns a CSV or Parquet output of `model` under `options` has."""
    return TableShape(model.num_topics, options.top_k, options.full_theta, labels=model.has_labels)


@contextlib.contextmanager
def open_output(out: str | Path | IO[bytes] | None, policy: BadLines, *, fmt: str = "jsonl",
                shape: TableShape | None = None) -> Iterator[OutputWriter]:
    """An OutputWriter to `out`: a path, written atomically (replaced only when the block ends
    without an error: a failed run never leaves half a file, nor touches the previous one), a
    binary stream, or None for stdout, where a reader that leaves (`| head`) is BrokenPipeError.

    fmt: "jsonl" (the lines as they are), "csv" or "parquet" (`records.TableStream`, which needs
    `shape`: see `table_shape`); a table is finished when the block ends without an error."""
    if fmt != "jsonl" and shape is None:
        raise XtmError(f"a {fmt} output needs the table's shape (engine.table_shape)")
    if isinstance(out, (str, Path)):
        from xtm.atomic import atomic_open

        with atomic_open(out, "wb") as f:
            with _as_table(f, fmt, shape, str(out)) as sink:
                yield OutputWriter(policy, sink_writer(sink, str(out)))
        return
    base = _stdout_bytes(fmt) if out is None else out
    name = "<stdout>" if out is None else str(getattr(out, "name", "<output>"))
    with _as_table(base, fmt, shape, name) as sink:
        yield OutputWriter(policy, sink_writer(sink, name, pass_broken_pipe=out is None))


def _stdout_bytes(fmt: str) -> IO[bytes]:
    """sys.stdout as a binary stream: its buffer, or, where it has none (a Jupyter kernel's stdout is text only),
    the UTF-8 lines decoded onto it; a Parquet file cannot be."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        return buffer
    if fmt == "parquet":
        raise XtmError("Parquet output needs a file (this stdout takes text only): pass out=PATH")
    return cast(IO[bytes], _TextStdout(sys.stdout))


class _TextStdout:
    """UTF-8 bytes written to a text stream, which it never closes."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, data: bytes) -> int:
        self._stream.write(data.decode("utf-8"))
        return len(data)

    def flush(self) -> None:
        self._stream.flush()


@contextlib.contextmanager
def _as_table(sink: IO[bytes], fmt: str, shape: TableShape | None, name: str) -> Iterator[Any]:
    """`sink` itself for JSONL; a TableStream over it, closed (finished) on success, for csv/parquet."""
    if fmt == "jsonl":
        yield sink
        return
    assert shape is not None
    table = TableStream(sink, fmt, shape, name)
    yield table
    try:
        table.close()
    except BrokenPipeError:
        raise
    except OSError as e:
        raise XtmError(f"cannot write: {e.strerror or e}", path=name) from e


def sink_writer(sink: IO[bytes], name: str, *, pass_broken_pipe: bool = False) -> Callable[[list[str]], None]:
    """A `write` for OutputWriter: lines as UTF-8 to `sink`, flushed, errors as one XtmError naming
    `name`. pass_broken_pipe: a reader that left is BrokenPipeError, for a caller that stops
    quietly (`xtm-infer ... | head`); otherwise it is an error (a FIFO closed before the end)."""
    def write(lines: list[str]) -> None:
        try:
            sink.write(encode_lines(lines))
            sink.flush()
        except BrokenPipeError as e:
            if pass_broken_pipe:
                raise
            raise XtmError("cannot write: its reader went away (a FIFO closed before the end)", path=name) from e
        except OSError as e:  # a full disk, a quota, an I/O error: a clean error, the temporary removed
            raise XtmError(f"cannot write: {e.strerror or e}", path=name) from e

    return write


# -- sources: parsed chunks -------------------------------------------------------------------------


def _line_chunks(stream: IO[bytes], name: str, size: int,
                 parse: Callable[[bytes | None, int], Parsed]) -> Iterator[list[tuple[int, Parsed]]]:
    """Lists of up to `size` parsed lines (`parse`: Engine.parse_line for JSONL, parse_text_line for plain
    text), each parsed as soon as it is read: a chunk holds its documents (texts cut to MAX_CHARS), never
    the raw lines."""
    lines = records.naming_read_errors(records.read_lines(stream), name)
    yield from records.chunked(((n, parse(raw, n)) for n, raw in lines), size)


def _parsed_chunks(engine: Engine, fmt_in: str,
                   raw: Iterable[list[tuple[int, Any]]]) -> Iterator[list[tuple[int, Parsed]]]:
    """Chunks of records read whole (Parquet rows, CSV/TSV rows: `_raw_records`) parsed in this process, as a
    worker parses them (`_parse_chunk`)."""
    for chunk in raw:
        yield [(n, p) for (n, _), p in zip(chunk, _parse_chunk(engine, fmt_in, chunk), strict=True)]


def _record_chunks(engine: Engine, items: Iterable[Any]) -> Iterator[list[tuple[int, Parsed]]]:
    parsed = ((n, engine.parse_record(obj, n)) for n, obj in enumerate(items, start=1))
    yield from records.chunked(parsed, engine.chunk_size)


# -- the Python API ---------------------------------------------------------------------------------


def infer_records(model: TopicModel, items: Iterable[Mapping[str, Any]], *, options: InferenceOptions | None = None,
                  report: Callable[[str], None] | None = None, where: str = "<records>",
                  **overrides: Any) -> Iterator[str]:
    """xtm-infer's output line (JSON, no newline) for each good record of `items`, in order, lazily.

    A record is a mapping with "text" and optionally "lang" (detected when absent) and "id" (its
    1-based position when absent), as a JSONL line holds (options.text_field, lang_field and id_field
    name other keys). `overrides`: InferenceOptions fields by name (top_k=5), replacing those of
    `options` (checked now, not at the first record). Bad records are reported through
    `report` (default: this module's logger, warning level) as WHERE:N: reason and skipped, or end
    the iteration with XtmError under options.strict / max_bad, after the good lines before them;
    max_share is judged when `items` is exhausted. Input with nothing to infer yields nothing
    (no NoResultsError: that is a file run's outcome)."""
    options = InferenceOptions.with_overrides(options, overrides, "infer_records")
    return _record_lines(model, items, options, report, where)


def _record_lines(model: TopicModel, items: Iterable[Mapping[str, Any]], options: InferenceOptions,
                  report: Callable[[str], None] | None, where: str) -> Iterator[str]:
    engine = Engine(model, options)
    tally = engine.options.policy(report or logger.warning)
    pending: list[str] = []
    out = OutputWriter(tally, pending.extend)
    for chunk in _record_chunks(engine, items):
        rows = engine.infer([p for _, p in chunk])
        try:
            out.take((where, n, row) for (n, _), row in zip(chunk, rows, strict=True))
        except XtmError:
            yield from pending
            raise
        yield from pending
        pending.clear()
    tally.finish(where, require_results=False)


def infer_file(source: str | Path | IO[bytes], model: TopicModel, out: str | Path | IO[bytes] | None = None, *,
               options: InferenceOptions | None = None, report: Callable[[str], None] | None = None,
               bundle: str | Path | None = None, on_rows: Callable[[int], None] | None = None,
               input_format: str | None = None, output_format: str | None = None,
               workers: int = 1, **overrides: Any) -> InferenceCounts:
    """`xtm-infer SOURCE --out OUT` (local engine) as a function: counts of rows read and skipped.

    source: a JSONL file, a Parquet file (.parquet, .pq), a plain-text file (.txt: one document per
    line), a CSV or TSV file (.csv, .tsv: a header row, then a record a row; `xtm.runtime.delimited`),
    "-" for stdin, or a binary stream. input_format: "jsonl", "text", "parquet", "csv" or "tsv"
    (default: by the name, `records.input_format`; stdin and streams are JSONL). out: a path, written
    atomically (the previous file stays unless the run succeeds; an existing file that is not an
    xtm-infer output is refused first, `records.check_out_path`), a binary stream, or None for
    stdout (a reader that leaves raises BrokenPipeError). output_format: "jsonl", "csv" or
    "parquet" (default: by out's name, `records.output_format`). Bad rows go to `report`
    (default: the logger) as SOURCE:LINE: reason; raises XtmError when the policy stops the run,
    NoResultsError when nothing could be inferred (neither writes a path `out`).
    bundle: the name errors give the bundle; on_rows(n): after each chunk of n rows is written.
    workers: processes that parse, tokenize and infer chunks in parallel, each with its own copy of
    the model (`WorkerPool`); the output and the bad-row reports are those of one process, byte for
    byte. 1 (default): everything in this process. `overrides`: InferenceOptions fields by name (top_k=5),
    replacing those of `options`."""
    options = InferenceOptions.with_overrides(options, overrides, "infer_file")
    workers = whole_number("workers", workers)
    cores = len(usable_cores())
    if workers > WORKERS_PER_CORE_MAX * cores:
        # each worker is an interpreter with its own copy of the model (~300 MB with the contextual graph): a typo's
        # --workers 1000 filled the memory and the process table before the first document
        raise XtmError(f"workers={workers}: more than {WORKERS_PER_CORE_MAX} per core ({cores} here) adds memory, "
                       "not speed")
    name = _source_name(source)
    fmt_in = records.input_format("-" if name in ("<stdin>", "<stream>") else name, input_format)
    if fmt_in == "text" and options.fields != records.DEFAULT_FIELDS:
        raise XtmError("plain text has no fields: --text-field, --lang-field and --id-field name fields of JSONL or "
                       "Parquet records (each line of text is a document, its id the line number)", path=name)
    if fmt_in == "parquet" and name in ("<stdin>", "<stream>"):
        raise XtmError("Parquet is read from a file, not from a stream or stdin", path=name)
    fmt_out = records.output_format(out if isinstance(out, (str, Path)) else None, output_format)
    records.check_out_path(out if isinstance(out, (str, Path)) else None,
                           [] if name in ("<stdin>", "<stream>") else [name])
    engine = Engine(model, options, bundle=bundle)
    tally = options.policy(report or logger.warning)
    with contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(WorkerPool(model, options, workers, bundle=bundle))
            raw = _raw_records(engine, fmt_in, source, name, stack) if fmt_in in _RECORD_FORMATS else \
                _raw_line_chunks(engine, _open_source(source, name, stack), name)
            writer = stack.enter_context(open_output(out, tally, fmt=fmt_out, shape=table_shape(model, options)))
            pool.run(fmt_in, raw, writer, name, on_rows)
            return tally.finish(name)
        if fmt_in in _RECORD_FORMATS:
            chunks = _parsed_chunks(engine, fmt_in, _raw_records(engine, fmt_in, source, name, stack))
        else:
            parse = engine.parse_text_line if fmt_in == "text" else engine.parse_line
            chunks = _line_chunks(_open_source(source, name, stack), name, engine.chunk_size, parse)
        writer = stack.enter_context(open_output(out, tally, fmt=fmt_out, shape=table_shape(model, options)))
        engine.run(chunks, writer, name, on_rows)
        return tally.finish(name)  # raising here leaves a path `out` unwritten


def _source_name(source: str | Path | IO[bytes]) -> str:
    """The name of the input in messages."""
    if isinstance(source, (str, Path)):
        s = str(source)
        return "<stdin>" if s == "-" else s
    return "<stream>"


def _open_source(source: str | Path | IO[bytes], name: str, stack: contextlib.ExitStack) -> IO[bytes]:
    if not isinstance(source, (str, Path)):
        return source
    if name == "<stdin>":
        return sys.stdin.buffer
    try:
        return stack.enter_context(open(source, "rb"))
    except OSError as e:
        raise XtmError(f"cannot read: {e.strerror}", path=name) from e


# -- worker processes (xtm-infer --workers) --------------------------------------------------------
#
# Tokenizing is most of the time per document (jieba, janome are Python), so a large file is read in
# chunks of raw lines that worker processes parse, tokenize, infer and format; this process keeps the
# order, the bad-row policy and the output, so the bytes written and the reports are those of one
# process. Workers are started fresh ("spawn": onnxruntime is not fork-safe once it has sessions),
# each loads the bundle (one onnxruntime thread unless --threads), ignores SIGINT (Ctrl-C reaches the
# whole process group; this process decides; workers start with SIGINT blocked, so a Ctrl-C while one
# is still importing cannot print its KeyboardInterrupt) and dies with this process (Linux:
# PR_SET_PDEATHSIG), so a signal or an error never leaves one behind. At most 2 chunks per worker are
# in flight, each of at most records.CHUNK_BYTES plus one line: memory stays flat whatever the input's
# length and however long its lines.

_worker_engine: Engine | None = None


def _raw_line_chunks(engine: Engine, stream: IO[bytes], name: str) -> Iterator[list[tuple[int, Any]]]:
    """records.line_chunks, an input I/O error as one XtmError naming the file."""
    return records.naming_read_errors(records.line_chunks(stream, engine.chunk_size), name)


# Formats whose readers give whole records (row number, record), not raw lines: Parquet, CSV and TSV.
_RECORD_FORMATS = ("parquet", *delimited.DELIMITERS)


def _raw_records(engine: Engine, fmt_in: str, source: str | Path | IO[bytes], name: str,
                 stack: contextlib.ExitStack) -> Iterator[list[tuple[int, Any]]]:
    """(row number, record) chunks of a Parquet, CSV or TSV input, unparsed; an input I/O error as one XtmError
    naming the file."""
    if fmt_in == "parquet":
        return records.parquet_chunks(name, engine.chunk_size, engine.fields)
    chunks = delimited.csv_chunks(_open_source(source, name, stack), engine.chunk_size, engine.fields,
                                  delimiter=delimited.DELIMITERS[fmt_in], name=name)
    return records.naming_read_errors(chunks, name)


def _worker_start(model_cls: type[TopicModel], bundle_dir: str, threads: int, providers: list[str],
                  options: InferenceOptions, bundle: str | None, segmenters: str, parent: int,
                  manifest_sha256: str | None) -> None:
    """A worker's initializer: signals as described above, then the parent's segmenters, its own model
    and Engine. The model's class comes in as an argument (pickled by name), so this module never
    imports the model's."""
    global _worker_engine
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):  # blocked by _sigint_blocked at spawn; pending ones are dropped
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):  # best effort: the pool also terminates its workers
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # it died before the line above: nobody would send that signal
            os._exit(1)
    from xtm.runtime.tokenize import use_segmenters

    use_segmenters(segmenters)
    # The parent's bundle, not one re-exported in place since the parent loaded it.
    model = model_cls.load_unchanged(bundle_dir, manifest_sha256, since="xtm-infer loaded it", advice="run it again",
                                     threads=threads, providers=providers)
    _worker_engine = Engine(model, options, bundle=bundle)


def _worker_infer(fmt_in: str, chunk: list[tuple[int, Any]]) -> list[Row]:
    """One chunk of raw lines (or Parquet, CSV or TSV records) -> its Rows, in order, as Engine.run makes them."""
    engine = _worker_engine
    assert engine is not None
    return engine.infer(_parse_chunk(engine, fmt_in, chunk))


def _parse_chunk(engine: Engine, fmt_in: str, chunk: list[tuple[int, Any]]) -> list[Parsed]:
    """A chunk as the raw readers give it, parsed by the rule of its format: the one definition, for a worker and
    for this process alike."""
    if fmt_in == "parquet":
        return [records.parse_parquet_row(obj, n, engine.served, engine.fields) for n, obj in chunk]
    if fmt_in in delimited.DELIMITERS:
        return [delimited.parse_csv_row(item, n, engine.served, engine.fields) for n, item in chunk]
    if fmt_in == "text":
        return [engine.parse_text_line(raw, n) for n, raw in chunk]
    return [engine.parse_line(raw, n) for n, raw in chunk]


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT held back in this thread, and so in any process it spawns (the mask is inherited across
    fork and exec); one that arrives meanwhile is delivered here when the block ends."""
    import signal

    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def stop_executor(executor: Any) -> None:
    """Stop a ProcessPoolExecutor now, leaving nothing Python's exit waits for: queued work dropped, the workers
    killed, the pool's manager thread finished."""
    procs = list(getattr(executor, "_processes", {}).values())
    # shutdown() forgets its manager thread and result queue; keep them for below.
    manager = getattr(executor, "_executor_manager_thread", None)
    results = getattr(executor, "_result_queue", None)
    executor.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        with contextlib.suppress(Exception):
            p.terminate()
    for p in procs:
        with contextlib.suppress(Exception):
            p.join(5)
    # A worker stopped while it was sending its rows (Ctrl-C reaches the whole process group) leaves half a
    # message in the result pipe, and the manager thread waits in recv() for the rest, which never comes while
    # this process holds the pipe's write end too: Python's exit then waited for that thread without a limit (a
    # reviewer's 2 runs in 30, gdb at concurrent.futures' _python_exit). Closing our write end once the workers are
    # gone ends that recv() (EOFError): the manager thread takes the pool as broken and finishes.
    if results is not None:
        with contextlib.suppress(Exception):
            results._writer.close()
    # Wait for the manager thread to close its wake-up pipe. Python 3.11's exit hook writes to that
    # pipe without a lock, so if the thread is still closing it at exit the hook prints
    # "OSError: Bad file descriptor" after a signal (about 1 run in 10).
    if manager is not None:
        manager.join(10)


class WorkerPool:
    """`workers` processes, each with its own copy of `model` (loaded from its bundle directory with
    the same providers), inferring chunks of raw input; `run` writes their rows in input order.

    A context manager: leaving it (normally, on an error, on a signal's SystemExit) stops the workers
    at once; a worker that dies (killed, out of memory) is an XtmError, never a hang."""

    def __init__(self, model: TopicModel, options: InferenceOptions, workers: int, *,
                 bundle: str | Path | None = None) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from xtm.runtime.tokenize import segmenter_mode

        self.workers = whole_number("workers", workers)
        threads = options.threads if options.threads is not None else 1
        self._executor = ProcessPoolExecutor(
            self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
            initargs=(type(model), str(model.manifest.directory.resolve()), threads, model.providers, options,
                      None if bundle is None else str(bundle), segmenter_mode(), os.getpid(), model.manifest_sha256))

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers now: queued chunks are dropped, running ones killed (they write nothing)."""
        stop_executor(self._executor)

    def run(self, fmt_in: str, chunks: Iterable[list[tuple[int, Any]]], out: OutputWriter, where: str,
            on_rows: Callable[[int], None] | None = None) -> None:
        """Engine.run with the chunks inferred by the workers: the same rows, written in input order."""
        from collections import deque
        from concurrent.futures.process import BrokenProcessPool

        pending: deque[tuple[list[int], Any]] = deque()
        limit = 2 * self.workers

        def write_oldest() -> None:
            linenos, future = pending.popleft()
            try:
                rows = future.result()
            except XtmError as e:  # (named as by one process: Engine.run)
                raise XtmError(f"lines {linenos[0]}-{linenos[-1]}: {e.reason}", path=e.path or where, line=e.line,
                               field=e.field) from e
            out.take((where, n, row) for n, row in zip(linenos, rows, strict=True))
            if on_rows is not None:
                on_rows(len(linenos))

        try:
            source, unreadable = iter(chunks), None
            while True:
                try:
                    chunk = next(source)
                except StopIteration:
                    break
                except XtmError as e:  # the input cannot be read on: what was read before it is written first,
                    unreadable = e     # as by one process (the output did not depend on --workers)
                    break
                with _sigint_blocked():  # submit is where the pool spawns its workers
                    future = self._executor.submit(_worker_infer, fmt_in, chunk)
                pending.append(([n for n, _ in chunk], future))
                if len(pending) >= limit:
                    write_oldest()
            while pending:
                write_oldest()
            if unreadable is not None:
                raise unreadable
        except BrokenProcessPool as e:  # at submit or at a result, whichever comes first
            raise XtmError(f"an inference worker process died ({e}); try fewer --workers, or --workers 1") from e

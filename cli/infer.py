"""xtm-infer: topic distributions for JSONL, text, Parquet, CSV or TSV documents with an exported bundle (no torch).

A thin shell over the inference engine (`xtm.runtime.engine`, local; `xtm.runtime.ray`, Ray): it
reads the flags (those of the engine's InferenceOptions made from its declaration by xtm.cli.options,
as xtm-train's are from xtm.config; the others, how to read and write and which engine, are this
command's), opens the bundle, hands the engine its input and output, prints the summary and turns
the outcome into the exit status. Only click, the error type and the engine's options are imported at module level;
numpy/onnxruntime/the tokenizers load inside `main`, so `--help` and bad flags answer instantly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import sys
import time
from typing import Any

import click

from xtm.cli import options as cli_options
from xtm.cli.common import friendly_errors, log_level_options, resolve_log_level, setup_logging, version_option
from xtm.errors import XtmError
from xtm.runtime.engine import InferenceOptions
from xtm.runtime.records import INPUT_FORMATS, OUTPUT_FORMATS

logger = logging.getLogger("xtm.cli.infer")
# Exit status when the reader of stdout went away (`xtm-infer ... | head`): 128 + SIGPIPE, what a
# shell reports for `cat`, `grep` or `sort` in the same place, and "128+N after signal N" below.
EXIT_BROKEN_PIPE = 128 + 13
# --segmenters' choices: xtm.runtime.tokenize.SEGMENTERS (not imported here: it pulls numpy into
# --help; tests/test_infer_workers.py checks they are the same).
SEGMENTERS = ("auto", "reference", "fast")
# Default --workers (see _workers): inputs smaller than this run in one process.
WORKERS_MIN_BYTES = 4 << 20
DEFAULT_MAX_WORKERS = 4

EPILOG = """\b
Examples:
  # one result line per input line, to stdout
  xtm-infer docs.jsonl --bundle bundles/ecnews
  # write atomically to a file, 5 topics per document, only their weights
  xtm-infer docs.jsonl --bundle bundles/ecnews --out topics.jsonl --top-k 5 --sparse-theta
  # from a pipe; stop at the first bad line
  cat docs.jsonl | xtm-infer - --bundle bundles/ecnews --strict > topics.jsonl
  # plain text, one document per line, to a spreadsheet-friendly CSV or to Parquet
  xtm-infer notes.txt --bundle bundles/ecnews --out topics.csv
  xtm-infer docs.parquet --bundle bundles/ecnews --out topics.parquet
  # on an NVIDIA GPU (pip install "xtm[gpu]"), the CPU as a fallback; -v says which one ran
  xtm-infer docs.jsonl --bundle bundles/ecnews --providers cuda,cpu -v --out topics.jsonl
  # French, German, Russian, ... documents through the bundle's contextual route
  xtm-infer unseen.jsonl --bundle bundles/ecnews --route auto
  # files and directories of JSONL and Parquet on a local Ray instance, 4 actors
  xtm-infer docs/ more.parquet --bundle bundles/ecnews --out topics.jsonl --engine ray --actors 4
  # on a running Ray cluster (the inputs on a file system every node sees)
  xtm-infer /shared/docs/ --bundle bundles/ecnews --out topics.jsonl --engine ray --address auto

\b
Routes (--route): a bundle reads its training languages with their
bag-of-words encoders. A bundle exported from a run with a contextual route
(xtm-contextual) also has a multilingual sentence encoder (USE multilingual
v3 by default: ar de en es fr it ja ko nl pl pt ru th tr zh) that maps any
text to the same topics. auto (default): what the bundle's manifest says in
"auto_route". contextual (every new run's default): every language the
encoder knows goes through the contextual route, the training languages
included (a training language it does not know keeps its bag of words);
bow, or no "auto_route" (older bundles): bag of words for the training
languages, the contextual route for the encoder's other languages. bow:
training languages only; contextual: every document in a language the
encoder knows. A language the route cannot read is a bad line. Without a
contextual route, auto is bow.

\b
Input (--input-format, default by the file name: .txt/.text text,
.parquet/.pq Parquet, .csv CSV, .tsv TSV, compressed files refused
(decompress them first), anything else and '-' JSONL):
JSONL, one object per line: {"id": ..., "text": "...", "lang": "en"}.
"lang" is optional: detected among every language the detector knows (not
only the bundle's), so a language the bundle cannot read is never read as
another one; give it when known (detection costs 0.1-0.2 ms a line). "id"
is copied to the output (the line number when absent; NaN/Infinity ids are
written as the strings "NaN", "Infinity"). Blank lines are ignored.
Parquet (.parquet/.pq): columns text, lang and id, the same rules; a null
cell counts as an absent field; the row number stands for the line number.
CSV/TSV (.csv/.tsv): the first row names the columns (text, lang, id), each
later row is a record; an empty cell is an absent field, ids are strings,
a row is numbered by the line it starts on, bytes that are not UTF-8 make a
bad row; broken quoting stops the run (exit 2) at its line, after the rows
before it.
--text-field, --lang-field and --id-field read other names (a pipeline's
"body", "locale", "doc_id"); the output still says "id" and "lang". A
renamed id field missing from a record is a warning (the line number is
written; a missing language is detected); a renamed column missing from a
Parquet or CSV file's columns, an error.
Text: each non-blank line is one document, its id the line number, its
language detected (UTF-8; a trailing \\r is dropped).

\b
Output: one JSON object per good input line, in input order:
{"id": ..., "lang": "en", "lang_conf": 0.976, "route": "bow", "empty": false,
"oov_ratio": 0.25, "theta": [K weights] (or {"topic_id": weight} for the top-k
with --sparse-theta), "topics": [{"id": k, "weight": w, "words": {"en": [...],
"zh": [...]}}, ...]}. lang_conf: the detector's probability of lang (null when
the input gave "lang"); route: "bow" or "contextual"; empty: true when no word
of the document is in the vocabulary (its theta is the model's prior for an
empty document: it says nothing about the document); oov_ratio: share of its
words outside the vocabulary (null on the contextual route). Weights are
rounded to 6 decimals. When the bundle has labels (xtm-train writes them,
xtm-label redoes them), each topic also has "label" after its id: in the
document's language for a training language, else in the first training
language that has one (null for a topic without any).
--format csv (default for --out *.csv): a header row, then per document id,
lang, lang_conf, route, empty, oov_ratio, topic_1, weight_1, ... topic_K',
weight_K' (K' = --top-k; with labels, label_i after each weight_i),
topic_1_words ("en: w1 w2 | zh: ..."), and with full theta theta_0 ...
theta_{K-1}; UTF-8, empty cells for null. An id or label a spreadsheet
would run as a formula (starting with = + - @, a tab or a carriage return,
and not a plain number) gets a leading ' in CSV only (shown as text, not
run; "@user" is written "'@user").
--format parquet (default for --out *.parquet, pip install "xtm[parquet]"):
columns id, lang, lang_conf, route, empty, oov_ratio, topics (list of ids),
weights, labels (with labels) and theta (full theta). In both, ids are text
(a string id as it is, another id as its JSON; CSV's formula rule above
aside), and the values are those of the JSON line.

\b
Engines (--engine): local (default) reads one JSONL, text, Parquet, CSV or
TSV file, or stdin, in this process. ray (pip install "xtm[ray]") reads any number
of JSONL and Parquet files and directories (.jsonl/.ndjson/.json/.parquet/.pq
inside, sorted by path) with Ray Data on --actors actors (default: CPUs /
--threads), each holding one model with --threads onnxruntime threads
(default 1). The bundle is sent to the cluster once. Output and bad-line
reports are the same as local, in input order. Without --address a local Ray
instance is started for the run; with it, the cluster at ADDR (auto,
HOST:PORT, ray://HOST:10001) is used. Ray pays seconds of start-up: for one
machine and small inputs, local is faster (docs/ray_inference.md).

\b
Workers (--workers, local engine): tokenizing is most of the time per
document, so a large input is read in chunks that N worker processes parse,
tokenize and infer, each with its own copy of the model (1 onnxruntime
thread unless --threads); this process writes their results in input order:
the output, bad-line reports and exit status are those of one process, byte
for byte. A worker costs a start (about half a second): by default inputs of
4 MiB or more use one per core other processes leave idle (sampled for 0.2 s,
at most 4), smaller files and stdin one process. Tokenizers (--segmenters): a bundle records its tokenizer; auto
serves jieba's plain blocks with rjieba (pip install "xtm[zh-fast]") with
jieba's bags of words, so theta is unchanged; reference uses jieba and janome
only; fast also reads janome bundles with MeCab (pip install
"xtm[ja-mecab]"), 40x faster but not the same tokens (99% of documents).

\b
Bad lines (invalid JSON or UTF-8, missing/empty "text", a "lang" the bundle
does not serve, a text whose language cannot be detected (no letters, too
short to tell) or is one the bundle cannot read; with --min-lang-conf P, a
language detected with a probability under P) are reported on stderr as
INPUT:LINE: reason and skipped. --strict makes the first one fatal;
--max-bad N fails the run at the (N+1)th bad line, --max-bad P% at the end
when more than P% of the lines were bad. Texts over 100,000 characters are
truncated with a warning.

\b
Execution providers (--providers, local engine): onnxruntime's, by short or
full name, preferred first: cpu, cuda (pip install "xtm[gpu]": an NVIDIA GPU
with the CUDA and cuDNN libraries of that onnxruntime-gpu release; 1.31: CUDA
13, cuDNN 9), tensorrt, coreml, dml, openvino... Default: cuda when this
onnxruntime has it, else cpu. A provider that cannot start is an error
unless the list ends with a fallback (cuda,cpu: a warning). -v logs the
providers the model runs on.

\b
Logging: stderr gets bad lines, warnings and a summary; when stderr is not a
terminal (a log file, a scheduler) also a progress line every
--progress-every seconds (on a terminal: a progress bar). -v adds debug lines
(bundle, providers, timings), -q keeps warnings and errors only.

\b
Exit status: 0 results written; 1 no line could be inferred (empty input, or
every line bad); 2 an error: bad flags or bundle, unwritable --out, --strict
or --max-bad triggered. Unless 0, an --out file is not written at all (a
previous one stays as it was); on stdout, the lines before the failing one
are written. 129/130/143: stopped by SIGHUP/SIGINT/SIGTERM (--out not written,
no temporary file left). 141: the reader of stdout went away (| head), as
for any Unix filter killed by SIGPIPE; nothing is printed. --out may be a FIFO
or a device (written in place) or a symlink (its target is replaced). An
existing --out file is replaced only when it is an xtm-infer output (JSONL, CSV
or Parquet as xtm-infer writes them) or empty; any other file is refused
(exit 2) before any work: remove it or choose another path.
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("input_paths", metavar="INPUT...", nargs=-1, required=True,
                type=click.Path(exists=True, allow_dash=True))
@click.option("--bundle", required=True, type=click.Path(), help="Bundle directory written by xtm-export.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output file, written atomically (default: stdout).")
@click.option("--input-format", type=click.Choice(("auto", *INPUT_FORMATS)), default="auto", show_default=True,
              help="How to read INPUT: jsonl, text (one document per line), parquet, csv or tsv (a header row, then "
                   "a document a row); auto: by the file name.")
@click.option("--format", "output_format", type=click.Choice(("auto", *OUTPUT_FORMATS)), default="auto",
              show_default=True, help="What to write: jsonl, csv or parquet; auto: by --out's name (else jsonl; .tsv "
                   "and compressed names are refused).")
@cli_options.options(InferenceOptions, "Options")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, one JSONL, text, Parquet, CSV or TSV file or '-'. ray: Ray Data actors, "
                   "JSONL/Parquet files and directories (see Engines below).")
@click.option("--address", metavar="ADDR",
              help="--engine ray: a running Ray cluster (auto, HOST:PORT, ray://HOST:10001); default: start a "
                   "local one.")
@click.option("--actors", type=click.IntRange(1),
              help="--engine ray: actors, one model each (default: CPUs / threads).")
@click.option("--providers", metavar="LIST",
              help="onnxruntime execution providers, preferred first: cuda,cpu or cpu (see below). Default: cuda "
                   "when available, else cpu.")
@click.option("--workers", type=click.IntRange(0), default=None, metavar="N",
              help="Local engine: processes that parse, tokenize and infer in parallel, each with its own copy of "
                   "the model; output identical to one process. 0: one per core. Default: see Workers below.")
@click.option("--segmenters", type=click.Choice(SEGMENTERS), default=None,
              help="What serves the bundle's Chinese/Japanese tokenizers: auto (default: rjieba for jieba's plain "
                   "blocks when installed, jieba's bags of words), reference (jieba/janome only), fast (auto, and "
                   "janome bundles through MeCab: not the same tokens). Default: $XTM_SEGMENTERS (auto or "
                   "reference), else auto.")
@click.option("--progress-every", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              metavar="SECONDS", help="When stderr is not a terminal: a progress line this often.")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False), metavar="FILE",
              help="Also write what the run did as one JSON object (atomically, whatever the outcome): status "
                   "(running while it runs, then ok, no_results, error or interrupted), exit code, pid, lines read, "
                   "results written, lines skipped, seconds, the bundle (path, model, xtm version, manifest "
                   "SHA-256), the error's message. For pipelines that must not parse stderr. A regular file, never "
                   "the output; replaces only a summary xtm-infer wrote.")
@log_level_options
@version_option("xtm-infer")
@friendly_errors
def main(input_paths: tuple[str, ...], bundle: str, out: str | None, input_format: str, output_format: str,
         engine: str, address: str | None, actors: int | None,
         providers: str | None, workers: int | None, segmenters: str | None, progress_every: float,
         summary_path: str | None, verbose: bool, quiet: bool, log_level: str | None, **parsed: Any) -> None:
    """Infer topic distributions of documents INPUT (JSONL, text, Parquet, CSV or TSV; '-' for stdin) with a bundle.

    With --engine ray, INPUT... are JSONL and Parquet files and directories."""
    setup_logging("xtm-infer", resolve_log_level(verbose, quiet, log_level))
    from xtm.runtime.engine import NoResultsError
    from xtm.runtime.records import output_format as pick_output_format
    from xtm.signals import exit_on_signals

    options = cli_options.build(InferenceOptions, parsed)  # its flags: @cli_options.options above
    io = _Io(input_format, pick_output_format(out, output_format), providers, progress_every)
    io.workers = workers
    from xtm.runtime.tokenize import segmenter_mode, use_segmenters

    # This process's tokenizers (worker processes get the same mode from the engine); without the
    # flag, a bad XTM_SEGMENTERS is an error now, not at the first Chinese document.
    if segmenters is not None:
        use_segmenters(segmenters)
    else:
        segmenter_mode()
    summary = _Summary(summary_path, bundle, out, input_paths)
    io.on_loaded = summary.loaded
    try:
        # SIGTERM/SIGHUP unwind like Ctrl-C: the --out temporary is removed, the old file kept.
        with exit_on_signals():
            if engine == "ray":
                counts = _run_ray(input_paths, bundle, out, options, address, actors, io)
            else:
                counts = _run_local(input_paths, bundle, out, options, address, actors, io)
    except NoResultsError as e:
        if e.skipped:
            logger.warning(f"skipped {e.skipped} of {e.total} lines")
        click.echo(f"error: {e}", err=True)
        summary.write("no_results", 1, e.total, e.skipped, str(e))
        sys.exit(1)
    except XtmError as e:
        summary.write("error", 2, error=str(e))
        raise
    except (KeyboardInterrupt, SystemExit) as e:
        code = 130 if isinstance(e, KeyboardInterrupt) else e.code
        if code in (128 + 1, 128 + 15):  # from exit_on_signals
            click.echo(f"interrupted (signal {int(code) - 128}); {'no output written' if out else 'stopped'}",
                       err=True)
        if code not in (0, None):
            summary.write("interrupted", code if isinstance(code, int) else 1)
        raise
    summary.write("ok", 0, counts.total, counts.skipped)
    # Through the log (`xtm-infer: ...` lines like the others): -q and --log-level leave out what they say they do.
    if counts.skipped:
        logger.warning(f"skipped {counts.skipped} of {counts.total} lines")
    if out is not None:
        logger.info(f"wrote {counts.written} results to {out}")


class _Summary:
    """--summary FILE: the run's outcome as JSON, for a pipeline. Checked before any work: only a regular file, never
    the output (by any name: a link, /dev/stdout when the results go to stdout) or an input, and an existing file
    only when it is a summary xtm-infer wrote (SUMMARY_MARK). A "running" summary is written once the checks pass,
    so a run killed without a word (kill -9) leaves no earlier run's "ok" behind."""

    def __init__(self, path: str | None, bundle: str, out: str | None, inputs: tuple[str, ...]) -> None:
        self.path, self.bundle, self.out, self.inputs = path, bundle, out, inputs
        self.started = time.perf_counter()
        self.identity: dict[str, Any] = {"path": os.path.abspath(bundle)}
        if path is None:
            return
        from xtm.atomic import check_replaceable

        self._check_apart()
        check_replaceable(path, _is_summary, what="an xtm-infer summary",
                          hint="xtm-infer replaces only its own summaries; remove the file or choose another --summary")
        self.identity = _bundle_identity(bundle)
        self.write("running", None)

    def _check_apart(self) -> None:
        """XtmError when the summary would land on the results or an input, or is no regular file."""
        path = self.path
        assert path is not None
        others = [x for x in (self.out, *self.inputs) if x not in (None, "-")]
        if any(os.path.realpath(x) == os.path.realpath(path) for x in others):
            raise XtmError("--summary names the output or an input file: choose another path", path=path)
        try:
            st = os.stat(path)
        except OSError:
            return  # (nothing there yet: created by the summary's own write)
        if not stat.S_ISREG(st.st_mode):
            raise XtmError("--summary must name a regular file (not a directory, a pipe or a device such as "
                           "/dev/stdout)", path=path)
        same = [x for x in others if os.path.exists(x) and os.path.samefile(x, path)]
        if self.out is None:
            with contextlib.suppress(OSError):
                out = os.fstat(sys.stdout.fileno())
                if (out.st_dev, out.st_ino) == (st.st_dev, st.st_ino):
                    same.append("stdout")
        if same:
            raise XtmError(f"--summary is the same file as {same[0]} (the results): choose another path", path=path)

    def loaded(self, manifest_sha256: str | None) -> None:
        """The bundle as the model loaded it: its manifest's SHA-256 names what answered (a bundle re-exported in
        place between the summary's first reading and the load would otherwise be named instead)."""
        if manifest_sha256 is not None and self.identity.get("manifest_sha256") != manifest_sha256:
            self.identity = {"path": self.identity["path"], "manifest_sha256": manifest_sha256}

    def write(self, status: str, exit_code: int | None, read: int | None = None, skipped: int | None = None,
              error: str | None = None) -> None:
        if self.path is None:
            return
        from xtm.atomic import write_json

        try:
            self._check_apart()  # again: the output exists now (a link made since the start lands on it)
        except XtmError as e:
            logger.warning(f"the summary was not written: {e}")
            return
        written = None if read is None else read - (skipped or 0)
        record = {SUMMARY_MARK: 1, "status": status, "exit_code": exit_code, "pid": os.getpid(),
                  "inputs": list(self.inputs), "out": self.out, "lines_read": read, "results_written": written,
                  "lines_skipped": skipped, "seconds": round(time.perf_counter() - self.started, 3),
                  "bundle": self.identity, "error": error}
        try:
            write_json(self.path, record)
        except (OSError, XtmError) as e:  # the run's own outcome stands; the summary's failure is said
            logger.warning(f"the summary was not written: {e}")


# The key every --summary file starts with: what xtm-infer may replace.
SUMMARY_MARK = "xtm_infer_summary"


def _is_summary(path: Any) -> bool:
    with open(path, "rb") as f:
        head = f.read(64)
    return head.lstrip().startswith(b'{') and f'"{SUMMARY_MARK}"'.encode() in head


def _bundle_identity(bundle: str) -> dict[str, Any]:
    """Which model answers: the bundle's path, model and xtm version from its manifest, and the manifest's SHA-256
    (the manifest lists every file's checksum, so it names the bundle's exact contents). Read only from a regular
    file of at most 16 MiB (a FIFO named manifest.json blocked the run before its first line)."""
    from xtm.runtime.bundle import current_manifest, manifest_digest

    identity: dict[str, Any] = {"path": os.path.abspath(bundle)}
    try:
        raw = current_manifest(bundle)
    except XtmError:
        raw = None  # (a shortage: the run's own reading of the bundle says what it can)
    if raw is not None:
        for key in ("model", "xtm_version"):
            value = raw.get(key)
            identity[key] = value if isinstance(value, str) and len(value) <= 200 else None
        identity["manifest_sha256"] = manifest_digest(raw)  # (as TopicModel.manifest_sha256 names it)
    return identity


class _Io:
    """The flags about formats, providers and progress, handed to either engine."""

    def __init__(self, input_format: str, output_format: str, providers: str | None, progress_every: float) -> None:
        self.input_format, self.output_format = input_format, output_format
        self.providers, self.progress_every = providers, progress_every
        self.workers: int | None = None
        self.on_loaded: Any = lambda manifest_sha256: None  # told the loaded bundle's manifest SHA-256 (--summary)


def _run_local(input_paths: tuple[str, ...], bundle: str, out: str | None, options: InferenceOptions,
               address: str | None, actors: int | None, io: _Io) -> Any:
    """One file or stdin in this process: the engine's infer_file, with a progress bar on a terminal
    and progress lines in a log."""
    if address is not None or actors is not None:
        raise XtmError("--address and --actors go with --engine ray")
    if len(input_paths) != 1 or (input_paths[0] != "-" and os.path.isdir(input_paths[0])):
        raise XtmError("the local engine reads one JSONL, text, Parquet, CSV or TSV file or '-'; several files or "
                       "directories need --engine ray")
    from xtm.runtime.engine import infer_file
    from xtm.runtime.records import check_out_path, input_format

    source = input_paths[0]
    check_out_path(out, [] if source == "-" else [source])  # before the bundle is opened
    fmt_in = input_format(source, io.input_format)
    from xtm.runtime.model import TopicModel

    started = time.perf_counter()
    model = TopicModel.load(bundle, threads=options.threads, providers=io.providers)
    io.on_loaded(model.manifest_sha256)
    _check_top_k(options.top_k, model.num_topics)
    logger.debug("bundle %s loaded in %.2f s; running on %s", bundle, time.perf_counter() - started,
                 ", ".join(model.providers))
    progress = _progress_bar()
    log_progress = _LogProgress(io.progress_every) if progress is None else None
    try:
        workers = _workers(io.workers, source)
        logger.debug("%d inference process%s", workers, "es" if workers > 1 else "")
        return infer_file(source, model, out, options=options, bundle=bundle, report=_reporter(progress),
                          on_rows=progress.update if progress is not None else log_progress,
                          input_format=fmt_in, output_format=io.output_format, workers=workers)
    except BrokenPipeError:
        _quiet_broken_pipe()
    finally:
        if progress is not None:
            progress.close()
        logger.debug("inference took %.2f s", time.perf_counter() - started)


def _check_top_k(top_k: int, num_topics: int) -> None:
    """A --top-k above the bundle's topic count lists every topic: said once, so a pipeline expecting
    top_k columns learns why it got fewer."""
    if top_k > num_topics:
        logger.warning(f"--top-k {top_k} is more than the bundle's {num_topics} topics: each result lists all "
                       f"{num_topics}")


def _workers(asked: int | None, source: str) -> int:
    """--workers: 0 means one per core. Default: 1 for stdin and files under WORKERS_MIN_BYTES (a
    worker costs a start, an interpreter and the bundle, that only a large input repays); else one
    per idle core (xtm.cpu.idle_cores, as training counts free cores for its threads), at most
    DEFAULT_MAX_WORKERS. Idle, because on a busy machine extra processes get no more CPU (Linux
    shares it per session) and workers cost 16-27% more CPU in all: 2 workers ran at 0.68-0.89x of
    one process beside other jobs, 1.35-1.6x on 2 idle cores (docs/benchmarks.md "Raw unique text")."""
    from xtm.cpu import idle_cores, usable_cores

    cores = len(usable_cores())
    if asked is not None:
        return asked or cores
    if source == "-" or not os.path.isfile(source) or os.path.getsize(source) < WORKERS_MIN_BYTES:
        return 1
    idle = idle_cores()
    if idle is None:
        # No /proc/stat (macOS, the BSDs): the 1-minute load average is what such a system tells, and its
        # processes may use every CPU (no affinity to count), so the machine's load is theirs.
        try:
            idle = int(cores - os.getloadavg()[0] + 0.5)
        except OSError:  # no load average either
            idle = cores
    return max(1, min(idle, cores, DEFAULT_MAX_WORKERS))


def _run_ray(input_paths: tuple[str, ...], bundle: str, out: str | None, options: InferenceOptions,
             address: str | None, actors: int | None, io: _Io) -> Any:
    if "-" in input_paths:
        raise XtmError("--engine ray reads files and directories, not stdin ('-'): Ray tasks open the inputs")
    if io.input_format not in ("auto", "jsonl", "parquet"):
        raise XtmError(f"--engine ray reads JSONL and Parquet (by file name); --input-format {io.input_format} is for "
                       "the local engine")
    if io.providers is not None:
        raise XtmError("--providers goes with the local engine (Ray actors run on their nodes' CPUs)")
    if io.workers is not None:
        raise XtmError("--workers goes with the local engine (with --engine ray: --actors)")
    from xtm.runtime.bundle import read_manifest
    from xtm.runtime.ray import infer_files

    _check_top_k(options.top_k, read_manifest(bundle, verify=False).num_topics)

    report = None if sys.stderr.isatty() else _reporter(None)
    try:
        # (threads_per_actor: options.threads, --threads, else the Ray default)
        return infer_files(list(input_paths), bundle, out, options=options, address=address, num_actors=actors,
                           report=report, output_format=io.output_format)
    except BrokenPipeError:
        _quiet_broken_pipe()


def _progress_bar() -> Any:
    """A line counter on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit=" lines", unit_scale=True, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


class _LogProgress:
    """Progress for logs (stderr not a terminal): `xtm-infer: 120,000 lines, 15,000 lines/s` at most
    once per `every` seconds, so a scheduler's log shows a long run moving without a bar's
    carriage returns."""

    def __init__(self, every: float) -> None:
        self.every, self.rows = every, 0
        self.start = self.last = time.monotonic()

    def __call__(self, n: int) -> None:
        self.rows += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.rows / max(now - self.start, 1e-9)
            logger.info("%s lines, %s lines/s", f"{self.rows:,}", f"{rate:,.0f}")


def _reporter(progress: Any) -> Any:
    """Bad-line reports to stderr, above the progress bar when there is one; they are warnings, so
    --log-level error leaves them out (their count is still said, and --max-bad still judged)."""
    def report(msg: str) -> None:
        if not logger.isEnabledFor(logging.WARNING):
            return
        if progress is not None:
            progress.write(msg, file=sys.stderr)  # keeps the bar intact
        else:
            click.echo(msg, err=True)

    return report


def _quiet_broken_pipe() -> None:
    """`xtm-infer ... | head`: the reader left; stop quietly, as a Unix filter should: no message,
    exit 141 (128 + SIGPIPE) as the shell reports for `cat` or `grep` there. stdout goes to
    /dev/null so the interpreter's last flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(EXIT_BROKEN_PIPE)


if __name__ == "__main__":
    main()

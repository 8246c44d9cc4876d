"""xtm-infer: topic distributions for JSONL documents with an exported bundle (onnxruntime, no torch).

Streams: the input is read in chunks of batch_size*4 lines and each chunk's results are written
before the next is read, so memory stays flat however long the input is. Only click and the
error type are imported at module level; numpy/onnxruntime/the tokenizers load inside `main`,
so `--help` and bad flags answer instantly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import IO, Any

import click

from xtm.cli.common import friendly_errors
from xtm.errors import XtmError

# The row semantics and the output format live in xtm.runtime.records, shared with the Ray engine
# (xtm.runtime.ray) so both engines write the same bytes; re-exported here for existing callers.
from xtm.runtime.records import DECIMALS, MAX_CHARS, OUTPUT_WORDS, WEIGHT, Parsed, parse_line  # noqa: F401

EPILOG = """\b
Examples:
  # one result line per input line, to stdout
  xtm-infer docs.jsonl --bundle bundles/ecnews
  # write atomically to a file, 5 topics per document, only their weights
  xtm-infer docs.jsonl --bundle bundles/ecnews --out topics.jsonl --top-k 5 --sparse-theta
  # from a pipe; stop at the first bad line
  cat docs.jsonl | xtm-infer - --bundle bundles/ecnews --strict > topics.jsonl
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
text to the same topics. auto (default): bag of words for the training
languages, contextual for the encoder's languages; bow: training languages
only; contextual: every document through the sentence encoder. A language
the route cannot read is a bad line. Without a contextual route, auto is bow.

\b
Input: JSONL, one object per line: {"id": ..., "text": "...", "lang": "en"}.
"lang" is optional: detected among every language the detector knows (not
only the bundle's), so a language the bundle cannot read is never read as
another one; give it when known (detection costs 0.1-0.2 ms a line). "id"
is copied to the output (the line number when absent; NaN/Infinity ids are
written as the strings "NaN", "Infinity"). Blank lines are ignored.
Parquet (.parquet/.pq): columns text, lang and id, the same rules; a null
cell counts as an absent field; the row number stands for the line number.

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
rounded to 6 decimals.

\b
Engines (--engine): local (default) reads one JSONL file, stdin, or one
Parquet file in this process. ray (pip install "xtm[ray]") reads any number
of JSONL and Parquet files and directories (.jsonl/.ndjson/.json/.parquet/.pq
inside, sorted by path) with Ray Data on --actors actors (default: CPUs /
--threads), each holding one model with --threads onnxruntime threads
(default 1). The bundle is sent to the cluster once. Output and bad-line
reports are the same as local, in input order. Without --address a local Ray
instance is started for the run; with it, the cluster at ADDR (auto,
HOST:PORT, ray://HOST:10001) is used. Ray pays seconds of start-up: for one
machine and small inputs, local is faster (docs/ray_inference.md).

\b
Bad lines (invalid JSON or UTF-8, missing/empty "text", a "lang" the bundle
does not serve, a text whose language cannot be detected (no letters, too
short to tell) or is one the bundle cannot read) are reported on stderr as
INPUT:LINE: reason and skipped. --strict makes the first one fatal;
--max-bad N fails the run at the (N+1)th bad line, --max-bad P% at the end
when more than P% of the lines were bad. Texts over 100,000 characters are
truncated with a warning.

\b
Exit status: 0 results written; 1 no line could be inferred (empty input, or
every line bad); 2 an error: bad flags or bundle, unwritable --out, --strict
or --max-bad triggered. Unless 0, an --out file is not written at all (a
previous one stays as it was); on stdout, the lines before the failing one
are written. 129/130/143: stopped by SIGHUP/SIGINT/SIGTERM (--out not written,
no temporary file left). --out may be a FIFO or a device (written in place)
or a symlink (its target is replaced).
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("input_paths", metavar="INPUT...", nargs=-1, required=True,
                type=click.Path(exists=True, allow_dash=True))
@click.option("--bundle", required=True, type=click.Path(), help="Bundle directory written by xtm-export.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output JSONL file, written atomically (default: stdout).")
@click.option("--top-k", type=click.IntRange(0), default=3, show_default=True,
              help="Topics listed per document.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True,
              help="Documents per encoder call.")
@click.option("--strict", is_flag=True, help="Fail (exit 2) at the first bad line instead of skipping it.")
@click.option("--max-bad", metavar="N|P%",
              help="Fail (exit 2) when more than N lines, or more than P percent of the lines, are bad.")
@click.option("--full-theta/--sparse-theta", default=True, show_default=True,
              help="All K topic weights, or only the top-k as {topic_id: weight}.")
@click.option("--threads", type=click.IntRange(1),
              help="onnxruntime threads (local default: all cores; ray: per actor, default 1).")
@click.option("--route", type=click.Choice(["auto", "bow", "contextual"]), default="auto", show_default=True,
              help="auto: bag of words for the training languages, the contextual route for others; "
                   "bow: training languages only; contextual: every document through the sentence encoder.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process, one JSONL or Parquet file or '-'. ray: Ray Data actors, JSONL/Parquet "
                   "files and directories (see Engines below).")
@click.option("--address", metavar="ADDR",
              help="--engine ray: a running Ray cluster (auto, HOST:PORT, ray://HOST:10001); default: start a "
                   "local one.")
@click.option("--actors", type=click.IntRange(1),
              help="--engine ray: actors, one model each (default: CPUs / threads).")
@friendly_errors
def main(input_paths: tuple[str, ...], bundle: str, out: str | None, top_k: int, batch_size: int, strict: bool,
         max_bad: str | None, full_theta: bool, threads: int | None, route: str, engine: str, address: str | None,
         actors: int | None) -> None:
    """Infer topic distributions of JSONL documents INPUT ('-' for stdin) with a bundle.

    With --engine ray, INPUT... are JSONL and Parquet files and directories."""
    from xtm.atomic import exit_on_signals
    from xtm.runtime.records import NoResultsError, parse_max_bad

    limit, share = parse_max_bad(max_bad)
    try:
        # SIGTERM/SIGHUP unwind like Ctrl-C: the --out temporary is removed, the old file kept.
        with exit_on_signals():
            if engine == "ray":
                res = _main_ray(input_paths, bundle, out, top_k, batch_size, strict, limit, share, full_theta,
                                threads, route, address, actors)
            else:
                res = _main_local(input_paths, bundle, out, top_k, batch_size, strict, limit, share, full_theta,
                                  threads, route, address, actors)
    except NoResultsError as e:
        if e.skipped:
            click.echo(f"skipped {e.skipped} of {e.total} lines", err=True)
        click.echo(f"error: {e}", err=True)
        sys.exit(1)
    except SystemExit as e:
        if e.code in (128 + 1, 128 + 15):  # from exit_on_signals
            click.echo(f"interrupted (signal {int(e.code) - 128}); {'no output written' if out else 'stopped'}",
                       err=True)
        raise
    _summary(res.total, res.skipped, out)


def _main_local(input_paths: tuple[str, ...], bundle: str, out: str | None, top_k: int, batch_size: int,
                strict: bool, max_bad: int | None, max_share: float | None, full_theta: bool, threads: int | None,
                route: str, address: str | None, actors: int | None) -> Any:
    if address is not None or actors is not None:
        raise XtmError("--address and --actors go with --engine ray")
    if len(input_paths) != 1 or (input_paths[0] != "-" and os.path.isdir(input_paths[0])):
        raise XtmError("the local engine reads one JSONL or Parquet file or '-'; several files or directories "
                       "need --engine ray")
    input_path = input_paths[0]
    parquet = input_path != "-" and input_path.lower().endswith((".parquet", ".pq"))
    from xtm.runtime.records import check_out_is_not_input

    check_out_is_not_input(out, [] if input_path == "-" else [input_path])
    from xtm.runtime.model import TopicModel

    model = TopicModel.load(bundle, threads=threads)
    if route == "contextual" and not model.has_contextual:
        raise XtmError("--route contextual: this bundle has no contextual route (export a run that has one: "
                       "xtm-contextual RUN_DIR, then xtm-export)", path=bundle)
    name = "<stdin>" if input_path == "-" else input_path

    progress: Any = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        progress = tqdm(unit=" lines", unit_scale=True, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)

    def report(msg: str) -> None:
        if progress is not None:
            progress.write(msg, file=sys.stderr)  # keeps the bar intact
        else:
            click.echo(msg, err=True)

    from xtm.runtime.records import BadLines, LineFormatter, parquet_chunks, parse_parquet_row, served_languages

    served = served_languages(model, route)
    size = batch_size * 4
    stream: IO[bytes] | None = None
    chunks: Iterator[list[tuple[int, Parsed]]]
    if parquet:
        chunks = ([(n, parse_parquet_row(obj, n, served)) for n, obj in c] for c in parquet_chunks(input_path, size))
    else:
        try:
            stream = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
        except OSError as e:
            raise XtmError(f"cannot read: {e.strerror}", path=name) from e
        chunks = _parsed_chunks(stream, size, served, name)
    tally = BadLines(report, strict=strict, max_bad=max_bad, max_share=max_share)
    job = _Job(model, LineFormatter(model, full_theta=full_theta, route=route), name, tally, top_k, batch_size,
               route, progress)
    try:
        if out is None:
            try:
                job.run(chunks, sys.stdout.buffer, "<stdout>")
                tally.finish(name)
            except BrokenPipeError:
                _quiet_broken_pipe()
        else:
            from xtm.atomic import atomic_open

            with atomic_open(out, "wb") as f:
                job.run(chunks, f, out)
                tally.finish(name)  # raising here leaves --out unwritten
    finally:
        if progress is not None:
            progress.close()
        if stream is not None and stream is not sys.stdin.buffer:
            stream.close()
    return tally


def _parsed_chunks(stream: IO[bytes], size: int, served: Any, name: str) -> Iterator[list[tuple[int, Parsed]]]:
    """Lists of up to `size` parsed lines, each parsed as soon as it is read: a chunk holds its
    documents (texts cut to MAX_CHARS), never the raw lines."""
    from xtm.runtime.records import read_lines

    chunk: list[tuple[int, Parsed]] = []
    lines = read_lines(stream)
    while True:
        try:
            item = next(lines, None)
        except OSError as e:  # an I/O error on the input (a failing disk, a vanished network file)
            raise XtmError(f"cannot read: {e.strerror or e}", path=name) from e
        if item is None:
            break
        chunk.append((item[0], parse_line(item[1], item[0], served)))
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _quiet_broken_pipe() -> None:
    """`xtm-infer ... | head`: the reader left; stop quietly, as a Unix filter should."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


def _summary(total: int, skipped: int, out: str | None) -> None:
    if skipped:
        click.echo(f"skipped {skipped} of {total} lines", err=True)
    if out is not None:
        click.echo(f"wrote {total - skipped} results to {out}", err=True)


def _main_ray(input_paths: tuple[str, ...], bundle: str, out: str | None, top_k: int, batch_size: int, strict: bool,
              max_bad: int | None, max_share: float | None, full_theta: bool, threads: int | None, route: str,
              address: str | None, actors: int | None) -> Any:
    if "-" in input_paths:
        raise XtmError("--engine ray reads files and directories, not stdin ('-'): Ray tasks open the inputs")
    from xtm.runtime.ray import infer_files

    def report(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        return infer_files(list(input_paths), bundle, out, address=address, num_actors=actors,
                           threads_per_actor=threads or 1, top_k=top_k, route=route, batch_size=batch_size,
                           full_theta=full_theta, strict=strict, max_bad=max_bad, max_share=max_share,
                           report=None if sys.stderr.isatty() else report)
    except BrokenPipeError:
        _quiet_broken_pipe()


class _Job:
    """One local run: chunks of parsed lines in, output lines out, bad lines through a BadLines."""

    def __init__(self, model: Any, formatter: Any, name: str, tally: Any, top_k: int, batch_size: int, route: str,
                 progress: Any) -> None:
        self.model, self.formatter, self.name, self.tally = model, formatter, name, tally
        self.top_k, self.batch_size, self.route, self.progress = top_k, batch_size, route, progress

    def run(self, chunks: Iterator[list[tuple[int, Parsed]]], sink: IO[bytes], sink_name: str) -> None:
        """Infer and write chunk by chunk, in input order. When a bad line is fatal (--strict,
        --max-bad), the good lines before it are written first, then XtmError is raised."""
        from xtm.runtime.records import infer_lines

        for chunk in chunks:
            docs = [doc for _, (doc, _, _) in chunk if doc is not None]
            results = iter(infer_lines(self.model, docs, self.formatter, batch_size=self.batch_size,
                                       top_k=self.top_k, route=self.route))
            good: list[str] = []
            try:
                for lineno, (doc, error, warning) in chunk:
                    self.tally.total += 1
                    if doc is not None:
                        line, error = next(results)
                    if error is not None:
                        self.tally.bad(self.name, lineno, error)
                        continue
                    if warning is not None:
                        self.tally.report(f"{self.name}:{lineno}: warning: {warning}")
                    good.append(line)
            except XtmError:
                _write(sink, good, sink_name)
                raise
            _write(sink, good, sink_name)
            if self.progress is not None:
                self.progress.update(len(chunk))


def _write(sink: IO[bytes], lines: list[str], sink_name: str) -> None:
    from xtm.runtime.records import encode_lines

    if not lines:
        return
    try:
        sink.write(encode_lines(lines))
        sink.flush()
    except BrokenPipeError as e:
        if sink_name == "<stdout>":
            raise  # `| head`: the reader left, a quiet stop (_quiet_broken_pipe)
        raise XtmError("cannot write: its reader went away (a FIFO closed before the end)", path=sink_name) from e
    except OSError as e:  # a full disk, a quota, an I/O error: a clean error, the temporary removed
        raise XtmError(f"cannot write: {e.strerror or e}", path=sink_name) from e


if __name__ == "__main__":
    main()

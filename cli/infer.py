"""xtm-infer: topic distributions for JSONL documents with an exported bundle (onnxruntime, no torch).

Streams: the input is read in chunks of batch_size*4 lines and each chunk's results are written
before the next is read, so memory stays flat however long the input is. Only click and the
error type are imported at module level; numpy/onnxruntime/the tokenizers load inside `main`,
so `--help` and bad flags answer instantly.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
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
languages, contextual for the others; bow: training languages only (other
languages are bad lines); contextual: every document through the sentence
encoder. Without a contextual route, auto is bow.

\b
Input: JSONL, one object per line: {"id": ..., "text": "...", "lang": "en"}.
"lang" is optional (detected among the languages the bundle can read); "id"
is copied to the output (the line number when absent). Blank lines are ignored.
Parquet (.parquet/.pq): columns text, lang and id, the same rules; a null cell
counts as an absent field; the row number stands for the line number.

\b
Output: one JSON object per good input line, in input order:
{"id": ..., "lang": "en", "theta": [K weights] (or {"topic_id": weight} for
the top-k with --sparse-theta), "topics": [{"id": k, "weight": w, "words":
{"en": [...], "zh": [...]}}, ...]}, plus "route": "bow"|"contextual" when the
bundle has a contextual route. Weights are rounded to 6 decimals.

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
Bad lines (invalid JSON or UTF-8, missing/empty "text", a language the bundle
does not serve) are reported on stderr as INPUT:LINE: reason and skipped;
--strict makes the first one fatal (exit 2, --out not written). Texts over
100,000 characters are truncated with a warning.
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
         full_theta: bool, threads: int | None, route: str, engine: str, address: str | None,
         actors: int | None) -> None:
    """Infer topic distributions of JSONL documents INPUT ('-' for stdin) with a bundle.

    With --engine ray, INPUT... are JSONL and Parquet files and directories."""
    if engine == "ray":
        _main_ray(input_paths, bundle, out, top_k, batch_size, strict, full_theta, threads, route, address, actors)
        return
    if address is not None or actors is not None:
        raise XtmError("--address and --actors go with --engine ray")
    if len(input_paths) != 1 or (input_paths[0] != "-" and os.path.isdir(input_paths[0])):
        raise XtmError("the local engine reads one JSONL or Parquet file or '-'; several files or directories "
                       "need --engine ray")
    input_path = input_paths[0]
    parquet = input_path != "-" and input_path.lower().endswith((".parquet", ".pq"))
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

    from xtm.runtime.records import line_chunks, parquet_chunks, parse_parquet_row, served_languages

    served = served_languages(model, route)
    size = batch_size * 4
    stream: IO[bytes] | None = None
    chunks: Iterator[list[tuple[int, Parsed]]]
    if parquet:
        chunks = ([(n, parse_parquet_row(obj, n, served)) for n, obj in c] for c in parquet_chunks(input_path, size))
    else:
        stream = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
        chunks = ([(n, parse_line(raw, n, served)) for n, raw in c] for c in line_chunks(stream, size))
    try:
        if out is None:
            try:
                counts = _run(model, chunks, sys.stdout.buffer, name, top_k, batch_size, strict, full_theta,
                              report, progress, route)
            except BrokenPipeError:
                _quiet_broken_pipe()
        else:
            from xtm.atomic import atomic_open

            with atomic_open(out, "wb") as f:
                counts = _run(model, chunks, f, name, top_k, batch_size, strict, full_theta, report, progress,
                              route)
    finally:
        if progress is not None:
            progress.close()
        if stream is not None and stream is not sys.stdin.buffer:
            stream.close()
    _summary(*counts, out)


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
              full_theta: bool, threads: int | None, route: str, address: str | None, actors: int | None) -> None:
    if "-" in input_paths:
        raise XtmError("--engine ray reads files and directories, not stdin ('-'): Ray tasks open the inputs")
    from xtm.runtime.ray import infer_files

    def report(msg: str) -> None:
        click.echo(msg, err=True)

    try:
        res = infer_files(list(input_paths), bundle, out, address=address, num_actors=actors,
                          threads_per_actor=threads or 1, top_k=top_k, route=route, batch_size=batch_size,
                          full_theta=full_theta, strict=strict, report=None if sys.stderr.isatty() else report)
    except BrokenPipeError:
        _quiet_broken_pipe()
    _summary(res.total, res.skipped, out)


def _run(model: Any, chunks: Iterator[list[tuple[int, Parsed]]], sink: IO[bytes], name: str, top_k: int,
         batch_size: int, strict: bool, full_theta: bool, report: Callable[[str], None], progress: Any,
         route: str = "auto") -> tuple[int, int]:
    """Infer and write chunk by chunk of parsed rows; returns (rows read, rows skipped)."""
    from xtm.runtime.records import LineFormatter, encode_id

    formatter = LineFormatter(model, full_theta=full_theta, route=route)
    total = skipped = 0
    for chunk in chunks:
        docs: list[dict[str, Any]] = []
        for lineno, (doc, error, warning) in chunk:
            if error is not None:
                if strict:
                    raise XtmError(error, path=name, line=lineno)
                report(f"{name}:{lineno}: {error}")
                skipped += 1
                continue
            if warning is not None:
                report(f"{name}:{lineno}: warning: {warning}")
            docs.append(doc)  # type: ignore[arg-type]
        total += len(chunk)
        if docs:
            res = model.infer([d["text"] for d in docs], [d["lang"] for d in docs], batch_size=batch_size,
                              top_k=top_k, route=route)
            lines = formatter.lines(res, [encode_id(d["id"]) for d in docs])
            sink.write(("\n".join(lines) + "\n").encode("utf-8"))
            sink.flush()
        if progress is not None:
            progress.update(len(chunk))
    return total, skipped


if __name__ == "__main__":
    main()

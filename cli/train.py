"""xtm-train: learn cross-lingual topics from a benchmark directory or JSONL documents."""

from __future__ import annotations

import json
import signal
import sys
from contextlib import nullcontext
from pathlib import Path

import click

from xtm.cli.common import friendly_errors
from xtm.models_zoo.registry import MODEL_NAMES

EPILOG = """\b
Examples:
  # the built-in bilingual example (written by `xtm-example demo/`)
  xtm-train --data demo/docs.jsonl --dict demo/dict.tsv --model nmtm \\
            --topics 6 --epochs 30 --out runs/demo --ref-corpus demo/ref_en_zh
  # a benchmark directory (InfoCTM layout), e.g. ECNews
  xtm-train --data ../shared/data/ECNews --dict ../shared/data/dict/ch_en_dict.dat \\
            --model infoctm --topics 50 --epochs 100 --out runs/ecnews-infoctm
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
  # add a contextual route (zero-shot topics for any language USE knows; see xtm-contextual --help)
  xtm-train ... --out runs/ecnews-nmtm --contextual
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
Outputs in --out: metrics.json, topics_<lang>.txt, vocab_<lang>.txt,
config.json, history.json and checkpoints/ (safetensors + JSON). --out must be
new, empty, or an xtm run; one process at a time writes a run (RUN_DIR/.xtm.lock).

\b
Exit codes: 0 trained; 2 bad input or settings (one `error:` line); 130, 143,
129 interrupted by SIGINT (Ctrl-C), SIGTERM, SIGHUP: the current step finishes,
the checkpoint is saved, and --resume continues exactly (a second Ctrl-C
abandons the current step; the checkpoint is still exact).
"""


@click.command(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--data", required=True, type=click.Path(exists=True),
              help="Benchmark directory (train_bow_matrix_<L>.npz, vocab_<L>, ...) or JSONL file/directory.")
@click.option("--model", type=click.Choice(MODEL_NAMES, case_sensitive=False), default="infoctm",
              show_default=True, help="Backbone: nmtm and infoctm align through --dict; xtra through "
                                      "multilingual sentence embeddings (no dictionary needed).")
@click.option("--topics", "num_topics", type=click.IntRange(2, 10000), default=50, show_default=True,
              help="Number of topics K (shared across languages).")
@click.option("--epochs", type=click.IntRange(1), default=100, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
@click.option("--dict", "dict_path", type=click.Path(exists=True, dir_okay=False),
              help="Bilingual dictionary, TSV source<TAB>target (orientation and Porter-stemmed "
                   "English are detected).")
@click.option("--langs", help="Comma-separated languages to model, in order (e.g. en,zh).")
@click.option("--ref-corpus", type=click.Path(exists=True),
              help="Aligned reference corpus for CNPMI (dir with *.<lang>.tok.txt[.gz], line i aligned).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --out.")
@click.option("--batch-size", type=click.IntRange(2), default=200, show_default=True)
@click.option("--lr", type=float, default=0.002, show_default=True)
@click.option("--vocab-size", type=click.IntRange(10), default=5000, show_default=True,
              help="Words per language (JSONL input).")
@click.option("--min-df", type=click.IntRange(1), default=2, show_default=True,
              help="Minimum document frequency of a word (JSONL input).")
@click.option("--max-df", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
              help="Maximum share of documents containing a word (JSONL input).")
@click.option("--checkpoint-every", type=click.IntRange(0), default=10, show_default=True,
              help="Epochs between checkpoints (0: only at the end).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=click.IntRange(1), help="CPU threads for torch (default: all cores).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Backbone hyper-parameter, e.g. --set weight_mi=50 --set hidden=100 (repeatable).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Cache for document embeddings (default: $XTM_CACHE_DIR or ~/.cache/xtm).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
@click.option("--phase2-epochs", type=click.IntRange(0), default=0, show_default=True,
              help="LLM-XTM phase-2 epochs after the --epochs of phase 1 (the paper uses 30; 0: no phase 2).")
@click.option("--refine-every", type=click.IntRange(1), default=8, show_default=True,
              help="Phase 2: epochs between topic refinements (F).")
@click.option("--rounds", type=click.IntRange(1), default=5, show_default=True,
              help="Phase 2: sampled refinements per topic, voted for self-consistency (R).")
@click.option("--refiner", type=click.Choice(["embedding", "openai", "vllm", "transformers"]), default="embedding",
              show_default=True, help="Phase 2: who refines topics: embedding (no LLM), openai (any "
              "OpenAI-compatible server), vllm (in-process, GPU), transformers (small local model).")
@click.option("--top-words", type=click.IntRange(1), default=15, show_default=True,
              help="Phase 2: each topic's top words per language sent for refinement (N).")
@click.option("--refined-words", type=click.IntRange(1), default=15, show_default=True,
              help="Phase 2: voted words kept per language and topic (M).")
@click.option("--llm-url", help="openai refiner: server URL, e.g. http://127.0.0.1:8000/v1.")
@click.option("--llm-model", help="LLM name for the server, or a model path for vllm/transformers.")
@click.option("--llm-api-key-env", default="OPENAI_API_KEY", show_default=True,
              help="Environment variable holding the API key (never logged; unset: no key sent).")
@click.option("--llm-concurrency", type=click.IntRange(1), default=8, show_default=True,
              help="openai refiner: requests in flight at once.")
@click.option("--llm-timeout", type=click.FloatRange(1), default=120.0, show_default=True,
              help="openai refiner: total seconds one attempt may take (connect, TLS, send, wait, read the "
                   "whole answer, same-origin redirects) before it is retried.")
@click.option("--llm-max-tokens", type=click.IntRange(16), default=400, show_default=True)
@click.option("--llm-temperature", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--lambda-mmd", type=click.FloatRange(0), default=20000.0, show_default=True,
              help="Phase 2: weight of the MMD loss between model and refined topic words.")
@click.option("--lambda-doc", type=click.FloatRange(0), default=100.0, show_default=True,
              help="Phase 2: weight of KL(theta || theta_hat) document alignment.")
@click.option("--doc-tau", type=click.FloatRange(0, min_open=True), default=0.1, show_default=True,
              help="Phase 2: temperature of theta_hat = softmax(cos(doc, topic) / tau).")
@click.option("--no-mmd", is_flag=True, help="Phase 2 ablation: drop the MMD loss.")
@click.option("--no-doc-align", is_flag=True, help="Phase 2 ablation: drop document alignment.")
@click.option("--multi-kernel", is_flag=True, help="Phase 2: MMD with bandwidths 0.5/1/2 x median.")
@click.option("--encoder", default="use-multilingual", show_default=True,
              help="Phase 2: multilingual encoder for word, document and topic embeddings "
                   "(or st:<sentence-transformers model>).")
@click.option("--contextual", is_flag=True,
              help="After training, fit the contextual inference network (xtm-contextual with its defaults): "
                   "documents in languages the bags of words cannot read get topics through a multilingual "
                   "sentence encoder.")
@click.option("--out-of-core", is_flag=True,
              help="Preprocess JSONL into sparse shards on disk and stream them while training, so memory "
                   "does not grow with the corpus (nmtm and infoctm; see below).")
@click.option("--shard-size", type=click.IntRange(1), default=10_000, show_default=True,
              help="Out of core: documents per shard file.")
@click.option("--shard-dir", type=click.Path(file_okay=False),
              help="Out of core: where the shards go (default: RUN_DIR/shards); reused when the input files "
                   "and preprocessing settings are unchanged.")
@click.option("--eval-train-docs", type=click.IntRange(1), default=20_000, show_default=True,
              help="Out of core: training documents per language (evenly spaced) kept in memory for evaluation "
                   "(classification's training set, the report).")
@friendly_errors
def main(data: str, model: str, num_topics: int, epochs: int, out: str, dict_path: str | None,
         langs: str | None, ref_corpus: str | None, seed: int, resume: bool, batch_size: int, lr: float,
         vocab_size: int, min_df: int, max_df: float, checkpoint_every: int, device: str,
         threads: int | None, overrides: tuple[str, ...], cache_dir: str | None, quiet: bool,
         phase2_epochs: int, refine_every: int, rounds: int, refiner: str, top_words: int, refined_words: int,
         llm_url: str | None,
         llm_model: str | None, llm_api_key_env: str, llm_concurrency: int, llm_timeout: float,
         llm_max_tokens: int, llm_temperature: float, lambda_mmd: float, lambda_doc: float, doc_tau: float,
         no_mmd: bool, no_doc_align: bool, multi_kernel: bool, encoder: str, contextual: bool,
         out_of_core: bool, shard_size: int, shard_dir: str | None, eval_train_docs: int) -> None:
    """Train a cross-lingual topic model and evaluate it (TU, CNPMI, TQ, classification)."""
    from xtm.trainer.loop.training import TrainConfig
    from xtm.trainer.run import DataConfig, run_training

    cfg = TrainConfig(model=model.lower(), num_topics=num_topics, epochs=epochs, batch_size=batch_size, lr=lr,
                      seed=seed, device=device, checkpoint_every=checkpoint_every, threads=threads,
                      cache_dir=cache_dir, progress=not quiet and sys.stderr.isatty(),
                      hparams=parse_overrides(overrides))
    data_cfg = DataConfig(path=data, dict_path=dict_path,
                          langs=[x.strip() for x in langs.split(",")] if langs else None,
                          vocab_size=vocab_size, min_df=min_df, max_df=max_df, ref_corpus=ref_corpus,
                          out_of_core=out_of_core, shard_size=shard_size, shard_dir=shard_dir,
                          eval_train_docs=eval_train_docs)
    if contextual and out_of_core:
        from xtm.errors import XtmError

        raise XtmError("--contextual embeds every training document's text; it cannot follow an --out-of-core "
                       "run (fit it on a corpus that fits in memory with xtm-contextual)")
    phase2 = None
    if phase2_epochs:
        from xtm.trainer.phase2.objective import Phase2Config
        from xtm.trainer.phase2.refiners import RefinerConfig, Sampling

        phase2 = Phase2Config(
            epochs=phase2_epochs, refine_every=refine_every, rounds=rounds, top_words=top_words,
            refined_words=refined_words, lambda_mmd=lambda_mmd,
            lambda_doc=lambda_doc, doc_tau=doc_tau, mmd=not no_mmd, doc_align=not no_doc_align,
            multi_kernel=multi_kernel, encoder=encoder,
            refiner=RefinerConfig(backend=refiner, llm_url=llm_url, llm_model=llm_model, api_key_env=llm_api_key_env,
                                  concurrency=llm_concurrency, timeout=llm_timeout,
                                  sampling=Sampling(temperature=llm_temperature, max_tokens=llm_max_tokens,
                                                    seed=seed)))
    from xtm.atomic import exit_on_signals
    from xtm.run_dir import hold_run_dir
    from xtm.trainer.loop.distributed import is_main_process

    # SIGTERM/SIGHUP end the command like Ctrl-C (outputs cleaned up, exit 128 + N); while it trains
    # the loop's own handlers save the checkpoint first. The run stays locked from training to the
    # contextual fit (run_training's own hold nests).
    with exit_on_signals(), hold_run_dir(Path(out), "xtm-train") if is_main_process() else nullcontext():
        metrics = run_training(data_cfg, cfg, out, resume=resume, phase2=phase2)
        if not is_main_process():
            return  # torchrun: rank 0 reports and writes; the others have trained their share
        render_report(Path(out))  # the interrupted model's too: its banner says so
        if metrics.get("interrupted"):
            # Not finished: no summary on stdout, and an exit code that stops `xtm-train && xtm-export`.
            name = (metrics.get("interrupted_at") or {}).get("signal") or "SIGINT"
            click.echo(f"interrupted ({name}): {out}/metrics.json describes the model so far; continue with --resume",
                       err=True)
            sys.exit(128 + int(getattr(signal.Signals, name, signal.SIGINT)))
        summary = {k: metrics.get(k) for k in ("TU", "CNPMI", "TQ", "classification", "seconds_per_epoch")}
        if "refined" in metrics:
            summary["refined_sets"] = {k: metrics["refined"].get(k) for k in ("TU", "CNPMI", "TQ")}
        if contextual:
            from xtm.cli.contextual import summary as contextual_summary
            from xtm.trainer.contextual.fit import ContextualConfig, train_contextual

            summary["contextual"] = contextual_summary(train_contextual(out, ContextualConfig(
                seed=seed, device=device, threads=threads, cache_dir=cache_dir,
                progress=cfg.progress)))
    click.echo(json.dumps(summary, indent=2, ensure_ascii=False))
    click.echo(f"wrote {out}/metrics.json and topics_<lang>.txt", err=True)


def render_report(run_dir: Path) -> None:
    """report.html from the run directory's files. A view of a finished run: a failure is a warning,
    never a failed run (`xtm-report RUN_DIR` renders it again)."""
    from xtm.evaluation.report import write_report_html

    try:
        click.echo(f"xtm-train: wrote {write_report_html(run_dir)}", err=True)
    except Exception as e:  # noqa: BLE001 - see the docstring
        click.echo(f"xtm-train: warning: report.html was not written ({type(e).__name__}: {e})", err=True)


def parse_overrides(items: tuple[str, ...]) -> dict[str, object]:
    """`key=value` pairs with values parsed as JSON where possible (numbers, true/false), else strings."""
    from xtm.errors import XtmError

    out: dict[str, object] = {}
    for item in items:
        if "=" not in item:
            raise XtmError(f"--set expects KEY=VALUE, got '{item}'")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


if __name__ == "__main__":
    main()

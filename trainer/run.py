"""One training run end to end: load data, train, evaluate, write the run directory.

RUN_DIR layout (everything a later step needs, nothing pickled; file names and formats are owned by
xtm.run_dir.RunDir):
    run.json               the marker that makes a directory an xtm run, written first (xtm.run_dir)
    .xtm.lock              held (flock) by the process writing the run; names its pid and command
    config.json            model config, training settings, data source, tokenizers, languages
    vocab_<lang>.txt       each language's vocabulary (line i = column i of the topic-word matrix)
    topics_<lang>.txt      top words per topic, one topic per line, space-separated
    metrics.json           TU, CNPMI, TQ, classification (xtm's and the published protocol), seconds_per_epoch, ...
    history.json           per-epoch mean losses and seconds, rewritten after every epoch
    report_data.json       what report.html needs from the model (xtm.trainer.report_data)
    parity_sample_<lang>.npz  up to 1,000 of the run's own bags of words, for export's parity check
    report.html            rendered from these files by xtm-train's CLI (xtm.evaluation.report; xtm-report
                           redoes it); the trainer only hands it data
    checkpoints/           safetensors checkpoints (see xtm.trainer.loop.checkpoint)
    contextual/            the contextual route's head and cached embeddings (xtm.trainer.contextual.fit),
                           unless --no-contextual
    labels.json            topic labels: by phase 2's LLM, else LLM-free (xtm.trainer.labels; xtm-label redoes them)
  with LLM-XTM phase 2 also
    refined_topics_<lang>.txt  the last refinement's voted word sets, one topic per line
    (metrics.json then has "phase2": refinement steps, calls, tokens, seconds, fallback events,
    and "refined": TU / CNPMI of the refined sets, next to the model's own top-word metrics)
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

import xtm
from xtm.config import DataConfig, Phase2Config, Preprocessing, TrainConfig, check_device_name, from_dict
from xtm.corpus import Corpus, LanguageCorpus
from xtm.errors import XtmError
from xtm.evaluation.metrics import (
    ReferenceCorpus,
    cnpmi,
    crosslingual_tu,
    evaluate,
    has_labels,
    load_reference_corpus,
    topic_quality,
    unclassifiable_note,
)
from xtm.models_zoo.base import BuildContext, CrossLingualTopicModel
from xtm.models_zoo.registry import check_capabilities, model_class, unused_dictionary_note
from xtm.paths import cache_dir
from xtm.run_dir import (
    PARITY_SAMPLE_DOCS,
    RunDir,
    has_checkpoint,
    has_results_only,
    hold_run_dir,
    lock_dir,
    record_token_rules,
    refuse_foreign_dir,
    run_token_rules,
)
from xtm.runtime.tokenize import with_segmenter
from xtm.trainer.data.batches import BatchSource, InMemoryBatches, steps_per_epoch
from xtm.trainer.data.loading import load_corpus
from xtm.trainer.data.vocab_rules import check_token_rules
from xtm.trainer.loop import distributed
from xtm.trainer.loop.distributed import DistContext
from xtm.trainer.loop.model_passes import infer_mean, infer_theta, lone_collapses, recalibrate_batchnorm
from xtm.trainer.loop.torch_setup import pick_device, torch_threads, training_device
from xtm.trainer.loop.training import TrainResult, train_backbone
from xtm.trainer.phase2.objective import Phase2Objective
from xtm.trainer.report_data import build_report_data

logger = logging.getLogger(__name__)


def describe_corpus(corpus: Corpus) -> str:
    parts = [f"{lc.lang}: {lc.num_train} train / {lc.test_bow.shape[0] if lc.test_bow is not None else 0} test "
             f"docs, {lc.vocab_size} words" for lc in corpus.languages]
    return f"{corpus.name}: " + "; ".join(parts)


@dataclass
class ModelOutputs:
    """Theta and beta of the trained model: computed once, used by evaluation and the report."""

    train_theta: dict[str, np.ndarray]
    test_theta: dict[str, np.ndarray]
    beta: dict[str, np.ndarray]


def model_outputs(corpus: Corpus, model: CrossLingualTopicModel, device: torch.device) -> ModelOutputs:
    train_theta = {lc.lang: infer_theta(model, lc.train_bow, i, device) for i, lc in enumerate(corpus.languages)}
    test_theta = {lc.lang: infer_theta(model, lc.test_bow, i, device)
                  for i, lc in enumerate(corpus.languages) if lc.test_bow is not None}
    with torch.no_grad():
        beta = {lang: b.detach().cpu().numpy() for lang, b in zip(corpus.langs, model.topic_word(), strict=True)}
    return ModelOutputs(train_theta, test_theta, beta)


def evaluate_model(corpus: Corpus, result: TrainResult, device: torch.device, ref_path: str | None,
                   outputs: ModelOutputs | None = None, ref: ReferenceCorpus | None = None) -> dict[str, Any]:
    """metrics.json's content; pass `outputs` / `ref` already computed to avoid doing it twice.

    Unlike a `--eval-every` point it includes "classification_published" (the published tables'
    protocol, on the encoder means): its RBF SVC takes 25-90 s on the benchmark datasets, once.
    """
    model = result.model
    outputs = outputs if outputs is not None else model_outputs(corpus, model, device)
    if ref is None and ref_path:
        ref = load_reference_corpus(ref_path, langs=tuple(corpus.langs))

    def encoder_means() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        langs = list(enumerate(corpus.languages))
        return ({lc.lang: infer_mean(model, lc.train_bow, i, device) for i, lc in langs},
                {lc.lang: infer_mean(model, lc.test_bow, i, device) for i, lc in langs})

    return evaluate(corpus, outputs.train_theta, outputs.test_theta, outputs.beta, ref=ref,
                    encoder_means=encoder_means)


def refined_metrics(refined: dict[str, list[list[str]]], ref_path: str | None) -> dict[str, Any]:
    """TU and (with a reference corpus) CNPMI/TQ of the refined word sets, as for the model's words."""
    out: dict[str, Any] = dict(crosslingual_tu(refined))
    langs = list(refined)
    ref = load_reference_corpus(ref_path, langs=tuple(langs)) if ref_path else None
    if ref is not None and ref.covers(langs[0], langs[1]):
        n = max(len(t) for t in refined[langs[0]])
        out["CNPMI"] = cnpmi(refined[langs[0]], refined[langs[1]], ref, langs[0], langs[1], n=n)
        out["TQ"] = topic_quality(out["CNPMI"], out["TU"])
    return out


def run_training(data: DataConfig, cfg: TrainConfig, out: Path, resume: bool = False,
                 phase2: Phase2Config | None = None, command: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate; returns metrics (also written to out/metrics.json).

    command: what the caller was told beyond these configs, recorded in config.json from the start for a later
    resume (xtm.trainer.recorded.COMMAND_KEY: whether to fit the contextual route).
    Under torchrun (WORLD_SIZE > 1) every rank calls this: all train, rank 0 alone preprocesses
    shards, writes and evaluates; the other ranks return {"rank": r} after training.
    """
    out = Path(out)
    if phase2 is not None:
        # One schedule: phase 2 runs phase2.epochs epochs, and the trainer (and train_config) count them there.
        cfg = replace(cfg, phase2_epochs=phase2.epochs)
    check_device_name(cfg.device)
    refuse_foreign_dir(out)  # before anything: a user's directory is never written to
    # What the settings alone rule out (the model or phase 2 from streamed shards), before any work.
    check_capabilities(cfg.model, out_of_core=data.out_of_core, phase2=phase2 is not None)
    model_class(cfg.model).check_hparams(cfg.hparams)  # (a --set key of another backbone, before the data loads)
    if data.dict_path is not None and (note := unused_dictionary_note(cfg.model)) is not None:
        logger.info(note)
    dist = distributed.init_from_env(cfg.device)
    try:
        if dist is not None:
            if phase2 is not None:
                raise XtmError("LLM-XTM phase 2 runs in one process; train phase 1 under torchrun, then add "
                               "phase 2 with --resume --phase2-epochs N in a single process")
            logger.info(f"distributed: {dist.world} ranks, backend {dist.backend}, device {dist.device.type}")
        # Rank 0 writes the run (and builds the shards), holding their locks throughout; a second
        # xtm-train on the same run or shard directory is refused instead of rebuilding under it.
        with ExitStack() as held:
            if dist is None or dist.is_main:
                held.enter_context(hold_run_dir(out, "xtm-train"))
                if data.out_of_core:
                    from xtm.trainer.data.sharding import refuse_foreign_shard_dir

                    refuse_foreign_shard_dir(shard_dir(data, out))
                    held.enter_context(lock_dir(shard_dir(data, out), "xtm-train"))
            if not resume and has_checkpoint(out):
                raise XtmError("the run directory already holds a run: pass --resume to continue it, "
                               "or choose another --out", path=out)
            if has_results_only(out):
                # (deleting checkpoints/ to save disk once let a new training, or a --resume starting from
                # scratch, write over the finished run's metrics, topics and report)
                raise XtmError("the run directory holds a finished run's results and no checkpoint to continue it "
                               "from (checkpoints/ was removed): choose another --out, or move the results away to "
                               "train here again", path=out)
            data = _token_rules_of_run(data, out, resume, record=dist is None or dist.is_main)
            distributed.barrier(dist)  # every rank checked the run directory before rank 0 writes to it
            # one choice of CPU threads for training and evaluation alike (sampled once: the load now;
            # a resumed run takes the count its checkpoint records)
            held.enter_context(torch_threads(cfg.threads, training_device(cfg.device, dist),
                                             resume_dir=out if resume else None))
            metrics = _run(data, cfg, out, resume, phase2, dist, command)
            # Every rank leaves the group together: a rank that destroyed it while rank 0 was still
            # evaluating was aborted by gloo at exit ("terminate called without an active exception").
            distributed.barrier(dist)
            return metrics
    finally:
        distributed.close(dist)


def _token_rules_of_run(data: DataConfig, out: Path, resume: bool, record: bool) -> DataConfig:
    """A resumed run reads its documents with the token rules it recorded (a run made before an upgrade keeps
    its vocabulary: the checkpoint's columns are those words); a new one records the rules it reads them with
    (`record`: the rank that writes the run)."""
    check_token_rules(data.token_rules)
    if resume and has_checkpoint(out):
        rules = run_token_rules(out)
        if rules != data.token_rules:
            if record:
                logger.info(f"token rules {rules}, as the run was made with (new runs: {data.token_rules})")
            return replace(data, token_rules=rules)
        return data
    if record:
        record_token_rules(out, data.token_rules)
    return data


def check_topics(corpus: Corpus, num_topics: int) -> None:
    """K topics over fewer than K words per language cannot be distinct topics: refuse before training."""
    small = [lc for lc in corpus.languages if lc.vocab_size < num_topics]
    if small:
        words = ", ".join(f"'{lc.lang}' has {lc.vocab_size}" for lc in small)
        fewest = min(lc.vocab_size for lc in small)
        choose = f"Choose --topics {fewest} or fewer, or keep" if fewest >= 2 else "Keep"  # (--topics is at least 2)
        raise XtmError(f"--topics {num_topics} is larger than the vocabulary ({words} words): topics would "
                       f"repeat the same words. {choose} more words (JSONL input: --vocab-size, --min-df, --max-df)")


def shard_dir(data: DataConfig, out: Path) -> Path:
    return Path(data.shard_dir) if data.shard_dir else out / "shards"


def load_training_data(data: DataConfig, cfg: TrainConfig, out: Path,
                       dist: DistContext | None, resuming: bool = False) -> tuple[Corpus, BatchSource | None]:
    """The corpus models are built and evaluated from, and the training batches' source.
    `resuming`: a run continued from its checkpoint, whose shards are never rebuilt from other inputs.

    In memory: the corpus itself (None: batches come from its matrices). Out of core: rank 0
    builds (or reuses) the shards while other ranks wait, then every rank streams them.
    """
    t0 = time.perf_counter()
    progress = cfg.progress and (dist is None or dist.is_main)
    if not data.out_of_core:
        corpus = load_corpus(data.path, dict_path=data.dict_path, langs=data.langs, prep=data.preprocessing,
                             seed=cfg.seed, progress=progress)
        logger.info(f"loaded {describe_corpus(corpus)} in {time.perf_counter() - t0:.1f}s")
        return corpus, None
    from xtm.trainer.data.sharding import ShardedCorpus, open_or_build_shards

    shards = shard_dir(data, out)
    if dist is None or dist.is_main:
        open_or_build_shards(data.path, shards, langs=data.langs, prep=data.preprocessing, seed=cfg.seed,
                             shard_size=data.shard_size, progress=progress, keep_built=resuming)
    distributed.barrier(dist)
    sharded = ShardedCorpus(shards)
    logger.info(f"shards ready in {time.perf_counter() - t0:.1f}s: {sharded.describe()}")
    return sharded.eval_corpus(data.eval_train_docs, dict_path=data.dict_path), sharded.batches()


def _preprocessing_changes(run: RunDir, prep: Preprocessing) -> str:
    """The preprocessing options given now that differ from those the run's config.json records, said as options
    ("--stopwords: 12 words then, none now"); empty when none differs or the record cannot be read."""
    try:
        recorded = run.load_config()["data"]
        then_prep = from_dict(DataConfig, {"path": "", **recorded}).preprocessing
    except (XtmError, OSError, ValueError, KeyError, TypeError):
        return ""

    def said(value: Any) -> str:
        if isinstance(value, tuple):
            return f"{len(value)} words" if value else "none"
        return str(value)

    # the preprocessing settings that are options (--vocab-size, --min-df, --max-df, --stopwords), by their flags
    options = [(f.name, spec.flags.split()[0]) for f in fields(Preprocessing) if (spec := f.metadata.get("cli"))]
    changes = [f"{flag}: {said(getattr(then_prep, name))} then, {said(getattr(prep, name))} now"
               for name, flag in options if getattr(then_prep, name) != getattr(prep, name)]
    return "; ".join(changes)


# Below this many optimizer steps in all, topics may not have settled: 320 documents a language at InfoCTM's batch
# of 200 for 100 epochs are 200 steps, and its topics mixed the classes (cross-lingual accuracy 0.28-0.39, 0.74 at
# 300 epochs; a newcomer's finding); the built-in demo (NMTM, 300 steps) and NMTM at 700 steps on that corpus
# (0.89) are clean. The published recipes take 9,000-94,000.
FEW_STEPS = 250


def _absolute_paths(data: DataConfig) -> dict[str, str]:
    return {name: os.path.abspath(value) for name in ("path", "dict_path", "ref_corpus", "shard_dir")
            if isinstance(value := getattr(data, name), str) and value}


def _warn_few_steps(cfg: TrainConfig, sizes: list[int]) -> None:
    steps = steps_per_epoch(sizes, cfg.batch_size) * cfg.epochs
    if steps < FEW_STEPS:
        smaller = min(cfg.batch_size // 4, max(sizes) // 10)
        how = f"more --epochs, or a smaller --batch-size such as {smaller}" if smaller >= 8 else "more --epochs"
        logger.warning(f"{cfg.epochs} epoch(s) of {max(sizes):,} documents at batch {cfg.batch_size} are {steps:,} "
                       f"optimizer steps in all: the topics may not settle. Train more ({how})")


def _tokenizer_record(lc: LanguageCorpus, cut_with: dict[str, str]) -> dict[str, Any]:
    """A language's tokenizer as config.json records it: its settings and the releases that cut its words (those
    the shards record, out of core; else this process's)."""
    record = with_segmenter(lc.tokenizer.to_dict())
    if lc.lang in cut_with and "segmenter" in record:
        record["segmenter"] = cut_with[lc.lang]
    return record


def _write_vocabularies(run: RunDir, corpus: Corpus, prep: Preprocessing, *, resuming: bool) -> None:
    """The vocabularies and parity samples export reads. A run resumed from a checkpoint keeps its
    own: the checkpoint's columns are those words, so a vocabulary that differs is refused here,
    before anything is written (a refused --resume once left the run unexportable)."""
    for lc in corpus.languages:
        if resuming and run.vocab_path(lc.lang).exists():
            if run.read_vocab(lc.lang) != list(lc.vocab):
                changed = _preprocessing_changes(run, prep)
                why = f": {changed}" if changed else " (other data or preprocessing settings?)"
                raise XtmError(f"--resume: the '{lc.lang}' vocabulary built from this data differs from the one "
                               f"this run was trained with{why}", path=run.vocab_path(lc.lang))
        else:
            run.write_vocab(lc.lang, lc.vocab)
    for lc in corpus.languages:
        if not (resuming and run.parity_sample_path(lc.lang).exists()):
            run.save_parity_sample(lc.lang, parity_sample(lc))


def _run_record(data: DataConfig, cfg: TrainConfig, corpus: Corpus, phase2: Phase2Config | None,
                command: dict[str, Any] | None) -> dict[str, Any]:
    """config.json's content but the model's own configuration (known once the model is built)."""
    from xtm.trainer.recorded import COMMAND_KEY

    return {
        "xtm_version": xtm.__version__, "train_config": cfg.to_dict(),
        # paths absolute: a --resume or a contextual fit from another directory finds the same files
        "data": {**data.to_dict(), **_absolute_paths(data), "name": corpus.name}, "langs": corpus.langs,
        # with the segmenters' releases (out of core: those that cut the shards): a runtime with others says its
        # words may be cut otherwise
        "tokenizers": {lc.lang: _tokenizer_record(lc, corpus.info.get("segmenters") or {})
                       for lc in corpus.languages},
        "corpus_info": corpus.info, "phase2": phase2.to_dict() if phase2 is not None else None,
        **({COMMAND_KEY: command} if command is not None else {})}


def _run(data: DataConfig, cfg: TrainConfig, out: Path, resume: bool, phase2: Phase2Config | None,
         dist: DistContext | None, command: dict[str, Any] | None = None) -> dict[str, Any]:
    main = dist is None or dist.is_main
    if resume and has_checkpoint(out) and (changed := _preprocessing_changes(RunDir(out), data.preprocessing)):
        # Before any document is read: other --user-words whose words the documents lack resumed silently and
        # recorded the new list for the bundle (which then cut words as training had not); the others changed
        # the documents or the vocabulary and were refused as "other data".
        raise XtmError(f"--resume: {changed}: a run resumes with the preprocessing it was trained with (leave these "
                       "options out to take the run's own), or train a new run", path=out)
    corpus, batches = load_training_data(data, cfg, out, dist, resuming=resume and has_checkpoint(out))
    check_capabilities(cfg.model, corpus)  # its languages, and the dictionary links the model may need
    check_topics(corpus, cfg.num_topics)
    if main and has_labels(corpus) and (single := unclassifiable_note(corpus)) is not None:
        logger.warning(f"classification will be left out of the metrics: {single.removeprefix('not computed: ')}")
    run = RunDir(out)
    if main:
        logger.info(cfg.describe())
        _warn_few_steps(cfg, (batches or InMemoryBatches(corpus)).sizes())
        _write_vocabularies(run, corpus, data.preprocessing, resuming=resume and has_checkpoint(out))

    objective = None
    if phase2 is not None:
        logger.info(f"phase 2 (LLM-XTM): {phase2.epochs} epochs after {cfg.epochs}, refiner "
                    f"{phase2.refiner.backend}, R={phase2.rounds}, every {phase2.refine_every} epochs")
        context = BuildContext(cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else cache_dir(), seed=cfg.seed,
                               progress=cfg.progress)
        objective = Phase2Objective(corpus, cfg.num_topics, phase2, context, pick_device(cfg.device))
    ref = load_reference_corpus(data.ref_corpus, langs=tuple(corpus.langs)) if data.ref_corpus else None
    every = periodic_evaluation(corpus, batches, ref, cfg) if cfg.eval_every and main else None

    def started() -> None:
        # This training's settings, recorded before its first epoch and marked not complete until it ends, so a
        # run killed while it trains (kill -9, a second Ctrl-C right after its checkpoint) is continued by a plain
        # --resume with them: with config.json written only at the end, that resume was refused, and a killed
        # continuation (--resume --epochs N) resumed with the settings of the run it continued. Written once the
        # checkpoint is accepted: a refused resume leaves the run's record as it was.
        run.save_config({**_run_record(data, cfg, corpus, phase2, command), RunDir.INCOMPLETE: True})

    result = train_backbone(corpus, cfg, out, resume=resume, phase2=objective, data=batches, dist=dist,
                            on_epoch_end=every, on_start=started if main else None)
    if not main:
        return {"rank": dist.rank if dist is not None else 0}
    model = result.model
    run.save_config({"model_config": model.config(), **_run_record(data, cfg, corpus, phase2, command)})
    run.save_history(result.history)

    # An interrupted run is still evaluated and reported (metrics.json "interrupted": true, and the
    # report says so), so its topics can be looked at; its exit code says it did not finish.
    logger.info("evaluating the interrupted model (Ctrl-C to skip; the checkpoint is saved)" if result.interrupted
                else "evaluating")
    device = pick_device(cfg.device)
    outputs = model_outputs(corpus, model, device)
    metrics = evaluate_model(corpus, result, device, data.ref_corpus, outputs=outputs, ref=ref)
    top = metrics.pop("top_words")
    for lang, topics in top.items():
        run.write_topics(lang, topics)
    refined = None
    if objective is not None:
        if any(r is not None for r in objective.refined):  # (none: the model's own words, not refined sets)
            refined = objective.refined_topics(model)
            for lang, topics in refined.items():
                run.write_refined_topics(lang, topics)
            metrics["refined"] = refined_metrics(refined, data.ref_corpus)
        metrics["phase2"] = objective.report()
    metrics.update({
        "model": cfg.model, "dataset": corpus.name, "langs": corpus.langs, "num_topics": cfg.num_topics,
        "epochs": result.epochs_done, "interrupted": result.interrupted, "interrupted_at": result.stopped_at,
        "seconds_per_epoch": result.seconds_per_epoch,
        "train_seconds_total": float(np.sum([h["seconds"] for h in result.history])) if result.history else 0.0,
        "corpus": corpus.info,
    })
    if dist is not None:
        metrics["distributed"] = {"world_size": dist.world, "backend": dist.backend,
                                  "steps_per_epoch_per_rank": result.history[-1]["steps"] if result.history else 0,
                                  "rank_state_sha256": result.rank_digests}
    run.save_metrics(metrics)
    write_report_data(run, corpus, model, outputs, top, refined, ref, device)
    write_labels(run, phase2 if result.failure is None else None, cfg)  # (not the LLM that answered nothing)
    if result.failure is not None:
        raise result.failure  # recorded first: config.json gives a --resume the run's own settings
    return metrics


def write_labels(run: RunDir, phase2: Phase2Config | None, cfg: TrainConfig) -> None:
    """labels.json (xtm.trainer.labels): with the LLM phase 2 was given, else LLM-free (no network).
    Like the report, a view of the finished run: a failure is a warning (`xtm-label RUN_DIR` redoes it)."""
    from xtm.config import LabelConfig
    from xtm.trainer.labels import label_run

    try:
        label_run(run.path, LabelConfig.after_training(phase2), llm_errors="fallback",
                  cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else cache_dir())
    except Exception as e:  # noqa: BLE001 - see the docstring
        logger.warning(f"labels.json was not written ({type(e).__name__}: {e}); run xtm-label {run.path}")


def periodic_evaluation(corpus: Corpus, batches: BatchSource | None, ref: ReferenceCorpus | None,
                        cfg: TrainConfig) -> Callable[[int, CrossLingualTopicModel], dict[str, Any] | None]:
    """The `--eval-every` callback: every cfg.eval_every epochs, the metrics of the model as it is
    (TU, classification, CNPMI/TQ with a reference corpus), logged and kept in history.json.

    It evaluates a copy whose batch-norm statistics are recalibrated the way the final model's are,
    so a curve point is what metrics.json would say had training stopped there; the model being
    trained, its RNGs and therefore the run itself are untouched (tested: same weights with and
    without it).
    """
    source = batches if batches is not None else InMemoryBatches(corpus)
    device = pick_device(cfg.device)

    def evaluate_now(epoch: int, model: CrossLingualTopicModel) -> dict[str, Any] | None:
        if epoch % cfg.eval_every:
            return None
        t0 = time.perf_counter()
        snapshot = copy.deepcopy(model)
        recalibrate_batchnorm(snapshot, source, device)
        # Said by the training loop (once a run, whichever of an evaluation or a checkpoint shows it first).
        collapsed = {lang: [v, eps] for lang, (v, eps) in lone_collapses(snapshot).items()}
        outputs = model_outputs(corpus, snapshot, device)
        metrics = evaluate(corpus, outputs.train_theta, outputs.test_theta, outputs.beta, ref=ref)
        point = {k: metrics.get(k) for k in ("TU", "CNPMI", "TQ", "classification")}
        point["near_collapse"] = collapsed  # {lang: [variance, eps]} of the languages alone near collapse
        point["seconds"] = time.perf_counter() - t0
        cls = point["classification"] or {}
        logger.info(f"epoch {epoch} evaluation: TU {point['TU']:.3f}"
                    + "".join(f", {k} {v:.3f}" for k, v in cls.items() if "-C-" not in k)
                    + (f", CNPMI {point['CNPMI']:.4f}" if point["CNPMI"] is not None else ""))
        return point

    return evaluate_now


def write_report_data(run: RunDir, corpus: Corpus, model: CrossLingualTopicModel, outputs: ModelOutputs,
                      top: dict[str, list[list[str]]], refined: dict[str, list[list[str]]] | None,
                      ref: ReferenceCorpus | None, device: torch.device) -> None:
    """report_data.json: what the report needs from the model (the report itself is rendered from the
    run directory's files by whoever shows it: xtm-train's CLI, xtm-report).

    The report is a view of a finished run: a failure here is logged, never raised, so it cannot
    turn a trained and evaluated run into a failed one.
    """
    try:
        vocabs = {lc.lang: list(lc.vocab) for lc in corpus.languages}
        run.save_report_data(build_report_data(
            model, corpus.langs, vocabs, outputs.train_theta, outputs.beta, top, ref, device, refined=refined,
            corpus=corpus))
    except Exception as e:  # noqa: BLE001 - see the docstring
        logger.warning(f"report_data.json was not written ({type(e).__name__}: {e})")


def parity_sample(lc: LanguageCorpus) -> sp.csr_matrix:
    """The first PARITY_SAMPLE_DOCS documents of the test split (else of the training split)."""
    bows = lc.test_bow if lc.test_bow is not None and lc.test_bow.shape[0] else lc.train_bow
    return bows[:PARITY_SAMPLE_DOCS]

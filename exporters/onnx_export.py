"""Freeze a training run into a bundle: ONNX encoders, topic-word matrices, vocabularies, manifest.

The bundle is the only thing the runtime reads (format: xtm.runtime.bundle):
    encoder_<lang>.onnx   word_ids int64 [N, L], counts float32 [N, L] -> theta float32 [N, K], one per
                          language (the sparse input format; see graph_rewrites.sparse_encoder)
    beta_<lang>.npy       topic-word weights [K, V_lang] (what top words are read from)
    vocab_<lang>.txt      line j = column j of bow
    topics.json           top words per topic in every language (topic ids shared across languages)
    manifest.json         schema version, model, languages, K, opset, tokenizers, sha256 of every file
It carries only what inference needs: NMTM's translation maps and InfoCTM's linked-word pairs
(training-only buffers) are not exported, nor the exporter's per-node stack traces.

This module orchestrates; each job has its own module:
    torch_to_onnx         torch module -> ONNX file
    graph_rewrites        the exported graph -> the bundle's encoder (sparse input, int8, ...)
    parity                ONNX-vs-torch on the run's own documents, judged against float32 rounding
    contextual_export     the optional contextual route
    xtm.runtime.bundle_write  topics.json and manifest.json (written last)
    xtm.runtime.bundle_dir    where the bundle goes: assembled under a temporary name and renamed
                          into place, so a failed export never leaves a half-written bundle; --out
                          is only ever replaced when it is empty or an xtm bundle listing every entry
The trained model comes through the trainer's one public entry, load_trained_model.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from xtm.errors import XtmError
from xtm.exporters.graph_rewrites import finish_encoder, quantize_dynamic_int8
from xtm.exporters.parity import Parity, judge_parity, parity_bows, parity_failure, run_onnx, torch_reference
from xtm.exporters.torch_to_onnx import export_encoder
from xtm.labels import TopicLabels, topics_digest
from xtm.run_dir import RunDir, reading_run
from xtm.runtime.bundle import ContextualEntry, EncoderEntry, check_tokenizer
from xtm.runtime.bundle_dir import check_out_dir, staged_bundle
from xtm.runtime.bundle_write import SourceRun, write_manifest, write_topics
from xtm.topic_words import TOP_WORDS, top_words
from xtm.trainer.loop.checkpoint import load_trained_model

__all__ = ["DEFAULT_OPSET", "TOP_N", "ExportOptions", "ExportReport", "export_run"]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 18
TOP_N = TOP_WORDS  # the training run's own topics_<lang>.txt length (labels are checked against it)


@dataclass
class ExportReport:
    bundle: Path
    languages: list[str]
    parity_max_abs: dict[str, float] = field(default_factory=dict)
    parity_docs: dict[str, int] = field(default_factory=dict)
    parity_source: dict[str, str] = field(default_factory=dict)
    # Per language: max |diff|, the tolerance it was judged by, float32 rounding, top-topic agreement
    parity: dict[str, dict[str, Any]] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    contextual: dict[str, Any] | None = None  # the contextual graph's parity report, when exported
    bundle_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["bundle"] = str(self.bundle)
        return d

    def add_parity(self, lang: str, parity: Parity) -> None:
        self.parity[lang] = parity.to_dict()
        self.parity_max_abs[lang], self.parity_docs[lang] = parity.max_abs_diff, parity.docs
        self.parity_source[lang] = parity.source


@dataclass(frozen=True)
class ExportOptions:
    """export_run's settings, passed down as one value (see export_run for their meaning)."""

    quantize: str | None = None
    opset: int = DEFAULT_OPSET
    parity_docs: int = 1000
    progress: bool = True
    contextual: bool | None = None
    parity_check: bool = True


def export_run(run_dir: str | Path, out_dir: str | Path, *, quantize: str | None = None,
               opset: int = DEFAULT_OPSET, parity_docs: int = 1000, progress: bool = True,
               contextual: bool | None = None, parity_check: bool = True) -> ExportReport:
    """Export RUN_DIR into a bundle at OUT_DIR; checks ONNX-vs-torch parity on real documents.

    OUT_DIR may be new, an empty directory or a bundle (which is replaced); anything else is refused
    before any work. contextual: also export the run's contextual route (RUN_DIR/contextual/, see
    xtm.exporters.contextual_export); None (default) when the run has one, False never, True
    requires it. parity_check=False: a failed parity check does not stop the export (it is still
    measured, reported and recorded in the manifest as failed). progress: log each step (INFO, to
    the "xtm.exporters" loggers; xtm-export shows them, -q hides them).
    """
    if quantize not in (None, "int8"):
        raise XtmError(f"--quantize {quantize!r} is not supported (choose int8)")
    t0 = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(os.path.abspath(out_dir))
    check_out_dir(out_dir)
    with reading_run(run_dir):  # not while xtm-train (a --resume) writes it
        config, model = load_trained_model(run_dir)
        opts = ExportOptions(quantize=quantize, opset=opset, parity_docs=parity_docs, progress=progress,
                             contextual=contextual, parity_check=parity_check)
        report = ExportReport(bundle=out_dir, languages=list(model.langs))
        tokenizers = _tokenizers(config, report.languages, RunDir(run_dir))
        labels = _run_labels(RunDir(run_dir), model.num_topics, report.languages)  # a damaged file: before any work
        with staged_bundle(out_dir) as tmp:
            _write_bundle(tmp, RunDir(run_dir), config, tokenizers, model, report, opts, labels)
    report.bundle_bytes = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    report.seconds = time.perf_counter() - t0
    return report


def _source_run(run: RunDir, config: dict[str, Any]) -> SourceRun:
    """The manifest's record of the run: the settings the exported checkpoint was trained with and how far it
    got. A run stopped before its last epoch (Ctrl-C, a kill while resumed) exports with a warning."""
    ckpt = config.get("checkpoint") or {}
    train_config = ckpt.get("train_config") or config.get("train_config") or {}
    epoch = ckpt.get("epoch")
    planned = [train_config.get(k) for k in ("epochs", "phase2_epochs")]
    if not isinstance(epoch, int) or not all(isinstance(n, int) or n is None for n in planned):
        return SourceRun.of(run.path, train_config)
    total = sum(n or 0 for n in planned)
    finished = epoch >= total and not ckpt.get("partial")
    if not finished:
        inside = f", stopped inside epoch {epoch + 1}" if ckpt.get("partial") else ""
        logger.warning(f"{run.path} stopped at epoch {epoch} of {total}{inside} (its checkpoint {ckpt.get('name')}): "
                       "the bundle serves the model as it was then; `xtm-train ... --resume` finishes the run")
    return SourceRun.of(run.path, train_config, epochs_done=epoch, finished=finished)


def _tokenizers(config: dict[str, Any], langs: list[str], run: RunDir) -> dict[str, dict[str, Any]]:
    """Each language's tokenizer settings from the run's config.json (the runtime must tokenize as
    training did); XtmError naming the file when one is missing."""
    tokenizers = config.get("tokenizers")
    for lang in langs:
        if not isinstance(tokenizers, dict) or not isinstance(tokenizers.get(lang), dict):
            raise XtmError(f"config.json has no tokenizer settings for '{lang}' (tokenizers.{lang}): not written by "
                           "this xtm-train, or edited", path=run.file(RunDir.CONFIG))
    assert isinstance(tokenizers, dict)
    # Checked as a bundle's are read, naming config.json (else the error named the staging manifest,
    # a temporary already removed).
    return {lang: check_tokenizer(tokenizers[lang], run.file(RunDir.CONFIG), f"tokenizers.{lang}: ")
            for lang in langs}


def _write_bundle(tmp: Path, run: RunDir, config: dict[str, Any], tokenizers: dict[str, dict[str, Any]],
                  model: torch.nn.Module, report: ExportReport, opts: ExportOptions,
                  labels: TopicLabels | None = None) -> None:
    """Every bundle file, manifest.json last, into the staging directory `tmp` (`labels`: the run's
    topic labels for topics.json)."""
    langs = report.languages
    bad = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
           if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:  # a run that diverged (an older xtm saved it): its topics and every theta would be NaN
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise XtmError(f"the run's model holds non-finite values ({bad[0]}{more}): it diverged in training; train "
                       "it again with a lower --lr", path=run.path)
    with torch.no_grad():
        betas = [b.detach().cpu().numpy().astype(np.float32) for b in model.topic_word()]
    report.quantization = {} if opts.quantize == "int8" else None
    encoders: list[EncoderEntry] = []
    parity: dict[str, Parity] = {}
    topic_words: dict[str, list[list[str]]] = {}
    vocabs: dict[str, list[str]] = {}
    for i, lang in enumerate(langs):
        vocab = vocabs[lang] = run.read_vocab(lang, model.vocab_sizes[i])
        if opts.progress:
            logger.info("exporting the %s encoder", lang)
        entry, parity[lang] = _export_language(tmp, run, model, i, vocab, tokenizers[lang], report, opts)
        shutil.copyfile(run.vocab_path(lang), tmp / entry.vocab)
        assert entry.beta is not None
        np.save(tmp / entry.beta, betas[i], allow_pickle=False)
        topic_words[lang] = top_words(betas[i], vocab, TOP_N)
        encoders.append(entry)
    write_topics(tmp, topic_words, TOP_N,
                 labels=_labels_for(labels, topic_words, run, dict(zip(langs, betas, strict=True)), vocabs))
    contextual = _export_contextual(run.path, tmp, report, opts, model)
    write_manifest(tmp, model=model.name, num_topics=model.num_topics, languages=langs, encoders=encoders,
                   opset=opts.opset, quantization=opts.quantize,
                   source_run=_source_run(run, config),
                   parity={lang: p.manifest_record() for lang, p in parity.items()}, contextual=contextual)


def _run_labels(run: RunDir, num_topics: int, langs: list[str]) -> TopicLabels | None:
    """The run's topic labels (labels.json, xtm-label) for topics.json; None when it has none. A damaged
    labels.json is an XtmError naming it (load_labels): never exported half-read."""
    labels = run.load_labels(num_topics, langs)
    if labels is None:
        logger.info("the run has no labels.json: the bundle's topics have no labels (xtm-label RUN_DIR adds them)")
    return labels


def _labels_for(labels: TopicLabels | None, topic_words: dict[str, list[list[str]]], run: RunDir,
                betas: dict[str, np.ndarray], vocabs: dict[str, list[str]]) -> list[dict[str, str]] | None:
    """Each topic's labels for topics.json, when they were made for these topics: labels.json written before
    the run trained on (a resumed run stopped before it labelled again) names other topics, and is left out."""
    if labels is None:
        return None
    if (labels.topics_sha256 is not None and labels.topics_sha256 != topics_digest(topic_words)
            and not _labelled_topics_are_these(labels.topics_sha256, run, betas, vocabs)):
        logger.warning(f"{run.file(RunDir.LABELS)} labels other topics than the model's (the run trained on after "
                       f"labelling): the bundle has no labels; label this state with `xtm-label {run.path}`")
        return None
    return [{lang: row[lang] for lang in topic_words if lang in row} for row in labels.labels]


def _labelled_topics_are_these(digest: str, run: RunDir, betas: dict[str, np.ndarray],
                               vocabs: dict[str, list[str]], rtol: float = 1e-5) -> bool:
    """True when the topics the labels were made for (the run's topics_<lang>.txt, matching `digest`) are this
    model's top words up to float noise: each listed word's weight is, within rtol, the weight of that rank.

    Training ranks its topics' words on its own device, export on the CPU: two words tied within a float's last
    bits (a GPU softmax against a CPU one) can swap places, which changes the digest but not the topics."""
    try:
        labelled = {lang: run.read_topics(lang) for lang in betas}
    except (OSError, XtmError):
        return False
    if topics_digest(labelled) != digest:
        return False  # labels made for topics that are no longer the run's
    for lang, beta in betas.items():
        index = {w: j for j, w in enumerate(vocabs[lang])}
        if len(labelled[lang]) != beta.shape[0]:
            return False
        for row, words in zip(beta, labelled[lang], strict=True):
            if len(set(words)) != len(words) or any(w not in index for w in words):
                return False
            ranked = np.sort(row)[::-1][:len(words)]
            if not np.allclose(row[[index[w] for w in words]], ranked, rtol=rtol, atol=0):
                return False
    return True


def _export_language(tmp: Path, run: RunDir, model: torch.nn.Module, i: int, vocab: list[str],
                     tokenizer: dict[str, Any], report: ExportReport,
                     opts: ExportOptions) -> tuple[EncoderEntry, Parity]:
    """encoder_<lang>.onnx in tmp, checked against torch (and quantized); its manifest entry and
    parity. A failed parity check raises unless opts.parity_check is off."""
    lang = model.langs[i]
    fp32 = tmp / f"encoder_{lang}.onnx"
    exported = tmp / f"encoder_{lang}.dense.onnx"
    export_encoder(model, i, len(vocab), exported, opts.opset)
    # ScatterND-free sparse input needs only opset-13 ops; opset >= 17 is enforced by the CLI.
    sparse = finish_encoder(exported, fp32)
    # Parity: ONNX Runtime against torch on real documents of this language.
    bows, source = parity_bows(run, lang, len(vocab), opts.parity_docs)
    ref, ref64 = torch_reference(model.encoder_for(i).eval(), bows.toarray().astype(np.float32))
    parity = judge_parity(run_onnx(fp32, bows, sparse), ref, ref64, source)
    report.add_parity(lang, parity)
    if not parity.passed and opts.parity_check:
        raise XtmError(parity_failure(lang, parity))
    if opts.quantize == "int8":
        assert report.quantization is not None
        report.quantization[lang] = _quantize_encoder(exported, fp32, bows, ref, sparse)
    exported.unlink()
    inputs = ("word_ids", "counts") if sparse else ("bow",)
    entry = EncoderEntry(lang=lang, file=fp32.name, inputs=inputs, input_format="sparse" if sparse else "dense",
                         output="theta", vocab=f"vocab_{lang}.txt", vocab_size=len(vocab), beta=f"beta_{lang}.npy",
                         tokenizer=tokenizer)
    return entry, parity


def _quantize_encoder(exported: Path, fp32: Path, bows: sp.csr_matrix, ref: np.ndarray, sparse: bool) -> dict[str, Any]:
    """Replace fp32 by its int8 version; returns the drift against torch and both sizes.

    Weight-only int8 of the first layer when the graph is sparse; dynamic quantization (weights
    and activations) for a graph that could not be rewritten."""
    q = fp32.with_suffix(".int8.onnx")
    if not finish_encoder(exported, q, int8=True):
        quantize_dynamic_int8(fp32, q)
    got_q = run_onnx(q, bows, sparse)
    drift = {"mean_l1": float(np.abs(got_q - ref).sum(1).mean()),
             "top_topic_agreement": float((got_q.argmax(1) == ref.argmax(1)).mean()),
             "fp32_bytes": fp32.stat().st_size, "int8_bytes": q.stat().st_size}
    fp32.unlink()
    q.rename(fp32)
    return drift


def _export_contextual(run_dir: Path, tmp: Path, report: ExportReport, opts: ExportOptions,
                       model: torch.nn.Module) -> ContextualEntry | None:
    """The contextual route's files into tmp when asked (or, by default, when the run has one);
    its manifest entry, or None."""
    if opts.contextual is False:
        return None
    # Imported here: the contextual encoders' libraries are only needed by runs that have the route.
    from xtm.exporters.contextual_export import export_contextual_route, stale_contextual
    from xtm.trainer.contextual.fit import has_contextual

    if not (opts.contextual or has_contextual(run_dir)):
        return None
    stale = stale_contextual(run_dir, model)
    if stale is not None:
        if opts.contextual:
            raise XtmError(stale, path=run_dir)
        logger.warning(f"{stale}; the bundle reads only the training languages")
        return None
    entry, report.contextual = export_contextual_route(run_dir, tmp, opset=opts.opset, progress=opts.progress,
                                                       quantize=opts.quantize)
    return entry

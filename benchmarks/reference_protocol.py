"""Classification of finished runs under xtm's protocol and under the public code's (issue 15).

    python benchmarks/reference_protocol.py runs/full/ecnews-nmtm-500 [more runs]
    python benchmarks/reference_protocol.py PEER/snapshots/epoch-0200.npz   # a TopMost peer snapshot

The published tables (LLM-XTM Table 5 and the backbones' papers) come from code that runs
sklearn's SVC() (RBF kernel, C=1, gamma='scale', no scaling) on the encoder's eval-mode mean,
before the softmax (TopMost `evaluations/classification.py`, LLM-XTM/XTRA/GloCTM
`utils/eval.py`). xtm reports a linear SVM on standardised theta, the distribution the runtime
serves (evaluation/metrics.py). The two protocols give different absolute numbers for the same
model, so a gap to a published row is only read under the published protocol. This prints, per
run, both protocols and the published row (same datasets' fixed train/test files, all documents).
A TopMost peer's snapshot (benchmarks/peer_topmost.py --snapshot-every N) holds the same eval-mode
mean, so it goes through both protocols too. A checkpoint saved without recalibrated batch-norm
statistics (a periodic one from before 2026-12-06) is recalibrated first, as xtm-train does before
it evaluates or saves a model: scored as saved, its cross-lingual cells are noise. A last line per
run gives each language's spread of that mean and its mean largest topic share: an encoder near
posterior collapse shows there.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from xtm.corpus import Corpus
from xtm.evaluation.metrics import classification
from xtm.evaluation.published import published_rows
from xtm.trainer.contextual.fit import load_run_corpus
from xtm.trainer.data.batches import InMemoryBatches
from xtm.trainer.data.loading import load_corpus
from xtm.trainer.loop.checkpoint import load_checkpoint, load_trained_model, train_buffers
from xtm.trainer.loop.model_passes import infer_mean, recalibrate_batchnorm


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


class RunMeans(NamedTuple):
    """What one_run classifies: a run's (or a peer snapshot's) eval-mode means and what it is."""

    title: str
    model: str
    epochs: int
    phase2_epochs: int
    corpus: Corpus
    mu_train: dict[str, np.ndarray]
    mu_test: dict[str, np.ndarray]


def run_means(run: Path) -> RunMeans:
    """The eval-mode means of an xtm run directory or a peer snapshot (PEER/snapshots/epoch-NNNN.npz)."""
    if run.suffix == ".npz":  # PEER/snapshots/epoch-NNNN.npz
        settings = json.loads((run.parent.parent / "peer_run.json").read_text(encoding="utf-8"))
        corpus = load_corpus(settings["path"], progress=False)
        with np.load(run, allow_pickle=False) as arrays:
            mu = {split: {x: arrays[f"{split}_theta_{x}"] for x in corpus.langs} for split in ("train", "test")}
            epochs = len(arrays["epoch_seconds"])
        title = f"{run.parent.parent.name} ({settings['impl']})"
        return RunMeans(title, settings["model"], epochs, 0, corpus, mu["train"], mu["test"])
    config, model = load_trained_model(run)
    corpus = load_run_corpus(run, config, progress=False)
    cpu = torch.device("cpu")
    title = run.name
    ckpt = load_checkpoint(run)
    if not train_buffers(ckpt):
        # A periodic checkpoint saved before 2026-12-06 (or a final one before 2026-12-02) holds training's
        # batch-norm running statistics: xtm evaluates and serves a model only with them recalibrated. Scored as
        # saved, such checkpoints' cross-lingual cells moved by up to 12 points from one to the next while
        # the recalibrated ones moved by 2-3 (docs/benchmarks.md, "Periodic checkpoints").
        torch.manual_seed(0)  # the pass runs dropout: the same numbers on every call
        recalibrate_batchnorm(model, InMemoryBatches(corpus), cpu)
        title += f" (epoch {ckpt.epoch}, saved without recalibrated batch norm: recalibrated here)"
    mu_train = {lc.lang: infer_mean(model, lc.train_bow, i, cpu) for i, lc in enumerate(corpus.languages)}
    mu_test = {lc.lang: infer_mean(model, lc.test_bow, i, cpu) for i, lc in enumerate(corpus.languages)}
    train = config["train_config"]
    return RunMeans(title, config["model_config"]["model"], train["epochs"], train.get("phase2_epochs") or 0,
                    corpus, mu_train, mu_test)


def one_run(run: Path) -> list[str]:
    title, model_name, epochs, phase2_epochs, corpus, mu_train, mu_test = run_means(run)
    labels_train = {lc.lang: lc.train_labels for lc in corpus.languages}
    labels_test = {lc.lang: lc.test_labels for lc in corpus.languages}
    rows = []
    for name, classifier, feats in (("xtm: LinearSVC, standardised theta", "linear", softmax),
                                    ("reference: SVC() RBF on mu", "reference", lambda m: m)):
        t0 = time.perf_counter()
        scores = classification({k: feats(v) for k, v in mu_train.items()}, labels_train,
                                {k: feats(v) for k, v in mu_test.items()}, labels_test, classifier=classifier)
        rows.append((name, scores, time.perf_counter() - t0))
    keys = sorted(rows[0][1])
    length = f"{epochs} + {phase2_epochs} phase-2" if phase2_epochs else f"{epochs}"
    lines = [f"### {title}: {model_name}, {corpus.name}, {length} epochs", "",
             "| protocol | " + " | ".join(keys) + " | seconds |", "|---" * (len(keys) + 2) + "|"]
    for name, scores, secs in rows:
        lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.3f}" for k in keys) + f" | {secs:.0f} |")
    # a phase-2 run stands beside the published LLM-XTM rows too
    for pub in published_rows(corpus.name, model_name, phase2=False) + (
            published_rows(corpus.name, model_name, phase2=True) if phase2_epochs else []):
        lines.append(f"| published ({pub.name}, {pub.epochs} ep) | "
                     + " | ".join(f"{pub.classification[k]:.3f}" if k in pub.classification else ""
                                  for k in keys) + " | |")
    return lines + ["", spread_line(mu_test), ""]


def spread_line(mu_test: dict[str, np.ndarray]) -> str:
    """How far each language's encoder is from posterior collapse, from its test documents' means.

    An open encoder's eval-mode mean has sd about 1 per topic (its batch norm standardises it); one
    whose pre-norm variance fell below the batch norm's eps has sd sqrt(var / eps) < 1 and a nearly
    uniform theta. The RBF protocol then compares languages on different scales (docs/benchmarks.md,
    "Near-collapse").
    """
    parts, topics = [], 0
    for lang, mu in mu_test.items():
        topics = mu.shape[1]
        theta = softmax(mu)
        parts.append(f"{lang} sd of mu {mu.std(0).mean():.2f}, mean max theta {theta.max(1).mean():.3f}")
    return "encoders (test documents): " + "; ".join(parts) + f" (uniform theta: {1 / max(topics, 1):.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        print("\n".join(one_run(run)), flush=True)


if __name__ == "__main__":
    main()

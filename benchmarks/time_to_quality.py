"""Time to quality: when does a run first reach the published 500-epoch numbers (issue 15)?

    # summarise runs that were trained with --eval-every (finished or still running)
    python benchmarks/time_to_quality.py --runs runs/full/ecnews-nmtm-500 runs/full/rakuten-nmtm-500
    # or train them first (one at a time: the machine has 2 cores), then summarise
    python benchmarks/time_to_quality.py --train --dataset ECNews --models nmtm,infoctm --epochs 100 \
        --eval-every 10 --out runs/ttq [--extra "--lr 0.004"]

For every run it prints the learning curve (TU and classification at each evaluated epoch) and,
for each published target (TU and the cross-lingual accuracies EN-C and ZH-C/JA-C of the same
backbone on the same dataset, LLM-XTM paper Table 2/5, 500 epochs; XTRA 800), the first evaluated
epoch at which the run reached it and the training minutes up to that epoch (the sum of the
epochs' own seconds: evaluation time is not training time). "-" = not reached within the run.

The curve is read from RUN/history.json, or, for a run still training, from the history inside
its latest checkpoint, so a long run can be summarised while it goes on. A TopMost peer run
(`benchmarks/peer_topmost.py --snapshot-every N --out DIR`, its own venv) is summarised the same way:
its snapshots go through xtm's evaluation (softmax of TopMost's eval-time mu, as benchmarks/backbones.py
does), cached in DIR/peer_history.json, so both implementations' curves print side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench_data import DATASETS, dataset_dir, dict_file


def read_history(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The per-epoch history and the train settings of a run, finished or not (a finished run resumed
    for more epochs keeps its old history.json until it ends: the newer checkpoint wins then)."""
    if (run / "peer_run.json").is_file():
        return peer_history(run)
    from_checkpoint = _checkpoint_history(run)
    history_file = run / "history.json"
    history = json.loads(history_file.read_text(encoding="utf-8")) if history_file.is_file() else None
    if history is not None and (from_checkpoint is None or _last_epoch(from_checkpoint[0]) <= _last_epoch(history)):
        config_file = run / "config.json"
        config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
        metrics_file = run / "metrics.json"
        if history and metrics_file.is_file() and "eval" not in history[-1]:
            # a finished run without --eval-every still has its end point: metrics.json
            metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
            history[-1] = {**history[-1], "eval": {"TU": metrics.get("TU"),
                                                   "classification": metrics.get("classification")}}
        return history, {**config.get("data", {}), **config.get("train_config", {})}
    if from_checkpoint is None:
        raise SystemExit(f"{run}: no history.json and no checkpoints/latest.json")
    return from_checkpoint


def peer_history(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A TopMost peer run's curve: every epoch's own seconds, and xtm's evaluation of each snapshot."""
    import numpy as np

    from xtm.evaluation.metrics import evaluate

    settings = json.loads((run / "peer_run.json").read_text(encoding="utf-8"))
    cache_file = run / "peer_history.json"
    cache = json.loads(cache_file.read_text(encoding="utf-8")) if cache_file.is_file() else {}
    snapshots = sorted((run / "snapshots").glob("epoch-*.npz"))
    corpus = None
    seconds: list[float] = []
    for snap in snapshots:
        with np.load(snap, allow_pickle=False) as arrays:
            seconds = arrays["epoch_seconds"].tolist()
            if snap.name not in cache:
                if corpus is None:
                    from xtm.trainer.data.loading import load_corpus

                    corpus = load_corpus(settings["path"], progress=False)
                langs = settings["langs"]
                ev = evaluate(corpus, {x: arrays[f"train_theta_{x}_softmax"] for x in langs},
                              {x: arrays[f"test_theta_{x}_softmax"] for x in langs},
                              {x: arrays[f"beta_{x}"] for x in langs})
                cache[snap.name] = {"epoch": len(seconds), "TU": ev["TU"], "classification": ev["classification"]}
                cache_file.write_text(json.dumps(cache, indent=2), encoding="utf-8")
    evals = {e["epoch"]: e for e in cache.values()}
    history = [{"epoch": i, "seconds": s, **({"eval": evals[i]} if i in evals else {})}
               for i, s in enumerate(seconds, start=1)]
    return history, settings


def _checkpoint_history(run: Path) -> tuple[list[dict[str, Any]], dict[str, Any]] | None:
    latest = run / "checkpoints" / "latest.json"
    if not latest.is_file():
        return None
    state_dir = run / "checkpoints" / json.loads(latest.read_text(encoding="utf-8"))["dir"]
    state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
    return state["history"], dict(state.get("train_config", {}))


def _last_epoch(history: list[dict[str, Any]]) -> int:
    return int(history[-1].get("epoch", 0)) if history else 0


def dataset_of(run: Path, settings: dict[str, Any]) -> str | None:
    from xtm.evaluation.published import dataset_key

    for candidate in (settings.get("path"), settings.get("dataset"), run.name):
        if candidate:
            for name in ("ECNews", "Rakuten_Amazon"):
                if name.lower() in str(candidate).lower() or dataset_key(Path(str(candidate)).name) == name:
                    return name
    return "Rakuten_Amazon" if "rakuten" in run.name.lower() else None


def summarise(run: Path) -> tuple[str, list[str]]:
    """A markdown block for one run: its curve and the epoch/minutes at which each target was reached."""
    from xtm.evaluation.published import published_rows

    history, settings = read_history(run)
    model = settings.get("model") or "?"
    dataset = dataset_of(run, settings)
    published = published_rows(dataset, model, phase2=False)
    targets: dict[str, float] = {}
    if published:
        row = published[0]
        targets["TU"] = row.TU
        targets.update({k: v for k, v in row.classification.items() if k.endswith("-C")})
        shown = {**targets, **row.classification}
    minutes = 0.0
    curve, reached = [], {k: None for k in targets}
    for entry in history:
        minutes += float(entry.get("seconds", 0.0)) / 60
        ev = entry.get("eval")
        if not ev:
            continue
        values = {"TU": ev.get("TU"), **(ev.get("classification") or {})}
        curve.append((entry["epoch"], minutes, values))
        for k, target in targets.items():
            if reached[k] is None and values.get(k) is not None and values[k] >= target:
                reached[k] = (entry["epoch"], minutes)
    keys = ["TU"] + sorted({k for _, _, v in curve for k in v if k != "TU" and v[k] is not None})
    impl = settings.get("impl", "xtm")
    lines = [f"### {run.name}: {impl} {model}, {dataset}, {len(history)} epochs trained so far", "",
             "| epoch | train min | " + " | ".join(keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for epoch, mins, values in curve:
        cells = [f"{values[k]:.3f}" if values.get(k) is not None else "" for k in keys]
        lines.append(f"| {epoch} | {mins:.1f} | " + " | ".join(cells) + " |")
    if published:
        lines.append(f"| published ({published[0].epochs} ep) | | "
                     + " | ".join(f"{shown[k]:.3f}" if k in shown else "" for k in keys) + " |")
    lines.append("")
    summary = []
    for k, target in targets.items():
        hit = reached[k]
        summary.append(f"{k} >= {target:.3f}: " + (f"epoch {hit[0]}, {hit[1]:.1f} train min" if hit else "-"))
    lines.append(("first reached: " + "; ".join(summary)) if summary else "no published row for this backbone/dataset")
    if not curve:
        lines.append("(no evaluated epochs: train with --eval-every N)" if impl == "xtm"
                     else "(no snapshots yet: run the peer with --snapshot-every N)")
    lines.append("")
    return "\n".join(lines), summary


def train(args: argparse.Namespace) -> list[Path]:
    runs = []
    for model in args.models.split(","):
        out = Path(args.out) / f"{args.dataset.lower()}-{model}-{args.epochs}"
        cmd = [sys.executable, "-m", "xtm.cli.train", "--data", str(dataset_dir(args.dataset)),
               "--dict", dict_file(args.dataset), "--model", model, "--topics", "50",
               "--epochs", str(args.epochs), "--seed", str(args.seed), "--eval-every", str(args.eval_every),
               "--threads", str(args.threads), "--out", str(out), *args.extra.split()]
        if (out / "checkpoints" / "latest.json").is_file():
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        runs.append(out)
    return runs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="*", default=[], help="run directories to summarise")
    ap.add_argument("--train", action="store_true", help="train the runs first (one at a time)")
    ap.add_argument("--dataset", default="ECNews", choices=sorted(DATASETS))
    ap.add_argument("--models", default="nmtm,infoctm,xtra")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--extra", default="", help="more xtm-train arguments (a recipe), split on spaces")
    ap.add_argument("--out", default="runs/ttq")
    args = ap.parse_args()
    runs = [Path(r) for r in args.runs] + (train(args) if args.train else [])
    if not runs:
        ap.error("give --runs or --train")
    for run in runs:
        print(summarise(run)[0])


if __name__ == "__main__":
    main()

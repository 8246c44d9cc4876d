"""Quality and speed of the phase-1 backbones, next to published numbers and the TopMost peer.

    python benchmarks/backbones.py --dataset ECNews --models nmtm,infoctm,xtra --epochs 10 \
        [--peer-venv /work/peer-venv --peer-epochs 2] [--out bench/ecnews]

Each run is a separate process (so peak RSS is that run's own) that trains with xtm's trainer on
the full benchmark corpus, K=50, 2 threads, and evaluates TU / CNPMI / TQ / classification with
xtm's evaluation. The TopMost peer (benchmarks/peer_topmost.py, in its own venv) is trained on
the same data and its outputs go through the same evaluation (theta = softmax of its eval-time
encoder mean, the distribution a user gets). Published numbers (xtm.evaluation.published): LLM-XTM paper (seed 001),
Table 2 (TU, CNPMI) and Table 5 (classification), K=50, after 500 epochs (800 for XTRA), as
reported there. Prints one markdown table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from bench_data import DATASETS, dataset_dir, dict_file, ref_corpus

from xtm.evaluation.published import published_rows

ROOT = Path(__file__).resolve().parents[1]


def run_ours(dataset: str, model: str, epochs: int, out: Path, seed: int) -> dict:
    """Train in a child process (this script with --one) and return its metrics + peak RSS."""
    cmd = [sys.executable, __file__, "--one", model, "--dataset", dataset, "--epochs", str(epochs),
           "--out", str(out), "--seed", str(seed)]
    subprocess.run(cmd, check=True)
    return json.loads((out / "bench.json").read_text())


def one(dataset: str, model: str, epochs: int, out: Path, seed: int) -> None:
    import torch

    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    torch.set_num_threads(2)
    spec = DATASETS[dataset]
    hparams = {"weight_mi": spec["weight_mi"]} if model == "infoctm" else {}
    t0 = time.perf_counter()
    metrics = run_training(
        DataConfig(path=str(dataset_dir(dataset)), dict_path=dict_file(dataset),
                   ref_corpus=ref_corpus(dataset)),
        # the papers' batch and rates, as the peer trains: equal epochs compare like with like
        TrainConfig(model=model, num_topics=50, epochs=epochs, seed=seed, checkpoint_every=0, threads=2,
                    progress=sys.stderr.isatty(), hparams=hparams, recipe="paper"), out)
    metrics["wall_seconds"] = time.perf_counter() - t0
    metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (out / "bench.json").write_text(json.dumps(metrics, indent=2))


def run_peer(dataset: str, model: str, epochs: int, out: Path, venv: Path, seed: int) -> dict:
    spec = DATASETS[dataset]
    l1, l2 = spec["peer_langs"]
    cmd = [str(venv / "bin" / "python"), str(ROOT / "benchmarks" / "peer_topmost.py"),
           "--data", str(dataset_dir(dataset)), "--lang1", l1, "--lang2", l2, "--dict", dict_file(dataset),
           "--model", {"nmtm": "NMTM", "infoctm": "InfoCTM"}[model], "--topics", "50", "--epochs", str(epochs),
           "--out", str(out), "--seed", str(seed), "--threads", "2"]
    subprocess.run(cmd, check=True)
    timing = json.loads((out / "peer_timing.json").read_text())
    arrays = np.load(out / "peer_outputs.npz", allow_pickle=False)

    from xtm.evaluation.metrics import evaluate, load_reference_corpus
    from xtm.trainer.data.loading import load_corpus

    corpus = load_corpus(dataset_dir(dataset), progress=False)
    a, b = spec["langs"]
    ref_path = ref_corpus(dataset)
    ref = load_reference_corpus(ref_path, langs=(a, b)) if ref_path else None
    metrics = evaluate(corpus, {x: arrays[f"train_theta_{x}_softmax"] for x in (a, b)},
                       {x: arrays[f"test_theta_{x}_softmax"] for x in (a, b)},
                       {x: arrays[f"beta_{x}"] for x in (a, b)}, ref=ref)
    metrics.pop("top_words")
    metrics.update(seconds_per_epoch=timing["seconds_per_epoch"], peak_rss_mb=timing["peak_rss_mb"], epochs=epochs)
    return metrics


def fmt(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict], langs: tuple[str, str]) -> str:
    a, b = (x.upper() for x in langs)
    cols = ["model", "impl", "epochs", "s/epoch", "peak RSS MB", "TU", "CNPMI", "TQ",
            f"{a}-I", f"{a}-C", f"{b}-I", f"{b}-C"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        c = r.get("classification") or {}
        lines.append("| " + " | ".join([
            r["model"], r["impl"], str(r.get("epochs", "—")), fmt(r.get("seconds_per_epoch"), 1),
            fmt(r.get("peak_rss_mb"), 0), fmt(r.get("TU")), fmt(r.get("CNPMI")), fmt(r.get("TQ")),
            fmt(c.get(f"{a}-I")), fmt(c.get(f"{a}-C")), fmt(c.get(f"{b}-I")), fmt(c.get(f"{b}-C"))]) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="ECNews")
    p.add_argument("--models", default="nmtm,infoctm,xtra")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--peer-venv", type=Path, help="venv with topmost==1.0.2 (benchmarks/setup_topmost_peer.sh)")
    p.add_argument("--peer-epochs", type=int, default=None, help="epochs for the peer (default: --epochs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench"))
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        one(args.dataset, args.one, args.epochs, args.out, args.seed)
        return
    dataset_dir(args.dataset)
    rows = []
    for model in [m.strip() for m in args.models.split(",") if m.strip()]:
        for pub in published_rows(args.dataset, model, phase2=False):
            rows.append({"model": model, "impl": f"published ({pub.epochs} ep)", "TU": pub.TU, "CNPMI": pub.CNPMI,
                         "TQ": pub.TQ, "classification": dict(pub.classification)})
        ours = run_ours(args.dataset, model, args.epochs, args.out / args.dataset / f"xtm-{model}", args.seed)
        rows.append({"model": model, "impl": "xtm", **ours})
        if args.peer_venv and model in ("nmtm", "infoctm"):
            peer_epochs = args.peer_epochs or args.epochs
            peer = run_peer(args.dataset, model, peer_epochs, args.out / args.dataset / f"topmost-{model}",
                            args.peer_venv, args.seed)
            rows.append({"model": model, "impl": "TopMost 1.0.2", **peer})
        print(table(rows, DATASETS[args.dataset]["langs"]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"results_{args.dataset}.json").write_text(json.dumps(rows, indent=2, default=str))
    print(f"\n{args.dataset}, K=50, 2 CPU threads. CNPMI: "
          + ("Kyoto-wiki en-ja reference (not comparable with published WikiComp numbers)"
             if DATASETS[args.dataset]["ref"] else "no en-zh reference corpus available here (published only)"))


if __name__ == "__main__":
    main()

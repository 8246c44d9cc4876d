"""Peak memory of out-of-core vs in-memory training as the corpus grows (1x, 4x, 16x).

    python benchmarks/out_of_core.py [--base-docs 20000] [--scales 1,4,16] [--epochs 1]
                                     [--skip-in-memory 16] [--json results.json]

The corpus is synthetic, built from ECNews (../shared/data or $XTM_SHARED_DATA) in a temporary
directory that is deleted afterwards: scale s has s x base-docs training documents per language
(en, zh), ECNews training documents taken in order and cycled, every copy after the first
perturbed deterministically (each token dropped with probability 0.1, seeded by copy and
line), so no two copies are identical but the vocabulary stays ECNews's. Every scale has the same
2,000 test documents per language (ECNews test split, explicit "split": "test"), so evaluation
cost does not grow with the training set. Labels are ECNews's six categories.

Each (mode, scale) runs `xtm-train`'s own `run_training` in a fresh child process, NMTM, K=50,
batch 200, one torch thread, no checkpoints between epochs. The child reads its peak RSS
(VmHWM) at the end of preprocessing, resets it (/proc/self/clear_refs), and reads it again at the
end (training + evaluation + outputs); the parent takes the child's own getrusage maxrss (wait4)
for the whole run. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_data import dataset_dir, dict_file

DICT = Path(dict_file("ECNews"))
TEST_DOCS = 2000
SUFFIX = {"en": "en", "zh": "cn"}


# --------------------------------------------------------------------------- corpus


def write_corpus(path: Path, docs_per_lang: int, seed: int = 0) -> int:
    """JSONL with docs_per_lang training documents per language plus the fixed test split."""
    ecnews = dataset_dir("ECNews")
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for lang, s in SUFFIX.items():
            texts = (ecnews / f"train_texts_{s}.txt").read_text(encoding="utf-8").split("\n")[:-1]
            labels = (ecnews / f"train_labels_{s}.txt").read_text().split()
            rng = np.random.default_rng(seed)
            for i in range(docs_per_lang):
                j, copy = i % len(texts), i // len(texts)
                tokens = texts[j].split()
                if copy:
                    keep = rng.random(len(tokens)) >= 0.1
                    tokens = [t for t, k in zip(tokens, keep, strict=True) if k] or tokens[:1]
                f.write(json.dumps({"id": f"{lang}-{i}", "lang": lang, "text": " ".join(tokens),
                                    "label": int(labels[j]), "split": "train"}, ensure_ascii=False) + "\n")
                n += 1
            test = (ecnews / f"test_texts_{s}.txt").read_text(encoding="utf-8").split("\n")[:TEST_DOCS]
            test_labels = (ecnews / f"test_labels_{s}.txt").read_text().split()
            for i, t in enumerate(test):
                f.write(json.dumps({"id": f"{lang}-t{i}", "lang": lang, "text": t, "label": int(test_labels[i]),
                                    "split": "test"}, ensure_ascii=False) + "\n")
                n += 1
    return n


# --------------------------------------------------------------------------- child


def _hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def child(mode: str, data: Path, out: Path, epochs: int) -> None:
    import torch

    import xtm.trainer.data.sharding as sharding
    import xtm.trainer.run as run
    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    torch.set_num_threads(1)
    phase: dict[str, float] = {}

    def measured(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            result = fn(*a, **kw)
            phase["preprocess_s"] = time.perf_counter() - t0
            phase["preprocess_peak_mb"] = _hwm_mb()
            _reset_hwm()  # from here on VmHWM is the training phase's peak
            return result
        return wrapper

    # Wrap the one loader each mode calls, to split the run into its two phases.
    if mode == "in-memory":
        run.load_corpus = measured(run.load_corpus)
    else:
        sharding.open_or_build_shards = measured(sharding.open_or_build_shards)
    metrics = run_training(
        DataConfig(path=str(data), dict_path=str(DICT), out_of_core=mode == "out-of-core"),
        TrainConfig(model="nmtm", num_topics=50, epochs=epochs, batch_size=200, seed=0, checkpoint_every=0,
                    threads=1, progress=False), out)
    phase["train_peak_mb"] = _hwm_mb()
    phase["seconds_per_epoch"] = metrics["seconds_per_epoch"]
    phase["classification"] = metrics["classification"]
    phase["TU"] = metrics["TU"]
    if mode == "out-of-core":
        index = json.loads((out / "shards" / "index.json").read_text())
        phase["shards"] = sum(len(v["train"]) + len(v["test"]) for v in index["languages"].values())
    (out / "bench.json").write_text(json.dumps(phase))


# --------------------------------------------------------------------------- parent


def run_child(mode: str, data: Path, out: Path, epochs: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, __file__, "--child", mode, "--data", str(data), "--out", str(out),
           "--epochs", str(epochs)]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise SystemExit(f"{mode} run failed (exit {p.returncode}): {' '.join(cmd)}")
    result = json.loads((out / "bench.json").read_text())
    result["peak_mb"] = usage.ru_maxrss / 1024  # KiB on Linux
    result["wall_s"] = time.perf_counter() - t0
    return result


def table(results: dict[str, dict[int, dict]], base: int, scales: list[int], skipped: list[int]) -> str:
    rows = ["| mode | scale | train docs (en+zh) | shard files (both languages, train+test) "
            "| preprocess s | preprocess peak MB | train s/epoch "
            "| train+eval peak MB | whole-run peak MB | growth vs 1x |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for mode in ("out-of-core", "in-memory"):
        first = results[mode].get(scales[0])
        for s in scales:
            r = results[mode].get(s)
            if r is None:
                rows.append(f"| {mode} | {s}x | {2 * s * base:,} | | skipped | | | | | |")
                continue
            growth = r["peak_mb"] / first["peak_mb"] if first else math.nan
            rows.append(f"| {mode} | {s}x | {2 * s * base:,} | {r.get('shards', '-')} | {r['preprocess_s']:.0f} "
                        f"| {r['preprocess_peak_mb']:.0f} | {r['seconds_per_epoch']:.0f} | {r['train_peak_mb']:.0f} "
                        f"| {r['peak_mb']:.0f} | {growth:.2f}x |")
    note = f"\nIn-memory skipped at {', '.join(f'{s}x' for s in skipped)}." if skipped else ""
    return "\n".join(rows) + note


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-docs", type=int, default=20_000, help="training documents per language at 1x")
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--skip-in-memory", default="", help="scales at which the in-memory run is skipped")
    ap.add_argument("--modes", default="out-of-core,in-memory")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.data, args.out, args.epochs)
        return
    dataset_dir("ECNews")
    scales = [int(x) for x in args.scales.split(",")]
    skip = [int(x) for x in args.skip_in_memory.split(",") if x]
    modes = args.modes.split(",")
    results: dict[str, dict[int, dict]] = {"out-of-core": {}, "in-memory": {}}
    tmp = Path(tempfile.mkdtemp(prefix="xtm-ooc-bench-"))
    try:
        for s in scales:
            data = tmp / f"corpus-{s}x.jsonl"
            t0 = time.perf_counter()
            n = write_corpus(data, s * args.base_docs)
            print(f"# {s}x: {n:,} documents, {data.stat().st_size / 2**20:.0f} MB JSONL, built in "
                  f"{time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
            for mode in modes:
                if mode == "in-memory" and s in skip:
                    continue
                out = tmp / f"run-{mode}-{s}x"
                r = run_child(mode, data, out, args.epochs)
                results[mode][s] = r
                print(f"# {mode} {s}x: {json.dumps(r)}", file=sys.stderr, flush=True)
                shutil.rmtree(out, ignore_errors=True)
            data.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(table(results, args.base_docs, scales, skip))
    if args.json:
        args.json.write_text(json.dumps({"base_docs": args.base_docs, "epochs": args.epochs, "results": results},
                                        indent=2))


if __name__ == "__main__":
    main()

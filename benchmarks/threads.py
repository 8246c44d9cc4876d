"""Sharing the CPU: seconds per training epoch by torch thread count and OpenMP setting, on a quiet machine
and beside one busy process (docs/benchmarks.md "Sharing the CPU"; why xtm-train takes the free cores).

    python benchmarks/threads.py [--dataset Rakuten_Amazon] [--epochs 2]

Each case is a fresh process (OpenMP reads its environment when it loads) that trains NMTM (K=50, the
default recipe, seed 1) for --epochs with a fixed thread count and prints the seconds of each epoch;
"beside a busy process" runs one `while True: pass` next to it. Run it alone: other jobs are load too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_data import DATASETS, dataset_dir, dict_file

CASES = [(2, {}), (2, {"OMP_WAIT_POLICY": "PASSIVE"}), (2, {"GOMP_SPINCOUNT": "10000"}),
         (2, {"GOMP_SPINCOUNT": "1000"}), (1, {})]
ONE_CASE = """
import json, sys
from pathlib import Path
from xtm.config import TrainConfig
from xtm.trainer.data.loading import load_corpus
from xtm.trainer.loop.training import train_backbone
data, dict_path, epochs, threads, out = sys.argv[1:]
corpus = load_corpus(data, dict_path=dict_path, progress=False)
train_backbone(corpus, TrainConfig(model="nmtm", num_topics=50, epochs=int(epochs), seed=1, threads=int(threads),
                                   progress=False), Path(out))
print(json.dumps([e["seconds"] for e in json.loads((Path(out) / "history.json").read_text())]))
"""


def epoch_seconds(dataset: str, epochs: int, threads: int, env: dict[str, str]) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", ONE_CASE, str(dataset_dir(dataset)), dict_file(dataset), str(epochs),
               str(threads), str(Path(tmp) / "run")]
        clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
                                                                  "OMP_NUM_THREADS")}
        done = subprocess.run(cmd, env={**clean, **env}, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="Rakuten_Amazon", choices=sorted(DATASETS))
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()
    dataset_dir(args.dataset)
    rows = {}
    for load in ("quiet", "busy"):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if load == "busy" else None
        try:
            for threads, env in CASES:
                name = f"{threads}, " + (" ".join(f"{k}={v}" for k, v in env.items()) or "default")
                secs = epoch_seconds(args.dataset, args.epochs, threads, env)
                rows.setdefault(name, {})[load] = " / ".join(f"{s:.1f}" for s in secs)
                print(f"{load}: {name}: {rows[name][load]}", file=sys.stderr, flush=True)
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
    print(f"\nNMTM {args.dataset} K=50, seconds per epoch ({os.cpu_count()} cores)\n")
    print("| torch threads, OpenMP setting | quiet | beside one busy process |\n|---|---|---|")
    for name, cells in rows.items():
        print(f"| {name} | {cells.get('quiet', '')} | {cells.get('busy', '')} |")


if __name__ == "__main__":
    main()

"""xtm-infer on one process against xtm-infer --engine ray (Ray Data actors), same input, same output.

    python benchmarks/ray_infer.py --out bench/ray [--bundle bundles/ecnews] [--actors 2] [--repeat 1]

Documents: the ECNews test sets (../shared/data/ECNews/test_texts_{en,cn}.txt, 19,370 short news
texts, English and Chinese) written as JSONL {"id", "text", "lang"}, `--repeat` times over. The
bundle: `--bundle`, or a small NMTM (50 topics, 2 epochs) trained on ECNews and exported into
OUT/bundle when missing; the speed of inference does not depend on how well it was trained.

Timed, each a cold process as a user runs it (Python start, model load, reading, writing):
- local: `xtm-infer docs.jsonl --out ...` (onnxruntime with its default threads);
- ray, with start-up: `xtm-infer ... --engine ray --actors N --threads 1`, which starts a local Ray
  instance (all cores), runs, and shuts it down;
- ray, without start-up: `xtm.runtime.ray.infer_files` in this process with Ray already started
  (ray.init timed separately): what a job on a running cluster pays. Actor start-up (a Python
  worker per actor importing onnxruntime, the bundle shipped and loaded) is part of every run and
  is included: Ray Data does not keep actors between datasets.
Each contender runs `--rounds` times, interleaved, best kept. Outputs are compared byte for byte
with the local engine's. Prints a markdown table and writes OUT/ray_infer.json, with the load
average, because the numbers are only meaningful next to how busy the machine was.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_data import dataset_dir, dict_file, test_texts


def write_docs(path: Path, repeat: int) -> int:
    n = 0
    texts = test_texts("ECNews")
    with open(path, "w", encoding="utf-8") as f:
        for r in range(repeat):
            for lang, lines in texts.items():
                for i, text in enumerate(lines):
                    f.write(json.dumps({"id": f"{lang}-{r}-{i}", "text": text, "lang": lang}, ensure_ascii=False)
                            + "\n")
                    n += 1
    return n


def ensure_bundle(out: Path) -> Path:
    bundle = out / "bundle"
    if (bundle / "manifest.json").exists():
        return bundle
    run = out / "run"
    print("training a small ECNews NMTM for the benchmark bundle (2 epochs) ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "xtm.cli.train", "--data", str(dataset_dir("ECNews")), "--dict",
                    dict_file("ECNews"), "--model", "nmtm", "--topics", "50", "--epochs", "2",
                    "--checkpoint-every", "0", "--out", str(run)], check=True)
    subprocess.run([sys.executable, "-m", "xtm.cli.export", str(run), "--out", str(bundle)], check=True)
    return bundle


def timed(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="working directory (docs, bundle, outputs, JSON)")
    ap.add_argument("--bundle", type=Path, help="bundle to use (default: OUT/bundle, trained when missing)")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2,
                    help="CPUs of the already-running Ray instance (the cold CLI run's own instance takes all cores)")
    ap.add_argument("--repeat", type=int, default=1, help="copies of the ECNews test set in the input")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    dataset_dir("ECNews")
    args.out.mkdir(parents=True, exist_ok=True)
    bundle = args.bundle or ensure_bundle(args.out)
    docs = args.out / "docs.jsonl"
    n = write_docs(docs, args.repeat)
    load_before = os.getloadavg()

    infer = [sys.executable, "-m", "xtm.cli.infer", str(docs), "--bundle", str(bundle)]
    local_out, cold_out, warm_out = (args.out / f"{k}.jsonl" for k in ("local", "ray_cold", "ray_warm"))
    local_cmd = [*infer, "--out", str(local_out)]
    cold_cmd = [*infer, "--out", str(cold_out), "--engine", "ray", "--actors", str(args.actors), "--threads", "1"]

    import ray

    from xtm.runtime.ray import infer_files

    times: dict[str, list[float]] = {"local": [], "ray_cold": [], "ray_init": [], "ray_warm": []}
    for _ in range(args.rounds):
        times["local"].append(timed(local_cmd))
        times["ray_cold"].append(timed(cold_cmd))
        t = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        times["ray_init"].append(time.perf_counter() - t)
        t = time.perf_counter()
        infer_files([docs], bundle, warm_out, num_actors=args.actors, threads_per_actor=1, report=lambda m: None,
                    progress=False)
        times["ray_warm"].append(time.perf_counter() - t)
        ray.shutdown()
    load_after = os.getloadavg()

    ref = local_out.read_bytes()
    same = {k: (args.out / f"{k}.jsonl").read_bytes() == ref for k in ("ray_cold", "ray_warm")}
    best = {k: min(v) for k, v in times.items()}
    rows = [("local (1 process, onnxruntime default threads)", best["local"], True),
            (f"ray, {args.actors} actors x 1 thread, including Ray start-up", best["ray_cold"], same["ray_cold"]),
            (f"ray, {args.actors} actors x 1 thread, Ray already running", best["ray_warm"], same["ray_warm"])]
    print(f"\n{n:,} documents (ECNews test en+zh x{args.repeat}), {args.cpus} CPUs for Ray, "
          f"load average {load_before[0]:.1f} before / {load_after[0]:.1f} after, best of {args.rounds}\n")
    print("| engine | wall s | docs/s | time vs local | output identical |")
    print("|---|---|---|---|---|")
    for name, sec, ok in rows:
        print(f"| {name} | {sec:.1f} | {n / sec:,.0f} | {sec / best['local']:.1f}x | {'yes' if ok else 'NO'} |")
    print(f"\nray.init (local, {args.cpus} CPUs): {best['ray_init']:.1f} s")
    result = {"documents": n, "actors": args.actors, "cpus": args.cpus, "rounds": args.rounds, "times": times,
              "best": best, "identical": same, "loadavg_before": load_before, "loadavg_after": load_after,
              "bundle": str(bundle)}
    (args.out / "ray_infer.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Runtime throughput on unique raw text, as users have it, per tokenizer implementation and worker count.

    python benchmarks/raw_text_throughput.py --zh-run runs/ecnews-nmtm --ja-run runs/rakuten-nmtm \
        --out bench/raw_text --rounds 3

Documents (issue 16): the benchmark corpora's lines with the spaces of the Chinese and Japanese sides
removed (they are pre-segmented; users' text is not), so jieba/janome segment real clauses and the
tokenizer's memo cannot serve repeated words. ECNews: all 96,850 train + test documents (en + zh) in
one JSONL file with "lang" given; Rakuten_Amazon: the 10,000 test documents (en + ja). Bundles are
exported from the runs with xtm-export into OUT (or given with --zh-bundle / --ja-bundle).

Measured, each contender once per round, rounds interleaved so that load drifting over the minutes
favours no one (the machine is shared: report the range and the ratios within a round):
- `xtm-infer FILE --out ...` end to end in a fresh process (start-up included), per --segmenters
  (reference: jieba/janome in Python, today's tokens; auto: rjieba for jieba's plain blocks, the same
  bags of words; fast: also MeCab for janome bundles, not the same tokens) and --workers;
- `TopicModel.infer()` first pass (fresh process, cold tokenizer caches) over 10,000 raw Chinese
  documents (ECNews test zh) and 2,000 raw Japanese ones (Rakuten test ja), languages given.
Each is also reported per CPU second (user + sys of the process and its workers): on a loaded machine
the wall time says how much CPU the scheduler gave (Linux groups a session's processes, so extra
workers get no extra share there), the CPU time what the work costs; on a free core a one-process
run's wall time is its CPU time. Also measured once: the output bytes of each CLI contender against
reference/1 worker (identical or not), and for Japanese the top-topic agreement and mean L1 of theta
between janome and MeCab.
Prints a markdown table and writes OUT/raw_text_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_data import dataset_dir


def raw_lines(path: Path, lang: str) -> list[str]:
    """A benchmark text file's documents as raw text: CJK lines lose the spaces between their words."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.replace(" ", "") for line in lines] if lang in ("zh", "ja") else lines


def write_jsonl(path: Path, docs: list[tuple[str, str]]) -> int:
    with open(path, "w", encoding="utf-8") as f:
        for i, (text, lang) in enumerate(docs, start=1):
            f.write(json.dumps({"id": i, "text": text, "lang": lang}, ensure_ascii=False) + "\n")
    return len(docs)


def ecnews_docs() -> list[tuple[str, str]]:
    d = dataset_dir("ECNews")
    return [(t, lang) for split in ("train", "test") for name, lang in (("en", "en"), ("cn", "zh"))
            for t in raw_lines(d / f"{split}_texts_{name}.txt", lang)]


def rakuten_docs() -> list[tuple[str, str]]:
    d = dataset_dir("Rakuten_Amazon")
    return [(t, lang) for lang in ("en", "ja") for t in raw_lines(d / f"test_texts_{lang}.txt", lang)]


def export(run: Path, out: Path) -> Path:
    if not (out / "manifest.json").exists():
        subprocess.run([sys.executable, "-m", "xtm.cli.export", str(run), "--out", str(out), "-q"], check=True)
    return out


def cli_seconds(src: Path, bundle: Path, out: Path, segmenters: str, workers: int) -> tuple[float, float]:
    """Wall and CPU (user + sys of the process and its workers) seconds of one xtm-infer process on the
    whole file, start-up included."""
    import resource

    cmd = [sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(bundle), "--out", str(out), "-q",
           "--segmenters", segmenters, "--workers", str(workers)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


_FIRST_PASS = """
import json, sys, time
from xtm.runtime import TopicModel
from xtm.runtime.tokenize import use_segmenters
bundle, lang, path, segmenters = sys.argv[1:5]
use_segmenters(segmenters)
texts = json.loads(open(path, encoding="utf-8").read())
m = TopicModel.load(bundle)
t, c = time.perf_counter(), time.process_time()
m.infer(texts, langs=lang)
print(time.perf_counter() - t, time.process_time() - c)
"""


def first_pass_seconds(bundle: Path, lang: str, texts_file: Path, segmenters: str) -> tuple[float, float]:
    """infer() over the texts in a fresh process: cold tokenizer caches and dictionaries loaded inside.
    (wall, CPU) seconds."""
    p = subprocess.run([sys.executable, "-c", _FIRST_PASS, str(bundle), lang, str(texts_file), segmenters],
                       capture_output=True, text=True, check=True)
    wall, cpu = p.stdout.strip().splitlines()[-1].split()
    return float(wall), float(cpu)


def ja_theta_agreement(bundle: Path, texts: list[str]) -> dict[str, float]:
    """Top topic and theta of janome (the bundle's tokenizer) against MeCab on the same bundle."""
    import numpy as np

    from xtm.runtime import TopicModel
    from xtm.runtime.tokenize import use_segmenters

    thetas = {}
    for mode in ("reference", "fast"):
        use_segmenters(mode)
        thetas[mode] = TopicModel.load(bundle).infer(texts, langs="ja").theta  # a fresh model: fresh tokenizers
    use_segmenters(None)
    a, b = thetas["reference"], thetas["fast"]
    return {"docs": len(texts), "top_topic_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "mean_l1": float(np.abs(a - b).sum(1).mean()), "identical_theta": float((a == b).all(1).mean())}


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--zh-run", type=Path, help="An ECNews run (xtm-train) to export; or --zh-bundle.")
    p.add_argument("--zh-bundle", type=Path)
    p.add_argument("--ja-run", type=Path, help="A Rakuten_Amazon run to export; or --ja-bundle (optional).")
    p.add_argument("--ja-bundle", type=Path)
    p.add_argument("--out", type=Path, default=Path("bench/raw_text"))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", default="1,2", help="Worker counts to time (comma-separated).")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workers = [int(w) for w in args.workers.split(",")]

    suites = []  # (name, bundle, jsonl, docs, segmenters, first-pass lang, first-pass texts file, n)
    zh_bundle = args.zh_bundle or (export(args.zh_run, args.out / "bundle-ecnews") if args.zh_run else None)
    if zh_bundle is None:
        p.error("give --zh-run or --zh-bundle")
    src = args.out / "ecnews_raw.jsonl"
    n_zh = write_jsonl(src, ecnews_docs())
    zh_first = raw_lines(dataset_dir("ECNews") / "test_texts_cn.txt", "zh")[:10000]
    (args.out / "zh_first.json").write_text(json.dumps(zh_first, ensure_ascii=False), encoding="utf-8")
    suites.append(("ECNews", zh_bundle, src, n_zh, ("reference", "auto"), "zh", args.out / "zh_first.json",
                   len(zh_first)))
    ja_bundle = args.ja_bundle or (export(args.ja_run, args.out / "bundle-rakuten") if args.ja_run else None)
    ja_first: list[str] = []
    if ja_bundle is not None:
        src = args.out / "rakuten_raw.jsonl"
        n_ja = write_jsonl(src, rakuten_docs())
        ja_first = raw_lines(dataset_dir("Rakuten_Amazon") / "test_texts_ja.txt", "ja")[:2000]
        (args.out / "ja_first.json").write_text(json.dumps(ja_first, ensure_ascii=False), encoding="utf-8")
        suites.append(("Rakuten", ja_bundle, src, n_ja, ("reference", "fast"), "ja", args.out / "ja_first.json",
                       len(ja_first)))

    times: dict[str, list[float]] = {}
    cpu_rates: dict[str, list[float]] = {}  # documents per CPU second: what one free core would deliver
    loads: list[str] = [load_average()]
    identical: dict[str, bool] = {}
    for r in range(args.rounds):
        for name, bundle, src, n, modes, lang, first_file, n_first in suites:
            for mode in modes:
                for w in workers:
                    key = f"{name} | xtm-infer | {mode} | {w}"
                    out = args.out / f"out-{name}-{mode}-{w}.jsonl"
                    wall, cpu = cli_seconds(src, bundle, out, mode, w)
                    times.setdefault(key, []).append(n / wall)
                    cpu_rates.setdefault(key, []).append(n / cpu)
                    if r == 0:
                        ref = args.out / f"out-{name}-{modes[0]}-{workers[0]}.jsonl"
                        identical[key] = out.read_bytes() == ref.read_bytes()
                key = f"{name} | infer() first pass, {n_first} raw {lang} docs | {mode} | 1"
                wall, cpu = first_pass_seconds(bundle, lang, first_file, mode)
                times.setdefault(key, []).append(n_first / wall)
                cpu_rates.setdefault(key, []).append(n_first / cpu)
        loads.append(load_average())
        print(f"round {r + 1}/{args.rounds} done (load {loads[-1]})", file=sys.stderr, flush=True)

    agreement = ja_theta_agreement(ja_bundle, ja_first) if ja_bundle is not None else None
    # Ratios within a round against the first contender of the same suite and kind.
    rows = []
    for key, vals in times.items():
        name, what, mode, w = key.split(" | ")
        base_key = next(k for k in times if k.startswith(f"{name} | {what} | "))
        ratios = [v / b for v, b in zip(vals, times[base_key], strict=True)]
        rows.append({"corpus": name, "what": what, "segmenters": mode, "workers": int(w),
                     "docs_per_s": vals, "ratio": ratios, "docs_per_cpu_s": cpu_rates[key],
                     "same_output": identical.get(key)})
    print(f"\nload average (1, 5, 15 min) before and after each round: {' / '.join(loads)}\n")
    print("| corpus | measure | segmenters | workers | docs/s wall (min - max over rounds) | x first row "
          "(min - max) | docs per CPU second (median) | output = reference/1 |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        v, q, c = row["docs_per_s"], row["ratio"], row["docs_per_cpu_s"]
        same = "" if row["same_output"] is None else ("yes" if row["same_output"] else "no")
        print(f"| {row['corpus']} | {row['what']} | {row['segmenters']} | {row['workers']} | "
              f"{min(v):,.0f} - {max(v):,.0f} | {min(q):.2f} - {max(q):.2f} | {statistics.median(c):,.0f} | "
              f"{same} |")
    if agreement:
        print(f"\nJapanese, janome vs MeCab on the same bundle ({agreement['docs']} raw documents): top topic "
              f"{agreement['top_topic_agreement']:.4f}, identical theta {agreement['identical_theta']:.4f}, "
              f"mean L1 {agreement['mean_l1']:.4f}")
    (args.out / "raw_text_throughput.json").write_text(json.dumps(
        {"rows": rows, "loads": loads, "ja_theta_agreement": agreement, "cores": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()

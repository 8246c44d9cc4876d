"""Inference speed of the torch-free runtime against the same model in torch, cold start, memory, int8.

    python benchmarks/runtime_speed.py --run bench/ECNews/xtm-infoctm --out bench/runtime

Needs a run trained on ECNews (benchmarks/backbones.py writes one). Documents: the ECNews test
sets as raw text lines (../shared/data/ECNews/test_texts_{en,cn}.txt), 19,370 documents.
Both paths use the same tokenizer and vocabulary (the runtime's), so the ratio measures
what differs: onnxruntime vs torch for the encoder, and the runtime's batching. 2 threads each.
Prints a markdown table and writes OUT/runtime_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XTM_SHARED_DATA", ROOT.parent / "shared" / "data"))


def texts_and_langs() -> tuple[list[str], list[str]]:
    texts, langs = [], []
    for code, lang in (("en", "en"), ("cn", "zh")):
        lines = (DATA / "ECNews" / f"test_texts_{code}.txt").read_text(encoding="utf-8").splitlines()
        texts += lines
        langs += [lang] * len(lines)
    return texts, langs


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--out", type=Path, default=Path("bench/runtime"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from xtm.exporters.onnx_export import export_run, load_run
    from xtm.runtime import TopicModel

    torch.set_num_threads(2)
    fp32, int8 = args.out / "bundle-fp32", args.out / "bundle-int8"
    rep32 = export_run(args.run, fp32, progress=False)
    rep8 = export_run(args.run, int8, quantize="int8", progress=False)
    texts, langs = texts_and_langs()
    n = len(texts)
    rt = TopicModel.load(fp32, threads=2)
    rt.infer(texts[:50] + texts[-50:], langs=langs[:50] + langs[-50:])   # load tokenizers (jieba) first

    res = {}
    res["runtime_docs_per_s"] = n / best_of(lambda: rt.infer(texts, langs=langs))
    res["runtime_detect_docs_per_s"] = n / best_of(lambda: rt.infer(texts), repeats=1)

    # Torch: the same bags of words (runtime tokenizer + vocabulary), the trained model's encoder.
    _, model = load_run(args.run)
    lang_index = {lang: i for i, lang in enumerate(model.langs)}

    def torch_path() -> None:
        for lang in model.langs:
            idx = [i for i, x in enumerate(langs) if x == lang]
            enc = model.encoder_for(lang_index[lang]).eval()
            for s in range(0, len(idx), 256):
                bow = rt.bag_of_words([texts[i] for i in idx[s:s + 256]], lang)
                with torch.no_grad():
                    enc(torch.from_numpy(bow))

    res["torch_docs_per_s"] = n / best_of(torch_path)
    res["ratio_runtime_vs_torch"] = res["runtime_docs_per_s"] / res["torch_docs_per_s"]
    tok_only = best_of(lambda: [rt.bag_of_words([texts[i] for i in range(s, min(s + 256, n))], langs[s])
                                for s in range(0, n, 256) if langs[s] == langs[min(s + 255, n - 1)]])
    res["tokenize_only_docs_per_s"] = n / tok_only

    # int8 agreement on the same documents.
    q = TopicModel.load(int8, threads=2)
    t32, t8 = rt.infer(texts, langs=langs).theta, q.infer(texts, langs=langs).theta
    res["int8_top_topic_agreement"] = float((t32.argmax(1) == t8.argmax(1)).mean())
    res["int8_mean_l1"] = float(np.abs(t32 - t8).sum(1).mean())
    res["bundle_mb_fp32"] = rep32.bundle_bytes / 2**20
    res["bundle_mb_int8"] = rep8.bundle_bytes / 2**20

    # Cold start (process start to exit, one line) and peak RSS of xtm-infer on the whole test set.
    one = args.out / "one.jsonl"
    one.write_text(json.dumps({"id": 1, "text": texts[0], "lang": "en"}) + "\n")
    cli = [sys.executable, "-m", "xtm.cli.infer"]
    colds = []
    for _ in range(5):
        t0 = time.perf_counter()
        subprocess.run(cli + [str(one), "--bundle", str(fp32)], check=True, capture_output=True)
        colds.append(time.perf_counter() - t0)
    res["cold_start_s"] = statistics.median(colds)
    full = args.out / "all.jsonl"
    with open(full, "w", encoding="utf-8") as f:
        for i, (t, lang) in enumerate(zip(texts, langs, strict=True)):
            f.write(json.dumps({"id": i, "text": t, "lang": lang}, ensure_ascii=False) + "\n")
    t0 = time.perf_counter()
    subprocess.run(cli + [str(full), "--bundle", str(fp32), "--out", str(args.out / "theta.jsonl")],
                   check=True, capture_output=True)
    res["cli_docs_per_s"] = n / (time.perf_counter() - t0)
    res["cli_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    (args.out / "runtime_speed.json").write_text(json.dumps(res, indent=2))
    rows = [("runtime infer(), languages given", f"{res['runtime_docs_per_s']:,.0f} docs/s", "≥ 20,000"),
            ("runtime infer(), languages detected", f"{res['runtime_detect_docs_per_s']:,.0f} docs/s", ""),
            ("same model in torch, same tokenization", f"{res['torch_docs_per_s']:,.0f} docs/s", ""),
            ("ratio runtime / torch", f"{res['ratio_runtime_vs_torch']:.2f}x", "≥ 5x"),
            ("tokenization alone", f"{res['tokenize_only_docs_per_s']:,.0f} docs/s", ""),
            ("xtm-infer CLI, whole file incl. start-up", f"{res['cli_docs_per_s']:,.0f} docs/s", ""),
            ("cold start, one line", f"{res['cold_start_s']:.2f} s", "< 1.5 s"),
            ("peak RSS, xtm-infer (max over runs)", f"{res['cli_peak_rss_mb']:.0f} MB", "< 500 MB"),
            ("bundle size fp32 / int8", f"{res['bundle_mb_fp32']:.1f} / {res['bundle_mb_int8']:.1f} MB", "int8 ≤ 1/2"),
            ("int8 top-topic agreement", f"{res['int8_top_topic_agreement']:.4f}", "≥ 0.99")]
    print(f"ECNews test, {n} raw documents, 2 threads, run {args.run}\n")
    print("| measure | value | target |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")


if __name__ == "__main__":
    main()

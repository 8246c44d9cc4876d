"""LLM-XTM phase 2 on the benchmarks: phase 1 vs phase 1 + refinement, ablations, published numbers.

    python benchmarks/llm_xtm.py --dataset Rakuten_Amazon --phase1-epochs 10 --phase2-epochs 8 \
        --refine-every 4 [--refiner embedding] [--out bench/llm_xtm] [--variants issue15]

One phase-1 run (NMTM, K=50) is trained once; every variant continues a copy of it for the same
number of epochs, so the rows differ only in what phase 2 adds:
  phase 1 continued     no phase 2 (the fair baseline: same total epochs)
  + LLM-XTM             MMD + doc-align, R rounds voted
  w/o MMD, w/o doc-align, R=1 (w/o self-consistency)   seed 001 Table 3's ablations
`--variants issue15` instead runs issue 15's rows: phase 2 with the settings before issue 15 (Adam at
the phase-1 rate, no clipping but XTRA's, MMD weights normalised over the union, tau 0.1, 15 words
asked), each of the public code's settings added to it alone, and each taken away alone from today's
defaults (which are all of them), so every setting's effect on TU and classification is measured.
The refiner is the LLM-free `embedding` one by default (no LLM is reachable on CPU at benchmark
scale); pass --refiner openai --llm-url ... --llm-model ... to use a served LLM.
Published rows: seed 001 Tables 2, 3 and 5 (NMTM backbone, 500 phase-1 epochs + 30 phase-2 epochs,
Gemini 2.5 Flash, CNPMI on WikiComp). Our CNPMI uses ../shared/data/ref_corpus/en_ja (Kyoto
Wikipedia), so it compares our rows with each other, not with the published column.
Prints one markdown table and writes OUT/<dataset>/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from bench_data import DATASETS, dataset_dir, dict_file, ref_corpus

from xtm.evaluation.published import CNPMI_NOTE, published_rows

# Phase 2 as it was before issue 15 (each value was then the default; today's follow the public code).
BEFORE_ISSUE_15 = {"lr_scale": 1.0, "grad_clip": 0.0, "balanced_mmd": False, "doc_tau": 0.1, "asked_words": 15,
                   "sampling": {"temperature": 1.0, "top_p": 0.95}}
# Issue 15's settings, each as (name, value today, value before).
ISSUE_15 = [("lr 0.3x", "lr_scale", 0.3, 1.0), ("clip 1.0", "grad_clip", 1.0, 0.0),
            ("balanced MMD", "balanced_mmd", True, False), ("tau 0.2", "doc_tau", 0.2, 0.1),
            ("20 words asked", "asked_words", 20, 15)]
VARIANTS = {
    "phase 1 continued": None,
    "+ LLM-XTM": {},
    "w/o MMD": {"mmd": False},
    "w/o doc-align": {"doc_align": False},
    "w/o self-consistency (R=1)": {"rounds": 1},
    "+ LLM-XTM (lambda_mmd 2000)": {"lambda_mmd": 2000.0},
    "+ LLM-XTM, settings before issue 15": BEFORE_ISSUE_15,
    **{f"before issue 15 + {name}": {**BEFORE_ISSUE_15, key: today} for name, key, today, _ in ISSUE_15},
    **{f"+ LLM-XTM without {name}": {key: before} for name, key, _, before in ISSUE_15},
}
GROUPS = {
    "ablations": list(VARIANTS)[:6],
    "issue15": ["+ LLM-XTM", "+ LLM-XTM, settings before issue 15",
                *[v for v in VARIANTS if v.startswith(("before issue 15 +", "+ LLM-XTM without"))]],
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="Rakuten_Amazon")
    p.add_argument("--model", default="nmtm")
    p.add_argument("--topics", type=int, default=50)
    p.add_argument("--phase1-epochs", type=int, default=10)
    p.add_argument("--phase2-epochs", type=int, default=8)
    p.add_argument("--refine-every", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--refiner", default="embedding")
    p.add_argument("--llm-url")
    p.add_argument("--llm-model")
    p.add_argument("--variants", default="ablations",
                   help=f"semicolon-separated rows, or a group: {', '.join(GROUPS)} (default: ablations)")
    p.add_argument("--table-only", action="store_true", help="print the table from the runs already in --out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (1 when sharing the machine)")
    p.add_argument("--out", type=Path, default=Path("bench/llm_xtm"))
    args = p.parse_args()

    import torch

    from xtm.config import DataConfig, Phase2Config, RefinerConfig, Sampling, TrainConfig
    from xtm.trainer.run import run_training

    torch.set_num_threads(args.threads)
    spec = DATASETS[args.dataset]
    out = args.out / args.dataset
    data = DataConfig(path=str(dataset_dir(args.dataset)), dict_path=dict_file(args.dataset),
                      ref_corpus=ref_corpus(args.dataset))

    def cfg(epochs: int) -> TrainConfig:
        return TrainConfig(model=args.model, num_topics=args.topics, epochs=epochs, seed=args.seed,
                           checkpoint_every=0, progress=sys.stderr.isatty(), threads=args.threads)

    base = out / "phase1"
    if not (base / "metrics.json").exists() and not args.table_only:
        shutil.rmtree(base, ignore_errors=True)
        run_training(data, cfg(args.phase1_epochs), base)
    rows = {"phase 1": json.loads((base / "metrics.json").read_text())}
    names = GROUPS.get(args.variants) or [v.strip() for v in args.variants.split(";")]
    for name in names:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; known: {'; '.join(VARIANTS)}")
        change = VARIANTS[name]
        run = out / run_dir_name(name)
        if args.table_only:
            if (run / "metrics.json").exists():
                rows[name] = json.loads((run / "metrics.json").read_text())
            continue
        shutil.rmtree(run, ignore_errors=True)
        shutil.copytree(base, run)
        t0 = time.perf_counter()
        if change is None:
            m = run_training(data, cfg(args.phase1_epochs + args.phase2_epochs), run, resume=True)
        else:
            settings = {"rounds": args.rounds, **change}
            sampling = Sampling(**settings.pop("sampling", {}), seed=args.seed)
            p2 = Phase2Config(epochs=args.phase2_epochs, refine_every=args.refine_every,
                              refiner=RefinerConfig(backend=args.refiner, llm_url=args.llm_url,
                                                    llm_model=args.llm_model, sampling=sampling), **settings)
            m = run_training(data, cfg(args.phase1_epochs), run, resume=True, phase2=p2)
        m["wall_seconds"] = time.perf_counter() - t0
        rows[name] = m
    (out / "results.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False))
    print(table(args, rows, spec["langs"]))


def run_dir_name(variant: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in variant).strip("_")


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(args: argparse.Namespace, rows: dict, langs: tuple[str, str]) -> str:
    l1, l2 = (x.upper() for x in langs)
    cls_keys = [f"{l1}-I", f"{l1}-C", f"{l2}-I", f"{l2}-C"]
    head = (f"{args.dataset}, {args.model.upper()} K={args.topics}: phase 1 = {args.phase1_epochs} epochs, "
            f"phase 2 = {args.phase2_epochs} epochs (F={args.refine_every}, R={args.rounds}, refiner "
            f"{args.refiner}); {args.threads} CPU thread(s)\n\n")
    lines = ["| run | CNPMI | TU | TQ | " + " | ".join(cls_keys) + " | refined CNPMI / TU | s/epoch | s/refinement |",
             "|---|" + "---|" * 10]
    for name, m in rows.items():
        c = m.get("classification") or {}
        ref = m.get("refined") or {}
        p2 = m.get("phase2") or {}
        lines.append(f"| {name} | {fmt(m.get('CNPMI'))} | {fmt(m.get('TU'))} | {fmt(m.get('TQ'))} | "
                     + " | ".join(fmt(c.get(k)) for k in cls_keys)
                     + f" | {fmt(ref.get('CNPMI'))} / {fmt(ref.get('TU'))} | {fmt(m.get('seconds_per_epoch'), 1)} | "
                     f"{fmt(p2.get('seconds_per_refinement'), 1)} |")
    for pub in published_rows(args.dataset, "nmtm"):  # this benchmark's backbone is NMTM (the paper's ablations too)
        lines.append(f"| {pub.name} (published) | {pub.CNPMI:.3f}* | {pub.TU:.3f} | {pub.TQ:.3f}* | "
                     + " | ".join(fmt(pub.classification.get(k)) for k in cls_keys) + " | | | |")
    return head + "\n".join(lines) + f"\n\n* {CNPMI_NOTE}; not comparable.\n"


if __name__ == "__main__":
    main()

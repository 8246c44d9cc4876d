"""GloCTM next to this project's NMTM, InfoCTM and XTRA, with and without a dictionary, plus ablations.

    python benchmarks/gloctm.py --dataset Rakuten_Amazon --epochs 10 [--ablations] [--reference] [--out bench/gloctm]

--reference adds the authors' setting (tienphat140205/GloCTM, `--set reference=<dataset>` and their batch
of 128; docs/gloctm.md) next to xtm's variant, e.g. the issue-15 comparison, one run at a time:

    python benchmarks/gloctm.py --dataset ECNews --reference --seed 1 --threads 1 \
        --rows "GloCTM, no dictionary;GloCTM, authors' setting"

Every row is trained here with the same settings (K=50, batch 200 unless the row says otherwise, lr 0.002,
seed --seed, --threads threads) and
evaluated the same way; s/epoch and its ratio to InfoCTM's come from this run (InfoCTM is trained for
--infoctm-epochs, 2 by default on ECNews where its epoch costs minutes, so only its cost is compared
there unless --infoctm-epochs equals --epochs). The seed paper (000) is a summary without tables, so
no published GloCTM numbers exist to print; seed 001's published backbones are in the table.
Prints one markdown table and writes OUT/<dataset>/results.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from bench_data import DATASETS, dataset_dir, dict_file, ref_corpus

# name -> (model, uses the dictionary, hparams, TrainConfig overrides)
Row = tuple[str, bool, dict, dict]
ROWS: dict[str, Row] = {
    "NMTM": ("nmtm", True, {}, {}),
    "InfoCTM": ("infoctm", True, {}, {}),
    "XTRA (no dictionary)": ("xtra", False, {}, {}),
    "GloCTM + dictionary": ("gloctm", True, {}, {}),
    "GloCTM, no dictionary": ("gloctm", False, {}, {}),
}
ABLATIONS: dict[str, Row] = {
    "GloCTM w/o augmentation": ("gloctm", False, {"aug_weight": 0.0}, {}),
    "GloCTM w/o dual pathway": ("gloctm", False, {"dual": False}, {}),
    "GloCTM w/o CKA": ("gloctm", False, {"weight_cka": 0.0}, {}),
    "GloCTM, RBF CKA": ("gloctm", False, {"cka": "rbf"}, {}),
}


def reference_rows(dataset: str) -> dict[str, Row]:
    """The authors' public setting for `dataset` (their run.sh values, batch 128), and the same at xtm's
    batch of 200, which separates the model's settings from the extra steps of the smaller batch."""
    return {
        "GloCTM, authors' setting": ("gloctm", False, {"reference": dataset}, {"batch_size": 128}),
        "GloCTM, authors' setting, batch 200": ("gloctm", False, {"reference": dataset}, {}),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="Rakuten_Amazon")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--infoctm-epochs", type=int)
    p.add_argument("--ablations", action="store_true")
    p.add_argument("--reference", action="store_true", help="add the authors' setting (docs/gloctm.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rows", help="semicolon-separated subset of row names")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (1 when sharing the machine)")
    p.add_argument("--out", type=Path, default=Path("bench/gloctm"))
    args = p.parse_args()
    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    spec = DATASETS[args.dataset]
    rows = dict(ROWS, **(ABLATIONS if args.ablations else {}))
    if args.reference:
        rows.update(reference_rows(args.dataset))
    if args.rows:
        wanted = [r.strip() for r in args.rows.split(";")]
        unknown = set(wanted) - set(rows)
        if unknown:
            raise SystemExit(f"unknown rows {sorted(unknown)}; known: {'; '.join(rows)}")
        rows = {k: v for k, v in rows.items() if k in wanted}
    out = args.out / args.dataset
    results = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {}
    for name, (model, with_dict, hparams, overrides) in rows.items():
        epochs = (args.infoctm_epochs or args.epochs) if model == "infoctm" else args.epochs
        run = out / "".join(ch if ch.isalnum() else "_" for ch in name)
        shutil.rmtree(run, ignore_errors=True)
        data = DataConfig(path=str(dataset_dir(args.dataset)), dict_path=dict_file(args.dataset) if with_dict else None,
                          ref_corpus=ref_corpus(args.dataset))
        cfg = TrainConfig(model=model, num_topics=50, epochs=epochs, seed=args.seed, checkpoint_every=0,
                          threads=args.threads, progress=sys.stderr.isatty(), hparams=hparams, **overrides)
        results[name] = run_training(data, cfg, run)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False))
    print(table(args.dataset, results, spec["langs"]))


def fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(dataset: str, results: dict, langs: tuple[str, str]) -> str:
    l1, l2 = (x.upper() for x in langs)
    keys = [f"{l1}-I", f"{l1}-C", f"{l2}-I", f"{l2}-C"]
    info = results.get("InfoCTM", {}).get("seconds_per_epoch")
    lines = [f"| {dataset}, K=50 | epochs | CNPMI | TU | TQ | " + " | ".join(keys) + " | s/epoch | x InfoCTM |",
             "|---|" + "---|" * 10]
    for name, m in results.items():
        c = m.get("classification") or {}
        s = m.get("seconds_per_epoch")
        ratio = f"{s / info:.2f}" if info and s else "–"
        lines.append(f"| {name} | {m.get('epochs')} | {fmt(m.get('CNPMI'))} | {fmt(m.get('TU'))} | "
                     f"{fmt(m.get('TQ'))} | " + " | ".join(fmt(c.get(k)) for k in keys) + f" | {fmt(s, 1)} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()

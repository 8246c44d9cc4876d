"""Where the benchmark scripts find the shared corpora, and what each benchmark dataset is.

../shared/data beside the repository, or $XTM_SHARED_DATA (as for the tests: tests/shared_data.py).
The scripts run as `python benchmarks/NAME.py`, so this directory is first on sys.path and
`from bench_data import ...` finds this module.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("XTM_SHARED_DATA", ROOT.parent / "shared" / "data"))

# langs: ISO 639-1 as xtm names them; peer_langs: as TopMost's files name them; dict and ref: under
# DATA (ref: the aligned corpus CNPMI is measured on, None where there is none); weight_mi: the
# InfoCTM weight the public configs give the dataset.
DATASETS: dict[str, dict[str, Any]] = {
    "ECNews": {"langs": ("en", "zh"), "peer_langs": ("en", "cn"), "dict": "dict/ch_en_dict.dat", "ref": None,
               "weight_mi": 30.0},
    "Rakuten_Amazon": {"langs": ("en", "ja"), "peer_langs": ("en", "ja"), "dict": "dict/MUSE/ja-en.txt",
                       "ref": "ref_corpus/en_ja", "weight_mi": 50.0},
}


def dataset_dir(name: str) -> Path:
    """DATA / name, or exit with where it was looked for (a benchmark cannot run without it)."""
    path = DATA / name
    if not path.is_dir():
        sys.exit(f"benchmark data not found at {path} (set XTM_SHARED_DATA)")
    return path


def test_texts(name: str) -> dict[str, list[str]]:
    """The dataset's test documents per language (ISO code), one line each, as its files hold them."""
    d = dataset_dir(name)
    spec = DATASETS[name]
    return {lang: (d / f"test_texts_{suffix}.txt").read_text(encoding="utf-8").splitlines()
            for lang, suffix in zip(spec["langs"], spec["peer_langs"], strict=True)}


def dict_file(name: str) -> str:
    """The dataset's bilingual dictionary."""
    return str(DATA / DATASETS[name]["dict"])


def ref_corpus(name: str) -> str | None:
    """The aligned reference corpus CNPMI is measured on for the dataset, None where there is none."""
    ref = DATASETS[name]["ref"]
    return str(DATA / ref) if ref else None

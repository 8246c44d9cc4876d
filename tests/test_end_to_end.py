"""train -> export -> infer: the runtime on raw text gives the trained model's theta."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from xtm.exporters.onnx_export import export_run
from xtm.models_zoo.components import SparseRows
from xtm.runtime import TopicModel
from xtm.trainer.loop.checkpoint import load_trained_model


@pytest.fixture(scope="module")
def bundle_dir(example_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "bundle"
    export_run(example_run, out, progress=False)
    return out


def test_runtime_on_raw_text_equals_torch_on_training_bags(bundle_dir: Path, example_run: Path,
                                                           example_dir: Path, example_corpus) -> None:
    """Same tokenizer, same vocabulary mapping, same numbers: raw JSONL text through the runtime
    against the training loader's bags of words through the torch model."""
    docs = [json.loads(line) for line in (example_dir / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    _, model = load_trained_model(example_run)
    runtime = TopicModel.load(bundle_dir)
    for i, lc in enumerate(example_corpus.languages):
        by_id = {d["id"]: d["text"] for d in docs if d["lang"] == lc.lang}
        texts = [by_id[x] for x in lc.test_ids]
        got = runtime.infer(texts, langs=lc.lang).theta
        with torch.no_grad():
            want = model.theta(SparseRows.from_csr(lc.test_bow), i).numpy()
        assert np.abs(got - want).max() < 1e-5, lc.lang


def test_languages_detected_and_topics_aligned_across_languages(bundle_dir: Path, example_dir: Path) -> None:
    """Documents of one category get the same dominant topic in English and in Chinese."""
    from collections import Counter

    docs = [json.loads(line) for line in (example_dir / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    runtime = TopicModel.load(bundle_dir)
    res = runtime.infer([d["text"] for d in docs])          # no languages given: detected
    assert res.langs == [d["lang"] for d in docs]
    dominant = {}
    for lang in ("en", "zh"):
        for label in {d["label"] for d in docs}:
            tops = [res.top_topics[i][0][0] for i, d in enumerate(docs) if d["lang"] == lang and d["label"] == label]
            dominant[lang, label] = Counter(tops).most_common(1)[0][0]
    labels = {d["label"] for d in docs}
    agree = sum(dominant["en", label] == dominant["zh", label] for label in labels)
    assert agree >= 4, dominant


def test_cli_pipeline_train_export_infer(example_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "xtm.cli.train", "--data", str(example_dir / "docs.jsonl"),
                    "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm", "--topics", "6",
                    "--epochs", "3", "--no-contextual", "--out", str(run), "-q"], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "xtm.cli.export", str(run), "--out", str(tmp_path / "b"), "-q"],
                   check=True, capture_output=True)
    out = tmp_path / "theta.jsonl"
    p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(example_dir / "docs.jsonl"),
                        "--bundle", str(tmp_path / "b"), "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = out.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1200
    first = json.loads(lines[0])
    assert len(first["theta"]) == 6 and abs(sum(first["theta"]) - 1) < 1e-4
    assert set(first["topics"][0]["words"]) == {"en", "zh"}

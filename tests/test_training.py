"""Training loop: reproducible, checkpoints restore exactly, resume equals an uninterrupted run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from xtm.config import TrainConfig
from xtm.errors import XtmError
from xtm.models_zoo.registry import model_from_state
from xtm.trainer.loop.checkpoint import latest_checkpoint_dir, load_checkpoint
from xtm.trainer.loop.training import epoch_batches, train


def config(**kw) -> TrainConfig:
    base = dict(model="nmtm", num_topics=6, epochs=4, batch_size=100, seed=3, checkpoint_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_epoch_batches_cover_every_document_of_the_largest_language() -> None:
    rng = np.random.default_rng(0)
    batches = epoch_batches([250, 90], 100, rng)
    assert len(batches) == 3
    first = np.concatenate([b[0] for b in batches])
    assert set(first.tolist()) == set(range(250))   # each doc once, padded from a reshuffle
    assert all(len(b[1]) == 100 and b[1].max() < 90 for b in batches)


def test_same_seed_same_model(example_corpus, tmp_path: Path) -> None:
    a = train(example_corpus, config(epochs=2), tmp_path / "a").model
    b = train(example_corpus, config(epochs=2), tmp_path / "b").model
    for k, v in params(a).items():
        assert torch.equal(v, params(b)[k]), k


def test_resume_continues_exactly_where_it_stopped(example_corpus, tmp_path: Path) -> None:
    straight = train(example_corpus, config(epochs=4), tmp_path / "straight")
    train(example_corpus, config(epochs=2), tmp_path / "split")
    resumed = train(example_corpus, config(epochs=4), tmp_path / "split", resume=True)
    assert resumed.epochs_done == 4
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for k, v in params(straight.model).items():
        assert torch.allclose(v.float(), params(resumed.model)[k].float(), atol=1e-6), k


def test_checkpoint_is_safetensors_and_json_and_rebuilds_the_model(example_corpus, tmp_path: Path) -> None:
    result = train(example_corpus, config(epochs=2), tmp_path)
    d = latest_checkpoint_dir(tmp_path)
    assert sorted(p.name for p in d.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    assert json.loads((d / "state.json").read_text())["epoch"] == 2
    ckpt = load_checkpoint(tmp_path)
    rebuilt = model_from_state(ckpt.state["model_config"], ckpt.model).eval()
    bow = example_corpus.languages[1].train_bow[:20]
    from xtm.models_zoo.components import SparseRows

    assert torch.allclose(rebuilt.theta(SparseRows.from_csr(bow), 1),
                          result.model.eval().theta(SparseRows.from_csr(bow), 1), atol=1e-6)
    # Only the newest checkpoints are kept.
    assert len(list((tmp_path / "checkpoints").glob("epoch-*"))) <= 2


def test_interrupt_saves_a_checkpoint_that_resumes(example_corpus, tmp_path: Path) -> None:
    calls = []

    def interrupt(epoch: int, model) -> None:
        calls.append(epoch)
        if epoch == 2:
            raise KeyboardInterrupt

    result = train(example_corpus, config(epochs=5, checkpoint_every=0), tmp_path, on_epoch_end=interrupt)
    assert result.interrupted and result.epochs_done == 1
    assert load_checkpoint(tmp_path).epoch == 1
    resumed = train(example_corpus, config(epochs=3, checkpoint_every=0), tmp_path, resume=True)
    assert resumed.epochs_done == 3 and not resumed.interrupted


def test_resume_refuses_a_different_model(example_corpus, tmp_path: Path) -> None:
    train(example_corpus, config(epochs=1), tmp_path)
    with pytest.raises(XtmError, match="checkpoint is nmtm with K=6"):
        train(example_corpus, config(epochs=2, num_topics=7), tmp_path, resume=True)


def test_corrupt_checkpoint_pointer_is_a_clear_error(example_corpus, tmp_path: Path, capsys) -> None:
    train(example_corpus, config(epochs=1), tmp_path)
    (tmp_path / "checkpoints" / "latest.json").write_text('{"dir": "epoch-999999"}')
    # The complete checkpoint still on disk is used, with a warning naming what was wrong (issue 13) ...
    assert load_checkpoint(tmp_path).epoch == 1
    assert "latest.json points to epoch-999999, which does not exist" in capsys.readouterr().err
    # ... and without one it is a clear error naming the pointer's target.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "epoch-000001")
    with pytest.raises(XtmError, match="epoch-999999"):
        load_checkpoint(tmp_path)

"""Training loop: reproducible, checkpoints restore exactly, resume equals an uninterrupted run."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from log_isolation import library_logging  # noqa: F401  (a fixture)

from xtm.config import TrainConfig
from xtm.errors import XtmError
from xtm.models_zoo.registry import model_from_state
from xtm.trainer.data.batches import data_differences, epoch_batches
from xtm.trainer.loop.checkpoint import latest_checkpoint_dir, load_checkpoint
from xtm.trainer.loop.training import lr_factor, make_optimizer, train_backbone


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
    a = train_backbone(example_corpus, config(epochs=2), tmp_path / "a").model
    b = train_backbone(example_corpus, config(epochs=2), tmp_path / "b").model
    for k, v in params(a).items():
        assert torch.equal(v, params(b)[k]), k


def test_resume_continues_exactly_where_it_stopped(example_corpus, tmp_path: Path) -> None:
    straight = train_backbone(example_corpus, config(epochs=4), tmp_path / "straight")
    train_backbone(example_corpus, config(epochs=2), tmp_path / "split")
    resumed = train_backbone(example_corpus, config(epochs=4), tmp_path / "split", resume=True)
    assert resumed.epochs_done == 4
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    for k, v in params(straight.model).items():
        assert torch.allclose(v.float(), params(resumed.model)[k].float(), atol=1e-6), k


def _with_train_rows(corpus, lang_index: int, change):
    """`corpus` with language `lang_index`'s training matrix replaced by change(matrix) (the rest shared)."""
    langs = list(corpus.languages)
    langs[lang_index] = dataclasses.replace(langs[lang_index], train_bow=change(langs[lang_index].train_bow))
    return dataclasses.replace(corpus, languages=langs)


def test_resume_refuses_the_same_sized_documents_in_another_order_or_with_other_counts(example_corpus,
                                                                                        tmp_path: Path) -> None:
    """The checkpoint held the documents' counts only: a corpus shuffled behind the same path (same vocabulary, same
    sizes) resumed silently on other batches, and its history and metrics mixed two corpora."""
    train_backbone(example_corpus, config(epochs=1), tmp_path)
    n = example_corpus.languages[1].num_train
    shuffled = _with_train_rows(example_corpus, 1, lambda m: m[np.r_[1:n, 0]])
    lang = example_corpus.languages[1].lang
    with pytest.raises(XtmError, match=rf"'{lang}': as many documents and words, but other documents or another order"):
        train_backbone(shuffled, config(epochs=2), tmp_path, resume=True)

    def recount(m):
        m = m.copy()
        m.data[0] += 1
        return m

    with pytest.raises(XtmError, match=rf"'{lang}': nnz|'{lang}': as many documents"):
        train_backbone(_with_train_rows(example_corpus, 1, recount), config(epochs=2), tmp_path, resume=True)
    assert train_backbone(example_corpus, config(epochs=2), tmp_path,
                          resume=True).epochs_done == 2  # the same data resumes


def test_a_checkpoint_from_before_the_documents_digest_is_judged_on_its_counts() -> None:
    now = {"en": {"vocab": 9, "docs": 5, "nnz": 20, "train_sha256": "a"}}
    assert data_differences({"en": {"vocab": 9, "docs": 5, "nnz": 20}}, now) == []
    assert data_differences({"en": {"vocab": 9, "docs": 6, "nnz": 20}}, now) == ["'en': docs 6 then, 5 now"]
    assert data_differences({"en": {"vocab": 9, "docs": 5, "nnz": 20, "train_sha256": "b"}}, now) == [
        "'en': as many documents and words, but other documents or another order"]
    assert "languages ['zh'] then, ['en'] now" in data_differences({"zh": {}}, now)[0]
    assert data_differences(None, now)
    assert data_differences({"en": None}, now) == ["'en': the checkpoint records None"]  # edited: not skipped


def test_the_documents_digest_is_the_same_in_memory_and_in_shards_of_any_size_and_old_indexes_go_by_counts(
        example_dir: Path, example_corpus, tmp_path: Path) -> None:
    """A digest per shard changed with --shard-size (a resume with another size was refused as 'other documents'),
    and one of another kind in memory was not compared at all (a switch to --out-of-core skipped the check)."""
    from xtm.trainer.data.batches import InMemoryBatches
    from xtm.trainer.data.sharding import ShardedCorpus, build_shards

    memory = InMemoryBatches(example_corpus).fingerprint()
    for size in (100, 37):
        build_shards(example_dir / "docs.jsonl", tmp_path / f"s{size}", shard_size=size, progress=False)
        assert ShardedCorpus(tmp_path / f"s{size}").batches().fingerprint() == memory
    index_path = tmp_path / "s37" / "index.json"
    index = json.loads(index_path.read_text())
    for lang in index["languages"].values():
        del lang["train_sha256"]
    index_path.write_text(json.dumps(index))
    old = ShardedCorpus(tmp_path / "s37").batches().fingerprint()
    assert all("train_sha256" not in v for v in old.values())
    assert data_differences(memory, old) == []


def test_resume_refuses_other_hyperparameters_naming_the_ones_to_keep(example_corpus, tmp_path: Path) -> None:
    train_backbone(example_corpus, config(model="infoctm", epochs=1, hparams={"weight_mi": 30}), tmp_path)
    with pytest.raises(XtmError, match=r"weight_mi=50\): resume with --set weight_mi=30"):
        train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"weight_mi": 50}), tmp_path,
                       resume=True)
    # The same values given again (ints for floats, as JSON gives them back) are no difference.
    assert train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"weight_mi": 30.0}),
                          tmp_path, resume=True).epochs_done == 2


def test_a_run_saved_before_a_hyperparameter_existed_resumes_with_the_value_it_had(example_corpus,
                                                                                tmp_path: Path) -> None:
    # Checkpoints written before tami_every, mi_decay_from and mi_floor existed ran TAMI every step with a
    # constant weight: resuming them with other values is refused naming the ones they had, which continue them.
    train_backbone(example_corpus, config(model="infoctm", epochs=1), tmp_path)
    state_path = latest_checkpoint_dir(tmp_path) / "state.json"
    state = json.loads(state_path.read_text())
    for name in ("tami_every", "mi_decay_from", "mi_floor"):
        del state["model_config"]["hparams"][name]
    state_path.write_text(json.dumps(state))
    with pytest.raises(XtmError, match="resume with --set tami_every=1"):
        train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"tami_every": 2}), tmp_path,
                       resume=True)
    with pytest.raises(XtmError, match="resume with --set mi_decay_from=1.0"):
        train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"mi_decay_from": 0.4}),
                       tmp_path, resume=True)
    with pytest.raises(XtmError, match="resume with --set mi_floor=0.0"):
        train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"mi_floor": 0.3}), tmp_path,
                       resume=True)
    resumed = train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"tami_every": 1}),
                             tmp_path, resume=True)
    assert resumed.epochs_done == 2 and resumed.model.hparams["tami_every"] == 1
    assert resumed.model.hparams["mi_decay_from"] == 1.0 and resumed.model.hparams["mi_floor"] == 0.0


def test_an_infoctm_run_from_before_the_fast_recipes_eps_resumes_only_with_its_own(example_corpus, tmp_path) -> None:
    # A run trained before the fast recipe set bn_eps=1e-10 (or under --recipe paper) recorded the backbone's 1e-5;
    # resumed with today's defaults it is told the one --set that continues it, and continues with it.
    train_backbone(example_corpus, config(model="infoctm", epochs=1, recipe="paper"), tmp_path)
    with pytest.raises(XtmError, match=r"bn_eps=1e-10\): resume with --set bn_eps=1e-05"):
        train_backbone(example_corpus, config(model="infoctm", epochs=2), tmp_path, resume=True)
    resumed = train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"bn_eps": 1e-5}), tmp_path,
                             resume=True)
    assert resumed.epochs_done == 2 and resumed.model.hparams["bn_eps"] == 1e-5
    assert resumed.model.encoders[0].body.bn_mu.eps == 1e-5


def test_grad_clip_clips_phase_one_of_every_vae_backbone_and_an_older_run_resumes_unclipped(
        example_corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --set grad_clip=N: the LLM-XTM authors' runner clips every backbone at 1.0; the papers' own code does not.
    norms: list[float] = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda params, max_norm: norms.append(max_norm)
                        or real(params, max_norm))
    for model in ("nmtm", "infoctm"):
        norms.clear()
        train_backbone(example_corpus, config(model=model, epochs=1), tmp_path / f"{model}-plain")
        assert norms == []                                     # the papers' default: not clipped
        run = train_backbone(example_corpus, config(model=model, epochs=1, hparams={"grad_clip": 0.5}),
                             tmp_path / model)
        assert norms and set(norms) == {0.5} and run.model.hparams["grad_clip"] == 0.5
    # a run saved before the setting existed trained unclipped, and is told so when resumed with a clip
    state_path = latest_checkpoint_dir(tmp_path / "infoctm-plain") / "state.json"
    state = json.loads(state_path.read_text())
    del state["model_config"]["hparams"]["grad_clip"]
    state_path.write_text(json.dumps(state))
    with pytest.raises(XtmError, match="resume with --set grad_clip=0.0"):
        train_backbone(example_corpus, config(model="infoctm", epochs=2, hparams={"grad_clip": 1.0}),
                       tmp_path / "infoctm-plain", resume=True)
    assert train_backbone(example_corpus, config(model="infoctm", epochs=2), tmp_path / "infoctm-plain",
                          resume=True).epochs_done == 2


def test_checkpoint_is_safetensors_and_json_and_rebuilds_the_model(example_corpus, tmp_path: Path) -> None:
    result = train_backbone(example_corpus, config(epochs=2), tmp_path)
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

    result = train_backbone(example_corpus, config(epochs=5, checkpoint_every=0), tmp_path, on_epoch_end=interrupt)
    assert result.interrupted and result.epochs_done == 1
    assert load_checkpoint(tmp_path).epoch == 1
    resumed = train_backbone(example_corpus, config(epochs=3, checkpoint_every=0), tmp_path, resume=True)
    assert resumed.epochs_done == 3 and not resumed.interrupted


def test_the_first_signal_during_the_evaluation_between_epochs_ends_it_at_once(example_corpus, tmp_path: Path) -> None:
    """An --eval-every evaluation can be minutes of SVM fits on a large corpus and holds nothing a checkpoint needs:
    the first Ctrl-C ends it at once (elsewhere the first one waits for the step to finish), and the epoch it
    followed is kept whole: the resumed run evaluates it again and goes on."""
    import signal
    import threading
    import time

    from xtm.interruptible import interruptible

    release = threading.Event()

    def evaluate(epoch: int, model) -> dict[str, float]:
        if epoch == 2:
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            interruptible(release.wait, 60)  # a long call outside Python, as sklearn's fits are
        return {"TU": 0.5}

    t0 = time.monotonic()
    try:
        result = train_backbone(example_corpus, config(epochs=4, checkpoint_every=0), tmp_path, on_epoch_end=evaluate)
        assert time.monotonic() - t0 < 45 and result.interrupted and result.epochs_done == 1
    finally:
        release.set()
    resumed = train_backbone(example_corpus, config(epochs=4, checkpoint_every=0), tmp_path, resume=True,
                             on_epoch_end=lambda epoch, model: {"TU": 0.5})
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4] and all("eval" in h for h in resumed.history)


def test_history_json_is_current_after_every_epoch(example_corpus, tmp_path: Path) -> None:
    # A long run's learning curve must be readable while it trains, and survive a kill between
    # checkpoints (checkpoint_every=0: none until the end).
    seen: dict[int, list[int]] = {}

    def look(epoch: int, model) -> dict[str, float]:
        path = tmp_path / "run" / "history.json"
        seen[epoch] = [h["epoch"] for h in json.loads(path.read_text())] if path.exists() else []
        return {"TU": 0.5 + epoch / 10}

    train_backbone(example_corpus, config(epochs=3, checkpoint_every=0), tmp_path / "run", on_epoch_end=look)
    assert seen == {1: [], 2: [1], 3: [1, 2]}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[1]["eval"] == {"TU": 0.7}


@pytest.mark.usefixtures("library_logging")
def test_a_history_json_that_cannot_be_written_does_not_stop_training(example_corpus, tmp_path: Path,
                                                                         caplog) -> None:
    (tmp_path / "history.json").mkdir()  # something in its place: the epochs' rewrites fail
    result = train_backbone(example_corpus, config(epochs=3, checkpoint_every=0), tmp_path)
    assert result.epochs_done == 3 and not result.interrupted
    assert [h["epoch"] for h in load_checkpoint(tmp_path).state["history"]] == [1, 2, 3]
    warned = [r.getMessage() for r in caplog.records if "history.json not updated" in r.getMessage()]
    assert len(warned) == 1 and "checkpoints keep the history" in warned[0]  # once, not every epoch


def test_resume_refuses_a_different_model(example_corpus, tmp_path: Path) -> None:
    train_backbone(example_corpus, config(epochs=1), tmp_path)
    with pytest.raises(XtmError, match="checkpoint is nmtm with K=6.*resume with --model nmtm --topics 6"):
        train_backbone(example_corpus, config(epochs=2, num_topics=7), tmp_path, resume=True)


@pytest.mark.usefixtures("library_logging")
def test_corrupt_checkpoint_pointer_is_a_clear_error(example_corpus, tmp_path: Path, caplog) -> None:
    train_backbone(example_corpus, config(epochs=1), tmp_path)
    (tmp_path / "checkpoints" / "latest.json").write_text('{"dir": "epoch-999999"}')
    # The complete checkpoint still on disk is used, with a warning naming what was wrong (issue 13) ...
    with caplog.at_level(logging.WARNING, logger="xtm"):
        assert load_checkpoint(tmp_path).epoch == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("latest.json points to epoch-999999, which does not exist" in m for m in warnings), warnings
    # ... and without one it is a clear error naming the pointer's target.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "epoch-000001")
    with pytest.raises(XtmError, match="epoch-999999"):
        load_checkpoint(tmp_path)


# -- what the trainer reports, and how (issue 17.4, issue 16) ---------------------------------------


def epoch_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "xtm.trainer.loop.training"
            and r.getMessage().startswith("epoch ")]


@pytest.mark.usefixtures("library_logging")
def test_without_a_bar_a_log_file_gets_one_line_per_epoch(example_corpus, tmp_path: Path, caplog) -> None:
    """stderr is a pipe or a file (not a terminal), so no bar: each epoch is one INFO line."""
    with caplog.at_level(logging.INFO, logger="xtm"):
        result = train_backbone(example_corpus, config(epochs=3, checkpoint_every=0), tmp_path)
    lines = epoch_lines(caplog)
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    for line, h in zip(lines, result.history, strict=True):
        assert f"loss {h['loss']:.4f}, {h['seconds']:.2f}s" in line


@pytest.mark.usefixtures("library_logging")
def test_a_bar_is_not_doubled_by_epoch_lines(example_corpus, tmp_path: Path, caplog, capsys) -> None:
    with caplog.at_level(logging.INFO, logger="xtm"):
        train_backbone(example_corpus, config(epochs=2, checkpoint_every=0, progress=True), tmp_path)
    assert "2/2" in capsys.readouterr().err  # the bar itself
    assert epoch_lines(caplog) == []


@pytest.mark.usefixtures("library_logging")
def test_quiet_on_a_terminal_stays_quiet(example_corpus, tmp_path: Path, caplog, monkeypatch) -> None:
    """-q on a terminal (a real pseudo-terminal here): no bar and no epoch lines."""
    leader, follower = os.openpty()
    with os.fdopen(follower, "w") as tty:
        monkeypatch.setattr(sys, "stderr", tty)
        with caplog.at_level(logging.INFO, logger="xtm"):
            train_backbone(example_corpus, config(epochs=2, checkpoint_every=0), tmp_path)
        monkeypatch.undo()
    os.close(leader)
    assert epoch_lines(caplog) == []


def test_resume_refuses_the_languages_in_another_order(example_dir: Path, tmp_path: Path) -> None:
    """With equal vocabulary sizes nothing else would notice: each encoder would go on with the other
    language's documents (the reviewer's run: EN-C 0.79 -> 0.18, exit 0)."""
    from xtm.trainer.data.loading import load_corpus

    def corpus(langs: list[str]):
        return load_corpus(example_dir / "docs.jsonl", dict_path=example_dir / "dict.tsv", langs=langs,
                           progress=False, vocab_size=100)

    train_backbone(corpus(["en", "zh"]), config(epochs=1), tmp_path)
    with pytest.raises(XtmError, match=r"checkpoint models en,zh .*this run zh,en .*resume with --langs en,zh"):
        train_backbone(corpus(["zh", "en"]), config(epochs=2), tmp_path, resume=True)


@pytest.mark.parametrize(("setting", "flag"), [({"lr": 0.01}, "--lr 0.002"), ({"seed": 7}, "--seed 3")])
def test_resume_refuses_a_learning_rate_or_seed_it_would_not_use(example_corpus, tmp_path: Path, setting: dict,
                                                                   flag: str) -> None:
    """The optimizer's saved groups keep the rate and the random state continues from the checkpoint: another
    value would only be recorded (config.json, the bundle) as if it had been used."""
    train_backbone(example_corpus, config(epochs=1), tmp_path)
    with pytest.raises(XtmError, match=f"trained with {flag.split()[0]} .*resume with {flag}"):
        train_backbone(example_corpus, config(epochs=2, **setting), tmp_path, resume=True)


def test_the_values_a_resume_refusal_names_are_the_checkpoints_exactly(example_corpus, tmp_path: Path) -> None:
    """`:g` formatting named --seed 2.02401e+07 (not a seed) and a rounded --lr that was refused again."""
    train_backbone(example_corpus, config(epochs=1, seed=20240101, lr=0.000316227766), tmp_path)
    with pytest.raises(XtmError, match=r"resume with --lr 0\.000316227766 "):
        train_backbone(example_corpus, config(epochs=2, seed=20240101), tmp_path, resume=True)
    with pytest.raises(XtmError, match=r"resume with --seed 20240101 "):
        train_backbone(example_corpus, config(epochs=2, lr=0.000316227766), tmp_path, resume=True)
    assert train_backbone(example_corpus, config(epochs=2, seed=20240101, lr=0.000316227766), tmp_path,
                          resume=True).epochs_done == 2


def test_resume_refuses_another_dictionary(example_dir: Path, tmp_path: Path) -> None:
    """The model keeps its checkpoint's links: another --dict only changed what config.json named."""
    from xtm.trainer.data.loading import load_corpus

    pairs = (example_dir / "dict.tsv").read_text(encoding="utf-8").splitlines()
    other = tmp_path / "other.tsv"
    other.write_text("\n".join(pairs[: len(pairs) // 2]) + "\n", encoding="utf-8")
    train_backbone(load_corpus(example_dir / "docs.jsonl", dict_path=example_dir / "dict.tsv", progress=False),
                   config(epochs=1), tmp_path / "run")
    with pytest.raises(XtmError, match="dictionary links differ .*resume with the --dict the run was trained with"):
        train_backbone(load_corpus(example_dir / "docs.jsonl", dict_path=other, progress=False), config(epochs=2),
                       tmp_path / "run", resume=True)
    corpus = load_corpus(example_dir / "docs.jsonl", dict_path=example_dir / "dict.tsv", progress=False)
    resumed = train_backbone(corpus, config(epochs=2), tmp_path / "run", resume=True)
    assert resumed.epochs_done == 2
    from xtm.models_zoo.registry import model_class

    # XTRA never reads the links: a resume of an XTRA run with another dictionary is not refused for them
    assert not model_class("xtra").reads_links and model_class("gloctm").reads_links and model_class("nmtm").reads_links


@pytest.mark.usefixtures("library_logging")
def test_resume_and_interruption_are_logged_not_printed(example_corpus, tmp_path: Path, caplog, capfd) -> None:
    def interrupt(epoch: int, model) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    with caplog.at_level(logging.INFO, logger="xtm"):
        train_backbone(example_corpus, config(epochs=2, checkpoint_every=0), tmp_path, on_epoch_end=interrupt)
        train_backbone(example_corpus, config(epochs=2, checkpoint_every=0), tmp_path, resume=True)
    messages = [r.getMessage() for r in caplog.records]
    assert "SIGINT: stopping; saving the checkpoint" in messages
    assert any(m.startswith("stopped after epoch 0; checkpoint saved: continue with --resume") or
               m.startswith("stopped at epoch 1, step") for m in messages), messages
    assert any(m.startswith("resumed from ") for m in messages), messages
    out, err = capfd.readouterr()
    assert "stopping" not in out + err and "resumed" not in out + err  # a library user's streams stay clean


def test_trainer_and_model_zoo_never_print() -> None:
    from test_no_print import ROOT, terminal_writes

    files = sorted(p for folder in ("trainer", "models_zoo") for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 20
    offenders = [hit for p in files for hit in terminal_writes(p)]
    assert offenders == [], "\n".join(offenders)


def test_contextual_refuses_a_misspelt_encoder_before_reading_the_run(example_run: Path, tmp_path: Path) -> None:
    """Before: the run's model and whole corpus were loaded first (and a moved corpus hid the typo)."""
    import shutil

    from xtm.config import ContextualConfig
    from xtm.trainer.contextual.fit import train_contextual

    run = tmp_path / "run"
    shutil.copytree(example_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    with pytest.raises(XtmError, match="unknown encoder 'use-multilingal': use 'use-multilingual' or 'st:<"):
        train_contextual(run, ContextualConfig(encoder="use-multilingal"))
    assert not (run / "contextual").exists()


@pytest.mark.parametrize("model, hparams", [("nmtm", {}), ("infoctm", {"dropout": 0.2})])
def test_eval_every_records_a_learning_curve_without_changing_the_run(model: str, hparams: dict, example_dir: Path,
                                                                     tmp_path: Path) -> None:
    """--eval-every N: TU and classification every N epochs in history.json; the trained weights are the
    same bits as without it (evaluation works on a copy and takes no training randomness). With dropout, the
    copy's batch-norm recalibration drew from the run's RNG and changed the weights (XTRA's default 0.2)."""
    from safetensors.torch import load_file

    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"))
    runs = {}
    for every in (0, 2):
        out = tmp_path / f"every-{every}"
        run_training(data, TrainConfig(model=model, num_topics=6, epochs=5, checkpoint_every=0, progress=False,
                                       seed=1, eval_every=every, hparams=hparams), out)
        runs[every] = out
    history = json.loads((runs[2] / "history.json").read_text())
    points = {h["epoch"]: h["eval"] for h in history if "eval" in h}
    assert sorted(points) == [2, 4]
    for p in points.values():
        assert 0 < p["TU"] <= 1 and set(p["classification"]) == {"EN-I", "ZH-I", "EN-C", "ZH-C"}
    assert not any("eval" in h for h in json.loads((runs[0] / "history.json").read_text()))
    weights = [load_file(str(latest_checkpoint_dir(r) / "model.safetensors")) for r in runs.values()]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_topic_lr_scale_gives_the_topic_word_weights_their_own_rate_and_resumes(example_corpus, tmp_path) -> None:
    """--topic-lr-scale: phi at scale x lr, everything else at lr; a split run equals a straight one."""
    cfg = config(epochs=2, topic_lr_scale=4.0)
    straight = train_backbone(example_corpus, cfg, tmp_path / "straight")
    opt = make_optimizer(straight.model, 0.002, 4.0)
    assert [g["lr"] for g in opt.param_groups] == [0.002, 0.008]
    phi = {id(p) for p in straight.model.phi}
    assert {id(p) for p in opt.param_groups[1]["params"]} == phi
    assert not phi & {id(p) for p in opt.param_groups[0]["params"]}
    assert len(make_optimizer(straight.model, 0.002).param_groups) == 1   # scale 1: the old single group
    train_backbone(example_corpus, config(epochs=1, topic_lr_scale=4.0), tmp_path / "split")
    resumed = train_backbone(example_corpus, cfg, tmp_path / "split", resume=True)
    for k, v in params(straight.model).items():
        assert torch.allclose(v.float(), params(resumed.model)[k].float(), atol=1e-6), k
    with pytest.raises(XtmError, match="trained with --topic-lr-scale 4, this run asks for 1: resume with "
                                       "--topic-lr-scale 4"):
        train_backbone(example_corpus, config(epochs=3, topic_lr_scale=1.0), tmp_path / "split", resume=True)
    # an NMTM run with the papers' settings, resumed under the default (fast) recipe, is told how to go on
    train_backbone(example_corpus, config(epochs=1, recipe="paper"), tmp_path / "paper")
    with pytest.raises(XtmError, match="asks for 5: resume with --topic-lr-scale 1 .*--recipe paper"):
        train_backbone(example_corpus, config(epochs=2), tmp_path / "paper", resume=True)
    assert train_backbone(example_corpus, config(epochs=2, recipe="paper"), tmp_path / "paper",
                          resume=True).epochs_done == 2
    # a scale below 1 resumes too (phi's group, not the larger of the rates, is the saved scale)
    train_backbone(example_corpus, config(epochs=1, topic_lr_scale=0.5), tmp_path / "slow")
    assert train_backbone(example_corpus, config(epochs=2, topic_lr_scale=0.5), tmp_path / "slow",
                          resume=True).epochs_done == 2
    plain = train_backbone(example_corpus, config(epochs=2), tmp_path / "plain")
    assert not torch.allclose(plain.model.phi[0], straight.model.phi[0])   # the scale changed training


def test_the_cosine_learning_rate_falls_from_lr_to_near_zero_over_phase_one(example_corpus, tmp_path) -> None:
    assert lr_factor("constant", 7, 10) == 1.0
    assert lr_factor("cosine", 0, 10) == 1.0 and lr_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert 0 < lr_factor("cosine", 9, 10) < 0.03 and lr_factor("cosine", 12, 10) == 0.0
    run = train_backbone(example_corpus, config(epochs=2, lr_schedule="cosine", topic_lr_scale=4.0), tmp_path / "cos")
    groups = load_checkpoint(tmp_path / "cos").state["optimizer"]["param_groups"]
    # the last step's rate: a small fraction of each group's own (lr 0.002, phi 4x)
    assert [g["lr_scale"] for g in groups] == [1.0, 4.0]
    assert all(0 < g["lr"] < 0.05 * 0.002 * g["lr_scale"] for g in groups), groups
    assert run.epochs_done == 2


def test_the_step_learning_rate_halves_every_step_size_epochs_and_a_run_extends_on_it(
        example_corpus, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--lr-schedule step is the authors' StepLR: the full rate for the first step_epochs epochs, then halved
    each step_epochs; a function of the epoch alone, so a run extended with --resume --epochs N is the same
    run as one trained that long at once."""
    from xtm.config import LR_STEP_EPOCHS, lr_step_epochs

    assert lr_step_epochs("infoctm") == 125 and lr_step_epochs("XTRA") == 250   # the authors' configs
    # 10 steps an epoch, 125-epoch steps: epochs 1-125 at 1, 126-250 at 0.5, from 251 at 0.25
    assert [lr_factor("step", s, 10 ** 6, 10, 125) for s in (0, 1249, 1250, 2499, 2500)] == [1, 1, 0.5, 0.5, 0.25]
    monkeypatch.setitem(LR_STEP_EPOCHS, "nmtm", 2)           # a short step, so that a test sees it move

    def last_rates(run: Path) -> list[float]:
        return [g["lr"] for g in load_checkpoint(run).state["optimizer"]["param_groups"]]

    straight = train_backbone(example_corpus, config(epochs=5, lr_schedule="step", topic_lr_scale=4.0), tmp_path / "s")
    assert last_rates(tmp_path / "s") == pytest.approx([0.002 * 0.25, 0.008 * 0.25])   # epoch 5: halved twice
    train_backbone(example_corpus, config(epochs=3, lr_schedule="step", topic_lr_scale=4.0), tmp_path / "r")
    assert last_rates(tmp_path / "r") == pytest.approx([0.002 * 0.5, 0.008 * 0.5])
    extended = train_backbone(example_corpus, config(epochs=5, lr_schedule="step", topic_lr_scale=4.0), tmp_path / "r",
                              resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, extended.model.state_dict()[k]), k
    constant = train_backbone(example_corpus, config(epochs=5, topic_lr_scale=4.0), tmp_path / "c")
    assert not torch.equal(constant.model.phi[0], straight.model.phi[0])   # the schedule changed training

    # Inside StepLR's first step both schedules train alike, so a constant run may go on with step (and the
    # other way round) and is the same run as one trained on the new schedule from the start; past it, refused.
    train_backbone(example_corpus, config(epochs=2, topic_lr_scale=4.0), tmp_path / "c2")
    switched = train_backbone(example_corpus, config(epochs=5, lr_schedule="step", topic_lr_scale=4.0), tmp_path / "c2",
                              resume=True)
    for k, v in straight.model.state_dict().items():
        assert torch.equal(v, switched.model.state_dict()[k]), k
    train_backbone(example_corpus, config(epochs=2, lr_schedule="step", topic_lr_scale=4.0), tmp_path / "s2")
    back = train_backbone(example_corpus, config(epochs=5, topic_lr_scale=4.0), tmp_path / "s2", resume=True)
    for k, v in constant.model.state_dict().items():
        assert torch.equal(v, back.model.state_dict()[k]), k
    with pytest.raises(XtmError, match="trained with --lr-schedule constant, this run asks for step"):
        train_backbone(example_corpus, config(epochs=5, lr_schedule="step", topic_lr_scale=4.0), tmp_path / "c",
                       resume=True)


@pytest.mark.usefixtures("library_logging")
def test_one_language_near_posterior_collapse_is_named_with_the_remedy(example_corpus, tmp_path: Path,
                                                                        caplog) -> None:
    from xtm.trainer.loop.model_passes import warn_near_collapse

    # The papers' eps (--recipe paper; the fast recipe's 1e-10 is what the warning recommends).
    model = train_backbone(example_corpus, config(model="infoctm", epochs=1, recipe="paper"), tmp_path).model
    first, second = model.langs
    # What ECNews's English encoder ends at in 3 runs of 4 with the papers' eps: its mean head varies less than the
    # batch norm's eps (1e-6 against 1e-5), the Chinese one does not.
    model.encoders[0].body.bn_mu.running_var.fill_(1e-7)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        warn_near_collapse(model)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert f"the {first} encoder ended near posterior collapse" in warned[0]
    assert "1.0e-07 < 1e-05" in warned[0] and f"while {second} theta is not" in warned[0]
    assert "--set bn_eps=1e-10" in warned[0]

    # Every language there is the method's state (NMTM's shared body), not one falling behind: silent.
    caplog.clear()
    model.encoders[1].body.bn_mu.running_var.fill_(1e-7)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        warn_near_collapse(model)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.usefixtures("library_logging")
def test_a_trained_run_checks_its_encoders_for_near_collapse(example_corpus, example_dir: Path, tmp_path: Path,
                                                             caplog, monkeypatch) -> None:
    import xtm.trainer.loop.model_passes as model_passes
    from xtm.models_zoo.components import near_collapsed_languages

    # The default eps on this corpus leaves both encoders open: nothing to say.
    with caplog.at_level(logging.WARNING, logger="xtm"):
        model = train_backbone(example_corpus, config(model="infoctm", epochs=1), tmp_path / "default").model
    assert near_collapsed_languages(model.encoders, model.langs) == {}
    assert not [r for r in caplog.records if "posterior collapse" in r.getMessage()]
    # The trainer asks about the trained, recalibrated model at the end of a run, and at its periodic checkpoints
    # (recalibrated too) until one shows it: hours before the end of a long run, once.
    seen = []

    def one_collapsed(encoders, langs):
        seen.append(langs)
        return {langs[0]: (1e-7, 1e-5)}

    monkeypatch.setattr(model_passes, "near_collapsed_languages", one_collapsed)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="xtm"):
        train_backbone(example_corpus, config(model="infoctm", epochs=3, checkpoint_every=1), tmp_path / "run")
    warned = [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]
    assert len(seen) == 2  # epoch 1's checkpoint warned; epoch 2's did not ask again; the end did
    assert len(warned) == 2 and "is, at epoch 1, near posterior collapse" in warned[0] and "ended" in warned[1]

    # With --eval-every, the first evaluation point that shows it warns (hours before the end of a long run), once.
    from xtm.config import DataConfig
    from xtm.trainer.run import run_training

    def warnings_of_a_run(eval_every: int, out: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xtm"):
            run_training(DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv")),
                         config(model="infoctm", epochs=3, eval_every=eval_every), tmp_path / out)
        return [r.getMessage() for r in caplog.records if "posterior collapse" in r.getMessage()]

    warned = warnings_of_a_run(1, "curve")
    # (checkpoints every epoch here too: the evaluation point says it, the checkpoint does not say it again)
    assert len(warned) == 2 and "is, at epoch 1, near posterior collapse" in warned[0] and "ended" in warned[1]
    history = json.loads((tmp_path / "curve" / "history.json").read_text())
    assert history[0]["eval"]["near_collapse"] == {"en": [1e-7, 1e-5]}  # the curve records it too
    # An --eval-every longer than the run: the checkpoints still say it early (they were silent with one set).
    warned = warnings_of_a_run(10, "long-eval")
    assert len(warned) == 2 and "is, at epoch 1, near posterior collapse" in warned[0] and "ended" in warned[1]


def test_evaluate_model_spends_the_encoder_pass_only_where_the_published_protocol_runs(
        example_corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoder means (a full pass over every document) are computed only for the published protocol:
    not for an unlabelled corpus, and not above the size where that protocol is skipped with a note."""
    from dataclasses import replace

    from xtm.corpus import Corpus
    from xtm.evaluation import metrics as metrics_module
    from xtm.trainer import run as run_module

    result = train_backbone(example_corpus, TrainConfig(model="nmtm", num_topics=4, epochs=1, checkpoint_every=0,
                                                        progress=False, seed=0), tmp_path)
    calls: list[int] = []
    real = run_module.infer_mean

    def counting_infer_mean(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "infer_mean", counting_infer_mean)
    cpu = torch.device("cpu")

    labelled = run_module.evaluate_model(example_corpus, result, cpu, None)
    assert set(labelled["classification_published"]) == {"EN-I", "ZH-I", "EN-C", "ZH-C"}
    assert len(calls) == 4                                     # train and test, both languages

    calls.clear()
    unlabelled = Corpus([replace(lc, train_labels=None, test_labels=None) for lc in example_corpus.languages],
                        example_corpus.links, example_corpus.name, example_corpus.info)
    m = run_module.evaluate_model(unlabelled, result, cpu, None)
    assert m["classification"] is None and "classification_published" not in m
    assert calls == []

    monkeypatch.setattr(metrics_module, "PUBLISHED_PROTOCOL_MAX_DOCS", 100)
    big = run_module.evaluate_model(example_corpus, result, cpu, None)
    assert big["classification"] is not None and big["classification_published"] is None
    assert "en 480" in big["classification_published_note"]
    assert calls == []


def test_the_authors_recipe_trains_with_their_rate_width_and_clip(example_corpus, tmp_path: Path) -> None:
    """--recipe authors reaches the training loop: NMTM at Adam 1e-3 with 100 hidden units and a clip of 1."""
    run = train_backbone(example_corpus, TrainConfig(model="nmtm", recipe="authors", num_topics=6, epochs=1,
                                                     progress=False, seed=0, checkpoint_every=1), tmp_path)
    assert run.model.hparams["hidden"] == 100 and run.model.hparams["grad_clip"] == 1.0
    assert [g["lr"] for g in load_checkpoint(tmp_path).state["optimizer"]["param_groups"]] == [0.001]


def test_a_periodic_checkpoint_is_servable_and_taking_it_does_not_change_the_run(example_corpus,
                                                                                  tmp_path: Path) -> None:
    """Before: a periodic checkpoint kept training's batch-norm running statistics; a copy of one (or the
    fallback from a damaged final checkpoint) served theta off by up to 10 points of ECNews cross-lingual
    accuracy. Now its model is recalibrated like the final one's, with training's statistics kept aside for
    resuming, and the run is the same bits with or without periodic checkpoints (dropout on: the
    recalibration pass draws from a fork of the RNGs)."""
    import copy

    from xtm.trainer.data.batches import InMemoryBatches
    from xtm.trainer.loop.checkpoint import train_buffers
    from xtm.trainer.loop.model_passes import recalibrate_batchnorm

    hp = {"dropout": 0.2}
    every = train_backbone(example_corpus, config(model="infoctm", epochs=3, checkpoint_every=1, hparams=hp),
                           tmp_path / "a")
    none = train_backbone(example_corpus, config(model="infoctm", epochs=3, checkpoint_every=0, hparams=hp),
                          tmp_path / "b")
    for k, v in params(none.model).items():
        assert torch.equal(v, params(every.model)[k]), k
    ckpt = load_checkpoint(tmp_path / "a" / "checkpoints" / "epoch-000002")
    assert train_buffers(ckpt)  # training's statistics, for a resume
    saved = model_from_state(ckpt.state["model_config"], ckpt.model)
    again = copy.deepcopy(saved)
    torch.manual_seed(0)
    recalibrate_batchnorm(again, InMemoryBatches(example_corpus), torch.device("cpu"))
    stats = [k for k in saved.state_dict() if k.endswith(("running_mean", "running_var")) and k.startswith("encoders")]
    assert stats
    for k in stats:  # dropout makes the pass random: equal up to its noise, far from training's statistics
        assert torch.allclose(saved.state_dict()[k], again.state_dict()[k], rtol=0.05, atol=0.05), k
    assert any(not torch.allclose(saved.state_dict()[k], train_buffers(ckpt)[k], rtol=0.05, atol=0.05)
               for k in stats if k in train_buffers(ckpt))


def test_a_recalibration_cut_short_leaves_the_batch_norms_settings_as_they_were(example_corpus,
                                                                              tmp_path: Path) -> None:
    """A second Ctrl-C during the pass raised out of it with every batch norm left on a cumulative average
    (momentum None): the rest of the run would have averaged its running statistics over all its steps."""
    from xtm.trainer.data.batches import InMemoryBatches
    from xtm.trainer.loop.model_passes import recalibrate_batchnorm

    model = train_backbone(example_corpus, config(model="infoctm", epochs=1, checkpoint_every=0), tmp_path).model

    class CutShort(InMemoryBatches):
        def sequential(self, lang_index, batch_size):
            it = super().sequential(lang_index, batch_size)
            yield next(it)
            raise KeyboardInterrupt

    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    before = [(bn.momentum, int(bn.num_batches_tracked)) for bn in bns]
    was = model.training
    with pytest.raises(KeyboardInterrupt):
        recalibrate_batchnorm(model, CutShort(example_corpus), torch.device("cpu"), batch_size=16)
    assert [(bn.momentum, int(bn.num_batches_tracked)) for bn in bns] == before and model.training == was

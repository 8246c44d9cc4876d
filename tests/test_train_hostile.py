"""xtm-train in a hostile world (issue 13): a user's directory is never written to, one process per
run, exit codes that tell the truth, an interrupted run resumes bit for bit, bad input is one clean
error. Real processes, real signals, real damaged files."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from command_logging import train_stderr  # noqa: F401  (a fixture)
from safetensors.torch import load_file, save_file

from xtm.config import TOKEN_RULES, DataConfig, TrainConfig
from xtm.errors import XtmError
from xtm.trainer.data.batches import InMemoryBatches
from xtm.trainer.data.loading import load_corpus
from xtm.trainer.loop.checkpoint import load_checkpoint
from xtm.trainer.loop.training import train_backbone
from xtm.trainer.run import run_training

TRAIN = [sys.executable, "-m", "xtm.cli.train"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(TRAIN + args, capture_output=True, text=True, env=ENV, timeout=timeout)


def example_args(example_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--topics", "6", "--out", str(out), "-q", "--no-contextual", *extra]


def config(**kw) -> TrainConfig:
    base = dict(model="nmtm", num_topics=6, epochs=3, batch_size=100, seed=3, checkpoint_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def assert_same_training_state(a: Path, b: Path) -> None:
    """Two checkpoint directories hold bit-identical model and optimizer tensors (RNG states included)."""
    for name in ("model.safetensors", "optimizer.safetensors"):
        x, y = load_file(str(a / name)), load_file(str(b / name))
        assert x.keys() == y.keys(), name
        for k in x:
            assert torch.equal(x[k], y[k]), f"{name}: {k} differs"


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs by up to {(sa[k].double() - sb[k].double()).abs().max():.3g}"


class SignalAt:
    """The in-memory batch source, sending this process a real signal just before one step of one epoch.

    (Where the signal lands is then known: the mid-epoch path is exercised every time.)"""

    def __init__(self, corpus, epoch: int, step: int, signals: tuple[int, ...]) -> None:
        self.inner, self.at, self.signals, self.calls = InMemoryBatches(corpus), (epoch, step), signals, 0
        self.sizes, self.fingerprint, self.sequential = self.inner.sizes, self.inner.fingerprint, self.inner.sequential

    def epoch(self, rng, batch_size, rank=0, world=1, start_step=0):
        self.calls += 1
        steps = self.inner.epoch(rng, batch_size, rank, world, start_step) if start_step else \
            self.inner.epoch(rng, batch_size, rank, world)
        for i, batch in enumerate(steps):
            if (self.calls, i) == self.at:
                for s in self.signals:
                    os.kill(os.getpid(), s)
            yield batch


class SignalInRecalibration:
    """The in-memory batch source, sending this process SIGINT as batch norm's `at_pass`-th recalibration
    pass starts (every checkpoint's model is recalibrated before it is saved)."""

    def __init__(self, corpus, at_pass: int) -> None:
        self.inner, self.at_pass, self.passes = InMemoryBatches(corpus), at_pass, 0
        self.sizes, self.fingerprint, self.epoch = self.inner.sizes, self.inner.fingerprint, self.inner.epoch

    def sequential(self, lang_index, batch_size):
        self.passes += lang_index == 0
        if lang_index == 0 and self.passes == self.at_pass:
            os.kill(os.getpid(), signal.SIGINT)
        yield from self.inner.sequential(lang_index, batch_size)


# ---- the run directory is ours, or untouched ----------------------------------------------------

def test_a_directory_that_is_not_a_run_is_refused_and_left_untouched(example_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "my-project"
    mine.mkdir()
    files = {"config.json": '{"my": "settings"}\n', "metrics.json": "[1, 2]\n", "report.html": "<p>mine</p>\n"}
    for name, text in files.items():
        (mine / name).write_text(text)
    p = cli(example_args(example_dir, mine, "--epochs", "1", "--resume"))
    assert p.returncode == 2, p.stderr
    assert f"error: {mine} exists and is not an xtm run directory" in p.stderr and "Traceback" not in p.stderr
    assert sorted(x.name for x in mine.iterdir()) == sorted(files)  # not even a lock file was added
    assert all((mine / n).read_text() == t for n, t in files.items())


def test_what_counts_as_a_run_directory(tmp_path: Path) -> None:
    from xtm.run_dir import has_checkpoint, is_run_dir, refuse_foreign_dir

    early = tmp_path / "early"  # what a run stopped while loading its data leaves: ours, no --resume needed
    early.mkdir()
    (early / "run.json").write_text('{"xtm_run": 1}')
    (early / "vocab_en.txt").write_text("a\n")
    refuse_foreign_dir(early)
    assert is_run_dir(early) and not has_checkpoint(early)
    legacy = tmp_path / "legacy"  # written before run.json existed
    legacy.mkdir()
    (legacy / "config.json").write_text('{"xtm_version": "0.1.0"}')
    assert is_run_dir(legacy)
    user = tmp_path / "user"  # a config.json that is not ours
    user.mkdir()
    (user / "config.json").write_text('{"xtm_version_of_my_tool": 2}')
    assert not is_run_dir(user)
    with pytest.raises(XtmError, match="exists and is not an xtm run directory"):
        refuse_foreign_dir(user)
    # Names other tools use too are not proof: Sacred's FileStorageObserver writes run.json, config.json
    # and metrics.json; another trainer may keep a checkpoints/latest.json.
    for name, files in (("sacred", {"run.json": '{"status": "COMPLETED"}', "config.json": "{}",
                                    "metrics.json": "{}"}),
                        ("other", {"checkpoints/latest.json": '{"step": 5, "dir": "ckpt-5"}'})):
        d = tmp_path / name
        for rel, text in files.items():
            (d / rel).parent.mkdir(parents=True, exist_ok=True)
            (d / rel).write_text(text)
        assert not is_run_dir(d)
        with pytest.raises(XtmError, match="exists and is not an xtm run directory"):
            refuse_foreign_dir(d)
    ours = tmp_path / "ours"  # an older run's pointer, as xtm writes it
    (ours / "checkpoints").mkdir(parents=True)
    (ours / "checkpoints" / "latest.json").write_text('{"dir": "epoch-000003", "epoch": 3, "step": 0}')
    assert is_run_dir(ours)
    refuse_foreign_dir(tmp_path / "new")  # absent: fine, and not created by the check
    assert not (tmp_path / "new").exists()


# ---- one process per run --------------------------------------------------------------------------

HOLD = """
import sys
from pathlib import Path
from xtm.run_dir import hold_run_dir, lock_dir
with hold_run_dir(Path(sys.argv[1]), "xtm-train"), lock_dir(Path(sys.argv[2]), "xtm-train"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_process_on_a_held_run_is_refused_naming_the_holder(example_dir: Path, tmp_path: Path) -> None:
    from xtm.run_dir import hold_run_dir

    run, shards = tmp_path / "run", tmp_path / "shards"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run), str(shards)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        busy = f"{run} is in use by xtm-train (pid {holder.pid})"
        p = cli(example_args(example_dir, run, "--epochs", "2", "--resume"))
        assert p.returncode == 2 and busy in p.stderr and "Traceback" not in p.stderr, p.stderr
        # Shards another run is building or reading are not rebuilt under it either.
        p = cli(example_args(example_dir, tmp_path / "other", "--out-of-core", "--shard-dir", str(shards)))
        assert p.returncode == 2 and f"{shards} is in use by xtm-train (pid {holder.pid})" in p.stderr, p.stderr
        c = subprocess.run([sys.executable, "-m", "xtm.cli.contextual", str(run), "-q"], capture_output=True,
                           text=True, env=ENV, timeout=300)
        assert c.returncode == 2 and busy in c.stderr, c.stderr
        assert sorted(p.name for p in run.iterdir()) == [".xtm.lock", "run.json"]  # nothing else was written
    finally:
        holder.kill()  # kill -9: the kernel releases the lock; a dead holder never blocks the run
        holder.wait()
    with hold_run_dir(run, "xtm-train"):
        assert json.loads((run / ".xtm.lock").read_text())["pid"] == os.getpid()


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    from xtm.run_dir import hold_run_dir

    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"xtm_run": 1}')
    (run / ".xtm.lock").symlink_to(precious)
    with pytest.raises(XtmError, match="cannot write to the run directory"), hold_run_dir(run, "xtm-train"):
        pass
    assert precious.read_text() == "keep me"


def test_a_run_stopped_while_loading_exits_143_and_is_still_recognisably_ours(example_dir: Path,
                                                                              tmp_path: Path) -> None:
    from xtm.run_dir import is_run_dir

    out = tmp_path / "run"
    proc = subprocess.Popen(TRAIN + example_args(example_dir, out, "--epochs", "1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 120
    while not (out / "run.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)  # while the corpus loads: the marker is the first file written
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "Traceback" not in stderr, stderr
    assert is_run_dir(out) and not (out / "checkpoints").exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


# ---- signals: checkpoint, truthful exit code, exact resume -----------------------------------------

@pytest.fixture(scope="module")
def straight(example_corpus, tmp_path_factory: pytest.TempPathFactory):
    """An uninterrupted run of config(): what every interrupted and resumed run must equal."""
    d = tmp_path_factory.mktemp("straight")
    return train_backbone(example_corpus, config(), d), d


@pytest.mark.parametrize("signals", [(signal.SIGINT,), (signal.SIGTERM,), (signal.SIGHUP,),
                                     (signal.SIGINT, signal.SIGINT)], ids=["int", "term", "hup", "int-twice"])
def test_a_signal_mid_epoch_saves_where_it_stopped_and_resume_is_bit_identical(
        example_corpus, straight, tmp_path: Path, signals: tuple[int, ...]) -> None:
    straight, straight_dir = straight
    run = tmp_path / "run"
    stopped = train_backbone(example_corpus, config(), run, data=SignalAt(example_corpus, 2, 2, signals))
    ckpt = load_checkpoint(run)
    if signals == (signal.SIGINT,):  # the stopped epoch's batches are only the same with the same batch size
        shutil.copytree(run, tmp_path / "copy")
        with pytest.raises(XtmError, match="stopped inside epoch 2 with --batch-size 100"):
            train_backbone(example_corpus, config(batch_size=50), tmp_path / "copy", resume=True)
    resumed = train_backbone(example_corpus, config(), run, resume=True)
    assert_same_model(straight.model, resumed.model)
    assert_same_training_state(load_checkpoint(straight_dir).path, load_checkpoint(run).path)
    assert not resumed.interrupted and resumed.epochs_done == 3
    assert stopped.interrupted and stopped.signal == signals[0] and stopped.epochs_done == 1
    assert stopped.stopped_at["epoch"] == 2 and stopped.stopped_at["step"] == 2
    assert ckpt.path.name == "epoch-000001-step-000002" and ckpt.state["partial"]["steps_done"] == 2
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in resumed.history] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in straight.history]


def test_infoctm_reusing_its_tami_gradient_resumes_bit_identical_from_a_reuse_step(example_corpus,
                                                                                 tmp_path: Path) -> None:
    # The reused gradient is training state: a run stopped between two refreshes must carry it over.
    cfg = config(model="infoctm", epochs=2, hparams={"tami_every": 3})
    straight = train_backbone(example_corpus, cfg, tmp_path / "straight")
    run = tmp_path / "run"
    train_backbone(example_corpus, cfg, run, data=SignalAt(example_corpus, 2, 2, (signal.SIGTERM,)))
    stopped = load_file(str(load_checkpoint(run).path / "model.safetensors"))
    assert int(stopped["tami_cache_step"]) % 3 != 0  # the resumed run's first step reuses the cache
    shutil.copytree(run, tmp_path / "forgetful")
    resumed = train_backbone(example_corpus, cfg, run, resume=True)
    assert_same_model(straight.model, resumed.model)
    assert_same_training_state(load_checkpoint(tmp_path / "straight").path, load_checkpoint(run).path)
    # Without the cache (as if it were not saved) the resumed run recomputes there and ends elsewhere.
    ckpt_dir = load_checkpoint(tmp_path / "forgetful").path
    saved = ckpt_dir / "model.safetensors"
    save_file({k: v for k, v in load_file(str(saved)).items() if not k.startswith("tami_cache")}, str(saved))
    state = json.loads((ckpt_dir / "state.json").read_text())  # a consistent checkpoint, not a damaged one
    data = saved.read_bytes()
    state["files"]["model.safetensors"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ckpt_dir / "state.json").write_text(json.dumps(state))
    forgetful = train_backbone(example_corpus, cfg, tmp_path / "forgetful", resume=True)
    assert not torch.equal(forgetful.model.phi[0], straight.model.phi[0])


def test_a_signal_while_the_final_checkpoint_is_written_waits_for_it_and_is_not_lost(
        example_corpus, straight, tmp_path: Path) -> None:
    # The third pass is the final checkpoint's: the periodic checkpoints of epochs 1 and 2 are recalibrated too.
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C takes effect once the checkpoint is written
        train_backbone(example_corpus, config(), tmp_path, data=SignalInRecalibration(example_corpus, 3))
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.epoch == 3 and ckpt.state["partial"] is None
    assert_same_training_state(load_checkpoint(straight[1]).path, ckpt.path)


def test_a_signal_while_a_periodic_checkpoint_is_recalibrated_stops_there_and_resumes_exactly(
        example_corpus, straight, tmp_path: Path) -> None:
    """Periodic checkpoints are recalibrated too (the longest part of writing one on a large corpus): a
    Ctrl-C there stops at that epoch boundary, and the resumed run is the uninterrupted one, bit for bit."""
    stopped = train_backbone(example_corpus, config(), tmp_path, data=SignalInRecalibration(example_corpus, 1))
    assert stopped.interrupted and stopped.signal == signal.SIGINT and stopped.epochs_done == 1
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.epoch == 1 and ckpt.state["partial"] is None
    assert not train_backbone(example_corpus, config(), tmp_path, resume=True).interrupted
    assert_same_training_state(load_checkpoint(straight[1]).path, load_checkpoint(tmp_path).path)


def test_continuing_a_finished_run_with_dropout_equals_the_longer_run(example_corpus, tmp_path: Path) -> None:
    # The final checkpoint's batch norm is recalibrated with a forward pass, which draws dropout
    # masks: the RNG state saved for training must be the one from before it.
    cfg = {"hparams": {"dropout": 0.3}, "checkpoint_every": 0}
    longer = train_backbone(example_corpus, config(epochs=3, **cfg), tmp_path / "a")
    train_backbone(example_corpus, config(epochs=2, **cfg), tmp_path / "b")
    assert_same_model(longer.model, train_backbone(example_corpus, config(epochs=3, **cfg), tmp_path / "b",
                                                   resume=True).model)


def test_out_of_core_batches_resume_exactly_inside_an_epoch(example_dir: Path, tmp_path: Path) -> None:
    from xtm.trainer.data.sharding import ShardedCorpus, build_shards

    shards = ShardedCorpus(build_shards(example_dir / "docs.jsonl", tmp_path / "shards", shard_size=100,
                                        progress=False))
    corpus = shards.eval_corpus(dict_path=example_dir / "dict.tsv")

    class ShardSignal(SignalAt):
        def __init__(self) -> None:
            super().__init__(corpus, 2, 1, (signal.SIGTERM,))
            self.inner = shards.batches()
            self.sizes, self.fingerprint, self.sequential = (self.inner.sizes, self.inner.fingerprint,
                                                             self.inner.sequential)

    cfg = config(batch_size=40, epochs=2)
    straight = train_backbone(corpus, cfg, tmp_path / "a", data=shards.batches())
    assert train_backbone(corpus, cfg, tmp_path / "b", data=ShardSignal()).stopped_at["step"] == 1
    resumed = train_backbone(corpus, cfg, tmp_path / "b", resume=True, data=shards.batches())
    assert_same_model(straight.model, resumed.model)


def test_phase2_interrupted_after_a_refinement_does_not_refine_again_and_resumes_exactly(
        example_corpus, tmp_path: Path) -> None:
    from xtm.config import Phase2Config
    from xtm.models_zoo.base import BuildContext
    from xtm.models_zoo.encoders import load_encoder
    from xtm.trainer.phase2.objective import Phase2Objective

    class SharedEncoder(Phase2Objective):
        """Phase 2 as it is, with one encoder loaded for the three runs here (it is stateless)."""

        shared = None

        @property
        def encoder(self):
            if SharedEncoder.shared is None:
                SharedEncoder.shared = load_encoder(self.cfg.encoder)
            return SharedEncoder.shared

    ctx = BuildContext(cache_dir=Path(os.environ["XTM_CACHE_DIR"]), seed=2)
    cfg = config(epochs=1, phase2_epochs=2, seed=2, checkpoint_every=0)

    def objective() -> Phase2Objective:
        return SharedEncoder(example_corpus, 6, Phase2Config(epochs=2, refine_every=1, rounds=2, doc_align=False),
                             ctx, torch.device("cpu"))

    straight = train_backbone(example_corpus, cfg, tmp_path / "a", phase2=objective())
    # Stopped inside epoch 2, the first of phase 2, after its refinement and 1 step.
    first = objective()
    assert train_backbone(example_corpus, cfg, tmp_path / "b", phase2=first,
                          data=SignalAt(example_corpus, 2, 1, (signal.SIGINT,))).stopped_at["step"] == 1
    assert [s["epoch"] for s in first.steps] == [2]
    again = objective()
    resumed = train_backbone(example_corpus, cfg, tmp_path / "b", resume=True, phase2=again)
    assert [s["epoch"] for s in again.steps] == [2, 3]  # epoch 2 was not refined a second time
    assert_same_model(straight.model, resumed.model)


def test_the_first_signal_during_a_refinement_ends_it_at_once_and_the_resumed_run_redoes_it_exactly(
        example_corpus, tmp_path: Path) -> None:
    """An LLM refinement can take minutes: the first Ctrl-C ends it at once (elsewhere the first one waits for the
    step), the checkpoint holds phase 2 as it was before the refinement, and --resume refines that epoch again."""
    import threading

    from xtm.config import Phase2Config
    from xtm.interruptible import interruptible
    from xtm.models_zoo.base import BuildContext
    from xtm.trainer.phase2.objective import Phase2Objective

    release = threading.Event()

    class SlowToAnswer(Phase2Objective):
        """Phase 2 whose refinement first waits as on an LLM server (outside Python), stopped by a SIGINT."""

        def refine(self, model, epoch):
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()
            interruptible(release.wait, 60)
            return super().refine(model, epoch)

    ctx = BuildContext(cache_dir=Path(os.environ["XTM_CACHE_DIR"]), seed=2)
    cfg = config(epochs=1, phase2_epochs=2, seed=2, checkpoint_every=0)
    p2 = Phase2Config(epochs=2, refine_every=1, rounds=2, doc_align=False)
    straight = train_backbone(example_corpus, cfg, tmp_path / "a",
                              phase2=Phase2Objective(example_corpus, 6, p2, ctx, torch.device("cpu")))
    slow = SlowToAnswer(example_corpus, 6, p2, ctx, torch.device("cpu"))
    t0 = time.monotonic()
    try:
        stopped = train_backbone(example_corpus, cfg, tmp_path / "b", phase2=slow)
    finally:
        release.set()
    assert time.monotonic() - t0 < 45 and stopped.interrupted and stopped.epochs_done == 1 and slow.steps == []
    again = Phase2Objective(example_corpus, 6, p2, ctx, torch.device("cpu"))
    resumed = train_backbone(example_corpus, cfg, tmp_path / "b", resume=True, phase2=again)
    assert [s["epoch"] for s in again.steps] == [2, 3]  # epoch 2 refined by the resumed run
    assert_same_model(straight.model, resumed.model)


CLI_RUN = ["--epochs", "4", "--batch-size", "8", "--checkpoint-every", "2", "--threads", "1"]


def one_thread_config(**kw) -> TrainConfig:
    """What `xtm-train ... CLI_RUN` trains, in this process."""
    return TrainConfig(model="nmtm", num_topics=6, epochs=4, batch_size=8, seed=0, checkpoint_every=2, threads=1,
                       progress=False, **kw)


@pytest.fixture(scope="module")
def straight_one_thread(example_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `xtm-train ... CLI_RUN` trains uninterrupted, with one torch thread as the command uses
    (bit-identical results need the same kernels); the thread count is restored after."""
    d = tmp_path_factory.mktemp("straight-cli")
    before = torch.get_num_threads()
    try:
        train_backbone(example_corpus, one_thread_config(), d)
    finally:
        torch.set_num_threads(before)
    return d


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["int", "term"])
def test_xtm_train_signalled_exits_128_plus_n_and_resume_equals_the_uninterrupted_run(
        example_dir: Path, example_corpus, straight_one_thread: Path, tmp_path: Path, signum: int) -> None:
    out = tmp_path / "run"
    args = example_args(example_dir, out, *CLI_RUN)
    proc = subprocess.Popen(TRAIN + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "epoch-000002").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)  # inside epoch 3 (of 60 steps), wherever exactly
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, stderr
    assert stdout == "" and "continue with --resume" in stderr and "Traceback" not in stderr
    assert json.loads((out / "metrics.json").read_text())["interrupted"] is True
    before = torch.get_num_threads()
    try:  # resumed here (xtm-train --resume is the same call; test_cli_train runs it as a command)
        train_backbone(example_corpus, one_thread_config(), out, resume=True)
    finally:
        torch.set_num_threads(before)
    assert_same_training_state(load_checkpoint(straight_one_thread).path, load_checkpoint(out).path)


# ---- damaged checkpoints ---------------------------------------------------------------------------

def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_last_byte(f: Path) -> None:
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # inside the tensor data: the safetensors header still parses
    f.write_bytes(bytes(data))


DAMAGE = {
    "truncated model": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors is damaged"),
    "empty state": (lambda d: (d / "state.json").write_text(""), "state.json is empty"),
    "garbage state": (lambda d: (d / "state.json").write_text("{\"format\": 1, \"epo"), "state.json is not valid"),
    "state not an object": (lambda d: (d / "state.json").write_text("[]"), "does not hold a JSON object"),
    "flipped byte": (lambda d: _flip_last_byte(d / "optimizer.safetensors"), "checksum mismatch"),
    "missing dir": (lambda d: shutil.rmtree(d), "latest.json points to epoch-000002, which does not exist"),
}


@pytest.fixture(scope="module")
def two_checkpoints(example_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("two-checkpoints")
    train_backbone(example_corpus, config(epochs=2), d)
    return d


@pytest.mark.usefixtures("train_stderr")
@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
        two_checkpoints: Path, tmp_path: Path, capsys, damage: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    spoil, message = DAMAGE[damage]
    spoil(run / "checkpoints" / "epoch-000002")
    capsys.readouterr()
    ckpt = load_checkpoint(run)
    assert ckpt.epoch == 1
    assert_same_training_state(ckpt.path, two_checkpoints / "checkpoints" / "epoch-000001")
    err = capsys.readouterr().err
    assert "xtm-train: warning:" in err and message in err and "epoch-000001" in err


@pytest.mark.usefixtures("train_stderr")
@pytest.mark.parametrize("pointer", ["{", "[" * 200_000 + "]" * 200_000, '{"dir": ' + "9" * 5000 + "}"])
def test_a_garbled_pointer_falls_back_to_the_newest_complete_checkpoint(two_checkpoints: Path, tmp_path: Path,
                                                                        capsys, pointer: str) -> None:
    """Nesting deep enough to exhaust the parser and a number too long to parse were tracebacks before."""
    run = tmp_path / "run"
    shutil.copytree(two_checkpoints, run)
    (run / "checkpoints" / "latest.json").write_text(pointer)
    capsys.readouterr()
    assert load_checkpoint(run).path.name == "epoch-000002"
    assert "xtm-train: warning:" in (err := capsys.readouterr().err) and "latest.json is unreadable" in err


def test_no_usable_checkpoint_is_one_clean_error(two_checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(two_checkpoints, out)
    for d in (out / "checkpoints").glob("epoch-*"):
        _truncate(d / "model.safetensors")
    with pytest.raises(XtmError, match="no usable checkpoint: .*epoch-000002: model.safetensors is damaged.*"
                                       "epoch-000001: model.safetensors is damaged"):
        load_checkpoint(out)


# ---- bad input and settings ------------------------------------------------------------------------

HOSTILE_LINES = {
    "lone surrogate id": ('{"id": "\\ud800", "text": "the couture", "lang": "en"}', "field 'id'"),
    "lone surrogate text": ('{"text": "the \\udfff couture", "lang": "en"}', "field 'text'"),
    "lone surrogate label": ('{"text": "the couture", "lang": "en", "label": "\\ud800"}', "field 'label'"),
    "nested 1000 deep": ('{"text": "x", "meta": ' + "[" * 1000 + "]" * 1000 + "}", "invalid JSON: nested too deeply"),
    "5000-digit id": ('{"id": ' + "9" * 5000 + ', "text": "x"}', "invalid JSON"),
}


@pytest.mark.parametrize("case", list(HOSTILE_LINES))
def test_a_hostile_jsonl_line_is_that_lines_error(example_dir: Path, tmp_path: Path, case: str) -> None:
    from xtm.trainer.data.sharding import build_shards

    line, message = HOSTILE_LINES[case]
    lines = (example_dir / "docs.jsonl").read_text(encoding="utf-8").splitlines()
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(lines[:6] + [line] + lines[6:]) + "\n", encoding="utf-8")
    with pytest.raises(XtmError, match=message) as e:
        load_corpus(f, progress=False)
    assert str(e.value).startswith(f"{f}:7: ")
    with pytest.raises(XtmError, match=message):  # out of core: the same reader, the same error
        build_shards(f, tmp_path / "shards", progress=False)


def test_an_over_long_line_is_refused_unread(example_dir: Path, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A file without newlines (/dev/zero, a binary) was read whole: 900 MB resident for a 300 MB line,
    a MemoryError traceback for /dev/zero. Lines are read as xtm-infer reads them, at most MAX_LINE_BYTES."""
    import xtm.runtime.records as records
    from xtm.trainer.data.sharding import build_shards

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    lines = (example_dir / "docs.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    f = tmp_path / "docs.jsonl"
    f.write_text("\n".join(lines) + "\n" + "x" * 5000, encoding="utf-8")
    with pytest.raises(XtmError, match="line longer than 1,000 bytes") as e:
        load_corpus(f, progress=False)
    assert str(e.value).startswith(f"{f}:7: ")
    with pytest.raises(XtmError, match="line longer than 1,000 bytes"):
        build_shards(f, tmp_path / "shards", progress=False)


def test_hostile_lines_through_the_command_are_one_error_line(tmp_path: Path) -> None:
    f = tmp_path / "docs.jsonl"
    f.write_text('{"text": "hello world", "lang": "en"}\n{"text": ' + "[" * 1000 + "]" * 1000 + "}\n")
    p = cli(["--data", str(f), "--model", "nmtm", "--out", str(tmp_path / "r")])
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith(f"error: {f}:2: ")
    assert "Traceback" not in p.stderr


def test_a_refused_resume_leaves_the_runs_vocabularies_and_parity_samples_as_they_were(example_dir: Path,
                                                                                      tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert cli(example_args(example_dir, run, "--epochs", "1")).returncode == 0
    kept = {p.name: p.read_bytes() for p in sorted(run.glob("vocab_*.txt")) + sorted(run.glob("parity_sample_*"))}
    assert len(kept) == 4
    p = cli(example_args(example_dir, run, "--epochs", "2", "--resume", "--vocab-size", "20"))
    assert p.returncode == 2 and "--resume" in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert {name: (run / name).read_bytes() for name in kept} == kept  # the run still exports as trained
    p = cli(example_args(example_dir, run, "--epochs", "2", "--resume"))
    assert p.returncode == 0, p.stderr
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_an_out_of_core_resume_given_other_data_keeps_the_runs_shards(example_dir: Path, tmp_path: Path) -> None:
    """A typo in --data on a resume rebuilt the run's shards from the other file (hours of preprocessing on a real
    corpus) before the documents were refused; the next, correct resume rebuilt them again."""
    run = tmp_path / "run"
    assert cli(example_args(example_dir, run, "--epochs", "1", "--out-of-core", "--shard-size", "50")).returncode == 0
    index = run / "shards" / "index.json"
    before = (index.stat().st_ino, index.read_bytes())
    p = cli(_resume_on_shuffled_docs(example_dir, run, tmp_path))
    assert p.returncode == 2 and "the run's shards were built from other input files" in p.stderr, p.stderr
    assert (index.stat().st_ino, index.read_bytes()) == before  # kept, not rebuilt
    p = cli(example_args(example_dir, run, "--epochs", "2", "--resume"))
    assert p.returncode == 0 and "reusing the shards" in p.stderr, p.stderr


def test_a_finished_run_whose_checkpoints_were_removed_is_not_trained_over(example_dir: Path, tmp_path: Path) -> None:
    """Removing checkpoints/ to save disk let a new training into the same --out (or a --resume, which then started
    from scratch) replace the finished run's metrics, topics, report and config."""
    run = tmp_path / "run"
    assert cli(example_args(example_dir, run, "--epochs", "1")).returncode == 0
    shutil.rmtree(run / "checkpoints")
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".xtm.lock"}
    for extra in ((), ("--resume",)):
        p = cli(example_args(example_dir, run, "--epochs", "2", "--seed", "7", *extra))
        assert p.returncode == 2 and "holds a finished run's results and no checkpoint" in p.stderr, p.stderr
    assert {name: (run / name).read_bytes() for name in kept} == kept


def test_a_run_whose_marker_was_deleted_resumes_under_the_rules_its_config_records(example_dir: Path,
                                                                                   tmp_path: Path) -> None:
    """Without run.json a resume read the run as made under token rules 1 (kind regex for English), and recorded
    that in config.json, though the run was made under today's rules."""
    run = tmp_path / "run"
    assert cli(example_args(example_dir, run, "--epochs", "1")).returncode == 0
    tokenizers = json.loads((run / "config.json").read_text())["tokenizers"]
    (run / "run.json").unlink()
    p = cli(example_args(example_dir, run, "--epochs", "2", "--resume"))
    assert p.returncode == 0 and "token rules 1" not in p.stderr, p.stderr
    assert json.loads((run / "config.json").read_text())["tokenizers"] == tokenizers
    assert json.loads((run / "config.json").read_text())["data"]["token_rules"] == TOKEN_RULES


def _italian_english(tmp_path: Path) -> tuple[Path, Path]:
    """60 Italian and 60 English documents whose glue words are function words under stopwords-iso's Italian
    list (della, anni) but not under xtm's own lists, which were all there was before token rules 2."""
    topics = {"it": [["calcio", "squadra", "partita"], ["mercato", "banca", "prezzo"], ["telefono", "robot", "chip"]],
              "en": [["football", "team", "match"], ["market", "bank", "price"], ["phone", "robot", "chip"]]}
    glue = {"it": ["della", "anni", "sono"], "en": ["the", "of", "and"]}
    rows = [{"lang": x, "text": f"{topics[x][i % 3][i % 3]} {glue[x][i % 3]} {topics[x][i % 3][(i + 1) % 3]}",
             "label": str(i % 3)} for x in ("it", "en") for i in range(60)]
    docs, dct = tmp_path / "docs.jsonl", tmp_path / "dict.tsv"
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    dct.write_text("calcio\tfootball\nmercato\tmarket\ntelefono\tphone\n", encoding="utf-8")
    return docs, dct


def test_a_run_made_before_the_token_rules_resumes_and_refits_with_its_own_vocabulary(tmp_path: Path) -> None:
    # A run made before an upgrade changed how text becomes tokens (token rules 1: no stopwords-iso, kind regex)
    # is resumed, and its contextual corpus rebuilt, with its own rules: "the vocabulary built from this data
    # differs" blamed the data for xtm's change and left no way out.
    from xtm.run_dir import RUN_MARKER, RunDir, run_token_rules
    from xtm.trainer.contextual.fit import load_run_corpus

    docs, dct = _italian_english(tmp_path)
    cfg = TrainConfig(model="nmtm", num_topics=3, epochs=1, progress=False, seed=0)
    old = tmp_path / "old"
    run_training(DataConfig(path=str(docs), dict_path=str(dct), token_rules=1), cfg, old)
    marker = json.loads((old / RUN_MARKER).read_text())
    (old / RUN_MARKER).write_text(json.dumps({k: v for k, v in marker.items() if k != "token_rules"}))
    vocab = (old / "vocab_it.txt").read_text(encoding="utf-8")
    assert "della" in vocab.split() and run_token_rules(old) == 1
    m = run_training(DataConfig(path=str(docs), dict_path=str(dct)), replace(cfg, epochs=2), old, resume=True)
    assert (old / "vocab_it.txt").read_text(encoding="utf-8") == vocab
    assert m["corpus"]["preprocessing"]["token_rules"] == 1
    assert json.loads((old / "config.json").read_text())["tokenizers"]["it"]["kind"] == "regex"
    assert load_run_corpus(old, RunDir(old).load_config(), progress=False).lang("it").vocab == vocab.split()
    # A new run records its rules and reads with them.
    new = tmp_path / "new"
    run_training(DataConfig(path=str(docs), dict_path=str(dct)), cfg, new)
    assert run_token_rules(new) == TOKEN_RULES
    assert "della" not in (new / "vocab_it.txt").read_text(encoding="utf-8").split()
    # A run made before the marker existed (no run.json) is resumed under rules 1: the marker then written
    # records none (it recorded rules 2 and the resume failed for good).
    (old / RUN_MARKER).unlink()
    run_training(DataConfig(path=str(docs), dict_path=str(dct)), replace(cfg, epochs=3), old, resume=True)
    assert run_token_rules(old) == 1 and (old / "vocab_it.txt").read_text(encoding="utf-8") == vocab
    # A marker that is a link, or not xtm's object, is refused before a new training, not written through.
    other = tmp_path / "other"
    other.mkdir()
    (other / RUN_MARKER).symlink_to(old / RUN_MARKER)
    (other / "config.json").write_text(json.dumps({"xtm_version": "0.1.0"}))
    before = (old / RUN_MARKER).read_text()
    with pytest.raises(XtmError, match="holds a finished run's results"):  # (that config.json's, refused first)
        run_training(DataConfig(path=str(docs), dict_path=str(dct)), cfg, other)
    (other / "config.json").unlink()  # the linked marker alone: refused on it
    with pytest.raises(XtmError, match="is not xtm's run marker"):
        run_training(DataConfig(path=str(docs), dict_path=str(dct)), cfg, other)
    assert (old / RUN_MARKER).read_text() == before
    # Rules this xtm does not know, given or recorded, are refused by name.
    unknown = TOKEN_RULES + 1
    with pytest.raises(XtmError, match=f"token_rules must be a whole number from 1 to {TOKEN_RULES}, got {unknown}"):
        run_training(DataConfig(path=str(docs), dict_path=str(dct), token_rules=unknown), cfg,
                     tmp_path / "next")
    # A run from a newer xtm (rules it does not know) is refused, not read with other rules.
    marker = json.loads((new / RUN_MARKER).read_text())
    (new / RUN_MARKER).write_text(json.dumps({**marker, "token_rules": 99}))
    with pytest.raises(XtmError, match=f"records token rules 99; this xtm knows 1 to {TOKEN_RULES}"):
        run_training(DataConfig(path=str(docs), dict_path=str(dct)), replace(cfg, epochs=2), new, resume=True)


def test_a_diverging_run_stops_with_one_error_and_saves_nothing(example_dir: Path, tmp_path: Path) -> None:
    """--lr 1e30 (or a --set value that makes the loss NaN) trained a model of NaNs, saved it, and ended
    in a LinearSVC traceback, or exited 0 and exported it. NaN and infinite options are refused first."""
    run = tmp_path / "run"
    p = cli(example_args(example_dir, run, "--epochs", "2", "--lr", "1e30"))
    assert p.returncode == 2 and "error: training diverged: the loss is nan" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and not (run / "checkpoints").exists() and not (run / "metrics.json").exists()
    for bad in (["--lr", "nan"], ["--topic-lr-scale", "inf"], ["--seed", "-1"], ["--set", "hidden=abc"],
                ["--set", "dropout=NaN"]):
        p = cli(example_args(example_dir, tmp_path / "other", "--epochs", "1", *bad))
        assert p.returncode == 2 and "Traceback" not in p.stderr and bad[-1].split("=")[0] in p.stderr, p.stderr


def test_a_run_stopped_right_after_a_diverging_step_saves_no_checkpoint(example_corpus, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The stopping checkpoint (a signal inside an epoch) is checked too: a step that made the parameters
    infinite, then Ctrl-C, saved them, and evaluating the run was a LinearSVC traceback. (Under torchrun a
    NaN step is not stopped at once, so a preemption before the epoch's end is this case.)"""
    step = torch.optim.Adam.step
    calls = []

    def step_then_ctrl_c(self, *a, **kw):
        out = step(self, *a, **kw)
        if not calls:
            calls.append(1)
            signal.raise_signal(signal.SIGINT)  # arrives between two steps, as a Ctrl-C would
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_ctrl_c)
    run = tmp_path / "run"
    with pytest.raises(XtmError, match=r"training diverged: parameter .* in epoch 1 \(stopped after step 1\)"):
        train_backbone(example_corpus, config(epochs=2, lr=1e39, batch_size=5), run)
    assert calls and not (run / "checkpoints").exists()


def test_more_topics_than_words_is_refused_before_training(example_dir: Path, tmp_path: Path) -> None:
    data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"), vocab_size=40)
    with pytest.raises(XtmError, match=r"--topics 50 is larger than the vocabulary \('en' has 40, 'zh' has 40 words"):
        run_training(data, config(num_topics=50), tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_an_unwritable_out_is_one_clean_error(example_dir: Path, tmp_path: Path) -> None:
    p = cli(example_args(example_dir, Path("/proc/xtm-run"), "--epochs", "1"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().startswith("error: /proc/xtm-run: cannot write to the run directory"), p.stderr
    (tmp_path / "file").write_text("x")
    data = DataConfig(path=str(example_dir / "docs.jsonl"))
    with pytest.raises(XtmError, match="cannot write to the run directory: Not a directory"):
        run_training(data, config(), tmp_path / "file" / "run")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_out_is_one_clean_error(example_dir: Path, tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        p = cli(example_args(example_dir, ro, "--epochs", "1"))
    finally:
        ro.chmod(0o755)
    assert p.returncode == 2 and "Traceback" not in p.stderr and "Permission denied" in p.stderr


def test_a_cosine_learning_rate_resumes_on_its_curve_and_refuses_to_change(example_corpus, tmp_path: Path) -> None:
    """--lr-schedule cosine: the rate is a function of the position, so a run stopped mid-epoch continues
    bit-identically; resuming with another schedule or another --epochs (the curve's end) is refused by name."""
    cfg = config(epochs=3, lr_schedule="cosine")
    straight = train_backbone(example_corpus, cfg, tmp_path / "straight")
    run = tmp_path / "run"
    train_backbone(example_corpus, cfg, run, data=SignalAt(example_corpus, 2, 1, (signal.SIGTERM,)))
    for name in ("schedule", "longer"):
        shutil.copytree(run, tmp_path / name)
    resumed = train_backbone(example_corpus, cfg, run, resume=True)
    assert_same_model(straight.model, resumed.model)
    assert_same_training_state(load_checkpoint(tmp_path / "straight").path, load_checkpoint(run).path)
    with pytest.raises(XtmError, match="trained with --lr-schedule cosine, this run asks for constant: resume with "
                                       "--lr-schedule cosine"):
        train_backbone(example_corpus, config(epochs=3), tmp_path / "schedule", resume=True)
    with pytest.raises(XtmError, match="cosine learning rate ends at epoch 3, this run asks for --epochs 5"):
        train_backbone(example_corpus, config(epochs=5, lr_schedule="cosine"), tmp_path / "longer", resume=True)
    constant = train_backbone(example_corpus, config(epochs=3), tmp_path / "constant")
    assert not torch.equal(constant.model.phi[0], straight.model.phi[0])  # the schedule changed training
    with pytest.raises(XtmError, match="trained with --lr-schedule constant"):
        train_backbone(example_corpus, config(epochs=4, lr_schedule="cosine"), tmp_path / "constant", resume=True)


def test_a_fading_mutual_information_weight_resumes_on_its_schedule_and_refuses_other_epochs(
        example_corpus, tmp_path: Path) -> None:
    """InfoCTM with --set mi_decay_from: TAMI's weight is a function of the position in phase 1, so a run
    stopped mid-epoch continues bit-identically, a longer --epochs (which would move the schedule) is refused
    by name, and a constant weight (the default) can be extended as before."""
    fading = {"mi_decay_from": 0.4}
    cfg = config(model="infoctm", epochs=3, hparams=fading)
    straight = train_backbone(example_corpus, cfg, tmp_path / "straight")
    assert straight.history[-1]["tami"] < straight.history[0]["tami"] / 3  # faded (epoch 3: factor 0.55 -> 0)
    run = tmp_path / "run"
    train_backbone(example_corpus, cfg, run, data=SignalAt(example_corpus, 2, 1, (signal.SIGTERM,)))
    shutil.copytree(run, tmp_path / "longer")
    resumed = train_backbone(example_corpus, cfg, run, resume=True)
    assert_same_model(straight.model, resumed.model)
    with pytest.raises(XtmError, match="infoctm loss weights follow a schedule that ends at epoch 3, this run asks "
                                       "for --epochs 5: resume with --epochs 3"):
        train_backbone(example_corpus, config(model="infoctm", epochs=5, hparams=fading), tmp_path / "longer",
                       resume=True)
    train_backbone(example_corpus, config(model="infoctm", epochs=2), tmp_path / "constant")
    assert train_backbone(example_corpus, config(model="infoctm", epochs=3), tmp_path / "constant",
                          resume=True).epochs_done == 3


def test_a_language_whose_training_documents_share_one_label_trains_and_leaves_classification_out(
        example_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A corpus whose Chinese side is all one category: training used to run every epoch and then fail on
    classification with no metrics, topics or report, and every --resume failed the same way."""
    from xtm.trainer.run import run_training

    rows = [json.loads(line) for line in (example_dir / "docs.jsonl").read_text(encoding="utf-8").splitlines()]
    for r in rows:
        if r["lang"] == "zh":
            r["label"] = "tech"
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg = TrainConfig(model="nmtm", num_topics=4, epochs=1, progress=False, threads=1)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        metrics = run_training(DataConfig(path=str(data), dict_path=str(example_dir / "dict.tsv")), cfg,
                               tmp_path / "run")
    assert metrics["classification"] is None and metrics["classification_published"] is None
    assert "'zh': 1 class" in metrics["classification_note"]
    assert any("classification will be left out of the metrics" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "run" / "topics_zh.txt").is_file() and metrics["TU"] > 0
    # ... and the contextual route is fitted too, without that metric (it failed the same way, so did every refit)
    from xtm.config import ContextualConfig
    from xtm.trainer.contextual.fit import train_contextual

    route = train_contextual(tmp_path / "run", ContextualConfig(threads=1, epochs=2))
    assert "'zh': 1 class" in route["classification_note"] and "classification" not in route



def test_documents_that_differ_after_a_segmenter_change_say_so(example_dir: Path, tmp_path: Path) -> None:
    """A resume after a segmenter upgrade (the same files cut into other words) was refused as 'the training
    documents differ' without a word on why: the user looked for a file they never changed."""
    run = tmp_path / "run"
    assert cli(example_args(example_dir, run, "--epochs", "1", "--no-contextual")).returncode == 0
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    zh = config["tokenizers"]["zh"]
    assert zh.get("segmenter"), zh  # the release recorded
    zh["segmenter"] = "jieba 0.0.1"  # as if trained under another release; the documents below are cut otherwise
    (run / "config.json").write_text(json.dumps(config), encoding="utf-8")
    p = cli(_resume_on_shuffled_docs(example_dir, run, tmp_path))
    assert p.returncode == 2 and "the training documents differ" in p.stderr, p.stderr
    assert "perhaps because a segmenter changed since: 'zh' was tokenized with jieba 0.0.1" in p.stderr, p.stderr


def _resume_on_shuffled_docs(example_dir: Path, run: Path, tmp_path: Path) -> list[str]:
    """xtm-train arguments resuming `run` to 2 epochs on the example's documents in another order (other data)."""
    lines = (example_dir / "docs.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
    other = tmp_path / "shuffled.jsonl"
    other.write_text("".join(lines[1:] + lines[:1]), encoding="utf-8")
    args = example_args(example_dir, run, "--epochs", "2", "--resume")
    args[args.index("--data") + 1] = str(other)
    return args


def test_a_refused_resume_leaves_the_runs_contextual_choice_and_a_phase2_stop_is_reported(example_dir: Path,
                                                                                         tmp_path: Path) -> None:
    """A resume refused before training (another --lr-schedule) rewrote the run's recorded --no-contextual with its
    own --contextual, which the next plain --resume then fitted. A run stopped because phase 2's LLM answered nothing
    kept its previous report.html (or got none) with no word on why."""
    run = tmp_path / "run"
    assert cli(example_args(example_dir, run, "--epochs", "1", "--no-contextual")).returncode == 0
    recorded = json.loads((run / "config.json").read_text())["command"]
    args = [a for a in example_args(example_dir, run, "--epochs", "2", "--resume", "--lr-schedule", "cosine",
                                    "--contextual") if a != "--no-contextual"]
    p = cli(args)
    assert p.returncode == 2 and "--lr-schedule" in p.stderr, p.stderr  # refused by the checkpoint, in training
    assert json.loads((run / "config.json").read_text())["command"] == recorded
    p = cli(example_args(example_dir, run, "--epochs", "1", "--resume", "--phase2-epochs", "1", "--refiner", "openai",
                         "--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--llm-retries", "0"))
    assert p.returncode == 2 and "answered none of the" in p.stderr, p.stderr
    assert json.loads((run / "config.json").read_text())["command"] == recorded
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "training was interrupted: phase 2: openai:m answered none" in report


def test_a_thread_count_no_machine_has_is_refused(example_dir: Path, tmp_path: Path) -> None:
    """`--threads 1000000`: threads were created until the process table was full (a MemoryError traceback, a
    segmentation fault from a config.json resumed, and every other process on the machine unable to fork)."""
    args = ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--topics", "6", "--epochs", "1", "--no-contextual"]
    p = cli([*args, "--threads", "1000000", "--out", str(tmp_path / "run")])
    assert p.returncode == 2 and "--threads" in p.stderr and "1024" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "run").exists()
    p = cli([*args, "--threads", "1", "--out", str(tmp_path / "ok")])
    assert p.returncode == 0, p.stderr
    config = json.loads((tmp_path / "ok" / "config.json").read_text())
    config["train_config"]["threads"] = 1_000_000                  # edited by hand, then resumed
    (tmp_path / "ok" / "config.json").write_text(json.dumps(config))
    p = cli(["--out", str(tmp_path / "ok"), "--resume", "--epochs", "2"])
    assert p.returncode == 2 and "threads" in p.stderr and "Traceback" not in p.stderr, p.stderr

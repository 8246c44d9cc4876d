"""Phase-1 training loop: seeded, CPU/CUDA automatic, progress bar, checkpoints, resume.

One epoch = ceil(max_l N_l / batch_size) steps; every step draws one batch from EACH language
(shorter languages are re-shuffled and cycled), the way the NMTM/InfoCTM reference trainers do,
so both languages' encoders and the cross-lingual terms see every step. Batches are sliced from
CSR matrices and stay sparse (SparseRows): neither the corpus nor a batch is densified.
Batches come from a `BatchSource` (xtm.trainer.data.batches): the in-memory corpus, or shards streamed
from disk (xtm.trainer.data.sharding). Under torchrun each rank trains on its own steps of every
epoch and gradients are averaged (xtm.trainer.loop.distributed); rank 0 alone writes.
Beside it: stopping (the signal handler), model_passes (batch-norm recalibration, inference) and
phase2_resume (the phase-2 settings a resumed run may change).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from xtm.config import (
    LR_STEP_EPOCHS_DEFAULT,
    LR_STEP_GAMMA,
    TrainConfig,
    cli_value,
    lr_step_epochs,
)
from xtm.corpus import Corpus
from xtm.cpu import MAX_THREADS
from xtm.errors import XtmError
from xtm.models_zoo.base import BuildContext, CrossLingualTopicModel, load_unique_state_dict, unique_state_dict
from xtm.models_zoo.components import SparseRows
from xtm.models_zoo.registry import model_class
from xtm.paths import cache_dir
from xtm.run_dir import RunDir, has_checkpoint
from xtm.trainer.data.batches import BatchSource, InMemoryBatches, data_differences, steps_per_epoch
from xtm.trainer.loop import distributed
from xtm.trainer.loop.checkpoint import (
    Checkpoint,
    load_checkpoint,
    numpy_rng_from_state,
    numpy_rng_state,
    restore_optimizer,
    save_checkpoint,
    train_buffers,
)
from xtm.trainer.loop.distributed import DistContext
from xtm.trainer.loop.model_passes import recalibrate_batchnorm, warn_near_collapse
from xtm.trainer.loop.phase2_resume import phase2_differences
from xtm.trainer.loop.stopping import StopFlag
from xtm.trainer.loop.torch_setup import seed_everything, torch_threads, training_device
from xtm.trainer.phase2.objective import NoRefinementAnswerError, Phase2Objective

__all__ = ["TrainResult", "train_backbone"]

logger = logging.getLogger(__name__)


def _segmenter_changes(run_dir: Path) -> str:
    """Why the same files can give other training documents: a segmenter upgraded since the run recorded its
    releases (config.json "tokenizers"), which cuts the same text into other words. Said with the refusal, which
    otherwise sent a user looking for a file they never changed."""
    from xtm.runtime.tokenize import segmenter_drift

    try:
        tokenizers = RunDir(run_dir).load_config().get("tokenizers")
    except (XtmError, OSError):
        return ""
    notes = [note for t in (tokenizers.values() if isinstance(tokenizers, dict) else ())
             if isinstance(t, dict) and (note := segmenter_drift(t)) is not None]
    return "; perhaps because a segmenter changed since: " + "; ".join(notes) if notes else ""


@dataclass
class TrainResult:
    model: CrossLingualTopicModel
    epochs_done: int
    seconds_per_epoch: float
    history: list[dict[str, float]]
    interrupted: bool = False
    # sha256 of each rank's final model state (distributed runs; all equal), else None.
    rank_digests: list[str] | None = None
    # Interrupted runs: the signal that stopped training (SIGINT for a KeyboardInterrupt), and
    # where: {"epoch", "step", "steps_per_epoch", "signal"} (the checkpoint resumes there).
    signal: int | None = None
    stopped_at: dict[str, Any] | None = None
    # Stopped for a reason other than a signal (phase 2's LLM answered nothing): raised once the run is recorded.
    failure: XtmError | None = None


def _collapse_point(value: Any) -> dict[str, tuple[float, float]]:
    """An evaluation point's "near_collapse" ({lang: [variance, eps]}, xtm.trainer.run), or {} for anything else
    (a callback of the user's may return any dict)."""
    if not isinstance(value, dict):
        return {}
    return {lang: (float(v[0]), float(v[1])) for lang, v in value.items()
            if isinstance(lang, str) and isinstance(v, (list, tuple)) and len(v) == 2
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)}


def links_digest(corpus: Corpus) -> str:
    """SHA-256 of the corpus's cross-lingual word links (which word of which language links to which): what a
    resumed run must have been trained with."""
    h = hashlib.sha256()
    for (a, b), m in sorted(corpus.links.items()):
        c = sp.csr_matrix(m, dtype=np.float32)
        c.sum_duplicates()
        c.sort_indices()
        h.update(f"{a}>{b}:{c.shape}:".encode())
        h.update(np.ascontiguousarray(c.indptr, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(c.indices, dtype=np.int64).tobytes())
    return h.hexdigest()


def make_optimizer(model: torch.nn.Module, lr: float, topic_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """Adam over the trainable parameters; the topic-word weights phi at topic_lr_scale x lr.

    Each group records its multiplier ("lr_scale") so a later change of the base rate (phase 2)
    keeps the ratio. With a scale of 1 there is one group, as before (old checkpoints resume).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": params, "lr_scale": 1.0}]
    if topic_lr_scale != 1.0:
        topic = {id(p) for name, p in model.named_parameters() if name.split(".")[0] == "phi"}
        groups = [{"params": [p for p in params if id(p) not in topic], "lr_scale": 1.0},
                  {"params": [p for p in params if id(p) in topic], "lr_scale": float(topic_lr_scale)}]
    for group in groups:
        group["lr"] = lr * group["lr_scale"]
    # The fused kernel is ~20% faster per step on CPU and exact; fall back where unsupported.
    try:
        return torch.optim.Adam(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(groups, lr=lr)


def lr_factor(schedule: str, step: int, total_steps: int, steps_per_epoch: int = 1,
              step_epochs: int = LR_STEP_EPOCHS_DEFAULT) -> float:
    """Multiplier of the phase-1 learning rate at 0-based global step `step` of `total_steps`.

    constant: 1. cosine: a half cosine from 1 at the first step towards 0 after the last, a function
    of the position only, so a resumed run continues on the same curve. step: torch's StepLR as the
    authors' code steps it once an epoch: LR_STEP_GAMMA ** (0-based epoch // step_epochs), so epochs
    1..step_epochs run at the full rate; it does not depend on --epochs, so such a run may be extended.
    """
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return LR_STEP_GAMMA ** ((step // max(steps_per_epoch, 1)) // step_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))


def phase2_step_factor(cfg: TrainConfig, epoch: int) -> float:
    """Multiplier of phase 2's rate at 1-based epoch `epoch` (after cfg.epochs of phase 1).

    1 unless --lr-schedule step: then, as in the authors' code, the phase-2 reset to lr_scale x --lr
    is followed by StepLR's halvings at the epoch boundaries the run crosses after it (their
    InfoCTM: phase 2 from epoch 480, halved after epoch 500). A function of the epoch, so resuming
    inside phase 2 gives the same rate.
    """
    if cfg.lr_schedule != "step":
        return 1.0
    every = lr_step_epochs(cfg.model)
    return LR_STEP_GAMMA ** ((epoch - 1) // every - cfg.epochs // every)


def build_model(corpus: Corpus, cfg: TrainConfig) -> CrossLingualTopicModel:
    cls = model_class(cfg.model)
    context = BuildContext(cache_dir=Path(cfg.cache_dir) if cfg.cache_dir else cache_dir(),
                           seed=cfg.seed, progress=cfg.progress)
    return cls.from_corpus(corpus, cfg.num_topics, context, **cfg.hparams)


@dataclass
class EpochProgress:
    """How far training got inside one epoch: enough to finish it exactly as if never stopped.

    An epoch's batch order is drawn from the numpy generator when the epoch starts, so its state
    then (`rng_start`) and the steps done let a resumed run redraw the same order and skip the
    steps already taken; loss totals and seconds carry over, so history.json is the same too.
    """

    epoch: int
    rng_start: dict[str, Any]
    phase: int = 1
    batch_size: int = 0  # the steps' size and the number of ranks sharing them: a resumed epoch
    world: int = 1       # must cut it the same way to skip the same documents
    steps_done: int = 0
    totals: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    refined: bool = False  # phase 2: this epoch's refinement has happened (never redone on resume)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, path: Path) -> EpochProgress:
        try:
            p = cls(epoch=int(d["epoch"]), rng_start=dict(d["rng_start"]), phase=int(d["phase"]),
                    batch_size=int(d["batch_size"]), world=int(d["world"]),
                    steps_done=int(d["steps_done"]), totals={str(k): float(v) for k, v in d["totals"].items()},
                    seconds=float(d["seconds"]), refined=bool(d["refined"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise XtmError(f"--resume: the checkpoint's partial-epoch state is damaged ({e!r})", path=path) from None
        if p.steps_done < 0 or p.epoch < 1:
            raise XtmError("--resume: the checkpoint's partial-epoch state is damaged", path=path)
        return p


@dataclass
class _Stopped:
    """Where training stopped early: inside `progress` (None: at an epoch boundary), by which signal."""

    progress: EpochProgress | None
    signum: int
    forced: bool
    failure: XtmError | None = None  # a stop for a reason other than a signal (NoRefinementAnswerError)


def train_backbone(corpus: Corpus, cfg: TrainConfig, run_dir: Path, resume: bool = False,
                   on_epoch_end: Callable[[int, CrossLingualTopicModel], dict[str, Any] | None] | None = None,
                   phase2: Phase2Objective | None = None, data: BatchSource | None = None,
                   dist: DistContext | None = None, on_start: Callable[[], None] | None = None) -> TrainResult:
    """Train a backbone on `corpus`, checkpointing under run_dir; resume from its last checkpoint.

    With `phase2`, epochs cfg.epochs + 1 ... cfg.epochs + cfg.phase2_epochs add its losses and
    refine topics on its schedule; a finished phase-1 run resumed with phase 2 continues there.
    `data` supplies the training batches (default: the corpus's own CSR matrices); the model is
    built from `corpus` (vocabularies, links, word counts). With `dist` (torchrun), this process
    is one rank: it trains on its share of every epoch and only rank 0 writes checkpoints.

    `on_epoch_end(epoch, model)` may return a dict: it is kept as that epoch's "eval" in the history
    (periodic evaluation, `--eval-every`); it must not change the model or consume the training RNGs.
    `on_start()` runs on rank 0 once the run is ready to train (a resume's checkpoint accepted), before the
    first epoch: what is recorded then describes this training, never one that was refused.

    SIGINT, SIGTERM or SIGHUP (or a KeyboardInterrupt from `on_epoch_end`) stop training after the
    current step; the checkpoint then records the position inside the epoch, and a resumed run
    ends bit for bit where the uninterrupted one would (TrainResult.interrupted, .signal).
    """
    with torch_threads(cfg.threads, training_device(cfg.device, dist), resume_dir=Path(run_dir) if resume else None):
        return _Training(corpus, cfg, Path(run_dir), on_epoch_end, phase2, data, dist).run(resume, on_start)


class _Training:
    """One call of `train_backbone`: the model, its optimizer, the data order, and where training stands."""

    def __init__(self, corpus: Corpus, cfg: TrainConfig, run_dir: Path,
                 on_epoch_end: Callable[[int, CrossLingualTopicModel], dict[str, Any] | None] | None,
                 phase2: Phase2Objective | None, data: BatchSource | None, dist: DistContext | None) -> None:
        self.cfg, self.run_dir, self.on_epoch_end, self.phase2, self.dist = cfg, run_dir, on_epoch_end, phase2, dist
        self.total_epochs = cfg.epochs + (cfg.phase2_epochs if phase2 is not None else 0)
        self.device = training_device(cfg.device, dist)
        self.rank, self.world = (dist.rank, dist.world) if dist is not None else (0, 1)
        self.main = self.rank == 0
        self.data = data if data is not None else InMemoryBatches(corpus)
        self.rng = seed_everything(cfg.seed, self.device)
        self.model = build_model(corpus, cfg)
        self.optimizer = make_optimizer(self.model, cfg.lr, cfg.topic_lr_scale)
        self.fingerprint = self.data.fingerprint()
        self.links = links_digest(corpus)
        self.done = 0                                   # completed epochs
        self.history: list[dict[str, float]] = []
        self.seconds: list[float] = []
        self.partial: EpochProgress | None = None       # resumed inside this epoch
        self.own_words: dict[str, list[list[str]]] | None = None  # phase 2: own top words at the last refinement
        self._rollback: tuple[dict[str, Any], Any] | None = None  # phase 2 state before an unfinished refinement
        self._step_rng: tuple[torch.Tensor, torch.Tensor | None] | None = None  # RNG before an unfinished step
        self._history_warned = False
        # about one language's near-collapse, at the first --eval-every point or periodic checkpoint that shows it
        self._collapse_warned = False

    # ---- resume ------------------------------------------------------------------------------
    def resume(self) -> None:
        cfg = self.cfg
        if not has_checkpoint(self.run_dir):
            if self.main:
                logger.info(f"no checkpoint in {self.run_dir}; starting from scratch")
            return
        ckpt = load_checkpoint(self.run_dir, required=("model_config", "numpy_rng", "corpus"))
        saved = ckpt.state
        mc = saved["model_config"] if isinstance(saved["model_config"], dict) else {}
        if mc.get("model") != cfg.model or mc.get("num_topics") != cfg.num_topics:
            raise XtmError(f"--resume: the checkpoint is {mc.get('model')} with K={mc.get('num_topics')}, but this "
                           f"run asks for {cfg.model} with K={cfg.num_topics}: resume with --model {mc.get('model')} "
                           f"--topics {mc.get('num_topics')}, or train a new run in another --out", path=ckpt.path)
        if mc.get("langs") != self.model.langs or mc.get("vocab_sizes") != self.model.vocab_sizes:
            # The weights are per language position: another order (--langs zh,en on an en,zh run) would
            # continue each language's encoder on the other language's documents, with no other error when
            # the vocabularies are the same size (a --vocab-size cap makes them so).
            langs = mc.get("langs")
            order = ",".join(map(str, langs)) if isinstance(langs, list) else langs
            raise XtmError(f"--resume: the checkpoint models {order} (vocabularies {mc.get('vocab_sizes')}), this run "
                           f"{','.join(self.model.langs)} ({self.model.vocab_sizes}): resume with --langs {order} "
                           "and the data it was trained on", path=ckpt.path)
        if differences := data_differences(saved.get("corpus"), self.fingerprint):
            # Refused, not warned: the run's history, metrics and test split would mix two corpora under one name.
            raise XtmError(f"--resume: the training documents differ from those this checkpoint was trained on "
                           f"({'; '.join(differences)}){_segmenter_changes(self.run_dir)}: resume with the data the "
                           "run was trained on, or train a new run in another --out", path=ckpt.path)
        if self.model.reads_links and saved.get("links") is not None and saved.get("links") != self.links:
            # The model keeps the checkpoint's links (its aux buffers), so another dictionary would change
            # nothing but config.json, which would name it. (Checkpoints from before the digest: not checked.)
            raise XtmError("--resume: the dictionary links differ from those this checkpoint was trained with "
                           "(another --dict?): resume with the --dict the run was trained with", path=ckpt.path)
        self._check_topic_lr_scale(ckpt)
        self._check_settings(ckpt)
        self._check_hparams(mc, ckpt.path)
        self._check_schedules(ckpt)
        self._check_phase2_settings(ckpt)
        self._keep_threads(saved.get("threads"))
        load_unique_state_dict(self.model, ckpt.model)
        if train_buffers(ckpt):
            # The saved model's batch-norm statistics were recalibrated for inference; training
            # goes on from the running ones it had.
            self.model.load_state_dict(train_buffers(ckpt), strict=False)
        restore_optimizer(self.optimizer, ckpt)
        self.partial = EpochProgress.from_dict(saved["partial"], ckpt.path) if saved.get("partial") else None
        self.rng = numpy_rng_from_state(self.partial.rng_start if self.partial else saved["numpy_rng"])
        self.done, self.history = ckpt.epoch, list(saved.get("history") or [])
        self.seconds = list(saved.get("epoch_seconds") or [])
        self._check_resume_position(ckpt.path)
        if self.phase2 is not None and saved.get("phase2"):
            self.model.to(self.device)
            self.phase2.load_state(saved["phase2"], self.model)
            if saved.get("phase2_own"):
                # Targets exactly as the last refinement built them (its own top words), not from
                # the parameters now.
                self.own_words = saved["phase2_own"]
                self.phase2.build_targets(self.own_words)
        if self.main:
            where = f"epoch {self.done}" + (f", {self.partial.steps_done} steps into epoch {self.partial.epoch}"
                                            if self.partial else "")
            logger.info(f"resumed from {ckpt.path} ({where})")

    def _check_hparams(self, model_config: dict, path: Path) -> None:
        """A checkpoint continues with the hyper-parameters it was trained with: refuse others by name
        (they would silently change the run half-way, and a default changed since counts too)."""
        saved = model_config.get("hparams")
        if not isinstance(saved, dict):
            return
        saved = type(self.model).saved_hparams(saved)

        def as_saved(value: Any) -> Any:  # the state went through JSON: tuples came back as lists
            return json.loads(json.dumps(value))

        differ = sorted(k for k, v in self.model.hparams.items() if k in saved and as_saved(saved[k]) != as_saved(v))
        if differ:
            asked = ", ".join(f"{k}={self.model.hparams[k]!r}" for k in differ)
            keep = " ".join(f"--set {k}={json.dumps(saved[k])}" for k in differ)
            raise XtmError(f"--resume: the checkpoint was trained with other backbone hyper-parameters than this run "
                           f"asks for ({asked}): resume with {keep}", path=path)

    def _check_phase2_settings(self, ckpt: Checkpoint) -> None:
        """A checkpoint inside phase 2 continues with the phase-2 settings it was trained with: refuse others by
        name, as for the backbone's (a changed default counts too). Phase 2's length may change, and so may where
        and how the refiner is reached (phase2_resume._PHASE2_SERVING)."""
        state = ckpt.state if isinstance(ckpt.state, dict) else {}
        p2 = state.get("phase2")
        started = isinstance(p2, dict) and (bool(p2.get("steps"))
                                            or any(r is not None for r in p2.get("refined") or []))
        if self.phase2 is None or not started:
            return
        saved = state.get("phase2_config")
        if not isinstance(saved, dict):
            if self.main:
                logger.warning("--resume: this checkpoint is inside phase 2 but predates the phase-2 settings being "
                               "recorded in checkpoints, so this run's are not checked against its (a run started "
                               "before the widened MMD source goes on as it began only with --mmd-top-only: "
                               "docs/llm_xtm.md)")
            return
        differ = phase2_differences(saved, self.phase2.cfg)
        trained = state.get("train_config") if isinstance(state.get("train_config"), dict) else {}
        if trained.get("epochs") not in (None, self.cfg.epochs):
            # phase 2 counts from phase 1's last epoch: another --epochs would move its refinements and rate
            differ.append(("phase 1's epochs", trained["epochs"], self.cfg.epochs, f"--epochs {trained['epochs']}"))
        if differ:
            asked = ", ".join(f"{name} {was!r} -> {now!r}" for name, was, now, _ in differ)
            keep = ", ".join(option for *_, option in differ)
            raise XtmError(f"--resume: the checkpoint is inside phase 2, trained with other phase-2 settings than this "
                           f"run asks for (checkpoint -> now: {asked}): resume with the checkpoint's ({keep})",
                           path=ckpt.path)

    def _keep_threads(self, saved: Any) -> None:
        """Without --threads, a resumed CPU run takes the thread count it was started with, whatever the
        load now: the count orders torch's sums, and a resumed run repeats the uninterrupted one bit for bit
        only with the same count (torch_threads gives the caller's count back at the end). A recorded count
        outside 1..MAX_THREADS, which no --threads gives (an edited checkpoint), is ignored: threads are
        created until the process table is full."""
        if (self.cfg.threads or self.device.type != "cpu" or not isinstance(saved, int) or isinstance(saved, bool)
                or not 1 <= saved <= MAX_THREADS or saved == torch.get_num_threads()):
            return
        torch.set_num_threads(saved)
        if self.main:
            logger.info(f"{saved} CPU thread{'s' if saved > 1 else ''}, as this run was started with "
                        "(the same arithmetic as an uninterrupted run; --threads N to choose)")

    def _check_settings(self, ckpt: Checkpoint) -> None:
        """Settings a checkpoint is not continued with another value of: the learning rate (the optimizer's saved
        groups carry the checkpoint's, which a constant schedule keeps while cosine, step and phase 2 would set
        the new one: a run of two rates) and the seed (the random state continues from the checkpoint, so a new
        seed would only be recorded, in config.json and the bundle). Refused by name, with the value to give."""
        saved = ckpt.state.get("train_config") if isinstance(ckpt.state, dict) else None
        if not isinstance(saved, dict):
            return
        for key, flag in (("lr", "--lr"), ("seed", "--seed")):
            old, new = saved.get(key), getattr(self.cfg, key)
            if isinstance(old, (int, float)) and not isinstance(old, bool) and float(old) != float(new):
                raise XtmError(f"--resume: the checkpoint was trained with {flag} {cli_value(old)}, this run asks "
                               f"for {cli_value(new)}: resume with {flag} {cli_value(old)}"
                               f"{self._recipe_hint(saved)} (a checkpoint continues at its own {key}; start a new "
                               "run in another --out to change it)", path=ckpt.path)

    def _recipe_hint(self, saved: dict[str, Any]) -> str:
        """' or --recipe R' when the checkpoint was trained under another recipe than this run's (it sets the rest)."""
        recipe = saved.get("recipe")
        return f" or --recipe {recipe}" if isinstance(recipe, str) and recipe != self.cfg.recipe else ""

    def _check_topic_lr_scale(self, ckpt: Checkpoint) -> None:
        """A checkpoint continues with the learning-rate groups it was trained with: refuse another
        --topic-lr-scale by name (the optimizer would fail with a bare group count, or keep the old rate)."""
        groups = ckpt.state.get("optimizer", {}).get("param_groups") if isinstance(ckpt.state, dict) else None
        if not isinstance(groups, list) or not groups or not all(isinstance(g, dict) for g in groups):
            return  # restore_optimizer says what is wrong with it
        # make_optimizer puts phi last: its group's multiplier (the only group's, 1, without a scale)
        saved = groups[-1].get("lr_scale", 1.0)
        if isinstance(saved, bool) or not isinstance(saved, (int, float)):
            return  # restore_optimizer names the bad setting
        if float(saved) != float(self.cfg.topic_lr_scale):
            train_config = ckpt.state.get("train_config")
            hint = self._recipe_hint(train_config) if isinstance(train_config, dict) else ""
            raise XtmError(f"--resume: the checkpoint was trained with --topic-lr-scale {cli_value(saved)}, this "
                           f"run asks for {cli_value(self.cfg.topic_lr_scale)}: resume with --topic-lr-scale "
                           f"{cli_value(saved)}{hint}", path=ckpt.path)

    def _check_schedules(self, ckpt: Checkpoint) -> None:
        """A checkpoint continues on the curves it was trained on: refuse another --lr-schedule, and another
        --epochs where a curve ends at the run's last phase-1 epoch (a cosine rate, a fading loss weight)."""
        saved = ckpt.state.get("train_config") if isinstance(ckpt.state, dict) else None
        if not isinstance(saved, dict):
            return
        schedule = saved.get("lr_schedule") or "constant"  # checkpoints from before the setting: constant
        if schedule != self.cfg.lr_schedule:
            switch = self._schedule_switch(schedule, ckpt)
            if switch is None:
                raise XtmError(f"--resume: the checkpoint was trained with --lr-schedule {schedule}, this run asks "
                               f"for {self.cfg.lr_schedule}: resume with --lr-schedule {schedule}", path=ckpt.path)
            if self.main:
                logger.info(switch)
        if saved.get("epochs") == self.cfg.epochs:
            return
        if schedule == "cosine":
            raise XtmError(f"--resume: the checkpoint's cosine learning rate ends at epoch {saved.get('epochs')}, "
                           f"this run asks for --epochs {self.cfg.epochs}: resume with --epochs {saved.get('epochs')} "
                           "(a cosine run is not extended; start a longer one)", path=ckpt.path)
        if self.model.schedule_spans_epochs():
            raise XtmError(f"--resume: the checkpoint's {self.model.name} loss weights follow a schedule that ends at "
                           f"epoch {saved.get('epochs')}, this run asks for --epochs {self.cfg.epochs}: resume with "
                           f"--epochs {saved.get('epochs')} (such a run is not extended; start a longer one)",
                           path=ckpt.path)

    def _schedule_switch(self, schedule: str, ckpt: Checkpoint) -> str | None:
        """What to log when a run trained with `schedule` goes on with --lr-schedule constant <-> step, None where
        it may not: StepLR keeps the full rate through its first step (125 epochs for most backbones), phase 2's
        reset included, so a checkpoint inside it holds exactly what the other schedule would have trained (say,
        a 100-epoch constant run continued to the authors' 500 with their StepLR). Cosine differs from step 1."""
        every = lr_step_epochs(self.cfg.model)
        begun = ckpt.epoch + (1 if ckpt.state.get("partial") else 0)
        if {schedule, self.cfg.lr_schedule} != {"constant", "step"} or begun > every:
            return None
        new = self.cfg.lr_schedule
        return (f"--lr-schedule {new}: the checkpoint was trained with {schedule}, at the same rate as {new} "
                f"through epoch {begun} (the two part after epoch {every})")

    def _check_resume_position(self, path: Path) -> None:
        if self.done > self.total_epochs:
            raise XtmError(f"--resume: the checkpoint is at epoch {self.done}, past the {self.total_epochs} "
                           "epochs this run asks for", path=path)
        p = self.partial
        if p is None:
            return
        if p.epoch != self.done + 1:
            raise XtmError(f"--resume: the checkpoint's partial epoch {p.epoch} does not follow epoch {self.done}",
                           path=path)
        if p.epoch > self.total_epochs:
            raise XtmError(f"--resume: the checkpoint stopped inside epoch {p.epoch}, past the {self.total_epochs} "
                           "epochs this run asks for", path=path)
        if (p.batch_size, p.world) != (self.cfg.batch_size, self.world):
            raise XtmError(f"--resume: the checkpoint stopped inside epoch {p.epoch} with --batch-size {p.batch_size} "
                           f"on {p.world} process(es); finish that epoch with the same (this run: --batch-size "
                           f"{self.cfg.batch_size}, {self.world})", path=path)
        if p.phase != self._phase(p.epoch):
            raise XtmError(f"--resume: the checkpoint stopped inside a phase-{p.phase} epoch ({p.epoch}), which "
                           f"this run's settings make a phase-{self._phase(p.epoch)} epoch", path=path)

    def _phase(self, epoch: int) -> int:
        return 2 if self.phase2 is not None and epoch > self.cfg.epochs else 1

    # ---- training ----------------------------------------------------------------------------
    def run(self, resume: bool, on_start: Callable[[], None] | None = None) -> TrainResult:
        if resume:
            self.resume()
        if on_start is not None and self.main:
            on_start()
        model, cfg = self.model, self.cfg
        model.to(self.device)
        model.train()
        distributed.broadcast_state(model, self.dist)  # identical start on every rank
        stop = StopFlag()
        stop.install()
        bar = tqdm(total=self.total_epochs, initial=self.done, desc=f"{cfg.model} K={cfg.num_topics}",
                   unit="epoch", disable=not (cfg.progress and self.main), dynamic_ncols=True, file=sys.stderr)
        stopped: _Stopped | None = None
        progress: EpochProgress | None = None
        try:
            for epoch in range(self.done + 1, self.total_epochs + 1):
                progress = self.partial if self.partial is not None else EpochProgress(
                    epoch, numpy_rng_state(self.rng), phase=self._phase(epoch), batch_size=cfg.batch_size,
                    world=self.world)
                self.partial = None
                if self._epoch(progress, stop, bar):
                    break
                self._close_epoch(progress, stop, bar)
                progress = None
                # A signal that reached one rank after its epoch's last gradients (its close: evaluation,
                # checkpoint, rank 0's alone) travelled with none: all ranks leave here together, or a lone
                # rank's checkpoint would wait for ever on the others, already in the next epoch's
                # collectives. (After the last epoch every rank goes on to _finish anyway.)
                if epoch < self.total_epochs and distributed.any_rank(stop.stop, self.dist, self.device) \
                        and not stop.stop:
                    stop.signum = signal.SIGTERM  # another rank was asked to stop
                if stop.stop:
                    break
            if stop.stop:
                stopped = _Stopped(progress, stop.signum or signal.SIGINT, forced=False)
        except KeyboardInterrupt:
            # A second signal, or an interrupt from a callback: every point where it can land
            # leaves a consistent state (see _epoch), so the checkpoint is still exact.
            if progress is not None and progress.epoch <= self.done:
                progress = None  # it came after the epoch was closed: an epoch boundary
            stopped = _Stopped(progress, stop.signum or signal.SIGINT, forced=True)
        except NoRefinementAnswerError as e:
            # Stopped as a signal inside a refinement stops (the checkpoint holds the state from before it), so the
            # run's settings and results are recorded and --resume continues it once the server answers.
            stopped = _Stopped(progress, signal.SIGTERM, forced=True, failure=e)
        finally:
            bar.close()
        stop.forced = False
        stop.enter()  # from here on, signals wait for the checkpoint to be written
        try:
            if stopped is not None and self.main:
                why = "phase 2's LLM answered nothing" if stopped.failure is not None else \
                    signal.Signals(stopped.signum).name
                logger.info(f"{why}: stopping; saving the checkpoint")
            self._finish(stopped)
        finally:
            stop.restore()
        if self.main:  # a stopped run too: its model is evaluated and reported as well
            warn_near_collapse(self.model)
        if (stopped is None and stop.stop) or stop.forced:
            # Asked to stop while the final checkpoint was being written: it is written; now the
            # signal takes its ordinary effect (the command ends, 128 + N) instead of being lost.
            signal.raise_signal(stop.last or signal.SIGINT)
        return self._result(stopped)

    def _epoch(self, progress: EpochProgress, stop: StopFlag, bar: Any) -> bool:
        """Run the epoch's remaining steps; returns early, at a step boundary, when asked to stop. Returns
        whether training stops here. Under torchrun that is decided by the all-reduced flag only, the same
        on every rank: a signal that lands on one rank after a step's all-reduce travels with the next one
        (or, after the epoch's last step, with the epoch boundary's in `run`)."""
        model, phase2, cfg = self.model, self.phase2, self.cfg
        epoch = progress.epoch
        if progress.phase == 2 and not progress.refined and phase2 is not None \
                and phase2.refines_at(epoch - cfg.epochs):
            self._rollback = (copy.deepcopy(phase2.state()), self.own_words)
            own = phase2.own_top_words(model)
            # A signal ends a refinement at once (an LLM's answers can take minutes): the checkpoint holds the
            # state from before it (_rollback), and the answers already given are cached for the redo.
            with stop.abandonable_section():
                phase2.refine(model, epoch)
            stop.enter()
            self.own_words, progress.refined, self._rollback = own, True, None
            stop.leave()
        extra = phase2.losses if progress.phase == 2 and phase2 is not None else None
        grad_clip = model.hparams.get("grad_clip")
        if progress.phase == 2 and phase2 is not None:
            grad_clip = self._phase2_optimisation(phase2, progress) or grad_clip
        params = [p for p in model.parameters() if p.requires_grad]
        n_steps = steps_per_epoch(self.data.sizes(), cfg.batch_size, self.world) // self.world
        scheduled = progress.phase == 1 and cfg.lr_schedule != "constant"
        t0 = time.perf_counter() - progress.seconds
        for batch in self.data.epoch(self.rng, cfg.batch_size, self.rank, self.world, start_step=progress.steps_done):
            if stop.stop and self.dist is None:
                return True  # (distributed: the flag reaches the other ranks with the next gradients)
            self._step_rng = self._rng_state()
            step = (epoch - 1) * n_steps + progress.steps_done  # 0-based, over both phases
            model.training_position = step / (cfg.epochs * n_steps)
            if scheduled:
                self._set_rate(cfg.lr * lr_factor(cfg.lr_schedule, step, cfg.epochs * n_steps, n_steps,
                                                  lr_step_epochs(cfg.model)))
            x = [SparseRows.from_csr(m, self.device) for m, _ in batch]
            losses = model(x, [torch.from_numpy(r).to(self.device) for _, r in batch], extra=extra)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            # All ranks leave together: the stop flag travels with the gradients.
            leave = distributed.average_gradients(params, stop.stop, self.dist)
            if leave and not stop.stop:
                stop.signum = signal.SIGTERM  # another rank was asked to stop
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            # .item() detaches: per-batch graphs are freed right away, not kept for the epoch.
            values = {k: float(v.item()) for k, v in losses.items()}
            # (Under torchrun one rank alone must not stop: the others would wait at the next collective.
            # Its gradients make every rank's parameters non-finite, which _close_epoch finds on all.)
            if not math.isfinite(values["loss"]) and self.dist is None:
                self._diverged(f"the loss is {values['loss']} at step {progress.steps_done + 1} of epoch {epoch}")
            stop.enter()
            self.optimizer.step()
            for k, v in values.items():
                progress.totals[k] = progress.totals.get(k, 0.0) + v
            progress.steps_done += 1
            progress.seconds = time.perf_counter() - t0
            self._step_rng = None
            stop.leave()
            if progress.steps_done % 10 == 1:
                bar.set_postfix(loss=f"{progress.totals['loss'] / progress.steps_done:.2f}",
                                step=f"{progress.steps_done}/{n_steps}")
            if leave if self.dist is not None else stop.stop:
                return True
        return stop.stop and self.dist is None

    def _set_rate(self, lr: float) -> None:
        """Every parameter group at lr x its own multiplier (phi's --topic-lr-scale)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def _phase2_optimisation(self, phase2: Phase2Objective, progress: EpochProgress) -> float:
        """Phase 2's learning rate and its gradient clip (0: none of its own) for this epoch.

        The rate is set from the settings at every phase-2 epoch, never carried over from where it
        was: lr_scale x --lr, as the public LLM-XTM code resets it (0.3 x) at the phase-2 start, so a
        resumed run (whose optimizer state restores the saved rate anyway) uses the same one. The top
        words of the MMD source are fixed at the epoch's first step only: a resumed epoch keeps the
        ones its checkpoint saved.
        """
        lr = self.cfg.lr * phase2.cfg.lr_scale
        self._set_rate(lr * phase2_step_factor(self.cfg, progress.epoch))
        if progress.steps_done == 0:
            phase2.start_epoch(self.model)
            if progress.epoch == self.cfg.epochs + 1 and self.main:
                clip = f"clipped at {phase2.cfg.grad_clip:g}" if phase2.cfg.grad_clip else "not clipped"
                step = (f", halved every {lr_step_epochs(self.cfg.model)} epochs of the whole run"
                        if self.cfg.lr_schedule == "step" else "")
                logger.info(f"phase 2: learning rate {lr:g} ({phase2.cfg.lr_scale:g} x {self.cfg.lr:g}{step}), "
                            f"gradient norm {clip}")
        return phase2.cfg.grad_clip

    def _diverged(self, what: str) -> None:
        """Stop a run whose numbers left the finite range: nothing of it is saved (the last checkpoint,
        if any, stays the newest), so no NaN model is evaluated, exported or resumed from."""
        saved = "the last checkpoint is kept" if has_checkpoint(self.run_dir) else "nothing was saved"
        raise XtmError(f"training diverged: {what}; {saved}. Lower --lr (now {self.cfg.lr:g}) or "
                       "--topic-lr-scale, or check the --set values")

    def _check_parameters(self, when: str) -> None:
        """_diverged unless every parameter is finite (identical on every rank: all stop together)."""
        bad = [name for name, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if bad:
            self._diverged(f"parameter {bad[0]} holds non-finite values {when}")

    def _close_epoch(self, progress: EpochProgress, stop: StopFlag, bar: Any) -> None:
        """History, callback and checkpoint of an epoch whose steps are all done."""
        epoch, steps = progress.epoch, progress.steps_done
        self._check_parameters(f"after epoch {epoch}")  # the epoch's last step may have made them so
        means = distributed.average_scalars({k: v / steps for k, v in progress.totals.items()}, self.dist,
                                            self.device)
        extra = None
        if self.on_epoch_end is not None:
            try:
                with stop.abandonable_section():  # a signal ends it at once; the epoch's steps are all kept (see run)
                    extra = self.on_epoch_end(epoch, self.model)
            except KeyboardInterrupt:
                if self.dist is None:
                    raise
                # Under torchrun this rank alone was signalled: the epoch closes without its evaluation point,
                # and every rank leaves at the boundary (run), where the others learn of the signal.
                stop.signum = stop.signum or signal.SIGINT
        if self.main and isinstance(extra, dict) and not self._collapse_warned:
            collapsed = _collapse_point(extra.get("near_collapse"))
            self._collapse_warned = warn_near_collapse(self.model, epoch, collapsed)
        stop.enter()
        self.seconds.append(progress.seconds)
        self.history.append({"epoch": epoch, **means, "seconds": progress.seconds, "steps": steps,
                             **({"eval": extra} if extra else {})})
        self.done = epoch
        stop.leave()
        if self.main:
            self._write_history()
        bar.update(1)
        bar.set_postfix(loss=f"{self.history[-1]['loss']:.2f}", sec=f"{progress.seconds:.1f}")
        if self.main and bar.disable and not _stderr_is_terminal():
            # No bar, and stderr goes to a file or a pipe: one line per epoch, so a long run's log
            # shows where it is (with a bar, the bar says it; -q on a terminal stays quiet).
            phase = " (phase 2)" if progress.phase == 2 else ""
            logger.info(f"epoch {epoch}/{self.total_epochs}{phase}: loss {self.history[-1]['loss']:.4f}, "
                        f"{progress.seconds:.2f}s")
        cfg, in_phase2 = self.cfg, progress.phase == 2
        if (cfg.checkpoint_every and epoch % cfg.checkpoint_every == 0 and epoch < self.total_epochs) or \
                (not in_phase2 and self.phase2 is not None and epoch == cfg.epochs):
            self._save_periodic()  # (phase 1's last epoch too: phase 2 can be redone from there)

    def _write_history(self) -> None:
        """history.json, current after every epoch (not only at the end): a long run's learning curve can be
        read while it trains and survives a kill between checkpoints. It is a view of the checkpoints' own
        history, so failing to write it (a full disk, a directory in its place) warns once and training goes on."""
        try:
            RunDir(self.run_dir).save_history(self.history)
        except (XtmError, OSError) as e:
            if not self._history_warned:
                logger.warning(f"history.json not updated during training ({e}); the checkpoints keep the history")
                self._history_warned = True

    # ---- the end -----------------------------------------------------------------------------
    def _finish(self, stopped: _Stopped | None) -> None:
        """Recalibrate batch norm for inference, then save the final (or the stopping) checkpoint."""
        progress = stopped.progress if stopped is not None else None
        if progress is not None:  # stopped inside an epoch: its steps since _close_epoch are unchecked
            self._check_parameters(f"in epoch {progress.epoch} (stopped after step {progress.steps_done})")
        if progress is not None and self.dist is not None and not stopped.forced:
            # Each rank summed its own losses; the resumed epoch's history mean stays the ranks' mean.
            progress.totals = distributed.average_scalars(progress.totals, self.dist, self.device)
        rng, buffers = self._step_rng or self._rng_state(), self._training_buffers()
        if self.main:
            recalibrate_batchnorm(self.model, self.data, self.device)
        distributed.broadcast_state(self.model, self.dist)
        self._save(progress, rng=rng, buffers=buffers)

    def _save_periodic(self) -> None:
        """A periodic checkpoint whose model is servable as it stands: batch norm recalibrated as in the final one.

        With training's running statistics, a copy of a periodic checkpoint (or the fallback when the final
        one is damaged) scored ECNews's cross-lingual cells up to 10 points off, in either direction
        (docs/benchmarks.md, "Periodic checkpoints"). Training then goes on from its own running statistics
        (and RNG state: the pass draws from a fork), so the run is the same with or without it."""
        if not self.main:
            return
        # The CUDA generator too (periodic checkpoints used to save only the CPU one), so that a GPU run with
        # dropout resumes from one bit for bit, as from a stopping checkpoint.
        rng, buffers = self._rng_state(), self._training_buffers()
        try:
            recalibrate_batchnorm(self.model, self.data, self.device)
            if not self._collapse_warned:
                # The state shows within a few epochs: say so then, not hours later at the end (an --eval-every
                # point this epoch has said it already, from the same recalibrated statistics).
                self._collapse_warned = warn_near_collapse(self.model, self.done)
            self._save(None, rng=rng, buffers=buffers)
        finally:  # also after a second Ctrl-C inside: the stopping checkpoint then saves training's state
            self.model.load_state_dict(buffers, strict=False)

    def _rng_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The torch generators training draws from now: the CPU one, and the device's when it is CUDA."""
        cuda = self.device.type == "cuda"
        return torch.get_rng_state(), torch.cuda.get_rng_state(self.device) if cuda else None

    def _training_buffers(self) -> dict[str, torch.Tensor]:
        """A copy of batch norm's running statistics as training has them, before a recalibration replaces
        them (checkpoints keep it for a resume)."""
        return {k: v.clone() for k, v in unique_state_dict(self.model).items()
                if k.endswith(("running_mean", "running_var"))}

    def _save(self, progress: EpochProgress | None, rng: tuple[torch.Tensor, torch.Tensor | None] | None = None,
              buffers: dict[str, torch.Tensor] | None = None) -> None:
        """Checkpoint at `self.done` completed epochs, plus `progress` inside the next one."""
        if not self.main:
            return
        if progress is not None and not (progress.steps_done or progress.refined):
            progress_rng, progress = progress.rng_start, None  # nothing done in it yet: an epoch boundary
        else:
            progress_rng = progress.rng_start if progress is not None else numpy_rng_state(self.rng)
        phase2_state, own = None, self.own_words
        if self.phase2 is not None:
            phase2_state = self.phase2.state()
            if self._rollback is not None:  # stopped inside a refinement: as before it started
                phase2_state, own = self._rollback
        done = self.done
        save_checkpoint(self.run_dir, done, self.model, self.optimizer, {
            "model_config": self.model.config(), "train_config": self.cfg.to_dict(), "corpus": self.fingerprint,
            "links": self.links,
            "numpy_rng": progress_rng, "history": self.history[:done], "epoch_seconds": self.seconds[:done],
            "phase2": phase2_state, "phase2_own": own, "threads": torch.get_num_threads(),
            "phase2_config": self.phase2.cfg.to_dict() if self.phase2 is not None else None,
            "partial": progress.to_dict() if progress is not None else None},
            step=progress.steps_done if progress is not None else None,
            torch_rng=rng[0] if rng else None, cuda_rng=rng[1] if rng else None, train_buffers=buffers)

    def _result(self, stopped: _Stopped | None) -> TrainResult:
        per_epoch = float(np.median(self.seconds)) if self.seconds else float("nan")
        digests = distributed.gather_digests(self.model, self.dist) if self.dist is not None else None
        if digests is not None and len(set(digests)) != 1:
            raise XtmError(f"distributed training: the ranks ended with different models (state digests "
                           f"{[d[:12] for d in digests]}); please report this")
        self.model.eval()
        stopped_at = None
        if stopped is not None:
            p = stopped.progress
            n_steps = steps_per_epoch(self.data.sizes(), self.cfg.batch_size, self.world) // self.world
            # At an epoch boundary: after the last step of the last completed epoch.
            stopped_at = {"epoch": p.epoch if p is not None else self.done,
                          "step": p.steps_done if p is not None else n_steps,
                          "steps_per_epoch": n_steps, "signal": signal.Signals(stopped.signum).name}
            if stopped.failure is not None:
                stopped_at.update(signal=None, reason=stopped.failure.reason)
            if self.main:
                where = f"after epoch {self.done}" if p is None else \
                    f"at epoch {p.epoch}, step {p.steps_done} of {n_steps}"
                logger.info(f"stopped {where}; checkpoint saved: continue with --resume")
        return TrainResult(model=self.model, epochs_done=self.done, seconds_per_epoch=per_epoch,
                           history=self.history[:self.done], interrupted=stopped is not None,
                           rank_digests=digests,
                           signal=stopped.signum if stopped is not None and stopped.failure is None else None,
                           stopped_at=stopped_at, failure=stopped.failure if stopped is not None else None)


def _stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced by an object without isatty, or closed
        return False

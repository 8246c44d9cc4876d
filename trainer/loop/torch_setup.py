"""torch's process-wide settings for one training or command: the device, the seeds, the CPU threads.

Not the training loop's (xtm.trainer.loop.training): the contextual fit and the run set them up the same way.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from xtm.config import check_device_name
from xtm.cpu import threads_beside_others
from xtm.errors import XtmError
from xtm.run_dir import has_checkpoint
from xtm.trainer.loop.distributed import DistContext

__all__ = ["pick_device", "seed_everything", "thread_count", "torch_threads", "training_device"]

logger = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XtmError(f"--device {name} asked for, but torch sees no CUDA device")
    return torch.device(check_device_name(name))


def training_device(name: str, dist: DistContext | None) -> torch.device:
    """Where a training runs: its rank's device under torchrun, else --device."""
    return dist.device if dist is not None else pick_device(name)


def seed_everything(seed: int, device: torch.device | None = None) -> np.random.Generator:
    """Seed what training draws from. CUDA's generators only for a CUDA run: on a CPU run they are not touched
    (the seed would be queued until the caller's program first used CUDA)."""
    random.seed(seed)
    torch.manual_seed(seed)
    if device is not None and device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    return np.random.default_rng(seed)


# Inside a torch_threads block: an inner one (train_backbone() under run_training) keeps the outer one's choice.
_threads_chosen = False


@contextlib.contextmanager
def thread_count(n: int) -> Iterator[None]:
    """torch's CPU threads at `n` for a block and the previous count back at its end: torch's count is
    process-wide, and a library caller keeps its own."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:  # (a resumed run may have taken its own count since)
            torch.set_num_threads(before)


@contextlib.contextmanager
def torch_threads(threads: int | None, device: torch.device, resume_dir: Path | None = None) -> Iterator[None]:
    """torch's CPU threads for one training or command, and the previous count back at its end.

    `threads` where given; on a CPU otherwise torch's default less the cores other processes keep busy
    (xtm.cpu: spinning threads on a shared core are many times slower), logged when fewer. A run resumed
    from a checkpoint in `resume_dir` samples nothing: it takes the count its checkpoint records
    (_Training._keep_threads). A block inside another one keeps the outer choice, so the load is sampled
    once per command.
    """
    global _threads_chosen
    if _threads_chosen:
        yield
        return
    before = torch.get_num_threads()
    chosen = threads or before
    resuming = resume_dir is not None and has_checkpoint(resume_dir)
    if not threads and device.type == "cpu" and not resuming:
        chosen = threads_beside_others(before)
        if chosen < before:
            # "at least": a count held at one thread says nothing of how many more cores are busy
            busy = before - chosen
            logger.info(f"{chosen} CPU thread{'s' if chosen > 1 else ''} of {before}: other processes keep at "
                        f"least {busy} core{'s' if busy > 1 else ''} busy (--threads N to choose)")
    _threads_chosen = True
    try:
        with thread_count(chosen):
            yield
    finally:
        _threads_chosen = False

"""Data-parallel training under torchrun: process group, gradient averaging, rank-0-only outputs.

`torchrun --nproc-per-node G -m xtm.cli.train ...` starts G copies of xtm-train with WORLD_SIZE,
RANK and LOCAL_RANK set; `init_from_env` then joins them into one process group (NCCL when the
device is CUDA, each rank on cuda:LOCAL_RANK; gloo on CPU). Without WORLD_SIZE > 1 nothing
changes: single-process training never touches torch.distributed.

What is synchronised, and how:
  - parameters: every rank builds the model from the same seed, and rank 0's state (parameters
    and buffers) is broadcast before the first step, so all start identical;
  - gradients: averaged over ranks after every backward, in ONE flat all-reduce (plus a flag
    per parameter saying whether it got a gradient, so a parameter no rank used keeps
    grad=None and Adam leaves it alone, as in a single process). Every rank then applies the
    same Adam step, so parameters stay identical without further communication. This is what
    DistributedDataParallel does, minus the overlap of communication with backward, which these
    small models do not need; it needs no wrapper, so shared modules (NMTM's encoder body),
    parameters a step does not use, and models' own methods work unchanged;
  - batch-norm running statistics: not synchronised during training (training normalises with
    batch statistics; running ones are only used at inference); after training rank 0
    recomputes them exactly over all training documents and broadcasts its whole state;
  - the stop flag (SIGTERM, Ctrl-C): carried in the same all-reduce, so all ranks stop at the
    same step and rank 0 checkpoints;
  - per-epoch mean losses: averaged over ranks for history.json.
Rank 0 alone writes checkpoints, logs, progress bars and the run directory.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from xtm.errors import XtmError


@dataclass
class DistContext:
    rank: int
    world: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise XtmError(f"WORLD_SIZE must be an integer, got {os.environ['WORLD_SIZE']!r}") from None


def is_main_process() -> bool:
    """Rank 0, or not distributed at all (RANK unset)."""
    return os.environ.get("RANK", "0") == "0"


def init_from_env(device: str) -> DistContext | None:
    """Join the torchrun process group when WORLD_SIZE > 1; None in a single process."""
    import torch.distributed as dist

    world = env_world_size()
    if world <= 1:
        return None
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise XtmError(f"--device {device} asked for, but torch sees no CUDA device")
        # One GPU per rank: cuda:LOCAL_RANK, whatever index --device named.
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
        backend = "nccl"
    else:
        dev = torch.device(device)
        backend = "gloo"
    if not dist.is_initialized():
        # Rank 0 may preprocess a large corpus while the others wait at a barrier.
        minutes = int(os.environ.get("XTM_DIST_TIMEOUT_MIN", "180"))
        dist.init_process_group(backend, timeout=timedelta(minutes=minutes))
    return DistContext(rank=rank, world=world, local_rank=local_rank, backend=backend, device=dev)


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        import torch.distributed as dist

        dist.barrier()


def close(ctx: DistContext | None) -> None:
    if ctx is not None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def broadcast_state(model: torch.nn.Module, ctx: DistContext | None) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if ctx is None:
        return
    import torch.distributed as dist

    for t in model.state_dict().values():
        if t.is_floating_point() or t.dtype in (torch.int64, torch.int32):
            dist.broadcast(t, src=0)


def average_gradients(params: list[torch.nn.Parameter], stop: bool, ctx: DistContext | None) -> bool:
    """Average gradients over ranks in place; returns whether any rank asked to stop."""
    if ctx is None:
        return stop
    import torch.distributed as dist

    dev = params[0].device
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params]
                     + [torch.tensor([float(p.grad is not None) for p in params] + [float(stop)], device=dev,
                                     dtype=params[0].dtype)])
    dist.all_reduce(flat)
    offset = 0
    used = flat[-len(params) - 1:-1]
    for k, p in enumerate(params):
        n = p.numel()
        if used[k] > 0:
            g = flat[offset:offset + n].view_as(p).div_(ctx.world)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n
    return bool(flat[-1] > 0)


def any_rank(flag: bool, ctx: DistContext | None, device: torch.device) -> bool:
    """Whether `flag` is set on any rank. A collective: every rank calls it at the same point."""
    if ctx is None:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def average_scalars(values: dict[str, float], ctx: DistContext | None, device: torch.device) -> dict[str, float]:
    if ctx is None or not values:
        return values
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world for k, v in zip(keys, t.tolist(), strict=True)}


def rank_state_digest(model: torch.nn.Module) -> str:
    """sha256 over the model's state (names and bytes): equal digests = identical models. Not
    xtm.models_zoo.base.state_digest (names, dtypes and shapes of the unique tensors): this one's values are
    recorded in metrics.json as rank_state_sha256, so it keeps its own recipe."""
    h = hashlib.sha256()
    for k, t in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def gather_digests(model: torch.nn.Module, ctx: DistContext) -> list[str]:
    """Every rank's state digest, on every rank (the run's check that the ranks agree)."""
    import torch.distributed as dist

    d = rank_state_digest(model)
    mine = torch.tensor(list(bytes.fromhex(d)), dtype=torch.int64, device=ctx.device)
    out = [torch.empty_like(mine) for _ in range(ctx.world)]
    dist.all_gather(out, mine)
    return [bytes(t.cpu().tolist()).hex() for t in out]

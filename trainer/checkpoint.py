"""Checkpoints as safetensors + JSON (never pickle), written so a crash cannot corrupt the last one.

Layout under RUN_DIR/checkpoints/:
    epoch-000010/model.safetensors      model state (parameters and aux buffers)
    epoch-000010/optimizer.safetensors  optimizer tensors and the torch RNG state
    epoch-000010/state.json             epoch, model config, training settings, optimizer scalars
    latest.json                         {"dir": "epoch-000010", "epoch": 10}, replaced atomically
Each epoch directory is written under a temporary name and renamed when complete; only then
does latest.json move to it. Older epoch directories beyond `keep` are removed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from xtm.atomic import write_json
from xtm.errors import XtmError
from xtm.models_zoo.base import unique_state_dict

CHECKPOINT_FORMAT = 1


@dataclass
class Checkpoint:
    epoch: int
    state: dict[str, Any]          # the JSON part
    model: dict[str, torch.Tensor]
    optimizer: dict[str, torch.Tensor]
    path: Path


def _flatten_optimizer(opt_state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, per_param in opt_state["state"].items():
        for name, value in per_param.items():
            key = f"state.{idx}.{name}"
            if torch.is_tensor(value):
                tensors[key] = value.detach().cpu().contiguous()
            else:
                scalars[key] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in list(tensors.items()) + list(meta.get("scalars", {}).items()):
        if not key.startswith("state."):
            continue
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint `epoch` atomically and point latest.json at it. Returns its directory."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"epoch-{epoch:06d}"
    tmp = root / f".tmp-epoch-{epoch:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model_tensors = unique_state_dict(model)
    save_file(model_tensors, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    opt_tensors["rng.torch"] = torch.get_rng_state()
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    write_json(tmp / "state.json", {"format": CHECKPOINT_FORMAT, "epoch": epoch, "optimizer": opt_meta, **state})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    write_json(root / "latest.json", {"dir": final.name, "epoch": epoch})
    # Prune old checkpoints only after the new one is live.
    older = sorted(p for p in root.glob("epoch-*") if p.is_dir() and p != final)
    for p in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / "latest.json"
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text(encoding="utf-8"))["dir"]
    except (OSError, ValueError, KeyError) as e:
        raise XtmError(f"unreadable checkpoint pointer ({e})", path=pointer) from e
    d = root / name
    if not d.is_dir():
        raise XtmError(f"latest.json points to {name}, which does not exist", path=pointer)
    return d


def load_checkpoint(path: Path) -> Checkpoint:
    """Load a checkpoint directory (an epoch-* dir, or a run dir whose latest checkpoint is taken)."""
    path = Path(path)
    if (path / "checkpoints").is_dir() or not (path / "state.json").exists():
        d = latest_checkpoint_dir(path)
        if d is None:
            raise XtmError("no checkpoint found (expected checkpoints/latest.json)", path=path)
        path = d
    for name in ("model.safetensors", "optimizer.safetensors", "state.json"):
        if not (path / name).exists():
            raise XtmError(f"checkpoint is missing {name}", path=path)
    state = json.loads((path / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != CHECKPOINT_FORMAT:
        raise XtmError(f"checkpoint format {state.get('format')} is not supported "
                       f"(this xtm reads format {CHECKPOINT_FORMAT})", path=path)
    return Checkpoint(epoch=int(state["epoch"]), state=state, model=load_file(str(path / "model.safetensors")),
                      optimizer=load_file(str(path / "optimizer.safetensors")), path=path)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    tensors = {k: v for k, v in ckpt.optimizer.items() if k.startswith("state.")}
    optimizer.load_state_dict(_unflatten_optimizer(tensors, ckpt.state["optimizer"]))
    if "rng.torch" in ckpt.optimizer:
        torch.set_rng_state(ckpt.optimizer["rng.torch"])


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def numpy_rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng

"""Checkpoints as safetensors + JSON (never pickle), written so a crash cannot corrupt the last one.

Layout under RUN_DIR/checkpoints/:
    epoch-000010/model.safetensors      model state (parameters and aux buffers)
    epoch-000010/optimizer.safetensors  optimizer tensors, the torch RNG state and the training-time
                                        batch-norm running statistics (see save_checkpoint)
    epoch-000010/state.json             epoch, model config, training settings, optimizer scalars,
                                        and the sha256 of the two tensor files (written last)
    epoch-000010-step-000037/           a run stopped 37 steps into epoch 11 (state.json "partial")
    latest.json                         {"dir": "epoch-000010", "epoch": 10}, replaced atomically
Each checkpoint directory is written under a temporary name, its files fsynced, and renamed when
complete; only then does latest.json move to it. Older directories beyond `keep` are removed.
Directory names sort in training order, so "the previous checkpoint" is the previous name.

Loading a run's checkpoint checks what can go wrong on disk (a truncated or modified tensor file,
an empty or garbled state.json, a pointer to a missing directory) and falls back to the previous
complete checkpoint with a warning naming what was wrong; only when none is usable is it an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as serialize_tensors

from xtm.atomic import write_json
from xtm.errors import XtmError
from xtm.json_files import read_json
from xtm.models_zoo.base import unique_state_dict
from xtm.run_dir import RunDir

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
# optimizer.safetensors keys for what is not the optimizer's own state.
RNG_TORCH, RNG_CUDA, TRAIN_BUFFER = "rng.torch", "rng.cuda", "train_buffer."


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


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """epoch-000010, or epoch-000010-step-000037 for 37 steps into the next epoch (sorts between)."""
    return f"epoch-{epoch:06d}" + (f"-step-{step:06d}" if step is not None else "")


def _write_synced(path: Path, data: bytes) -> dict[str, Any]:
    """Write and fsync a file; returns what state.json records to detect a damaged copy later."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def save_checkpoint(run_dir: Path, epoch: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    state: dict[str, Any], keep: int = 2, *, step: int | None = None,
                    torch_rng: torch.Tensor | None = None, cuda_rng: torch.Tensor | None = None,
                    train_buffers: dict[str, torch.Tensor] | None = None) -> Path:
    """Write checkpoint `epoch` (`step` steps into the next one) atomically and point latest.json at it.

    torch_rng / cuda_rng: the RNG states training continues from (default: the current CPU state);
    train_buffers: batch-norm running statistics as training left them, when the model's own were
    recalibrated for inference before saving (a resumed run continues from the training ones).
    """
    root = RunDir(run_dir).checkpoints
    final = root / checkpoint_name(epoch, step)
    tmp = root / f".tmp-{final.name}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-epoch-*"):  # left by a process killed while saving
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
        files = {"model.safetensors": _write_synced(tmp / "model.safetensors",
                                                    serialize_tensors(unique_state_dict(model)))}
        opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
        opt_tensors[RNG_TORCH] = torch_rng if torch_rng is not None else torch.get_rng_state()
        if cuda_rng is not None:
            opt_tensors[RNG_CUDA] = cuda_rng.cpu()
        for k, v in (train_buffers or {}).items():
            opt_tensors[TRAIN_BUFFER + k] = v.detach().cpu().contiguous()
        files["optimizer.safetensors"] = _write_synced(tmp / "optimizer.safetensors", serialize_tensors(opt_tensors))
        write_json(tmp / "state.json", {"format": CHECKPOINT_FORMAT, "epoch": epoch, "optimizer": opt_meta,
                                        **state, "files": files})
        aside = root / f".tmp-old-{final.name}"
        if final.exists():  # the same position saved again (a stop right after a periodic checkpoint)
            shutil.rmtree(aside, ignore_errors=True)
            final.rename(aside)
        tmp.rename(final)
        shutil.rmtree(aside, ignore_errors=True)
        write_json(root / "latest.json", {"dir": final.name, "epoch": epoch, "step": step})
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise XtmError(f"cannot write the checkpoint: {e.strerror or e}", path=e.filename or final) from None
    # Prune old checkpoints only after the new one is live.
    older = sorted(p for p in root.glob("epoch-*") if p.is_dir() and p != final)
    for p in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return final


def _pointer(root: Path, problems: list[str]) -> Path | None:
    """The directory latest.json names, or None (with the reason in `problems` when it is bad)."""
    pointer = root / "latest.json"
    if not pointer.exists():
        return None
    try:
        name = read_json(pointer)["dir"]
    except XtmError as e:
        problems.append(f"latest.json is unreadable ({e.reason})")
        return None
    except (KeyError, TypeError) as e:
        problems.append(f"latest.json is unreadable ({type(e).__name__}: {e})")
        return None
    if not isinstance(name, str) or "/" in name or not name.startswith("epoch-"):
        problems.append(f"latest.json names {name!r}, which is not a checkpoint directory")
        return None
    if not (root / name).is_dir():
        problems.append(f"latest.json points to {name}, which does not exist")
        return None
    return root / name


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    """The directory latest.json points to (None without a pointer); a bad pointer is an error."""
    problems: list[str] = []
    d = _pointer(RunDir(run_dir).checkpoints, problems)
    if problems:
        raise XtmError(problems[0], path=RunDir(run_dir).checkpoints / "latest.json")
    return d


def load_checkpoint(path: Path, required: Sequence[str] = ()) -> Checkpoint:
    """Load a checkpoint directory, or a run directory's latest usable checkpoint.

    For a run directory, a damaged latest checkpoint is reported as a warning and the previous
    complete one is used. `required`: state.json keys the caller needs (a checkpoint without
    them counts as damaged).
    """
    path = Path(path)
    if RunDir(path).checkpoints.is_dir() or not (path / "state.json").exists():
        return _load_latest(path, required)
    return _load_dir(path, required)


def _load_latest(run_dir: Path, required: Sequence[str]) -> Checkpoint:
    root = RunDir(run_dir).checkpoints
    problems: list[str] = []
    pointed = _pointer(root, problems)
    dirs = sorted((p for p in root.glob("epoch-*") if p.is_dir()), reverse=True)
    order = ([pointed] if pointed is not None else []) + [d for d in dirs if d != pointed]
    if not order and not problems:
        raise XtmError("no checkpoint found (expected checkpoints/latest.json)", path=run_dir)
    for d in order:
        try:
            ckpt = _load_dir(d, required)
        except XtmError as e:
            problems.append(f"{d.name}: {e.reason}")
            continue
        if problems:
            logger.warning(f"{root}: {'; '.join(problems)}. Using the previous complete checkpoint, {d.name}.")
        return ckpt
    raise XtmError("no usable checkpoint: " + "; ".join(problems), path=root)


def _read_state(d: Path, required: Sequence[str]) -> dict[str, Any]:
    f = d / "state.json"
    try:
        text = f.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise XtmError(f"state.json is unreadable ({e})", path=d) from None
    if not text.strip():
        raise XtmError("state.json is empty", path=d)
    try:
        state = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise XtmError(f"state.json is not valid JSON ({e})", path=d) from None
    if not isinstance(state, dict):
        raise XtmError("state.json does not hold a JSON object", path=d)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise XtmError(f"checkpoint format {state.get('format')} is not supported "
                       f"(this xtm reads format {CHECKPOINT_FORMAT})", path=d)
    epoch = state.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise XtmError(f"state.json: epoch must be a non-negative integer, got {epoch!r}", path=d)
    opt = state.get("optimizer")
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list):
        raise XtmError("state.json: the optimizer settings are missing", path=d)
    missing = [k for k in required if k not in state]
    if missing:
        raise XtmError(f"state.json lacks {', '.join(missing)}", path=d)
    return state


def _read_tensors(d: Path, name: str, expected: dict[str, Any] | None) -> dict[str, torch.Tensor]:
    try:
        data = (d / name).read_bytes()
    except OSError as e:
        raise XtmError(f"{name} is unreadable ({e.strerror or e})", path=d) from None
    if expected is not None:
        # Written last, state.json knows what each tensor file held: a truncated or modified copy
        # is caught here even where the safetensors header would still parse.
        if len(data) != expected.get("bytes") or hashlib.sha256(data).hexdigest() != expected.get("sha256"):
            raise XtmError(f"{name} is damaged ({len(data)} bytes, expected {expected.get('bytes')}; checksum "
                           "mismatch: truncated or modified)", path=d)
    try:
        return load_tensors(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError for any bad file
        raise XtmError(f"{name} is damaged ({type(e).__name__}: {e})", path=d) from None


def _load_dir(d: Path, required: Sequence[str]) -> Checkpoint:
    for name in (*TENSOR_FILES, "state.json"):
        if not (d / name).is_file():
            raise XtmError(f"checkpoint is missing {name}", path=d)
    state = _read_state(d, required)
    files = state.get("files") if isinstance(state.get("files"), dict) else {}
    model = _read_tensors(d, "model.safetensors", files.get("model.safetensors"))
    optimizer = _read_tensors(d, "optimizer.safetensors", files.get("optimizer.safetensors"))
    return Checkpoint(epoch=state["epoch"], state=state, model=model, optimizer=optimizer, path=d)


def restore_optimizer(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Optimizer state and the RNG states training continues from."""
    tensors = {k: v for k, v in ckpt.optimizer.items() if k.startswith("state.")}
    try:
        optimizer.load_state_dict(_unflatten_optimizer(tensors, ckpt.state["optimizer"]))
        if RNG_TORCH in ckpt.optimizer:
            torch.set_rng_state(ckpt.optimizer[RNG_TORCH])
        if RNG_CUDA in ckpt.optimizer and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt.optimizer[RNG_CUDA])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise XtmError(f"the optimizer state does not fit this model ({type(e).__name__}: {e})",
                       path=ckpt.path) from None


def train_buffers(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """Batch-norm running statistics as training left them (empty for checkpoints without them)."""
    return {k[len(TRAIN_BUFFER):]: v for k, v in ckpt.optimizer.items() if k.startswith(TRAIN_BUFFER)}


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


def numpy_rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError) as e:
        raise XtmError(f"checkpoint: the saved numpy RNG state is unusable ({e})") from None
    return rng


def load_trained_model(run_dir: str | Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """A finished run's config.json and its trained model (latest usable checkpoint), in eval mode.

    The one entry for what consumes a run's model (export, the contextual fit): they need neither
    the checkpoint's layout nor how a model is rebuilt.
    """
    from xtm.models_zoo.registry import model_from_state

    run = RunDir(run_dir)
    config = run.load_config()
    ckpt = load_checkpoint(run.path, required=("model_config",))
    try:
        model = model_from_state(ckpt.state["model_config"], ckpt.model)
    except XtmError as e:
        raise XtmError(e.reason, path=e.path or ckpt.path) from None
    return config, model.eval()

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
complete (xtm.atomic.staged_directory); only then does latest.json move to it. Older directories beyond `keep`
are removed.
The names (directories and latest.json) are xtm.run_dir's, which lists them without torch; this module owns
what is inside. Only names of that form are checkpoints (`xtm.run_dir.is_checkpoint_name`): a user's copy beside them
("epoch-000003-best") is never pruned, listed or loaded. They sort in training order by their numbers
(`checkpoint_order`), so "the previous checkpoint" is the previous name.

Loading a run's checkpoint checks what can go wrong on disk (a truncated or modified tensor file,
an empty or garbled state.json, a pointer to a missing directory) and falls back to the previous
complete checkpoint with a warning naming what was wrong; only when none is usable is it an error.
What is read back is checked before it is used (`restore_optimizer`, `numpy_rng_from_state`): an edited
optimizer state of the wrong shape would have the fused Adam kernel read out of bounds, and a numpy
generator state out of range is an OverflowError.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as serialize_tensors

from xtm.atomic import foreign_entries, staged_directory, temporary_names, write_json
from xtm.errors import XtmError
from xtm.json_files import read_json
from xtm.models_zoo.base import unique_state_dict
from xtm.run_dir import CHECKPOINT_POINTER, RunDir, checkpoint_name, checkpoint_order, is_checkpoint_name

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
    try:
        # Written beside `final` under a name of xtm.atomic's (a killed save's leftover, of any checkpoint, is
        # cleared by the next save; a user's `.tmp-epoch-000003` is not one), swapped in whole.
        with staged_directory(final, sweep=is_checkpoint_name) as tmp:
            files = {"model.safetensors": _write_synced(tmp / "model.safetensors",
                                                        serialize_tensors(unique_state_dict(model)))}
            opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
            opt_tensors[RNG_TORCH] = torch_rng if torch_rng is not None else torch.get_rng_state()
            if cuda_rng is not None:
                opt_tensors[RNG_CUDA] = cuda_rng.cpu()
            for k, v in (train_buffers or {}).items():
                opt_tensors[TRAIN_BUFFER + k] = v.detach().cpu().contiguous()
            files["optimizer.safetensors"] = _write_synced(tmp / "optimizer.safetensors",
                                                           serialize_tensors(opt_tensors))
            write_json(tmp / "state.json", {"format": CHECKPOINT_FORMAT, "epoch": epoch, "optimizer": opt_meta,
                                            **state, "files": files})
            _move_aside_unless_ours(root, final)
        write_json(root / CHECKPOINT_POINTER, {"dir": final.name, "epoch": epoch, "step": step})
    except OSError as e:
        raise XtmError(f"cannot write the checkpoint: {e.strerror or e}", path=e.filename or final) from None
    # Prune old checkpoints only after the new one is live; only xtm's names (never a user's copy), and
    # never through a symbolic link.
    older = [p for p in _checkpoint_dirs(root) if p != final and not p.is_symlink()]
    for p in older[: max(0, len(older) - (keep - 1))]:
        if (foreign := _not_ours(p)):
            # a user's notes or a copy saved beside a checkpoint's files would go with it (said once a directory)
            if str(p) not in _KEPT:
                _KEPT.add(str(p))
                logger.warning(f"kept {p}: it holds what xtm did not write ({', '.join(foreign[:3])}); delete it "
                               "when done with it")
            continue
        shutil.rmtree(p, ignore_errors=True)
    return final


def _move_aside_unless_ours(root: Path, final: Path) -> None:
    """The same position saved again (a stop right after a periodic checkpoint, a resume of a finished run): its
    directory is replaced, unless it holds what xtm did not write (a user's notes or an export saved inside it were
    deleted with it) or is a link, which is moved to a name of its own first."""
    if not os.path.lexists(final):
        return
    if final.is_symlink() or _not_ours(final):
        kept = _free_name(root, f"{final.name}-kept")
        final.rename(kept)
        logger.warning(f"moved {final} to {kept}: it holds what xtm did not write "
                       f"({', '.join(_not_ours(kept)[:3]) or 'a symbolic link'}), and checkpoint "
                       f"{final.name} is written again; delete it when done with it")


_OWN_FILES = frozenset({*TENSOR_FILES, "state.json"})
# a temporary an atomic write left of one of them (a process killed while it wrote it): ours too
_OWN_TEMPORARY = temporary_names("|".join(map(re.escape, sorted(_OWN_FILES))))
_KEPT: set[str] = set()


def _not_ours(d: Path) -> list[str]:
    """The entries of checkpoint directory `d` that save_checkpoint does not write (a directory, a link or another
    name), sorted; empty when every entry is its own regular file, a temporary of one, or a desktop's metadata (a
    Finder's .DS_Store kept a checkpoint of gigabytes for good). An unreadable directory lists nothing, as
    nothing in it could be removed either."""
    try:
        return foreign_entries(d, _is_own_file)
    except OSError:
        return []


def _is_own_file(name: str) -> bool:
    return name in _OWN_FILES or _OWN_TEMPORARY.fullmatch(name) is not None


def _free_name(root: Path, base: str) -> Path:
    """`root/base`, or `root/base-2`, `-3`, ...: the first that does not exist (nothing is ever replaced)."""
    path, n = root / base, 1
    while path.exists() or path.is_symlink():
        n += 1
        path = root / f"{base}-{n}"
    return path


def _checkpoint_dirs(root: Path) -> list[Path]:
    """The checkpoint directories under `root`, oldest first; other entries (a user's "epoch-000003-best")
    are not checkpoints."""
    try:
        entries = list(root.iterdir())
    except OSError:  # no checkpoints/ yet
        return []
    return sorted((p for p in entries if is_checkpoint_name(p.name) and p.is_dir()),
                  key=lambda p: checkpoint_order(p.name))


def _pointer(root: Path, problems: list[str]) -> Path | None:
    """The directory latest.json names, or None (with the reason in `problems` when it is bad)."""
    pointer = root / CHECKPOINT_POINTER
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
    if not isinstance(name, str) or not is_checkpoint_name(name):
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
        raise XtmError(problems[0], path=RunDir(run_dir).checkpoints / CHECKPOINT_POINTER)
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
    dirs = _checkpoint_dirs(root)[::-1]
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
    # What a resumed run carries on and writes at its end: damage here was a TypeError after every epoch was
    # trained, at every later resume too.
    history, seconds = state.get("history"), state.get("epoch_seconds")
    if history is not None and not (isinstance(history, list) and all(isinstance(h, dict) for h in history)):
        raise XtmError(f"state.json: history must be a list of objects, got {_short(history)}", path=d)
    if seconds is not None and not (isinstance(seconds, list) and all(_is_finite_number(x) for x in seconds)):
        raise XtmError(f"state.json: epoch_seconds must be a list of numbers, got {_short(seconds)}", path=d)
    if "numpy_rng" in required:
        # A resume continues from these generator states: one numpy cannot take is this checkpoint's damage
        # (the previous one is used), not an OverflowError once training is set up.
        partial = state.get("partial")
        rng_states = [("numpy_rng", state["numpy_rng"])]
        if isinstance(partial, dict) and "rng_start" in partial:
            rng_states.append(("partial.rng_start", partial["rng_start"]))
        for field, rng_state in rng_states:
            if problem := _numpy_rng_problem(rng_state):
                raise XtmError(f"state.json: {field}{problem}", path=d)
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
    """Optimizer state and the RNG states training continues from.

    The saved state is checked against `optimizer` first (`_checked_optimizer_state`): torch's
    load_state_dict takes a tensor of any shape, and the fused Adam kernel then reads or writes past its
    end (a segmentation fault: the process dies without a word), or, the same number of values in another
    shape, trains on them as if they were the parameter's."""
    saved = _checked_optimizer_state(optimizer, ckpt)
    try:
        optimizer.load_state_dict(saved)
        if RNG_TORCH in ckpt.optimizer:
            torch.set_rng_state(ckpt.optimizer[RNG_TORCH])
        if RNG_CUDA in ckpt.optimizer and torch.cuda.is_available():
            torch.cuda.set_rng_state(ckpt.optimizer[RNG_CUDA])
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise XtmError(f"the optimizer state does not fit this model ({type(e).__name__}: {e})",
                       path=ckpt.path) from None


# How this process runs a step, not the state of training: taken from this run's optimizer, not the
# checkpoint (one saved where the fused kernel ran resumes where it does not, and an edited "capturable"
# or "fused" must not choose a kernel for this device).
_IMPLEMENTATION_SETTINGS = ("foreach", "fused", "capturable", "differentiable")
# Group settings that are rates or weights: a negative one is no setting torch's Adam accepts.
_NON_NEGATIVE_SETTINGS = ("lr", "lr_scale", "eps", "weight_decay")
# (at most 9 digits: int() refuses a number of thousands, and no model has a billion parameter tensors)
_STATE_KEY = re.compile(r"state\.([0-9]{1,9})\.(.+)")
_DOES_NOT_FIT = ("the checkpoint's optimizer state does not fit this model (edited, or from another model): "
                 "resume from another checkpoint, or start a new run in another --out")


def _bad_optimizer_state(ckpt: Checkpoint, what: str) -> XtmError:
    return XtmError(f"{what}: {_DOES_NOT_FIT}", path=ckpt.path)


def _short(value: Any) -> str:
    """repr of a value from a file, cut to a length an error line can hold (a 4,000-digit integer)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _shown(key: str) -> str:
    """A tensor's name from a file as an error line shows it: as it is when plain, else escaped (repr), so
    that a name holding terminal escapes reaches no terminal."""
    return key if key.isascii() and key.isprintable() and len(key) <= 100 else _short(key)


def _parameters(n: int) -> str:
    return f"{n} parameter" + ("" if n == 1 else "s")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_finite_number(x: Any) -> bool:
    """A JSON number a float holds: not NaN or infinite, and not an integer too large for one (10**400, which
    math.isfinite and torch raise OverflowError for)."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def _setting_problem(key: str, value: Any, current: Any) -> str | None:
    """What is wrong with a saved group setting, judged by this run's value of it (None: nothing)."""
    if isinstance(current, bool) or current is None:
        return None if isinstance(value, bool) or value is None else f"is {_short(value)}, not true or false"
    if isinstance(current, int | float) or torch.is_tensor(current):
        if not _is_finite_number(value):
            return f"is {_short(value)}, not a finite number"
        return f"is {value!r}, below 0" if key in _NON_NEGATIVE_SETTINGS and value < 0 else None
    if isinstance(current, tuple | list):
        if (not isinstance(value, list | tuple) or len(value) != len(current)
                or not all(_is_finite_number(v) for v in value)):
            return f"is {_short(value)}, not {len(current)} finite numbers"
        if key == "betas" and not all(0 <= v < 1 for v in value):
            return f"is {value!r}, not within [0, 1)"
        return None
    if isinstance(current, str) and not isinstance(value, str):
        return f"is {_short(value)}, not a string"
    return None


def _checked_groups(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> list[dict[str, Any]]:
    """The saved parameter groups (state.json), checked against the optimizer's: as many, each with as many
    parameters, every setting of the type (and range) this run's has."""
    saved, current = ckpt.state["optimizer"]["param_groups"], optimizer.param_groups
    if len(saved) != len(current):
        raise _bad_optimizer_state(ckpt, f"state.json: optimizer.param_groups has {len(saved)} groups, this "
                                         f"run's optimizer {len(current)}")
    groups: list[dict[str, Any]] = []
    for i, (group, ours) in enumerate(zip(saved, current, strict=True)):
        where = f"state.json: optimizer.param_groups[{i}]"
        params = group.get("params") if isinstance(group, dict) else None
        if not isinstance(params, list) or not all(_is_int(x) and x >= 0 for x in params):
            raise _bad_optimizer_state(ckpt, f"{where}.params is not a list of parameter numbers")
        if len(params) != len(ours["params"]):
            raise _bad_optimizer_state(ckpt, f"{where} has {_parameters(len(params))}, this run's optimizer "
                                             f"{_parameters(len(ours['params']))}")
        for key, value in group.items():
            if key != "params" and key in ours and (problem := _setting_problem(key, value, ours[key])):
                raise _bad_optimizer_state(ckpt, f"{where}.{key} {problem}")
        groups.append({**group, **{k: ours[k] for k in _IMPLEMENTATION_SETTINGS if k in ours}})
    numbers = [x for g in groups for x in g["params"]]
    if len(set(numbers)) != len(numbers):
        raise _bad_optimizer_state(ckpt, "state.json: optimizer.param_groups lists a parameter number twice")
    return groups


def _state_value_problem(name: str, value: Any, param: torch.Tensor) -> str | None:
    """What is wrong with one per-parameter state value (None: nothing): `step` a whole, finite, non-negative
    scalar; every tensor the parameter's shape, floating point and finite."""
    if name == "step":
        if torch.is_tensor(value):
            if value.dim() != 0 or value.dtype == torch.bool or value.is_complex():
                return f"is a {value.dtype} tensor of shape {list(value.shape)}, not a scalar step count"
            value = value.item()
        if not _is_finite_number(value) or value < 0 or value != math.floor(value):
            return f"is {_short(value)}, not a step count (a whole number from 0)"
        return None
    if not torch.is_tensor(value):
        return None if _is_finite_number(value) else f"is {_short(value)}, not a number"
    if value.shape != param.shape:
        return f"has shape {list(value.shape)}, its parameter {list(param.shape)}"
    if not value.is_floating_point():
        return f"is {value.dtype}, not floating point"
    # (isfinite has no kernel for the 8-bit float types safetensors also stores: those are widened first)
    wide = value if value.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64) else value.float()
    if not bool(torch.isfinite(wide).all()):
        return "holds non-finite values (NaN or infinity)"
    return None


def _checked_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> dict[str, Any]:
    """The checkpoint's optimizer state as load_state_dict takes it, every entry checked against the parameter
    it belongs to; XtmError naming the file and the entry otherwise."""
    groups = _checked_groups(optimizer, ckpt)
    scalars = ckpt.state["optimizer"].get("scalars", {})
    if not isinstance(scalars, dict):
        raise _bad_optimizer_state(ckpt, "state.json: optimizer.scalars is not an object")
    params: dict[int, tuple[torch.Tensor, dict[str, Any]]] = {}  # saved number -> (parameter, its group)
    for group, ours in zip(groups, optimizer.param_groups, strict=True):
        params.update({n: (p, group) for n, p in zip(group["params"], ours["params"], strict=True)})
    entries = [("optimizer.safetensors", k, v) for k, v in ckpt.optimizer.items() if k.startswith("state.")]
    entries += [("state.json: optimizer.scalars", k, v) for k, v in scalars.items()]
    state: dict[int, dict[str, Any]] = {}
    for file, key, value in entries:
        m = _STATE_KEY.fullmatch(key)
        if m is None or int(m.group(1)) not in params:
            raise _bad_optimizer_state(ckpt, f"{file}: {_shown(key)} names no parameter of the optimizer's groups")
        number, name = int(m.group(1)), m.group(2)
        if problem := _state_value_problem(name, value, params[number][0]):
            raise _bad_optimizer_state(ckpt, f"{file}: {_shown(key)} {problem}")
        state.setdefault(number, {})[name] = value
    for number, entry in sorted(state.items()):
        # Adam starts a parameter's state only when it has none: a partial one is read as it is (KeyError).
        if isinstance(optimizer, torch.optim.Adam):
            group = params[number][1]
            needed = {"step", "exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if group.get("amsgrad") else set())
            if missing := sorted(needed - set(entry)):
                raise _bad_optimizer_state(ckpt, f"optimizer.safetensors: state.{number} lacks {', '.join(missing)}")
    return {"state": state, "param_groups": groups}


def train_buffers(ckpt: Checkpoint) -> dict[str, torch.Tensor]:
    """Batch-norm running statistics as training left them (empty for checkpoints without them).

    Each is checked against the saved model's tensor of that name (which was checked against the model
    when loaded): torch's load_state_dict raises a bare RuntimeError for another shape."""
    buffers = {k[len(TRAIN_BUFFER):]: v for k, v in ckpt.optimizer.items() if k.startswith(TRAIN_BUFFER)}
    for name, value in buffers.items():
        saved = ckpt.model.get(name)
        if saved is None:
            problem = "names no tensor of the saved model"
        elif value.shape != saved.shape or value.dtype != saved.dtype:
            problem = (f"is {value.dtype} of shape {list(value.shape)}, the model's {saved.dtype} of shape "
                       f"{list(saved.shape)}")
        elif value.is_floating_point() and not bool(torch.isfinite(value.float()).all()):
            problem = "holds non-finite values (NaN or infinity)"
        else:
            continue
        raise XtmError(f"optimizer.safetensors: {_shown(TRAIN_BUFFER + name)} {problem}: the checkpoint's training "
                       "statistics do not fit its model (edited): resume from another checkpoint, or start a new "
                       "run in another --out", path=ckpt.path)
    return buffers


def numpy_rng_state(rng: np.random.Generator) -> dict[str, Any]:
    return rng.bit_generator.state


# numpy's default generator (np.random.default_rng), the only one a checkpoint holds.
_NUMPY_BIT_GENERATOR = "PCG64"


def _numpy_rng_problem(state: Any) -> str | None:
    """What is wrong with a saved numpy generator state (None: nothing), as the path of the bad field below it
    and why. Checked field by field: numpy raises OverflowError for an integer out of its range, and takes
    some bad values without a word (has_uint32 7, a state of 1.5)."""
    if not isinstance(state, dict):
        return f" is {_short(state)}, not an object"
    if state.get("bit_generator") != _NUMPY_BIT_GENERATOR:
        return f".bit_generator is {_short(state.get('bit_generator'))}, not {_NUMPY_BIT_GENERATOR!r}"
    inner = state.get("state")
    if not isinstance(inner, dict):
        return f".state is {_short(inner)}, not an object"
    for key in ("state", "inc"):
        if not (_is_int(inner.get(key)) and 0 <= inner[key] < 2**128):
            return f".state.{key} is {_short(inner.get(key))}, not an integer from 0 to 2**128 - 1"
    if state.get("has_uint32") not in (0, 1) or isinstance(state.get("has_uint32"), bool):
        return f".has_uint32 is {_short(state.get('has_uint32'))}, not 0 or 1"
    if not (_is_int(state.get("uinteger")) and 0 <= state["uinteger"] < 2**32):
        return f".uinteger is {_short(state.get('uinteger'))}, not an integer from 0 to 2**32 - 1"
    return None


def numpy_rng_from_state(state: Any, field: str = "numpy_rng", path: Path | None = None) -> np.random.Generator:
    """The numpy generator a checkpoint's state.json saved in `field`; XtmError naming state.json and the field
    when it is not a state numpy's default generator can take."""
    if problem := _numpy_rng_problem(state):
        raise XtmError(f"state.json: {field}{problem}: the saved numpy RNG state is unusable", path=path)
    rng = np.random.default_rng()
    try:
        rng.bit_generator.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise XtmError(f"state.json: {field}: the saved numpy RNG state is unusable ({e})", path=path) from None
    return rng


def load_trained_model(run_dir: str | Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """A finished run's config.json and its trained model (latest usable checkpoint), in eval mode.

    The one entry for what consumes a run's model (export, the contextual fit): they need neither
    the checkpoint's layout nor how a model is rebuilt. The config also says which checkpoint the model
    is, under "checkpoint": its "name", "epoch" (completed), "partial" (stopped inside the next one) and
    the "train_config" it was trained with (config.json's is the last command's, which may not have
    reached its checkpoint: a run killed while resumed).
    """
    from xtm.models_zoo.registry import model_from_state

    run = RunDir(run_dir)
    config = run.load_config()
    if config.get(RunDir.INCOMPLETE) is True:
        # (written before the first epoch: the model is a checkpoint's from the middle of training, and the run's
        # topics, metrics and labels are missing or those of an earlier end)
        raise XtmError(f"the run's training has not ended (it was stopped before writing its results: killed?): "
                       f"continue it with xtm-train --out {run.path} --resume", path=run.file(RunDir.CONFIG))
    ckpt = load_checkpoint(run.path, required=("model_config",))
    try:
        model = model_from_state(ckpt.state["model_config"], ckpt.model)
    except XtmError as e:
        raise XtmError(e.reason, path=e.path or ckpt.path) from None
    saved = ckpt.state.get("train_config")
    config = {**config, "checkpoint": {"name": ckpt.path.name, "epoch": ckpt.epoch,
                                       "partial": bool(ckpt.state.get("partial")),
                                       "train_config": saved if isinstance(saved, dict) else None}}
    return config, model.eval()

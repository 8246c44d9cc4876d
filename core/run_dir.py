"""The run directory: which directories are xtm runs, and one writing process per run at a time.

xtm-train writes config.json, metrics.json, report.html, ... into --out. It must never do that
in a directory of the user's that merely happens to be named there, and two processes writing
one run would interleave checkpoints and outputs. So:
  - a directory is a run when it holds RUN_MARKER (written first, before any other output, so a
    run interrupted while loading its data is still recognisably ours) or the lock file, or, for
    runs written before the marker existed, config.json with "xtm_version" or
    checkpoints/latest.json (`is_run_dir`);
  - a process writing a run holds an exclusive flock on RUN_DIR/LOCK_NAME while it writes, with
    its pid and command in the file, so a second process is refused with the holder's name
    (`hold_run_dir`). The kernel drops the lock when the holder exits, however it exits (even
    kill -9), so a stale lock never blocks a later run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import xtm
from xtm.atomic import write_json
from xtm.errors import XtmError

__all__ = ["LOCK_NAME", "RUN_MARKER", "has_checkpoint", "hold_run_dir", "is_run_dir", "lock_dir",
           "refuse_foreign_dir"]

RUN_MARKER = "run.json"
LOCK_NAME = ".xtm.lock"

# Run directories this process holds (resolved path -> [lock fd, depth]): xtm-train --contextual
# holds its run for training and the contextual fit; the inner hold must not lock itself out.
_held: dict[str, list[int]] = {}


def _legacy_config(d: Path) -> bool:
    try:
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "xtm_version" in cfg


def is_run_dir(d: Path) -> bool:
    """Whether `d` was written by xtm-train (its marker, its lock, or an older run's files)."""
    d = Path(d)
    return ((d / RUN_MARKER).is_file() or (d / LOCK_NAME).is_file()
            or (d / "checkpoints" / "latest.json").is_file() or _legacy_config(d))


def has_checkpoint(d: Path) -> bool:
    """Whether the run holds a checkpoint (a pointer, or a complete epoch directory)."""
    root = Path(d) / "checkpoints"
    return (root / "latest.json").exists() or any(p.is_dir() for p in root.glob("epoch-*"))


def refuse_foreign_dir(d: Path, hint: str = "choose a new or empty --out") -> None:
    """Raise unless `d` is absent, an empty directory, or an xtm run: nothing else is ever written to."""
    d = Path(d)
    if not d.exists():
        if d.is_symlink():
            raise XtmError("is a dangling symbolic link", path=d)
        return
    if not d.is_dir():
        raise XtmError("exists and is not a directory", path=d)
    try:
        empty = next(d.iterdir(), None) is None
    except OSError as e:
        raise XtmError(f"cannot read the run directory: {e.strerror or e}", path=d) from None
    if not empty and not is_run_dir(d):
        raise XtmError(f"{d} exists and is not an xtm run directory (it holds other files, which would be "
                       f"overwritten): {hint}")


def _holder(fd: int) -> str:
    """'xtm-train (pid 123)' from the lock file's content, as well as it can be read."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"{info['command']} (pid {int(info['pid'])})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another xtm process (pid unknown)"


def _lock(d: Path, command: str) -> int:
    """Open and flock RUN_DIR/LOCK_NAME, write who holds it; returns the fd (closing it unlocks)."""
    try:
        d.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a lock file that is a symlink must not truncate whatever it points to.
        fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as e:
        raise XtmError(f"cannot write to the run directory: {e.strerror or e}", path=d) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise XtmError(f"{d} is in use by {holder}: wait for it to finish, or stop it") from None
    except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            os.close(fd)
            raise XtmError(f"cannot lock the run directory: {e.strerror or e}", path=d) from None
        print(f"warning: {d}: this file system cannot lock files ({e.strerror}); make sure no other xtm "
              "process writes this run", file=sys.stderr)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode("utf-8"), 0)
    except OSError as e:
        os.close(fd)
        raise XtmError(f"cannot write to the run directory: {e.strerror or e}", path=d) from None
    return fd


@contextmanager
def lock_dir(d: Path, command: str) -> Iterator[Path]:
    """Hold the exclusive lock of directory `d` (created if absent) for the block; re-entrant per process.

    Callers check first that `d` is theirs to write (`hold_run_dir` does): the lock file is created in it.
    """
    d = Path(d)
    key = str(d.resolve())
    if key in _held:
        _held[key][1] += 1
        try:
            yield d
        finally:
            _held[key][1] -= 1
        return
    fd = _lock(d, command)
    _held[key] = [fd, 1]
    try:
        yield d
    finally:
        del _held[key]
        os.close(fd)


@contextmanager
def hold_run_dir(d: Path, command: str) -> Iterator[Path]:
    """Create or open the run directory `d` for writing, exclusively, for the duration of the block.

    Refuses a non-empty directory that is not an xtm run (before writing anything into it) and a
    run another process holds ("DIR is in use by xtm-train (pid N)"); writes the run marker first.
    Re-entrant within one process.
    """
    d = Path(d)
    refuse_foreign_dir(d)
    with lock_dir(d, command):
        marker = d / RUN_MARKER
        if not (marker.exists() or marker.is_symlink()):
            try:
                write_json(marker, {"xtm_run": 1, "xtm_version": xtm.__version__,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_by": command})
            except OSError as e:
                raise XtmError(f"cannot write to the run directory: {e.strerror or e}", path=d) from None
        yield d

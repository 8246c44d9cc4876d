"""The run directory: its format (`RunDir`: every file name, typed load and save), which directories
are xtm runs, and one writing process per run at a time.

xtm-train writes config.json, metrics.json, report.html, ... into --out. It must never do that
in a directory of the user's that merely happens to be named there, and two processes writing
one run would interleave checkpoints and outputs. So:
  - a directory is a run when it holds RUN_MARKER (written first, before any other output, so a
    run interrupted while loading its data is still recognisably ours), or, for runs written
    before the marker existed, config.json with "xtm_version" or checkpoints/latest.json
    (`is_run_dir`). The lock file alone proves nothing: every shard directory holds one too. A
    directory holding nothing but the lock (a run stopped between taking it and writing the
    marker) is written to as an empty one is, and so is one holding only a desktop's .DS_Store
    (`refuse_foreign_dir`);
  - a process writing a run holds an exclusive flock on RUN_DIR/LOCK_NAME while it writes, with
    its pid and command in the file, so a second process is refused with the holder's name
    (`hold_run_dir`). The kernel drops the lock when the holder exits, however it exits (even
    kill -9), so a stale lock never blocks a later run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import re
import threading
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import xtm
from xtm.atomic import atomic_open, foreign_entries, is_plain_file, temporary_names, write_json, write_text
from xtm.config import TOKEN_RULES, TOKEN_RULES_BEFORE_RECORDED, known_token_rules
from xtm.errors import XtmError
from xtm.json_files import read_json

__all__ = ["CHECKPOINT_POINTER", "LOCK_NAME", "RUN_MARKER", "RunDir", "checkpoint_name", "checkpoint_order",
           "has_checkpoint", "has_results_only", "hold_run_dir", "is_checkpoint_name", "is_run_dir", "lock_dir",
           "reading_run", "record_token_rules", "refuse_foreign_dir", "run_token_rules"]

RUN_MARKER = "run.json"
LOCK_NAME = ".xtm.lock"
# The checkpoints' names are here (the run directory's owner; no torch needed to list them), their tensors in
# xtm.trainer.loop.checkpoint. RUN_DIR/checkpoints/latest.json points to the newest complete one.
CHECKPOINT_POINTER = "latest.json"
# The name of a checkpoint directory under RUN_DIR/checkpoints (checkpoint_name): epoch-000010, or
# epoch-000010-step-000037 (stopped 37 steps into epoch 11). Only these are checkpoints, listed, loaded and
# pruned: a user's copy beside them ("epoch-000003-best", "epoch-notes") is not ours.
# At least six digits, not exactly six: the names are zero-padded to six, and a millionth step is written
# with seven (an epoch of 10**8 documents at a batch of 100).
_CHECKPOINT_NAME = re.compile(r"epoch-([0-9]{6,})(?:-step-([0-9]{6,}))?")

logger = logging.getLogger(__name__)

# Run directories this process holds (resolved path -> [lock fd, depth, holding thread, command]): xtm-train
# --contextual holds its run for training and the contextual fit; the inner hold must not lock itself out. Re-entrant
# for the holding thread only: another thread of the process (two xtm.train calls, or an export, in threads) is
# refused as another process is (it trained beside the first, and the two runs' checkpoints mixed).
_held: dict[str, list[Any]] = {}
_held_lock = threading.Lock()


def _held_elsewhere(key: str) -> str | None:
    """The command of another thread of this process that holds run `key`, if one does."""
    entry = _held.get(key)
    return entry[3] if entry is not None and entry[2] != threading.get_ident() else None


def _json_object(path: Path) -> dict[str, Any]:
    """The JSON object in regular file `path`; {} when absent, not a file, unreadable or not an object."""
    if not path.is_file():
        return {}
    try:
        obj = read_json(path)
    except XtmError:
        return {}
    return obj if isinstance(obj, dict) else {}


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """epoch-000010, or epoch-000010-step-000037 for 37 steps into the next epoch (sorts between)."""
    return f"epoch-{epoch:06d}" + (f"-step-{step:06d}" if step is not None else "")


def is_checkpoint_name(name: str) -> bool:
    """Whether `name` is a checkpoint directory's name as xtm writes it (epoch-000010[-step-000037])."""
    return _CHECKPOINT_NAME.fullmatch(name) is not None


def checkpoint_order(name: str) -> tuple[int, int]:
    """Sort key of a checkpoint name in training order: epoch-000003 < epoch-000003-step-000005 (5 steps
    into epoch 4) < epoch-000004, by number (a seven-digit step sorts after a six-digit one)."""
    m = _CHECKPOINT_NAME.fullmatch(name)
    if m is None:
        raise ValueError(f"not a checkpoint name: {name!r}")
    return int(m.group(1)), -1 if m.group(2) is None else int(m.group(2))


def is_run_dir(d: Path) -> bool:
    """Whether `d` was written by xtm-train: its marker (RUN_MARKER with "xtm_run": other tools write a
    run.json too, Sacred's runs beside a config.json and metrics.json), or, for runs older than the
    marker, config.json with "xtm_version" or xtm's checkpoints/latest.json. Not the lock file: xtm-train
    locks its shard directories with the same file, and a shard directory taken for a run would have the
    run's checkpoints deleted by the next rebuild of its shards."""
    d = Path(d)
    pointer = _json_object(d / RunDir.CHECKPOINTS / CHECKPOINT_POINTER)
    return ("xtm_run" in _json_object(d / RUN_MARKER)
            or "xtm_version" in _json_object(d / RunDir.CONFIG)
            or (is_checkpoint_name(str(pointer.get("dir", ""))) and "epoch" in pointer))


def has_checkpoint(d: Path) -> bool:
    """Whether the run holds a checkpoint (a pointer, or a checkpoint directory)."""
    root = Path(d) / RunDir.CHECKPOINTS
    if (root / CHECKPOINT_POINTER).exists():
        return True
    try:
        return any(is_checkpoint_name(p.name) and p.is_dir() for p in root.iterdir())
    except OSError:  # no checkpoints/ (or not a directory): no checkpoint
        return False


def has_results_only(d: Path) -> bool:
    """Whether run `d` holds a training's results (config.json or metrics.json, written when it ended) but no
    checkpoint: a finished run whose checkpoints/ was removed, which nothing can continue and a new training
    would write over. The config.json a training writes before its first epoch (RunDir.INCOMPLETE) is no result:
    a run killed before its first checkpoint is trained again."""
    d = Path(d)
    if has_checkpoint(d):
        return False
    return (d / RunDir.METRICS).is_file() or ((d / RunDir.CONFIG).is_file()
                                              and _json_object(d / RunDir.CONFIG).get(RunDir.INCOMPLETE) is not True)


# What `hold_run_dir` leaves before the marker is in place: the lock, and (killed while writing the marker)
# xtm.atomic's temporary of it, `.run.json.xtm-PID-XXXXXXXX.tmp`.
_MARKER_TMP = temporary_names(re.escape(RUN_MARKER))


def _starting_run_entry(d: Path) -> Callable[[str], bool]:
    """The names a run stopped between taking its lock and writing its marker leaves in `d`: the lock, and
    temporaries of the marker beside it (nothing in it can be overwritten, and the next run takes it on)."""
    locked = is_plain_file(d / LOCK_NAME)
    return lambda name: name == LOCK_NAME or (locked and _MARKER_TMP.fullmatch(name) is not None)


def refuse_foreign_dir(d: Path, hint: str = "choose a new or empty --out") -> None:
    """Raise unless `d` is absent, an empty directory, an xtm run, or one starting (only its lock, maybe a
    temporary of its marker: `_starting_run_entry`): nothing else is ever written to. A desktop's own files
    (.DS_Store, ...) are not counted (xtm.atomic.foreign_entries)."""
    d = Path(d)
    if not d.exists():
        if d.is_symlink():
            raise XtmError("is a dangling symbolic link", path=d)
        return
    if not d.is_dir():
        raise XtmError("exists and is not a directory", path=d)
    try:  # one entry of another's tells it is not empty nor starting (a home directory is not read whole)
        foreign = foreign_entries(d, _starting_run_entry(d), limit=1)
    except OSError as e:
        raise XtmError(f"cannot read the run directory: {e.strerror or e}", path=d) from None
    if foreign and not is_run_dir(d):
        raise XtmError(f"{d} exists and is not an xtm run directory (it holds other files, which would be "
                       f"overwritten): {hint}")


def _holder(fd: int) -> str:
    """'xtm-train (pid 123)' from the lock file's content, as well as it can be read."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"{info['command']} (pid {int(info['pid'])})"
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
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
        logger.warning("%s: this file system cannot lock files (%s); make sure no other xtm process writes "
                       "this run", d, e.strerror)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode("utf-8"), 0)
    except OSError as e:
        os.close(fd)
        raise XtmError(f"cannot write to the run directory: {e.strerror or e}", path=d) from None
    return fd


@contextmanager
def reading_run(d: Path) -> Iterator[Path]:
    """Hold run `d` for reading for the block: refused while a process trains it (xtm-export once exported a run
    that a --resume was still training, half of its state from each epoch), and a training that starts meanwhile is
    refused. A shared lock on the lock file, which is never created here: a run directory one may only read is
    read without one."""
    d = Path(d)
    key = str(d.resolve())
    if (other := _held_elsewhere(key)) is not None:
        raise XtmError(f"{d} is in use by {other} in another thread of this process: wait for it to finish")
    if key in _held:  # this thread holds it for writing (the reader is its own)
        yield d
        return
    try:
        fd = os.open(d / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:  # no lock file (nothing ever held it), a link, or unreadable: nothing to wait for
        yield d
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XtmError(f"{d} is in use by {_holder(fd)}: wait for it to finish, or stop it") from None
        except OSError:  # a file system without locks: as without a lock file
            pass
        yield d
    finally:
        os.close(fd)


@contextmanager
def lock_dir(d: Path, command: str) -> Iterator[Path]:
    """Hold the exclusive lock of directory `d` (created if absent) for the block; re-entrant for the thread that
    holds it (another thread of the process is refused, as another process is).

    Callers check first that `d` is theirs to write (`hold_run_dir` does): the lock file is created in it.
    """
    d = Path(d)
    key = str(d.resolve())
    with _held_lock:
        if (other := _held_elsewhere(key)) is not None:
            raise XtmError(f"{d} is in use by {other} in another thread of this process: wait for it to finish")
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield d
        finally:
            with _held_lock:
                entry[1] -= 1
        return
    with _held_lock:
        if (other := _held_elsewhere(key)) is not None:  # (taken by another thread meanwhile)
            raise XtmError(f"{d} is in use by {other} in another thread of this process: wait for it to finish")
        fd = _lock(d, command)
        _held[key] = [fd, 1, threading.get_ident(), command]
    try:
        yield d
    finally:
        with _held_lock:
            del _held[key]
        os.close(fd)


def run_token_rules(d: Path) -> int:
    """The token rules (xtm.config.TOKEN_RULES) run `d` read its documents with, as its marker records them:
    a resume or a contextual fit after an upgrade rebuilds the same vocabulary. A run whose marker records
    none was made before they were recorded (TOKEN_RULES_BEFORE_RECORDED); a value this xtm does not know (a
    newer xtm's run) is an XtmError."""
    rules = _json_object(Path(d) / RUN_MARKER).get("token_rules")
    if rules is None:
        # A marker without them (deleted and rewritten, or a run from before): the rules config.json records, which
        # runs since they existed write at the end; else the rules before any were recorded. (A deleted run.json
        # read as rules 1 resumed a rules-3 run under other tokenizers.)
        data = _json_object(Path(d) / RunDir.CONFIG).get("data")
        recorded = data.get("token_rules") if isinstance(data, dict) else None
        rules = recorded if known_token_rules(recorded) else TOKEN_RULES_BEFORE_RECORDED
    if not known_token_rules(rules):
        raise XtmError(f"records token rules {rules!r}; this xtm knows 1 to {TOKEN_RULES} (a run made by a newer "
                       "xtm?)", path=Path(d) / RUN_MARKER, field="token_rules")
    return rules


def record_token_rules(d: Path, rules: int) -> None:
    """Record in the marker of run `d` (held) the token rules a new training reads its documents with. A marker
    that is not xtm's own regular file is an XtmError: unrecorded, a later resume would read the documents under
    rules 1 (and through a link, another run's marker would be changed)."""
    marker = Path(d) / RUN_MARKER
    obj = _json_object(marker) if marker.is_file() and not marker.is_symlink() else {}
    if "xtm_run" not in obj:
        raise XtmError("is not xtm's run marker (a regular file holding a JSON object with \"xtm_run\"), so the "
                       "run's token rules cannot be recorded in it: move it away", path=marker)
    if type(obj.get("token_rules")) is not int or obj["token_rules"] != rules:
        write_json(marker, {**obj, "token_rules": rules})


@contextmanager
def hold_run_dir(d: Path, command: str) -> Iterator[Path]:
    """Create or open the run directory `d` for writing, exclusively, for the duration of the block.

    Refuses a non-empty directory that is not an xtm run (before writing anything into it) and a
    run another process holds ("DIR is in use by xtm-train (pid N)"); writes the run marker first.
    Re-entrant for the thread that holds it.
    """
    d = Path(d)
    refuse_foreign_dir(d)
    with lock_dir(d, command):
        marker = d / RUN_MARKER
        if not (marker.exists() or marker.is_symlink()):
            try:
                # No token rules here: the directory may hold a run made before the marker existed (its rules are
                # 1); a new training records its own (record_token_rules).
                write_json(marker, {"xtm_run": 1, "xtm_version": xtm.__version__,
                                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "created_by": command})
            except OSError as e:
                raise XtmError(f"cannot write to the run directory: {e.strerror or e}", path=d) from None
        yield d


class RunDir:
    """A training run's directory: the one owner of its file names and of how each file is read and written.

    Torch-free, so the report, export and any tool can read a run without the training extras. The
    trainer writes through it; export, the report and the contextual fit read through it. Checkpoint
    tensors stay with the trainer (xtm.trainer.loop.checkpoint), under `checkpoints`.
    """

    CONFIG = "config.json"
    # config.json's key while training has not ended (written before the first epoch, replaced at the end)
    INCOMPLETE = "incomplete"
    METRICS = "metrics.json"
    HISTORY = "history.json"
    REPORT_DATA = "report_data.json"
    LABELS = "labels.json"  # topic labels (format: xtm.labels; written by xtm.trainer.labels)
    REPORT = "report.html"
    CHECKPOINTS = "checkpoints"
    CONTEXTUAL = "contextual"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- paths ---------------------------------------------------------------------------------

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / self.CHECKPOINTS

    @property
    def contextual(self) -> Path:
        return self.path / self.CONTEXTUAL

    @property
    def report(self) -> Path:
        return self.path / self.REPORT

    def vocab_path(self, lang: str) -> Path:
        return self.path / f"vocab_{lang}.txt"

    def topics_path(self, lang: str) -> Path:
        return self.path / f"topics_{lang}.txt"

    def refined_topics_path(self, lang: str) -> Path:
        return self.path / f"refined_topics_{lang}.txt"

    def parity_sample_path(self, lang: str) -> Path:
        """Up to 1,000 of the run's documents as bags of words: what xtm-export checks the graphs against, and
        what topic labels are checked against (trainer/labels.py)."""
        return self.path / f"parity_sample_{lang}.npz"

    def topic_files(self) -> dict[str, Path]:
        """{lang: topics_<lang>.txt} for every such file present (language taken from the name)."""
        n = len("topics_")
        return {p.name[n:-len(".txt")]: p for p in sorted(self.path.glob("topics_*.txt"))}

    # -- JSON files ----------------------------------------------------------------------------

    def read_json(self, name: str) -> Any:
        """A JSON file of the run; XtmError naming it when missing, unreadable or not JSON."""
        return read_json(self.path / name, missing=f"{name} is missing: not a (complete) xtm-train run directory")

    def _object(self, name: str) -> dict[str, Any]:
        obj = self.read_json(name)
        if not isinstance(obj, dict):
            raise XtmError("must hold a JSON object", path=self.path / name)
        return obj

    def load_config(self) -> dict[str, Any]:
        """config.json (written when training starts, marked INCOMPLETE until it ends): model, training, data and
        tokenizer settings."""
        if not (self.path / self.CONFIG).exists() and self.path.is_dir():
            raise XtmError("not a finished training run (no config.json): run xtm-train first", path=self.path)
        return self._object(self.CONFIG)

    def save_config(self, config: dict[str, Any]) -> None:
        write_json(self.path / self.CONFIG, config)

    def load_metrics(self) -> dict[str, Any]:
        return self._object(self.METRICS)

    def save_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / self.METRICS, metrics)

    def load_history(self) -> Any:
        return self.read_json(self.HISTORY)

    def save_history(self, history: list[dict[str, Any]]) -> None:
        write_json(self.path / self.HISTORY, history)

    def load_report_data(self) -> Any:
        return self.read_json(self.REPORT_DATA)

    def save_report_data(self, data: dict[str, Any]) -> None:
        write_json(self.path / self.REPORT_DATA, data)

    def load_labels(self, num_topics: int | None = None, langs: list[str] | None = None) -> Any:
        """labels.json as an xtm.labels.TopicLabels (checked against the run's topics and languages when
        given), or None when the run has none; XtmError naming the file when it is damaged."""
        from xtm.labels import TopicLabels

        if not self.has(self.LABELS):
            return None
        return TopicLabels.from_json(self.read_json(self.LABELS), self.path / self.LABELS, num_topics, langs)

    def save_labels(self, labels: Any) -> None:
        """labels: an xtm.labels.TopicLabels."""
        write_json(self.path / self.LABELS, labels.to_json())

    def has(self, name: str) -> bool:
        return (self.path / name).is_file()

    # -- text files ------------------------------------------------------------------------------

    def read_vocab(self, lang: str, expected_size: int | None = None) -> list[str]:
        from xtm.vocabulary import read_vocabulary

        path = self.vocab_path(lang)
        if not path.exists():
            raise XtmError(f"the run has no vocabulary for '{lang}'", path=path)
        return read_vocabulary(path, expected_size)

    def write_vocab(self, lang: str, words: Sequence[str]) -> None:
        from xtm.vocabulary import write_vocabulary

        write_vocabulary(self.vocab_path(lang), words)

    @staticmethod
    def _read_word_lines(path: Path) -> list[list[str]]:
        try:
            return [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            raise XtmError(f"cannot read {path.name}: {e}", path=path) from None

    def read_topics(self, lang: str) -> list[list[str]]:
        """topics_<lang>.txt: line k = topic k's top words."""
        return self._read_word_lines(self.topics_path(lang))

    def write_topics(self, lang: str, topics: Sequence[Sequence[str]]) -> None:
        write_text(self.topics_path(lang), "".join(" ".join(words) + "\n" for words in topics))

    def read_refined_topics(self, lang: str) -> list[list[str]]:
        """refined_topics_<lang>.txt (LLM-XTM phase 2): line k = topic k's voted word set."""
        return self._read_word_lines(self.refined_topics_path(lang))

    def write_refined_topics(self, lang: str, topics: Sequence[Sequence[str]]) -> None:
        write_text(self.refined_topics_path(lang), "".join(" ".join(words) + "\n" for words in topics))

    # -- the parity sample -------------------------------------------------------------------------
    # A few hundred of the run's own documents as bags of words, saved by training, so export checks
    # ONNX against torch on real documents without ever reopening the user's data (which may have
    # moved, changed or be gone).

    def save_parity_sample(self, lang: str, bows: Any) -> None:
        """bows: a scipy CSR matrix [n, V_lang]; stored as plain arrays (no pickle)."""
        import numpy as np

        m = bows.tocsr()
        with atomic_open(self.parity_sample_path(lang), "wb") as f:
            np.savez(f, indptr=m.indptr.astype(np.int64), indices=m.indices.astype(np.int64),
                     data=m.data.astype(np.float32), shape=np.asarray(m.shape, dtype=np.int64))

    def load_parity_sample(self, lang: str, vocab_size: int) -> Any | None:
        """The saved sample as a CSR matrix, or None when the run has none (runs from before it existed)."""
        import numpy as np
        import scipy.sparse as sp

        path = self.parity_sample_path(lang)
        if not path.is_file():
            return None
        try:
            # A sample holds at most PARITY_SAMPLE_DOCS rows of vocab_size columns: a member declaring more
            # values is refused before it is read (an 8 MB compressed file can declare 8 GiB).
            _check_npz_sizes(path, (PARITY_SAMPLE_DOCS + 1) * max(1, vocab_size))
            with np.load(path, allow_pickle=False) as z:
                indptr, indices, data, shape = z["indptr"], z["indices"], z["data"], tuple(int(x) for x in z["shape"])
            m = sp.csr_matrix((data, indices, indptr), shape=shape)
            m.check_format(full_check=True)
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, RuntimeError,
                NotImplementedError) as e:  # (the last two: an encrypted member, an unknown compression)
            raise XtmError(f"damaged parity sample ({e}): delete it to export with random bags", path=path) from None
        if shape[1] != vocab_size:
            raise XtmError(f"parity sample has {shape[1]} columns, the vocabulary {vocab_size}", path=path)
        return m


PARITY_SAMPLE_DOCS = 1000  # bags of words per language that export checks ONNX against torch on


def _check_npz_sizes(path: Path, max_values: int) -> None:
    """ValueError when a member array of the .npz at `path` declares more than `max_values` values or
    object dtype; only the members' headers are read."""
    from xtm.npy_header import read_npy_header

    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            with zf.open(info) as f:
                shape, _, dtype = read_npy_header(f)
            if dtype.hasobject or math.prod(shape) > max_values:
                raise ValueError(f"{info.filename} declares {dtype} {shape}")

"""What training keeps on disk, in a hostile world (second review of issue 13): a shard directory is rebuilt
without deleting what the user put in it, and is never taken for a run; an edited optimizer state or numpy
generator state is one clean error naming the file and the entry, never a crash; only xtm's own checkpoint
directories are pruned, listed and fallen back to. Real runs, real files, real processes."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from command_logging import train_stderr  # noqa: F401  (a fixture)
from safetensors.torch import load_file, save_file

from xtm.atomic import APPLEDOUBLE_MAGIC
from xtm.config import TrainConfig
from xtm.errors import XtmError
from xtm.run_dir import checkpoint_order, has_checkpoint, hold_run_dir, is_run_dir, lock_dir, refuse_foreign_dir
from xtm.trainer.data.sharding import ShardedCorpus, build_shards, open_or_build_shards
from xtm.trainer.loop.checkpoint import load_checkpoint, numpy_rng_from_state
from xtm.trainer.loop.training import train_backbone

TRAIN = [sys.executable, "-m", "xtm.cli.train"]
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}
DS_STORE = b"\x00\x00\x00\x01Bud1" + b"\x00" * 24  # how the Finder's file begins (xtm.atomic)


def cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(TRAIN + args, capture_output=True, text=True, env=ENV, timeout=timeout)


def config(**kw) -> TrainConfig:
    base = dict(model="nmtm", num_topics=6, epochs=2, batch_size=100, seed=3, checkpoint_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def snapshot(d: Path) -> dict[str, object]:
    """Every entry under `d` with its content (a link: its target), except the lock's (each holder writes its
    pid there)."""
    out: dict[str, object] = {}
    for p in sorted(d.rglob("*")):
        rel = str(p.relative_to(d))
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = "dir"
        else:
            out[rel] = None if p.name == ".xtm.lock" else p.read_bytes()
    return out


# ---- A: a shard directory is rebuilt without deleting the user's files, and is no run --------------------

def _note(d: Path) -> None:
    (d / "NOTES.txt").write_text("what I found\n")


def _analysis(d: Path) -> None:
    (d / "analysis").mkdir()
    (d / "analysis" / "plot.py").write_text("print('mine')\n")


def _in_a_language_directory(d: Path) -> None:
    (d / "en" / "notes.txt").write_text("mine\n")


def _empty_folder(d: Path) -> None:
    (d / "figures").mkdir()


def _linked_vocabulary(d: Path) -> None:
    precious = d.parent / "precious.txt"
    precious.write_text("keep me\n")
    (d / "vocab_en.txt").unlink()
    (d / "vocab_en.txt").symlink_to(precious)


def _in_the_spill(d: Path) -> None:
    (d / ".spill").mkdir()
    (d / ".spill" / "keep.txt").write_text("mine\n")


def _orphan_appledouble(d: Path) -> None:
    (d / "._notes.txt").write_bytes(APPLEDOUBLE_MAGIC + b"Mac OS X        ")  # no notes.txt beside it


FOREIGN: dict[str, tuple[Callable[[Path], None], str]] = {
    "a note": (_note, "'NOTES.txt'"),
    "a folder of the user's": (_analysis, "'analysis/'"),
    "a file in a language directory": (_in_a_language_directory, "'en/'"),
    "an empty folder": (_empty_folder, "'figures/'"),
    "a vocabulary that is a link to the user's file": (_linked_vocabulary, "'vocab_en.txt'"),
    "a file in the spill's place": (_in_the_spill, "'.spill/'"),
    "an AppleDouble file with nothing beside it": (_orphan_appledouble, "'._notes.txt'"),
}


@pytest.mark.parametrize("case", list(FOREIGN))
def test_a_rebuild_refuses_a_shard_directory_holding_the_users_files_and_deletes_nothing(
        example_dir: Path, tmp_path: Path, case: str) -> None:
    """Before, a complete index meant the whole directory was ours: a rebuild (the input changed) deleted
    everything in it."""
    spoil, named = FOREIGN[case]
    d = tmp_path / "shards"
    build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False)
    spoil(d)
    before = snapshot(d)
    with pytest.raises(XtmError, match="holds other files than the shards") as e:
        open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, vocab_size=50, progress=False)
    message = str(e.value)
    assert message.startswith(f"{d}: ") and named in message and "move what is yours elsewhere" in message
    assert snapshot(d) == before  # the index too: the refusal comes before anything is deleted
    if case.startswith("a vocabulary that is a link"):
        assert (tmp_path / "precious.txt").read_text() == "keep me\n"
        return  # (its vocabulary no longer matches the index: the shards cannot be reused either)
    # Shards built from the same files and settings are still reused as they are: nothing needs deleting.
    assert len(open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False).langs) == 2
    assert snapshot(d) == before


def test_a_rebuild_replaces_only_the_shard_layout_and_leaves_the_desktops_files(example_dir: Path,
                                                                               tmp_path: Path) -> None:
    d = tmp_path / "shards"
    build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False)
    (d / ".DS_Store").write_bytes(DS_STORE)  # the Finder opened the directory, and a language directory in it
    (d / "en" / ".DS_Store").write_bytes(DS_STORE)
    (d / "en" / "train-00099.npz").write_bytes(b"a shard of an older build")
    (d / ".spill" / "en").mkdir(parents=True)  # what a build killed in its first pass leaves
    (d / ".spill" / "en" / "ids.bin").write_bytes(b"\x00" * 8)
    (d / ".vocab_en.txt.xtm-999999-abcdefgh.tmp").write_text("a vocabulary being written\n")
    open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, vocab_size=50, progress=False)
    assert len(ShardedCorpus(d).languages[0].vocab) == 50
    assert (d / ".DS_Store").read_bytes() == DS_STORE  # nobody's content: left where it was
    index = json.loads((d / "index.json").read_text())["languages"]["en"]
    assert sorted(p.name for p in (d / "en").iterdir()) == sorted(Path(e["file"]).name
                                                                  for e in index["train"] + index["test"])
    assert not (d / ".spill").exists() and not (d / ".building").exists()
    assert not list(d.glob("*.tmp"))


def test_a_shard_directory_with_a_damaged_index_and_the_users_files_names_them(example_dir: Path,
                                                                               tmp_path: Path) -> None:
    d = tmp_path / "shards"
    build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False)
    (d / "index.json").write_text("{")
    _note(d)
    before = snapshot(d)
    with pytest.raises(XtmError, match=r"holds other files \('NOTES.txt'\): choose an empty or new --shard-dir"):
        open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False)
    assert snapshot(d) == before


def test_the_reviewers_reproduction_through_xtm_train(example_dir: Path, tmp_path: Path) -> None:
    """xtm-train --out-of-core --shard-dir SH, a note and a folder put in SH, the input touched, xtm-train again
    on another --out: NOTES.txt and analysis/ were deleted, exit 0. And SH as an --out: taken for a run (it
    holds .xtm.lock), whose checkpoints the next rebuild of the shards would have deleted."""
    data = tmp_path / "docs.jsonl"
    shutil.copy(example_dir / "docs.jsonl", data)
    shards = tmp_path / "sh3"

    def args(out: Path, *extra: str) -> list[str]:
        return ["--data", str(data), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm", "--topics", "6",
                "--threads", "1", "--no-contextual", "-q", "--epochs", "1", "--out", str(out), *extra]

    p = cli(args(tmp_path / "oc3", "--out-of-core", "--shard-dir", str(shards)))
    assert p.returncode == 0, p.stderr
    _note(shards)
    _analysis(shards)
    st = data.stat()
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the input changed: the shards are rebuilt
    before = snapshot(shards)
    p = cli(args(tmp_path / "oc4", "--out-of-core", "--shard-dir", str(shards)))
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert (f"error: {shards}: the shard directory holds other files than the shards: 'NOTES.txt', 'analysis/'"
            in p.stderr), p.stderr
    assert snapshot(shards) == before
    p = cli(args(shards))
    assert p.returncode == 2 and f"error: {shards} exists and is not an xtm run directory" in p.stderr, p.stderr
    assert snapshot(shards) == before  # not even a run marker was added
    (shards / "NOTES.txt").unlink()
    shutil.rmtree(shards / "analysis")
    p = cli(args(tmp_path / "oc5", "--out-of-core", "--shard-dir", str(shards)))
    assert p.returncode == 0, p.stderr


KILLED_AFTER_MARKER = """
import os, signal, sys
from pathlib import Path
from xtm.run_dir import hold_run_dir
with hold_run_dir(Path(sys.argv[1]), "xtm-train"):
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _latest_epoch(run: Path) -> int | None:
    """The epoch latest.json points at (None: no checkpoint yet, or the pointer being replaced)."""
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return None


def _train_then_kill(args: list[str], run: Path, ready: Callable[[], bool]) -> int | None:
    """xtm-train ARGS killed with SIGKILL once `ready()`; the epoch of its newest checkpoint (a stalled machine may
    let it train on before the kill lands), None without one."""
    import time

    p = subprocess.Popen(TRAIN + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        deadline = time.monotonic() + 240
        while not ready() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    return _latest_epoch(run)


def test_a_run_killed_while_it_trains_is_continued_by_a_plain_resume(example_dir: Path, tmp_path: Path) -> None:
    """README: `xtm-train --out RUN --resume` after a crash takes the run's own settings. config.json was written
    only when training ended, so after kill -9 (the OOM killer, a preemption) or a second Ctrl-C right after the
    checkpoint, that resume was refused ("no config.json") and every option had to be typed again (a review)."""
    run = tmp_path / "run"
    data = ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--topics", "6", "--batch-size", "8", "--checkpoint-every", "1", "--no-contextual", "--out", str(run)]
    at = _train_then_kill([*data, "--epochs", "400", "--seed", "5"], run, lambda: (_latest_epoch(run) or 0) >= 2)
    assert at is not None and at >= 2 and not (run / "metrics.json").exists()
    config = json.loads((run / "config.json").read_text())
    assert config["incomplete"] is True and config["train_config"]["epochs"] == 400  # what a plain --resume takes
    # Not an exportable model yet: its training has not ended.
    e = subprocess.run([sys.executable, "-m", "xtm.cli.export", str(run), "--out", str(tmp_path / "b")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    assert e.returncode == 2 and "the run's training has not ended" in e.stderr and "--resume" in e.stderr, e.stderr
    done = cli(["--out", str(run), "--resume", "--epochs", str(at + 2)])
    assert done.returncode == 0, done.stderr
    config = json.loads((run / "config.json").read_text())
    assert "incomplete" not in config and config["train_config"]["seed"] == 5
    assert config["train_config"]["epochs"] == at + 2 and "model_config" in config
    assert config["command"] == {"contextual": None, "no_contextual": True}  # the route it was told: not fitted
    assert json.loads((run / "metrics.json").read_text())["epochs"] == at + 2 and not (run / "contextual").exists()
    # A continuation killed in its turn records its own settings: a plain --resume takes --epochs 400, not the
    # finished run's (it was refused as "checkpoint past the epochs this run asks for", a re-review).
    later = _train_then_kill(["--out", str(run), "--resume", "--epochs", "400"], run,
                             lambda: (_latest_epoch(run) or 0) >= at + 4)
    config = json.loads((run / "config.json").read_text())
    assert later is not None and later >= at + 4 and config["incomplete"] is True
    assert config["train_config"]["epochs"] == 400
    # A resume refused (other documents) leaves the record as it was: the run is still the one it was.
    before = (run / "config.json").read_bytes()
    other = tmp_path / "other.jsonl"
    other.write_text("".join(reversed((example_dir / "docs.jsonl").read_text().splitlines(keepends=True))))
    refused = cli(["--out", str(run), "--resume", "--data", str(other)])
    assert refused.returncode == 2 and (run / "config.json").read_bytes() == before, refused.stderr
    # Killed before its first checkpoint: its early config.json is no finished run's results, it is trained again.
    early = tmp_path / "early"
    assert _train_then_kill([*data[:-1], str(early), "--epochs", "400", "--checkpoint-every", "0"], early,
                            (early / "config.json").exists) is None
    assert json.loads((early / "config.json").read_text())["incomplete"] is True
    again = cli([*data[:-1], str(early), "--epochs", "1"])
    assert again.returncode == 0, again.stderr


def test_the_lock_file_alone_proves_no_run(example_dir: Path, tmp_path: Path) -> None:
    shards = build_shards(example_dir / "docs.jsonl", tmp_path / "shards", shard_size=200, progress=False)
    with lock_dir(shards, "xtm-train"):  # as xtm-train holds every shard directory it builds or reads
        pass
    assert (shards / ".xtm.lock").is_file() and not is_run_dir(shards)
    with pytest.raises(XtmError, match="exists and is not an xtm run directory"):
        refuse_foreign_dir(shards)
    # A run stopped between taking its lock and writing its marker (or while writing it) is taken on again:
    # nothing in it can be overwritten.
    started = tmp_path / "started"
    with lock_dir(started, "xtm-train"):
        pass
    refuse_foreign_dir(started)
    (started / f".run.json.xtm-{2**22 + 1}-abcdefgh.tmp").write_text("{")
    refuse_foreign_dir(started)
    with hold_run_dir(started, "xtm-train"):
        pass
    assert is_run_dir(started)
    # ... but not when anything else is beside the lock.
    other = tmp_path / "other"
    with lock_dir(other, "xtm-train"):
        pass
    (other / "notes.txt").write_text("mine")
    with pytest.raises(XtmError, match="exists and is not an xtm run directory"):
        refuse_foreign_dir(other)
    # A run killed right after it wrote its marker is a run (a real process, kill -9).
    killed = tmp_path / "killed"
    p = subprocess.run([sys.executable, "-c", KILLED_AFTER_MARKER, str(killed)], env=ENV, timeout=120)
    assert p.returncode == -signal.SIGKILL
    assert sorted(x.name for x in killed.iterdir()) == [".xtm.lock", "run.json"]
    assert is_run_dir(killed)
    refuse_foreign_dir(killed)


# ---- B: an edited optimizer or generator state is one clean error ------------------------------------------

@pytest.fixture(scope="module")
def two_epochs(example_corpus, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run's directory: checkpoints after epochs 1 and 2 (latest: epoch-000002)."""
    d = tmp_path_factory.mktemp("two-epochs")
    train_backbone(example_corpus, config(), d)
    return d


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to / "checkpoints" / "epoch-000002"


def _edit_tensors(ckpt: Path, name: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Edit a tensor file and record its new checksum in state.json, as someone who knows the format would."""
    tensors = load_file(str(ckpt / name))
    edit(tensors)
    save_file(tensors, str(ckpt / name))
    data = (ckpt / name).read_bytes()
    state = json.loads((ckpt / "state.json").read_text())
    state["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (ckpt / "state.json").write_text(json.dumps(state))


def _edit_state(ckpt: Path, edit: Callable[[dict], None]) -> None:
    state = json.loads((ckpt / "state.json").read_text())
    edit(state)
    (ckpt / "state.json").write_text(json.dumps(state))


def _transpose(t: dict[str, torch.Tensor]) -> None:
    t["state.0.exp_avg"] = t["state.0.exp_avg"].t().contiguous()  # the same values, another shape


def _set(key: str, value: torch.Tensor) -> Callable[[dict[str, torch.Tensor]], None]:
    return lambda t: t.__setitem__(key, value)


TENSOR_EDITS: dict[str, tuple[Callable[[dict[str, torch.Tensor]], None], str]] = {
    "3x3 exp_avg": (_set("state.0.exp_avg", torch.zeros(3, 3)),
                    r"optimizer.safetensors: state.0.exp_avg has shape \[3, 3\], its parameter \[\d+, \d+\]"),
    "transposed exp_avg": (_transpose, r"state.0.exp_avg has shape \[(\d+), (\d+)\], its parameter \[\2, \1\]"),
    "integer exp_avg_sq": (lambda t: t.__setitem__("state.1.exp_avg_sq", t["state.1.exp_avg_sq"].to(torch.int32)),
                           "state.1.exp_avg_sq is torch.int32, not floating point"),
    "NaN exp_avg": (lambda t: t.__setitem__("state.2.exp_avg", t["state.2.exp_avg"] * float("nan")),
                    r"state.2.exp_avg holds non-finite values"),
    "negative step": (_set("state.0.step", torch.tensor(-1.0)), r"state.0.step is -1.0, not a step count"),
    "fractional step": (_set("state.0.step", torch.tensor(2.5)), r"state.0.step is 2.5, not a step count"),
    "infinite step": (_set("state.0.step", torch.tensor(float("inf"))), r"state.0.step is inf, not a step count"),
    "step of two values": (_set("state.0.step", torch.tensor([3.0, 4.0])),
                           r"state.0.step is a torch.float32 tensor of shape \[2\], not a scalar step count"),
    "no exp_avg_sq": (lambda t: t.pop("state.3.exp_avg_sq"), "optimizer.safetensors: state.3 lacks exp_avg_sq"),
    "state of no parameter": (_set("state.99.exp_avg", torch.zeros(3)),
                              "state.99.exp_avg names no parameter of the optimizer's groups"),
    "training statistics of another shape": (_set("train_buffer.decoders.0.bn.running_mean", torch.zeros(3)),
                                             r"train_buffer.decoders.0.bn.running_mean is torch.float32 of shape "
                                             r"\[3\], the model's torch.float32 of shape \[\d+\]"),
}


@pytest.mark.parametrize("case", list(TENSOR_EDITS))
def test_an_edited_optimizer_state_is_one_error_naming_the_file_and_entry(example_corpus, two_epochs: Path,
                                                                         tmp_path: Path, case: str) -> None:
    """Before: a tensor of another size made the fused Adam kernel read out of bounds (the resumed process
    died of SIGSEGV or SIGBUS); one of the right size and another shape, or a negative step, was trained on."""
    edit, message = TENSOR_EDITS[case]
    ckpt = _copy(two_epochs, tmp_path / "run")
    _edit_tensors(ckpt, "optimizer.safetensors", edit)
    with pytest.raises(XtmError, match=message) as e:
        train_backbone(example_corpus, config(epochs=3), tmp_path / "run", resume=True)
    assert str(e.value).startswith(f"{ckpt}: ")


GROUP_EDITS: dict[str, tuple[Callable[[dict], None], str]] = {
    "a group more": (lambda s: s["optimizer"]["param_groups"].insert(0, dict(s["optimizer"]["param_groups"][0])),
                     r"state.json: optimizer.param_groups has (\d+) groups, this run's optimizer (?!\1)\d+"),
    "a parameter less": (lambda s: s["optimizer"]["param_groups"][0]["params"].pop(),
                         r"state.json: optimizer.param_groups\[0\] has \d+ parameters?, this run's optimizer"),
    "parameters not numbers": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("params", "all"),
                               r"optimizer.param_groups\[0\].params is not a list of parameter numbers"),
    "a parameter listed twice": (lambda s: s["optimizer"]["param_groups"][-1]["params"].__setitem__(
        -1, s["optimizer"]["param_groups"][0]["params"][0]), "lists a parameter number twice"),
    "betas of another type": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", [0.9, "x"]),
                              r"optimizer.param_groups\[0\].betas is \[0.9, 'x'\], not 2 finite numbers"),
    "a beta of 1": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("betas", [0.9, 1.0]),
                    r"betas is \[0.9, 1.0\], not within \[0, 1\)"),
    "an enormous rate": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("lr", 10**400),
                         r"optimizer.param_groups\[0\].lr is 1000.*\.\.\., not a finite number"),
    "a negative eps": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("eps", -1e-8),
                       r"optimizer.param_groups\[0\].eps is -1e-08, below 0"),
    "amsgrad as a string": (lambda s: s["optimizer"]["param_groups"][0].__setitem__("amsgrad", "no"),
                            r"optimizer.param_groups\[0\].amsgrad is 'no', not true or false"),
    "amsgrad without its state": (lambda s: [g.__setitem__("amsgrad", True) for g in s["optimizer"]["param_groups"]],
                                  r"optimizer.safetensors: state.0 lacks max_exp_avg_sq"),
    "scalars not an object": (lambda s: s["optimizer"].__setitem__("scalars", [1]),
                              "state.json: optimizer.scalars is not an object"),
    "an enormous step among the scalars": (lambda s: s["optimizer"].__setitem__("scalars", {"state.0.step": 10**400}),
                                           r"state.json: optimizer.scalars: state.0.step is 1000.*, not a step count"),
    "a state key of 5,000 digits": (lambda s: s["optimizer"].__setitem__("scalars", {f"state.{'9' * 5000}.step": 1}),
                                    r"optimizer.scalars: 'state.9999.*\.\.\. names no parameter"),
}


@pytest.mark.parametrize("case", list(GROUP_EDITS))
def test_edited_optimizer_groups_are_one_error_naming_state_json_and_the_entry(example_corpus, two_epochs: Path,
                                                                              tmp_path: Path, case: str) -> None:
    edit, message = GROUP_EDITS[case]
    ckpt = _copy(two_epochs, tmp_path / "run")
    _edit_state(ckpt, edit)
    with pytest.raises(XtmError, match=message) as e:
        train_backbone(example_corpus, config(epochs=3), tmp_path / "run", resume=True)
    assert str(e.value).startswith(f"{ckpt}: ")


def test_the_optimizer_runs_its_steps_as_this_process_does(example_corpus, two_epochs: Path, tmp_path: Path) -> None:
    """How a step runs (the fused kernel, capturable) is this run's choice, not the checkpoint's: an edited
    "capturable": true resumes exactly as the checkpoint did."""
    reference = train_backbone(example_corpus, config(epochs=3), _copy(two_epochs, tmp_path / "a").parent.parent,
                               resume=True)
    ckpt = _copy(two_epochs, tmp_path / "b")
    _edit_state(ckpt, lambda s: [g.__setitem__("capturable", True) for g in s["optimizer"]["param_groups"]])
    edited = train_backbone(example_corpus, config(epochs=3), tmp_path / "b", resume=True)
    for k, v in reference.model.state_dict().items():
        assert torch.equal(v, edited.model.state_dict()[k]), k


def test_the_reviewers_3x3_exp_avg_through_xtm_train(example_dir: Path, tmp_path: Path) -> None:
    """The reviewer's reproduction (tamper_st.sh): `xtm-train --resume` died of SIGSEGV or SIGBUS."""
    run = tmp_path / "run"
    args = ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--topics", "6", "--threads", "1", "--no-contextual", "-q", "--out", str(run)]
    p = cli([*args, "--epochs", "1"])
    assert p.returncode == 0, p.stderr
    ckpt = run / "checkpoints" / "epoch-000001"
    _edit_tensors(ckpt, "optimizer.safetensors", _set("state.0.exp_avg", torch.zeros(3, 3)))
    p = cli([*args, "--epochs", "2", "--resume"])
    assert p.returncode == 2 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    assert f"error: {ckpt}: optimizer.safetensors: state.0.exp_avg has shape [3, 3], its parameter [" in p.stderr


RNG_EDITS: dict[str, tuple[str, Callable[[dict], None], str]] = {
    "a 61-digit state": ("numpy_rng", lambda r: r["state"].__setitem__("state", 10**60),
                         r"numpy_rng.state.state is 1000.*\.\.\., not an integer from 0 to 2\*\*128 - 1"),
    "a negative increment": ("numpy_rng", lambda r: r["state"].__setitem__("inc", -1),
                             r"numpy_rng.state.inc is -1, not an integer"),
    "a negative has_uint32": ("numpy_rng", lambda r: r.__setitem__("has_uint32", -1),
                              r"numpy_rng.has_uint32 is -1, not 0 or 1"),
    "has_uint32 of 7 (numpy takes it)": ("numpy_rng", lambda r: r.__setitem__("has_uint32", 7),
                                         r"numpy_rng.has_uint32 is 7, not 0 or 1"),
    "a 41-bit uinteger": ("numpy_rng", lambda r: r.__setitem__("uinteger", 2**40),
                          r"numpy_rng.uinteger is 1099511627776, not an integer from 0 to 2\*\*32 - 1"),
    "a fractional state (numpy takes it)": ("numpy_rng", lambda r: r["state"].__setitem__("state", 1.5),
                                            r"numpy_rng.state.state is 1.5, not an integer"),
    "another generator": ("numpy_rng", lambda r: r.__setitem__("bit_generator", "MT19937"),
                          r"numpy_rng.bit_generator is 'MT19937', not 'PCG64'"),
    "inside the epoch": ("partial.rng_start", lambda r: r["state"].__setitem__("state", -5),
                         r"partial.rng_start.state.state is -5, not an integer"),
}


@pytest.mark.usefixtures("train_stderr")
@pytest.mark.parametrize("case", list(RNG_EDITS))
def test_a_numpy_generator_state_out_of_range_is_that_checkpoints_damage(two_epochs: Path, tmp_path: Path,
                                                                         capsys, case: str) -> None:
    """Before: OverflowError, a traceback, for an integer numpy cannot hold; some bad values were taken."""
    field, edit, message = RNG_EDITS[case]
    ckpt = _copy(two_epochs, tmp_path / "run")

    def spoil(state: dict) -> None:
        rng = json.loads(json.dumps(state["numpy_rng"]))
        edit(rng)
        if field == "numpy_rng":
            state["numpy_rng"] = rng
        else:  # a run stopped inside epoch 3: it resumes from the generator as that epoch began
            state["partial"] = {"rng_start": rng}

    _edit_state(ckpt, spoil)
    capsys.readouterr()
    # The previous checkpoint is used, with a warning naming state.json and the field ...
    assert load_checkpoint(tmp_path / "run", required=("model_config", "numpy_rng", "corpus")).epoch == 1
    err = capsys.readouterr().err
    assert "xtm-train: warning:" in err and "epoch-000002: state.json: " in err
    assert re.search(message, err), err
    # ... and the generator itself refuses it by name, never with an OverflowError.
    bad = json.loads((ckpt / "state.json").read_text())
    bad = bad["numpy_rng"] if field == "numpy_rng" else bad["partial"]["rng_start"]
    with pytest.raises(XtmError, match="state.json: " + message.replace(field, "numpy_rng", 1)):
        numpy_rng_from_state(bad)


@pytest.mark.usefixtures("train_stderr")
@pytest.mark.parametrize(("field", "value", "message"), [
    ("history", [1, 2, 3], "history must be a list of objects, got [1, 2, 3]"),
    ("history", "abc", "history must be a list of objects"),
    ("epoch_seconds", ["x"], "epoch_seconds must be a list of numbers"),
    ("epoch_seconds", [float("inf")], "epoch_seconds must be a list of numbers"),
])
def test_a_history_that_is_not_one_is_that_checkpoints_damage(two_epochs: Path, tmp_path: Path, capsys,
                                                              field: str, value: object, message: str) -> None:
    """Before: a TypeError once every epoch had been trained (the run's metrics are built from the history), and
    at every later resume too."""
    ckpt = _copy(two_epochs, tmp_path / "run")
    _edit_state(ckpt, lambda state: state.__setitem__(field, value))
    capsys.readouterr()
    assert load_checkpoint(tmp_path / "run", required=("model_config", "numpy_rng", "corpus")).epoch == 1
    assert f"epoch-000002: state.json: {message}" in capsys.readouterr().err


def test_a_checkpoints_own_numpy_state_is_taken_back_as_it_was(two_epochs: Path) -> None:
    state = json.loads((two_epochs / "checkpoints" / "epoch-000002" / "state.json").read_text())["numpy_rng"]
    assert numpy_rng_from_state(state).bit_generator.state == state


# ---- C: only xtm's checkpoint directories are pruned, listed and fallen back to ---------------------------

def test_pruning_leaves_the_users_copies_beside_the_checkpoints(example_corpus, two_epochs: Path,
                                                                tmp_path: Path) -> None:
    """Before: `cp -r epoch-000002 epoch-000002-best`, then a resume with --checkpoint-every 1 deleted the copy."""
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    root = run / "checkpoints"
    shutil.copytree(root / "epoch-000002", root / "epoch-000002-best")
    (root / "epoch-notes").mkdir()
    (root / "epoch-notes" / "n.txt").write_text("mine")
    (root / "epoch-000001.txt").write_text("mine")
    (root / ".tmp-epoch-mine").mkdir()  # not a name save_checkpoint gives its temporaries
    mine = {n: snapshot(root / n) for n in ("epoch-000002-best", "epoch-notes", ".tmp-epoch-mine")}
    train_backbone(example_corpus, config(epochs=4), run, resume=True)
    assert sorted(p.name for p in root.iterdir()) == [".tmp-epoch-mine", "epoch-000001.txt", "epoch-000002-best",
                                                       "epoch-000003", "epoch-000004", "epoch-notes", "latest.json"]
    assert all(snapshot(root / n) == content for n, content in mine.items())
    assert (root / "epoch-000001.txt").read_text() == "mine"


def test_pruning_keeps_a_checkpoint_that_holds_the_users_file(example_corpus, two_epochs: Path, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """Before: notes saved inside checkpoints/epoch-000002 went with it when a later save pruned it."""
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    root = run / "checkpoints"
    (root / "epoch-000002" / "my_notes.txt").write_text("mine")
    # a desktop's metadata and a temporary of xtm's own keep nothing (a .DS_Store kept gigabytes for good)
    (root / "epoch-000001" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(100))
    (root / "epoch-000001" / ".state.json.xtm-123-abcd1234.tmp").write_text("{")
    with caplog.at_level(logging.WARNING, logger="xtm"):
        train_backbone(example_corpus, config(epochs=5), run, resume=True)
    assert (root / "epoch-000002" / "my_notes.txt").read_text() == "mine"
    assert not (root / "epoch-000003").exists() and not (root / "epoch-000001").exists()  # xtm's own: pruned
    assert caplog.text.count("it holds what xtm did not write (my_notes.txt)") == 1  # once, not at every save


def test_the_same_position_saved_again_keeps_the_users_files_in_it(example_corpus, two_epochs: Path, tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Before: a resume of a finished run (nothing left to train) saves epoch-000002 again, and the old directory,
    with the notes and the export saved inside it, was deleted (a hostile review; pruning already kept them)."""
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    root = run / "checkpoints"
    (root / "epoch-000002" / "NOTES.txt").write_text("mine")
    (root / "epoch-000002" / "exported").mkdir()
    (root / "epoch-000002" / "exported" / "model.onnx").write_bytes(b"onnx")
    (root / "epoch-000002-kept").mkdir()                    # a name taken: never replaced
    with caplog.at_level(logging.WARNING, logger="xtm"):
        train_backbone(example_corpus, config(epochs=2), run, resume=True)
    kept = root / "epoch-000002-kept-2"
    assert (kept / "NOTES.txt").read_text() == "mine" and (kept / "exported" / "model.onnx").read_bytes() == b"onnx"
    assert (kept / "state.json").is_file() and (root / "epoch-000002" / "state.json").is_file()
    assert not (root / "epoch-000002" / "NOTES.txt").exists() and list((root / "epoch-000002-kept").iterdir()) == []
    assert f"moved {root / 'epoch-000002'} to {kept}: it holds what xtm did not write (NOTES.txt, exported)" \
        in caplog.text
    # xtm's own directory at that position is simply replaced, as before (no "-kept" copy)
    train_backbone(example_corpus, config(epochs=2), run, resume=True)
    assert not (root / "epoch-000002-kept-3").exists()


@pytest.mark.usefixtures("train_stderr")
def test_a_bad_pointer_falls_back_to_a_checkpoint_never_to_the_users_copy(two_epochs: Path, tmp_path: Path,
                                                                          capsys) -> None:
    """`epoch-notes` sorts after every checkpoint: with latest.json damaged it was tried first (and, a loadable
    copy, used)."""
    run = tmp_path / "run"
    shutil.copytree(two_epochs, run)
    root = run / "checkpoints"
    shutil.copytree(root / "epoch-000001", root / "epoch-notes")  # loadable: only its name says it is not ours
    (root / "latest.json").write_text("{")
    assert load_checkpoint(run).path.name == "epoch-000002"
    (root / "latest.json").write_text(json.dumps({"dir": "epoch-notes", "epoch": 1}))
    capsys.readouterr()
    assert load_checkpoint(run).path.name == "epoch-000002"
    assert "latest.json names 'epoch-notes', which is not a checkpoint directory" in capsys.readouterr().err
    # A run holding only a user's copy holds no checkpoint, and one without its pointer is found by the names.
    only_copies = tmp_path / "copies"
    (only_copies / "checkpoints").mkdir(parents=True)
    shutil.copytree(root / "epoch-000002", only_copies / "checkpoints" / "epoch-000002-best")
    assert not has_checkpoint(only_copies)
    (root / "latest.json").unlink()
    assert has_checkpoint(run)


def test_checkpoint_names_sort_in_training_order() -> None:
    names = ["epoch-000004", "epoch-000003-step-1000000", "epoch-000003", "epoch-000003-step-000005",
             "epoch-1000000", "epoch-999999"]
    assert sorted(names, key=checkpoint_order) == ["epoch-000003", "epoch-000003-step-000005",
                                                   "epoch-000003-step-1000000", "epoch-000004", "epoch-999999",
                                                   "epoch-1000000"]
    for name in ("epoch-000003-best", "epoch-notes", "epoch-3", "epoch-000003-step-5", "epoch-" + "\u0660" * 6):
        with pytest.raises(ValueError):
            checkpoint_order(name)

"""One rule for "does this directory hold only xtm's files?" (xtm.atomic.foreign_entries), whichever command asks.

Before, seven places answered it with different behaviour: a run directory holding only a Finder .DS_Store was
refused as "not an xtm run directory" while a bundle directory was accepted, and a symlink named like a fit's file
was taken for the fit's in contextual/. Now each kind of directory keeps its own name rule and its own error, and
every one ignores a desktop's metadata and refuses a user's file and a symlink (whatever its name) the same way.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from xtm.atomic import foreign_entries
from xtm.errors import XtmError

DS_STORE = b"\x00\x00\x00\x01Bud1" + bytes(100)  # as the Finder writes it


def _accepted(check: Callable[[], object]) -> bool:
    """True when `check` lets the command go on, False when it refuses with an XtmError."""
    try:
        check()
    except XtmError:
        return False
    return True


@dataclass(frozen=True)
class Kind:
    """A kind of directory xtm replaces or writes into: `make` builds one of xtm's own under a temporary
    directory and returns the directory to plant into; `accepts` says whether xtm would still replace it (or,
    for a checkpoint, prune it); `own_name` is an entry xtm writes there (a symlink of that name is planted);
    `users_name` the name a user's file takes there."""

    make: Callable[[Path], Path]
    accepts: Callable[[Path], bool]
    own_name: str
    users_name: str = "notes.txt"


def _run(tmp: Path) -> Path:
    d = tmp / "run"
    d.mkdir()
    return d


def _run_accepts(d: Path) -> bool:
    from xtm.run_dir import refuse_foreign_dir

    return _accepted(lambda: refuse_foreign_dir(d))


def _bundle(tmp: Path) -> Path:
    from xtm.runtime.bundle import FORMAT, MANIFEST

    d = tmp / "bundle"
    d.mkdir()
    (d / "beta_en.npy").write_bytes(b"not read by the check")
    (d / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": {"beta_en.npy": {}}}))
    return d


def _bundle_accepts(d: Path) -> bool:
    from xtm.runtime.bundle_dir import check_replaceable_bundle_dir

    return _accepted(lambda: check_replaceable_bundle_dir(d))


def _contextual(tmp: Path) -> Path:
    from xtm.trainer.contextual.fit import CONTEXTUAL_FORMAT, META

    d = tmp / "run" / "contextual"
    d.mkdir(parents=True)
    meta = {"format": CONTEXTUAL_FORMAT, "xtm_version": "0", "head_file": "head.safetensors"}
    (d / META).write_text(json.dumps(meta))
    (d / "head.safetensors").write_bytes(b"weights")
    return d


def _contextual_accepts(d: Path) -> bool:
    from xtm.trainer.contextual.fit import check_contextual_replaceable

    return _accepted(lambda: check_contextual_replaceable(d.parent))


def _save(run: Path, epoch: int) -> Path:
    import torch

    from xtm.trainer.loop.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    return save_checkpoint(run, epoch, model, torch.optim.SGD(model.parameters(), lr=0.1), {}, keep=1)


def _checkpoint(tmp: Path) -> Path:
    return _save(tmp / "run", 1)


def _checkpoint_accepts(d: Path) -> bool:
    """Whether the next save prunes checkpoint `d` (keep=1): only one holding nothing but xtm's files."""
    _save(d.parent.parent, 2)
    return not os.path.lexists(d)


def _shards(tmp: Path) -> Path:
    """A shard directory as a build starts it: its lock only (xtm.trainer.run takes it before building)."""
    from xtm.run_dir import LOCK_NAME

    d = tmp / "shards"
    d.mkdir()
    (d / LOCK_NAME).write_text("{}")
    return d


def _shards_accept(d: Path) -> bool:
    from xtm.trainer.data.sharding import _prepare_dir

    return _accepted(lambda: _prepare_dir(d))


def _example(tmp: Path) -> Path:
    d = tmp / "example"
    d.mkdir()
    return d


def _example_accepts(d: Path) -> bool:
    from xtm.examples import write_example

    return _accepted(lambda: write_example(d, docs_per_lang=12))


def _data_dir(tmp: Path) -> Path:
    """xtm.train's data directory as an earlier call left it."""
    from xtm.trainer.api import DOCS_FILE, INPUTS_MARKER

    d = tmp / "run.data"
    d.mkdir()
    (d / INPUTS_MARKER).write_text("written by xtm.train\n")
    (d / DOCS_FILE).write_text("{}\n")
    return d


def _data_dir_accepts(d: Path) -> bool:
    from xtm.trainer.api import check_data_dir

    return _accepted(lambda: check_data_dir(d, d.parent / "run"))


KINDS = {
    "run": Kind(_run, _run_accepts, own_name=".xtm.lock"),
    "bundle": Kind(_bundle, _bundle_accepts, own_name="beta_en.npy"),
    "contextual": Kind(_contextual, _contextual_accepts, own_name="head.safetensors"),
    "checkpoint": Kind(_checkpoint, _checkpoint_accepts, own_name="state.json"),
    "shards": Kind(_shards, _shards_accept, own_name="index.json"),
    # the example writes only its own names and leaves the others alone: a user's file is one of its names
    "example output": Kind(_example, _example_accepts, own_name="docs.jsonl", users_name="docs.jsonl"),
    "xtm.train data_dir": Kind(_data_dir, _data_dir_accepts, own_name="dict.tsv"),
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_directory_is_still_ours_with_a_desktops_metadata_in_it(kind: str, tmp_path: Path) -> None:
    """Before: a run directory (and xtm.train's data_dir) holding only a .DS_Store was refused as not xtm's."""
    d = KINDS[kind].make(tmp_path)
    (d / ".DS_Store").write_bytes(DS_STORE)
    assert KINDS[kind].accepts(d)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_directory_refuses_a_users_file(kind: str, tmp_path: Path) -> None:
    d = KINDS[kind].make(tmp_path)
    (d / ".DS_Store").write_bytes(DS_STORE)
    (d / KINDS[kind].users_name).write_text("mine")
    assert not KINDS[kind].accepts(d)
    assert (d / KINDS[kind].users_name).read_text() == "mine"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("named", ["own", "other"])
def test_each_kind_of_directory_refuses_a_symlink_whatever_its_name(kind: str, named: str, tmp_path: Path) -> None:
    """A link is never xtm's: replacing or writing through it reaches its target, a user's file. Before, a link
    named like a fit's file was taken for the fit's in contextual/, and one named docs.jsonl in xtm.train's
    data_dir was written through."""
    target = tmp_path / "thesis.tex"
    target.write_text("mine")
    d = KINDS[kind].make(tmp_path)
    name = KINDS[kind].own_name if named == "own" else KINDS[kind].users_name
    (d / name).unlink(missing_ok=True)
    (d / name).symlink_to(target)
    assert not KINDS[kind].accepts(d)
    assert target.read_text() == "mine" and (d / name).is_symlink()


def test_a_symlink_where_the_example_was_written_is_refused(tmp_path: Path) -> None:
    """The example's README proves its files there are its own, but not a link at one of its names (its target
    was written) nor a ref_en_zh/ that is a link to someone's directory."""
    from xtm.examples import write_example

    write_example(tmp_path / "ex", docs_per_lang=12)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "ref.en.tok.txt").write_text("mine")
    (tmp_path / "ex" / "dict.tsv").unlink()
    (tmp_path / "ex" / "dict.tsv").symlink_to(mine / "ref.en.tok.txt")
    with pytest.raises(XtmError, match="holds dict.tsv, not written by xtm-example"):
        write_example(tmp_path / "ex", docs_per_lang=12)
    (tmp_path / "ex" / "dict.tsv").unlink()
    os.rename(tmp_path / "ex" / "ref_en_zh", tmp_path / "ref")
    (tmp_path / "ex" / "ref_en_zh").symlink_to(mine, target_is_directory=True)
    with pytest.raises(XtmError, match="holds ref_en_zh, not written by xtm-example"):
        write_example(tmp_path / "ex", docs_per_lang=12)
    assert (mine / "ref.en.tok.txt").read_text() == "mine"


def test_a_users_files_under_the_examples_names_are_listed_in_its_order(tmp_path: Path) -> None:
    from xtm.examples import write_example

    write_example(tmp_path / "ex", docs_per_lang=12)
    (tmp_path / "ex" / "README.txt").write_text("my own readme")  # the proof is gone: every file is in the way
    with pytest.raises(XtmError, match="holds docs.jsonl, unseen.jsonl, dict.tsv, ref_en_zh/ref.en.tok.txt, "
                                       "ref_en_zh/ref.zh.tok.txt, README.txt, not written"):
        write_example(tmp_path / "ex", docs_per_lang=12)


# ---- the helper itself --------------------------------------------------------------------------------------

def test_foreign_entries_judges_by_kind_and_name_and_ignores_a_desktops_metadata(tmp_path: Path) -> None:
    (tmp_path / "ours.txt").write_text("x")
    (tmp_path / "ours_dir").mkdir()
    (tmp_path / "mine.txt").write_text("x")
    (tmp_path / "a_dir_of_ours").write_text("x")   # a file where the rule allows only a directory
    (tmp_path / "ours.link").symlink_to(tmp_path / "ours.txt")
    os.mkfifo(tmp_path / "ours.fifo")               # never opened: lstat only
    (tmp_path / ".DS_Store").write_bytes(DS_STORE)
    (tmp_path / "Thumbs.db").write_text("a user's text named like the desktop's")

    def is_ours(name: str) -> bool:
        return name in {"ours.txt", "ours.link", "ours.fifo"}

    def is_our_dir(name: str) -> bool:
        return name in {"ours_dir", "a_dir_of_ours"}

    assert foreign_entries(tmp_path, is_ours, is_our_dir=is_our_dir) == [
        "Thumbs.db", "a_dir_of_ours", "mine.txt", "ours.fifo", "ours.link"]
    assert "ours_dir" in foreign_entries(tmp_path, is_ours)  # no directory is ours unless the rule says so
    assert len(foreign_entries(tmp_path, is_ours, limit=2)) == 2
    assert foreign_entries(tmp_path, is_ours, among=["ours.txt", "ours.link", "absent"]) == ["ours.link"]
    with pytest.raises(FileNotFoundError):
        foreign_entries(tmp_path / "absent", is_ours)


# ---- B: directories swapped whole, under names only xtm gives ----------------------------------------------

DEAD_PID = 2**22 + 1  # beyond Linux's largest pid_max: no such process


def _leftover(parent: Path, name: str, kind: str, content: str, pid: int = DEAD_PID) -> Path:
    """What a writer killed while replacing `parent/name` leaves: its new directory or the old one set aside."""
    d = parent / f".{name}.xtm-{kind}-{pid}-abcd1234"
    d.mkdir()
    (d / "state.json").write_text(content)
    old = time.time() - 60  # killed a minute ago
    os.utime(d, (old, old))
    return d


def _users_siblings(parent: Path, name: str) -> dict[str, str]:
    """Directories of a user's beside `name`, named as xtm's temporaries once were or nearly are."""
    mine = {}
    for sibling in (f".tmp-{name}", f".tmp-old-{name}", f".{name}.old", f".{name}.tmp", f".{name}.xtm-old-mine",
                    f".{name}.xtm-new-{DEAD_PID}-notmine", f".{name}.xtm-export-abcd1234"):
        (parent / sibling).mkdir()
        (parent / sibling / "notes.txt").write_text(sibling)
        os.utime(parent / sibling, (time.time() - 60,) * 2)
        mine[sibling] = sibling
    return mine


def _assert_kept(parent: Path, mine: dict[str, str]) -> None:
    assert {n: (parent / n / "notes.txt").read_text() for n in mine} == mine


def test_a_staged_directory_replaces_the_old_one_whole_and_leaves_a_users_siblings(tmp_path: Path) -> None:
    from xtm.atomic import staged_directory

    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    mine = _users_siblings(tmp_path, "out")
    with staged_directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.xtm-new-")
        (tmp / "new.txt").write_text("new")
        assert (final / "old.txt").read_text() == "old"  # in place until the block ends
    assert os.listdir(final) == ["new.txt"] and stat.S_IMODE(final.stat().st_mode) == 0o755
    assert sorted(os.listdir(tmp_path)) == sorted(["out", *mine])  # nothing left beside it
    _assert_kept(tmp_path, mine)


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt, SystemExit])
def test_a_staged_directory_is_removed_when_its_block_raises(tmp_path: Path, error: type[BaseException]) -> None:
    from xtm.atomic import staged_directory

    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(error), staged_directory(final) as tmp:
        (tmp / "half.txt").write_text("half")
        raise error()
    assert os.listdir(tmp_path) == ["out"] and os.listdir(final) == ["old.txt"]


KILLED_STAGER = textwrap.dedent("""
    import sys, time
    from xtm.atomic import staged_directory
    with staged_directory(sys.argv[1]) as tmp:
        (tmp / "model.safetensors").write_bytes(b"half")
        print("writing", flush=True)
        time.sleep(60)
""")


def test_a_killed_writers_directory_is_removed_by_the_next_writer(tmp_path: Path) -> None:
    from xtm.atomic import staged_directory

    final = tmp_path / "out"
    p = subprocess.Popen([sys.executable, "-c", KILLED_STAGER, str(final)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"writing\n"
    p.kill()
    p.wait(10)
    left = [n for n in os.listdir(tmp_path) if n.startswith(f".out.xtm-new-{p.pid}-")]
    assert len(left) == 1 and not final.exists()  # kill -9 cannot clean up: the next writer does
    os.utime(tmp_path / left[0], (time.time() - 60,) * 2)
    mine = _users_siblings(tmp_path, "out")
    with staged_directory(final) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert sorted(os.listdir(tmp_path)) == sorted(["out", *mine])
    _assert_kept(tmp_path, mine)


def test_a_swap_cut_between_its_renames_is_undone_by_the_next_writer(tmp_path: Path) -> None:
    """Killed after the old directory was set aside and before the new one took its place: no `out`, both copies
    whole under names of xtm's. The next writer puts the old one back before anything else."""
    from xtm.atomic import staged_directory

    _leftover(tmp_path, "out", "old", "old, whole")
    _leftover(tmp_path, "out", "new", "new, whole")
    with pytest.raises(KeyboardInterrupt), staged_directory(tmp_path / "out"):
        assert (tmp_path / "out" / "state.json").read_text() == "old, whole"
        raise KeyboardInterrupt  # (stopped again: the old directory stays in place)
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "state.json").read_text() == "old, whole"
    # set aside and the new one in place (killed before removing it): the old one goes
    _leftover(tmp_path, "out", "old", "old, whole")
    with staged_directory(tmp_path / "out") as tmp:
        (tmp / "state.json").write_text("newer")
    assert os.listdir(tmp_path) == ["out"] and (tmp_path / "out" / "state.json").read_text() == "newer"


def test_a_leftover_of_a_live_locked_or_young_writer_or_a_link_is_never_removed(tmp_path: Path) -> None:
    from xtm.atomic import staged_directory

    live = _leftover(tmp_path, "out", "new", "a writer still at work", pid=os.getppid())
    locked = _leftover(tmp_path, "out", "new", "written from another pid namespace", pid=DEAD_PID - 1)
    young = _leftover(tmp_path, "out", "new", "its writer has not locked it yet", pid=DEAD_PID - 2)
    os.utime(young)
    (tmp_path / "mine").mkdir()
    link = tmp_path / f".out.xtm-new-{DEAD_PID - 3}-abcd1234"
    link.symlink_to(tmp_path / "mine", target_is_directory=True)
    fd = os.open(locked, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with staged_directory(tmp_path / "out") as tmp:
            (tmp / "state.json").write_text("new")
    finally:
        os.close(fd)
    assert all((d / "state.json").is_file() for d in (live, locked, young))
    assert link.is_symlink() and (tmp_path / "mine").is_dir()


def test_a_users_directories_named_like_the_old_fixed_temporaries_survive_checkpoint_saves(tmp_path: Path) -> None:
    """Before: save_checkpoint assembled in `.tmp-epoch-000003` and set the old copy aside as `.tmp-old-epoch-000003`,
    removing whatever had those names first: a user's directory called so went with them."""
    run = tmp_path / "run"
    root = _save(run, 2).parent
    mine = _users_siblings(root, "epoch-000003")
    for name in (".tmp-epoch-3", ".tmp-epoch-000002"):
        (root / name).mkdir()
        (root / name / "notes.txt").write_text(name)
        mine[name] = name
    for epoch in (3, 3, 4):  # the same position saved again too (a resume of a finished run)
        _save(run, epoch)
    _assert_kept(root, mine)
    assert sorted(os.listdir(root)) == sorted(["epoch-000004", "latest.json", *mine])  # keep=1, nothing else left


def test_a_killed_saves_leftovers_are_cleared_or_put_back_by_the_next_save(tmp_path: Path) -> None:
    """A save killed while writing epoch 3 left its new directory; one killed between the renames of a second
    save of epoch 2 left no epoch-000002, its old copy set aside. The next save, of any position, clears both."""
    import torch

    from xtm.trainer.loop.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    root = _save(run, 2).parent
    os.rename(root / "epoch-000002", root / f".epoch-000002.xtm-old-{DEAD_PID}-abcd1234")
    os.utime(root / f".epoch-000002.xtm-old-{DEAD_PID}-abcd1234", (time.time() - 60,) * 2)
    _leftover(root, "epoch-000003", "new", "half")
    model = torch.nn.Linear(2, 2)
    save_checkpoint(run, 4, model, torch.optim.SGD(model.parameters(), lr=0.1), {}, keep=3)
    assert sorted(os.listdir(root)) == ["epoch-000002", "epoch-000004", "latest.json"]
    assert load_checkpoint(root / "epoch-000002").epoch == 2


def test_save_shard_never_writes_through_a_fixed_name(tmp_path: Path) -> None:
    """Before: save_shard wrote `.train-00000.npz.tmp` and renamed it: a file of that name was overwritten and
    moved into the shard's place. Now xtm.atomic's temporary, which the shard layout knows as its own."""
    import numpy as np
    import scipy.sparse as sp

    from xtm.trainer.data.shard_format import SHARD_NAME, load_shard, save_shard

    (tmp_path / ".train-00000.npz.tmp").write_text("mine")
    m = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 2.0]], np.float32))
    save_shard(tmp_path / "train-00000.npz", m, np.array([0, 1]))
    assert (tmp_path / ".train-00000.npz.tmp").read_text() == "mine"
    assert sorted(os.listdir(tmp_path)) == [".train-00000.npz.tmp", "train-00000.npz"]
    back, labels = load_shard(tmp_path / "train-00000.npz", rows=2, cols=2, num_labels=2)
    assert (back != m).nnz == 0 and labels is not None and labels.tolist() == [0, 1]
    assert SHARD_NAME.fullmatch(f".train-00000.npz.xtm-{os.getpid()}-abcd1234.tmp")

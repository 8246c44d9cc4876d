"""xtm.atomic on what really sits at a path: regular files, new paths, symlinks, FIFOs, character devices,
directories, unwritable places; and the temporaries a killed writer leaves behind.

Tests run as root here: /dev/null is only ever written to, and asserted to stay a character device.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from xtm.atomic import APPLEDOUBLE_MAGIC, atomic_open, check_replaceable, is_desktop_metadata, write_text
from xtm.errors import XtmError


def litter(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp"))


def test_regular_file_is_replaced_whole_and_keeps_its_permissions(tmp_path: Path) -> None:
    p = tmp_path / "out.txt"
    p.write_text("old")
    os.chmod(p, 0o600)  # a private file must not become world-readable when rewritten
    write_text(p, "new")
    assert p.read_text() == "new"
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert litter(tmp_path) == []


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(p) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert p.read_text() == "old" and litter(tmp_path) == []


def test_symlink_is_followed_and_its_target_replaced(tmp_path: Path) -> None:
    real = tmp_path / "data" / "real.txt"
    real.parent.mkdir()
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)  # the link is still a link
    assert real.read_text() == "new"
    assert litter(tmp_path) == [] and litter(real.parent) == []


def test_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.txt"
    link.symlink_to(tmp_path / "target.txt")
    write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "target.txt").read_text() == "x"


def test_fifo_is_written_in_place(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    with atomic_open(fifo, "wb") as f:
        f.write(b"through the pipe\n")
    reader.join(10)
    assert got == [b"through the pipe\n"]
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # still a FIFO, not a regular file
    assert litter(tmp_path) == []


def _private_null(tmp_path: Path) -> Path:
    """A character device node (1, 3: the null device) of our own, so a broken atomic_open replaces
    this node in a temp dir, never the system's /dev/null."""
    node = tmp_path / "null"
    try:
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod not permitted here")
    return node


def test_character_device_is_written_in_place(tmp_path: Path) -> None:
    node = _private_null(tmp_path)
    with atomic_open(node, "wb") as f:
        f.write(b"discarded\n")
    write_text(node, "discarded too")
    assert stat.S_ISCHR(os.lstat(node).st_mode) and os.lstat(node).st_rdev == os.makedev(1, 3)
    assert litter(tmp_path) == []


def test_dev_null_stays_a_character_device(tmp_path: Path) -> None:
    # The same check on a private node first: only an atomic_open that passes it may touch /dev/null.
    node = _private_null(tmp_path)
    write_text(node, "x")
    assert stat.S_ISCHR(os.lstat(node).st_mode), "atomic_open replaces devices: not trying /dev/null"
    before = os.stat("/dev/null")
    with atomic_open("/dev/null", "wb") as f:
        f.write(b"discarded\n")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert not any(n.startswith(".null.") for n in os.listdir("/dev"))


def test_symlink_to_a_fifo_writes_into_the_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    write_text(link, "via link")
    reader.join(10)
    assert got == [b"via link"] and link.is_symlink() and stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_directory_and_unwritable_places_are_clean_errors(tmp_path: Path) -> None:
    with pytest.raises(XtmError, match="is a directory"):
        write_text(tmp_path, "x")
    ro = tmp_path / "ro"
    ro.mkdir()
    # Root ignores permission bits: a read-only bind is not available, /proc is never writable.
    with pytest.raises(XtmError, match=r"/proc/xtm-out\.txt: cannot write"):
        write_text("/proc/xtm-out.txt", "x")
    with pytest.raises(XtmError, match="cannot write"):
        write_text("/proc/self/status", "x")
    assert "xtm-out" not in " ".join(os.listdir("/proc"))


def test_socket_is_refused(tmp_path: Path) -> None:
    import socket

    path = tmp_path / "sock"
    s = socket.socket(socket.AF_UNIX)
    try:
        s.bind(str(path))
        with pytest.raises(XtmError, match="socket"):
            write_text(path, "x")
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        s.close()


def test_check_replaceable_lets_through_only_what_destroys_nothing_of_a_users(tmp_path: Path) -> None:
    """The one rule behind xtm-infer's and xtm-report's --out: absent, a link to nothing, a FIFO, a device, an
    empty file, or a file the command recognises pass; anything else is refused before any work, and the
    recogniser is never asked about what it cannot be (a FIFO would block a reader)."""
    asked: list[Path] = []

    def ours(p: Path) -> bool:
        asked.append(p)
        return p.read_bytes().startswith(b"OURS")

    def check(p: Path) -> None:
        check_replaceable(p, ours, what="a test output", hint="choose another --out")

    fifo, empty, mine, theirs = tmp_path / "pipe", tmp_path / "empty", tmp_path / "mine", tmp_path / "theirs"
    os.mkfifo(fifo)
    empty.touch()
    mine.write_bytes(b"OURS and more")
    theirs.write_bytes(b"my thesis")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    (tmp_path / "to-theirs").symlink_to(theirs)
    for ok in (tmp_path / "absent", tmp_path / "dangling", fifo, Path("/dev/null"), empty, mine):
        check(ok)
    assert asked == [mine]
    for bad in (theirs, tmp_path / "to-theirs"):
        with pytest.raises(XtmError, match=r"exists and is not a test output \(it would be replaced\): choose another"):
            check(bad)
    with pytest.raises(XtmError, match="is a directory: give a file name"):
        check(tmp_path)
    unreadable = tmp_path / "unreadable"
    unreadable.write_bytes(b"x")

    def cannot_read(p: Path) -> bool:
        raise PermissionError(13, "Permission denied")

    with pytest.raises(XtmError, match="cannot be read to check that it is a test output .Permission denied"):
        check_replaceable(unreadable, cannot_read, what="a test output", hint="remove it")
    assert theirs.read_bytes() == b"my thesis" and not (tmp_path / "nowhere").exists()


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from xtm.atomic import atomic_open
    with atomic_open(sys.argv[1], "w") as f:
        f.write("partial")
        f.flush()
        print("writing", flush=True)
        time.sleep(60)
""")


def _killed_writer(path: Path) -> None:
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE)
    assert p.stdout is not None and p.stdout.readline() == b"writing\n"
    p.send_signal(signal.SIGKILL)
    p.wait(10)


def test_stale_temporary_of_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    out.write_text("old")
    _killed_writer(out)
    stale = litter(tmp_path)
    assert len(stale) == 1 and out.read_text() == "old"  # kill -9 cannot clean up: the next run does
    old = time.time() - 60
    os.utime(tmp_path / stale[0], (old, old))  # killed a minute ago
    # A stranger's files that only look similar are never touched.
    for name in (".out.txt.mine.tmp", ".out.txt.xtm-1-abcdefgh.tmp.bak", ".other.txt.xtm-999999-abcdefgh.tmp"):
        (tmp_path / name).write_text("not ours")
        os.utime(tmp_path / name, (old, old))
    write_text(out, "new")
    assert out.read_text() == "new"
    assert litter(tmp_path) == [".other.txt.xtm-999999-abcdefgh.tmp", ".out.txt.mine.tmp"]


def test_temporary_of_a_live_writer_is_left_alone(tmp_path: Path) -> None:
    out = tmp_path / "out.txt"
    p = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(out)], stdout=subprocess.PIPE)
    try:
        assert p.stdout is not None and p.stdout.readline() == b"writing\n"
        live = litter(tmp_path)
        assert len(live) == 1
        old = time.time() - 60
        os.utime(tmp_path / live[0], (old, old))  # old, but its writer is alive and holds the lock
        write_text(out, "mine")  # another writer of the same path, at the same time
        assert litter(tmp_path) == live  # its temporary is still being written: kept
    finally:
        p.kill()
        p.wait(10)


def test_temporary_locked_by_a_live_process_is_left_even_if_its_pid_is_gone(tmp_path: Path) -> None:
    """The pid in the name may be dead in our pid namespace and alive in another: the lock decides."""
    out = tmp_path / "out.txt"
    tmp = tmp_path / ".out.txt.xtm-4194303-abcdefgh.tmp"  # pid_max: no such process here
    tmp.write_text("being written elsewhere")
    old = time.time() - 60
    os.utime(tmp, (old, old))
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(tmp)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"locked\n"
        write_text(out, "x")
        assert tmp.exists()
    finally:
        holder.kill()
        holder.wait(10)
    write_text(out, "y")  # lock released: now provably stale
    assert not tmp.exists() and out.read_text() == "y"


def test_very_long_name_still_gets_a_temporary(tmp_path: Path) -> None:
    out = tmp_path / ("n" * 250 + ".json")  # 255 bytes: the name with a prefix and suffix would not fit
    write_text(out, "x")
    assert out.read_text() == "x" and litter(tmp_path) == []


def test_new_file_gets_the_umask_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "new.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == 0o640


BUD1 = b"\0\0\0\1Bud1" + bytes(24)
OLE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(24)
APPLEDOUBLE = APPLEDOUBLE_MAGIC + b"Mac OS X        "


@pytest.mark.parametrize(("name", "content", "expected"), [
    (".DS_Store", BUD1, True), (".DS_STORE", BUD1, True), ("Thumbs.db", OLE, True),
    ("DESKTOP.INI", b"[.ShellClassInfo]\r\n", True),
    ("desktop.ini", b"\xff\xfe" + "\r\n[.ShellClassInfo]".encode("utf-16-le"), True),   # Explorer writes UTF-16 too
    ("._manifest.json", APPLEDOUBLE, True),                # beside manifest.json (made below)
    # a name proves nothing: the user's own file called so is the user's
    (".DS_Store", b"my notes", False), (".DS_Store", b"", False), ("thumbs.db", b"my notes", False),
    ("desktop.ini", b"my notes", False), ("desktop.ini", b"[" + bytes(70000), False),
    ("._manifest.json", b"my notes", False), ("._short", b"\0\5", False),
    ("._thesis.tex", APPLEDOUBLE, False),                  # an orphan: what is left of a file that is not ours
    ("notes.txt", BUD1, False),
])
def test_a_desktops_metadata_is_known_by_its_name_and_its_header(tmp_path: Path, name: str, content: bytes,
                                                                   expected: bool) -> None:
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / name).write_bytes(content)
    assert is_desktop_metadata(tmp_path / name) is expected


@pytest.mark.parametrize("make", ["dir", "link", "fifo"])
def test_only_a_regular_file_is_a_desktops_metadata(tmp_path: Path, make: str) -> None:
    """A FIFO is never waited on (opened non-blocking), a link never followed, even to a real .DS_Store."""
    p = tmp_path / ".DS_Store"
    if make == "dir":
        p.mkdir()
    elif make == "link":
        (tmp_path / "target").write_bytes(BUD1)
        p.symlink_to(tmp_path / "target")
    else:
        os.mkfifo(p)
    assert is_desktop_metadata(p) is False


# -- cache entries: replaced, never followed (replacing_at) ----------------------------------------------


def _write_entry(directory: Path, name: str, data: bytes) -> None:
    from xtm.atomic import open_directory, replacing_at

    dfd = open_directory(directory, create=True)
    try:
        with replacing_at(dfd, name) as f:
            f.write(data)
    finally:
        os.close(dfd)


@pytest.mark.parametrize("planted", ["symlink to a user's file", "dangling symlink", "FIFO", "regular file"])
def test_a_cache_entry_replaces_what_is_at_its_name_and_never_writes_through_it(planted: str, tmp_path: Path) -> None:
    cache, mine = tmp_path / "cache", tmp_path / "thesis.txt"
    cache.mkdir()
    mine.write_text("my thesis")
    entry = cache / "e.json"
    if planted == "symlink to a user's file":
        entry.symlink_to(mine)
    elif planted == "dangling symlink":
        entry.symlink_to(tmp_path / "created-by-xtm.txt")
    elif planted == "FIFO":
        os.mkfifo(entry)  # a write through it would block until a reader came
    else:
        entry.write_text("old")
    _write_entry(cache, "e.json", b"new")
    assert stat.S_ISREG(os.lstat(entry).st_mode) and entry.read_bytes() == b"new"
    assert mine.read_text() == "my thesis" and not (tmp_path / "created-by-xtm.txt").exists()
    assert litter(cache) == []


def test_a_cache_entry_is_written_into_the_directory_opened_even_if_its_path_is_swapped_for_a_link(
        tmp_path: Path) -> None:
    """The race a path-based write has: the directory checked, then replaced by a link to a user's folder."""
    from xtm.atomic import open_directory, replacing_at

    cache, moved, users = tmp_path / "cache", tmp_path / "moved", tmp_path / "users"
    cache.mkdir()
    users.mkdir()
    dfd = open_directory(cache)
    try:
        cache.rename(moved)
        cache.symlink_to(users)  # the path now leads somewhere else
        with replacing_at(dfd, "e.json") as f:
            f.write(b"entry")
    finally:
        os.close(dfd)
    assert (moved / "e.json").read_bytes() == b"entry" and list(users.iterdir()) == []


def test_a_cache_directory_that_is_a_symlink_is_not_opened(tmp_path: Path) -> None:
    import errno

    from xtm.atomic import open_directory

    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as e:
        open_directory(tmp_path / "link", create=True)
    assert e.value.errno == errno.ELOOP
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        open_directory(tmp_path / "file", create=True)


def test_a_directory_at_a_cache_entry_is_left_alone_and_no_temporary_stays(tmp_path: Path) -> None:
    (tmp_path / "e.json" / "inside").mkdir(parents=True)
    with pytest.raises(IsADirectoryError):
        _write_entry(tmp_path, "e.json", b"x")
    assert (tmp_path / "e.json" / "inside").is_dir() and litter(tmp_path) == []


def test_a_failing_cache_writer_leaves_the_old_entry_and_no_temporary(tmp_path: Path) -> None:
    from xtm.atomic import open_directory, replacing_at

    (tmp_path / "e.json").write_bytes(b"old")
    dfd = open_directory(tmp_path)
    try:
        with pytest.raises(RuntimeError), replacing_at(dfd, "e.json") as f:
            f.write(b"half")
            raise RuntimeError("killed mid-write")
    finally:
        os.close(dfd)
    assert (tmp_path / "e.json").read_bytes() == b"old" and litter(tmp_path) == []


def test_stale_temporaries_of_a_caches_entries_are_swept_by_the_rule_and_nothing_else(tmp_path: Path) -> None:
    from xtm.atomic import open_directory, remove_stale_temporaries

    old = time.time() - 60
    names = {"dead": ".a.json.xtm-4194303-0123abcd.tmp",            # pid_max: no such process
             "live": f".b.json.xtm-{os.getppid()}-0123abcd.tmp",    # its writer still runs
             "fresh": ".c.json.xtm-4194303-89abcdef.tmp",           # younger than the grace period
             "another name": ".notes.xtm-4194303-abcdefgh.tmp",     # not an entry's: a user's, whatever it says
             "beyond pid_t": ".d.json.xtm-9999999999-abcdefgh.tmp", # kill() cannot even be asked: not provable
             "stranger": ".d.json.mine.tmp"}
    for kind, name in names.items():
        (tmp_path / name).write_text("partial")
        if kind != "fresh":
            os.utime(tmp_path / name, (old, old))
    (tmp_path / ".e.json.xtm-4194303-aaaabbbb.tmp").symlink_to(tmp_path / "target")  # not a regular file
    dfd = open_directory(tmp_path)
    try:
        remove_stale_temporaries(dfd, r"[a-z]\.json")
    finally:
        os.close(dfd)
    left = set(p.name for p in tmp_path.iterdir())
    assert names["dead"] not in left
    assert {n for k, n in names.items() if k != "dead"} | {".e.json.xtm-4194303-aaaabbbb.tmp"} <= left


@pytest.mark.parametrize("how", ["atomic_open", "replacing_at"])
def test_a_name_of_many_bytes_still_gets_a_temporary(how: str, tmp_path: Path) -> None:
    """The stem was cut at 120 characters: 80 CJK characters are 240 bytes, and the temporary's name went past
    NAME_MAX (an embeddings cache keyed by a Chinese model name was never written)."""
    name = "模" * 80 + ".npy"  # 244 bytes: fits NAME_MAX itself
    if how == "atomic_open":
        write_text(tmp_path / name, "x")
    else:
        _write_entry(tmp_path, name, b"x")
    assert (tmp_path / name).read_bytes() == b"x" and litter(tmp_path) == []


def test_a_cache_entry_that_is_not_a_regular_file_is_never_opened(tmp_path: Path) -> None:
    import errno

    from xtm.atomic import NotRegularFileError, open_directory, open_entry

    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "real").write_text("x")
    dfd = open_directory(tmp_path)
    try:
        for name, kind in (("fifo", "a FIFO"), ("dir", "a directory"), ("link", "a symlink")):
            with pytest.raises(NotRegularFileError) as e:
                open_entry(dfd, name)
            assert e.value.kind == kind
        with pytest.raises(FileNotFoundError):
            open_entry(dfd, "missing")
        fd = open_entry(dfd, "real")
        assert os.read(fd, 1) == b"x"
        os.close(fd)
    finally:
        os.close(dfd)
    # a dangling link where a cache directory belongs is not created through, even when links are followed
    (tmp_path / "cache").symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):
        open_directory(tmp_path / "cache", create=True, follow=True)
    assert not (tmp_path / "nowhere").exists()
    with pytest.raises(OSError) as loop:
        open_directory(tmp_path / "link", create=True)
    assert loop.value.errno == errno.ELOOP

"""Atomic file writes: a reader (or a crash) never sees a half-written output, and what sits at the
path is respected.

What is at the path decides how `atomic_open` writes it:
- nothing, or a regular file: a temporary beside it, fsync, rename over it. The old file stays whole
  until the new one is complete; a replaced file keeps its permission bits (and owner, for root).
  Another hard link to the old file keeps the old content (rename makes a new inode).
- a symlink: followed (chains too); its target is written by these rules and the link stays a link.
- a FIFO, a character or block device: opened and written in place, no temporary. Renaming over
  them would turn `/dev/null` or a named pipe into a regular file (as root, the system's /dev/null).
  A FIFO blocks until a reader opens it, as shell redirection does.
- a directory or a socket: XtmError, as is any place that cannot be written (read-only, /proc).

Temporaries are named `.NAME.xtm-PID-XXXXXXXX.tmp` and held under an exclusive flock while written.
A writer killed with SIGKILL cannot remove its temporary; the next write of the same path removes
the ones that are provably ours and dead: that name pattern, a regular file, a few seconds old,
its writer's pid gone and its lock free. Anything else is left alone.

Caches are the other kind of output: a directory of xtm's own whose entries are ours by name
(`replacing_at`). There the rule is the opposite for links: an entry is written relative to its
directory opened once without following a link, and the rename replaces whatever non-directory is
at the name, a planted symlink or FIFO included, never its target. Same temporaries, same sweep.

Directories xtm writes whole (a bundle, a run's contextual/, a checkpoint) are assembled beside their place and
swapped in (`staged_directory`, `replace_directory`): `.NAME.xtm-new-PID-XXXXXXXX` while written (locked), the
one replaced set aside as `.NAME.xtm-old-PID-XXXXXXXX` until the new one is in place; never a fixed name such as
`.tmp-NAME` or `.NAME.old`, which may be a user's. A killed writer's leftovers are cleared by the next writer beside
them (`remove_stale_directories`), by the same proof as files.

SIGTERM and SIGHUP end a Python process without unwinding it: xtm.signals.exit_on_signals turns them
into SystemExit while a command writes, so `atomic_open` removes its temporary then too.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from xtm.errors import XtmError

try:
    import fcntl
except ImportError:  # not POSIX: no locks, so stale temporaries are never removed (never provably ours)
    fcntl = None  # type: ignore[assignment]

__all__ = ["NotRegularFileError", "atomic_open", "check_replaceable", "file_kind", "foreign_entries",
           "is_desktop_metadata", "is_plain_dir", "is_plain_file", "open_directory", "open_entry",
           "remove_stale_directories", "remove_stale_temporaries", "replace_directory", "replacing_at",
           "staged_directory", "temporary_names", "write_json", "write_text"]

# A temporary is locked microseconds after it is created; one younger than this may be a writer's that
# has not taken its lock yet, and is never called stale.
_GRACE_S = 2.0
_TMP_TAG = ".xtm-"
# Names are cut so the temporary stays under NAME_MAX (255 bytes) with its prefix and suffix.
_MAX_STEM = 120
# Never through a symlink (ELOOP instead), never waiting for a FIFO's other end.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
                 | getattr(os, "O_BINARY", 0))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open `path` for writing so that it is replaced whole or not at all (see the module docstring).

    On an exception in the body, a regular file is left untouched and the temporary removed; a FIFO
    or device has received what was written so far. XtmError when the path cannot be written."""
    target = Path(os.path.realpath(path))  # symlinks followed: their target is what gets written
    st = _writable_target(target, path)
    if st is not None and not stat.S_ISREG(st.st_mode):
        with _in_place(target, mode, encoding, path) as f:
            yield f
        return
    with _replacing(target, st, mode, encoding, path) as f:
        yield f


def check_replaceable(path: str | Path, is_ours: Callable[[Path], bool], *, what: str, hint: str) -> None:
    """XtmError, before any work, unless `atomic_open(path)` would destroy nothing of a user's: nothing
    is there (or a symlink to nothing: its target is created), a FIFO or device (written in place), or
    a regular file that is empty or that `is_ours` recognises as the command's own output (`what`
    names that output in the error, `hint` says what to do). Directories and sockets are refused with
    atomic_open's own words, before the command reads anything. The one rule behind every `--out FILE`
    a command replaces (xtm-infer's outputs, xtm-report's reports)."""
    st = _writable_target(path, path)  # symlinks followed, as atomic_open follows them
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return
    try:
        ours = is_ours(Path(path))
    except OSError as e:
        raise XtmError(f"exists and cannot be read to check that it is {what} ({e.strerror or e}); {hint}",
                       path=path) from None
    if not ours:
        raise XtmError(f"exists and is not {what} (it would be replaced): {hint}", path=path)


def _writable_target(target: str | Path, shown: str | Path) -> os.stat_result | None:
    """What is at `target` (symlinks followed; None: nothing), or XtmError naming `shown` where no file can
    be written: a directory, a socket, or a path that cannot be looked at (a symlink loop, a path through
    a file, no permission)."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise XtmError(f"cannot write: {e.strerror}", path=shown) from e
    if stat.S_ISDIR(st.st_mode):
        raise XtmError("is a directory: give a file name", path=shown)
    if stat.S_ISSOCK(st.st_mode):
        raise XtmError("is a socket: give a file, a FIFO or a device", path=shown)
    return st


@contextmanager
def _in_place(target: Path, mode: str, encoding: str | None, shown: str | Path) -> Iterator[IO[Any]]:
    """A FIFO or device, written where it is: no O_CREAT, no O_TRUNC (nothing to create or cut)."""
    try:
        fd = os.open(target, os.O_WRONLY | os.O_NOCTTY)
    except OSError as e:
        raise XtmError(f"cannot write: {e.strerror}", path=shown) from e
    if stat.S_ISREG(os.fstat(fd).st_mode):  # replaced by a regular file since we looked: never write in place
        os.close(fd)
        raise XtmError("changed while being opened (now a regular file); run again", path=shown)
    kwargs = {} if "b" in mode else {"encoding": encoding}
    f = os.fdopen(fd, mode.replace("x", "w").replace("a", "w"), **kwargs)
    with _closing(f, shown):
        yield f


@contextmanager
def _closing(f: IO[Any], shown: str | Path) -> Iterator[None]:
    """Close `f` after the body. A failing close (its last flush: a full device, a FIFO whose reader
    left) is an XtmError; after an error in the body it is ignored, so that error is the one seen."""
    try:
        yield
    except BaseException:
        with suppress(OSError):
            f.close()
        raise
    try:
        f.close()
    except OSError as e:
        raise XtmError(f"cannot write: {e.strerror or e}", path=shown) from e


@contextmanager
def _replacing(target: Path, st: os.stat_result | None, mode: str, encoding: str | None,
               shown: str | Path) -> Iterator[IO[Any]]:
    """A new or regular file: temporary beside it, fsync, rename; the temporary never outlives us."""
    parent, stem = target.parent, _stem(target.name)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise XtmError(f"cannot write: cannot create its directory: {e.strerror}", path=shown) from e
    with suppress(OSError):  # best effort: a sweep never fails the write
        dfd = open_directory(parent, follow=True)  # the parent of a resolved path: no link to refuse
        try:
            remove_stale_temporaries(dfd, re.escape(stem))
        finally:
            os.close(dfd)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{stem}{_TMP_TAG}{os.getpid()}-", suffix=".tmp", dir=parent)
    except OSError as e:
        raise XtmError(f"cannot write: {e.strerror}", path=shown) from e
    try:
        if fcntl is not None:
            with suppress(OSError):  # no locks on this file system: the writer's live pid still protects it
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # "being written": the stale sweep skips it
        with suppress(OSError):  # file systems without Unix permissions (vfat, some mounts) refuse chmod
            _copy_permissions(fd, st)
        kwargs = {} if "b" in mode else {"encoding": encoding}
        f = os.fdopen(fd, mode, **kwargs)
        with _closing(f, shown):
            yield f
            try:
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:  # a full disk shows here at the latest
                raise XtmError(f"cannot write: {e.strerror}", path=shown) from e
        try:
            os.replace(tmp, target)
        except OSError as e:
            raise XtmError(f"cannot write: {e.strerror}", path=shown) from e
        _fsync_dir(parent)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


def _stem(name: str) -> str:
    """`name` cut to at most _MAX_STEM bytes of UTF-8 (a temporary's name must fit NAME_MAX, counted in bytes:
    70 CJK characters are 210), never inside a character."""
    return name.encode("utf-8", "surrogateescape")[:_MAX_STEM].decode("utf-8", "ignore")


def _copy_permissions(fd: int, st: os.stat_result | None) -> None:
    """The replaced file's mode (and owner, where allowed); a new file gets what open() would give.

    mkstemp creates 0600; replacing a 0644 output with it would hide it from its readers, and
    replacing a 0600 one with 0644 would expose it."""
    if st is None:
        os.fchmod(fd, 0o666 & ~_umask())
        return
    os.fchmod(fd, stat.S_IMODE(st.st_mode))
    if (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        with suppress(OSError):  # only root may give a file away; others keep their own ownership
            os.fchown(fd, st.st_uid, st.st_gid)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable; some file systems cannot fsync a directory (ignored)."""
    with suppress(OSError):
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def temporary_names(entry_pattern: str) -> re.Pattern[str]:
    """The names of the temporaries xtm's atomic writes make for entries whose names match the regular expression
    `entry_pattern`: `.NAME.xtm-PID-XXXXXXXX.tmp` (the writer's pid in group "pid"). What tells a leftover of ours."""
    return re.compile(r"\.(?:" + entry_pattern + ")" + re.escape(_TMP_TAG) + r"(?P<pid>\d{1,10})-[a-z0-9_]{8}\.tmp")


def remove_stale_temporaries(dfd: int, entry_pattern: str) -> None:
    """Remove the temporaries killed writers left in the directory `dfd` for any name that matches the regular
    expression `entry_pattern` (atomic_open and replacing_at: the name they write, escaped; a cache whose
    entries are written once each: every entry's name, as it never rewrites the entry a stale temporary belongs
    to). Only ones provably ours (module docstring); files of other names are left alone. Best effort: anything
    unexpected leaves the file where it is and never fails the write."""
    if fcntl is None:
        return
    pattern = temporary_names(entry_pattern)
    try:
        entries = list(os.scandir(dfd))  # names relative to dfd: a directory swapped for a link meanwhile is not us
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if m is None or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        with suppress(OSError):
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_mtime > time.time() - _GRACE_S:
                continue
            fd = os.open(entry.name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK, dir_fd=dfd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
                if os.path.samestat(os.fstat(fd), st):
                    os.unlink(entry.name, dir_fd=dfd)
            finally:
                os.close(fd)


# --------------------------------------------------------------------------- cache entries

class NotRegularFileError(OSError):
    """What is at a cache entry's name is not a regular file: `kind` says what ("a symlink", "a FIFO", ...)."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(errno.EINVAL, f"{kind}, not a regular file", name)
        self.kind = kind


def file_kind(mode: int) -> str:
    """What a stat mode is, in words ("a symlink", "a FIFO", "a directory", ...)."""
    for test, kind in ((stat.S_ISLNK, "a symlink"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return kind
    return "not a regular file"


def open_directory(path: str | Path, *, create: bool = False, follow: bool = False) -> int:
    """`path` opened as a directory for the *at() calls of `open_entry` and `replacing_at`. Unless `follow`, never
    through a symlink at its last component (a directory of xtm's own inside a cache: a link there was planted):
    OSError ELOOP. `follow`: a cache's top folder, which a user may have linked to a bigger disk. NotADirectoryError
    when it is something else, FileNotFoundError when it is missing and not `create` (else it is made, with its
    parents). The caller closes the descriptor."""
    path = Path(path)
    try:
        return os.open(path, _DIR_FLAGS & ~_NOFOLLOW if follow else _DIR_FLAGS)
    except FileNotFoundError:
        if not create or os.path.lexists(path):  # a dangling link: never made through
            raise
        path.mkdir(parents=True, exist_ok=True)
        return open_directory(path, follow=follow)
    except OSError as e:
        # Linux answers O_NOFOLLOW | O_DIRECTORY on a symlink with ENOTDIR, not ELOOP: tell the two apart.
        if e.errno in (errno.ENOTDIR, errno.ELOOP) and os.path.islink(path):
            raise OSError(errno.ELOOP, "a symlink", str(path)) from None
        raise


def open_entry(dfd: int, name: str) -> int:
    """The regular file `name` of the directory `dfd` opened for reading. Anything else there is never opened
    (lstat first: a FIFO would block, a device may act on open) and is NotRegularFileError; one swapped in between the
    lstat and the open is refused too (O_NOFOLLOW, O_NONBLOCK, then fstat). FileNotFoundError when there is none."""
    st = os.lstat(name, dir_fd=dfd)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(file_kind(st.st_mode), name)
    try:
        fd = os.open(name, os.O_RDONLY | _NOFOLLOW | _NONBLOCK | getattr(os, "O_CLOEXEC", 0), dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NotRegularFileError("a symlink", name) from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise NotRegularFileError(file_kind(mode), name)
    return fd


@contextmanager
def replacing_at(dfd: int, name: str) -> Iterator[IO[bytes]]:
    """Write the cache entry `name` of the directory `dfd` (from `open_directory`) whole or not at all, in binary.

    Unlike atomic_open, nothing at the name is followed or kept: a temporary beside it (the same name pattern,
    lock and stale sweep), fsync, then a rename over the name, which replaces a regular file, a symlink or a FIFO
    itself and never opens or writes its target. Every step is relative to `dfd`, so a directory swapped for a
    link after it was opened cannot redirect the write. For entries that are xtm's by name in a directory of
    xtm's own (the caches); users' outputs go through atomic_open. OSError when it cannot be written (a
    directory at the name: IsADirectoryError), the temporary removed."""
    stem = _stem(name)
    remove_stale_temporaries(dfd, re.escape(stem))
    tmp = f".{stem}{_TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, _CREATE_FLAGS, 0o666, dir_fd=dfd)  # the umask applies, as for any new file
    try:
        f = os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise
    try:
        with f:
            if fcntl is not None:
                with suppress(OSError):  # "being written": the stale sweep skips it
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        with suppress(OSError):
            os.fsync(dfd)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise


def _alive(pid: int) -> bool:
    """False only when no process has this pid (then its temporary may be ours and dead)."""
    if pid <= 0:  # kill(0) and kill(-1) signal groups, not a process: never provably dead
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # exists, owned by someone else; or beyond pid_t: not provable
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_text(path: str | Path, text: str) -> None:
    """`text` as UTF-8, replaced whole (atomic_open). Written as bytes: the same "\n" line ends on every platform
    (a text-mode file would write "\r\n" on Windows, and vocabulary files are read by their "\n")."""
    with atomic_open(path, "wb", encoding=None) as f:
        f.write(text.encode("utf-8"))


# Files a desktop writes into any folder a user merely opens or copies: the Finder's .DS_Store, Windows
# Explorer's Thumbs.db and desktop.ini, and the AppleDouble "._NAME" companion macOS writes beside a file NAME on
# a network or FAT volume. No one's content, so `foreign_entries` never counts them: a directory xtm may replace
# or write into (a bundle, a run, a run's contextual/, a checkpoint, a shard directory) is still ours with them
# in it, instead of blocking the next command until the user finds and deletes an invisible file. A name alone
# proves nothing (a user may call a file anything): each must also start as the desktop writes it. Names in any
# case (Windows' and macOS's default volumes ignore it).
DESKTOP_METADATA_HEADERS = {".ds_store": b"\x00\x00\x00\x01Bud1",              # the Finder's buddy allocator
                            "thumbs.db": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",  # an OLE compound file
                            "desktop.ini": b"["}                                  # an INI section, after any BOM
APPLEDOUBLE_MAGIC = b"\x00\x05\x16\x07\x00\x02\x00\x00"  # magic number and version 2 (RFC 1740)
DESKTOP_INI_MAX_BYTES = 65536
_BOMS = (b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")


def is_desktop_metadata(path: Path) -> bool:
    """True when `path` is a regular file (not a link, a directory or a FIFO) that a desktop wrote for itself:
    .DS_Store, Thumbs.db or desktop.ini starting with its format's header, or a "._NAME" AppleDouble file (its
    header) beside an existing NAME (an orphan may hold what remains of someone's file). Never blocks: the file
    is opened without following a link or waiting on a FIFO swapped in since the directory was listed."""
    name = path.name.lower()
    appledouble = path.name.startswith("._") and len(path.name) > 2
    if name not in DESKTOP_METADATA_HEADERS and not appledouble:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _NONBLOCK)
    except OSError:
        return False  # a link, unreadable, gone: not provably the desktop's
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return False
        head = os.read(fd, 16)
    except OSError:
        return False
    finally:
        os.close(fd)
    if name == "desktop.ini":  # text, maybe UTF-16 after a byte-order mark: its header past the BOM and NULs
        if st.st_size > DESKTOP_INI_MAX_BYTES:
            return False
        head = next((head[len(b):] for b in _BOMS if head.startswith(b)), head).replace(b"\x00", b"").lstrip()
    if name in DESKTOP_METADATA_HEADERS:
        return head.startswith(DESKTOP_METADATA_HEADERS[name])
    return head.startswith(APPLEDOUBLE_MAGIC) and os.path.lexists(path.with_name(path.name[2:]))


def is_plain_file(path: str | Path) -> bool:
    """A regular file, not a symbolic link to one (a link's target may be anyone's file); False when nothing is
    there or it cannot be looked at."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def is_plain_dir(path: str | Path) -> bool:
    """A directory, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _no_directory(name: str) -> bool:
    return False


def foreign_entries(directory: str | Path, is_ours: Callable[[str], bool], *,
                    is_our_dir: Callable[[str], bool] = _no_directory, among: Iterable[str] | None = None,
                    limit: int | None = None) -> list[str]:
    """The names in `directory` that are not provably xtm's, sorted: what keeps a command from replacing or
    writing into it (the rule "a user's files are never deleted or overwritten unless provably ours"). Each
    caller keeps its own name rule and its own error; this is the one place that says what a name proves.

    An entry is ours when lstat shows a regular file whose name `is_ours` accepts, or a directory whose name
    `is_our_dir` accepts (by default none; the predicate may look inside it). A symbolic link, FIFO, socket or
    device is never ours, whatever its name: writing or removing through it reaches someone else's file. A
    desktop's own metadata (`is_desktop_metadata`: .DS_Store, Thumbs.db, ...) is nobody's: never listed, so a
    directory the user merely opened in the Finder is treated as if they had not. An entry that cannot be
    looked at is not provably ours.

    `among`: look only at these names, skipping those not there (a command that writes only its own names
    leaves the others alone; a caller that listed the directory already judges exactly what it listed).
    `limit`: stop after finding that many (a home directory is not read whole to say it is not ours).
    OSError when the directory cannot be listed."""
    directory = Path(directory)
    foreign: list[str] = []
    with _names(directory, among) as names:
        for name in names:
            if _ours_or_gone(directory / name, name, is_ours, is_our_dir):
                continue
            foreign.append(name)
            if limit is not None and len(foreign) >= limit:
                break
    return sorted(foreign)


@contextmanager
def _names(directory: Path, among: Iterable[str] | None) -> Iterator[Iterable[str]]:
    """`among`, or the directory's names read as they are needed (scandir: `limit` stops reading early)."""
    if among is not None:
        yield among
        return
    with os.scandir(directory) as entries:
        yield (e.name for e in entries)


def _ours_or_gone(path: Path, name: str, is_ours: Callable[[str], bool], is_our_dir: Callable[[str], bool]) -> bool:
    """Whether the entry `path` (named `name`) is ours by the caller's rule, a desktop's metadata, or gone."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return True  # removed since it was listed (or, from `among`, never there): nothing to protect
    except OSError:
        return False
    if stat.S_ISREG(mode) and is_ours(name):
        return True
    if stat.S_ISDIR(mode) and is_our_dir(name):
        return True
    return is_desktop_metadata(path)


# --------------------------------------------------------------------------- directories replaced whole

# A directory being assembled ("new") or the one it replaces, set aside until the new one is in place ("old"):
# `.NAME.xtm-new-PID-XXXXXXXX` and `.NAME.xtm-old-PID-XXXXXXXX` beside NAME (mkdtemp's eight characters).
_DIR_TEMPORARY = re.compile(r"\.(?P<name>.+)" + re.escape(_TMP_TAG)
                            + r"(?P<kind>new|old)-(?P<pid>\d{1,10})-[a-z0-9_]{8}")
# A NAME this long may have been cut (_stem): which directory an "old" one was cannot be told from its name.
_WHOLE_NAME_MAX = _MAX_STEM - 4


@contextmanager
def staged_directory(final: str | Path, *, sweep: Callable[[str], bool] | None = None) -> Iterator[Path]:
    """A new, empty directory beside `final` to assemble it in, put in place of `final` whole when the block ends
    (`replace_directory`: never half-replaced). When the block raises anything (an error, Ctrl-C, SystemExit from a
    signal), the new directory is removed and `final` is as it was. The caller has checked that an existing `final`
    is its own, and checks again at the end of the block when the work took a while (files may have been added).

    The directory is 0755 (mkdtemp's 0700 would hide a shared bundle from its readers), named
    `.NAME.xtm-new-PID-XXXXXXXX` and locked while it is written. Before it is made, what killed writers left beside
    `final` is cleared (`remove_stale_directories`) for the names `sweep` accepts (default: `final`'s own; a
    checkpoint's: every checkpoint's). OSError when it cannot be made or put in place."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    stem = _stem(final.name)
    remove_stale_directories(final.parent, sweep or (lambda name: name == stem))
    tmp = _directory_temporary(final, "new")
    try:
        lock = _lock_directory(tmp)
        try:
            os.chmod(tmp, 0o755)
            yield tmp
            replace_directory(tmp, final)
        finally:
            if lock is not None:
                os.close(lock)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # (gone already when the swap put it in place)
        raise


def _directory_temporary(final: Path, kind: str) -> Path:
    """A new empty directory beside `final`, named as `_DIR_TEMPORARY` says (never a name anyone else uses)."""
    prefix = f".{_stem(final.name)}{_TMP_TAG}{kind}-{os.getpid()}-"
    return Path(tempfile.mkdtemp(prefix=prefix, dir=final.parent))


def _lock_directory(path: Path) -> int | None:
    """`path` opened and (where the file system can) flocked: "being written", which the stale sweep skips even when
    it cannot see the writer's pid (another pid namespace on a shared disk). Closing the descriptor unlocks it.
    None without flock (not POSIX): no sweep runs there either."""
    if fcntl is None:
        return None
    fd = os.open(path, _DIR_FLAGS)
    with suppress(OSError):  # no locks on this file system: the writer's live pid still protects it
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def replace_directory(tmp: Path, final: Path) -> None:
    """Put the directory `tmp` (complete) where `final` is. An existing `final` (the caller has checked it is
    ours) is first renamed to a new unique name only this process uses (`.NAME.xtm-old-PID-XXXXXXXX`, never a
    fixed name such as `.NAME.old`, which may be the user's), then removed once `tmp` is in place, or renamed back
    if that fails. A process killed between the two renames leaves no `final` but both directories complete; the
    next writer beside it renames the old one back (`remove_stale_directories`)."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    old = _directory_temporary(final, "old")
    try:
        os.rename(final, old)  # onto our own empty directory
    except BaseException:
        os.rmdir(old)
        raise
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_directories(parent: str | Path, is_entry: Callable[[str], bool]) -> None:
    """Clear what writers killed while replacing a directory of `parent` left, for the names `is_entry` accepts:
    a directory being assembled ("new": removed; what it replaced, if anything, is still whole) and one set aside
    by `replace_directory` ("old": removed once its NAME is in place again, else renamed back, as the swap was cut
    between its two renames and it is the only copy in place of NAME). Only ones provably ours, by the proof
    files get (module docstring): that name pattern, a directory (not a link), a few seconds old, its writer's pid
    gone and its lock free. Best effort: anything unexpected leaves it where it is and never fails the write."""
    if fcntl is None:  # no locks: never provably dead
        return
    try:
        names = os.listdir(parent)
    except OSError:
        return
    for name in names:
        m = _DIR_TEMPORARY.fullmatch(name)
        if m is None or not is_entry(m["name"]) or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        with suppress(OSError):
            _clear_stale_directory(Path(parent), name, m)


def _clear_stale_directory(parent: Path, name: str, m: re.Match[str]) -> None:
    """One leftover `remove_stale_directories` found (its writer's pid gone): removed or renamed back, unless it is
    young or locked. Opened first, so it is looked at and locked as the directory it is, never through a link."""
    fd = os.open(parent / name, _DIR_FLAGS)  # never through a link (ELOOP or ENOTDIR)
    try:
        st = os.fstat(fd)
        if st.st_mtime > time.time() - _GRACE_S:
            return
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # raises while a writer holds it
        final = parent / m["name"]
        if m["kind"] == "old" and not os.path.lexists(final):
            if len(m["name"].encode("utf-8", "surrogateescape")) < _WHOLE_NAME_MAX:
                os.rename(parent / name, final)
            return  # (a cut name: which directory it was is not known, so it stays)
        shutil.rmtree(parent / name)
    finally:
        os.close(fd)

"""Where a bundle goes: which existing directory may be replaced, and replacing it whole.

A bundle is assembled in a staging directory beside its destination and renamed into place
(xtm.atomic.staged_directory, shared with a run's contextual/ and its checkpoints), so a failed or
interrupted write never leaves a half-written bundle, and an old bundle stays as it was until the
new one is complete.

The destination is only ever replaced when it is an empty directory or an xtm bundle whose
manifest lists every entry in it (`check_replaceable_bundle_dir`; a desktop's own files, such as the
Finder's .DS_Store, do not count: `xtm.atomic.foreign_entries`); the old bundle is moved to a new unique
name first and removed only once the new one is in place. Everything else is refused before any
work: a web app's manifest.json, user files in a bundle, the current directory, a symlink, a file.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from xtm.atomic import foreign_entries, is_plain_file, staged_directory
from xtm.errors import XtmError
from xtm.json_files import read_json
from xtm.runtime.bundle import FORMAT, MANIFEST

__all__ = ["check_out_dir", "check_replaceable_bundle_dir", "staged_bundle"]


def _not_a_bundle(out_dir: Path, why: str) -> XtmError:
    return XtmError(f"{out_dir} exists and is not an xtm bundle ({why}): it is never replaced; choose another "
                    "--out, or move it away yourself")


def check_replaceable_bundle_dir(out_dir: Path) -> None:
    """XtmError unless the existing `out_dir` may be replaced by a new bundle: an empty directory, or an xtm
    bundle (manifest.json says format "xtm-bundle" and lists every other entry, each a regular file). Refused:
    a web app's or browser extension's manifest.json, a bundle the user put files into, a file, a symlink. A
    desktop's own files (.DS_Store, Thumbs.db, AppleDouble "._NAME") are not counted (`foreign_entries`): they
    go with the old directory.

    Deliberately looser than read_manifest: an old or damaged bundle of ours is still ours."""
    if out_dir.is_symlink():
        raise XtmError(f"{out_dir} is a symbolic link: give the directory itself (a bundle is never written "
                       "through a link)")
    if not out_dir.is_dir():
        raise XtmError(f"{out_dir} exists and is not a directory: choose another --out")
    try:
        if not foreign_entries(out_dir, _nothing, limit=1):
            return  # empty, but for a desktop's files
        listed = _listed_by_our_manifest(out_dir)
        foreign = foreign_entries(out_dir, lambda name: name == MANIFEST or name in listed)
    except OSError as e:
        raise XtmError(f"cannot read the directory: {e.strerror}", path=out_dir) from e
    if foreign:
        name = foreign[0]
        why = "is not a regular file" if name == MANIFEST or name in listed else \
            "is not one of the files its manifest lists"
        raise _not_a_bundle(out_dir, f"{name} {why}")


def _nothing(name: str) -> bool:
    return False


def _listed_by_our_manifest(out_dir: Path) -> set[str]:
    """The names an xtm manifest in out_dir lists; XtmError when there is no such manifest."""
    mpath = out_dir / MANIFEST
    if not os.path.lexists(mpath):
        raise _not_a_bundle(out_dir, f"no {MANIFEST}")
    if not is_plain_file(mpath):
        raise _not_a_bundle(out_dir, f"{MANIFEST} is not a regular file")
    try:
        manifest = read_json(mpath)
    except XtmError:
        raise _not_a_bundle(out_dir, f"{MANIFEST} is not readable JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise _not_a_bundle(out_dir, f"its {MANIFEST} does not say format \"{FORMAT}\"")
    listed = manifest.get("files")
    return set(listed) if isinstance(listed, dict) else set()


def _is_bundle(d: Path) -> bool:
    try:
        manifest = read_json(d / MANIFEST) if (d / MANIFEST).is_file() else None
    except XtmError:
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def check_out_dir(out_dir: Path) -> None:
    """Refuse, before any work, a destination that would have to be refused at the end."""
    for above in Path(os.path.abspath(out_dir)).parents:
        if _is_bundle(above):  # the outer bundle would hold a file its manifest does not list: never replaced again
            raise XtmError(f"{out_dir} is inside the bundle {above}: choose an --out outside it")
    if os.path.lexists(out_dir):
        check_replaceable_bundle_dir(out_dir)
        real, cwd = out_dir.resolve(), Path.cwd().resolve()
        if real == cwd or real in cwd.parents:
            raise XtmError(f"{out_dir} is the current directory or holds it: it cannot be replaced while in use; "
                           "choose another --out")
        return
    parent = out_dir.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise XtmError(f"cannot create the bundle directory: {parent} is not a directory", path=out_dir)


@contextlib.contextmanager
def staged_bundle(out_dir: Path) -> Iterator[Path]:
    """A staging directory for a bundle bound for out_dir (call `check_out_dir` first, before the
    work): swapped into place when the block ends, once out_dir is checked again (the bundle took a
    while to write), and removed when it raises anything (an error, Ctrl-C, SystemExit from a
    signal), leaving an old bundle as it was (xtm.atomic.staged_directory). A failing write or
    rename (a full disk, a vanished directory) becomes one XtmError naming out_dir."""
    started = False
    try:
        with staged_directory(out_dir) as tmp:
            started = True
            yield tmp
            if os.path.lexists(out_dir):
                check_replaceable_bundle_dir(out_dir)
    except OSError as e:
        where = "the bundle" if started else "the bundle here"
        raise XtmError(f"cannot write {where}: {e.strerror or e}", path=out_dir) from e

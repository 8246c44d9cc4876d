"""Reading and checking an exported bundle's manifest (schema version 1), torch-free.

A bundle is a directory written by `xtm-export`:

    manifest.json         format, schema version, model, topics, per-language encoders, checksums
    encoder_<lang>.onnx   a document's bag of words -> output "theta" float32 [N, K]
    vocab_<lang>.txt      V_lang lines; line j is word id j (column j of the bag of words)
    beta_<lang>.npy       float32 [K, V_lang] topic-word weights
    topics.json           top words of every topic in every language

An encoder reads its bag of words in one of two input formats (the entry's "input_format"):

    dense   (schema 1, the default) one input, named by "input": float32 [N, V_lang] counts.
    sparse  (schema 2) two inputs, named by "inputs": word ids int64 [N, L] and their counts
            float32 [N, L]; row i lists document i's distinct in-vocabulary word ids, padded to the
            batch's longest row with count 0 (the padding id may be any valid id, 0 by convention).
            The first layer then costs N x L x H instead of N x V x H: about 11 of 5,000 columns
            are non-zero in a news headline.

A bundle is only what its manifest lists. Every file the runtime opens is listed (with its
SHA-256) and must be a regular file that resolves inside the bundle directory: a symlink to
elsewhere is refused, even when its bytes match the checksum, because the file it names can change
after the check. An ONNX graph may keep its weights in "external data" files it names itself, which
onnxruntime would then read from anywhere, outside the manifest and its checksums; xtm-export never
writes such graphs, so every graph the manifest names is scanned (`onnx_external_data`) and a graph
with any external tensor is refused. Other files in the directory are never opened, so they are
ignored.

Unknown top-level manifest keys are ignored on purpose: later versions add new kinds of encoders
under new keys, and an older runtime can still serve the kinds it knows. A newer schema version
is refused, because then the meaning of the keys we do read may have changed.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtm.errors import XtmError
from xtm.languages import normalize_lang

__all__ = ["FORMAT", "INPUT_FORMATS", "MANIFEST", "SCHEMA_VERSION", "BundleManifest", "EncoderEntry",
           "graph_file", "listed_file", "onnx_external_data", "read_manifest", "sha256_file"]

FORMAT = "xtm-bundle"
# 2 added sparse encoder inputs; a schema-1 bundle (dense inputs only) reads unchanged.
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"
INPUT_FORMATS = ("dense", "sparse")


@dataclass(frozen=True)
class EncoderEntry:
    """One language's bag-of-words encoder as the manifest describes it.

    `inputs` are the graph's input names: (bow,) for the dense format, (word_ids, counts) for sparse.
    """

    lang: str
    file: str
    inputs: tuple[str, ...]
    output: str
    vocab: str
    vocab_size: int
    beta: str | None
    tokenizer: dict[str, Any]
    input_format: str = "dense"

    @property
    def sparse(self) -> bool:
        return self.input_format == "sparse"


@dataclass(frozen=True)
class BundleManifest:
    """A validated manifest.json; `raw` keeps the whole object, unknown keys included."""

    directory: Path
    schema_version: int
    model: str
    num_topics: int
    languages: list[str]
    encoders: dict[str, EncoderEntry]
    topics: str
    files: dict[str, str]
    xtm_version: str | None = None
    created: str | None = None
    opset: int | None = None
    quantization: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def path(self, name: str) -> Path:
        """Absolute path of a bundle file named in the manifest."""
        return self.directory / name


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large encoders never sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def _require(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], where: Path, ctx: str = "") -> Any:
    if key not in obj:
        raise XtmError(f"{ctx}missing key '{key}'", path=where)
    value = obj[key]
    # bool is an int subclass; a count given as true/false is a broken manifest, not 1/0.
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise XtmError(f"{ctx}'{key}' must be {names}, got {type(value).__name__}", path=where)
    return value


def _plain_name(name: str, where: Path, ctx: str) -> str:
    """A file name inside the bundle: no directories, so a manifest cannot point outside it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or name == MANIFEST:
        raise XtmError(f"{ctx}invalid bundle file name {name!r}", path=where)
    return name


def read_manifest(directory: str | Path, *, verify: bool = True) -> BundleManifest:
    """Read `directory/manifest.json`, check its structure and that every file it names exists.

    With `verify` (the default) every file's SHA-256 is compared with the manifest's `files`
    table; a mismatch names the file. Raises XtmError for anything wrong.
    """
    d = Path(directory)
    if not d.is_dir():
        raise XtmError("bundle directory not found" if not d.exists() else "not a directory: a bundle is a "
                       "directory with manifest.json", path=d)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise XtmError(f"no {MANIFEST}: not an xtm bundle (write one with xtm-export)", path=mpath)
    _require_inside(d, mpath)
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XtmError(f"invalid JSON: {e}", path=mpath) from e
    if not isinstance(raw, dict):
        raise XtmError("manifest must be a JSON object", path=mpath)
    if raw.get("format") != FORMAT:
        raise XtmError(f"'format' is {raw.get('format')!r}, expected {FORMAT!r}: not an xtm bundle", path=mpath)
    # Version first: a newer bundle may legitimately fail every other check below.
    version = _require(raw, "schema_version", int, mpath)
    if version > SCHEMA_VERSION:
        raise XtmError(f"bundle schema {version} is newer than this xtm (reads {SCHEMA_VERSION}): upgrade xtm",
                       path=mpath)
    if version < 1:
        raise XtmError(f"invalid schema_version {version}", path=mpath)

    num_topics = _require(raw, "num_topics", int, mpath)
    if num_topics < 1:
        raise XtmError(f"num_topics must be positive, got {num_topics}", path=mpath)
    langs_raw = _require(raw, "languages", list, mpath)
    if not langs_raw:
        raise XtmError("'languages' is empty", path=mpath)
    languages = [normalize_lang(x) for x in langs_raw]
    if len(set(languages)) != len(languages):
        raise XtmError(f"'languages' lists a language twice: {languages}", path=mpath)
    files = _require(raw, "files", dict, mpath)
    for name, digest in files.items():
        _plain_name(name, mpath, "files: ")
        if not isinstance(digest, str):
            raise XtmError(f"files: checksum of {name} must be a hex string", path=mpath)

    enc_raw = _require(raw, "encoders", dict, mpath)
    encoders: dict[str, EncoderEntry] = {}
    for lang in languages:
        # Keys may use an alias (cn); the language list decides which encoders must exist.
        entry = next((v for k, v in enc_raw.items() if normalize_lang(k) == lang), None)
        if entry is None:
            raise XtmError(f"no encoder for language '{lang}' listed in 'languages'", path=mpath)
        ctx = f"encoders.{lang}: "
        if not isinstance(entry, dict):
            raise XtmError(f"{ctx}must be an object", path=mpath)
        tok = _require(entry, "tokenizer", dict, mpath, ctx)
        for key in ("lang", "kind"):
            if not isinstance(tok.get(key), str):
                raise XtmError(f"{ctx}tokenizer needs a string '{key}'", path=mpath)
        vocab_size = _require(entry, "vocab_size", int, mpath, ctx)
        if vocab_size < 1:
            raise XtmError(f"{ctx}vocab_size must be positive, got {vocab_size}", path=mpath)
        beta = entry.get("beta")
        input_format = entry.get("input_format", "dense") if version >= 2 else "dense"
        if input_format not in INPUT_FORMATS:
            raise XtmError(f"{ctx}unknown input_format {input_format!r} (this xtm reads {', '.join(INPUT_FORMATS)}): "
                           "upgrade xtm", path=mpath)
        if input_format == "sparse":
            inputs = _require(entry, "inputs", list, mpath, ctx)
            if len(inputs) != 2 or not all(isinstance(x, str) for x in inputs):
                raise XtmError(f"{ctx}'inputs' must name the word-id and count inputs, got {inputs!r}", path=mpath)
        else:
            inputs = [_require(entry, "input", str, mpath, ctx)]
        encoders[lang] = EncoderEntry(
            lang=lang,
            file=_plain_name(_require(entry, "file", str, mpath, ctx), mpath, ctx),
            inputs=tuple(inputs),
            input_format=input_format,
            output=_require(entry, "output", str, mpath, ctx),
            vocab=_plain_name(_require(entry, "vocab", str, mpath, ctx), mpath, ctx),
            vocab_size=vocab_size,
            beta=_plain_name(beta, mpath, ctx) if isinstance(beta, str) else None,
            tokenizer=dict(tok),
        )
    topics = _plain_name(_require(raw, "topics", str, mpath), mpath, "topics: ")

    manifest = BundleManifest(
        directory=d, schema_version=version, model=str(raw.get("model", "unknown")), num_topics=num_topics,
        languages=languages, encoders=encoders, topics=topics, files=dict(files),
        xtm_version=raw.get("xtm_version"), created=raw.get("created"), opset=raw.get("opset"),
        quantization=raw.get("quantization"), raw=raw,
    )
    # The optional contextual entry is part of the manifest's structure: checked with it, before
    # the files, so an error in the manifest is reported as such. (Imported here: it imports us.)
    from xtm.runtime.contextual import read_contextual_entry

    read_contextual_entry(manifest)
    _check_files(manifest, verify=verify)
    return manifest


def _listed_path(m: BundleManifest, name: str) -> Path:
    """A listed file's path, once it is known to be a regular file resolving inside the bundle.

    The resolved target is what every later open reads, so a symlink out of the directory is
    refused even when its current bytes match the checksum (they can change after the check).
    """
    p = m.directory / name
    if not os.path.lexists(p):
        raise XtmError("missing from the bundle (listed in manifest.json)", path=p)
    _require_inside(m.directory, p)
    if not stat.S_ISREG(os.stat(p).st_mode):
        # A FIFO would block the checksum forever, a directory would fail later with a vaguer error.
        raise XtmError("not a regular file (listed in manifest.json)", path=p)
    return p


def _require_inside(directory: Path, p: Path) -> None:
    try:
        real, root = p.resolve(strict=True), directory.resolve(strict=True)
    except (OSError, RuntimeError) as e:  # a dangling or looping symlink
        raise XtmError(f"cannot resolve the file ({e.__class__.__name__}): broken symlink?", path=p) from e
    if real != root and root not in real.parents:
        raise XtmError(f"resolves outside the bundle directory (to {real}): a bundle holds its own files, "
                       "not links to others", path=p)


def _graph_files(m: BundleManifest) -> list[str]:
    """Listed files onnxruntime will open as graphs: the encoders, the contextual graph, any *.onnx."""
    names = [e.file for e in m.encoders.values()]
    ctx = m.raw.get("contextual")
    if isinstance(ctx, dict) and isinstance(ctx.get("file"), str) and ctx["file"] in m.files:
        names.append(ctx["file"])
    names += [n for n in m.files if n.endswith(".onnx")]
    return list(dict.fromkeys(names))


def _check_files(m: BundleManifest, *, verify: bool) -> None:
    """Every referenced file is listed with a checksum and is a regular file inside the bundle; no
    graph reads external data; with `verify`, checksums match."""
    referenced = [m.topics]
    for e in m.encoders.values():
        referenced += [e.file, e.vocab] + ([e.beta] if e.beta else [])
    for name in referenced:
        if name not in m.files:
            raise XtmError(f"{name} is used but has no checksum in 'files': incomplete manifest",
                           path=m.directory / MANIFEST)
    # Existence first for all files, so a missing file is reported as missing, not as a bad checksum.
    paths = {name: _listed_path(m, name) for name in m.files}
    if verify:
        for name, expected in m.files.items():
            p = paths[name]
            actual = sha256_file(p)
            if actual != expected.lower():
                raise XtmError(f"checksum mismatch (sha256 {actual[:12]}..., manifest says {expected[:12]}...): "
                               "the file changed after export or is corrupted; re-export the bundle", path=p)
    # Also without `verify`: skipping checksums saves time, never this check (it reads only headers).
    for name in _graph_files(m):
        _refuse_external_data(paths[name])


def listed_file(m: BundleManifest, name: str) -> Path:
    """Path of a file the manifest lists, checked again now: a regular file inside the bundle.

    For files opened long after read_manifest (the contextual route opens on first use), so a file
    swapped for a symlink in between is still refused."""
    if name not in m.files:
        raise XtmError(f"{name} is not listed in 'files'", path=m.directory / MANIFEST)
    return _listed_path(m, name)


def graph_file(m: BundleManifest, name: str) -> Path:
    """listed_file for an ONNX graph, also checked again for external data."""
    p = listed_file(m, name)
    _refuse_external_data(p)
    return p


def _refuse_external_data(p: Path) -> None:
    external = onnx_external_data(p)
    if external:
        raise XtmError(f"the ONNX graph reads external data ({', '.join(external)}), which the manifest does not "
                       "vouch for: an xtm bundle keeps every weight inside its .onnx file; re-export it with "
                       "xtm-export", path=p)


# -- ONNX external data, read from the protobuf wire format ---------------------------------------
#
# Why not onnx.load: the runtime does not depend on the onnx package. Why not onnxruntime: it has
# no switch that refuses external data, and loading a graph from bytes resolves external files
# against the working directory instead. The wire format is simple and stable: each field is
# a varint key (field number << 3 | wire type) then a varint, 8 or 4 bytes, or a length-prefixed
# payload. Only the messages on a path from ModelProto to a TensorProto are entered (field numbers
# from onnx/onnx.proto); everything else, weights included, is skipped by its length, so scanning
# an 80 MB graph touches little more than its headers.

_ONNX_PATHS: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training_info", 25: "function"},
    "training_info": {1: "graph", 2: "graph"},          # initialization, algorithm
    "function": {7: "node", 11: "attribute"},          # node, attribute_proto (defaults)
    "graph": {1: "node", 5: "tensor", 15: "sparse"},    # node, initializer, sparse_initializer
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse", 23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},               # values, indices
}
_TENSOR_EXTERNAL_DATA, _TENSOR_DATA_LOCATION, _LOCATION_EXTERNAL = 13, 14, 1
_MAX_DEPTH = 64  # subgraphs (If, Loop) nest; a deeper file is malformed or hostile


class _MalformedError(ValueError):
    pass


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _MalformedError(f"truncated or overlong varint at byte {pos}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Any:
    """(field number, wire type, varint value or payload start, payload end) of one message's fields."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _MalformedError(f"field number 0 at byte {pos}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
            continue
        if wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise _MalformedError(f"field {number} runs past the end of its message at byte {pos}")
            yield number, wire, pos, pos + size
            pos += size
            continue
        if wire in (1, 5):
            pos += 8 if wire == 1 else 4
            if pos > end:
                raise _MalformedError(f"truncated fixed-width field {number}")
            continue
        raise _MalformedError(f"unsupported wire type {wire} (field {number}) at byte {pos}")


def _tensor_external(buf: Any, start: int, end: int) -> str | None:
    """The location a TensorProto reads its data from, or None when its data is inline."""
    external, location = False, None
    for number, wire, a, b in _fields(buf, start, end):
        if number == _TENSOR_DATA_LOCATION and wire == 0 and a == _LOCATION_EXTERNAL:
            external = True
        elif number == _TENSOR_EXTERNAL_DATA and wire == 2:
            external = True
            entry = {n: bytes(buf[x:y]) for n, w, x, y in _fields(buf, a, b) if w == 2}
            if entry.get(1) == b"location":
                location = entry.get(2, b"").decode("utf-8", "replace")
    if not external:
        return None
    return location if location is not None else "<no location>"


def onnx_external_data(path: str | Path) -> list[str]:
    """Locations of every external-data file an ONNX model's tensors name ([] when all data is inline).

    Covers initializers, sparse initializers, tensors in node attributes (Constant), subgraphs,
    functions and training graphs. Raises XtmError when the file is not a well-formed protobuf.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise XtmError("not an ONNX model: the file is empty", path=path)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _scan_model(buf, len(buf))
    except _MalformedError as e:
        raise XtmError(f"not a valid ONNX model ({e})", path=path) from e
    except OSError as e:
        raise XtmError(f"cannot read the ONNX model: {e.strerror or e}", path=path) from e


def _scan_model(buf: Any, size: int) -> list[str]:
    found: list[str] = []
    stack: list[tuple[str, int, int, int]] = [("model", 0, size, 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_DEPTH:
            raise _MalformedError(f"messages nested deeper than {_MAX_DEPTH}")
        if kind == "tensor":
            location = _tensor_external(buf, start, end)
            if location is not None:
                found.append(location)
            continue
        children = _ONNX_PATHS[kind]
        for number, wire, a, b in _fields(buf, start, end):
            child = children.get(number)
            if child is not None and wire == 2:
                stack.append((child, a, b, depth + 1))
    return list(dict.fromkeys(found))

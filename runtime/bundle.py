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

Unknown top-level manifest keys are ignored on purpose: later versions add new kinds of encoders
under new keys, and an older runtime can still serve the kinds it knows. A newer schema version
is refused, because then the meaning of the keys we do read may have changed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtm.errors import XtmError
from xtm.languages import normalize_lang

__all__ = ["FORMAT", "INPUT_FORMATS", "MANIFEST", "SCHEMA_VERSION", "BundleManifest", "EncoderEntry",
           "read_manifest", "sha256_file"]

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
    _check_files(manifest, verify=verify)
    return manifest


def _check_files(m: BundleManifest, *, verify: bool) -> None:
    """Every referenced file is listed with a checksum and exists; with `verify`, checksums match."""
    referenced = [m.topics]
    for e in m.encoders.values():
        referenced += [e.file, e.vocab] + ([e.beta] if e.beta else [])
    for name in referenced:
        if name not in m.files:
            raise XtmError(f"{name} is used but has no checksum in 'files': incomplete manifest",
                           path=m.directory / MANIFEST)
    # Existence first for all files, so a missing file is reported as missing, not as a bad checksum.
    for name in m.files:
        p = m.directory / name
        if not p.is_file():
            raise XtmError("missing from the bundle (listed in manifest.json)", path=p)
    if verify:
        for name, expected in m.files.items():
            p = m.directory / name
            actual = sha256_file(p)
            if actual != expected.lower():
                raise XtmError(f"checksum mismatch (sha256 {actual[:12]}..., manifest says {expected[:12]}...): "
                               "the file changed after export or is corrupted; re-export the bundle", path=p)

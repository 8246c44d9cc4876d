"""The bundle format's one owner: what an exported bundle is, and reading and checking its manifest.

Torch-free and onnx-free. Writing a manifest is xtm.runtime.bundle_write, placing a bundle
directory xtm.runtime.bundle_dir; both use the constants and checks defined here, so the format
is defined once.

A bundle is a directory written by `xtm-export`:

    manifest.json         format, schema version, model, topics, per-language encoders, checksums
    encoder_<lang>.onnx   a document's bag of words -> output "theta" float32 [N, K]
    vocab_<lang>.txt      V_lang lines; line j is word id j (column j of the bag of words)
    beta_<lang>.npy       float32 [K, V_lang] topic-word weights
    topics.json           top words of every topic in every language (`read_topics`)

An encoder reads its bag of words in one of two input formats (the entry's "input_format"):

    dense   (schema 1, the default) one input, named by "input": float32 [N, V_lang] counts.
    sparse  (schema 2) two inputs, named by "inputs": word ids int64 [N, L] and their counts
            float32 [N, L]; row i lists document i's distinct in-vocabulary word ids, padded to the
            batch's longest row with count 0 (the padding id may be any valid id, 0 by convention).
            The first layer then costs N x L x H instead of N x V x H: about 11 of 5,000 columns
            are non-zero in a news headline.

An optional top-level "contextual" entry (`ContextualEntry`, its own format number
CONTEXTUAL_FORMAT) names one more graph, token ids -> theta, and its tokenizer file: runtimes
that predate it ignore the key and the extra files, so it changes no schema version.

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
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from xtm.errors import TransientError, XtmError, os_error
from xtm.json_files import read_json
from xtm.languages import normalize_lang
from xtm.paths import is_plain_file_name
from xtm.runtime.bundle_onnx import onnx_external_data

__all__ = ["AUTO_ROUTES", "CONTEXTUAL_FORMAT", "FORMAT", "INPUT_FORMATS", "MANIFEST", "MAX_MIN_TOKEN_LENGTH",
           "SCHEMA_VERSION", "TOKENIZER_KINDS", "BundleManifest", "ContextualEntry", "EncoderEntry", "check_checksum",
           "check_files", "check_tokenizer", "check_theta", "graph_file", "listed_file", "onnx_external_data",
           "parse_manifest", "read_contextual_entry", "read_manifest", "read_topic_labels", "read_topics",
           "read_listed", "read_verified", "sha256_bytes", "sha256_file", "validate_manifest"]

FORMAT = "xtm-bundle"
# 2 added sparse encoder inputs; a schema-1 bundle (dense inputs only) reads unchanged. 3 added a tokenizer's
# user_words (written only by runs trained with --user-words: a runtime that ignored them would cut those words
# apart and miss the vocabulary, so it must refuse the bundle instead).
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
INPUT_FORMATS = ("dense", "sparse")
CONTEXTUAL_FORMAT = 1  # the "contextual" entry's own version (the key is optional, the schema unchanged)
MAX_MIN_TOKEN_LENGTH = 100  # longer than any word: a larger value can only be a broken manifest
MAX_SEGMENTER_CHARS = 200
TOKENIZER_KINDS = ("sentencepiece", "hf-tokenizers")  # the contextual route's tokenizers
AUTO_ROUTES = ("bow", "contextual")  # the contextual entry's "auto_route" (absent: "bow")


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

    def to_json(self) -> dict[str, Any]:
        """The manifest's entry (read back by `parse_manifest`); the language is its key."""
        inputs: dict[str, Any] = {"inputs": list(self.inputs)} if self.sparse else {"input": self.inputs[0]}
        return {"file": self.file, "input_format": self.input_format, **inputs, "output": self.output,
                "vocab": self.vocab, "vocab_size": self.vocab_size, **({"beta": self.beta} if self.beta else {}),
                "tokenizer": dict(self.tokenizer)}


@dataclass(frozen=True)
class ContextualEntry:
    """The optional "contextual" entry: one graph (token ids, mask -> theta, sentence embedding) and
    its tokenizer file (`tokenizer["file"]`); xtm.runtime.contextual serves it. The fields after
    `tokenizer` describe the route for people and reports; the runtime does not need them, except
    `auto_route`: what `--route auto` serves the training languages with, "contextual" (the same
    network as every other language; new runs, issue 14) or "bow" (their bags of words; absent in
    bundles from before issue 14, which keep that behaviour)."""

    file: str
    inputs: tuple[str, str]
    outputs: tuple[str, str]
    encoder: str
    embedding_dim: int
    languages: tuple[str, ...]
    tokenizer: dict[str, Any]
    finetuned: bool = False
    quantization: str | None = None
    objective: str | None = None
    test_agreement: float | None = None
    auto_route: str = "bow"

    def to_json(self) -> dict[str, Any]:
        """The manifest's "contextual" entry (read back by `read_contextual_entry`)."""
        return {"format": CONTEXTUAL_FORMAT, "file": self.file, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "encoder": self.encoder, "finetuned": self.finetuned,
                "embedding_dim": self.embedding_dim, "quantization": self.quantization,
                "languages": list(self.languages), "tokenizer": dict(self.tokenizer), "objective": self.objective,
                "test_agreement": self.test_agreement, "auto_route": self.auto_route}


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
    contextual: ContextualEntry | None = None

    def path(self, name: str) -> Path:
        """Absolute path of a bundle file named in the manifest."""
        return self.directory / name

    def served_languages(self, route: str) -> list[str] | None:
        """Languages `route` ("auto", "bow", "contextual"; checked by the caller) can read: the bag-of-words
        languages, plus the contextual encoder's when the route uses it; None when that encoder does not list its
        languages (any). The "contextual" route of a bundle without one: the bag-of-words languages (the caller
        refuses the route)."""
        if route == "bow" or self.contextual is None:
            return list(self.languages)
        ctx = list(self.contextual.languages)
        if not ctx:
            return None
        return ctx if route == "contextual" else list(self.languages) + [c for c in ctx if c not in self.languages]

    @property
    def content_sha256(self) -> str:
        """SHA-256 of the manifest as read (its object in canonical JSON): it lists every file's checksum, so it
        names the bundle's content; another load of "the same" bundle compares it."""
        return manifest_digest(self.raw)


# The most a manifest.json is read for its identity (a real one is a few KB): a FIFO or a huge file never blocks.
_MANIFEST_IDENTITY_BYTES = 16 << 20


def current_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest object now at `directory` as JSON, not validated (its files are not looked at: a damaged
    graph is not a different bundle); None where no manifest can be read there (gone, not a regular file, over
    16 MiB, not a JSON object). TransientError for a passing shortage (open files), which says nothing about
    the bundle. For "which bundle is this now" (TopicModel.bundle_changed, xtm-infer --summary)."""
    from xtm.json_files import parse_json_bytes
    from xtm.text_files import read_bounded

    path = Path(directory) / MANIFEST
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        raw = parse_json_bytes(read_bounded(path, _MANIFEST_IDENTITY_BYTES), path)
    except OSError as e:
        error = os_error("", e, path=path)
        if isinstance(error, TransientError):
            raise error from e
        return None
    except XtmError:
        return None
    return raw if isinstance(raw, dict) else None


def manifest_digest(raw: dict[str, Any]) -> str:
    """SHA-256 of a manifest object in canonical JSON (`BundleManifest.content_sha256`): the same bundle content,
    the same digest, however the file was formatted."""
    return sha256_bytes(json.dumps(raw, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks so large encoders never sit in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes already in memory (the Ray engine ships a bundle as bytes)."""
    return hashlib.sha256(data).hexdigest()


def read_verified(path: Path, size: int, expected: str | None) -> bytes:
    """The first `size` bytes of `path`, from one open; with `expected`, the whole file's SHA-256 must be it (what
    follows `size` goes through the hash, never into memory): the bytes used are the bytes checked."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        data = f.read(size)
        if expected is not None:
            h.update(data)
            while chunk := f.read(1 << 20):
                h.update(chunk)
    if expected is not None:
        check_checksum(path, h.hexdigest(), expected)
    return data


def check_checksum(path: Path, actual: str, expected: str) -> None:
    """The one comparison of a file's SHA-256 with its manifest's (hex, either case) and its error."""
    if actual != expected.lower():
        raise XtmError(f"checksum mismatch (sha256 {actual[:12]}..., manifest says {expected[:12]}...): "
                       "the file changed after export or is corrupted; re-export the bundle", path=path)


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
    if not is_plain_file_name(name) or name == MANIFEST:
        raise XtmError(f"{ctx}invalid bundle file name {name!r}", path=where)
    return name


def read_manifest(directory: str | Path, *, verify: bool = True, verified_on_read: bool = False) -> BundleManifest:
    """Read `directory/manifest.json`, check its structure and that every file it names exists.

    With `verify` (the default) every file's SHA-256 is compared with the manifest's `files`
    table; a mismatch names the file. Raises XtmError for anything wrong. `verified_on_read`: the caller
    checks the files it reads against their checksums as it reads them (TopicModel: the encoders, vocabularies
    and topics through `read_listed`, beta through `read_verified`, the contextual route on first use), so only
    the others are hashed here (each file hashed once, not twice).
    """
    d = Path(directory)
    if not d.is_dir():
        raise XtmError("bundle directory not found" if not d.exists() else "not a directory: a bundle is a "
                       "directory with manifest.json", path=d)
    mpath = d / MANIFEST
    if not mpath.is_file():
        raise XtmError(f"no {MANIFEST}: not an xtm bundle (write one with xtm-export)", path=mpath)
    _require_inside(d, mpath)
    return validate_manifest(read_json(mpath), d, verify=verify, verified_on_read=verified_on_read)


def read_topics(manifest: BundleManifest, obj: Any = None) -> list[dict[str, list[str]]]:
    """topics.json (written by xtm.runtime.bundle_write.write_topics): topic k's top words by language,
    `[k][lang] -> [word, ...]`, for the manifest's languages (others are ignored; alias keys such as
    "cn" are read as their language). A topic may be listed in any order, by its "id" (else its
    position). XtmError naming the file for anything that is not that. `obj`: the file's JSON value
    when the caller read it already (from bytes it checked against the manifest)."""
    path = manifest.path(manifest.topics)
    num_topics = manifest.num_topics
    if obj is None:
        obj = read_json(path)
    topics = obj.get("topics") if isinstance(obj, dict) else None
    if not isinstance(topics, list) or len(topics) != num_topics:
        raise XtmError(f"expected a 'topics' list of {num_topics} topics", path=path)
    out: list[dict[str, list[str]] | None] = [None] * num_topics
    for pos, t in enumerate(topics):
        k = t.get("id", pos) if isinstance(t, dict) else None
        words = t.get("words") if isinstance(t, dict) else None
        # bool is an int subclass: an id given as true is a broken file, not topic 1.
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < num_topics or not isinstance(words, dict) \
                or not all(isinstance(ws, list) for ws in words.values()):
            raise XtmError(f"topic #{pos}: needs an integer 'id' in [0, {num_topics}) and a 'words' object of "
                           "word lists", path=path)
        if out[k] is not None:
            raise XtmError(f"topic #{pos}: id {k} is listed twice (so another topic would have no words)", path=path)
        served = {}
        for lang, ws in words.items():
            try:
                code = normalize_lang(lang)
            except XtmError:
                continue                      # not a language code: not one of the manifest's languages
            if code in manifest.languages:
                served[code] = [str(w) for w in ws]
        out[k] = served
    return [t or {} for t in out]


def read_topic_labels(manifest: BundleManifest, obj: Any = None) -> list[dict[str, str]]:
    """Each topic's label per language from topics.json (each topic's optional "labels" object, written
    by xtm-export from the run's labels.json): `[k][lang] -> label`, {} for a topic without one. Bundles
    from before labels have none. A value that is not a label (xtm.labels.check_label: markup, control
    characters, over 120 characters, not a string) is left out, never shown; the structure itself is
    read_topics' to check. `obj`: as read_topics'."""
    from xtm.labels import check_label

    if obj is None:
        try:
            obj = read_json(manifest.path(manifest.topics))
        except XtmError:
            return [{} for _ in range(manifest.num_topics)]
    topics = obj.get("topics") if isinstance(obj, dict) else None
    out: list[dict[str, str]] = [{} for _ in range(manifest.num_topics)]
    for pos, t in enumerate(topics if isinstance(topics, list) else []):
        k = t.get("id", pos) if isinstance(t, dict) else None
        labels = t.get("labels") if isinstance(t, dict) else None
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < manifest.num_topics \
                or not isinstance(labels, dict):
            continue
        for lang, value in labels.items():
            try:
                code = normalize_lang(lang)
            except XtmError:
                continue
            label = check_label(value)
            if code in manifest.languages and label is not None:
                out[k][code] = label
    return out


def validate_manifest(raw: Any, directory: Path, *, verify: bool, verified_on_read: bool = False) -> BundleManifest:
    """`parse_manifest`, then `check_files`: what read_manifest checks once the JSON is read, and
    what the writer checks before it writes a manifest."""
    manifest = parse_manifest(raw, directory)
    check_files(manifest, verify=verify, verified_on_read=verified_on_read)
    return manifest


def parse_manifest(raw: Any, directory: Path) -> BundleManifest:
    """Check a manifest object's structure (the files it names are not opened); XtmError if wrong.

    The optional contextual entry is part of the structure: checked with it, before any file, so
    an error in the manifest is reported as such. What only a newer xtm reads says both versions."""
    mpath = Path(directory) / MANIFEST
    if not isinstance(raw, dict):
        raise XtmError("manifest must be a JSON object", path=mpath)
    try:
        return _parse_manifest(raw, mpath)
    except XtmError as e:
        if not e.reason.endswith(": upgrade xtm"):
            raise
        import xtm

        written = raw.get("xtm_version")
        by = f"xtm {written}" if isinstance(written, str) and written.isprintable() and len(written) <= 40 else \
            "an unknown xtm"
        raise XtmError(f"{e.reason} (this is xtm {xtm.__version__}; the bundle was written by {by})", path=e.path,
                       line=e.line, field=e.field) from None


def _parse_manifest(raw: dict[str, Any], mpath: Path) -> BundleManifest:
    directory = mpath.parent
    version = _schema_version(raw, mpath)
    num_topics = _require(raw, "num_topics", int, mpath)
    if num_topics < 1:
        raise XtmError(f"num_topics must be positive, got {num_topics}", path=mpath)
    languages = _languages(raw, mpath)
    files = _files_table(raw, mpath)
    enc_raw = _require(raw, "encoders", dict, mpath)
    encoders = {lang: _encoder(enc_raw, lang, version, mpath) for lang in languages}
    topics = _plain_name(_require(raw, "topics", str, mpath), mpath, "topics: ")
    return BundleManifest(
        directory=Path(directory), schema_version=version, model=str(raw.get("model", "unknown")),
        num_topics=num_topics, languages=languages, encoders=encoders, topics=topics, files=dict(files),
        xtm_version=raw.get("xtm_version"), created=raw.get("created"), opset=raw.get("opset"),
        quantization=raw.get("quantization"), raw=raw, contextual=_contextual(raw.get("contextual"), files, mpath),
    )


def _schema_version(raw: dict[str, Any], mpath: Path) -> int:
    if raw.get("format") != FORMAT:
        raise XtmError(f"'format' is {raw.get('format')!r}, expected {FORMAT!r}: not an xtm bundle", path=mpath)
    # Version first: a newer bundle may legitimately fail every other check.
    version = _require(raw, "schema_version", int, mpath)
    if version > SCHEMA_VERSION:
        raise XtmError(f"bundle schema {version} is newer than this xtm (reads {SCHEMA_VERSION}): upgrade xtm",
                       path=mpath)
    if version < 1:
        raise XtmError(f"invalid schema_version {version}", path=mpath)
    return version


def _languages(raw: dict[str, Any], mpath: Path) -> list[str]:
    langs_raw = _require(raw, "languages", list, mpath)
    if not langs_raw:
        raise XtmError("'languages' is empty", path=mpath)
    languages = [normalize_lang(x) for x in langs_raw]
    if len(set(languages)) != len(languages):
        raise XtmError(f"'languages' lists a language twice: {languages}", path=mpath)
    return languages


def _files_table(raw: dict[str, Any], mpath: Path) -> dict[str, Any]:
    files = _require(raw, "files", dict, mpath)
    for name, digest in files.items():
        _plain_name(name, mpath, "files: ")
        if not isinstance(digest, str):
            raise XtmError(f"files: checksum of {name} must be a hex string", path=mpath)
    return files


def _encoder(enc_raw: dict[str, Any], lang: str, version: int, mpath: Path) -> EncoderEntry:
    # Keys may use an alias (cn); the language list decides which encoders must exist.
    entry = next((v for k, v in enc_raw.items() if normalize_lang(k) == lang), None)
    if entry is None:
        raise XtmError(f"no encoder for language '{lang}' listed in 'languages'", path=mpath)
    ctx = f"encoders.{lang}: "
    if not isinstance(entry, dict):
        raise XtmError(f"{ctx}must be an object", path=mpath)
    tok = check_tokenizer(_require(entry, "tokenizer", dict, mpath, ctx), mpath, ctx)
    vocab_size = _require(entry, "vocab_size", int, mpath, ctx)
    if vocab_size < 1:
        raise XtmError(f"{ctx}vocab_size must be positive, got {vocab_size}", path=mpath)
    beta = entry.get("beta")
    input_format = entry.get("input_format", "dense") if version >= 2 else "dense"
    inputs = _encoder_inputs(entry, input_format, mpath, ctx)
    return EncoderEntry(
        lang=lang, file=_plain_name(_require(entry, "file", str, mpath, ctx), mpath, ctx), inputs=inputs,
        input_format=input_format, output=_require(entry, "output", str, mpath, ctx),
        vocab=_plain_name(_require(entry, "vocab", str, mpath, ctx), mpath, ctx), vocab_size=vocab_size,
        beta=_plain_name(beta, mpath, ctx) if isinstance(beta, str) else None, tokenizer=dict(tok),
    )


def check_tokenizer(tok: dict[str, Any], mpath: Path, ctx: str) -> dict[str, Any]:
    """The encoder's tokenizer settings, each of the type TokenizerSpec reads (a "false" string
    would otherwise read as True, a non-number would fail at the first document)."""
    from xtm.runtime.tokenize import KINDS

    ctx += "tokenizer: "
    for key in ("lang", "kind"):
        _require(tok, key, str, mpath, ctx)
    if tok["kind"] not in KINDS:
        raise XtmError(f"{ctx}unknown kind {tok['kind']!r} (this xtm reads {', '.join(KINDS)}): upgrade xtm",
                       path=mpath)
    if "lowercase" in tok:
        _require(tok, "lowercase", bool, mpath, ctx)
    if "min_token_length" in tok:
        n = _require(tok, "min_token_length", int, mpath, ctx)
        if not 1 <= n <= MAX_MIN_TOKEN_LENGTH:
            raise XtmError(f"{ctx}'min_token_length' must be in [1, {MAX_MIN_TOKEN_LENGTH}], got {n}", path=mpath)
    if "user_words" in tok:  # words the segmenter keeps whole (xtm-train --user-words)
        from xtm.runtime.tokenize import user_words_problem

        if (problem := user_words_problem(_require(tok, "user_words", list, mpath, ctx))) is not None:
            raise XtmError(f"{ctx}'user_words' {problem}", path=mpath)
    if "segmenter" in tok:  # the releases training segmented with (said in a warning when the runtime's differ)
        release = _require(tok, "segmenter", str, mpath, ctx)
        if len(release) > MAX_SEGMENTER_CHARS or not release.isprintable():
            raise XtmError(f"{ctx}'segmenter' must be a line of at most {MAX_SEGMENTER_CHARS} printable characters "
                           "(as 'kiwipiepy 0.24.1, kiwipiepy_model 0.24.0')", path=mpath)
    return tok


def _encoder_inputs(entry: dict[str, Any], input_format: Any, mpath: Path, ctx: str) -> tuple[str, ...]:
    if input_format not in INPUT_FORMATS:
        raise XtmError(f"{ctx}unknown input_format {input_format!r} (this xtm reads {', '.join(INPUT_FORMATS)}): "
                       "upgrade xtm", path=mpath)
    if input_format == "dense":
        return (_require(entry, "input", str, mpath, ctx),)
    inputs = _require(entry, "inputs", list, mpath, ctx)
    if len(inputs) != 2 or not all(isinstance(x, str) for x in inputs):
        raise XtmError(f"{ctx}'inputs' must name the word-id and count inputs, got {inputs!r}", path=mpath)
    return tuple(inputs)


def read_contextual_entry(manifest: BundleManifest) -> ContextualEntry | None:
    """The manifest's "contextual" entry, checked; None when the bundle has no contextual route."""
    return _contextual(manifest.raw.get("contextual"), manifest.files, manifest.path(MANIFEST))


def _contextual(raw: Any, files: dict[str, Any], where: Path) -> ContextualEntry | None:
    if raw is None:
        return None
    ctx = "contextual: "
    if not isinstance(raw, dict):
        raise XtmError(f"{ctx}must be an object", path=where)
    fmt = raw.get("format", 1)
    if not isinstance(fmt, int) or fmt > CONTEXTUAL_FORMAT:
        raise XtmError(f"{ctx}format {fmt!r} is newer than this xtm (reads {CONTEXTUAL_FORMAT}): upgrade xtm",
                       path=where)

    def need(obj: dict[str, Any], key: str, kind: type, c: str = ctx) -> Any:
        if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool) and kind is int:
            raise XtmError(f"{c}'{key}' must be {kind.__name__}", path=where)
        return obj[key]

    inputs, outputs = need(raw, "inputs", list), need(raw, "outputs", list)
    if len(inputs) != 2 or len(outputs) != 2 or not all(isinstance(x, str) for x in inputs + outputs):
        raise XtmError(f"{ctx}'inputs' and 'outputs' must each name two tensors (ids, mask / theta, embedding)",
                       path=where)
    tok = need(raw, "tokenizer", dict)
    kind = need(tok, "kind", str, ctx + "tokenizer: ")
    if kind not in TOKENIZER_KINDS:
        raise XtmError(f"{ctx}unknown tokenizer kind {kind!r} (this xtm reads {', '.join(TOKENIZER_KINDS)}): "
                       "upgrade xtm", path=where)
    # The optional fields change how every text is cut into tokens: checked here, where the manifest is named,
    # not read later as int("abc") inside infer (a ValueError on every document).
    for key, kinds, low in (("max_tokens", int, 3), ("pad_id", int, 0)):
        value = tok.get(key, low)
        if not isinstance(value, kinds) or isinstance(value, bool) or value < low:
            raise XtmError(f"{ctx}tokenizer: '{key}' must be an integer of at least {low}, got {value!r}", path=where)
    for key in ("add_bos", "add_eos", "unk_per_char"):
        if not isinstance(tok.get(key, False), bool):
            raise XtmError(f"{ctx}tokenizer: '{key}' must be true or false, got {tok[key]!r}", path=where)
    names = [need(raw, "file", str), need(tok, "file", str, ctx + "tokenizer: ")]
    for name in names:
        if "/" in name or "\\" in name or name in ("", ".", "..") or name not in files:
            raise XtmError(f"{ctx}{name!r} must be a bundle file listed (with its checksum) in 'files'", path=where)
    langs = raw.get("languages", [])
    if not isinstance(langs, list) or not all(isinstance(x, str) for x in langs):
        raise XtmError(f"{ctx}'languages' must be a list of language codes", path=where)
    # It changes which encoder reads a document, so an unknown value is refused, never guessed.
    auto_route = raw.get("auto_route", "bow")
    if auto_route not in AUTO_ROUTES:
        raise XtmError(f"{ctx}'auto_route' must be one of {', '.join(AUTO_ROUTES)}, got {auto_route!r}: "
                       "upgrade xtm", path=where)
    return ContextualEntry(
        file=names[0], inputs=(inputs[0], inputs[1]), outputs=(outputs[0], outputs[1]),
        encoder=str(raw.get("encoder", "unknown")), embedding_dim=need(raw, "embedding_dim", int),
        languages=tuple(normalize_lang(x) for x in langs), tokenizer=dict(tok), auto_route=auto_route,
        **_contextual_notes(raw))


def _contextual_notes(raw: dict[str, Any]) -> dict[str, Any]:
    """The descriptive fields, taken as they are when well-typed (never a reason to refuse a bundle)."""
    def text(key: str) -> str | None:
        return raw[key] if isinstance(raw.get(key), str) else None

    agreement = raw.get("test_agreement")
    number = isinstance(agreement, (int, float)) and not isinstance(agreement, bool)
    return {"finetuned": raw.get("finetuned") is True, "quantization": text("quantization"),
            "objective": text("objective"), "test_agreement": float(agreement) if number else None}


def _listed_path(m: BundleManifest, name: str) -> Path:
    """A listed file's path, once it is known to be a regular file resolving inside the bundle.

    The resolved target is what every later open reads, so a symlink out of the directory is
    refused even when its current bytes match the checksum (they can change after the check).
    """
    p = m.directory / name
    if not os.path.lexists(p):
        raise XtmError("missing from the bundle (listed in manifest.json)", path=p)
    _require_inside(m.directory, p)
    try:
        mode = os.stat(p).st_mode
    except OSError as e:  # gone since: the bundle replaced while it is read
        raise _unreadable(p, e) from e
    if not stat.S_ISREG(mode):
        # A FIFO would block the checksum forever, a directory would fail later with a vaguer error.
        raise XtmError("not a regular file (listed in manifest.json)", path=p)
    return p


def _unreadable(p: Path, e: OSError) -> XtmError:
    """A listed file that was there a moment ago and cannot be read now."""
    return os_error(f"cannot read: {e.strerror or type(e).__name__} (was the bundle replaced while it loaded?)", e,
                    path=p)


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
    names = [e.file for e in m.encoders.values()] + ([m.contextual.file] if m.contextual else [])
    names += [n for n in m.files if n.endswith(".onnx")]
    return list(dict.fromkeys(names))


def check_files(m: BundleManifest, *, verify: bool, verified_on_read: bool = False) -> None:
    """Every referenced file is listed with a checksum and is a regular file inside the bundle; no
    graph reads external data; with `verify`, checksums match (but for the files a loader checks as it reads
    them, with `verified_on_read`: see read_manifest). Raises XtmError naming the file."""
    referenced = [m.topics]
    for e in m.encoders.values():
        referenced += [e.file, e.vocab] + ([e.beta] if e.beta else [])
    for name in referenced:
        if name not in m.files:
            raise XtmError(f"{name} is used but has no checksum in 'files': incomplete manifest",
                           path=m.directory / MANIFEST)
    # Existence first for all files, so a missing file is reported as missing, not as a bad checksum.
    paths = {name: _listed_path(m, name) for name in m.files}
    later = _verified_on_read(m) if verified_on_read else set()
    if verify:
        for name, expected in m.files.items():
            if name in later:
                continue
            try:
                actual = sha256_file(paths[name])
            except OSError as e:  # gone or changed since it was listed
                raise _unreadable(paths[name], e) from e
            check_checksum(paths[name], actual, expected)
    # Also without `verify`: skipping checksums saves time, never this check (it reads only headers).
    for name in _graph_files(m):
        _refuse_external_data(paths[name])


def _verified_on_read(m: BundleManifest) -> set[str]:
    """The files TopicModel checks against their checksums when it reads them."""
    names = {m.topics} | {n for e in m.encoders.values() for n in (e.file, e.vocab, e.beta) if n}
    if m.contextual is not None:
        names |= {m.contextual.file, m.contextual.tokenizer["file"]}
    return names


def listed_file(m: BundleManifest, name: str) -> Path:
    """Path of a file the manifest lists, checked again now: a regular file inside the bundle.

    For files opened long after read_manifest (the contextual route opens on first use), so a file
    swapped for a symlink in between is still refused."""
    if name not in m.files:
        raise XtmError(f"{name} is not listed in 'files'", path=m.directory / MANIFEST)
    return _listed_path(m, name)


def read_listed(m: BundleManifest, name: str, *, verify: bool) -> bytes:
    """A listed file's bytes, read once; with `verify`, checked against the manifest's checksum. A loader builds
    from these bytes, never by opening the path again: a bundle re-exported (renamed into place) while it loads
    is then a checksum error, never another bundle's file inside this one."""
    p = listed_file(m, name)
    try:
        data = p.read_bytes()
    except OSError as e:
        raise _unreadable(p, e) from e
    if verify:
        check_checksum(p, sha256_bytes(data), m.files[name])
    return data


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


def check_theta(theta: Any, n: int, num_topics: int, path: Path) -> np.ndarray:
    """What a graph gave as theta for `n` documents: float [n, K] rows that are topic mixtures
    (finite, non-negative, summing to 1). XtmError naming the graph otherwise: a NaN must never
    reach an output line (JSON has no NaN) or a caller's pipeline as if it were a result."""
    theta = np.asarray(theta)
    if theta.shape != (n, num_topics) or theta.dtype.kind != "f":
        raise XtmError(f"the graph gave {theta.dtype} {list(theta.shape)} for {n} documents, expected float "
                       f"[{n}, {num_topics}]", path=path)
    if not np.isfinite(theta).all():
        raise XtmError("the graph gave topic weights that are NaN or infinite", path=path)
    if theta.size and (theta.min() < -1e-6 or np.abs(theta.sum(axis=1) - 1.0).max() > 1e-3):
        raise XtmError("the graph gave topic weights that are not a distribution (negative, or rows not summing "
                       "to 1)", path=path)
    return theta

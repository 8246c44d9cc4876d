"""Batch inference on Ray Data: documents -> theta and top topics on a pool of actors.

    from xtm.runtime.ray import infer_dataset, infer_files
    out = infer_dataset(ray.data.read_parquet("s3://bucket/docs/"), "bundles/ecnews", num_actors=8)
    infer_files(["docs/"], "bundles/ecnews", "topics.jsonl")      # what `xtm-infer --engine ray` runs

Design (docs/ray_inference.md):
- One actor holds ONE TopicModel (one set of onnxruntime sessions), made once in its constructor;
  `Dataset.map_batches(..., concurrency=N)` streams batches through the pool.
- The bundle travels once: the driver reads the files the manifest lists into a dict of bytes and
  `ray.put`s it; each actor gets the ObjectRef, writes the files to a private temp dir and loads
  them with checksum verification (the manifest's sha256 of every file), so a corrupted transfer
  fails loudly instead of serving a wrong model. No pickled model object is ever loaded.
- `infer_files` gives exactly `xtm-infer`'s output: each actor runs the inference engine
  (`xtm.runtime.engine.Engine`: parsing, inference and formatting, the code the local engine runs)
  on its batch; the driver keeps input order (`preserve_order`) and writes through the engine's
  `OutputWriter` (bad rows reported by file and line, in input order, or stopping the run under
  the same policy), atomically.

Nothing else in the runtime imports this module; `ray` itself is imported only when a function
here runs, and its absence is one clear XtmError.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from xtm.errors import XtmError
from xtm.paths import is_hidden_name
from xtm.runtime.engine import (
    CHUNK_BATCHES,
    RAY_THREADS_PER_ACTOR,
    Engine,
    InferenceCounts,
    InferenceOptions,
    OutputWriter,
    Row,
    check_lang_served,
    check_route,
    no_contextual_route,
    open_output,
    whole_number,
)
from xtm.runtime.records import (
    DEFAULT_FIELDS,
    DELIMITED_SUFFIXES,
    PARQUET_SUFFIXES,
    TEXT_SUFFIXES,
    FieldNames,
    TableShape,
    check_input_name,
    naming_read_errors,
)
from xtm.runtime.records import output_format as records_output_format

if TYPE_CHECKING:
    import pyarrow as pa
    import ray.data

    from xtm.runtime.bundle import BundleManifest

__all__ = ["INSTALL_HINT", "infer_dataset", "infer_files", "list_input_files", "pack_bundle"]

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "xtm[ray]"'
# A file given explicitly is read as Parquet by its ending (records.PARQUET_SUFFIXES), as JSONL
# otherwise, like xtm-infer does. Inside a directory only these endings and Parquet's are picked up.
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
# Rows per block the readers emit: large enough that per-block overhead vanishes, small enough to
# stream a multi-GB file in constant memory.
READ_BLOCK_ROWS = 8192
# Seconds to wait for a TCP connection to a cluster's address, and then for its first answer, before calling
# it unreachable (ray.init itself waits for ever); a live head answers in milliseconds, even across a continent.
CONNECT_TIMEOUT_S = 5.0
# What a gRPC client sends first (HTTP/2's connection preface, then an empty SETTINGS frame). Ray's GCS and
# its client server (ray://) are gRPC servers, and every HTTP/2 server answers with a SETTINGS frame (frame
# type 4 in the fourth byte of the first 9-byte frame header); a web server, a database or a silent port does
# not, and ray.init would wait on it for ever as on a dead one.
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")
_HTTP2_SETTINGS = 0x04


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401  (the extra, not only the core)
    except ImportError as e:
        raise XtmError(f"the Ray engine needs Ray Data, which is not installed: {INSTALL_HINT}") from e
    return ray


# -- the bundle, shipped once ---------------------------------------------------------------------


def pack_bundle(bundle_dir: str | Path) -> dict[str, bytes]:
    """manifest.json and every file it lists, as {file name: bytes}: what an actor needs to load it.

    Checked here (manifest structure, every file's sha256) so a wrong or damaged bundle fails on
    the driver, naming the user's file, before any actor starts; each actor checks its copy again
    after the transfer."""
    from xtm.runtime.bundle import MANIFEST, check_checksum, read_manifest, sha256_bytes

    manifest = read_manifest(bundle_dir, verify=False)
    files = {name: manifest.path(name).read_bytes() for name in [MANIFEST, *manifest.files]}
    # The bytes are in memory anyway: checking them here names the user's bundle, on the driver,
    # before any actor starts (each actor checks its copy again after the transfer).
    for name, expected in manifest.files.items():
        check_checksum(manifest.path(name), sha256_bytes(files[name]), expected)
    return files


def _materialize(files: dict[str, bytes], threads: int | None, route: str) -> Any:
    """A TopicModel from packed bundle files; the temp dir is gone before this returns."""
    from xtm.runtime.model import TopicModel

    tmp = tempfile.mkdtemp(prefix="xtm-bundle-")
    try:
        for name, data in files.items():
            # Names come from a manifest that read_manifest validated (plain names, no '/').
            if os.path.basename(name) != name:
                raise XtmError(f"invalid bundle file name {name!r}")
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        model = TopicModel.load(tmp, threads=threads, verify=True)
        # Everything infer() reads from disk is read now (the contextual graph is otherwise opened
        # on first use), so the temp dir can go at once: an actor killed by Ray leaves nothing.
        if model.has_contextual and route != "bow":
            model.contextual_encoder()
        return model
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class _TopicActor:
    """One Ray actor = one TopicModel. Called by map_batches with pyarrow tables.

    mode "lines": input rows from `_read_rows` (raw JSONL line or pre-parsed Parquet fields);
    output file, line, error, warning and the xtm-infer output line ("out", null for bad rows).
    mode "columns": input columns text, lang (optional), id (optional, passed through); output
    lang, route, theta (with full_theta), top_ids, top_weights, error (null for good rows)."""

    def __init__(self, bundle: list[Any], options: InferenceOptions, threads: int, mode: str, origin: str) -> None:
        import ray

        # The ref comes wrapped in a list so Ray hands it over unresolved; fetched once, here.
        files = ray.get(bundle[0])
        self.init_error: XtmError | None = None
        try:
            model = _materialize(files, threads, options.route)
            self.engine = Engine(model, options, bundle=origin)
        except XtmError as e:
            # Raised from __init__, Ray reports only "the actor died" (the cause is not kept);
            # raised from the first call, the driver gets this XtmError back and prints it clean.
            where = f"{origin}/{Path(e.path).name}" if e.path else origin
            self.init_error = XtmError(f"{e.reason} (in the copy shipped to a Ray worker)", path=where,
                                       line=e.line, field=e.field)
            return
        self.mode = mode

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.init_error is not None:
            raise self.init_error
        return self._lines(batch) if self.mode == "lines" else self._columns(batch)

    def _lines(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        cols = {name: batch.column(name).to_pylist() for name in ("line", "raw", "text", "lang", "id", "error",
                                                                  "warning")}
        engine = self.engine
        errors, warnings = cols["error"], cols["warning"]
        parsed, rows = [], []
        for i in range(batch.num_rows):
            raw = cols["raw"][i]
            if raw is not None:  # a JSONL line, parsed here (the readers only split lines)
                p = engine.parse_line(raw, cols["line"][i])
            elif errors[i] is None:  # a Parquet row: types and id checked by the reader, the rest now
                p = engine.parse_record({"text": cols["text"][i], "lang": cols["lang"][i]}, cols["line"][i],
                                        DEFAULT_FIELDS)  # (the reader's columns, under xtm's names)
                if p[0] is not None:
                    p[0]["id_json"] = cols["id"][i]
            else:  # the reader's error (a Parquet row, an over-long JSONL line)
                continue
            parsed.append(p)
            rows.append(i)
        out: list[str | None] = [None] * batch.num_rows
        # The local engine's code: unsupported documents and per-document failures become the
        # row's error, with the same words.
        for i, row in zip(rows, engine.infer(parsed), strict=True):
            out[i], errors[i], warnings[i] = row
        return pa.table({"file": batch.column("file"), "line": batch.column("line"),
                         "error": pa.array(errors, pa.string()), "warning": pa.array(warnings, pa.string()),
                         "out": pa.array(out, pa.string())})

    def _columns(self, batch: pa.Table) -> pa.Table:
        engine, opts = self.engine, self.engine.options
        names, fields = batch.column_names, opts.fields
        if fields.text not in names:
            raise XtmError(f"the dataset has no {fields.option('text')} column (it has {', '.join(names) or 'none'})")
        texts = batch.column(fields.text).to_pylist()
        langs = batch.column(fields.lang).to_pylist() if fields.lang in names else [None] * len(texts)
        errors: list[str | None] = [None] * len(texts)
        docs, rows = [], []
        for i, (text, lang) in enumerate(zip(texts, langs, strict=True)):
            # Null cells are absent fields, as in Parquet files: a null text is a missing text.
            doc, errors[i], _ = engine.parse_record({k: v for k, v in (("text", text), ("lang", lang))
                                                     if v is not None}, i, DEFAULT_FIELDS)
            if doc is not None:
                docs.append(doc)
                rows.append(i)
        res = None
        if docs:
            res = engine.model.infer([d["text"] for d in docs], [d["lang"] or opts.lang for d in docs],
                                     batch_size=opts.batch_size, top_k=opts.top_k, route=opts.route,
                                     min_lang_conf=opts.min_lang_conf)
        return _result_table(batch, res, rows, errors, engine.model.num_topics, opts)


def _result_table(batch: pa.Table, res: Any, rows: list[int], errors: list[str | None], num_topics: int,
                  opts: InferenceOptions) -> pa.Table:
    """infer_dataset's output columns for one batch: rows[j] of the batch got result j of `res`
    (None: no row was readable); every other row is bad, with errors[i] saying why."""
    import numpy as np
    import pyarrow as pa

    n, K, k = batch.num_rows, num_topics, min(opts.top_k, num_topics)
    theta = np.full((n, K), np.nan, dtype=np.float32)
    top_ids = np.full((n, k), -1, dtype=np.int32)
    top_w = np.full((n, k), np.nan, dtype=np.float32)
    out_lang: list[str | None] = [None] * n
    out_route: list[str | None] = [None] * n
    out_empty: list[bool | None] = [None] * n
    out_conf = np.full(n, np.nan, dtype=np.float32)
    out_oov = np.full(n, np.nan, dtype=np.float32)
    if res is not None:
        idx = np.asarray(rows)
        theta[idx], top_ids[idx], top_w[idx] = res.theta, res.top_ids, res.top_weights
        out_conf[idx], out_oov[idx] = res.lang_conf, res.oov_ratio
        for j, i in enumerate(rows):
            out_lang[i], out_route[i], out_empty[i] = res.langs[j], res.routes[j], bool(res.empty[j])
            if res.unsupported[j]:  # never read as another language: a bad row, with the reason
                errors[i], out_route[i], out_empty[i] = res.notes[j], None, None
    bad = np.asarray([e is not None for e in errors])

    def fixed(a: np.ndarray, width: int, typ: pa.DataType) -> pa.Array:
        if width == 0:  # top_k=0: Arrow has no fixed-size list of size 0
            return pa.array([None if b else [] for b in bad.tolist()], pa.list_(typ))
        flat = pa.array(a.reshape(-1), typ)
        return pa.FixedSizeListArray.from_arrays(flat, width, mask=pa.array(bad))

    cols: dict[str, Any] = {}
    if opts.id_field in batch.column_names:
        cols["id"] = batch.column(opts.id_field)
    cols["lang"] = pa.array(out_lang, pa.string())
    cols["lang_conf"] = pa.array(out_conf, pa.float32(), mask=np.isnan(out_conf))
    cols["route"] = pa.array(out_route, pa.string())
    cols["empty"] = pa.array(out_empty, pa.bool_())
    cols["oov_ratio"] = pa.array(out_oov, pa.float32(), mask=np.isnan(out_oov))
    if opts.full_theta:
        cols["theta"] = fixed(theta, K, pa.float32())
    cols["top_ids"] = fixed(top_ids, k, pa.int32())
    cols["top_weights"] = fixed(top_w, k, pa.float32())
    cols["error"] = pa.array(errors, pa.string())
    return pa.table(cols)


def _check_route(bundle_dir: str | Path, options: InferenceOptions) -> BundleManifest:
    """The route's and --lang's errors on the driver, from the manifest alone (no model loaded, no actor started);
    returns that manifest (read once, not verified: the actors check the whole bundle)."""
    from xtm.runtime.bundle import read_manifest

    manifest = read_manifest(bundle_dir, verify=False)
    if check_route(options.route) == "contextual" and manifest.contextual is None:
        raise no_contextual_route(bundle_dir)
    check_lang_served(options, manifest.served_languages(options.route))
    return manifest


def _default_actors(threads_per_actor: int, reserve: int) -> int:
    """Actors the cluster's CPUs hold, `reserve` CPUs left for the stages before them.

    Measured: 2 actors on 2 CPUs behind ray.data.read_parquet (listing and read tasks take 1 CPU
    each) hang for ever, the readers never get a CPU. infer_files' own readers reserve none."""
    ray = _import_ray()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if cpus > threads_per_actor:
        cpus -= reserve
    return max(1, cpus // threads_per_actor)


def _check_cpus(threads_per_actor: int, num_actors: int) -> None:
    """Refuses an actor no alive node can hold; warns when the nodes hold fewer than num_actors.

    Each actor reserves threads_per_actor CPUs on ONE node. Where no node has that many, Ray never
    starts it and the run waits for ever (Ray Data only logs that it "may hang forever"). A cluster
    whose nodes report no CPU at all is left alone: only an autoscaler adding nodes could run
    anything there, and its nodes cannot be seen before they come up."""
    ray = _import_ray()
    cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    largest = max(cpus, default=0.0)
    if 0 < largest < threads_per_actor and not (_started_here or _one_node_here(ray)):
        # Someone else's cluster may have an autoscaler that adds a larger node on demand: say so, wait.
        logger.warning("--threads %d: no Ray node up now has %d CPUs (the largest has %g); the actors wait for "
                       "a node that has (an autoscaler's), else for ever", threads_per_actor, threads_per_actor,
                       largest)
    elif 0 < largest < threads_per_actor:
        raise XtmError(f"--threads {threads_per_actor} needs {threads_per_actor} CPUs on one Ray node for each "
                       f"actor, and the largest node has {largest:g}: no actor could start (use --threads "
                       f"{max(1, int(largest))} or fewer)")
    fits = sum(int(c // threads_per_actor) for c in cpus)
    if 0 < fits < num_actors:
        # Not an error: they start as CPUs free up (other jobs' actors end, nodes are added). Until then
        # the first ones do all the work and the others only hold their place in Ray's queue.
        logger.warning("--actors %d x --threads %d: the Ray nodes (%g CPUs) hold %d such actors at a time; the "
                       "others wait for free CPUs", num_actors, threads_per_actor, sum(cpus), fits)


def _actor_counts(num_actors: Any, threads_per_actor: Any) -> tuple[int | None, int]:
    """(num_actors, threads_per_actor) checked, before Ray is started or joined; None threads: the default."""
    threads = whole_number("threads_per_actor", RAY_THREADS_PER_ACTOR if threads_per_actor is None
                           else threads_per_actor)
    return (None if num_actors is None else whole_number("num_actors", num_actors)), threads


def _map_actors(ds: ray.data.Dataset, bundle_dir: str | Path, mode: str, options: InferenceOptions, *,
                num_actors: int | None, threads_per_actor: int, reserve: int = 0) -> ray.data.Dataset:
    ray = _import_ray()
    _check_route(bundle_dir, options)
    bundle_ref = ray.put(pack_bundle(bundle_dir))  # once per dataset, shared by every actor (Ray is up now)
    size = num_actors or _default_actors(threads_per_actor, reserve)
    _check_cpus(threads_per_actor, size)
    return ds.map_batches(
        _TopicActor,
        # Rows per actor call: the local engine's chunk (CHUNK_BATCHES encoder batches).
        batch_size=options.batch_size * CHUNK_BATCHES,
        batch_format="pyarrow",
        zero_copy_batch=True,
        fn_constructor_kwargs={"bundle": [bundle_ref], "options": options, "threads": threads_per_actor,
                               "mode": mode, "origin": str(bundle_dir)},
        # A fixed pool: every actor loads the model once; Ray Data streams batches to whichever is free.
        compute=ray.data.ActorPoolStrategy(size=size),
        # An actor's onnxruntime sessions use threads_per_actor cores: reserve them, so Ray never
        # packs more actors on a node than it has cores.
        num_cpus=threads_per_actor,
        # Ray's actor restarts are kept (a lost node's actors come back). Ray logs one
        # "constructor arguments in the object store and max_restarts > 0" line for that: harmless
        # here, the driver holds the bundle's ref until the run ends. max_restarts=0 would silence
        # it, but only through ray_remote_args, which Ray 2.60 deprecates.
    )


def infer_dataset(ds: ray.data.Dataset, bundle_dir: str | Path, *, options: InferenceOptions | None = None,
                  num_actors: int | None = None, threads_per_actor: int | None = None,
                  **overrides: Any) -> ray.data.Dataset:
    """Topic mixtures of a Ray Dataset of documents, computed on `num_actors` actors (lazy).

    ds: columns "text" (str), optionally "lang" (ISO 639-1 or a name normalize_lang knows; null =
    detect) and "id" (any type, passed through unchanged); text_field, lang_field and id_field name
    other columns. Returns a Dataset with, per input row:
    id (when the input has it), lang, lang_conf (detector's probability; null when given), route
    ("bow"|"contextual"), empty (no in-vocabulary word: theta is the empty-document prior),
    oov_ratio (share of words outside the vocabulary; null on the contextual route), theta (K
    float32, with full_theta), top_ids and top_weights (top_k each, by decreasing weight), and
    error: null for a good row; for a bad row (text missing, not a string or empty; a language
    the bundle cannot read, given or detected; no language detected) the reason, with null
    results. Set
    `DataContext.get_current().execution_options.preserve_order = True` to keep input order.

    options: an `xtm.runtime.engine.InferenceOptions` (default: its defaults); `overrides`, its fields by
    name (top_k=2, batch_size=50, route, full_theta, lang, min_lang_conf, text_field, ...), replace those of
    `options`; a keyword that is neither a parameter nor a field is an XtmError naming it. The bad-record
    policy (strict, max_bad, max_share) has nothing to stop here: a bad row is a row with its error, and
    giving them as keywords is an XtmError.
    threads_per_actor: onnxruntime threads in each actor (default: options.threads, else
    RAY_THREADS_PER_ACTOR), reserved as Ray CPUs. num_actors
    defaults to the cluster's CPUs, less one for the stages before (readers), divided by
    threads_per_actor. Actors that take every CPU starve the upstream tasks that need one:
    measured with Ray 2.60, `read_parquet` (its file listing and reading take a CPU each, whatever
    ray_remote_args say) behind 2 actors on 2 CPUs never finishes. Keep num_actors *
    threads_per_actor below the cluster's CPUs, or materialize() the input first.
    """
    policy = sorted(k for k in ("strict", "max_bad", "max_share") if k in overrides)
    if policy:  # (accepted and ignored, a caller would believe bad rows stop the run)
        raise XtmError(f"infer_dataset: {', '.join(policy)} do not apply: each bad row comes back with its error "
                       "(the 'error' column); infer_files applies the bad-record policy")
    options = InferenceOptions.with_overrides(options, overrides, "infer_dataset")
    num_actors, threads_per_actor = _actor_counts(num_actors, options.threads if threads_per_actor is None
                                                  else threads_per_actor)
    return _map_actors(ds, bundle_dir, "columns", options, num_actors=num_actors,
                       threads_per_actor=threads_per_actor, reserve=1)


# -- files in, one JSONL file out -----------------------------------------------------------------


def list_input_files(paths: Sequence[str | Path]) -> list[tuple[str, str]]:
    """(path, "jsonl"|"parquet") for each input, directories expanded (recursively, sorted by path).

    A file named explicitly is Parquet by its ending (.parquet, .pq) and JSONL otherwise, as for
    xtm-infer; in a directory only .jsonl/.ndjson/.json and Parquet files are read, hidden files
    and directories (a name starting with ".") skipped.

    Wider than a training corpus directory (xtm.trainer.data.jsonl.jsonl_files: top-level *.jsonl):
    inference inputs are data sets as other tools lay them out (partitioned into subdirectories,
    .ndjson or Parquet), and each record is scored on its own, so which files a directory adds
    changes no other record's result; a training corpus's files decide its documents' ids, split
    and vocabulary."""
    out: list[tuple[str, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in _visible_files(p) if f.name.lower().endswith(PARQUET_SUFFIXES + JSONL_SUFFIXES))
            if not found:
                raise XtmError("no .jsonl, .ndjson, .json or .parquet files in this directory", path=p)
            out += [(str(f), _kind(f)) for f in found]
        elif p.is_file():
            out.append((str(p), _kind(p)))
        else:
            raise XtmError("input not found", path=p)
    return out


def _visible_files(root: Path) -> Iterator[Path]:
    """Files below `root`, none inside a hidden directory: .ipynb_checkpoints holds a copy of each
    notebook's data (every document read twice), .git, .cache and the like hold no input. The root
    itself may be hidden (the user named it). Symlinked directories are not entered, as rglob."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not is_hidden_name(d)]  # pruned: never walked
        for name in filenames:
            f = Path(dirpath, name)
            if not is_hidden_name(name) and f.is_file():
                yield f


def _kind(p: Path) -> str:
    check_input_name(p)
    # (else read as JSONL: "invalid JSON" on every line)
    if p.name.lower().endswith((*DELIMITED_SUFFIXES, *TEXT_SUFFIXES)):
        raise XtmError("--engine ray reads JSONL and Parquet: read CSV, TSV and plain text with the local engine, or "
                       "convert them to Parquet", path=p)
    return "parquet" if p.name.lower().endswith(PARQUET_SUFFIXES) else "jsonl"


_ROW_SCHEMA_FIELDS = (("file", "int32"), ("line", "int64"), ("raw", "binary"), ("text", "string"),
                      ("lang", "string"), ("id", "string"), ("error", "string"), ("warning", "string"))


def _row_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ in _ROW_SCHEMA_FIELDS])


def _read_rows(batch: dict[str, Any], fields: FieldNames = DEFAULT_FIELDS) -> Iterator[pa.Table]:
    """map_batches reader: for each input file of the batch, its rows as blocks in file order.

    JSONL: non-blank lines as raw bytes with their line numbers (parsed by the actors, exactly as
    xtm-infer parses them). Parquet: row numbers (1-based) as line numbers; rows checked here
    (all but the bundle's languages) and ids JSON-encoded, text and lang passed on typed."""
    for file_idx, path, kind in zip(batch["file"], batch["path"], batch["kind"], strict=True):
        rows = _read_parquet(int(file_idx), str(path), fields) if kind == "parquet" else \
            _read_jsonl(int(file_idx), str(path))
        # An I/O error on the input is the local engine's XtmError naming the file (not Ray's task traceback).
        yield from naming_read_errors(rows, str(path))


def _read_jsonl(file_idx: int, path: str) -> Iterator[pa.Table]:
    import pyarrow as pa

    from xtm.runtime.records import line_chunks, parse_line

    schema = _row_schema()
    with open(path, "rb") as f:
        # The same line splitter as xtm-infer (byte-order mark, blank lines skipped, over-long
        # lines skipped unread: raw None, with parse_line's reason for them).
        for chunk in line_chunks(f, READ_BLOCK_ROWS):
            n = len(chunk)
            none = pa.nulls(n)
            errors = [parse_line(None, 0, None)[1] if c[1] is None else None for c in chunk]
            yield pa.table([pa.array([file_idx] * n, pa.int32()), pa.array([c[0] for c in chunk], pa.int64()),
                            pa.array([c[1] for c in chunk], pa.binary()), none.cast(pa.string()),
                            none.cast(pa.string()), none.cast(pa.string()), pa.array(errors, pa.string()),
                            none.cast(pa.string())], schema=schema)


def _read_parquet(file_idx: int, path: str, fields: FieldNames) -> Iterator[pa.Table]:
    import pyarrow as pa

    from xtm.runtime.records import binary_as_text, parquet_chunks, parse_parquet_row

    schema = _row_schema()
    for chunk in parquet_chunks(path, READ_BLOCK_ROWS, fields):
        n = len(chunk)
        texts, langs, ids, errors = [], [], [], []
        for rownum, obj in chunk:
            # Every check but the bundle's languages (the actor knows those, and truncates long
            # texts with the warning): the first failing check is the one the local engine reports.
            doc, error, _ = parse_parquet_row(obj, rownum, None, fields)
            obj, _ = binary_as_text(obj, fields)  # (the actor checks the text again: a binary column's, decoded)
            ok = doc is not None
            texts.append(obj[fields.text] if ok else None)
            langs.append(obj.get(fields.lang) if ok else None)
            ids.append(doc["id_json"] if ok else None)
            errors.append(error)
        yield pa.table([pa.array([file_idx] * n, pa.int32()), pa.array([c[0] for c in chunk], pa.int64()),
                        pa.nulls(n, pa.binary()), pa.array(texts, pa.string()), pa.array(langs, pa.string()),
                        pa.array(ids, pa.string()), pa.array(errors, pa.string()), pa.nulls(n, pa.string())],
                       schema=schema)


def infer_files(paths: Sequence[str | Path], bundle_dir: str | Path, out_path: str | Path | None, *,
                options: InferenceOptions | None = None, address: str | None = None, num_actors: int | None = None,
                threads_per_actor: int | None = None, report: Callable[[str], None] | None = None,
                progress: bool | None = None, sink: IO[bytes] | None = None, output_format: str | None = None,
                **overrides: Any) -> InferenceCounts:
    """xtm-infer's output for JSONL and Parquet files and directories, computed on Ray actors.

    Writes one line per good row, in input order (files in the given order, directories sorted),
    byte-identical to the local engine's, to `out_path` atomically (nothing is written if the run
    fails), or to `sink` (default stdout) when out_path is None; output_format "csv" or "parquet" (default: by
    out_path's name, as the local engine, `records.output_format`): the local engine's table. Bad rows are
    reported through `report` (default: above the progress bar, else the "xtm.runtime.ray" logger at warning level)
    as PATH:LINE: reason and skipped; `strict` raises XtmError at the
    first one, `max_bad` at the first one over that count (or "P%"), `max_share` (0..1) at the end
    when a larger share of the rows was bad; NoResultsError (an XtmError) when no row could be
    inferred: the engine's policy (`xtm.runtime.engine`).
    Whatever raises, out_path is not written; to a sink, the lines before the failing row are.
    Returns the engine's InferenceCounts: rows read (non-blank lines, Parquet rows) and skipped; .written.
    options: an `xtm.runtime.engine.InferenceOptions` (default: its defaults); `overrides`, its fields by name
    (top_k=3, route, batch_size, full_theta, strict, max_bad, max_share, lang, min_lang_conf, text_field,
    lang_field, id_field, threads), replace those of `options`; a keyword that is neither a parameter nor a
    field is an XtmError naming it.
    threads_per_actor: onnxruntime threads per actor (default: options.threads, else RAY_THREADS_PER_ACTOR).
    Connects to `address` (a running cluster: "auto", "HOST:PORT", "ray://HOST:10001"),
    or uses the Ray already initialised in this process, or starts a local one (shut down again
    at the end). The input files are read by Ray tasks: on a multi-node cluster they must be on a
    file system every node sees.
    """
    options = InferenceOptions.with_overrides(options, overrides, "infer_files")
    num_actors, threads_per_actor = _actor_counts(num_actors, options.threads if threads_per_actor is None
                                                  else threads_per_actor)
    ray = _import_ray()
    from xtm.runtime.records import check_out_path

    files = list_input_files(paths)
    check_out_path(out_path, [p for p, _ in files])
    manifest = _check_route(bundle_dir, options)  # fail before starting anything
    output_format = records_output_format(out_path, output_format)
    shape = _table_shape(manifest, options, output_format)
    bar = _progress_bar(progress)
    tally = options.policy(report or _default_report(bar))
    try:
        # Results on stdout: Ray's forwarded worker and raylet lines ("(raylet) A worker died ...") went there too,
        # into the JSONL a pipe reads (seen in a test's output); its workers' errors still reach this process.
        with _ray_session(address, log_to_driver=out_path is not None or sink is not None), \
                _quiet_ray_data_context():
            ds = _map_actors(_rows_dataset(files, options.fields), bundle_dir, "lines", options, num_actors=num_actors,
                             threads_per_actor=threads_per_actor)
            try:
                _write_all(ds, [p for p, _ in files], tally, out_path, sink, bar, output_format, shape)
            except ray.exceptions.RayError as e:
                # A worker's XtmError (an unreadable file, a bundle that fails its checksums) comes
                # back wrapped with the worker's traceback: re-raise the user-facing error alone.
                cause = _xtm_cause(e)
                if cause is None:
                    raise
                raise XtmError(cause.reason, path=cause.path, line=cause.line, field=cause.field) from None
            return tally.counts()
    finally:
        if bar is not None:
            bar.close()


def _progress_bar(progress: bool | None) -> Any:
    """A row counter on stderr (default: when stderr is a terminal), or None."""
    if not (sys.stderr.isatty() if progress is None else progress):
        return None
    from tqdm import tqdm

    return tqdm(unit=" rows", unit_scale=True, file=sys.stderr, dynamic_ncols=True, smoothing=0.1)


def _default_report(bar: Any) -> Callable[[str], None]:
    """Bad rows above the progress bar when there is one (a log line would break it), else to this
    module's logger at warning level, like the local engine's default report."""
    if bar is None:
        return logger.warning

    def report(msg: str) -> None:
        bar.write(msg, file=sys.stderr)  # keeps the bar intact

    return report


@contextlib.contextmanager
def _ray_session(address: str | None, log_to_driver: bool = True) -> Iterator[None]:
    """Ray for one run: the one already initialised in this process, the cluster at `address`, or a
    local instance started now and shut down at the end. `log_to_driver`: Ray prints its workers' output
    here (on stdout), unless the results are written there."""
    ray = _import_ray()
    if ray.is_initialized():
        if address is not None:
            raise XtmError("Ray is already initialised in this process; address cannot be changed")
        yield
        return
    _check_reachable(address)
    # Ray's own INFO lines (dashboard, object store) would bury the per-row messages.
    global _started_here
    if (address is None and not os.environ.get("RAY_ADDRESS")) or address == "local":
        # A one-run instance on this machine, as --address documents: "local" starts one even where a `ray
        # start` cluster runs here (ray.init() alone would join it); no dashboard to start (seconds saved).
        ray.init(address="local", logging_level="WARNING", include_dashboard=False, log_to_driver=log_to_driver)
        _started_here = True
    else:
        ray.init(address=address, logging_level="WARNING", log_to_driver=log_to_driver)
    try:
        yield
    finally:
        _started_here = False
        ray.shutdown()


# Whether the Ray in use is the one-run instance _ray_session started: its nodes are all there will ever
# be, so an actor none of them can hold is an error. A cluster joined at an address may have an
# autoscaler that adds a larger node on demand: there it is a warning and a wait.
_started_here = False


def _one_node_here(ray: Any) -> bool:
    """Whether the caller's own Ray (initialised before infer_dataset) is a single node on this machine:
    what a plain `ray.init()` starts, which no autoscaler grows."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    try:
        here = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - no address to compare: not provably local
        return False
    return len(nodes) == 1 and nodes[0].get("NodeManagerAddress") == here


def _check_reachable(address: str | None) -> None:
    """Refuses a cluster address nothing answers at, or something other than Ray, before ray.init: ray.init
    retries an unreachable GCS for ever (a "Failed to connect to GCS" line every few seconds, deaf to SIGTERM
    meanwhile), and waits as long on a port where a web server or a silent program listens.

    The address is the one ray.init uses: RAY_ADDRESS, when set, stands in for none or "auto". Only
    HOST:PORT and ray://HOST:PORT are tried; "auto" and "local" name no host, and Ray answers for them.
    The port must accept a TCP connection and answer a gRPC greeting as an HTTP/2 server does (_speaks_grpc);
    a cluster with TLS on (RAY_USE_TLS, as Ray reads it) expects a TLS handshake first, so there only the
    connection is tried. Through an HTTP proxy (RAY_grpc_enable_http_proxy) the cluster may not be reachable
    directly at all: nothing is tried, and Ray judges."""
    source = ""
    if os.environ.get("RAY_ADDRESS") and address in (None, "auto"):
        address, source = os.environ["RAY_ADDRESS"], "; it comes from RAY_ADDRESS (unset it for a local Ray)"
    target = _host_port(address)
    if target is None or _ray_switch("RAY_grpc_enable_http_proxy"):
        return
    try:
        with socket.create_connection(target, timeout=CONNECT_TIMEOUT_S) as sock:
            if _ray_switch("RAY_USE_TLS") or _speaks_grpc(sock):
                return
        why = ("something listens there, but not a Ray GCS or ray:// server speaking gRPC in clear text; if the "
               "cluster uses TLS, set RAY_USE_TLS=1")
    except OSError as e:
        why = f"no answer in {CONNECT_TIMEOUT_S:g} s" if isinstance(e, TimeoutError) else e.strerror or str(e)
    except UnicodeError:  # an IDNA-invalid host name ("a..b")
        why = "not a valid host name"
    raise XtmError(f"cannot reach the Ray cluster at {address} ({why}){source}")


def _ray_switch(name: str) -> bool:
    """An environment switch as Ray reads it ("1" or "true", any case)."""
    return os.environ.get(name, "0").lower() in ("1", "true")


def _speaks_grpc(sock: socket.socket) -> bool:
    """Whether the server on `sock` answers a gRPC client's greeting with HTTP/2's SETTINGS frame, within
    CONNECT_TIMEOUT_S in all (TimeoutError otherwise, however slowly the bytes trickle in)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    sock.sendall(_HTTP2_PREFACE)
    head = b""
    while len(head) < 9:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(9 - len(head))
        if not chunk:
            return False  # closed on us: an HTTP/1 server refusing the greeting, a TLS server, anything else
        head += chunk
    return head[3] == _HTTP2_SETTINGS


def _host_port(address: str | None) -> tuple[str, int] | None:
    """(host, port) of a HOST:PORT or ray://HOST:PORT address; None for anything else (Ray judges it)."""
    if not address or address in ("auto", "local"):
        return None
    if "://" in address:
        if not address.startswith("ray://"):
            return None
        address = address[len("ray://"):]
    try:
        parts = urllib.parse.urlsplit("//" + address)  # brackets an IPv6 host: [::1]:6379
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname or port is None:
        return None
    return parts.hostname, port


@contextlib.contextmanager
def _quiet_ray_data_context() -> Iterator[None]:
    """Ray Data set for xtm-infer's output: input order kept, no progress bars or INFO lines of its
    own (they would bury the per-row messages; its warnings still come through), a failed task's
    traceback in its log file only. Restored after."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    data_logger = logging.getLogger("ray.data")
    saved_level = data_logger.level
    data_logger.setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").addFilter(_quiet_ray_data)
    for name in _TRACEBACK_LOGGERS:
        logging.getLogger(name).addFilter(_off_the_console)
    ctx.execution_options.preserve_order = True  # output order = input order, as xtm-infer
    # Our own bar counts rows; Ray Data's per-operator bars would interleave with the row messages.
    ctx.enable_progress_bars = False
    try:
        with warnings.catch_warnings():
            # "only received N input(s) ... won't fully utilize the available concurrency": a small
            # input fits in fewer batches than there are actors; nothing to act on.
            warnings.filterwarnings("ignore", message=".*concurrent actors.*")
            yield
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        data_logger.setLevel(saved_level)
        logging.getLogger("ray.data._internal.progress").removeFilter(_quiet_ray_data)
        for name in _TRACEBACK_LOGGERS:
            logging.getLogger(name).removeFilter(_off_the_console)


def _rows_dataset(files: list[tuple[str, str]], fields: FieldNames) -> ray.data.Dataset:
    """The input rows of `files`, read by Ray tasks (one block per file, read in parallel)."""
    ray = _import_ray()
    items = [{"file": i, "path": p, "kind": k} for i, (p, k) in enumerate(files)]
    try:
        listing = ray.data.from_items(items, override_num_blocks=len(files))
    except TypeError:  # Ray < 2.10 called it parallelism
        listing = ray.data.from_items(items, parallelism=len(files))
    # Reading is I/O: the readers reserve no CPU, so N actors on N cores never starve them
    # (with num_cpus=1 each, 2 actors on 2 cores would leave no slot for a reader: a hang).
    return listing.map_batches(_read_rows, batch_size=1, batch_format="numpy", num_cpus=0,
                               fn_kwargs={"fields": fields})


def _table_shape(manifest: BundleManifest, options: InferenceOptions, output_format: str) -> TableShape | None:
    """The columns of a CSV or Parquet output (None for JSONL): the bundle's topic count and labels."""
    from xtm.runtime.bundle import read_topic_labels

    if output_format == "jsonl":
        return None
    return TableShape(manifest.num_topics, options.top_k, options.full_theta,
                      labels=any(read_topic_labels(manifest)))


def _write_all(ds: ray.data.Dataset, names: list[str], tally: Any, out_path: str | Path | None,
               sink: IO[bytes] | None, bar: Any, fmt: str, shape: TableShape | None) -> None:
    """The results to out_path (atomically) or the sink (default stdout), then the end-of-run checks."""
    where = ", ".join(names) if len(names) <= 3 else f"{names[0]} and {len(names) - 1} more inputs"
    with open_output(out_path if out_path is not None else sink, tally, fmt=fmt, shape=shape) as out:
        _drain(ds, out, names, bar)
        tally.finish(where)  # raising here leaves out_path unwritten


def _xtm_cause(e: BaseException) -> XtmError | None:
    """The XtmError a Ray exception wraps (RayTaskError.cause, then __cause__), if any."""
    import ray

    seen: BaseException | None = e
    for _ in range(16):  # chains are short; never loop on a cycle
        if seen is None:
            return None
        if isinstance(seen, XtmError) and not isinstance(seen, ray.exceptions.RayError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return None


# Ray Data's loggers that write a failed task's traceback (tens of lines) to stderr before the error
# reaches infer_files, which raises it itself: an XtmError as one line, anything else whole.
_TRACEBACK_LOGGERS = ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions")


def _off_the_console(record: logging.LogRecord) -> bool:
    """Ray Data's error records marked hidden: its console handler drops those (HiddenRecordFilter,
    the mark Ray Data puts on the traces it keeps off stdout), its log file (ray-data.log) keeps them."""
    if record.levelno >= logging.ERROR:
        record.hide = True
    return True


def _quiet_ray_data(record: logging.LogRecord) -> bool:
    """Drops the note that progress bars are off: infer_files turns them off on purpose."""
    return not record.getMessage().startswith("Progress bars disabled")


def _drain(ds: ray.data.Dataset, out: OutputWriter, names: list[str], bar: Any) -> None:
    """The actors' rows, in input order, through the engine's writer: bad rows and warnings reported
    where they stand in the input, a fatal one after the good lines before it."""
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        files, lines = batch.column("file").to_pylist(), batch.column("line").to_pylist()
        rows = map(Row, batch.column("out").to_pylist(), batch.column("error").to_pylist(),
                   batch.column("warning").to_pylist())
        out.take((names[f], n, row) for f, n, row in zip(files, lines, rows, strict=True))
        if bar is not None:
            bar.update(batch.num_rows)

"""Freeze a training run into a bundle: ONNX encoders, topic-word matrices, vocabularies, manifest.

The bundle is the only thing the runtime reads (schema in xtm.runtime.bundle):
    encoder_<lang>.onnx   word_ids int64 [N, L], counts float32 [N, L] -> theta float32 [N, K], one per
                          language (the sparse input format; see `sparse_encoder`)
    beta_<lang>.npy       topic-word weights [K, V_lang] (what top words are read from)
    vocab_<lang>.txt      line j = column j of bow
    topics.json           top words per topic in every language (topic ids shared across languages)
    manifest.json         schema version, model, languages, K, opset, tokenizers, sha256 of every file
It carries only what inference needs: NMTM's translation maps and InfoCTM's linked-word pairs
(training-only buffers) are not exported, nor the exporter's per-node stack traces. The
directory is assembled under a temporary name and renamed into place, so a failed export never
leaves a half-written bundle.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

import xtm
from xtm.atomic import write_json
from xtm.errors import XtmError
from xtm.trainer.checkpoint import load_checkpoint
from xtm.trainer.evaluation import top_words
from xtm.trainer.loop import model_from_state

SCHEMA_VERSION = 2  # sparse encoder inputs (xtm.runtime.bundle); 1 when every encoder is dense
DEFAULT_OPSET = 18
PARITY_ATOL = 1e-5
TOP_N = 15


@dataclass
class ExportReport:
    bundle: Path
    languages: list[str]
    parity_max_abs: dict[str, float] = field(default_factory=dict)
    parity_docs: dict[str, int] = field(default_factory=dict)
    parity_source: dict[str, str] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    contextual: dict[str, Any] | None = None  # the contextual graph's parity report, when exported
    bundle_bytes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["bundle"] = str(self.bundle)
        return d


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_run(run_dir: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """The run's config.json and its trained model (from the latest checkpoint), in eval mode."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.exists():
        raise XtmError("not a training run directory (no config.json): run xtm-train first", path=run_dir)
    config = json.loads(cfg_path.read_text(encoding="utf-8"))
    ckpt = load_checkpoint(run_dir)
    model = model_from_state(ckpt.state["model_config"], ckpt.model).eval()
    return config, model


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Silence the exporters' and quantizer's log chatter (torchvision notices, pre-processing tips)."""
    loggers = [logging.getLogger(), logging.getLogger("torch.onnx"), logging.getLogger("torch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def export_encoder(model: torch.nn.Module, lang_index: int, vocab_size: int, path: Path, opset: int) -> None:
    encoder = model.encoder_for(lang_index).eval()
    with warnings.catch_warnings(), quiet_logs(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not the user's business
        torch.onnx.export(encoder, (torch.zeros(2, vocab_size),), str(path), input_names=["bow"],
                          output_names=["theta"], dynamic_shapes={"bow": {0: torch.export.Dim("n")}},
                          opset_version=opset, dynamo=True, verbose=False, external_data=False,
                          report=False)
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)


def _consumers(nodes: list[Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for node in nodes:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _scalar(graph: Any, name: str) -> float | None:
    from onnx import numpy_helper

    for t in graph.initializer:
        if t.name == name:
            a = numpy_helper.to_array(t)
            return float(a.reshape(-1)[0]) if a.size == 1 else None
    return None


def fast_softplus(graph: Any) -> int:
    """Replace each Softplus by relu(x) - log(sigmoid(|x|)), in place; returns how many.

    onnxruntime's Softplus kernel is scalar code: on the encoders' [N, 200] activations it took
    half of the whole graph's time, while Relu/Abs/Sigmoid/Log/Sub are vectorised. The form is
    exact (softplus(x) = max(x, 0) + log(1 + e^-|x|)) and stable: sigmoid(|x|) lies in [0.5, 1].
    torch exports softplus as Where(x > 20, x, Softplus(x)); that guard is dropped when its
    threshold is at least 15, where float32 sigmoid(x) is already 1 (or within 3e-7 of it), so
    the new form returns x there too.
    """
    from onnx import helper

    # One list of node objects throughout: protobuf may hand out a new wrapper on each access,
    # so identities are only stable within it.
    nodes = list(graph.node)
    uses = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    rename: dict[str, str] = {}  # Softplus output -> the output of the guard it replaces
    for node in nodes:
        if node.op_type != "Softplus":
            continue
        x, y = node.input[0], node.output[0]
        users = uses.get(y, [])
        if len(users) == 1 and users[0].op_type == "Where" and list(users[0].input[1:]) == [x, y]:
            where = users[0]
            cond = producer.get(where.input[0])
            thr = _scalar(graph, cond.input[1]) if cond is not None and cond.op_type == "Greater" else None
            if (cond is not None and cond.op_type == "Greater" and cond.input[0] == x and thr is not None
                    and thr >= 15 and len(uses.get(cond.output[0], [])) == 1):
                drop.update((id(where), id(cond)))
                rename[y] = where.output[0]
    out_nodes, count = [], 0
    for node in nodes:
        if id(node) in drop:
            continue
        if node.op_type != "Softplus":
            out_nodes.append(node)
            continue
        x, y = node.input[0], node.output[0]
        out, p = rename.get(y, y), f"{y}__fast_softplus"
        out_nodes += [helper.make_node("Relu", [x], [f"{p}_relu"], name=f"{p}_relu"),
                      helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
                      helper.make_node("Sigmoid", [f"{p}_abs"], [f"{p}_sig"], name=f"{p}_sig"),
                      helper.make_node("Log", [f"{p}_sig"], [f"{p}_log"], name=f"{p}_log"),
                      helper.make_node("Sub", [f"{p}_relu", f"{p}_log"], [out], name=f"{p}_sub")]
        count += 1
    del graph.node[:]
    graph.node.extend(out_nodes)
    return count


def sparse_encoder(graph: Any, int8: bool = False) -> bool:
    """Rewrite a dense encoder (bow [N, V] -> ...) to read word ids and counts, in place.

    The first layer bow @ W[V, H] becomes the sum of the rows of W a document uses:
        Squeeze(MatMul(Unsqueeze(counts [N, L], 1), Gather(W, word_ids [N, L])))   -> [N, H]
    which is N x L x H work instead of N x V x H (L ~ 11, V = 5,000 on ECNews). Batched MatMul
    rather than a ScatterND sum: onnxruntime's ScatterND with reduction='add' races when run on
    several threads (microsoft/onnxruntime#18048), which changes results from run to run.

    int8: W is stored as int8 with one scale per word (row), symmetric: each gathered row is
    cast back to float and its scale folded into the counts. Activations stay float32:
    quantizing them, as dynamic quantization does, moved the top topic of 20% of ECNews
    documents (this one: 0.3%). finish_encoder stores the other layers' weights as float16.

    Returns False, leaving the graph unchanged, unless `bow` feeds exactly one MatMul(bow, W) or
    Gemm(bow, W, b) (alpha = beta = 1, bow not transposed) with a constant float weight: the
    first layer of every backbone in models_zoo, and torch.nn.Linear.
    """
    from onnx import TensorProto, helper, numpy_helper

    if [i.name for i in graph.input] != ["bow"]:
        return False
    nodes = list(graph.node)
    uses = _consumers(nodes)
    users = uses.get("bow", [])
    inits = {t.name: t for t in graph.initializer}
    if len(users) != 1 or users[0].op_type not in ("MatMul", "Gemm") or list(users[0].input)[0] != "bow":
        return False
    first = users[0]
    w = inits.get(first.input[1])
    if w is None or len(w.dims) != 2 or w.data_type != TensorProto.FLOAT:
        return False
    W = numpy_helper.to_array(w).astype(np.float32)
    bias = None
    if first.op_type == "Gemm":
        attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return False
        if attrs.get("transB", 0):
            W = np.ascontiguousarray(W.T)
        if len(first.input) > 2 and first.input[2]:
            bias = first.input[2]
    p = "sparse_input"
    axis1 = numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axis1")
    new_inits = [axis1]
    if int8:
        scale = np.abs(W).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        q = np.clip(np.rint(W / scale[:, None]), -127, 127).astype(np.int8)
        new_inits += [numpy_helper.from_array(q, f"{p}_table_int8"),
                      numpy_helper.from_array(scale.astype(np.float32), f"{p}_table_scale")]
        new = [helper.make_node("Gather", [f"{p}_table_int8", "word_ids"], [f"{p}_rows_q"], name=f"{p}_gather"),
               helper.make_node("Cast", [f"{p}_rows_q"], [f"{p}_rows"], to=TensorProto.FLOAT, name=f"{p}_cast"),
               helper.make_node("Gather", [f"{p}_table_scale", "word_ids"], [f"{p}_scales"],
                                name=f"{p}_gather_scale"),
               helper.make_node("Mul", ["counts", f"{p}_scales"], [f"{p}_weights"], name=f"{p}_scale")]
        weights = f"{p}_weights"
    else:
        new_inits.append(numpy_helper.from_array(W, f"{p}_table"))
        new = [helper.make_node("Gather", [f"{p}_table", "word_ids"], [f"{p}_rows"], name=f"{p}_gather")]
        weights = "counts"
    out = first.output[0]
    summed = f"{p}_sum" if bias else out
    new += [helper.make_node("Unsqueeze", [weights, axis1.name], [f"{p}_w3"], name=f"{p}_unsqueeze"),
            helper.make_node("MatMul", [f"{p}_w3", f"{p}_rows"], [f"{p}_sum3"], name=f"{p}_matmul"),
            helper.make_node("Squeeze", [f"{p}_sum3", axis1.name], [summed], name=f"{p}_squeeze")]
    if bias:
        new.append(helper.make_node("Add", [summed, bias], [out], name=f"{p}_bias"))
    at = next(k for k, n in enumerate(nodes) if n is first)
    del graph.node[:]
    graph.node.extend(nodes[:at] + new + nodes[at + 1:])
    graph.initializer.extend(new_inits)
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info("word_ids", TensorProto.INT64, ["n", "l"]),
                        helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["n", "l"])])
    return True  # the old weight, now unused, goes with _drop_unused_initializers


def half_precision_weights(graph: Any, skip: tuple[str, ...] = ()) -> int:
    """Store every float32 initializer of 2+ dimensions as float16 behind a Cast, in place.

    For the int8 bundle's layers after the first ([H, H] and [H, K]: 20% of an int8 encoder's
    bytes at V = 5,000, more at small V), so that it is under half the float32 size at any
    vocabulary size. onnxruntime folds the Casts when it loads the graph: inference still runs
    in float32, on weights rounded to 11 significant bits. Returns how many were converted.
    """
    from onnx import TensorProto, helper, numpy_helper

    casts, count = [], 0
    for t in list(graph.initializer):
        if t.data_type != TensorProto.FLOAT or len(t.dims) < 2 or t.name in skip:
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), f"{t.name}_fp16")
        casts.append(helper.make_node("Cast", [half.name], [t.name], to=TensorProto.FLOAT, name=f"{t.name}_cast"))
        graph.initializer.remove(t)
        graph.initializer.append(half)
        count += 1
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return count


def _drop_unused_initializers(graph: Any) -> None:
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def finish_encoder(dense_path: Path, out_path: Path, *, sparse: bool = True, int8: bool = False) -> bool:
    """The bundle's encoder from the exporter's dense graph: sparse input when possible, fast
    softplus, no node metadata (the exporter's stack traces name local files). int8: the first
    layer's table int8 (`sparse_encoder`), the other weights float16. Returns whether the result
    reads sparse input; with int8 and a graph that cannot read sparse input, returns False and
    writes nothing (the caller quantizes dynamically instead)."""
    import onnx

    proto = onnx.load(str(dense_path))
    g = proto.graph
    for node in g.node:
        del node.metadata_props[:]
    for v in list(g.input) + list(g.output):
        del v.metadata_props[:]
    del g.value_info[:]
    is_sparse = sparse and sparse_encoder(g, int8=int8)
    if int8 and not is_sparse:
        return False
    fast_softplus(g)
    if int8:
        _drop_unused_initializers(g)
        half_precision_weights(g)
    _drop_unused_initializers(g)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out_path))
    return is_sparse


def parity_bows(config: dict[str, Any], lang: str, vocab: list[str], n: int = 1000,
                seed: int = 0) -> tuple[sp.csr_matrix, str]:
    """Real documents of `lang` for the parity check: the run's own test (else train) documents,
    re-read from its data source and mapped through the exported vocabulary and tokenizer; a
    random sparse sample only when the data is gone."""
    from xtm.corpus import TokenizerSpec
    from xtm.runtime.tokenize import make_tokenizer

    data_path = Path(config.get("data", {}).get("path", ""))
    texts: list[str] = []
    try:
        if data_path.is_dir() and any(data_path.glob("train_bow_matrix_*.npz")):
            from xtm.languages import dataset_suffixes

            for suffix in dataset_suffixes(lang):
                for split in ("test", "train"):
                    f = data_path / f"{split}_bow_matrix_{suffix}.npz"
                    if f.exists():
                        m = sp.load_npz(f).tocsr()
                        if m.shape[1] == len(vocab):
                            return sp.csr_matrix(m[:n], dtype=np.float32), f"{f.name} (first {min(n, m.shape[0])})"
        elif data_path.is_file():
            with open(data_path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        obj = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(obj, dict) and isinstance(obj.get("text"), str) and obj.get("lang") in (lang, None):
                        texts.append(obj["text"])
                    if len(texts) >= n:
                        break
    except OSError:
        texts = []
    if texts:
        tok = make_tokenizer(TokenizerSpec.from_dict(config["tokenizers"][lang]))
        index = {w: j for j, w in enumerate(vocab)}
        rows, cols = [], []
        for r, t in enumerate(texts):
            ids = [index[w] for w in tok(t) if w in index]
            rows.extend([r] * len(ids))
            cols.extend(ids)
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), len(vocab)))
        m.sum_duplicates()
        return m, f"{data_path.name} ({len(texts)} documents)"
    rng = np.random.default_rng(seed)
    m = sp.random(n, len(vocab), density=min(1.0, 20 / len(vocab)), random_state=rng, format="csr",
                  data_rvs=lambda k: rng.integers(1, 4, k).astype(np.float32))
    return sp.csr_matrix(m, dtype=np.float32), "random sparse sample (training data not found)"


def run_onnx(path: Path, bows: sp.csr_matrix, sparse: bool) -> np.ndarray:
    """theta of an encoder file on CSR bags of words, fed in the encoder's input format."""
    import onnxruntime as ort

    from xtm.runtime.model import _Counts

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    m = sp.csr_matrix(bows, dtype=np.float32)
    m.sum_duplicates()
    m.sort_indices()
    if not sparse:
        return sess.run(["theta"], {"bow": m.toarray()})[0]
    counts = _Counts(indptr=m.indptr.astype(np.int64), words=m.indices.astype(np.int64),
                     counts=m.data.astype(np.float32))
    ids, cnt = counts.padded(np.arange(m.shape[0]))
    return sess.run(["theta"], {"word_ids": ids, "counts": cnt})[0]


def quantize_int8(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer re-runs ONNX shape inference, which rejects some intermediate shapes the
    # torch exporter annotated; drop those annotations and let it infer them afresh.
    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    plain = dst.with_suffix(".plain.onnx")
    onnx.save(proto, str(plain))
    try:
        with warnings.catch_warnings(), quiet_logs():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(plain), str(dst), weight_type=QuantType.QInt8)
    finally:
        plain.unlink(missing_ok=True)


def export_run(run_dir: str | Path, out_dir: str | Path, *, quantize: str | None = None,
               opset: int = DEFAULT_OPSET, parity_docs: int = 1000, progress: bool = True,
               contextual: bool | None = None) -> ExportReport:
    """Export RUN_DIR into a bundle at OUT_DIR; checks ONNX-vs-torch parity on real documents.

    contextual: also export the run's contextual route (RUN_DIR/contextual/, see
    xtm.exporters.contextual_export); None (default) when the run has one, False never, True
    requires it.
    """
    if quantize not in (None, "int8"):
        raise XtmError(f"--quantize {quantize!r} is not supported (choose int8)")
    t0 = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    config, model = load_run(run_dir)
    langs: list[str] = list(model.langs)
    report = ExportReport(bundle=out_dir, languages=langs)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    os.chmod(tmp, 0o755)
    try:
        with torch.no_grad():
            betas = [b.detach().cpu().numpy().astype(np.float32) for b in model.topic_word()]
        encoders: dict[str, Any] = {}
        topics_words: dict[str, list[list[str]]] = {}
        quant: dict[str, Any] = {}
        for i, lang in enumerate(langs):
            vocab_file = run_dir / f"vocab_{lang}.txt"
            if not vocab_file.exists():
                raise XtmError(f"the run has no vocabulary for '{lang}'", path=vocab_file)
            vocab = vocab_file.read_text(encoding="utf-8").splitlines()
            if len(vocab) != model.vocab_sizes[i]:
                raise XtmError(f"vocab_{lang}.txt has {len(vocab)} words but the model expects "
                               f"{model.vocab_sizes[i]}", path=vocab_file)
            if progress:
                print(f"xtm-export: exporting the {lang} encoder", file=sys.stderr, flush=True)
            fp32 = tmp / f"encoder_{lang}.onnx"
            exported = tmp / f"encoder_{lang}.dense.onnx"
            export_encoder(model, i, len(vocab), exported, opset)
            # ScatterND-free sparse input needs only opset-13 ops; opset >= 17 is enforced by the CLI.
            sparse = finish_encoder(exported, fp32)
            # Parity: ONNX Runtime against torch on real documents of this language.
            bows, source = parity_bows(config, lang, vocab, parity_docs)
            dense = bows.toarray().astype(np.float32)
            with torch.no_grad():
                ref = model.encoder_for(i)(torch.from_numpy(dense)).numpy()
            got = run_onnx(fp32, bows, sparse)
            err = float(np.abs(got - ref).max()) if len(dense) else 0.0
            report.parity_max_abs[lang], report.parity_docs[lang], report.parity_source[lang] = err, len(dense), source
            if err > PARITY_ATOL:
                raise XtmError(f"ONNX and torch disagree for '{lang}' (max |diff| {err:.2e} > {PARITY_ATOL})")
            if quantize == "int8":
                q = tmp / f"encoder_{lang}.int8.onnx"
                # Weight-only int8 of the first layer when the graph is sparse; dynamic
                # quantization (weights and activations) for a graph that could not be rewritten.
                if not finish_encoder(exported, q, int8=True):
                    quantize_int8(fp32, q)
                got_q = run_onnx(q, bows, sparse)
                quant[lang] = {"mean_l1": float(np.abs(got_q - ref).sum(1).mean()),
                               "top_topic_agreement": float((got_q.argmax(1) == ref.argmax(1)).mean()),
                               "fp32_bytes": fp32.stat().st_size, "int8_bytes": q.stat().st_size}
                fp32.unlink()
                q.rename(fp32)
            exported.unlink()
            shutil.copyfile(vocab_file, tmp / f"vocab_{lang}.txt")
            np.save(tmp / f"beta_{lang}.npy", betas[i], allow_pickle=False)
            topics_words[lang] = top_words(betas[i], vocab, TOP_N)
            inputs = ({"input_format": "sparse", "inputs": ["word_ids", "counts"]} if sparse
                      else {"input_format": "dense", "input": "bow"})
            encoders[lang] = {"file": f"encoder_{lang}.onnx", **inputs, "output": "theta",
                              "vocab": f"vocab_{lang}.txt", "vocab_size": len(vocab), "beta": f"beta_{lang}.npy",
                              "tokenizer": config["tokenizers"][lang]}
        write_json(tmp / "topics.json", {
            "num_topics": model.num_topics, "top_n": TOP_N, "languages": langs,
            "topics": [{"id": k, "words": {lang: topics_words[lang][k] for lang in langs}}
                       for k in range(model.num_topics)]})
        contextual_entry = None
        if contextual or contextual is None:
            from xtm.exporters.contextual_export import export_contextual, has_contextual

            if has_contextual(run_dir) or contextual:
                # An optional manifest key and extra files: runtimes without the contextual route
                # ignore both, so the schema version stays as it is.
                contextual_entry, report.contextual = export_contextual(run_dir, tmp, opset=opset, progress=progress,
                                                                        quantize=quantize)
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", {
            "schema_version": SCHEMA_VERSION if any(e["input_format"] == "sparse" for e in encoders.values()) else 1,
            "format": "xtm-bundle", "xtm_version": xtm.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model.name, "num_topics": model.num_topics, "languages": langs, "opset": opset,
            "quantization": quantize, "encoders": encoders, "topics": "topics.json",
            "source_run": {"path": str(run_dir.resolve()), "train_config": config.get("train_config")},
            **({"contextual": contextual_entry} if contextual_entry else {}),
            "files": files})
        if quant:
            report.quantization = quant
        _swap_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    report.bundle_bytes = sum(p.stat().st_size for p in out_dir.iterdir() if p.is_file())
    report.seconds = time.perf_counter() - t0
    return report


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Replace out_dir by tmp; an existing directory is only replaced if it is a bundle."""
    if out_dir.exists():
        if not (out_dir / "manifest.json").exists() and any(out_dir.iterdir()):
            raise XtmError("refusing to overwrite a non-empty directory that is not an xtm bundle", path=out_dir)
        old = out_dir.with_name(f".{out_dir.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out_dir)

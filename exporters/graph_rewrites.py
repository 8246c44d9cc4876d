"""Rewrites of an exported ONNX graph into the bundle's encoder: faster, smaller, same theta.

torch's exporter writes a dense encoder (bow [N, V] -> theta) with a scalar Softplus kernel and
the exporter's stack traces on every node. `finish_encoder` turns it into what a bundle holds:
sparse input (`sparse_encoder`), a vectorised softplus (`fast_softplus`), no metadata, and for
int8 bundles an int8 first layer with float16 weights elsewhere (`half_precision_weights`).
`quantize_dynamic_int8` is onnxruntime's dynamic quantization, for graphs the int8 rewrite does
not fit (and the contextual graph). Every rewrite works in place on an onnx GraphProto.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtm.exporters.torch_to_onnx import quiet_logs

__all__ = ["drop_unused_initializers", "fast_softplus", "finish_encoder", "half_precision_weights",
           "quantize_dynamic_int8", "sparse_encoder", "strip_exporter_metadata"]

SPARSE_PREFIX = "sparse_input"  # names of the nodes and tensors `sparse_encoder` adds


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


def _replace_nodes(graph: Any, nodes: list[Any]) -> None:
    del graph.node[:]
    graph.node.extend(nodes)


# -- softplus -------------------------------------------------------------------------------------


def fast_softplus(graph: Any) -> int:
    """Replace each Softplus by relu(x) - log(sigmoid(|x|)), in place; returns how many.

    onnxruntime's Softplus kernel is scalar code: on the encoders' [N, 200] activations it took
    half of the whole graph's time, while Relu/Abs/Sigmoid/Log/Sub are vectorised. The form is
    exact (softplus(x) = max(x, 0) + log(1 + e^-|x|)) and stable: sigmoid(|x|) lies in [0.5, 1].
    torch exports softplus as Where(x > 20, x, Softplus(x)); that guard is dropped when its
    threshold is at least 15, where float32 sigmoid(x) is already 1 (or within 3e-7 of it), so
    the new form returns x there too.
    """
    # One list of node objects throughout: protobuf may hand out a new wrapper on each access,
    # so identities are only stable within it.
    nodes = list(graph.node)
    drop, rename = _softplus_guards(graph, nodes)
    out_nodes, count = [], 0
    for node in nodes:
        if id(node) in drop:
            continue
        if node.op_type != "Softplus":
            out_nodes.append(node)
            continue
        y = node.output[0]
        out_nodes += _softplus_nodes(node.input[0], rename.get(y, y), f"{y}__fast_softplus")
        count += 1
    _replace_nodes(graph, out_nodes)
    return count


def _softplus_guards(graph: Any, nodes: list[Any]) -> tuple[set[int], dict[str, str]]:
    """The Where(x > thr, x, Softplus(x)) guards that may go (ids of the Where and Greater nodes),
    and Softplus output -> the output of the guard it replaces."""
    uses = _consumers(nodes)
    producer = {o: n for n in nodes for o in n.output}
    drop: set[int] = set()
    rename: dict[str, str] = {}
    for node in nodes:
        if node.op_type != "Softplus":
            continue
        x, y = node.input[0], node.output[0]
        users = uses.get(y, [])
        if len(users) != 1 or users[0].op_type != "Where" or list(users[0].input[1:]) != [x, y]:
            continue
        where = users[0]
        cond = producer.get(where.input[0])
        if cond is None or cond.op_type != "Greater" or cond.input[0] != x:
            continue
        thr = _scalar(graph, cond.input[1])
        if thr is not None and thr >= 15 and len(uses.get(cond.output[0], [])) == 1:
            drop.update((id(where), id(cond)))
            rename[y] = where.output[0]
    return drop, rename


def _softplus_nodes(x: str, out: str, p: str) -> list[Any]:
    from onnx import helper

    return [helper.make_node("Relu", [x], [f"{p}_relu"], name=f"{p}_relu"),
            helper.make_node("Abs", [x], [f"{p}_abs"], name=f"{p}_abs"),
            helper.make_node("Sigmoid", [f"{p}_abs"], [f"{p}_sig"], name=f"{p}_sig"),
            helper.make_node("Log", [f"{p}_sig"], [f"{p}_log"], name=f"{p}_log"),
            helper.make_node("Sub", [f"{p}_relu", f"{p}_log"], [out], name=f"{p}_sub")]


# -- sparse input -----------------------------------------------------------------------------------


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

    # One list of node objects throughout (see fast_softplus): `first` is found again by identity.
    nodes = list(graph.node)
    layer = _first_layer(graph, nodes)
    if layer is None:
        return False
    first, W, bias = layer
    p = SPARSE_PREFIX
    axis1 = numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}_axis1")
    rows, weights, gather, tables = _gather_rows(W, int8)
    out = first.output[0]
    summed = f"{p}_sum" if bias else out
    new = gather + [helper.make_node("Unsqueeze", [weights, axis1.name], [f"{p}_w3"], name=f"{p}_unsqueeze"),
                    helper.make_node("MatMul", [f"{p}_w3", rows], [f"{p}_sum3"], name=f"{p}_matmul"),
                    helper.make_node("Squeeze", [f"{p}_sum3", axis1.name], [summed], name=f"{p}_squeeze")]
    if bias:
        new.append(helper.make_node("Add", [summed, bias], [out], name=f"{p}_bias"))
    at = next(k for k, n in enumerate(nodes) if n is first)
    _replace_nodes(graph, nodes[:at] + new + nodes[at + 1:])
    graph.initializer.extend([axis1, *tables])
    del graph.input[:]
    graph.input.extend([helper.make_tensor_value_info("word_ids", TensorProto.INT64, ["n", "l"]),
                        helper.make_tensor_value_info("counts", TensorProto.FLOAT, ["n", "l"])])
    return True  # the old weight, now unused, goes with drop_unused_initializers


def _first_layer(graph: Any, nodes: list[Any]) -> tuple[Any, np.ndarray, str | None] | None:
    """(the node, W [V, H] float32, its bias input or None) of the layer `bow` feeds, when it is
    the one rewrite `sparse_encoder` knows: one MatMul(bow, W) or plain Gemm with a float weight."""
    from onnx import TensorProto, helper, numpy_helper

    if [i.name for i in graph.input] != ["bow"]:
        return None
    users = _consumers(nodes).get("bow", [])
    if len(users) != 1 or users[0].op_type not in ("MatMul", "Gemm") or list(users[0].input)[0] != "bow":
        return None
    first = users[0]
    w = {t.name: t for t in graph.initializer}.get(first.input[1])
    if w is None or len(w.dims) != 2 or w.data_type != TensorProto.FLOAT:
        return None
    W = numpy_helper.to_array(w).astype(np.float32)
    if first.op_type == "MatMul":
        return first, W, None
    attrs = {a.name: helper.get_attribute_value(a) for a in first.attribute}
    if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
        return None
    if attrs.get("transB", 0):
        W = np.ascontiguousarray(W.T)
    bias = first.input[2] if len(first.input) > 2 and first.input[2] else None
    return first, W, bias


def _gather_rows(W: np.ndarray, int8: bool) -> tuple[str, str, list[Any], list[Any]]:
    """(name of the gathered rows [N, L, H], name of the per-row weights [N, L], the nodes that
    compute them, their tables): W as it is, or int8 with one scale per row folded into the counts."""
    from onnx import TensorProto, helper, numpy_helper

    p = SPARSE_PREFIX
    if not int8:
        gather = helper.make_node("Gather", [f"{p}_table", "word_ids"], [f"{p}_rows"], name=f"{p}_gather")
        return f"{p}_rows", "counts", [gather], [numpy_helper.from_array(W, f"{p}_table")]
    scale = np.abs(W).max(axis=1) / 127.0
    scale[scale == 0] = 1.0
    q = np.clip(np.rint(W / scale[:, None]), -127, 127).astype(np.int8)
    tables = [numpy_helper.from_array(q, f"{p}_table_int8"),
              numpy_helper.from_array(scale.astype(np.float32), f"{p}_table_scale")]
    nodes = [helper.make_node("Gather", [f"{p}_table_int8", "word_ids"], [f"{p}_rows_q"], name=f"{p}_gather"),
             helper.make_node("Cast", [f"{p}_rows_q"], [f"{p}_rows"], to=TensorProto.FLOAT, name=f"{p}_cast"),
             helper.make_node("Gather", [f"{p}_table_scale", "word_ids"], [f"{p}_scales"],
                              name=f"{p}_gather_scale"),
             helper.make_node("Mul", ["counts", f"{p}_scales"], [f"{p}_weights"], name=f"{p}_scale")]
    return f"{p}_rows", f"{p}_weights", nodes, tables


# -- precision and size -----------------------------------------------------------------------------


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
    _replace_nodes(graph, casts + list(graph.node))
    return count


def drop_unused_initializers(graph: Any) -> None:
    """Remove the weights no node reads (what a rewrite replaced), in place."""
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def strip_exporter_metadata(graph: Any) -> None:
    """Drop the exporter's per-node metadata (stack traces naming local files: not a bundle's
    business) and its shape annotations (stale after a rewrite; onnxruntime infers them), in place."""
    for node in graph.node:
        del node.metadata_props[:]
    del graph.value_info[:]


def finish_encoder(dense_path: Path, out_path: Path, *, sparse: bool = True, int8: bool = False) -> bool:
    """The bundle's encoder from the exporter's dense graph: sparse input when possible, fast
    softplus, no node metadata (the exporter's stack traces name local files). int8: the first
    layer's table int8 (`sparse_encoder`), the other weights float16. Returns whether the result
    reads sparse input; with int8 and a graph that cannot read sparse input, returns False and
    writes nothing (the caller quantizes dynamically instead)."""
    import onnx

    proto = onnx.load(str(dense_path))
    g = proto.graph
    strip_exporter_metadata(g)
    for v in list(g.input) + list(g.output):
        del v.metadata_props[:]
    is_sparse = sparse and sparse_encoder(g, int8=int8)
    if int8 and not is_sparse:
        return False
    fast_softplus(g)
    if int8:
        drop_unused_initializers(g)
        half_precision_weights(g)
    drop_unused_initializers(g)
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out_path))
    return is_sparse


def quantize_dynamic_int8(src: Path, dst: Path, op_types: Sequence[str] | None = None) -> None:
    """onnxruntime's dynamic int8 quantization (int8 weights, activations quantized per batch) of
    `op_types` (default: every kind it quantizes) from src into dst, which may be src."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer re-runs ONNX shape inference, which rejects some intermediate shapes the
    # torch exporter annotated; drop those annotations and let it infer them afresh.
    proto = onnx.load(str(src))
    del proto.graph.value_info[:]
    plain = dst.with_suffix(".plain.onnx")
    onnx.save(proto, str(plain))
    only = {"op_types_to_quantize": list(op_types)} if op_types else {}
    try:
        with warnings.catch_warnings(), quiet_logs():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(plain), str(dst), weight_type=QuantType.QInt8, **only)
    finally:
        plain.unlink(missing_ok=True)

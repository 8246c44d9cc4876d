"""A bundle is only what its manifest lists (issue 13 item 14).

Hostile bundles, each built from a real hand-made bundle and loaded by the real runtime: files that
resolve outside the bundle through symlinks, ONNX graphs that pull weights from external data files
(listed or not, in the bundle or anywhere on disk), and the same through the contextual route.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundle_fixture import HandBundle, make_bundle
from onnx import TensorProto, helper, numpy_helper

from xtm.errors import XtmError
from xtm.runtime import TopicModel
from xtm.runtime.bundle import onnx_external_data, read_manifest, sha256_file


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def copy_bundle(hb: HandBundle, dst: Path) -> Path:
    shutil.copytree(hb.path, dst)
    return dst


def rewrite_checksums(bundle: Path, **extra: object) -> None:
    """Re-sign the manifest after an edit, as an attacker who can write the bundle would."""
    p = bundle / "manifest.json"
    m = json.loads(p.read_text())
    m.update(extra)
    m["files"] = {name: sha256_file(bundle / name) for name in m["files"]}
    p.write_text(json.dumps(m))


def externalize(path: Path, location: str, threshold: int = 0) -> None:
    """Rewrite an ONNX file so its weights (tensors of `threshold` bytes and more) live in `location`
    (relative to the file), as onnx allows."""
    proto = onnx.load(str(path))
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=threshold)


# -- a bundle replaced while it loads ------------------------------------------------------------


@pytest.mark.parametrize("changed", ["vocab", "topics", "graph"])
def test_a_bundle_re_exported_while_it_loads_is_an_error_never_a_mixed_model(
        changed: str, hb: HandBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """xtm-export replaces a bundle by renaming a new directory into place. Before: load checked every file
    against the manifest, then opened the graphs, vocabularies and topics again by path, so a rename in between
    gave a model with the new bundle's vocabulary under the old one's graphs, with no error."""
    import xtm.runtime.model as model_module

    live, other = copy_bundle(hb, tmp_path / "live"), copy_bundle(hb, tmp_path / "other")
    m = json.loads((other / "manifest.json").read_text())
    encoder = m["encoders"][sorted(m["encoders"])[0]]
    name = {"vocab": encoder["vocab"], "topics": m["topics"], "graph": encoder["file"]}[changed]
    if changed == "vocab":
        words = (other / name).read_text(encoding="utf-8").splitlines()
        (other / name).write_text("\n".join(reversed(words)) + "\n", encoding="utf-8")
    elif changed == "topics":
        topics = json.loads((other / name).read_text(encoding="utf-8"))
        topics["topics"].reverse()
        (other / name).write_text(json.dumps(topics), encoding="utf-8")
    else:
        proto = onnx.load(str(other / name))
        proto.doc_string = "another export"
        onnx.save_model(proto, str(other / name))
    rewrite_checksums(other)  # a valid bundle of its own
    TopicModel.load(other)
    real = model_module.read_manifest

    def read_then_replace(directory, **kw):
        manifest = real(directory, **kw)
        live.rename(tmp_path / "old")
        other.rename(live)  # what xtm-export's rename into place does
        return manifest

    monkeypatch.setattr(model_module, "read_manifest", read_then_replace)
    with pytest.raises(XtmError, match="checksum mismatch") as e:
        TopicModel.load(live)
    assert e.value.path == str(live / name)


# -- symlinks ------------------------------------------------------------------------------------


def test_a_listed_file_that_resolves_outside_the_bundle_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    outside = tmp_path / "elsewhere.txt"
    shutil.move(b / "vocab_en.txt", outside)
    (b / "vocab_en.txt").symlink_to(outside)   # same bytes: the checksum alone cannot tell
    with pytest.raises(XtmError, match="outside the bundle") as e:
        read_manifest(b)
    assert "vocab_en.txt" in str(e.value)
    with pytest.raises(XtmError, match="outside the bundle"):
        read_manifest(b, verify=False)


def test_a_manifest_that_resolves_outside_the_bundle_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    outside = tmp_path / "manifest-elsewhere.json"
    shutil.move(b / "manifest.json", outside)
    (b / "manifest.json").symlink_to(outside)
    with pytest.raises(XtmError, match="outside the bundle"):
        read_manifest(b)


def test_symlinks_within_the_bundle_and_a_linked_bundle_directory_load(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    (b / "vocab_en.txt").rename(b / "vocab_en.real")
    (b / "vocab_en.txt").symlink_to("vocab_en.real")   # inside the directory: harmless
    link = tmp_path / "link-to-bundle"
    link.symlink_to(b, target_is_directory=True)
    m = TopicModel.load(link)
    assert m.vocabulary("en") == hb.vocabs["en"]


def test_a_fifo_in_place_of_a_listed_file_is_named(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    (b / "topics.json").unlink()
    os.mkfifo(b / "topics.json")   # opening it for the checksum would block forever
    with pytest.raises(XtmError, match="not a regular file") as e:
        read_manifest(b)
    assert "topics.json" in str(e.value)


# -- ONNX external data ---------------------------------------------------------------------------


def test_external_data_outside_the_manifest_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    externalize(b / "encoder_en.onnx", "weights.bin")
    rewrite_checksums(b)   # the .onnx is listed and signed; weights.bin is not
    assert onnx_external_data(b / "encoder_en.onnx") == ["weights.bin"]
    with pytest.raises(XtmError, match="external data") as e:
        TopicModel.load(b)
    assert "encoder_en.onnx" in str(e.value) and "weights.bin" in str(e.value)
    # Swapping the unlisted weights would change theta with every checksum still valid.
    with pytest.raises(XtmError, match="external data"):
        read_manifest(b, verify=False)


def test_external_data_even_when_listed_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    externalize(b / "encoder_zh.onnx", "encoder_zh.weights")
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["encoder_zh.weights"] = ""
    (b / "manifest.json").write_text(json.dumps(m))
    rewrite_checksums(b)
    with pytest.raises(XtmError, match="external data"):
        read_manifest(b)


def test_external_data_pointing_anywhere_on_disk_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    secret = tmp_path / "secret"
    secret.mkdir()
    externalize(b / "encoder_en.onnx", "weights.bin")
    shutil.move(b / "weights.bin", secret / "weights.bin")
    proto = onnx.load(str(b / "encoder_en.onnx"), load_external_data=False)
    for t in proto.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../secret/weights.bin"
    onnx.save_model(proto, str(b / "encoder_en.onnx"))
    rewrite_checksums(b)
    with pytest.raises(XtmError, match=r"external data.*\.\./secret/weights\.bin"):
        read_manifest(b)


def _constant_with_external_tensor(path: Path) -> None:
    """A graph whose only external tensor hides in a Constant node's attribute, not an initializer."""
    value = numpy_helper.from_array(np.ones(3, np.float32), "c")
    value.data_location = TensorProto.EXTERNAL
    value.ClearField("raw_data")
    for k, v in (("location", "hidden.bin"), ("offset", "0"), ("length", "12")):
        value.external_data.add(key=k, value=v)
    const = helper.make_node("Constant", [], ["c"], value=value)
    add = helper.make_node("Add", ["x", "c"], ["y"])
    inner = helper.make_graph([const, add], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])])
    onnx.save_model(helper.make_model(inner), str(path))


def test_external_tensor_inside_a_node_attribute_is_found(tmp_path: Path) -> None:
    _constant_with_external_tensor(tmp_path / "m.onnx")
    assert onnx_external_data(tmp_path / "m.onnx") == ["hidden.bin"]


def test_the_exporters_own_encoders_have_no_external_data(hb: HandBundle) -> None:
    for lang in hb.vocabs:
        assert onnx_external_data(hb.path / f"encoder_{lang}.onnx") == []


def test_a_truncated_onnx_file_is_a_clean_error(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    data = (b / "encoder_en.onnx").read_bytes()
    (b / "encoder_en.onnx").write_bytes(data[: len(data) // 2])
    rewrite_checksums(b)
    with pytest.raises(XtmError, match="encoder_en.onnx"):
        TopicModel.load(b)


def test_contextual_graph_with_external_data_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    _constant_with_external_tensor(b / "ctx.graph")   # a name without .onnx: the entry decides
    (b / "tok.model").write_bytes(b"not read before the graph is checked")
    m = json.loads((b / "manifest.json").read_text())
    m["files"].update({"ctx.graph": "", "tok.model": ""})
    (b / "manifest.json").write_text(json.dumps(m))
    rewrite_checksums(b, contextual={"format": 1, "file": "ctx.graph", "inputs": ["token_ids", "mask"],
                                     "outputs": ["theta", "sentence_embedding"], "embedding_dim": 4,
                                     "tokenizer": {"kind": "sentencepiece", "file": "tok.model"}})
    with pytest.raises(XtmError, match="external data") as e:
        read_manifest(b)
    assert "ctx.graph" in str(e.value)


def test_cli_infer_on_a_hostile_bundle_exits_2_without_traceback(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    externalize(b / "encoder_en.onnx", "weights.bin")
    rewrite_checksums(b)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "stock market", "lang": "en"}) + "\n")
    p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(docs), "--bundle", str(b),
                        "--out", str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "external data" in p.stderr
    assert not (tmp_path / "out.jsonl").exists()


# -- the contextual route opens its files on first use: checked again then ---------------------------


def _contextual_bundle(hb: HandBundle, dst: Path, dim: int = 8) -> Path:
    """The hand bundle plus a real (tiny) contextual route: a SentencePiece model trained here and a
    graph token ids -> mean of embeddings -> softmax(. @ W), both listed and signed."""
    import io

    import sentencepiece as spm

    b = copy_bundle(hb, dst)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(["stock market price", "football match goal"] * 50),
                                   model_writer=model, vocab_size=20, model_type="char", minloglevel=2)
    (b / "ctx_tok.model").write_bytes(model.getvalue())
    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(rng.normal(size=(20, dim)).astype(np.float32), "table")
    w = numpy_helper.from_array(rng.normal(size=(dim, hb.num_topics)).astype(np.float32), "w")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [helper.make_node("Gather", ["table", "token_ids"], ["rows"]),
             helper.make_node("Unsqueeze", ["mask", "axes2"], ["m3"]),
             helper.make_node("Mul", ["rows", "m3"], ["masked"]),
             helper.make_node("ReduceSum", ["masked", "axes"], ["sentence_embedding"], keepdims=0),
             helper.make_node("MatMul", ["sentence_embedding", "w"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["theta"], axis=1)]
    graph = helper.make_graph(
        nodes, "ctx", [helper.make_tensor_value_info("token_ids", TensorProto.INT64, ["n", "l"]),
                       helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["n", "l"])],
        [helper.make_tensor_value_info("theta", TensorProto.FLOAT, ["n", hb.num_topics]),
         helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["n", dim])],
        [table, w, axes, numpy_helper.from_array(np.array([2], np.int64), "axes2")])
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(b / "ctx.onnx"))
    m = json.loads((b / "manifest.json").read_text())
    m["files"].update({"ctx.onnx": "", "ctx_tok.model": ""})
    (b / "manifest.json").write_text(json.dumps(m))
    rewrite_checksums(b, contextual={"format": 1, "file": "ctx.onnx", "inputs": ["token_ids", "mask"],
                                     "outputs": ["theta", "sentence_embedding"], "embedding_dim": dim,
                                     "encoder": "tiny", "languages": ["fr"],
                                     "tokenizer": {"kind": "sentencepiece", "file": "ctx_tok.model"}})
    return b


def test_the_tiny_contextual_route_serves(hb: HandBundle, tmp_path: Path) -> None:
    b = _contextual_bundle(hb, tmp_path / "b")
    theta, emb = TopicModel.load(b).contextual_encoder().encode(["stock market", "football"])
    assert theta.shape == (2, hb.num_topics) and np.allclose(theta.sum(1), 1.0, atol=1e-5)


def test_a_contextual_graph_that_disagrees_with_its_entry_is_refused_when_opened(hb: HandBundle,
                                                                                tmp_path: Path) -> None:
    """The entry says 16-dimensional embeddings, the graph gives 8: before, every contextual document failed
    on its own with a numpy broadcasting error; now opening the route is the bundle's error."""
    b = _contextual_bundle(hb, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["contextual"]["embedding_dim"] = 16
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(XtmError, match="ctx.onnx: the graph gave embeddings of shape \\[1, 8\\]"):
        TopicModel.load(b).contextual_encoder()


def test_a_contextual_graph_swapped_after_load_is_refused_on_first_use(hb: HandBundle, tmp_path: Path) -> None:
    b = _contextual_bundle(hb, tmp_path / "b")
    model = TopicModel.load(b)                   # checked here, opened later
    # The weights (not the small shape constants onnxruntime must read inline) move to a file no
    # manifest vouches for: onnxruntime would read it.
    externalize(b / "ctx.onnx", "ctx.weights", threshold=64)
    with pytest.raises(XtmError, match="external data"):
        model.contextual_encoder()


def test_a_contextual_tokenizer_swapped_for_a_link_after_load_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    b = _contextual_bundle(hb, tmp_path / "b")
    model = TopicModel.load(b)
    outside = tmp_path / "tok-elsewhere.model"
    shutil.move(b / "ctx_tok.model", outside)
    (b / "ctx_tok.model").symlink_to(outside)
    with pytest.raises(XtmError, match="outside the bundle"):
        model.contextual_encoder()


# -- hostile values: a manifest, a graph, topic words and weights someone else wrote ------------------


def _dense_graph(path: Path, vocab_size: int, num_topics: int, weights: np.ndarray | None = None, *,
                 in_type: int = TensorProto.FLOAT, extra_input: bool = False) -> None:
    """softmax(bow @ W) as one ONNX graph, input "bow" and output "theta" (the bundle fixture's names),
    with a chosen input type, weights (NaN ones included) and optionally a second required input."""
    w = np.ones((vocab_size, num_topics), np.float32) if weights is None else weights.astype(np.float32)
    nodes, x = [], "bow"
    if in_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["bow"], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    inputs = [helper.make_tensor_value_info("bow", in_type, ["n", vocab_size])]
    if extra_input:
        inputs.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["n", num_topics]))
        nodes += [helper.make_node("MatMul", [x, "W"], ["z0"]), helper.make_node("Add", ["z0", "extra"], ["z"])]
    else:
        nodes.append(helper.make_node("MatMul", [x, "W"], ["z"]))
    nodes.append(helper.make_node("Softmax", ["z"], ["theta"], axis=-1))
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("theta", TensorProto.FLOAT,
                                                                                 ["n", num_topics])],
                              initializer=[numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _edit_manifest(b: Path, edit) -> None:
    p = b / "manifest.json"
    m = json.loads(p.read_text())
    edit(m)
    p.write_text(json.dumps(m))
    rewrite_checksums(b)


@pytest.mark.parametrize("field,value", [("min_token_length", "abc"), ("min_token_length", None),
                                         ("min_token_length", [1]), ("min_token_length", 10**400),
                                         ("min_token_length", 0), ("min_token_length", True),
                                         ("lowercase", "false"), ("lowercase", 1), ("kind", "evil"), ("kind", 5),
                                         ("segmenter", 5), ("segmenter", "x" * 201), ("segmenter", "jieba\n1"),
                                         ("user_words", "선크림"), ("user_words", [5]), ("user_words", ["두 단어"]),
                                         ("user_words", ["x" * 101]), ("user_words", [""]),
                                         ("user_words", ["a"] * 1_000_001)])
def test_a_tokenizer_setting_of_the_wrong_type_is_a_clean_error(hb: HandBundle, tmp_path: Path, field: str,
                                                               value: object) -> None:
    """Before: "abc" / null / [1] raised ValueError / TypeError tracebacks at load, 10**400 OverflowError, and
    "false" read as True (a non-empty string)."""
    b = copy_bundle(hb, tmp_path / "b")
    _edit_manifest(b, lambda m: m["encoders"]["en"]["tokenizer"].__setitem__(field, value))
    with pytest.raises(XtmError, match=f"encoders.en: tokenizer: .*{field if field != 'kind' else ''}") as e:
        read_manifest(b)
    assert "manifest.json" in str(e.value)


@pytest.mark.parametrize("text", ['{"opset": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000,
                                  '{"a": 1', "\udcff"])
def test_a_manifest_that_no_json_parser_takes_is_a_clean_error(hb: HandBundle, tmp_path: Path, text: str) -> None:
    """Before: a 5,000-digit number (ValueError) and 100,000 nested brackets (RecursionError) were tracebacks."""
    b = copy_bundle(hb, tmp_path / "b")
    (b / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(XtmError, match="manifest.json: (invalid JSON|not UTF-8)"):
        read_manifest(b)


@pytest.mark.parametrize("graph", ["nan", "int64 input", "extra input", "not a distribution"])
def test_a_graph_that_gives_no_topic_mixture_is_refused_at_load(hb: HandBundle, tmp_path: Path, graph: str) -> None:
    """Before: a NaN graph wrote `"theta":[nan,...]` (not JSON) with exit 0 and crashed the CSV/Parquet writers; a
    graph wanting int64 or a second input failed every document one by one, exit 0. Now refused when loaded."""
    b = copy_bundle(hb, tmp_path / "b")
    V, K = len(hb.vocabs["en"]), hb.num_topics
    if graph == "nan":
        _dense_graph(b / "encoder_en.onnx", V, K, np.full((V, K), np.nan))
    elif graph == "int64 input":
        _dense_graph(b / "encoder_en.onnx", V, K, in_type=TensorProto.INT64)
    elif graph == "extra input":
        _dense_graph(b / "encoder_en.onnx", V, K, extra_input=True)
    else:                                           # a Softmax over the wrong axis: columns sum to 1, not rows
        _dense_graph(b / "encoder_en.onnx", V, K)
        proto = onnx.load(str(b / "encoder_en.onnx"))
        proto.graph.node[-1].attribute[0].i = 0
        onnx.save(proto, str(b / "encoder_en.onnx"))
    rewrite_checksums(b)
    with pytest.raises(XtmError, match="encoder_en.onnx") as e:
        TopicModel.load(b)
    want = {"nan": "NaN or infinite", "int64 input": "tensor\\(int64\\)", "extra input": "'extra'",
            "not a distribution": "not a distribution"}[graph]
    assert re.search(want, str(e.value)), str(e.value)
    docs = tmp_path / "docs.jsonl"
    docs.write_text(json.dumps({"text": "stock market", "lang": "en"}) + "\n")
    p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(docs), "--bundle", str(b)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stdout == "", p.stderr


def test_names_from_a_manifest_reach_an_error_escaped(hb: HandBundle, tmp_path: Path) -> None:
    b = copy_bundle(hb, tmp_path / "b")
    _edit_manifest(b, lambda m: m["encoders"]["en"].__setitem__("output", "\x1b]0;owned\x07theta"))
    with pytest.raises(XtmError) as e:
        TopicModel.load(b)
    assert "\x1b" not in str(e.value) and "\\x1b]0;owned\\x07" in str(e.value)


@pytest.mark.parametrize("topics", [[{"id": True, "words": {}}], "duplicate"])
def test_topic_ids_that_are_not_one_topic_each_are_refused(hb: HandBundle, tmp_path: Path, topics: object) -> None:
    """Before: "id": true read as topic 1, and a duplicated id left another topic without words."""
    b = copy_bundle(hb, tmp_path / "b")
    obj = json.loads((b / "topics.json").read_text())
    if topics == "duplicate":
        obj["topics"][1]["id"] = obj["topics"][0]["id"]
    else:
        obj["topics"][0]["id"] = True
    (b / "topics.json").write_text(json.dumps(obj))
    rewrite_checksums(b)
    with pytest.raises(XtmError, match="topics.json: topic #"):
        TopicModel.load(b)


@pytest.mark.parametrize("beta", ["huge header", "strings", "complex", "nan", "truncated", "version 3"])
def test_topic_word_weights_are_checked_before_they_are_read(hb: HandBundle, tmp_path: Path, beta: str) -> None:
    """Before: a header claiming 6e9 x 40 floats made numpy allocate 894 GiB (MemoryError), strings raised
    ValueError, complex numbers were silently made real."""
    b = copy_bundle(hb, tmp_path / "b")
    p = b / json.loads((b / "manifest.json").read_text())["encoders"]["en"]["beta"]
    K, V = hb.num_topics, len(hb.vocabs["en"])
    if beta == "huge header":
        header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 1), np.float32))
        header["shape"] = (6_000_000_000, V)
        with open(p, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            f.write(b"\0" * 64)
    elif beta == "strings":
        np.save(p, np.full((K, V), "ab"))
    elif beta == "complex":
        np.save(p, np.ones((K, V), np.complex64))
    elif beta == "nan":
        np.save(p, np.full((K, V), np.nan, np.float32))
    elif beta == "version 3":  # a format xtm never writes: refused, not guessed at
        with open(p, "wb") as f:
            np.lib.format.write_array(f, np.ones((K, V), np.float32), version=(3, 0))
    else:
        data = p.read_bytes()
        p.write_bytes(data[:len(data) // 2])
    rewrite_checksums(b)
    model = TopicModel.load(b)
    with pytest.raises(XtmError, match=p.name):
        model.topic_word_weights("en")


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("max_tokens", "abc", "'max_tokens' must be an integer of at least 3, got 'abc'"),
    ("max_tokens", 2, "'max_tokens' must be an integer of at least 3, got 2"),
    ("pad_id", "x", "'pad_id' must be an integer of at least 0, got 'x'"),
    ("pad_id", True, "'pad_id' must be an integer"),
    ("add_bos", "yes", "'add_bos' must be true or false, got 'yes'"),
])
def test_a_contextual_tokenizer_field_of_the_wrong_type_is_the_manifests_error(
        hb: HandBundle, tmp_path: Path, field: str, value: object, needle: str) -> None:
    """Before: read as int('abc') inside infer, a ValueError traceback for every contextual document."""
    b = _contextual_bundle(hb, tmp_path / "b")
    m = json.loads((b / "manifest.json").read_text())
    m["contextual"]["tokenizer"][field] = value
    (b / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(XtmError, match=re.escape(needle)) as e:
        TopicModel.load(b)
    assert e.value.path == str(b / "manifest.json")


def test_auto_opens_the_contextual_graph_only_for_a_row_that_goes_to_it(hb: HandBundle, tmp_path: Path) -> None:
    """Before: route "auto" opened the contextual graph for every call, so traffic the bag-of-words encoders serve
    paid its memory (230 MB for the real one) and failed with it when it could not open."""
    b = _contextual_bundle(hb, tmp_path / "b")
    model = TopicModel.load(b)
    assert model.auto_route == "bow"
    res = model.infer(["The stock market and the bank price fell"], "en")
    assert res.routes == ["bow"] and model._contextual is None
    (b / "ctx.onnx").write_bytes(b"broken")  # a graph that cannot open no longer matters to that traffic
    assert model.infer(["The football match"], "en").routes == ["bow"]
    with pytest.raises(XtmError, match="ctx.onnx: not a valid ONNX model"):
        model.infer(["stock market"], "fr")  # the first row the graph reads opens it


def test_a_batch_that_fails_once_for_the_machine_is_tried_again_not_lost(
        hb: HandBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A 200k-document xtm-infer stopped at 134k with "inference failed for every document" (a review): threads
    ran out for a moment, the batch failed, then each of its documents alone at once, and the run's output was
    dropped. The batch is tried again after a pause first."""
    import xtm.runtime.engine as engine_module

    monkeypatch.setattr(engine_module, "RETRY_PAUSE_S", 0.01)
    b = _contextual_bundle(hb, tmp_path / "b")
    model = TopicModel.load(b)
    real, calls = TopicModel.infer, []

    def flaky(self, *a, **k):  # the machine out of threads for the batch and each of its 20 documents alone
        calls.append(1)
        if len(calls) <= 21:
            raise RuntimeError("Resource temporarily unavailable")
        return real(self, *a, **k)

    monkeypatch.setattr(TopicModel, "infer", flaky)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        out = list(model.infer_records({"id": i, "text": "stock market", "lang": "fr"} for i in range(20)))
    assert len(out) == 20 and all(json.loads(line)["id"] == i for i, line in enumerate(out)) and len(calls) == 22
    assert "inference of 20 documents failed alike, each alone too (RuntimeError: Resource temporarily " \
           "unavailable); trying them again" in caplog.text
    # A document that breaks inference costs its own line, at once: no pause for its chunk (a re-review: 1 s a
    # chunk holding one, 10,000 lines in 12 s instead of 2).
    calls.clear()

    def one_bad(self, texts, *a, **k):
        if "poison" in texts:
            raise RuntimeError("cannot read this one")
        return real(self, texts, *a, **k)

    monkeypatch.setattr(TopicModel, "infer", one_bad)
    caplog.clear()
    rows = [{"id": i, "text": "poison" if i == 3 else "stock market", "lang": "fr"} for i in range(20)]
    reports: list[str] = []
    out = list(model.infer_records(rows, report=reports.append))
    assert len(out) == 19 and reports == ["<records>:4: cannot infer this document: RuntimeError: cannot read this one"]
    assert "trying them again" not in caplog.text
    # xtm-infer's stop names the lines it was at when the failure stays (every document alone, the same error)
    monkeypatch.setattr(TopicModel, "infer", lambda self, *a, **k: (_ for _ in ()).throw(MemoryError("out")))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": i, "text": "stock market", "lang": "fr"}) + "\n" for i in range(5)))
    from xtm.runtime.engine import infer_file

    with pytest.raises(XtmError, match=r"docs.jsonl: lines 1-5: inference failed for each of these 5 documents alone"):
        infer_file(docs, model, tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()


def test_a_contextual_graph_that_cannot_open_is_read_once_not_once_per_document(
        hb: HandBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failing batch is retried document by document (a bad document costs its own line); a graph that cannot
    open was read and hashed again for each of them (80 MB per document of a 1,024-record chunk)."""
    from xtm.runtime.contextual import ContextualEncoder

    b = _contextual_bundle(hb, tmp_path / "b")
    model = TopicModel.load(b)
    (b / "ctx.onnx").write_bytes((b / "ctx.onnx").read_bytes() + b"\0")  # damaged after the load
    real, opened = ContextualEncoder.load, []
    monkeypatch.setattr(ContextualEncoder, "load", staticmethod(lambda *a, **k: (opened.append(1), real(*a, **k))[1]))
    with pytest.raises(XtmError, match="inference failed for each of these 20 documents alone.*ctx.onnx: "):
        list(model.infer_records({"id": i, "text": "stock market", "lang": "fr"} for i in range(20)))
    assert len(opened) == 1
    # The failure is said again for a while, then tried again: a cause that passes (file descriptors, GPU
    # memory, a file missing during a redeploy) does not disable the route for the model's lifetime.
    b.joinpath("ctx.onnx").write_bytes(b.joinpath("ctx.onnx").read_bytes()[:-1])  # whole again
    with pytest.raises(XtmError, match="ctx.onnx: "):
        model.contextual_encoder()
    assert len(opened) == 1
    import xtm.runtime.model as model_module

    later = model_module.time.monotonic() + model_module._RETRY_OPEN_AFTER_S
    monkeypatch.setattr(model_module.time, "monotonic", lambda: later)
    assert model.infer(["stock market"], "fr").routes == ["contextual"] and len(opened) == 2


def test_a_bundle_tokenized_with_other_segmenter_releases_says_so_once_and_still_serves(
        hb: HandBundle, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A Kiwi, jieba or janome upgrade cuts words otherwise (a new dictionary), and the bundle's vocabulary then misses
    them without a word: the run records the releases it segmented with, and the runtime names a difference."""
    from xtm.runtime.tokenize import segmenter_release

    b = copy_bundle(hb, tmp_path / "b")
    _edit_manifest(b, lambda m: m["encoders"]["en"]["tokenizer"].update(kind="jieba", segmenter="jieba 0.0"))
    model = TopicModel.load(b)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        model.infer(["bank market", "stock"], "en")
        model.infer(["bank"], "en")
    said = [r.getMessage() for r in caplog.records if "segment" in r.getMessage() or "tokenized" in r.getMessage()]
    assert said == [f"{b}: 'en' was tokenized with jieba 0.0 when the model was trained; this process has "
                    f"{segmenter_release('jieba')}: words may be cut otherwise and miss the vocabulary (install those "
                    "releases to serve it as trained)"]
    caplog.clear()
    _edit_manifest(b, lambda m: m["encoders"]["en"]["tokenizer"].update(segmenter=segmenter_release("jieba")))
    with caplog.at_level(logging.WARNING, logger="xtm"):
        TopicModel.load(b).infer(["bank market"], "en")
    assert "tokenized with" not in caplog.text


@pytest.mark.parametrize(("edit", "message"), [
    (lambda words: ["", *words[1:]], r"vocab_en\.txt:1: empty vocabulary entry"),
    (lambda words: [words[0], words[0], *words[2:]], r"vocab_en\.txt:2: the word '.+' is listed twice"),
    (lambda words: ["two words", *words[1:]], r"vocab_en\.txt:1: the word 'two words' contains whitespace"),
])
def test_a_bundle_vocabulary_is_read_by_the_one_vocabulary_rule(hb: HandBundle, tmp_path: Path, edit, message) -> None:
    """The runtime had a reader of its own that took an empty line as a word and a repeated word with a warning,
    where a run's vocabulary (the same file, copied) is refused for either."""
    b = copy_bundle(hb, tmp_path / "b")
    words = (b / "vocab_en.txt").read_text(encoding="utf-8").split("\n")[:-1]
    (b / "vocab_en.txt").write_text("\n".join(edit(words)) + "\n", encoding="utf-8")
    rewrite_checksums(b)
    with pytest.raises(XtmError, match=message):
        TopicModel.load(b)


def test_get_topic_orders_words_as_the_topics_list_does(hb: HandBundle, tmp_path: Path) -> None:
    """get_topic ranked the float32 softmax of beta, where two near-equal weights become equal and go by column;
    topics.json (and the run's topic files) rank beta itself: the two lists disagreed on such a pair."""
    b = copy_bundle(hb, tmp_path / "b")
    beta = np.load(b / "beta_en.npy")
    beta[0] = np.float32(-5.0)
    beta[0, 0] = np.float32(1e-3)
    beta[0, 1] = np.nextafter(np.float32(1e-3), np.float32(1.0))  # one ulp above: column 1 first in beta
    np.save(b / "beta_en.npy", beta, allow_pickle=False)
    dist = np.exp(beta[0].astype(np.float64) - beta[0].max())
    assert np.float32(dist[0] / dist.sum()) == np.float32(dist[1] / dist.sum())  # equal after the float32 softmax
    rewrite_checksums(b)
    model = TopicModel.load(b)
    vocab = model.vocabulary("en")
    assert [w for w, _ in model.get_topic(0, "en", 2)] == [vocab[1], vocab[0]]

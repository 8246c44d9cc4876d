"""The bundle format has one owner (issue 17): xtm.runtime.bundle defines it and reads it,
xtm.runtime.bundle_write writes it, and the exporter and the tests' hand-made bundle both write
through that writer. Real exports, real files, real FIFOs and symlinks.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bundle_fixture
import numpy as np
import onnx
import pytest
from bundle_fixture import HandBundle, make_bundle

import xtm.exporters.onnx_export as onnx_export
import xtm.runtime.bundle as bundle
import xtm.runtime.bundle_dir as bundle_dir
import xtm.runtime.bundle_write as bundle_write
from xtm.errors import XtmError
from xtm.exporters.onnx_export import export_run
from xtm.runtime import TopicModel
from xtm.runtime.bundle import MANIFEST, ContextualEntry, EncoderEntry, parse_manifest, read_manifest, sha256_file
from xtm.runtime.bundle_write import SourceRun, manifest_schema_version, write_manifest

ROOT = Path(__file__).resolve().parents[1]
# The files that read, write or place bundles (runtime/model.py and runtime/ray.py read through them).
BUNDLE_CODE = sorted([*ROOT.glob("runtime/bundle*.py"), *ROOT.glob("exporters/*.py"), ROOT / "tests/bundle_fixture.py"])


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("hand") / "b")


@pytest.fixture(scope="module")
def exported(example_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "b"
    export_run(example_run, out, progress=False, contextual=False)
    return out


def manifest_json(d: Path) -> dict:
    return json.loads((d / MANIFEST).read_text(encoding="utf-8"))


def bundle_files(src: Path, dst: Path) -> Path:
    """A copy of a bundle's files without its manifest: what a writer starts from."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(MANIFEST))
    return dst


def write_like_the_fixture(d: Path, hb: HandBundle) -> None:
    m = read_manifest(hb.path)
    write_manifest(d, model=m.model, num_topics=m.num_topics, languages=m.languages,
                   encoders=list(m.encoders.values()), opset=m.opset, quantization=None,
                   source_run=SourceRun("x"), parity={})


# -- one writer --------------------------------------------------------------------------------------


def test_the_exporter_and_the_fixture_write_through_the_same_writer(exported: Path, hb: HandBundle) -> None:
    assert onnx_export.write_manifest is bundle_write.write_manifest
    assert bundle_fixture.write_manifest is bundle_write.write_manifest
    assert onnx_export.write_topics is bundle_fixture.write_topics is bundle_write.write_topics
    a, b = manifest_json(exported), manifest_json(hb.path)
    read_manifest(exported), read_manifest(hb.path)
    assert list(a) == list(b)   # the same keys, in the same order
    ea, eb = a["encoders"]["en"], b["encoders"]["en"]
    assert set(ea) - {"inputs"} == set(eb) - {"input"}   # sparse names two inputs, dense one
    assert (a["schema_version"], b["schema_version"]) == (2, 1)  # sparse, dense; 3 only with user words
    assert set(a["files"]) == {p.name for p in exported.iterdir()} - {MANIFEST}
    assert set(b["files"]) == {p.name for p in hb.path.iterdir()} - {MANIFEST}


def test_format_constants_and_the_checksum_are_defined_once() -> None:
    owner = ROOT / "runtime" / "bundle.py"
    assigned: dict[str, list[str]] = {}
    literals, hashing = [], []
    for path in BUNDLE_CODE:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for t in targets:
                    if isinstance(t, ast.Name) and t.id in ("SCHEMA_VERSION", "FORMAT", "MANIFEST"):
                        assigned.setdefault(t.id, []).append(rel)
            if isinstance(node, ast.Constant) and node.value in ("xtm-bundle", "manifest.json"):
                literals.append(f"{rel}:{node.lineno}")
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                if "hashlib" in names:
                    hashing.append(rel)
    mine = str(owner.relative_to(ROOT))
    assert assigned == {"SCHEMA_VERSION": [mine], "FORMAT": [mine], "MANIFEST": [mine]}
    assert all(x.startswith(mine + ":") for x in literals), literals
    assert hashing == [mine]
    # The names others use are the owner's, not copies (nor aliases kept for old callers).
    assert not hasattr(onnx_export, "sha256") and bundle_write.sha256_file is bundle.sha256_file
    assert bundle_write.SCHEMA_VERSION is bundle.SCHEMA_VERSION and bundle_dir.FORMAT is bundle.FORMAT


def test_the_runtime_reads_the_format_through_its_owner() -> None:
    """The contextual entry, its constants, topics.json's reader and the checksum were also written
    out in runtime/contextual.py, runtime/model.py and runtime/ray.py: each is defined once, in
    runtime/bundle.py, and the others import it."""
    owner = "runtime/bundle.py"
    names = {"CONTEXTUAL_FORMAT", "TOKENIZER_KINDS", "ContextualEntry", "read_contextual_entry", "read_topics",
             "_read_topics", "sha256", "sha256_file", "sha256_bytes", "check_checksum"}
    defined: dict[str, list[str]] = {}
    hashing = []
    for path in sorted(ROOT.glob("runtime/*.py")) + sorted(ROOT.glob("exporters/*.py")):
        rel = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                found = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                found = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                found = []
            for name in set(found) & names:
                defined.setdefault(name, []).append(rel)
            if isinstance(node, (ast.Import, ast.ImportFrom)) and "hashlib" in [a.name for a in node.names]:
                hashing.append(rel)
    assert defined == {n: [owner] for n in names - {"_read_topics", "sha256"}}
    # tokenize.py hashes its jieba cache (not a bundle file); nothing else in the runtime hashes.
    assert sorted(hashing) == [owner, "runtime/tokenize.py"]
    from xtm.runtime import contextual, model

    assert model.read_topics is bundle.read_topics and model.ContextualEntry is bundle.ContextualEntry
    assert contextual.ContextualEntry is bundle.ContextualEntry


def test_topics_are_read_as_written(hb: HandBundle, tmp_path: Path) -> None:
    """read_topics is write_topics' reader: topic ids keep their order, alias keys read as their
    language, languages the bundle does not serve are left out, anything else names the file."""
    m = read_manifest(hb.path)
    d = tmp_path / "b"
    shutil.copytree(hb.path, d)
    words = {"en": [[f"e{k}"] for k in range(m.num_topics)], "cn": [[f"z{k}"] for k in range(m.num_topics)],
             "fr": [[f"f{k}"] for k in range(m.num_topics)]}
    bundle_write.write_topics(d, words, 1)
    topics = bundle.read_topics(read_manifest(d, verify=False))
    assert topics == [{"en": [f"e{k}"], "zh": [f"z{k}"]} for k in range(m.num_topics)]
    (d / m.topics).write_text('{"topics": [{"id": 0, "words": {"en": "not a list"}}]}')
    with pytest.raises(XtmError, match="expected a 'topics' list") as e:
        bundle.read_topics(read_manifest(d, verify=False))
    assert m.topics in str(e.value)


def test_one_checksum_rule_for_files_and_bytes(hb: HandBundle) -> None:
    """The Ray engine checks bundles shipped as bytes: the same digest, the same comparison."""
    for name, digest in read_manifest(hb.path).files.items():
        p = hb.path / name
        assert bundle.sha256_bytes(p.read_bytes()) == sha256_file(p) == digest
        bundle.check_checksum(p, digest, digest.upper())   # manifests may spell hex in capitals
        with pytest.raises(XtmError, match="checksum mismatch") as e:
            bundle.check_checksum(p, "0" * 64, digest)
        assert name in str(e.value)


def test_reading_a_bundle_does_not_import_the_contextual_route(hb: HandBundle) -> None:
    """runtime.bundle and runtime.contextual imported each other (a cycle); the format owner now
    checks the contextual entry itself."""
    code = ("import sys\nfrom xtm.runtime.bundle import read_manifest\n"
            f"read_manifest({str(hb.path)!r})\nprint('xtm.runtime.contextual' in sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "False"


# -- typed entries round-trip through the reader --------------------------------------------------


@pytest.mark.parametrize("sparse", [False, True])
def test_encoder_entries_read_back_as_written(sparse: bool, tmp_path: Path) -> None:
    entry = EncoderEntry(lang="en", file="encoder_en.onnx", inputs=("word_ids", "counts") if sparse else ("bow",),
                         input_format="sparse" if sparse else "dense", output="theta", vocab="vocab_en.txt",
                         vocab_size=3, beta="beta_en.npy", tokenizer={"lang": "en", "kind": "regex"})
    raw = {"format": bundle.FORMAT, "schema_version": manifest_schema_version([entry]), "num_topics": 2,
           "languages": ["en"], "encoders": {"en": entry.to_json()}, "topics": "topics.json",
           "files": {n: "0" * 64 for n in ("encoder_en.onnx", "vocab_en.txt", "beta_en.npy", "topics.json")}}
    assert parse_manifest(raw, tmp_path).encoders["en"] == entry
    assert raw["schema_version"] == (2 if sparse else 1)   # dense-only bundles stay readable by older runtimes


def test_the_contextual_entry_reads_back_as_written(hb: HandBundle, tmp_path: Path) -> None:
    entry = ContextualEntry(file="contextual.onnx", inputs=("token_ids", "mask"),
                            outputs=("theta", "sentence_embedding"), encoder="use-multilingual", embedding_dim=512,
                            languages=("de", "en"),
                            tokenizer={"kind": "sentencepiece", "file": "contextual_tokenizer.model"},
                            finetuned=True, quantization="int8", objective="kl", test_agreement=0.75)
    raw = manifest_json(hb.path)
    raw["contextual"] = entry.to_json()
    raw["files"].update({"contextual.onnx": "0" * 64, "contextual_tokenizer.model": "0" * 64})
    assert parse_manifest(raw, tmp_path).contextual == entry
    assert raw["contextual"]["format"] == bundle.CONTEXTUAL_FORMAT
    raw["contextual"]["tokenizer"]["file"] = "../elsewhere.model"
    with pytest.raises(XtmError, match="must be a bundle file listed"):
        parse_manifest(raw, tmp_path)


def test_a_legacy_schema_1_manifest_without_input_format_reads_the_same(hb: HandBundle, tmp_path: Path) -> None:
    """Bundles written before input_format existed (schema 1) carry no such key."""
    b = tmp_path / "legacy"
    shutil.copytree(hb.path, b)
    raw = manifest_json(b)
    for e in raw["encoders"].values():
        del e["input_format"]
    (b / MANIFEST).write_text(json.dumps(raw))
    assert read_manifest(b).encoders == read_manifest(hb.path).encoders
    texts = ["stock market growth", "football match"]
    np.testing.assert_array_equal(TopicModel.load(b).infer(texts, langs="en").theta,
                                  TopicModel.load(hb.path).infer(texts, langs="en").theta)


def test_the_source_run_is_named_never_located(tmp_path: Path) -> None:
    run = tmp_path / "private" / "runs" / "demo"
    assert SourceRun.of(run, {"cache_dir": str(tmp_path), "epochs": 3}).to_json() == \
        {"name": "demo", "train_config": {"epochs": 3}}
    assert SourceRun.of(run, {"cache_dir": "/home/me/.cache"}).to_json() == {"name": "demo", "train_config": None}


# -- the writer refuses what the reader would refuse, and then writes nothing -----------------------


def test_a_graph_with_external_data_is_never_written_into_a_manifest(hb: HandBundle, tmp_path: Path) -> None:
    d = bundle_files(hb.path, tmp_path / "b")
    proto = onnx.load(str(d / "encoder_en.onnx"))
    onnx.save_model(proto, str(d / "encoder_en.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    with pytest.raises(XtmError, match=r"external data \(weights.bin\)"):
        write_like_the_fixture(d, hb)
    assert not (d / MANIFEST).exists()


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_a_directory_holding_anything_but_regular_files_is_not_signed(hb: HandBundle, tmp_path: Path,
                                                                      kind: str) -> None:
    d = bundle_files(hb.path, tmp_path / "b")
    outside = tmp_path / "outside.txt"
    outside.write_text("someone else's file")
    odd = d / "extra"
    if kind == "symlink":
        odd.symlink_to(outside)
    elif kind == "fifo":
        os.mkfifo(odd)   # hashing it would block forever
    else:
        odd.mkdir()
    with pytest.raises(XtmError, match="not a regular file") as e:
        write_like_the_fixture(d, hb)
    assert "extra" in str(e.value)
    assert not (d / MANIFEST).exists() and outside.read_text() == "someone else's file"


def test_a_listed_file_that_is_missing_is_not_signed(hb: HandBundle, tmp_path: Path) -> None:
    d = bundle_files(hb.path, tmp_path / "b")
    (d / "beta_zh.npy").unlink()
    with pytest.raises(XtmError, match="beta_zh.npy is used but has no checksum"):
        write_like_the_fixture(d, hb)
    assert not (d / MANIFEST).exists()


def test_the_written_manifest_lists_every_file_with_its_checksum(hb: HandBundle, tmp_path: Path) -> None:
    d = bundle_files(hb.path, tmp_path / "b")
    (d / "notes.txt").write_text("shipped with the bundle")
    write_like_the_fixture(d, hb)
    m = read_manifest(d)
    assert m.files == {p.name: sha256_file(p) for p in d.iterdir() if p.name != MANIFEST}
    assert "notes.txt" in m.files

"""TopicModel embedded in a long-running service: errors a service can tell apart (the caller's input, a bundle
redeployed under a loaded model, a passing shortage), the same reading of a long text by infer and infer_records,
what warm_up opens, and the batch engine's stdout in a notebook (text only). Real onnxruntime sessions."""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import HandBundle, make_bundle

from xtm.errors import BundleChangedError, TransientError, XtmError
from xtm.runtime import TopicModel
from xtm.runtime.records import MAX_CHARS


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture
def live(hb: HandBundle, tmp_path: Path) -> Path:
    """A copy of the bundle that a test may redeploy or damage."""
    return Path(shutil.copytree(hb.path, tmp_path / "live"))


def test_a_bundle_redeployed_under_a_loaded_model_is_a_bundle_changed_error(live: Path, tmp_path: Path) -> None:
    model = TopicModel.load(live)
    assert not model.bundle_changed()
    other = make_bundle(tmp_path / "other", seed=7)
    shutil.rmtree(live)
    shutil.copytree(other.path, live)  # a redeploy in place: another bundle under the same path
    assert model.bundle_changed()
    with pytest.raises(BundleChangedError, match="replaced since this model loaded it: load it again") as e:
        model.get_topic(0, "en")
    assert "checksum mismatch" in str(e.value)  # the cause, kept in the message
    # what the model holds in memory still serves; a fresh load reads the new bundle
    assert model.infer(["market stock"], langs="en").theta.shape == (1, 6)
    assert TopicModel.load(live).get_topic(0, "en")


def test_a_damaged_file_under_an_unchanged_manifest_is_not_a_redeploy(live: Path) -> None:
    model = TopicModel.load(live)
    beta = next(live.glob("beta_en*.npy"))
    data = bytearray(beta.read_bytes())
    data[-1] ^= 0xFF
    beta.write_bytes(bytes(data))
    assert not model.bundle_changed()
    with pytest.raises(XtmError, match="checksum mismatch") as e:
        model.get_topic(0, "en")
    assert not isinstance(e.value, BundleChangedError)


def test_a_vanished_beta_says_it_cannot_be_read_not_that_it_is_no_npy(live: Path) -> None:
    model = TopicModel.load(live, verify=False)
    next(live.glob("beta_en*.npy")).unlink()
    with pytest.raises(XtmError) as e:
        model.topic_word_weights("en")
    assert "cannot read: No such file or directory" in str(e.value) and "not a plain .npy" not in str(e.value)


def test_a_shortage_of_open_files_is_a_transient_error() -> None:
    import errno

    from xtm.errors import os_error

    short = os_error("cannot read", OSError(errno.EMFILE, "Too many open files"), path="x.onnx")
    assert isinstance(short, TransientError) and isinstance(short, XtmError)
    assert str(short) == "x.onnx: Too many open files: a passing shortage of this system, retry"
    missing = os_error("cannot read", OSError(errno.ENOENT, "No such file or directory"), path="x.onnx")
    assert type(missing) is XtmError


def test_an_onnxruntime_failure_is_an_xtm_error_naming_the_graph() -> None:
    from xtm.runtime.providers import run_session

    class Fail(Exception):  # noqa: N818 (onnxruntime's name; its types are not public, not XtmError)
        pass

    def broken(outputs: list[str], feeds: dict) -> None:
        raise Fail("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Gemm node")

    def no_memory(outputs: list[str], feeds: dict) -> None:
        raise Fail("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory for requested buffer")

    with pytest.raises(XtmError, match="enc.onnx: onnxruntime failed to run the graph: Fail: ") as e:
        run_session(broken, ["theta"], {}, "enc.onnx")
    assert not isinstance(e.value, TransientError)
    with pytest.raises(TransientError, match="could not allocate memory"):
        run_session(no_memory, ["theta"], {}, "enc.onnx")


def test_infer_reads_a_long_text_as_infer_records_does(hb: HandBundle) -> None:
    """Both read the first MAX_CHARS characters: a service's online path and its batch path agree, and a
    10 MB request costs what 100,000 characters do. infer says so in the row's note."""
    import json

    model = TopicModel.load(hb.path)
    long = "stock market bank " * (MAX_CHARS // 18) + "team goal match " * 50_000
    res = model.infer([long, "stock market"], langs="en")
    assert res.notes[0] == f"text has {len(long):,} characters; read the first {MAX_CHARS:,}"
    assert res.notes[1] is None and not res.unsupported.any()
    cut = model.infer([long[:MAX_CHARS]], langs="en")
    np.testing.assert_array_equal(res.theta[0], cut.theta[0])
    line = json.loads(next(model.infer_records([{"text": long, "lang": "en"}], full_theta=True)))
    np.testing.assert_allclose(line["theta"], res.theta[0], atol=1e-6)


@pytest.mark.parametrize("records", ["abc", b"abc", bytearray(b"ab"), memoryview(b"ab"), {"text": "x"},
                                     {"text": "x"}.values(), None, 3])
def test_infer_records_refuses_what_is_not_records(hb: HandBundle, records: object) -> None:
    model = TopicModel.load(hb.path)
    with pytest.raises(XtmError, match="records must be an iterable of mappings"):
        list(model.infer_records(records))  # type: ignore[arg-type]


def test_warm_up_opens_the_language_detector_and_jiebas_dictionary(hb: HandBundle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import xtm.runtime.langid as langid
    import xtm.runtime.tokenize as tokenize

    monkeypatch.setattr(langid, "_identifiers", {})  # as in a fresh process
    monkeypatch.setattr(langid, "_folder", None)
    monkeypatch.setattr(tokenize, "_jieba", None)
    TopicModel.load(hb.path).warm_up()
    assert True in langid._identifiers and langid._folder is not None  # what identify() reads
    assert tokenize._jieba is not None  # (with rjieba, jieba itself cuts only blocks holding - % . + # &)


def test_the_engine_writes_to_a_text_only_stdout(hb: HandBundle, monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """A Jupyter kernel's stdout is text without .buffer: infer_file(out=None) writes its lines there."""
    from xtm.runtime.engine import InferenceOptions, infer_file

    src = tmp_path / "in.jsonl"
    src.write_text('{"id": 1, "text": "stock market", "lang": "en"}\n', encoding="utf-8")
    text_out = io.StringIO()
    monkeypatch.setattr(sys, "stdout", text_out)
    counts = infer_file(str(src), TopicModel.load(hb.path), None, options=InferenceOptions(top_k=1))
    assert counts.written == 1 and text_out.getvalue().startswith('{"id":1,"lang":"en"')
    with pytest.raises(XtmError, match="Parquet output needs a file"):
        infer_file(str(src), TopicModel.load(hb.path), None, output_format="parquet")


def test_a_link_swapped_to_another_bundle_is_a_redeploy(hb: HandBundle, tmp_path: Path) -> None:
    """`current -> v1` swapped to `v2` (the atomic redeploy): the model was loaded through the link."""
    import os

    v1 = Path(shutil.copytree(hb.path, tmp_path / "v1"))
    v2 = make_bundle(tmp_path / "v2", seed=7).path
    current = tmp_path / "current"
    current.symlink_to(v1)
    model = TopicModel.load(current)
    assert not model.bundle_changed()
    (tmp_path / "next").symlink_to(v2)
    os.replace(tmp_path / "next", current)
    assert model.bundle_changed()
    with pytest.raises(BundleChangedError):
        model.get_topic(0, "en")


def test_a_callers_wrong_language_stays_the_callers_error_after_a_redeploy(live: Path, tmp_path: Path) -> None:
    model = TopicModel.load(live)
    shutil.rmtree(live)
    shutil.copytree(make_bundle(tmp_path / "other", seed=7).path, live)
    with pytest.raises(XtmError, match="'fr' is not served") as e:
        model.topic_word_weights("fr")
    assert not isinstance(e.value, BundleChangedError)


def test_a_manifest_unreadable_for_want_of_file_handles_is_transient(hb: HandBundle,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """bundle_changed() said True (reload!) while the process was out of file handles for a moment."""
    import errno

    model = TopicModel.load(hb.path)

    def no_handles(self: Path) -> bytes:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Path, "read_bytes", no_handles)
    with pytest.raises(TransientError):
        from xtm.json_files import read_json

        read_json(hb.path / "manifest.json")
    assert not model.bundle_changed()


def test_xtm_infer_retries_a_passing_shortage_after_a_pause(hb: HandBundle, monkeypatch: pytest.MonkeyPatch,
                                                            tmp_path: Path) -> None:
    """onnxruntime out of memory for a moment (now a TransientError, an XtmError) stopped the run: the engine's
    pause-and-retry was for exceptions that are not XtmErrors."""
    import xtm.runtime.engine as engine
    from xtm.runtime.engine import InferenceOptions, infer_file

    monkeypatch.setattr(engine, "RETRY_PAUSE_S", 0.0)
    model = TopicModel.load(hb.path)
    real, calls = model.infer, {"n": 0}

    def short_of_memory(*args, **kwargs):  # the batch, then each of its 3 documents alone: then it passes
        calls["n"] += 1
        if calls["n"] <= 4:
            raise TransientError("onnxruntime could not allocate memory")
        return real(*args, **kwargs)

    monkeypatch.setattr(model, "infer", short_of_memory)
    src = tmp_path / "in.jsonl"
    src.write_text("".join(f'{{"id": {i}, "text": "stock market", "lang": "en"}}\n' for i in range(3)),
                   encoding="utf-8")
    counts = infer_file(str(src), model, str(tmp_path / "out.jsonl"), options=InferenceOptions(top_k=1))
    assert (counts.total, counts.skipped) == (3, 0) and calls["n"] == 5


def test_a_passing_shortage_opening_the_contextual_graph_is_tried_again_after_a_second(
        hb: HandBundle, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not at once (80 MB read, hashed and built per document of a failing batch), and not 10 s later."""
    import xtm.runtime.model as model_module

    model = TopicModel.load(hb.path)
    model._contextual_entry = object()  # type: ignore[assignment]  (a route to open; the load below fails)
    opened = {"n": 0}

    def short(*args, **kwargs):
        opened["n"] += 1
        raise TransientError("onnxruntime cannot load the contextual graph: could not allocate memory")

    now = {"t": 1000.0}
    monkeypatch.setattr(model_module.ContextualEncoder, "load", short)
    monkeypatch.setattr(model_module.time, "monotonic", lambda: now["t"])
    for _ in range(3):
        with pytest.raises(TransientError):
            model.contextual_encoder()
    assert opened["n"] == 1
    now["t"] += 1.5
    with pytest.raises(TransientError):
        model.contextual_encoder()
    assert opened["n"] == 2


def test_onnxruntime_failing_to_build_a_session_for_memory_is_transient() -> None:
    from xtm.runtime.providers import onnxruntime_error

    e = onnxruntime_error(RuntimeError("Failed to allocate memory for requested buffer of size 80000000"),
                          "onnxruntime cannot load the contextual graph", "contextual.onnx")
    assert isinstance(e, TransientError) and str(e).startswith("contextual.onnx: onnxruntime cannot load the")
    assert type(onnxruntime_error(RuntimeError("Protobuf parsing failed"), "cannot load", "x")) is XtmError

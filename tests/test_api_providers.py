"""Issue 16: choosing ONNX Runtime execution providers, and reporting the one in use.

The selection logic (names, what the installed build offers, a fallback onnxruntime took) is plain
code over provider names and runs here on real onnxruntime sessions (CPU build). No GPU can be
reached from this machine: the CUDA path is exercised up to the provider boundary, by giving the
selection logic the lists a GPU build reports (`resolve_providers`, `check_used`; the one stand-in
here, named so), and the one test that needs CUDA runs only where onnxruntime has a CUDA device.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from bundle_fixture import HandBundle, make_bundle
from click.testing import CliRunner
from log_isolation import library_logging  # noqa: F401  (a fixture)

from xtm.cli.infer import main as infer_main
from xtm.errors import XtmError
from xtm.runtime import TopicModel
from xtm.runtime.providers import CPU, CUDA, check_used, parse_providers, resolve_providers

ALL = ort.get_all_providers()
# What `onnxruntime-gpu` reports on a CUDA machine (the GPU boundary, as lists of names).
GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def test_short_and_full_names_resolve_in_the_order_given() -> None:
    assert parse_providers("cuda, cpu") == ["cuda", "cpu"]
    assert parse_providers(None) is None
    assert resolve_providers(["cuda", "cpu"], GPU_BUILD, ALL) == [CUDA, CPU]
    assert resolve_providers(["CPU", "CUDAExecutionProvider", "cuda"], GPU_BUILD, ALL) == [CPU, CUDA]
    assert resolve_providers(["tensorrt", "cuda", "cpu"], GPU_BUILD, ALL)[0] == "TensorrtExecutionProvider"


def test_the_default_prefers_cuda_when_the_build_has_it() -> None:
    assert resolve_providers(None, GPU_BUILD, ALL) == [CUDA, CPU]
    assert resolve_providers(None, ["AzureExecutionProvider", CPU], ALL) == [CPU]


def test_a_provider_the_build_lacks_names_the_gpu_install_line() -> None:
    with pytest.raises(XtmError) as e:
        resolve_providers(["cuda"], [CPU], ALL, runtimes={"onnxruntime": "1.32.0"})
    msg = str(e.value)
    assert "cuda (CUDAExecutionProvider) is not available in this onnxruntime (it has cpu)" in msg
    assert "installed: onnxruntime 1.32.0" in msg and 'pip uninstall -y onnxruntime && pip install "xtm[gpu]"' in msg


@pytest.mark.usefixtures("library_logging")
def test_a_provider_the_build_lacks_is_left_out_when_the_list_names_one_it_has(
        caplog: pytest.LogCaptureFixture) -> None:
    """`cuda,cpu` is what a script meant for any machine asks: on the CPU build it runs on the CPU, saying why."""
    cpu_build, runtimes = ["AzureExecutionProvider", CPU], {"onnxruntime": "1.32.0"}
    with caplog.at_level(logging.WARNING, logger="xtm.runtime.providers"):
        assert resolve_providers(["cuda", "cpu"], cpu_build, ALL, runtimes=runtimes) == [CPU]
        assert resolve_providers(["tensorrt", "cuda", "cpu"], cpu_build, ALL, runtimes=runtimes) == [CPU]
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3 and all(m.endswith("left out: running on cpu, as asked") for m in messages)
    assert "cuda (CUDAExecutionProvider) is not available in this onnxruntime" in messages[0]
    assert 'pip install "xtm[gpu]"' in messages[0]
    assert resolve_providers(["cpu", "cuda"], cpu_build, ALL, runtimes=runtimes) == [CPU]  # the CPU first: kept
    for no_fallback in (["cuda"], ["tensorrt", "cuda"]):
        with pytest.raises(XtmError, match="is not available in this onnxruntime"):
            resolve_providers(no_fallback, cpu_build, ALL, runtimes=runtimes)
    with pytest.raises(XtmError, match="'cudaa' is not available: onnxruntime knows no such provider"):
        resolve_providers(["cudaa", "cpu"], cpu_build, ALL)  # a misspelt name is never skipped


def test_a_misspelt_or_empty_provider_is_refused() -> None:
    with pytest.raises(XtmError, match="'cudaa' is not available: onnxruntime knows no such provider"):
        resolve_providers(["cudaa"], [CPU], ALL)
    with pytest.raises(XtmError, match="at least one execution provider"):
        parse_providers(" , ")
    with pytest.raises(XtmError, match="expected provider names"):
        parse_providers(["cpu", 3])  # type: ignore[list-item]


@pytest.mark.usefixtures("library_logging")
def test_a_fallback_onnxruntime_took_is_an_error_or_a_warning_as_the_request_says(
        caplog: pytest.LogCaptureFixture) -> None:
    """onnxruntime-gpu on a machine where CUDA cannot start opens the session on the CPU and only
    logs it: the session's get_providers() is the evidence (given here as the list it returns)."""
    fell_back = [CPU]
    with pytest.raises(XtmError, match="could not start CUDAExecutionProvider .* providers cuda,cpu"):
        check_used(["cuda"], [CUDA], fell_back, "encoder_en.onnx")
    with caplog.at_level(logging.WARNING, logger="xtm.runtime.providers"):
        check_used(["cuda", "cpu"], [CUDA, CPU], fell_back, "encoder_en.onnx")  # the user allowed the fallback
        check_used(None, [CUDA, CPU], fell_back, "encoder_en.onnx")             # the default: CUDA if it can
        check_used(["cuda"], [CUDA], [CUDA, CPU], "encoder_en.onnx")             # CUDA started: nothing to say
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.WARNING]
    assert "runs encoder_en.onnx on CPUExecutionProvider" in caplog.records[0].getMessage()


def test_load_with_providers_reports_what_the_sessions_run_on(hb: HandBundle) -> None:
    m = TopicModel.load(hb.path, providers="cpu")
    assert m.providers == [CPU]
    assert m.providers == list(m.encoder_session("en").get_providers())
    m2 = TopicModel.load(hb.path, providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(m.infer(["the stock market"], "en").theta, m2.infer(["the stock market"], "en").theta)


def test_load_refuses_cuda_alone_on_the_cpu_build_and_falls_back_when_asked(hb: HandBundle) -> None:
    if CUDA in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    with pytest.raises(XtmError, match=r"cuda \(CUDAExecutionProvider\) is not available"):
        TopicModel.load(hb.path, providers=["cuda"])
    assert TopicModel.load(hb.path, providers=["cuda", "cpu"]).providers == [CPU]


def test_xtm_infer_providers_flag_and_verbose_log(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "the stock market", "lang": "en"}\n', encoding="utf-8")
    r = CliRunner().invoke(infer_main, [str(src), "--bundle", str(hb.path), "--providers", "cpu", "-v"])
    assert r.exit_code == 0, r.output
    assert "xtm-infer: bundle " in r.stderr and "running on CPUExecutionProvider" in r.stderr
    assert "onnxruntime " in r.stderr  # the version that ran
    r = CliRunner().invoke(infer_main, [str(src), "--bundle", str(hb.path), "--providers", "cpu"])
    assert r.exit_code == 0 and r.stderr == ""  # not without -v
    if CUDA not in ort.get_available_providers():
        r = CliRunner().invoke(infer_main, [str(src), "--bundle", str(hb.path), "--providers", "cuda"])
        assert r.exit_code == 2 and r.stderr.startswith("error: execution provider cuda") and r.stdout == ""


@pytest.mark.skipif(CUDA not in ort.get_available_providers(), reason="needs onnxruntime-gpu and an NVIDIA GPU")
def test_cuda_runs_and_agrees_with_the_cpu(hb: HandBundle) -> None:  # pragma: no cover - no GPU here
    gpu = TopicModel.load(hb.path, providers="cuda")
    assert gpu.providers[0] == CUDA
    cpu = TopicModel.load(hb.path, providers="cpu")
    texts = ["the stock market and the bank", "北京的经济增长很快"]
    np.testing.assert_allclose(gpu.infer(texts).theta, cpu.infer(texts).theta, atol=1e-5)

"""Issue 16, installs: what `pip install xtm` carries, one ONNX Runtime per install line, the
segmenters as extras, and the commands of a runtime-only install.

Everything here runs for real: the wheel is built with setuptools from a copy of the source, a
missing package is made unimportable in a child process (a `None` entry in sys.modules, or a
module on PYTHONPATH that raises ImportError, as a broken or absent install does), and a second
ONNX Runtime wheel is installed as distribution metadata (a real *.dist-info directory on sys.path).
"""

from __future__ import annotations

import email
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from bundle_fixture import HandBundle, make_bundle
from click.testing import CliRunner

import xtm
from xtm.errors import TRAIN_INSTALL

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("core", "cli", "runtime", "trainer", "evaluation", "exporters", "models_zoo")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel setuptools' build backend makes from a copy of the source."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in PACKAGE_FOLDERS:
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    code = f"from setuptools import build_meta; print(build_meta.build_wheel({str(dist)!r}))"
    p = subprocess.run([sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return dist / p.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def wheel_metadata(wheel: Path) -> tuple[email.message.Message, list[str]]:
    """The wheel's METADATA and file names."""
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))))
    return meta, names


def requirements(meta: email.message.Message, extra: str | None) -> set[str]:
    """Distribution names required by the base install (extra None) or by one extra."""
    out = set()
    for req in meta.get_all("Requires-Dist") or []:
        spec, _, marker = req.partition(";")
        if (extra is None) == (not marker.strip()) and (extra is None or f'extra == "{extra}"' in marker):
            name = spec.strip().split("[")[0]
            for sep in "<>=!~ ":
                name = name.split(sep)[0]
            out.add(name.lower())
    return out


def test_the_base_install_carries_no_onnxruntime_wheel_no_segmenter_no_scipy_no_torch(wheel_metadata) -> None:
    meta, _ = wheel_metadata
    base = requirements(meta, None)
    assert {"numpy", "click", "py3langid", "sentencepiece"} <= base
    assert not base & {"onnxruntime", "onnxruntime-gpu", "janome", "jieba", "kiwipiepy", "scipy", "torch"}, base


def test_each_target_has_one_install_line_with_exactly_one_onnxruntime(wheel_metadata) -> None:
    meta, _ = wheel_metadata
    assert requirements(meta, "cpu") == {"onnxruntime"}
    assert requirements(meta, "gpu") == {"onnxruntime-gpu"}
    assert requirements(meta, "ja") == {"janome"} and requirements(meta, "zh") == {"jieba"}
    assert requirements(meta, "ko") == {"kiwipiepy"}
    # The README's demo installs .[train]: it must bring the CPU runtime and the example's segmenters.
    train = requirements(meta, "train")
    assert "torch" in train and "onnxruntime-gpu" not in train
    assert any(r.startswith("xtm") for r in meta.get_all("Requires-Dist") if 'extra == "train"' in r)
    train_self = next(r for r in meta.get_all("Requires-Dist") if r.startswith("xtm[") and 'extra == "train"' in r)
    assert {"cpu", "ja", "zh", "ko"} <= set(train_self.split("[")[1].split("]")[0].split(","))


def test_the_wheel_ships_py_typed_and_its_version_is_the_packages(wheel_metadata) -> None:
    meta, names = wheel_metadata
    assert "xtm/py.typed" in names
    assert meta["Version"] == xtm.__version__


# -- a second ONNX Runtime wheel -------------------------------------------------------------------


def fake_distribution(site: Path, name: str, version: str) -> None:
    """A real, minimal installed-distribution record (what pip leaves in site-packages)."""
    d = site / f"{name.replace('-', '_')}-{version}.dist-info"
    d.mkdir(parents=True)
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n", encoding="utf-8")
    (d / "INSTALLER").write_text("pip\n", encoding="utf-8")


def run_python(code: str, tmp_path: Path, extra_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env=env)


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def ja_bundle(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "ja",
                       vocabs={"en": ["market", "stock", "team"], "ja": ["市場", "株", "チーム"]}, num_topics=2)


@pytest.fixture(scope="module")
def ko_bundle(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "ko",
                       vocabs={"en": ["market", "stock", "team"], "ko": ["시장", "주식", "팀"]}, num_topics=2)


def test_both_onnxruntime_wheels_installed_is_detected_at_load_with_the_fix(hb: HandBundle, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "onnxruntime-gpu", "1.31.1")
    code = (
        "import logging, json\n"
        "logging.basicConfig(level=logging.WARNING, format='%(name)s|%(message)s')\n"
        "from xtm.runtime.providers import installed_runtimes\n"
        "from xtm.runtime import TopicModel\n"
        f"m = TopicModel.load({str(hb.path)!r})\n"
        "print(json.dumps(installed_runtimes()))\n")
    p = run_python(code, tmp_path, site)
    assert p.returncode == 0, p.stderr
    runtimes = json.loads(p.stdout.strip().splitlines()[-1])
    assert set(runtimes) == {"onnxruntime", "onnxruntime-gpu"} and runtimes["onnxruntime-gpu"] == "1.31.1"
    warning = [line for line in p.stderr.splitlines() if line.startswith("xtm.runtime.providers|")]
    assert len(warning) == 1, p.stderr
    assert "onnxruntime-gpu 1.31.1" in warning[0] and "overwrite each other's files" in warning[0]
    assert "pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu" in warning[0]


def test_a_single_runtime_loads_without_a_warning(hb: HandBundle, tmp_path: Path) -> None:
    p = run_python("import logging\nlogging.basicConfig(level=logging.WARNING)\n"
                   f"from xtm.runtime import TopicModel\nTopicModel.load({str(hb.path)!r})\n", tmp_path)
    assert p.returncode == 0 and p.stderr == "", p.stderr


def test_a_gpu_provider_asked_of_a_double_install_names_the_collision(hb: HandBundle, tmp_path: Path) -> None:
    site = tmp_path / "site"
    fake_distribution(site, "onnxruntime-gpu", "1.31.1")
    code = ("from xtm.runtime import TopicModel\nfrom xtm.errors import XtmError\n"
            f"try:\n    TopicModel.load({str(hb.path)!r}, providers='cuda')\n"
            "except XtmError as e:\n    print(e)\n")
    p = run_python(code, tmp_path, site)
    assert p.returncode == 0, p.stderr
    assert "cuda (CUDAExecutionProvider) is not available" in p.stdout
    assert "share the 'onnxruntime' package" in p.stdout and "pip uninstall -y" in p.stdout


def test_no_onnxruntime_at_all_names_both_install_lines(hb: HandBundle, tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['onnxruntime'] = None  # as in an install without it\n"
            "from xtm.runtime import TopicModel\nfrom xtm.errors import XtmError\n"
            f"try:\n    TopicModel.load({str(hb.path)!r})\n"
            "except XtmError as e:\n    print(e)\n")
    p = run_python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    assert 'pip install "xtm[cpu]"' in p.stdout and 'pip install "xtm[gpu]"' in p.stdout


# -- segmenters as extras ---------------------------------------------------------------------------


@pytest.mark.parametrize(("module", "kind", "extra", "texts"), [
    ("janome", "janome", "ja", ["株式市場"]), ("jieba", "jieba", "zh", ["股票市场"]),
    ("kiwipiepy", "kiwi", "ko", ["주식시장"])])
def test_a_bundle_whose_segmenter_is_missing_says_which_extra_at_load(module: str, kind: str, extra: str,
                                                                      texts: list[str], hb: HandBundle,
                                                                      ja_bundle: HandBundle, ko_bundle: HandBundle,
                                                                      tmp_path: Path) -> None:
    bundle = {"ja": ja_bundle, "zh": hb, "ko": ko_bundle}[extra].path
    code = (f"import sys\nsys.modules[{module!r}] = None  # not installed\n"
            "from xtm.runtime import TopicModel\nfrom xtm.errors import XtmError\n"
            f"try:\n    TopicModel.load({str(bundle)!r})\n"
            "except XtmError as e:\n    print('load:', e)\n"
            "from xtm.corpus import TokenizerSpec\nfrom xtm.runtime.tokenize import make_tokenizer\n"
            f"try:\n    make_tokenizer(TokenizerSpec(lang={extra!r}, kind={kind!r}))({texts[0]!r})\n"
            "except XtmError as e:\n    print('first use:', e)\n")
    p = run_python(code, tmp_path)
    assert p.returncode == 0, p.stderr
    load, first = p.stdout.strip().splitlines()
    assert load.startswith("load: ") and f"this bundle reads '{extra}'" in load
    for line in (load, first):
        assert f'pip install "xtm[{extra}]"' in line and module in line and "Traceback" not in p.stderr


def test_an_english_only_bundle_needs_no_segmenter(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "en", vocabs={"en": ["market", "stock", "team", "goal"]}, num_topics=2)
    code = ("import sys\nsys.modules['janome'] = None\nsys.modules['jieba'] = None\n"
            f"from xtm.runtime import TopicModel\nm = TopicModel.load({str(b.path)!r})\n"
            "print(m.infer(['the team scored a goal'], langs='en').top_ids[0, 0] >= 0)\n")
    p = run_python(code, tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == "True", p.stderr


# -- commands of a runtime-only install -------------------------------------------------------------


def no_torch_path(tmp_path: Path) -> Path:
    """A directory whose torch.py fails to import, as in an install without torch."""
    d = tmp_path / "no_torch"
    d.mkdir(exist_ok=True)
    (d / "torch.py").write_text("raise ModuleNotFoundError(\"No module named 'torch'\", name='torch')\n")
    return d


@pytest.mark.parametrize(("module", "args"), [
    ("xtm.cli.train", ["--data", "{docs}", "--dict", "{dict}", "--model", "nmtm", "--out", "{tmp}/run"]),
    ("xtm.cli.export", ["{tmp}", "--out", "{tmp}/bundle"]),
    ("xtm.cli.contextual", ["{tmp}"]),
])
def test_training_commands_without_torch_say_the_install_line_and_exit_2(module: str, args: list[str],
                                                                        tmp_path: Path) -> None:
    from xtm.examples import write_example

    ex = write_example(tmp_path / "ex", docs_per_lang=12)
    argv = [a.format(docs=ex["docs"], dict=ex["dict"], tmp=tmp_path) for a in args]
    env = {**os.environ, "PYTHONPATH": str(no_torch_path(tmp_path)), "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr
    name = module.rsplit(".", 1)[1]
    assert p.stderr.strip().splitlines()[-1] == \
        f"error: xtm-{name} needs torch, which is not installed: {TRAIN_INSTALL}"
    assert not (tmp_path / "run").exists() and not (tmp_path / "bundle").exists()


@pytest.mark.parametrize("args", [["."], ["--theta", "theta.jsonl", "--bundle", "."]])
def test_report_without_scipy_says_the_install_line(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "theta.jsonl").write_text("", encoding="utf-8")
    code = (f"import sys\nsys.modules['scipy'] = None\nsys.argv = ['xtm-report', *{args!r}]\n"
            "from xtm.cli.report import main\nmain()\n")
    p = run_python(code, tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip() == 'error: xtm-report needs scipy, which is not installed: pip install "xtm[report]"'


def test_import_xtm_stays_torch_free_and_xtm_train_without_torch_names_the_extra(tmp_path: Path) -> None:
    code = ("import sys, xtm\nassert 'xtm.trainer' not in sys.modules and 'torch' not in sys.modules\n"
            "from xtm.errors import XtmError\n"
            "try:\n    xtm.train(['a b c'] * 4, langs='en')\n"
            "except XtmError as e:\n    print(e)\n"
            "print('torch' in sys.modules and sys.modules['torch'] is not None)\n")
    p = run_python(code, tmp_path, no_torch_path(tmp_path))
    assert p.returncode == 0, p.stderr
    msg, torch_loaded = p.stdout.strip().splitlines()
    assert TRAIN_INSTALL in msg and "pip install torch==2.13.0" in msg and torch_loaded == "False"


# -- --version everywhere ---------------------------------------------------------------------------


def test_every_command_answers_version(wheel: Path) -> None:
    import configparser
    import importlib

    with zipfile.ZipFile(wheel) as z:
        ini = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/entry_points.txt"))).decode()
    parser = configparser.ConfigParser()
    parser.read_string(ini)
    scripts = dict(parser["console_scripts"])
    assert set(scripts) == {"xtm-train", "xtm-export", "xtm-infer", "xtm-example", "xtm-report",
                            "xtm-contextual", "xtm-label"}
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        command = getattr(importlib.import_module(module), attr)
        r = CliRunner().invoke(command, ["--version"])
        assert r.exit_code == 0, (name, r.output)
        first, *rest = r.output.splitlines()
        assert first == f"{name} (xtm) {xtm.__version__}"
        assert any(line.startswith("onnxruntime ") for line in rest)

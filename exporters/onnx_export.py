"""Freeze a training run into a bundle: ONNX encoders, topic-word matrices, vocabularies, manifest.

The bundle is the only thing the runtime reads (schema in xtm.runtime.bundle):
    encoder_<lang>.onnx   bow float32 [N, V_lang] -> theta float32 [N, K] (dynamic N), one per language
    beta_<lang>.npy       topic-word weights [K, V_lang] (what top words are read from)
    vocab_<lang>.txt      line j = column j of bow
    topics.json           top words per topic in every language (topic ids shared across languages)
    manifest.json         schema version, model, languages, K, opset, tokenizers, sha256 of every file
It carries only what inference needs: NMTM's translation maps and InfoCTM's linked-word pairs
(training-only buffers) are not exported. The directory is assembled under a temporary name
and renamed into place, so a failed export never leaves a half-written bundle.
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

SCHEMA_VERSION = 1
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


def run_onnx(path: Path, bow: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["theta"], {"bow": bow})[0]


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
               opset: int = DEFAULT_OPSET, parity_docs: int = 1000, progress: bool = True) -> ExportReport:
    """Export RUN_DIR into a bundle at OUT_DIR; checks ONNX-vs-torch parity on real documents."""
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
            export_encoder(model, i, len(vocab), fp32, opset)
            # Parity: ONNX Runtime against torch on real documents of this language.
            bows, source = parity_bows(config, lang, vocab, parity_docs)
            dense = bows.toarray().astype(np.float32)
            with torch.no_grad():
                ref = model.encoder_for(i)(torch.from_numpy(dense)).numpy()
            got = run_onnx(fp32, dense)
            err = float(np.abs(got - ref).max()) if len(dense) else 0.0
            report.parity_max_abs[lang], report.parity_docs[lang], report.parity_source[lang] = err, len(dense), source
            if err > PARITY_ATOL:
                raise XtmError(f"ONNX and torch disagree for '{lang}' (max |diff| {err:.2e} > {PARITY_ATOL})")
            if quantize == "int8":
                q = tmp / f"encoder_{lang}.int8.onnx"
                quantize_int8(fp32, q)
                got_q = run_onnx(q, dense)
                quant[lang] = {"mean_l1": float(np.abs(got_q - ref).sum(1).mean()),
                               "top_topic_agreement": float((got_q.argmax(1) == ref.argmax(1)).mean()),
                               "fp32_bytes": fp32.stat().st_size, "int8_bytes": q.stat().st_size}
                fp32.unlink()
                q.rename(fp32)
            shutil.copyfile(vocab_file, tmp / f"vocab_{lang}.txt")
            np.save(tmp / f"beta_{lang}.npy", betas[i], allow_pickle=False)
            topics_words[lang] = top_words(betas[i], vocab, TOP_N)
            encoders[lang] = {"file": f"encoder_{lang}.onnx", "input": "bow", "output": "theta",
                              "vocab": f"vocab_{lang}.txt", "vocab_size": len(vocab), "beta": f"beta_{lang}.npy",
                              "tokenizer": config["tokenizers"][lang]}
        write_json(tmp / "topics.json", {
            "num_topics": model.num_topics, "top_n": TOP_N, "languages": langs,
            "topics": [{"id": k, "words": {lang: topics_words[lang][k] for lang in langs}}
                       for k in range(model.num_topics)]})
        files = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        write_json(tmp / "manifest.json", {
            "schema_version": SCHEMA_VERSION, "format": "xtm-bundle", "xtm_version": xtm.__version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "model": model.name, "num_topics": model.num_topics, "languages": langs, "opset": opset,
            "quantization": quantize, "encoders": encoders, "topics": "topics.json",
            "source_run": {"path": str(run_dir.resolve()), "train_config": config.get("train_config")},
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

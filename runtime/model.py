"""TopicModel: a loaded bundle that turns raw texts into topic distributions, with onnxruntime only.

Never imports torch (nor xtm.trainer / xtm.models_zoo, which do): the base install has no torch.
Texts are tokenized with the exact tokenizer recorded at training time (`xtm.runtime.tokenize`)
and counted over the training vocabulary; out-of-vocabulary tokens are ignored.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from typing import Any

import numpy as np

from xtm.corpus import TokenizerSpec
from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.runtime.bundle import BundleManifest, EncoderEntry, read_manifest
from xtm.runtime.langid import detect_language  # light: py3langid's model loads on first detection
from xtm.runtime.tokenize import KINDS

__all__ = ["InferenceResult", "TopicModel"]


@dataclass(frozen=True)
class InferenceResult:
    """What `TopicModel.infer` returns; row i is input document i.

    theta: float32 [n, K], each row a distribution over topics (sums to 1 up to float rounding).
    langs: the language each document was read as (given, or detected among the bundle's).
    top_topics: per document the `top_k` (topic id, weight) pairs, heaviest first.
    empty: bool [n], True where a document had no in-vocabulary token. Its theta is what the
        encoder gives for an all-zero bag of words (a fixed, document-independent prior), so it
        says nothing about the document: filter on this flag.
    """

    theta: np.ndarray
    langs: list[str]
    top_topics: list[list[tuple[int, float]]]
    empty: np.ndarray
    topic_words: list[dict[str, list[str]]]

    def __len__(self) -> int:
        return len(self.langs)

    def top_topics_with_words(self, n_words: int = 10) -> list[list[dict[str, Any]]]:
        """Per document: [{"id": k, "weight": w, "words": {lang: first n_words words}}, ...] for its top topics."""
        return [[{"id": k, "weight": w, "words": {lang: ws[:n_words] for lang, ws in self.topic_words[k].items()}}
                 for k, w in doc] for doc in self.top_topics]


@dataclass(frozen=True)
class _Encoder:
    """One language's immutable inference state: session, vocabulary and tokenizer spec."""

    entry: EncoderEntry
    session: Any  # onnxruntime.InferenceSession (run() is thread-safe)
    vocab: dict[str, int]
    spec: TokenizerSpec


def _pick_providers(requested: list[str] | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested is None:
        # GPU when this onnxruntime build has it; CPU stays in the list as the fallback.
        return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
    missing = [p for p in requested if p not in available]
    if missing:
        raise XtmError(f"execution provider(s) {', '.join(missing)} not available in this onnxruntime "
                       f"(it has {', '.join(available)})")
    return list(requested)


def _read_vocab(path: Path, expected: int) -> dict[str, int]:
    text = path.read_text(encoding="utf-8")
    words = text.split("\n")
    if words and words[-1] == "":
        words.pop()
    words = [w.rstrip("\r") for w in words]
    if len(words) != expected:
        raise XtmError(f"has {len(words)} words but the manifest says vocab_size {expected}", path=path)
    vocab: dict[str, int] = {}
    for i, w in enumerate(words):
        # setdefault: a duplicated line keeps its first column, like any lookup would expect.
        vocab.setdefault(w, i)
    return vocab


def _read_topics(path: Path, num_topics: int, languages: list[str]) -> list[dict[str, list[str]]]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise XtmError(f"invalid JSON: {e}", path=path) from e
    topics = obj.get("topics") if isinstance(obj, dict) else None
    if not isinstance(topics, list) or len(topics) != num_topics:
        raise XtmError(f"expected a 'topics' list of {num_topics} topics", path=path)
    out: list[dict[str, list[str]]] = [{} for _ in range(num_topics)]
    for pos, t in enumerate(topics):
        k = t.get("id", pos) if isinstance(t, dict) else None
        words = t.get("words") if isinstance(t, dict) else None
        if not isinstance(k, int) or not 0 <= k < num_topics or not isinstance(words, dict):
            raise XtmError(f"topic #{pos}: needs an integer 'id' in [0, {num_topics}) and a 'words' object",
                           path=path)
        out[k] = {normalize_lang(lang): [str(w) for w in ws] for lang, ws in words.items()
                  if normalize_lang(lang) in languages}
    return out


class TopicModel:
    """An exported cross-lingual topic model: `TopicModel.load(bundle_dir).infer(texts)`.

    Safe to share between threads: after loading, the only mutable state is a cache of
    tokenizers made on first use (under a lock); onnxruntime sessions' run() is thread-safe.
    """

    def __init__(self, manifest: BundleManifest, encoders: dict[str, _Encoder],
                 topics: list[dict[str, list[str]]], providers: list[str]) -> None:
        self._manifest = manifest
        self._encoders = encoders
        self._topics = topics
        self._providers = providers
        self._tokenizers: dict[str, Callable[[str], list[str]]] = {}
        self._tok_lock = threading.Lock()

    @classmethod
    def load(cls, bundle_dir: str | Path, *, threads: int | None = None, providers: list[str] | None = None,
             verify: bool = True) -> TopicModel:
        """Validate the bundle (manifest, files, checksums when `verify`) and open one session per language.

        threads: onnxruntime intra-op threads per session (default: onnxruntime's choice, all cores).
        providers: onnxruntime execution providers; default CUDA first when available, then CPU.
        """
        import onnxruntime as ort

        manifest = read_manifest(bundle_dir, verify=verify)
        chosen = _pick_providers(providers)
        opts = ort.SessionOptions()
        if threads is not None:
            if threads < 1:
                raise XtmError(f"threads must be at least 1, got {threads}")
            opts.intra_op_num_threads = int(threads)
        # onnxruntime logs provider fallbacks and graph notes as warnings; errors still raise.
        opts.log_severity_level = 3
        encoders: dict[str, _Encoder] = {}
        for lang in manifest.languages:
            e = manifest.encoders[lang]
            path = manifest.path(e.file)
            try:
                session = ort.InferenceSession(str(path), sess_options=opts, providers=chosen)
            except Exception as ex:  # onnxruntime raises its own non-public exception types
                raise XtmError(f"onnxruntime cannot load this encoder: {ex}", path=path) from ex
            _check_signature(session, e, manifest.num_topics, path)
            spec = TokenizerSpec.from_dict(e.tokenizer)
            if spec.kind not in KINDS:
                raise XtmError(f"unknown tokenizer kind {spec.kind!r} for '{lang}' (this xtm knows "
                               f"{', '.join(KINDS)}): upgrade xtm", path=manifest.path("manifest.json"))
            encoders[lang] = _Encoder(entry=e, session=session, vocab=_read_vocab(manifest.path(e.vocab), e.vocab_size),
                                      spec=spec)
        topics = _read_topics(manifest.path(manifest.topics), manifest.num_topics, manifest.languages)
        return cls(manifest, encoders, topics, chosen)

    # -- description ---------------------------------------------------------------------------

    @property
    def languages(self) -> list[str]:
        """Languages this bundle serves, in the training order."""
        return list(self._manifest.languages)

    @property
    def num_topics(self) -> int:
        return self._manifest.num_topics

    @property
    def topics(self) -> list[dict[str, list[str]]]:
        """Topic k's top words per language: topics[k]["en"] -> ["word", ...] (15 by default)."""
        return [{lang: list(ws) for lang, ws in t.items()} for t in self._topics]

    @property
    def manifest(self) -> BundleManifest:
        return self._manifest

    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions were opened with (preference order)."""
        return list(self._providers)

    def vocabulary(self, lang: str) -> list[str]:
        """The encoder's vocabulary for `lang`: word j is column j of the bag of words."""
        enc = self._encoder(lang)
        words = [""] * enc.entry.vocab_size
        for w, i in enc.vocab.items():
            words[i] = w
        return words

    def topic_word_weights(self, lang: str) -> np.ndarray:
        """beta for `lang`, float32 [K, V_lang], read from the bundle on each call (not kept in memory)."""
        enc = self._encoder(lang)
        if enc.entry.beta is None:
            raise XtmError(f"this bundle has no topic-word weights for '{lang}'")
        path = self._manifest.path(enc.entry.beta)
        try:
            beta = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise XtmError(f"not a plain .npy array: {e}", path=path) from e
        if beta.shape != (self.num_topics, enc.entry.vocab_size):
            raise XtmError(f"shape {beta.shape}, expected ({self.num_topics}, {enc.entry.vocab_size})", path=path)
        return beta.astype(np.float32, copy=False)

    def __repr__(self) -> str:
        return (f"TopicModel({str(self._manifest.directory)!r}, model={self._manifest.model!r}, "
                f"topics={self.num_topics}, languages={self.languages})")

    # -- inference -----------------------------------------------------------------------------

    def _encoder(self, lang: str) -> _Encoder:
        code = normalize_lang(lang)
        enc = self._encoders.get(code)
        if enc is None:
            raise XtmError(f"language '{lang}' is not served by this bundle (it serves {', '.join(self.languages)})")
        return enc

    def _tokenizer(self, lang: str) -> Callable[[str], list[str]]:
        tok = self._tokenizers.get(lang)
        if tok is None:
            # Made on first use: jieba's dictionary costs about a second, paid only if Chinese appears.
            from xtm.runtime.tokenize import make_tokenizer

            with self._tok_lock:
                tok = self._tokenizers.get(lang)
                if tok is None:
                    tok = make_tokenizer(self._encoders[lang].spec)
                    self._tokenizers[lang] = tok
        return tok

    def resolve_languages(self, texts: Sequence[str], langs: Sequence[str | None] | str | None = None) -> list[str]:
        """The language of each text: given ones normalised and checked, missing ones detected.

        Detection is restricted to the bundle's languages. A blank text with no given language
        cannot be detected; it is read as the bundle's first language (its bag is empty anyway).
        """
        n = len(texts)
        if langs is None or isinstance(langs, str):
            given: Sequence[str | None] = [langs] * n
        else:
            given = langs
            if len(given) != n:
                raise XtmError(f"langs has {len(given)} entries for {n} texts")
        out: list[str] = []
        served = self._encoders
        known: dict[str, str] = {}  # given code -> normalised: one check per distinct code, not per text
        for i, (text, lang) in enumerate(zip(texts, given, strict=True)):
            if lang is None:
                if not text.strip():
                    out.append(self._manifest.languages[0])
                    continue
                out.append(detect_language(text, self._manifest.languages))
                continue
            code = known.get(lang) if isinstance(lang, str) else None
            if code is None:
                if not isinstance(lang, str):
                    raise XtmError(f"langs[{i}] must be a language code or None, got {type(lang).__name__}")
                code = normalize_lang(lang)
                if code not in served:
                    raise XtmError(f"language '{lang}' is not served by this bundle (it serves "
                                   f"{', '.join(self.languages)})")
                known[lang] = code
            out.append(code)
        return out

    def bag_of_words(self, texts: Sequence[str], lang: str) -> np.ndarray:
        """Dense float32 [len(texts), V_lang] counts of in-vocabulary tokens (what the encoder reads)."""
        enc = self._encoder(lang)
        return _bow(texts, self._tokenizer(enc.entry.lang), enc.vocab, enc.entry.vocab_size)[0]

    def infer(self, texts: Sequence[str], langs: Sequence[str | None] | str | None = None,
              batch_size: int = 256, top_k: int = 3) -> InferenceResult:
        """Topic distributions of `texts`, in input order.

        langs: one code for all texts, one per text (None entries are detected), or None to detect
        all; detection only chooses among the bundle's languages. A language the bundle does not
        serve raises XtmError. Documents are grouped by language and run in batches of `batch_size`.
        """
        if isinstance(texts, str):
            raise TypeError("texts must be a sequence of strings, not one string")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise XtmError(f"texts[{i}] must be a string, got {type(t).__name__}")
        if batch_size < 1:
            raise XtmError(f"batch_size must be at least 1, got {batch_size}")
        n, K = len(texts), self.num_topics
        doc_langs = self.resolve_languages(texts, langs)
        theta = np.empty((n, K), dtype=np.float32)
        empty = np.zeros(n, dtype=bool)
        groups: dict[str, list[int]] = {}
        for i, lang in enumerate(doc_langs):
            groups.setdefault(lang, []).append(i)
        for lang, idx in groups.items():
            enc = self._encoder(lang)
            tok = self._tokenizer(lang)
            V = enc.entry.vocab_size
            # One zeroed buffer per call and language, never shared: concurrent calls stay independent.
            buf = np.zeros((min(batch_size, len(idx)), V), dtype=np.float32)
            for start in range(0, len(idx), batch_size):
                rows = idx[start:start + batch_size]
                bow, cells, nonempty = _bow([texts[i] for i in rows], tok, enc.vocab, V, out=buf)
                theta[rows] = enc.session.run([enc.entry.output], {enc.entry.input: bow})[0]
                empty[rows] = ~nonempty
                buf.reshape(-1)[cells] = 0.0
        return InferenceResult(theta=theta, langs=doc_langs, top_topics=_top_topics(theta, top_k), empty=empty,
                               topic_words=self._topics)


def _bow(texts: Sequence[str], tok: Callable[[str], list[str]], vocab: dict[str, int], V: int,
         out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense counts for one batch: (bow [len(texts), V] float32, flat indices set, non-empty mask).

    Token -> column lookups run in C (map over dict.get) and the counts are scattered with one
    np.unique: no per-token Python bytecode beyond the tokenizer. `out`, when given, must be all
    zeros and at least len(texts) rows; the caller re-zeroes only the returned cells afterwards,
    which is far cheaper than a fresh 5 MB np.zeros (page faults) per batch.
    """
    n = len(texts)
    flat: list[str] = []
    lens = np.empty(n, dtype=np.int64)
    for j, text in enumerate(texts):
        toks = tok(text)
        flat += toks
        lens[j] = len(toks)
    ids = np.fromiter(map(vocab.get, flat, repeat(-1)), dtype=np.int64, count=len(flat))
    rows = np.repeat(np.arange(n, dtype=np.int64), lens)
    keep = ids >= 0
    rows = rows[keep]
    cells, counts = np.unique(rows * V + ids[keep], return_counts=True)
    bow = np.zeros((n, V), dtype=np.float32) if out is None else out[:n]
    bow.reshape(-1)[cells] = counts
    return bow, cells, np.bincount(rows, minlength=n) > 0


def _top_topics(theta: np.ndarray, top_k: int) -> list[list[tuple[int, float]]]:
    k = max(0, min(int(top_k), theta.shape[1]))
    if k == 0 or theta.shape[0] == 0:
        return [[] for _ in range(theta.shape[0])]
    # Stable sort of -theta: equal weights keep the lower topic id first, so output is deterministic.
    order = np.argsort(-theta, axis=1, kind="stable")[:, :k]
    weights = np.take_along_axis(theta, order, axis=1).astype(np.float64)
    return [list(zip(o, w, strict=True)) for o, w in zip(order.tolist(), weights.tolist(), strict=True)]


def _check_signature(session: Any, e: EncoderEntry, num_topics: int, path: Path) -> None:
    """The ONNX graph must take the manifest's input [N, V] and give its output [N, K]."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if e.input not in inputs:
        raise XtmError(f"no input named '{e.input}' (the graph has {', '.join(inputs)})", path=path)
    if e.output not in outputs:
        raise XtmError(f"no output named '{e.output}' (the graph has {', '.join(outputs)})", path=path)
    in_shape, out_shape = inputs[e.input].shape, outputs[e.output].shape
    # Dimensions may be symbolic (str) or unknown (None); only fixed integers can be checked.
    if len(in_shape) != 2 or (isinstance(in_shape[1], int) and in_shape[1] != e.vocab_size):
        raise XtmError(f"input '{e.input}' has shape {in_shape}, expected [N, {e.vocab_size}]", path=path)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != num_topics):
        raise XtmError(f"output '{e.output}' has shape {out_shape}, expected [N, {num_topics}]", path=path)

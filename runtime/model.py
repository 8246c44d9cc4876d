"""TopicModel: a loaded bundle that turns raw texts into topic distributions, with onnxruntime only.

Never imports torch (nor xtm.trainer / xtm.models_zoo, which do): the base install has no torch.
Texts are tokenized with the exact tokenizer recorded at training time (`xtm.runtime.tokenize`)
and counted over the training vocabulary; out-of-vocabulary tokens are ignored.

Sparse encoders (bundle schema 2) read each document as its word ids and counts
(`xtm.runtime.bow`), padded to the longest document of the batch. Documents are therefore batched
by length: within a window of _SORT_WINDOW batches, they are sorted by their number of distinct
words before being cut into batches, so padding stays small. Each row's result does not depend on
its batch beyond float32 rounding (a few 1e-7: onnxruntime's kernels sum in another order for another
batch shape; the top topics are the same). Batch runs over records and files (ids, output lines,
bad records) are the engine's (`xtm.runtime.engine`); `TopicModel.infer_records` is its shortcut.
"""

from __future__ import annotations

import io
import logging
import os
import threading
import time
import unicodedata
from collections.abc import Callable, ItemsView, Iterable, Iterator, KeysView, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from xtm.corpus import TokenizerSpec
from xtm.cpu import MAX_THREADS
from xtm.errors import BundleChangedError, TransientError, XtmError, os_error
from xtm.json_files import is_missing, parse_json_bytes
from xtm.languages import normalize_lang
from xtm.npy_header import read_npy_header
from xtm.runtime.bow import concat, count_words
from xtm.runtime.bundle import (
    BundleManifest,
    ContextualEntry,
    EncoderEntry,
    check_theta,
    current_manifest,
    manifest_digest,
    read_listed,
    read_manifest,
    read_topic_labels,
    read_topics,
    read_verified,
)
from xtm.runtime.contextual import ContextualEncoder
from xtm.runtime.engine import (
    InferenceOptions,
    check_min_lang_conf,
    check_route,
    infer_records,
    no_contextual_route,
    whole_number,
)
from xtm.runtime.langid import identify  # light: py3langid's model loads on first detection
from xtm.runtime.providers import (
    check_used,
    import_onnxruntime,
    onnxruntime_error,
    parse_providers,
    resolve_providers,
    run_session,
)
from xtm.runtime.tokenize import TEXT_NORMALIZATION, missing_tokenizer
from xtm.topic_words import top_word_ids
from xtm.vocabulary import parse_vocabulary

__all__ = ["InferenceResult", "TopicModel"]

logger = logging.getLogger(__name__)

# Batches whose documents are sorted by length together (sparse encoders): memory for one window
# is its documents' word ids, a few bytes per token.
_SORT_WINDOW = 8


@dataclass(frozen=True, eq=False)  # (numpy fields: a generated == raised "truth value of an array is ambiguous")
class InferenceResult:
    """What `TopicModel.infer` returns; row i is input document i.

    theta: float32 [n, K], each row a distribution over topics (sums to 1 up to float rounding);
        NaN for an unsupported row.
    langs: the language each document was read as: given, or detected (`xtm.runtime.langid.identify`,
        among every language the detector knows). None where no language applies: a blank text
        without a given language, or an unsupported row without a detected language.
    top_ids, top_weights: int64 / float32 [n, min(top_k, K)], each document's heaviest topics, heaviest
        first (equal weights: lower id first), and their weights; -1 / NaN for an unsupported row.
    top_topics: the same as per-document lists of (topic id, weight) pairs, built on first access
        (a Python object per pair costs more than the whole encoder for short documents).
    empty: bool [n], True where a document had no in-vocabulary token. Its theta is what the
        encoder gives for an all-zero bag of words (a fixed, document-independent prior), so it
        says nothing about the document: filter on this flag. On the contextual route: a blank
        text. Also True for unsupported rows (nothing was read).
    routes: "bow" or "contextual" per document: which encoder gave its theta; None if unsupported.
    lang_conf: float32 [n], the detector's probability of langs[i]; NaN where the language was
        given by the caller (or the text is blank).
    oov_ratio: float32 [n], share of the document's tokens that are not in its language's
        vocabulary (bag-of-words route); NaN on the contextual route, for unsupported rows and for
        documents without any token.
    unsupported: bool [n], True where nothing could read the document: no language could be
        detected (no letters, too uncertain), or the detected language is one neither the
        bag-of-words encoders nor the contextual route serve. Such a row is never read as another
        language: its theta is NaN and notes[i] says why. infer() does not raise for them, so one
        such text never costs the rest of a batch.
    notes: per document, why it is unsupported; for a served row, None, or that its text was cut to its
        first 100,000 characters (`xtm.runtime.records.MAX_CHARS`, as xtm-infer reads a record).
    """

    theta: np.ndarray
    langs: list[str | None]
    top_ids: np.ndarray
    top_weights: np.ndarray
    empty: np.ndarray
    topic_words: list[dict[str, list[str]]]
    routes: list[str | None] = field(default_factory=list)
    lang_conf: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    oov_ratio: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    unsupported: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    notes: list[str | None] = field(default_factory=list)

    def __repr__(self) -> str:
        """A summary, not the arrays: the generated repr printed every list in full (193 KB for 10,000 documents in
        a notebook cell)."""
        from collections import Counter

        routes = dict(Counter(r for r in self.routes if r is not None))
        topics = self.theta.shape[1] if self.theta.ndim == 2 else 0
        return (f"InferenceResult(documents={len(self.langs)}, topics={topics}, routes={routes}, "
                f"empty={int(self.empty.sum())}, unsupported={int(self.unsupported.sum())})")

    def __len__(self) -> int:
        return len(self.langs)

    @cached_property
    def top_topics(self) -> list[list[tuple[int, float]]]:
        return list(map(list, map(zip, self.top_ids.tolist(), self.top_weights.astype(np.float64).tolist())))

    def top_topics_with_words(self, n_words: int = 10) -> list[list[dict[str, Any]]]:
        """Per document: [{"id": k, "weight": w, "words": {lang: first n_words words}}, ...] for its top topics;
        [] for an unsupported document (it has no topics). The words are the bundle's (TopicModel.topics: 15 a
        topic and language by default), so n_words past those gives those; TopicModel.get_topic(k, lang, n) gives
        any number."""
        return [[{"id": k, "weight": w, "words": {lang: ws[:n_words] for lang, ws in self.topic_words[k].items()}}
                 for k, w in doc if k >= 0] for doc in self.top_topics]


@dataclass(frozen=True)
class _Encoder:
    """One language's immutable inference state: session, vocabulary and tokenizer spec."""

    entry: EncoderEntry
    session: Any  # onnxruntime.InferenceSession (run() is thread-safe)
    vocab: dict[str, int]  # lookup: the NFC form of each word -> its column
    words: list[str]       # the file's words as written: word j is column j
    spec: TokenizerSpec


def _read_vocab(data: bytes, path: Path, expected: int) -> tuple[list[str], dict[str, int]]:
    """(the words as written, NFC word -> column), from the vocabulary file's bytes (`path` names it), by the one
    vocabulary rule (`xtm.vocabulary`)."""
    words = parse_vocabulary(data, path, expected)
    vocab: dict[str, int] = {}
    for i, w in enumerate(words):
        # NFC, as the tokenizer puts text (xtm.runtime.tokenize.make_tokenizer); setdefault: two spellings of one
        # word (written apart by an older xtm or by hand) keep the first column, like any lookup would expect.
        key = unicodedata.normalize(TEXT_NORMALIZATION, w)
        if vocab.setdefault(key, i) != i:
            logger.warning("%s: line %d (%r) is the same word as line %d in Unicode NFC; documents count it "
                           "in column %d", path, i + 1, w, vocab[key] + 1, vocab[key])
    return words, vocab


class TopicWordList(list):
    """get_topic's [(word, probability), ...], a plain list, with the topic's label as `.label`."""

    def __init__(self, items: Iterable[tuple[str, float]] = (), label: str | None = None) -> None:
        super().__init__(items)
        self.label = label


class TopicModel:
    """An exported cross-lingual topic model: `TopicModel.load(bundle_dir).infer(texts)`.

    Safe to share between threads: after loading, the only mutable state is a cache of
    tokenizers made on first use and the contextual session, opened on first use (both under a
    lock); onnxruntime sessions' run() is thread-safe.

    Between processes: it pickles as its bundle's path (multiprocessing, joblib, Ray load the bundle
    again on the other side, and refuse one that changed since). A fork while other threads of this
    process run inference can leave the child's onnxruntime waiting for ever (its thread pools are not
    fork-safe): fork before the threads start, or use the "spawn" start method.
    """

    def __init__(self, manifest: BundleManifest, encoders: dict[str, _Encoder],
                 topics: list[dict[str, list[str]]], providers: list[str], session_options: Any = None,
                 labels: list[dict[str, str]] | None = None, *, verify: bool = True,
                 reload: tuple[str, dict[str, Any], str] | None = None,
                 unsegmented: dict[str, XtmError] | None = None) -> None:
        self._manifest = manifest
        self._encoders = encoders
        self._topics = topics
        self._labels = labels if labels is not None else [{} for _ in topics]
        # Files read after loading (the contextual graph, beta) are checked against the manifest read at load
        # when `verify`: a bundle replaced in place (a redeploy) cannot give this object another model's parts.
        self._verify = verify
        # (the bundle's absolute path, load's keyword arguments, the manifest's sha256): how a pickled copy reloads,
        # in a process that may have another working directory (a Ray actor, a spawned worker)
        self._reload = reload
        self._providers = providers
        self._tokenizers: dict[str, Callable[[str], list[str]]] = {}
        # Languages whose segmenter is not installed, served on the contextual route only (load).
        self._unsegmented: dict[str, XtmError] = dict(unsegmented or {})
        self._tok_lock = threading.Lock()
        # The contextual graph (~80 MB, ~300 MB resident) is opened when first needed: a caller that
        # only serves the training languages never pays for it. Its manifest entry was checked with
        # the manifest (xtm.runtime.bundle).
        self._contextual_entry: ContextualEntry | None = manifest.contextual
        self._contextual: ContextualEncoder | None = None
        # Why the graph could not open, and until when it is said again without trying: a failing batch retried
        # document by document must not read and hash 80 MB per document; tried again after that (the cause may
        # pass: file descriptors, GPU memory, a file missing for a moment during a redeploy), after a second for
        # a TransientError (a shortage that passes).
        self._contextual_failure: tuple[XtmError, float] | None = None
        self._session_options = session_options
        # Made on first use (get_topic, topic_word_distribution): per language, read-only.
        self._distributions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._vocab_lists: dict[str, list[str]] = {}

    @classmethod
    def load(cls, bundle_dir: str | Path, *, threads: int | None = None,
             providers: str | Sequence[str] | None = None, verify: bool = True) -> TopicModel:
        """Validate the bundle (manifest, files, checksums when `verify`) and open one session per language.

        threads: onnxruntime intra-op threads per session (default: onnxruntime's choice, all cores).
        providers: onnxruntime execution providers in preference order, by name or short name
            ("cuda,cpu", ["cuda", "cpu"], ["CPUExecutionProvider"]); checked against the installed
            build (`xtm.runtime.providers`). Default: CUDA when this build has it, then the CPU.
            `TopicModel.providers` says what the sessions actually run on: a requested provider
            that cannot start (no GPU, CUDA libraries missing) is an XtmError unless the request
            lists the CPU after it (then a warning).
        A tokenizer the bundle needs that is not installed (janome for Japanese, jieba for Chinese)
        is an XtmError naming the install line (`pip install "xtm[ja]"`), unless the bundle reads that
        language on the contextual route by default (`auto_route` "contextual", new runs): then only
        `route="bow"` for it raises that error.
        """
        if threads is not None and whole_number("threads", threads) > MAX_THREADS:
            raise XtmError(f"threads must be at most {MAX_THREADS}, got {threads}")
        if not isinstance(bundle_dir, (str, os.PathLike)):
            raise XtmError(f"bundle_dir must be a path (a str or pathlib.Path), got {type(bundle_dir).__name__}")
        ort = import_onnxruntime()
        manifest = read_manifest(bundle_dir, verify=verify, verified_on_read=True)
        # A segmenter that is not installed is an error now, unless its language is read on the contextual route by
        # default (new runs): then only route="bow" for that language needs it, and says so when asked.
        unsegmented: dict[str, XtmError] = {}
        for lang in manifest.languages:
            spec = TokenizerSpec.from_dict(manifest.encoders[lang].tokenizer)
            missing = missing_tokenizer(spec.kind)
            if missing is not None:
                if not _contextual_by_default(manifest, lang):
                    raise XtmError(f"this bundle reads '{lang}': {missing}", path=manifest.directory)
                unsegmented[lang] = missing
        requested = parse_providers(providers)
        chosen = resolve_providers(requested, ort.get_available_providers(), ort.get_all_providers())
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
        # onnxruntime logs provider fallbacks and graph notes as warnings; errors still raise.
        # (A fallback is then reported by check_used, from what the session says it runs on.)
        opts.log_severity_level = 3
        # An encoder call takes about a millisecond and tokenizing the next batch several: idle
        # onnxruntime workers spinning in between took a core from the tokenizer (and from
        # anything else on the machine). Without spinning, 2 threads on a busy 2-core machine
        # ran infer() at 55k docs/s instead of 27k, the same as 1 thread.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        encoders: dict[str, _Encoder] = {}
        used: list[str] = []
        # Every file is read once and built from the bytes checked against this manifest (read_listed): a bundle
        # re-exported while it loads is a checksum error, never the other bundle's vocabulary or topics mixed in.
        for lang in manifest.languages:
            e = manifest.encoders[lang]
            path = manifest.path(e.file)
            graph = read_listed(manifest, e.file, verify=verify)
            try:
                session = ort.InferenceSession(graph, sess_options=opts, providers=chosen)
            except Exception as ex:  # onnxruntime raises its own non-public exception types
                raise onnxruntime_error(ex, "onnxruntime cannot load this encoder", path) from ex
            if not used:
                used = list(session.get_providers())
                check_used(requested, chosen, used, str(path))
            _check_signature(session, e, manifest.num_topics, path)
            _probe(session, e, manifest.num_topics, path)
            spec = TokenizerSpec.from_dict(e.tokenizer)  # its fields were checked by read_manifest
            words, lookup = _read_vocab(read_listed(manifest, e.vocab, verify=verify), manifest.path(e.vocab),
                                        e.vocab_size)
            encoders[lang] = _Encoder(entry=e, session=session, vocab=lookup, words=words, spec=spec)
        topics_json = parse_json_bytes(read_listed(manifest, manifest.topics, verify=verify),
                                       manifest.path(manifest.topics))
        topics, labels = read_topics(manifest, topics_json), read_topic_labels(manifest, topics_json)
        # The contextual graph opens later with the providers the encoders got (no second fallback).
        logger.debug("loaded %s: %s, %d topics, languages %s; onnxruntime %s on %s", manifest.directory,
                     manifest.model, manifest.num_topics, ", ".join(manifest.languages), ort.__version__,
                     ", ".join(used))
        reload = (str(manifest.directory.resolve()), {"threads": threads, "providers": providers, "verify": verify},
                  manifest.content_sha256)
        for lang, missing in unsegmented.items():
            logger.info(f"{manifest.directory}: '{lang}' is read on the contextual route; its bag-of-words route "
                        f"(route='bow') needs a segmenter: {missing}")
        return cls(manifest, encoders, topics, used or chosen, session_options=opts, labels=labels, verify=verify,
                   reload=reload, unsegmented=unsegmented)

    @classmethod
    def load_unchanged(cls, bundle_dir: str | Path, manifest_sha256: str | None, *, since: str, advice: str,
                       **options: Any) -> TopicModel:
        """`load`, refusing a bundle whose manifest is no longer the one an earlier load saw (`manifest_sha256`;
        None: a model not loaded from disk, nothing to compare): a bundle re-exported in place `since` then (a
        pickled copy, a worker process of xtm-infer)."""
        model = cls.load(bundle_dir, **options)
        if manifest_sha256 is not None and model.manifest_sha256 != manifest_sha256:
            raise XtmError(f"the bundle changed since {since} (its manifest differs): {advice}", path=bundle_dir)
        return model

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (multiprocessing, joblib, Ray) as its bundle's path: the copy loads the bundle again where it
        is unpickled, with the same settings, and refuses a bundle that changed since (its manifest's sha256)."""
        if self._reload is None:
            raise XtmError("this TopicModel was not made by TopicModel.load: it cannot be pickled")
        return (_reload, self._reload)

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
    def manifest_sha256(self) -> str | None:
        """SHA-256 of the manifest this model was loaded from (`BundleManifest.content_sha256`: it lists every file's
        checksum, so it names the bundle's content): another process loading "the same" bundle compares it. None
        when not loaded from disk."""
        return self._reload[2] if self._reload is not None else None

    def bundle_changed(self) -> bool:
        """Whether the bundle directory now holds another bundle than the one this model loaded (its manifest
        differs, or is gone): a redeploy in place. Such a model keeps serving what it holds in memory, but files
        it reads later (the contextual graph on first use, beta) are refused: load it again. A readiness check
        can ask this. False for a model not loaded from disk."""
        if self._reload is None:
            return False
        try:
            # The directory as given, as every later read goes: a link swapped to another version (an atomic
            # redeploy, `current -> v2`) is a change, though the directory it resolved to at load is not.
            raw = current_manifest(self._manifest.directory)
        except TransientError:
            return False  # unknown for now: not a reason to reload
        return raw is None or manifest_digest(raw) != self._reload[2]

    def _read_after_load(self, read: Callable[[], Any]) -> Any:
        """read(), a read of bundle files after load: its failure is a BundleChangedError when the bundle on disk
        is no longer the one loaded (the failure's own words, "checksum mismatch ... re-export", would send the
        caller to fix a bundle that is fine)."""
        try:
            return read()
        except TransientError:
            raise
        except XtmError as e:
            if self.bundle_changed():
                raise BundleChangedError(f"the bundle was replaced since this model loaded it: load it again "
                                         f"({e})", path=self._manifest.directory) from e
            raise

    @property
    def has_contextual(self) -> bool:
        """Whether the bundle has a contextual route (documents in any language its encoder knows)."""
        return self._contextual_entry is not None

    @property
    def contextual_languages(self) -> list[str]:
        """Languages the contextual route's sentence encoder was trained on ([] without one, or unknown)."""
        return list(self._contextual_entry.languages) if self._contextual_entry else []

    def contextual_encoder(self) -> ContextualEncoder:
        """The contextual route, opened on first use; XtmError when the bundle has none."""
        if self._contextual_entry is None:
            raise no_contextual_route(None, self.languages)
        if self._contextual is None:
            with self._tok_lock:
                failed = self._contextual_failure
                if failed is not None and time.monotonic() < failed[1]:
                    raise type(failed[0])(failed[0].reason, path=failed[0].path) from failed[0]
                if self._contextual is None:
                    import onnxruntime as ort

                    opts = self._session_options or ort.SessionOptions()
                    try:
                        self._contextual = self._read_after_load(lambda: ContextualEncoder.load(
                            self._manifest, opts, self._providers, verify=self._verify))
                    except XtmError as e:
                        wait = _RETRY_TRANSIENT_AFTER_S if isinstance(e, TransientError) else _RETRY_OPEN_AFTER_S
                        self._contextual_failure = (e, time.monotonic() + wait)
                        raise
        assert self._contextual is not None
        return self._contextual

    def warm_up(self) -> TopicModel:
        """Open now what the first request would open (the contextual graph and its checksum, each training
        language's tokenizer and its dictionary, the language detector) and run one document through each route,
        so a service's first request costs what the others do (about 1 s before, 1 ms after, on a CPU). Returns
        the model:
        `model = TopicModel.load(path).warm_up()`."""
        identify("warm up")  # the language detector's model (0.4 s), read by the first text without a language
        for lang in self.languages:
            if lang not in self._unsegmented:  # (read on the contextual route only: load said why)
                # "-" and "%": the blocks jieba cuts itself when rjieba does the others (its dictionary, 0.3-0.7 s)
                self.infer(["warm-up 1.5%"], langs=lang, route="bow")
        if self.has_contextual:
            self.embed(["warm up"])  # (the sentence encoder itself: no language to choose)
        return self

    @property
    def providers(self) -> list[str]:
        """Execution providers the sessions run on, as onnxruntime reports them (preference order):
        ["CUDAExecutionProvider", "CPUExecutionProvider"] on a GPU, ["CPUExecutionProvider"] otherwise."""
        return list(self._providers)

    def vocabulary(self, lang: str) -> list[str]:
        """The encoder's vocabulary for `lang`: word j is column j of the bag of words."""
        return list(self._encoder(lang).words)

    def encoder_session(self, lang: str) -> Any:
        """The onnxruntime session of `lang`'s bag-of-words encoder, for callers that feed it
        directly (benchmarks, parity checks): inputs `manifest.encoders[lang].inputs`, built with
        `xtm.runtime.bow` (BagsOfWords.padded for sparse encoders, .dense otherwise)."""
        return self._encoder(lang).session

    def topic_word_weights(self, lang: str) -> np.ndarray:
        """beta for `lang`, float32 [K, V_lang], read from the bundle on each call (not kept in memory)."""
        enc = self._encoder(lang)  # (the caller's mistakes first: never taken for a redeploy)
        if enc.entry.beta is None:
            raise XtmError(f"this bundle has no topic-word weights for '{lang}'")
        return self._read_after_load(lambda: self._read_beta(enc))

    def _read_beta(self, enc: _Encoder) -> np.ndarray:
        assert enc.entry.beta is not None
        path = self._manifest.path(enc.entry.beta)
        want = (self.num_topics, enc.entry.vocab_size)
        try:
            with open(path, "rb") as f:
                # The header first: its shape and type are checked before anything is allocated (a
                # header may claim terabytes); then exactly that many values, or the file is short.
                shape, fortran, dtype = read_npy_header(f)
                floats = shape == want and dtype.kind == "f" and not dtype.hasobject
                start, nbytes = f.tell(), want[0] * want[1] * dtype.itemsize
            # Then header and values again from one read, checked against the manifest read at load: a bundle
            # re-exported in place since (a redeploy) is refused, not mixed into this model.
            expected = self._manifest.files[enc.entry.beta] if self._verify else None
            raw = read_verified(path, start + nbytes, expected) if floats else b""
        except XtmError:  # (a ValueError: its own message, a checksum's included)
            raise
        except OSError as e:
            raise os_error(f"cannot read: {e.strerror or type(e).__name__}", e, path=path) from e
        except (ValueError, EOFError) as e:
            raise XtmError(f"not a plain .npy array: {e}", path=path) from e
        if floats and read_npy_header(io.BytesIO(raw))[:3] != (shape, fortran, dtype):
            raise XtmError("changed while it was read (its header differs between two reads)", path=path)
        beta = np.frombuffer(raw, dtype=dtype, offset=start, count=(len(raw) - start) // dtype.itemsize) \
            if floats and len(raw) >= start else None
        if floats and beta is None:
            raise XtmError(f"holds 0 values, its header says {want}", path=path)
        if beta is None:
            raise XtmError(f"{dtype} {shape}, expected floats {want}", path=path)
        if beta.size != want[0] * want[1]:
            raise XtmError(f"holds {beta.size} values, its header says {want}", path=path)
        beta = beta.reshape(want, order="F" if fortran else "C").astype(np.float32)
        if not np.isfinite(beta).all():
            raise XtmError("holds NaN or infinite weights", path=path)
        return beta

    def topic_word_distribution(self, lang: str) -> np.ndarray:
        """softmax(beta) per topic for `lang`, float32 [K, V_lang], each row summing to 1: the ranking the
        report and the top words use. Flat, and not word frequencies: the decoder batch-normalises theta @ beta
        per word (centred and divided by its standard deviation over the batch, which depends on the
        documents, not on the topic) before its softmax, so beta's scale per word is not the model's; that
        step is left out, as in the reference models' topic-word matrices. Computed once per language and
        kept (K x V floats)."""
        return self._topic_words(lang)[0]

    def _topic_words(self, lang: str) -> tuple[np.ndarray, np.ndarray]:
        """(topic_word_distribution, each topic's words best first): computed once per language and kept. The
        order is beta's, as the bundle's topics.json and the run's topics files rank (xtm.topic_words): the
        float32 softmax can make two near-equal weights equal and order them by column instead."""
        code = self._encoder(lang).entry.lang
        kept = self._distributions.get(code)
        if kept is None:
            beta = self.topic_word_weights(code)
            order = top_word_ids(beta, beta.shape[1])
            wide = beta.astype(np.float64)
            z = np.exp(wide - wide.max(axis=1, keepdims=True))
            dist = (z / z.sum(axis=1, keepdims=True)).astype(np.float32)
            dist.setflags(write=False)
            order.setflags(write=False)
            with self._tok_lock:
                kept = self._distributions.setdefault(code, (dist, order))
        return kept

    def get_topic(self, topic: int, lang: str, n: int = 10) -> TopicWordList:
        """Topic `topic`'s n top words in `lang` with their weights, heaviest first: [("market", 0.0048), ...]
        (rows of `topic_word_distribution`, flat: see there), in beta's order, as `topics` lists them (equal
        weights: vocabulary order). The list's `.label` is the topic's label in `lang` (None when the bundle has
        none)."""
        k = self._topic_id(topic)
        n = whole_number("n", n)
        dist, order = self._topic_words(lang)
        row, top = dist[k], order[k][:n]
        vocab = self._words(lang)
        return TopicWordList([(vocab[j], float(row[j])) for j in top.tolist()],
                             label=self.topic_label(k, self._encoder(lang).entry.lang))

    @property
    def labels(self) -> list[dict[str, str]]:
        """Topic k's label per language: labels[k]["en"] -> "stock market" (xtm-label, exported from the
        run's labels.json); [{}, ...] for a bundle without labels."""
        return [dict(row) for row in self._labels]

    @property
    def has_labels(self) -> bool:
        return any(self._labels)

    def topic_label(self, topic: int, lang: str | None = None) -> str | None:
        """Topic `topic`'s label in `lang` (a training language; else, or when it has none there, in
        the first training language that has one); None when the bundle has no labels."""
        row = self._labels[self._topic_id(topic)]
        code = normalize_lang(lang) if lang is not None else None
        if code is not None and code in row:
            return row[code]
        return next((row[x] for x in self.languages if x in row), None)

    def topic_info(self, texts: Sequence[str] | None = None, langs: Sequence[str | None] | str | None = None, *,
                   n_words: int = 10, **infer_kwargs: Any) -> list[dict[str, Any]]:
        """One flat row per topic (`pandas.DataFrame(model.topic_info(docs))` is a table):
        {"id": k, "label": its label (first language), "label_<lang>": its label in each language (both
        only when the bundle has labels), "words_<lang>": its n_words top words in each language, ...}; with `texts`
        (inferred with `infer(texts, langs, **infer_kwargs)`), also "count_<lang>", the number of
        that language's documents whose top topic is k, and "size_<lang>", their share of the
        language's documents (the report's topic size). Unsupported and empty documents count nowhere."""
        n_words = whole_number("n_words", n_words)
        if "top_k" in infer_kwargs:  # each document counts under its top topic: there is nothing to choose
            raise XtmError("topic_info counts each document under its top topic: top_k is not one of its options")
        rows: list[dict[str, Any]] = [{"id": k} for k in range(self.num_topics)]
        for k, t in enumerate(self._topics):
            if self.has_labels:
                rows[k]["label"] = self.topic_label(k)
                for lang in self.languages:
                    rows[k][f"label_{lang}"] = self._labels[k].get(lang)
            for lang in self.languages:
                words = list(t.get(lang, []))
                # (past the bundle's 15 words, from the topic-word matrix: n_words=50 gave 15)
                rows[k][f"words_{lang}"] = words[:n_words] if n_words <= len(words) else \
                    [w for w, _ in self.get_topic(k, lang, n_words)]
        if texts is None:
            return rows
        res = self.infer(texts, langs, top_k=1, **infer_kwargs)
        counted = ~(res.unsupported | res.empty)
        doc_langs = np.array([lang or "" for lang in res.langs], dtype=object)
        present = sorted({lang for lang, ok in zip(res.langs, counted.tolist(), strict=True) if ok and lang})
        for lang in sorted(set(self.languages) | set(present), key=lambda c: (c not in self.languages, c)):
            mine = counted & (doc_langs == lang)
            counts = np.bincount(res.top_ids[mine, 0], minlength=self.num_topics) if mine.any() else \
                np.zeros(self.num_topics, dtype=np.int64)
            total = int(mine.sum())
            for k in range(self.num_topics):
                rows[k][f"count_{lang}"] = int(counts[k])
                rows[k][f"size_{lang}"] = float(counts[k] / total) if total else 0.0
        return rows

    def _topic_id(self, topic: Any) -> int:
        if isinstance(topic, bool) or not isinstance(topic, (int, np.integer)) or not 0 <= topic < self.num_topics:
            raise XtmError(f"topic must be an integer in 0..{self.num_topics - 1}, got {topic!r}")
        return int(topic)

    def _words(self, lang: str) -> list[str]:
        code = self._encoder(lang).entry.lang
        words = self._vocab_lists.get(code)
        if words is None:
            words = self._vocab_lists.setdefault(code, self.vocabulary(code))
        return words

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
            if lang in self._unsegmented:
                raise XtmError(f"'{lang}' on the bag-of-words route: {self._unsegmented[lang]}",
                               path=self._manifest.directory)
            # Made on first use: jieba's dictionary costs about a second, paid only if Chinese appears.
            from xtm.runtime.tokenize import make_tokenizer, segmenter_drift

            with self._tok_lock:
                tok = self._tokenizers.get(lang)
                if tok is None:
                    tok = make_tokenizer(self._encoders[lang].spec)
                    if (drift := segmenter_drift(self._encoders[lang].entry.tokenizer)) is not None:
                        logger.warning(f"{self._manifest.directory}: {drift}")
                    self._tokenizers[lang] = tok
        return tok

    def resolve_languages(self, texts: Sequence[str],
                          langs: Sequence[str | None] | str | None = None) -> list[str | None]:
        """The language each text is read as by the bag-of-words encoders (`route="bow"`).

        Given languages are normalised and must be served (XtmError otherwise). Missing ones are
        detected among every language the detector knows; a text whose language the bundle cannot
        read, or that has none (blank, no letters, too uncertain), gets None: it is never read as
        another language."""
        r = self._resolve(_text_list(texts), _lang_list(langs), "bow")
        return [lang if route is not None else None for lang, route in zip(r.langs, r.routes, strict=True)]

    def resolve_routes(self, texts: Sequence[str], langs: Sequence[str | None] | str | None = None,
                       route: str = InferenceOptions.route) -> tuple[list[str | None], list[str | None]]:
        """(language, route) of each text for `infer(..., route=route)`. An unsupported text has route
        None and, as language, the detected one (that the route cannot read) or None.

        "bow" (or "auto" without a contextual route): the training languages only. "auto": training
        languages go to "bow" (or, when `auto_route` is "contextual", to "contextual" like every
        other language the contextual encoder knows), languages the contextual encoder knows (any,
        when it lists none) to "contextual". "contextual": every text the sentence encoder can read. Given languages are
        taken as they are (XtmError if the route cannot serve them); missing ones are detected among
        every language the detector knows (`xtm.runtime.langid.identify`)."""
        r = self._resolve(_text_list(texts), _lang_list(langs), route)
        return r.langs, r.routes

    def served_languages(self, route: str = InferenceOptions.route) -> list[str] | None:
        """Languages `route` can read: the bag-of-words languages, plus the contextual encoder's
        when the route uses it; None when that encoder does not list its languages (any)."""
        check_route(route)
        if route == "contextual" and not self.has_contextual:
            self.contextual_encoder()  # raises: no contextual route
        return self._manifest.served_languages(route)

    @property
    def auto_route(self) -> str:
        """What `route="auto"` serves the training languages with: "contextual" when the bundle's
        contextual entry says so (new runs, issue 14: a document and its translation then go through
        the same network), else "bow" (bundles without the route or from before issue 14)."""
        return self._contextual_entry.auto_route if self._contextual_entry else "bow"

    def _route_of(self, code: str, route: str, ctx_any: bool, ctx: frozenset[str]) -> str | None:
        """Which encoder reads language `code` on `route`; None if none can."""
        if route == "auto" and self.auto_route == "contextual" and (ctx_any or code in ctx):
            return "contextual"  # every language the sentence encoder knows, training languages included
        if route != "contextual" and code in self._encoders:
            return "bow"
        if route != "bow" and self.has_contextual and (ctx_any or code in ctx):
            return "contextual"
        return None

    def _unserved(self, code: str, route: str) -> str:
        """"not served by ... (it serves ...)": the reason a language cannot be read on `route`."""
        where = "this bundle" if not self.has_contextual or route == "auto" else (
            "the bag-of-words route" if route == "bow" else "the contextual route")
        return f"not served by {where} (it serves {', '.join(self.served_languages(route) or [])})"

    def _resolve(self, texts: Sequence[str], langs: Sequence[str | None] | str | None, route: str,
                 min_lang_conf: float = 0.0) -> _Resolved:
        """Language, route, detection confidence and unsupported note of each text (see infer)."""
        check_route(route)
        n = len(texts)
        if route == "contextual":
            self.contextual_encoder()  # a bundle without the route fails here, before any work
        # On "auto" the graph opens with the first row that goes to it (infer): traffic the bag-of-words encoders
        # serve never pays its memory (230 MB) or a failure to open it.
        if langs is None or isinstance(langs, str):
            given: Sequence[str | None] = [langs] * n
        else:
            given = langs
            if len(given) != n:
                raise XtmError(f"langs has {len(given)} entries for {n} texts")
        ctx = frozenset(self.contextual_languages)
        ctx_any = self.has_contextual and not ctx
        known: dict[str, tuple[str, str]] = {}  # given code -> (normalised, route): one check per distinct code

        def check(i: int, lang: Any) -> tuple[str, str]:
            if not isinstance(lang, str):
                raise XtmError(f"langs[{i}] must be a language code or None, got {type(lang).__name__}")
            hit = known.get(lang)
            if hit is None:
                code = normalize_lang(lang)
                r = self._route_of(code, route, ctx_any, ctx)
                if r is None:
                    # (a pipeline passing its records' languages lost the whole batch to one: say the way round)
                    raise XtmError(f"language '{lang}' is {self._unserved(code, route)} (infer_records reports "
                                   "such a record and serves the others)")
                hit = known[lang] = (code, r)
            return hit

        try:
            distinct = set(given)
        except TypeError:  # an unhashable entry: check() names it below
            distinct = {0}
        conf = np.full(n, np.nan, dtype=np.float32)
        if None not in distinct and all(isinstance(x, str) for x in distinct):
            # Every language given: one check per distinct code, then C-level maps.
            for x in distinct:
                check(0, x)
            pairs = list(map(known.__getitem__, given))
            return _Resolved(langs=[p[0] for p in pairs], routes=[p[1] for p in pairs], conf=conf,
                             notes=[None] * n)
        prefer = self.served_languages(route)
        out = _Resolved(langs=[None] * n, routes=[None] * n, conf=conf, notes=[None] * n)
        # (the first training language's empty-bag prior; the contextual route's when asked for, or when that
        # language's segmenter is not installed: a blank text would otherwise fail its whole batch)
        blank_route = "contextual" if route == "contextual" or (
            route == "auto" and self._manifest.languages[0] in self._unsegmented) else "bow"
        for i, (text, lang) in enumerate(zip(texts, given, strict=True)):
            if lang is not None:
                out.langs[i], out.routes[i] = check(i, lang)
                continue
            if not text.strip():
                # Nothing to detect: read as an empty document (flagged empty), with no language.
                out.routes[i] = blank_route
                continue
            det = identify(text, prefer)
            out.conf[i] = det.confidence
            if det.lang is None:
                out.notes[i] = det.note
                continue
            out.langs[i] = det.lang
            if det.confidence < min_lang_conf:
                out.notes[i] = (f"detected language '{det.lang}' with probability {det.confidence:.2f}, under "
                                f"min_lang_conf {min_lang_conf:g}: a guess (give the text's language)")
                continue
            r = self._route_of(det.lang, route, ctx_any, ctx)
            if r is None:
                out.notes[i] = (f"detected language '{det.lang}' (confidence {det.confidence:.2f}) is "
                                f"{self._unserved(det.lang, route)}")
            out.routes[i] = r
        return out

    def bag_of_words(self, texts: Sequence[str], lang: str, *, sparse: bool = False) -> Any:
        """Counts of in-vocabulary tokens, [len(texts), V_lang] float32: what the encoder reads (each text up
        to its first 100,000 characters, as infer reads it).

        A dense numpy array, or with `sparse=True` a scipy.sparse CSR matrix (indices sorted).
        """
        enc = self._encoder(lang)
        texts = _encodable(_text_list(texts))[0]
        counts = count_words(texts, self._tokenizer(enc.entry.lang), enc.vocab, enc.entry.vocab_size)
        if sparse:
            return counts.csr(enc.entry.vocab_size)
        return counts.dense(np.arange(len(texts)), enc.entry.vocab_size)

    def infer(self, texts: Sequence[str], langs: Sequence[str | None] | str | None = None,
              batch_size: int = InferenceOptions.batch_size, top_k: int = InferenceOptions.top_k,
              route: str = InferenceOptions.route, *, show_progress_bar: bool = False,
              min_lang_conf: float = InferenceOptions.min_lang_conf) -> InferenceResult:
        """Topic distributions of `texts`, in input order.

        show_progress_bar: a bar on stderr counting documents through the encoders (tqdm), for
        long lists in a notebook or terminal.
        min_lang_conf: a detected language with a lower probability (lang_conf) makes its row
        unsupported (the reason in `notes`) instead of a guess; given languages are not judged.

        langs: one code for all texts, one per text (None entries are detected), or None to detect
        all. route (see `xtm.runtime.engine.ROUTES` and `resolve_routes`): "auto" (default) reads every
        language the sentence encoder knows with the contextual route when the bundle has one and its
        `auto_route` is "contextual" (new runs), else the training languages with their bag-of-words
        encoders and any other language with the contextual route; "bow" only the training
        languages; "contextual" every text with the sentence encoder. Documents are grouped by
        language and run in batches of `batch_size`.

        A given language the route cannot read raises XtmError (a caller's mistake). A detected
        one, or a text without a language, never raises: its row is flagged `unsupported` (theta
        NaN, the reason in `notes`) and the other rows are served; nothing is ever read as another
        language. Detection covers every language py3langid knows, so a French or Arabic text
        is not read as English by an English/Chinese bundle. A blank text without a language reads
        as an empty document (first encoder's empty-bag prior; contextual route: the encoder's
        output for "") and is flagged `empty`.
        """
        texts, langs = _text_list(texts), _lang_list(langs)  # by position, whatever the container
        whole_number("batch_size", batch_size)
        whole_number("top_k", top_k, 0)
        texts, cut = _encodable(texts)
        n, K = len(texts), self.num_topics
        res = self._resolve(texts, langs, route, check_min_lang_conf(min_lang_conf))
        for i, length in cut.items():
            if res.notes[i] is None:
                res.notes[i] = f"text has {length:,} characters; read the first {len(texts[i]):,}"
        theta = np.full((n, K), np.nan, dtype=np.float32)
        empty = np.ones(n, dtype=bool)
        oov = np.full(n, np.nan, dtype=np.float32)
        groups: dict[str, list[int]] = {}
        ctx_rows: list[int] = []
        for i, (lang, r) in enumerate(zip(res.langs, res.routes, strict=True)):
            if r == "contextual":
                ctx_rows.append(i)
            elif r == "bow":
                groups.setdefault(lang or self._manifest.languages[0], []).append(i)
        bar = _progress_bar(len(ctx_rows) + sum(map(len, groups.values())), show_progress_bar)
        try:
            if ctx_rows:
                # The sentence encoder costs per token, not per vocabulary word: smaller batches keep
                # padding (batches are sorted by length) and peak memory low.
                ctx_texts = [texts[i] for i in ctx_rows]
                theta[ctx_rows] = self.contextual_encoder().encode(ctx_texts, batch_size=min(batch_size, 64))[0]
                empty[ctx_rows] = [not texts[i].strip() for i in ctx_rows]
                bar.update(len(ctx_rows))
            for lang, idx_list in groups.items():
                self._infer_bow(texts, lang, np.asarray(idx_list, dtype=np.int64), batch_size, theta, empty, oov,
                                bar.update)
        finally:
            bar.close()
        unsupported = np.array([r is None for r in res.routes], dtype=bool)
        top_ids, top_weights = _top_topics(np.where(unsupported[:, None], 0, theta), top_k)
        top_ids[unsupported], top_weights[unsupported] = -1, np.nan
        return InferenceResult(theta=theta, langs=res.langs, top_ids=top_ids, top_weights=top_weights, empty=empty,
                               topic_words=self.topics, routes=res.routes, lang_conf=res.conf, oov_ratio=oov,
                               unsupported=unsupported, notes=res.notes)

    def infer_records(self, records: Iterable[Mapping[str, Any]], *, options: InferenceOptions | None = None,
                      report: Callable[[str], None] | None = None, **overrides: Any) -> Iterator[str]:
        """xtm-infer's output line (JSON text) for each good record, in order, lazily: the batch
        engine (`xtm.runtime.engine.infer_records`) on this model.

        records: mappings with "text", optional "lang" (detected when absent) and "id" (the
        record's 1-based position when absent). options: an `InferenceOptions` (default: its
        defaults); `overrides`, its fields by name, replace those of `options`: top_k, batch_size,
        route, full_theta, strict, max_bad, max_share, lang, min_lang_conf, text_field, lang_field,
        id_field (threads: this loaded model keeps its own). A keyword that is none of them is an
        XtmError naming it. text_field, lang_field and id_field name other keys (the output line
        still says "id" and "lang"). A bad record (no text, a language the route cannot
        read, ...) is reported through `report` (default: the "xtm.runtime.engine" logger) as
        <records>:N: reason and skipped; `strict` raises XtmError at the first, `max_bad` (N or
        "P%") past the limit. `json.loads(line)` gives {"id", "lang", "lang_conf", "route",
        "empty", "oov_ratio", "theta", "topics"}.
        """
        if hasattr(records, "columns"):  # iterating a DataFrame gives its column names, each a "bad record"
            raise XtmError(f"records must be an iterable of mappings, got {type(records).__name__} (pass "
                           "df.to_dict('records'))")
        if isinstance(records, (str, KeysView, ValuesView, ItemsView)):
            # a string's characters, a mapping's keys or values: every one a "bad record" and nothing served
            raise XtmError(f"records must be an iterable of mappings (one per document), got {type(records).__name__}")
        _refuse_container("records", records, "an iterable of mappings (one per document)")
        options = InferenceOptions.with_overrides(options, overrides, "infer_records")
        return infer_records(self, records, options=options, report=report)

    def _infer_bow(self, texts: Sequence[str], lang: str, idx: np.ndarray, batch_size: int, theta: np.ndarray,
                   empty: np.ndarray, oov: np.ndarray, on_rows: Callable[[int], Any] | None = None) -> None:
        """Rows `idx` of texts (all in `lang`) through its bag-of-words encoder, into theta/empty/oov."""
        enc = self._encoder(lang)
        tok = self._tokenizer(lang)
        V, K, graph = enc.entry.vocab_size, self.num_topics, self._manifest.path(enc.entry.file)
        run, out_name, (in0, *in1) = enc.session.run, [enc.entry.output], enc.entry.inputs
        window = batch_size * _SORT_WINDOW if enc.entry.sparse else batch_size
        for w0 in range(0, len(idx), window):
            widx = idx[w0:w0 + window]
            # Tokenized batch by batch: only word ids (not token strings) are held for a window.
            counts = concat([count_words([texts[i] for i in widx[b:b + batch_size].tolist()], tok, enc.vocab, V)
                              for b in range(0, len(widx), batch_size)])
            lens = counts.lengths()
            empty[widx] = lens == 0
            with np.errstate(divide="ignore", invalid="ignore"):
                oov[widx] = np.where(counts.tokens > 0, 1.0 - counts.known / counts.tokens, np.nan)
            if enc.entry.sparse:
                # Shortest first; the stable sort keeps input order among equal lengths.
                order = np.argsort(lens, kind="stable")
                for b in range(0, len(order), batch_size):
                    sel = order[b:b + batch_size]
                    ids, cnt = counts.padded(sel)
                    out = run_session(run, out_name, {in0: ids, in1[0]: cnt}, graph)[0]
                    theta[widx[sel]] = check_theta(out, len(sel), K, graph)
            else:
                out = run_session(run, out_name, {in0: counts.dense(np.arange(len(widx)), V)}, graph)[0]
                theta[widx] = check_theta(out, len(widx), K, graph)
            if on_rows is not None:
                on_rows(len(widx))

    def transform(self, texts: Sequence[str], langs: Sequence[str | None] | str | None = None,
                  **kwargs: Any) -> np.ndarray:
        """theta, float32 [n, K]: `infer(texts, langs, **kwargs).theta`, the scikit-learn transformer
        convention (rows of unsupported texts are NaN). With `fit`, a first step of a scikit-learn Pipeline
        over texts: make_pipeline(model, LogisticRegression()).fit(texts, y)."""
        return self.infer(texts, langs, **kwargs).theta

    def fit(self, texts: Any = None, y: Any = None) -> TopicModel:
        """Nothing to learn (the model is frozen): returns the model, so a scikit-learn Pipeline can hold it as a
        step before a classifier. Cloning it (cross-validation, grid search) is not supported: sklearn rebuilds
        steps from their parameters, and a TopicModel is its bundle; use it as a fixed feature step outside the
        search, or pass model.transform(texts) as the features."""
        return self

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Sentence embeddings [n, D] (L2-normalised) from the contextual route's encoder."""
        texts = _encodable(_text_list(texts))[0]  # cut as infer cuts; sentencepiece raises on a lone surrogate
        whole_number("batch_size", batch_size)
        return self.contextual_encoder().encode(texts, batch_size=batch_size)[1]


# How long a failure to open the contextual graph is said again without trying (see TopicModel.__init__): a
# TransientError passes with its shortage, so it is tried again sooner (it lasted 10 s after the shortage had
# passed), but not at once (each try reads, hashes and builds 80 MB while memory is short).
_RETRY_OPEN_AFTER_S = 10.0
_RETRY_TRANSIENT_AFTER_S = 1.0


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(total: int, show: bool) -> Any:
    """tqdm over `total` documents on stderr when asked for, else a bar that does nothing."""
    if not show:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit=" docs", dynamic_ncols=True)


def _text_list(texts: Any) -> list[str]:
    """`texts` as a list, by position, every element a string; XtmError for anything else. A pandas Series
    indexes by its labels, which after a filter or a shuffle are not 0..n-1, so it is read by position too."""
    if isinstance(texts, str):
        raise XtmError("texts must be a list of strings, not one string (wrap it: [text])")
    _refuse_container("texts", texts, "a list of strings")
    out = list(texts)
    bad = next((i for i, t in enumerate(out) if not isinstance(t, str)), None)
    if bad is not None:
        raise XtmError(f"texts[{bad}] must be a string, got {type(out[bad]).__name__}")
    return out


def _lang_list(langs: Any) -> list[Any] | str | None:
    """`langs` as infer takes it: None (detect all), one code for all texts, or a list by position."""
    if langs is None or isinstance(langs, str):
        return langs
    _refuse_container("langs", langs, "one language code, a list of codes (None entries are detected) or None")
    return [None if is_missing(x) else x for x in langs]  # a pandas column's NaN / pd.NA is a missing code


def _refuse_container(name: str, value: Any, expected: str) -> None:
    """Refuse what `list(value)` would read as something else: a DataFrame (its column names), a mapping (its
    keys; `mapping.keys()` itself is fine), a set (no order), bytes or a memoryview (numbers), an array of more
    than one dimension (its rows), None."""
    kind = type(value).__name__
    if value is None or isinstance(value, (bytes, bytearray, memoryview, Mapping, set, frozenset)) \
            or hasattr(value, "columns") \
            or not isinstance(value, Iterable) or getattr(value, "ndim", 1) != 1:
        hint = " (pass the column: df['text'])" if hasattr(value, "columns") else ""
        raise XtmError(f"{name} must be {expected}, got {kind}{hint}")


def _encodable(texts: Sequence[str]) -> tuple[Sequence[str], dict[int, int]]:
    """texts as the encoders read them (a copy only when one changes), and the original length of each text cut:
    at most MAX_CHARS characters, as xtm-infer reads a record (a 10 MB request cost 0.6 GB and seconds for what
    the first few hundred words decide, and infer and xtm-infer gave the same text different topics); lone
    surrogates replaced (sentencepiece raises on them, which would cost the whole batch its results)."""
    from xtm.runtime.records import MAX_CHARS, without_surrogates

    out: list[str] | None = None
    cut: dict[int, int] = {}
    for i, t in enumerate(texts):
        clean = t
        if len(clean) > MAX_CHARS:
            cut[i] = len(clean)
            clean = clean[:MAX_CHARS]
        if not clean.isascii():
            clean = without_surrogates(clean)
        if clean is not t:
            if out is None:
                out = list(texts)
            out[i] = clean
    return (texts if out is None else out), cut


@dataclass
class _Resolved:
    """Per text: language (None: none applies), route (None: unsupported), detection confidence
    (NaN: given or blank) and why it is unsupported."""

    langs: list[str | None]
    routes: list[str | None]
    conf: np.ndarray
    notes: list[str | None]


def _contextual_by_default(manifest: BundleManifest, lang: str) -> bool:
    """Whether route="auto" reads training language `lang` with the sentence encoder (TopicModel._route_of)."""
    ctx = manifest.contextual
    return ctx is not None and ctx.auto_route == "contextual" and (not ctx.languages or lang in ctx.languages)


def _top_topics(theta: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    k = max(0, min(int(top_k), theta.shape[1]))
    if k == 0 or theta.shape[0] == 0:
        return np.zeros((theta.shape[0], k), dtype=np.int64), np.zeros((theta.shape[0], k), dtype=np.float32)
    # Stable sort of -theta: equal weights keep the lower topic id first, so output is deterministic.
    order = np.argsort(-theta, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(theta, order, axis=1)


def _names(items: Iterable[Any]) -> str:
    return ", ".join(repr(i.name) for i in items)


def _check_signature(session: Any, e: EncoderEntry, num_topics: int, path: Path) -> None:
    """The ONNX graph must take exactly the manifest's inputs (dense float [N, V] or sparse int64
    ids / float counts [N, L]) and give its output [N, K]. Names from the manifest or the graph are
    shown with repr: they are someone else's strings (a terminal escape stays visible text)."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    for name in e.inputs:
        if name not in inputs:
            raise XtmError(f"no input named {name!r} (the graph has {_names(inputs.values())})", path=path)
    extra = [i for name, i in inputs.items() if name not in e.inputs]
    if extra:
        raise XtmError(f"the graph needs inputs the manifest does not name: {_names(extra)}", path=path)
    if e.output not in outputs:
        raise XtmError(f"no output named {e.output!r} (the graph has {_names(outputs.values())})", path=path)
    out_shape = outputs[e.output].shape
    # Dimensions may be symbolic (str) or unknown (None); only fixed integers can be checked.
    kinds = ("tensor(int64)", "tensor(float)") if e.sparse else ("tensor(float)",)
    for name, kind in zip(e.inputs, kinds, strict=True):
        shape = inputs[name].shape
        if len(shape) != 2 or inputs[name].type != kind or (
                not e.sparse and isinstance(shape[1], int) and shape[1] != e.vocab_size):
            want = "[N, L]" if e.sparse else f"[N, {e.vocab_size}]"
            raise XtmError(f"input {name!r} is {inputs[name].type} {shape}, expected {kind} {want}", path=path)
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] != num_topics):
        raise XtmError(f"output {e.output!r} has shape {out_shape}, expected [N, {num_topics}]", path=path)


def _probe(session: Any, e: EncoderEntry, num_topics: int, path: Path) -> None:
    """Two documents through the graph (one empty, one of one word): a graph that fails or gives no
    topic mixture is refused when the bundle loads, not blamed on every document later (0.3 ms)."""
    if e.sparse:
        feeds = {e.inputs[0]: np.zeros((2, 1), np.int64), e.inputs[1]: np.array([[0.0], [1.0]], np.float32)}
    else:
        x = np.zeros((2, e.vocab_size), np.float32)
        x[1, 0] = 1.0
        feeds = {e.inputs[0]: x}
    try:
        theta = session.run([e.output], feeds)[0]
    except Exception as ex:  # onnxruntime raises its own non-public exception types
        raise XtmError(f"the encoder fails on a one-word document: {ex}", path=path) from ex
    check_theta(theta, 2, num_topics, path)


def _reload(directory: str, options: dict[str, Any], digest: str) -> TopicModel:
    """A pickled TopicModel, loaded again from its bundle (TopicModel.__reduce__)."""
    return TopicModel.load_unchanged(directory, digest, since="this TopicModel was pickled",
                                     advice="load the bundle you mean with TopicModel.load", **options)

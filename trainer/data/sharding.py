"""Out-of-core corpora: JSONL preprocessed into sparse shards on disk, streamed during training.

`build_shards` reads the raw documents twice-over in bounded memory:

  pass 1  read, validate and tokenize every document with the in-memory loader's own reader
          (`corpus_loading._read_documents`) and spill its token ids and counts to flat binary
          files; only the token -> id tables (the distinct words) stay in memory;
  vocab   count document frequencies over the spill in chunks and apply the in-memory loader's
          vocabulary rule (`_vocab_from_df`) with the same language order, labels, split and
          hold-out draw, so a corpus that fits in memory gets exactly the same vocabulary;
  pass 2  map the spill to vocabulary columns chunk by chunk and write fixed-size CSR shards
          `<lang>/train-00000.npz`, `<lang>/test-00000.npz` (plain arrays, no pickle), then
          `index.json` atomically, last: a shard directory with an index is complete.

Memory: the token tables, one chunk of the spill, one shard being filled, and one byte per
document of a language while its hold-out split is drawn (only when documents carry labels but
no `split`). Nothing else grows with the number of documents.

`ShardedCorpus` opens a shard directory: `batches()` is the training loop's batch source
(shard order reshuffled every epoch, rows shuffled within a buffer of a few shards), and
`eval_corpus()` an in-memory `Corpus` holding only what evaluation needs: the test split and
a bounded, evenly spaced sample of the training documents (classification's training set,
the report's topic prevalence), with whole-corpus word counts for the models that use them.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.atomic import write_json
from xtm.config import PREPROCESSING, DataConfig, Preprocessing, default_of
from xtm.corpus import Corpus, LanguageCorpus
from xtm.errors import XtmError
from xtm.run_dir import LOCK_NAME
from xtm.runtime.tokenize import default_tokenizer_spec
from xtm.trainer.data.batches import Step, steps_per_epoch
from xtm.trainer.data.loading import (
    _attach_links,
    _check_preprocessing,
    _corpus_info,
    _label_names,
    _language_order,
    _normalize_langs,
    _read_documents,
    _ReadStats,
    _split_mode,
    _test_mask,
    _vocab_from_df,
    corpus_name,
)
from xtm.vocabulary import read_vocabulary, write_vocabulary

__all__ = ["DEFAULT_SHARD_SIZE", "ShardedCorpus", "build_shards", "open_or_build_shards"]

SHARD_FORMAT = 1
DEFAULT_SHARD_SIZE = default_of(DataConfig, "shard_size")
DEFAULT_EVAL_TRAIN_DOCS = default_of(DataConfig, "eval_train_docs")
# Documents per chunk when reading the spill back (vocabulary counting, pass 2).
_CHUNK_DOCS = 50_000
# Spill buffers are written out at this many entries (4 MB of int32).
_FLUSH = 1 << 20


# --------------------------------------------------------------------------- spill (pass 1)


class _Spill:
    """One language's tokenized documents, appended to flat int32/int8 files in a temp dir."""

    def __init__(self, d: Path) -> None:
        d.mkdir(parents=True, exist_ok=True)
        self.dir = d
        self.token_index: dict[str, int] = {}
        self.n = 0
        self.explicit = 0
        self.n_labeled = 0
        self.has_split = False
        self._buf = {"ids": array("i"), "counts": array("i"), "lens": array("i"), "labels": array("i"),
                     "splits": array("b")}
        self._files = {k: open(d / f"{k}.bin", "wb") for k in self._buf}  # noqa: SIM115 - closed in close()

    def add(self, tokens: dict[str, int], label_code: int, split: str | None, explicit: bool) -> None:
        index = self.token_index
        ids, counts = self._buf["ids"], self._buf["counts"]
        for tok, c in tokens.items():
            tid = index.get(tok)
            if tid is None:
                tid = index[tok] = len(index)
            ids.append(tid)
            counts.append(c)
        self._buf["lens"].append(len(tokens))
        self._buf["labels"].append(label_code)
        # 0: no split field, 1: train, 2: test.
        self._buf["splits"].append(0 if split is None else (2 if split == "test" else 1))
        self.n += 1
        self.explicit += explicit
        self.n_labeled += label_code >= 0
        self.has_split |= split is not None
        if len(ids) >= _FLUSH:
            self.flush()

    def flush(self) -> None:
        for k, buf in self._buf.items():
            if len(buf):
                buf.tofile(self._files[k])
                del buf[:]

    def close(self) -> None:
        self.flush()
        for f in self._files.values():
            f.close()

    def read(self, name: str, dtype: type, start: int, count: int) -> np.ndarray:
        """`count` entries of a spill file from entry `start`, without reading the rest."""
        item = np.dtype(dtype).itemsize
        with open(self.dir / f"{name}.bin", "rb") as f:
            f.seek(start * item)
            return np.fromfile(f, dtype=dtype, count=count)

    def chunks(self) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
        """(first doc, lens, ids, counts) for consecutive chunks of documents."""
        pos = 0
        for start in range(0, self.n, _CHUNK_DOCS):
            lens = self.read("lens", np.int32, start, min(_CHUNK_DOCS, self.n - start))
            k = int(lens.sum())
            yield start, lens, self.read("ids", np.int32, pos, k), self.read("counts", np.int32, pos, k)
            pos += k


# --------------------------------------------------------------------------- shard writing (pass 2)


def _save_shard(path: Path, m: sp.csr_matrix, labels: np.ndarray | None) -> None:
    """A CSR matrix (+ labels) as plain arrays in an .npz, written under a temp name then renamed."""
    arrays: dict[str, np.ndarray] = {"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int32),
                                     "data": m.data.astype(np.float32), "shape": np.asarray(m.shape, np.int64)}
    if labels is not None:
        arrays["labels"] = labels.astype(np.int64)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    tmp.replace(path)


def load_shard(path: Path) -> tuple[sp.csr_matrix, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as z:
            shape = tuple(int(x) for x in z["shape"])
            m = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            labels = z["labels"] if "labels" in z.files else None
    except (OSError, KeyError, ValueError) as e:
        raise XtmError(f"unreadable shard ({type(e).__name__}: {e}); rebuild the shards "
                       "(delete the shard directory)", path=path) from None
    return m, labels


class _ShardWriter:
    """Rows in, fixed-size shards out; keeps at most one shard's rows in memory."""

    def __init__(self, root: Path, lang: str, split: str, size: int, vocab_size: int) -> None:
        self.root, self.lang, self.split, self.size, self.v = root, lang, split, size, vocab_size
        self.parts: list[sp.csr_matrix] = []
        self.labels: list[np.ndarray] = []
        self.rows = 0
        self.shards: list[dict[str, Any]] = []
        (root / lang).mkdir(parents=True, exist_ok=True)

    def add(self, m: sp.csr_matrix, labels: np.ndarray | None) -> None:
        start = 0
        while start < m.shape[0]:
            take = min(self.size - self.rows, m.shape[0] - start)
            self.parts.append(m[start:start + take])
            if labels is not None:
                self.labels.append(labels[start:start + take])
            self.rows += take
            start += take
            if self.rows == self.size:
                self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        m = sp.vstack(self.parts, format="csr") if len(self.parts) > 1 else self.parts[0]
        labels = np.concatenate(self.labels) if self.labels else None
        name = f"{self.lang}/{self.split}-{len(self.shards):05d}.npz"
        _save_shard(self.root / name, sp.csr_matrix(m), labels)
        self.shards.append({"file": name, "docs": int(m.shape[0]), "nnz": int(m.nnz)})
        self.parts, self.labels, self.rows = [], [], 0


# --------------------------------------------------------------------------- build


def _source_files(p: Path) -> list[Path]:
    if p.is_dir():
        if any(p.glob("train_bow_matrix_*.npz")):
            raise XtmError("--out-of-core reads JSONL documents; this is a benchmark directory (already "
                           "preprocessed matrices): train it in memory, without --out-of-core", path=p)
        files = sorted(f for f in p.glob("*.jsonl") if f.is_file())
        if not files:
            raise XtmError("no *.jsonl files to preprocess", path=p)
        return files
    return [p]


def _settings(want: list[str] | None, prep: Preprocessing, seed: int, shard_size: int) -> dict[str, Any]:
    """What the shards' content depends on besides the input files (index.json, the fingerprint)."""
    return {"langs": want, "vocab_size": prep.vocab_size, "min_df": prep.min_df, "max_df": float(prep.max_df),
            "min_doc_tokens": prep.min_doc_tokens, "seed": seed, "shard_size": shard_size}


def _fingerprint(files: Sequence[Path], settings: dict[str, Any]) -> str:
    """What decides the shards' content: the input files (name, size, mtime) and the settings."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()


def build_shards(path: str | Path, out_dir: str | Path, *, langs: Sequence[str] | None = None,
                 prep: Preprocessing = PREPROCESSING, seed: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                 progress: bool = True, **rules: Any) -> Path:
    """Preprocess JSONL documents into shards under `out_dir`; returns `out_dir`.

    Same arguments and rules as `load_corpus` for JSONL (vocabulary, split, hold-out, dropped
    documents), plus `shard_size` documents per shard file.
    """
    prep = replace(prep, **rules) if rules else prep
    src = Path(path)
    if not src.exists():
        raise XtmError("corpus path does not exist", path=src)
    _check_preprocessing(prep.vocab_size, prep.min_df, prep.max_df, prep.min_doc_tokens)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise XtmError(f"shard_size must be a positive integer, got {shard_size!r}", field="shard_size")
    files = _source_files(src)
    want = _normalize_langs(langs)
    out = Path(out_dir)
    settings = _settings(want, prep, seed, shard_size)
    fingerprint = _fingerprint(files, settings)
    _prepare_dir(out)
    spill_root = out / ".spill"
    shutil.rmtree(spill_root, ignore_errors=True)
    try:
        return _build(files, src, out, spill_root, want, settings, fingerprint, progress)
    finally:
        shutil.rmtree(spill_root, ignore_errors=True)


def refuse_foreign_shard_dir(out: Path) -> None:
    """Raise unless `out` is absent, empty, or a shard directory (complete, half-built, or locked)."""
    if out.exists():
        if not out.is_dir():
            raise XtmError("the shard directory is a file", path=out)
        ours = any((out / name).exists() for name in ("index.json", ".spill", ".building", LOCK_NAME))
        if any(out.iterdir()) and not ours:
            raise XtmError("the shard directory exists and holds other files: choose an empty or new "
                           "--shard-dir", path=out)


def _prepare_dir(out: Path) -> None:
    """Clear a previous (or half-written) shard directory; never a directory that is not ours."""
    refuse_foreign_shard_dir(out)
    if out.exists():
        (out / "index.json").unlink(missing_ok=True)  # first: a half-rebuilt directory is never "complete"
        for child in out.iterdir():
            if child.name == LOCK_NAME:
                continue  # held by the process building here (xtm.trainer.run)
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / ".building").touch()


def _build(files: list[Path], src: Path, out: Path, spill_root: Path, want: list[str] | None,
           settings: dict[str, Any], fingerprint: str, progress: bool) -> Path:
    from tqdm.auto import tqdm

    stats = _ReadStats()
    spills: dict[str, _Spill] = {}
    label_codes: dict[Any, int] = {}
    for doc in _read_documents(files, want, progress, stats):
        s = spills.get(doc.lang)
        if s is None:
            s = spills[doc.lang] = _Spill(spill_root / doc.lang)
        code = -1 if doc.label is None else label_codes.setdefault(doc.label, len(label_codes))
        s.add(doc.tokens, code, doc.split, doc.explicit)
    for s in spills.values():
        s.close()
    n_docs = {x: spills[x].n if x in spills else 0 for x in stats.dropped_by_lang}
    order = _language_order(n_docs, {x: s.explicit for x, s in spills.items()}, want, src, stats)
    n_total = sum(spills[x].n for x in order)
    # Label values seen in the chosen languages only, as the in-memory loader does.
    seen_codes: set[int] = set()
    for x in order:
        for start in range(0, spills[x].n, _CHUNK_DOCS):
            codes = spills[x].read("labels", np.int32, start, min(_CHUNK_DOCS, spills[x].n - start))
            seen_codes.update(np.unique(codes[codes >= 0]).tolist())
    value_of = {c: v for v, c in label_codes.items()}
    label_names = _label_names(n_total, sum(spills[x].n_labeled for x in order),
                               {value_of[c] for c in seen_codes}, src)
    remap = np.full(max(len(label_codes), 1), -1, dtype=np.int64)
    if label_names is not None:
        for i, v in enumerate(label_names):
            remap[label_codes[v]] = i
    split_mode = _split_mode(any(spills[x].has_split for x in order), label_names)
    rng = np.random.default_rng(settings["seed"])

    index_langs: dict[str, Any] = {}
    lang_info: dict[str, Any] = {}
    bar = tqdm(total=2 * n_total, desc="writing shards", unit="doc", unit_scale=True,
               disable=not progress, file=None)
    try:
        for x in order:
            s = spills[x]
            file_test = (s.read("splits", np.int8, 0, s.n) == 2) if split_mode == "file" else None
            is_test = _test_mask(split_mode, s.n, file_test, rng)
            del file_test
            # Document frequencies over the training documents, chunk by chunk.
            df = np.zeros(len(s.token_index), dtype=np.int64)
            for start, lens, ids, _ in s.chunks():
                in_train = np.repeat(~is_test[start:start + len(lens)], lens)
                df += np.bincount(ids[in_train], minlength=len(df))
                bar.update(len(lens))
            n_train_all = int((~is_test).sum())
            vocab, col_of, fallback = _vocab_from_df(s.token_index, df, n_train_all, vocab_size=settings["vocab_size"],
                                                     min_df=settings["min_df"], max_df=settings["max_df"])
            del df
            if fallback:
                import warnings

                warnings.warn(f"{src}: '{x}': no word passes min_df={settings['min_df']}, max_df="
                              f"{settings['max_df']} over {n_train_all} training documents; {fallback}",
                              stacklevel=2)
            v = len(vocab)
            writers = {sp_: _ShardWriter(out, x, sp_, settings["shard_size"], v) for sp_ in ("train", "test")}
            word_counts = np.zeros(v, dtype=np.float64)
            too_short_total = 0
            for start, lens, ids, cnts in s.chunks():
                n = len(lens)
                labels = remap[s.read("labels", np.int32, start, n)] if label_names is not None else None
                doc_of = np.repeat(np.arange(n), lens)
                cols = col_of[ids]
                keep = cols >= 0
                m = sp.csr_matrix((cnts[keep].astype(np.float32), (doc_of[keep], cols[keep])), shape=(n, v),
                                  dtype=np.float32)
                too_short = np.asarray(m.sum(axis=1)).ravel() < settings["min_doc_tokens"]
                too_short_total += int(too_short.sum())
                test = is_test[start:start + n]
                for split, mask in (("train", ~test & ~too_short), ("test", test & ~too_short)):
                    rows = np.flatnonzero(mask)
                    if len(rows):
                        part = m[rows]
                        if split == "train":
                            word_counts += np.asarray(part.sum(axis=0)).ravel()
                        writers[split].add(part, None if labels is None else labels[rows])
                bar.update(n)
            for w in writers.values():
                w.flush()
            if too_short_total:
                stats.dropped["too_few_vocab_tokens"] += too_short_total
                stats.dropped_by_lang[x]["too_few_vocab_tokens"] += too_short_total
            n_train = sum(sh["docs"] for sh in writers["train"].shards)
            n_test = sum(sh["docs"] for sh in writers["test"].shards)
            if n_train == 0:
                raise XtmError(f"no training documents left for language '{x}'", path=src)
            write_vocabulary(out / f"vocab_{x}.txt", vocab)
            np.save(out / f"word_counts_{x}.npy", word_counts)
            index_langs[x] = {"vocab_size": v, "vocab_sha256": _vocab_hash(vocab), "train_docs": n_train,
                              "test_docs": n_test, "train": writers["train"].shards, "test": writers["test"].shards}
            lang_info[x] = {"train_docs": n_train, "test_docs": n_test, "vocab_size": v,
                            "distinct_tokens": len(s.token_index), "dropped": dict(stats.dropped_by_lang.get(x, {}))}
            s.token_index = {}  # free this language's token table before the next one
            del is_test, col_of
    finally:
        bar.close()
    info = _corpus_info(src, files, stats, label_names, split_mode, lang_info,
                        vocab_size=settings["vocab_size"], min_df=settings["min_df"], max_df=settings["max_df"],
                        min_doc_tokens=settings["min_doc_tokens"], seed=settings["seed"])
    write_json(out / "index.json", {"format": SHARD_FORMAT, "fingerprint": fingerprint, "settings": settings,
                                    "name": corpus_name(src), "langs": order, "label_names": label_names,
                                    "languages": index_langs, "info": info})
    (out / ".building").unlink(missing_ok=True)
    return out


def _vocab_hash(vocab: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(vocab).encode("utf-8")).hexdigest()


def open_or_build_shards(path: str | Path, out_dir: str | Path, *, langs: Sequence[str] | None = None,
                         prep: Preprocessing = PREPROCESSING, seed: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                         progress: bool = True, log: Any = None, **rules: Any) -> ShardedCorpus:
    """The shards of `path` in `out_dir`: reused when built from the same files and settings
    (`prep` and `rules` as for `build_shards`)."""
    prep = replace(prep, **rules) if rules else prep
    src = Path(path)
    if not src.exists():
        raise XtmError("corpus path does not exist", path=src)
    want = _normalize_langs(langs)
    settings = _settings(want, prep, seed, shard_size)
    out = Path(out_dir)
    index = out / "index.json"
    if index.exists():
        import json

        try:
            if json.loads(index.read_text(encoding="utf-8")).get("fingerprint") == \
                    _fingerprint(_source_files(src), settings):
                if log is not None:
                    log(f"reusing the shards in {out} (same input files and settings)")
                return ShardedCorpus(out)
        except ValueError:
            pass  # unreadable index: rebuilt below
    build_shards(src, out, langs=want, prep=prep, seed=seed, shard_size=shard_size, progress=progress)
    return ShardedCorpus(out)


# --------------------------------------------------------------------------- reading


@dataclass
class _Lang:
    lang: str
    vocab: list[str]
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    word_counts: np.ndarray

    @property
    def num_train(self) -> int:
        return sum(s["docs"] for s in self.train)


class ShardedCorpus:
    """A shard directory written by `build_shards`, opened for training and evaluation."""

    def __init__(self, directory: str | Path) -> None:
        import json

        self.dir = Path(directory)
        index_path = self.dir / "index.json"
        if not index_path.exists():
            raise XtmError("not a complete shard directory (no index.json): preprocessing did not finish; "
                           "run again to rebuild it", path=self.dir)
        try:
            self.index = json.loads(index_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise XtmError(f"unreadable shard index ({e})", path=index_path) from None
        if self.index.get("format") != SHARD_FORMAT:
            raise XtmError(f"shard format {self.index.get('format')} is not supported (this xtm writes "
                           f"{SHARD_FORMAT}); rebuild the shards", path=index_path)
        self.name: str = self.index["name"]
        self.label_names: list[Any] | None = self.index.get("label_names")
        self.languages: list[_Lang] = []
        for x in self.index["langs"]:
            meta = self.index["languages"][x]
            vocab_file = self.dir / f"vocab_{x}.txt"
            vocab = read_vocabulary(vocab_file)
            if _vocab_hash(vocab) != meta["vocab_sha256"]:
                raise XtmError("vocabulary does not match the shard index (vocab_sha256): the shard "
                               "directory was modified; rebuild it", path=vocab_file)
            counts = np.load(self.dir / f"word_counts_{x}.npy", allow_pickle=False)
            self.languages.append(_Lang(x, vocab, meta["train"], meta["test"], counts))

    @property
    def langs(self) -> list[str]:
        return [lc.lang for lc in self.languages]

    def describe(self) -> str:
        parts = [f"{lc.lang}: {lc.num_train} train docs in {len(lc.train)} shards / "
                 f"{sum(s['docs'] for s in lc.test)} test, {len(lc.vocab)} words" for lc in self.languages]
        return f"{self.name} (out of core, {self.dir}): " + "; ".join(parts)

    def load(self, entry: dict[str, Any]) -> tuple[sp.csr_matrix, np.ndarray | None]:
        m, labels = load_shard(self.dir / entry["file"])
        if m.shape[0] != entry["docs"]:
            raise XtmError(f"shard has {m.shape[0]} documents, the index says {entry['docs']}; rebuild "
                           "the shards", path=self.dir / entry["file"])
        return m, labels

    def batches(self, buffer_shards: int = 4) -> ShardedBatches:
        return ShardedBatches(self, buffer_shards)

    def eval_corpus(self, max_train_docs: int = DEFAULT_EVAL_TRAIN_DOCS, dict_path: str | Path | None = None) -> Corpus:
        """What evaluation and model building need, in bounded memory.

        Per language: the test split; every k-th training document (k = ceil(N / max_train_docs),
        at most `max_train_docs` of them) with its label, for classification and the report; the
        whole training set's word counts (NMTM's dictionary map).
        """
        languages = []
        sample_info = {}
        for lc in self.languages:
            stride = max(1, math.ceil(lc.num_train / max_train_docs))
            parts, labels, first = [], [], 0
            for entry in lc.train:
                m, lab = self.load(entry)
                rows = np.arange((-first) % stride, m.shape[0], stride)
                parts.append(m[rows])
                if lab is not None:
                    labels.append(lab[rows])
                first += m.shape[0]
            test_parts, test_labels = [], []
            for entry in lc.test:
                m, lab = self.load(entry)
                test_parts.append(m)
                if lab is not None:
                    test_labels.append(lab)
            train = sp.vstack(parts, format="csr")
            sample_info[lc.lang] = {"train_docs": lc.num_train, "sampled_every": stride,
                                    "sampled_docs": int(train.shape[0])}
            languages.append(LanguageCorpus(
                lang=lc.lang, vocab=lc.vocab, train_bow=train,
                test_bow=sp.vstack(test_parts, format="csr") if test_parts else None,
                tokenizer=default_tokenizer_spec(lc.lang),
                train_labels=np.concatenate(labels) if labels and self.label_names is not None else None,
                test_labels=np.concatenate(test_labels) if test_labels and self.label_names is not None else None,
                train_word_counts=lc.word_counts))
        info = {**self.index["info"], "out_of_core": {"shard_dir": str(self.dir),
                                                      "shard_size": self.index["settings"]["shard_size"],
                                                      "evaluation_train_sample": sample_info}}
        corpus = Corpus(languages=languages, name=self.name, info=info)
        if dict_path is not None:
            _attach_links(corpus, Path(dict_path))
        return corpus


class ShardedBatches:
    """The training loop's batch source over shards (see xtm.trainer.loop.BatchSource).

    Each epoch and language: shards in a fresh random order, read `buffer_shards` at a time,
    rows shuffled within that buffer, cut into batches; leftover rows carry into the next buffer,
    and a language with fewer documents starts another pass, as the in-memory source cycles.
    Everything is drawn from the epoch's seed, so a run resumed at an epoch boundary continues
    exactly; every rank of a distributed run draws the same order and keeps its own batches.
    """

    def __init__(self, corpus: ShardedCorpus, buffer_shards: int = 4) -> None:
        if buffer_shards < 1:
            raise XtmError(f"buffer_shards must be >= 1, got {buffer_shards}")
        self.corpus = corpus
        self.buffer_shards = buffer_shards
        self._offsets = [np.concatenate([[0], np.cumsum([s["docs"] for s in lc.train])]) for lc in corpus.languages]

    def sizes(self) -> list[int]:
        return [lc.num_train for lc in self.corpus.languages]

    def fingerprint(self) -> dict[str, Any]:
        return {lc.lang: {"vocab": len(lc.vocab), "docs": lc.num_train, "nnz": int(sum(s["nnz"] for s in lc.train))}
                for lc in self.corpus.languages}

    def _stream(self, i: int, rng: np.random.Generator, batch_size: int,
                keep: Iterator[bool]) -> Iterator[tuple[sp.csr_matrix, np.ndarray] | None]:
        lc = self.corpus.languages[i]
        offsets = self._offsets[i]
        carry: sp.csr_matrix | None = None
        carry_ids = np.zeros(0, dtype=np.int64)
        while True:
            order = rng.permutation(len(lc.train))
            for g in range(0, len(order), self.buffer_shards):
                parts = [] if carry is None else [carry]
                ids = [carry_ids]
                for j in order[g:g + self.buffer_shards]:
                    m, _ = self.corpus.load(lc.train[j])
                    parts.append(m)
                    ids.append(np.arange(offsets[j], offsets[j] + m.shape[0]))
                m = sp.vstack(parts, format="csr") if len(parts) > 1 else parts[0]
                row_ids = np.concatenate(ids)
                perm = rng.permutation(m.shape[0])
                full = (m.shape[0] // batch_size) * batch_size
                for s in range(0, full, batch_size):
                    rows = perm[s:s + batch_size]
                    # Other ranks' batches are skipped without slicing them.
                    yield (m[rows], row_ids[rows]) if next(keep) else None
                rest = perm[full:]
                carry, carry_ids = m[rest], row_ids[rest]

    def epoch(self, rng: np.random.Generator, batch_size: int, rank: int = 0,
              world: int = 1, start_step: int = 0) -> Iterator[Step]:
        steps = steps_per_epoch(self.sizes(), batch_size, world)
        seeds = rng.integers(0, 2**63 - 1, size=len(self.corpus.languages))

        def wanted(step: int) -> bool:
            # This rank's steps, from its `start_step`-th on (a resumed epoch skips the ones done).
            return step % world == rank and step // world >= start_step

        def mine() -> Iterator[bool]:
            k = 0
            while True:
                yield wanted(k)
                k += 1

        streams = [self._stream(i, np.random.default_rng(int(seed)), batch_size, mine())
                   for i, seed in enumerate(seeds)]
        for step in range(steps):
            batch = [next(s) for s in streams]
            if wanted(step):
                yield batch  # type: ignore[misc]

    def sequential(self, lang_index: int, batch_size: int) -> Iterator[sp.csr_matrix]:
        for entry in self.corpus.languages[lang_index].train:
            m, _ = self.corpus.load(entry)
            for start in range(0, m.shape[0], batch_size):
                yield m[start:start + batch_size]


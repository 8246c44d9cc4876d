"""Threads beside other processes (xtm.cpu): a training takes the cores others leave free, because torch's
spinning threads on a shared core are many times slower (docs/benchmarks.md "Sharing the CPU")."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from log_isolation import library_logging  # noqa: F401  (a fixture)

from xtm.cpu import busy_cores, idle_cores, threads_beside_others, usable_cores

# /proc/stat lines: user nice system idle iowait irq softirq steal guest guest_nice
BEFORE = """cpu  300 0 100 1800 0 0 0 0 0 0
cpu0 100 0 50 900 0 0 0 0 0 0
cpu1 200 0 50 900 0 0 0 0 0 0
intr 12345 1 2 3
"""


def after(busy0: int, busy1: int, ticks: int = 20) -> str:
    """cpu0 and cpu1 `ticks` later, `busy0` / `busy1` of them busy."""
    return (f"cpu0 {100 + busy0} 0 50 {900 + ticks - busy0} 0 0 0 0 0 0\n"
            f"cpu1 {200 + busy1} 0 50 {900 + ticks - busy1} 0 0 0 0 0 0\n")


def test_busy_cores_counts_the_cores_other_processes_kept_busy() -> None:
    assert busy_cores(BEFORE, after(0, 1), [0, 1]) == 0          # a quiet machine
    assert busy_cores(BEFORE, after(20, 0), [0, 1]) == 1         # one busy core
    assert busy_cores(BEFORE, after(20, 20), [0, 1]) == 2
    # one process moving between the two cores half the time on each is one busy core, not two or none
    assert busy_cores(BEFORE, after(10, 10), [0, 1]) == 1
    # only the cores this process may use count
    assert busy_cores(BEFORE, after(20, 20), [1]) == 1


@pytest.mark.parametrize("later", [
    "",                                                   # unreadable the second time
    "cpu0 x y z\ncpu1\n",                                # garbage numbers, a bare name
    "cpu0 1 2\n",                                         # too few fields
    "cpu0 0 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 0 0 0 0 0 0 0\n",   # counters gone backwards (a reset)
    "cpuX 1 2 3 4 5\ncpufreq 1 2 3 4 5\n",               # names that are not a CPU number
])
def test_a_malformed_or_reset_proc_stat_counts_no_busy_core(later: str) -> None:
    assert busy_cores(BEFORE, later, [0, 1]) == 0


def test_the_environment_and_an_unreadable_proc_stat_leave_the_default(monkeypatch, tmp_path: Path) -> None:
    import xtm.cpu as cpu

    monkeypatch.setenv("OMP_NUM_THREADS", "3")                # torchrun's per-rank choice, or the user's
    assert threads_beside_others(7, sample_seconds=0) == 7
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(cpu, "PROC_STAT", tmp_path / "no-such-file")  # not Linux
    assert threads_beside_others(7, sample_seconds=0) == 7
    assert idle_cores(sample_seconds=0) is None                # unknown, not "none idle" (xtm-infer's --workers)


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="needs Linux's /proc/stat")
def test_a_busy_process_beside_the_job_takes_a_thread_away(monkeypatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = len(usable_cores())
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)                                       # past its start-up
        assert threads_beside_others(cores) <= cores - 1
        assert threads_beside_others(1) == 1                  # never below one thread
        idle = idle_cores()                                   # the same measure xtm-infer's --workers takes
        assert idle is not None and 0 <= idle <= cores - 1
    finally:
        busy.kill()
        busy.wait()


@pytest.mark.usefixtures("library_logging")
def test_training_without_threads_takes_the_free_cores_says_so_and_gives_them_back(
        example_corpus, example_dir: Path, tmp_path: Path, caplog, monkeypatch) -> None:
    import xtm.trainer.loop.torch_setup as torch_setup
    import xtm.trainer.loop.training as training
    from xtm.config import DataConfig, TrainConfig
    from xtm.trainer.run import run_training

    sampled: list[int] = []

    def one_core_busy(default: int) -> int:
        sampled.append(default)
        return default - 1

    monkeypatch.setattr(torch_setup, "threads_beside_others", one_core_busy)
    seen: list[int] = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)                                   # a 2-core machine's default, here as anywhere
    cfg = TrainConfig(model="nmtm", num_topics=4, epochs=1, batch_size=100, progress=False, device="cpu")
    try:
        with caplog.at_level(logging.INFO, logger="xtm"):
            training.train_backbone(example_corpus, cfg, tmp_path / "auto",
                                    on_epoch_end=lambda epoch, model: seen.append(torch.get_num_threads()))
        assert seen == [1] and sampled == [2]
        assert "1 CPU thread of 2: other processes keep at least 1 core busy (--threads N to choose)" in caplog.text
        assert torch.get_num_threads() == 2                    # a library caller gets its own count back
        # --threads wins, without sampling the load
        training.train_backbone(example_corpus, replace(cfg, threads=3), tmp_path / "given",
                                on_epoch_end=lambda epoch, model: seen.append(torch.get_num_threads()))
        assert seen == [1, 3] and sampled == [2] and torch.get_num_threads() == 2
        # resumed, a run takes the count it was started with whatever the load now (the same arithmetic),
        # without sampling the load, and gives the caller's back at the end
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="xtm"):
            training.train_backbone(example_corpus, replace(cfg, epochs=2), tmp_path / "auto", resume=True,
                                    on_epoch_end=lambda epoch, model: seen.append(torch.get_num_threads()))
        assert seen == [1, 3, 1] and sampled == [2] and torch.get_num_threads() == 2
        assert "1 CPU thread, as this run was started with" in caplog.text
        assert "other processes keep" not in caplog.text
        # a whole training command (training, then evaluation) samples the load once, and not when resumed
        data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"))
        run_training(data, cfg, tmp_path / "run")
        assert sampled == [2, 2] and torch.get_num_threads() == 2
        run_training(data, replace(cfg, epochs=2), tmp_path / "run", resume=True)
        assert sampled == [2, 2] and torch.get_num_threads() == 2
        # --resume on a directory without a checkpoint starts from scratch, and samples as a new run does
        run_training(data, cfg, tmp_path / "fresh", resume=True)
        assert sampled == [2, 2, 2]
    finally:
        torch.set_num_threads(before)

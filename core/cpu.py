"""How many CPU threads a job should take: the cores that other processes leave free.

Why: torch's OpenMP threads spin at every barrier while they wait for each other. On a core another
process keeps busy, one of them is descheduled and the others spin for it: on 2 cores beside one busy
process, an NMTM Rakuten epoch took 125-176 s with 2 threads against 7 s with 1 (4.3-4.6 s with 2 on a
quiet machine). OMP_WAIT_POLICY=PASSIVE avoids the stall but doubles the quiet case, so a job takes
fewer threads where cores are busy instead (`python benchmarks/threads.py`, docs/benchmarks.md
"Sharing the CPU").
"""

from __future__ import annotations

import os
import time
from pathlib import Path

PROC_STAT = Path("/proc/stat")
# The most threads any setting asks for (training, the contextual fit, onnxruntime sessions): more than any machine
# here has cores. `--threads 1000000` created threads until the process table was full, which stopped every other
# process on the machine (a review; the fork of a shell, a benchmark's evaluation thread).
MAX_THREADS = 1024
# Long enough for the kernel's per-CPU counters (100 ticks a second) to tell a busy core from an idle one.
SAMPLE_SECONDS = 0.2


def usable_cores() -> list[int]:
    """The CPUs this process may run on (its affinity; all CPUs where the platform does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _cpu_times(text: str) -> dict[int, tuple[int, int]]:
    """cpuN -> (busy, total) ticks from /proc/stat's text; idle and iowait are not busy."""
    times: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        try:
            ticks = [int(v) for v in rest.split()]
        except ValueError:
            continue
        if len(ticks) < 5:
            continue
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        idle = ticks[3] + ticks[4]
        total = sum(ticks[:8])
        times[int(name[3:])] = (total - idle, total)
    return times


def busy_cores(before: str, after: str, cpus: list[int]) -> int:
    """How many of `cpus` were kept busy between two readings of /proc/stat: the busy shares summed over
    them and rounded, so that one process moving between two cores counts once."""
    t0, t1 = _cpu_times(before), _cpu_times(after)
    share = 0.0
    for cpu in cpus:
        if cpu not in t0 or cpu not in t1:
            continue
        d_busy, d_total = t1[cpu][0] - t0[cpu][0], t1[cpu][1] - t0[cpu][1]
        if d_total > 0:
            share += min(max(d_busy / d_total, 0.0), 1.0)
    return int(share + 0.5)


def idle_cores(sample_seconds: float = SAMPLE_SECONDS) -> int | None:
    """How many of the usable cores other processes leave idle now: the usable cores less those kept busy
    over `sample_seconds` of /proc/stat, sampled while this process waits; None where the load cannot be
    read (no /proc/stat).

    The one measure of free cores for training's threads (threads_beside_others) and xtm-infer's default
    --workers. Per usable core rather than the load average: the load average counts the whole machine
    (a process pinned to 2 of 64 cores saw the others' load), lags by a minute (a job that just ended
    still counts) and counts processes waiting on disk as busy.
    """
    try:
        before = PROC_STAT.read_text()
        time.sleep(sample_seconds)
        after = PROC_STAT.read_text()
    except OSError:
        return None
    cpus = usable_cores()
    return len(cpus) - busy_cores(before, after, cpus)


def threads_beside_others(default: int, sample_seconds: float = SAMPLE_SECONDS) -> int:
    """Threads for a CPU job started now: `default` (what the library would take), fewer where other
    processes keep cores busy, so that threads plus busy cores fit the usable cores (at least 1).

    The load is sampled once, over `sample_seconds` (idle_cores). `default` stands where the environment
    decides (OMP_NUM_THREADS, as torchrun sets it for each rank) or where the load cannot be read
    (no /proc/stat).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return default
    idle = idle_cores(sample_seconds)
    return default if idle is None else max(1, min(default, idle))

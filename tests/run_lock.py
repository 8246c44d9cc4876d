"""A run directory held by another process, as xtm-train holds it while it trains (for tests of what is refused
meanwhile)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLD = ("import sys, time; from pathlib import Path; from xtm.run_dir import lock_dir\n"
         "with lock_dir(Path(sys.argv[1]), 'xtm-train'):\n"
         "    print('held', flush=True); time.sleep(120)")


@contextmanager
def held_by_another_process(run: Path) -> Iterator[int]:
    """`run` locked by a child process (its pid) for the block."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        yield holder.pid
    finally:
        holder.kill()
        holder.wait()

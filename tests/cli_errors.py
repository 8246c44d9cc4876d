"""`clean_error`: what a command that refuses its input must show: exit 2, no traceback, and one last
stderr line `error: ...` holding the given phrases (the rule in docs/reliability.md)."""

from __future__ import annotations

import subprocess


def clean_error(p: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), p.stderr[-2000:]
    for phrase in phrases:
        assert phrase in last, last

"""Library code never prints (issue 17): it logs through `logging.getLogger(__name__)`, and the
command that runs it decides what reaches the terminal (xtm.cli.common.setup_logging turns records
into `PROG: message` lines). Python users embedding xtm get no stray output on their streams.
"""

from __future__ import annotations

import ast
import errno
import fcntl
import logging
from pathlib import Path

import pytest
from log_isolation import library_logging  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("runtime", "exporters", "evaluation", "core", "trainer", "models_zoo")
STREAMS = {"sys.stdout.write", "sys.stderr.write", "click.echo", "click.secho"}


def terminal_writes(path: Path, source: str | None = None) -> list[str]:
    """`file:line: call` for each print() / stream write. No exemptions: every command line is in cli/."""
    rel = str(path.relative_to(ROOT))
    tree = ast.parse(path.read_text(encoding="utf-8") if source is None else source)
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name == "print" or name in STREAMS:
            found.append(f"{rel}:{node.lineno}: {name}()")
    return sorted(found, key=lambda hit: int(hit.split(":")[1]))


def test_library_modules_never_print() -> None:
    files = sorted(p for folder in LIBRARY for p in (ROOT / folder).rglob("*.py"))
    assert len(files) > 30  # the scan sees the package, not an empty glob
    offenders = [hit for p in files for hit in terminal_writes(p)]
    assert offenders == [], "library code logs instead (logger = logging.getLogger(__name__)):\n" + \
        "\n".join(offenders)


def test_the_scan_finds_a_print_anywhere() -> None:
    probe = ("import sys\ndef f():\n    def g():\n        print('x')\n    sys.stderr.write('y')\n"
             "def main():\n    print()\n")
    expected = ["core/{}.py:4: print()", "core/{}.py:5: sys.stderr.write()", "core/{}.py:7: print()"]
    assert terminal_writes(ROOT / "core" / "probe.py", probe) == [e.format("probe") for e in expected]
    # a `main` in the library is no exemption (core/examples.py's was: xtm-example is the command)
    assert terminal_writes(ROOT / "core" / "examples.py", probe) == [e.format("examples") for e in expected]


@pytest.mark.usefixtures("library_logging")
def test_an_unlockable_run_directory_warns_through_the_logger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              caplog: pytest.LogCaptureFixture,
                                                              capfd: pytest.CaptureFixture[str]) -> None:
    """A file system without flock (some NFS mounts; none can be mounted here, so flock is made to
    fail as it does there: the one stand-in in this file) is a warning, not an error, and it goes to
    the "xtm.run_dir" logger: xtm-train shows it as `xtm-train: warning: ...`."""
    from xtm.run_dir import lock_dir

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level(logging.WARNING, logger="xtm.run_dir"), lock_dir(tmp_path / "run", "xtm-train"):
        pass
    assert [(r.name, r.levelno) for r in caplog.records] == [("xtm.run_dir", logging.WARNING)]
    msg = caplog.records[0].getMessage()
    assert str(tmp_path / "run") in msg and "cannot lock files" in msg and "No locks available" in msg
    out, err = capfd.readouterr()
    assert "cannot lock" not in out + err

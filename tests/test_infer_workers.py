"""xtm-infer --workers N (issue 16, throughput on raw text): chunks parsed, tokenized and inferred in
worker processes, written by the main one. The promise: the same bytes, the same bad-line reports,
exit codes and atomic --out as one process (issue 13's guarantees), and no worker left behind by an
error, a signal or a worker that dies. Real processes, pipes and signals throughout.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundle_fixture import PREVIOUS_OUTPUT, HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main

GOOD_EN = {"text": "The stock market and the bank", "lang": "en"}


@pytest.fixture(autouse=True)
def _segmenters_restored(monkeypatch: pytest.MonkeyPatch):
    """--segmenters sets the process's segmenters (xtm-infer runs in this process): undone after each test."""
    from xtm.runtime.tokenize import use_segmenters

    monkeypatch.delenv("XTM_SEGMENTERS", raising=False)
    yield
    use_segmenters(None)


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def _mixed_rows(n: int) -> list[str]:
    """Good English and raw Chinese lines, detected and given languages, and bad lines of each kind."""
    rows: list[str] = []
    for i in range(n):
        k = i % 9
        if k == 0:
            rows.append(json.dumps({"id": i, "text": "中国经济增长，北京市场的股票和银行。", "lang": "zh"},
                                   ensure_ascii=False))
        elif k == 1:
            rows.append(json.dumps({"id": i, "text": "足球比赛的球队和球员，电影演员的音乐"}, ensure_ascii=False))
        elif k == 2:
            rows.append("{not json")
        elif k == 3:
            rows.append(json.dumps({"id": i, "text": "", "lang": "en"}))
        elif k == 4:
            rows.append(json.dumps({"id": i, "text": "Le match de football était passionnant", "lang": "fr"}))
        else:
            rows.append(json.dumps({"id": f"doc-{i}", **GOOD_EN, "text": f"{GOOD_EN['text']} {i} team goal"}))
    return rows


def _write(path: Path, rows: list[str]) -> Path:
    path.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    return path


class _Done:
    def __init__(self, returncode: int, stdout: bytes, stderr: bytes) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def _run(args: list[str]) -> _Done:
    """xtm-infer in this process (its workers are real processes): saves an interpreter start per run.
    No progress lines (every 30 s by default): on a loaded machine one run would log one and the other
    not, and the tests compare stderr byte for byte."""
    r = CliRunner().invoke(main, [*args, "--progress-every", "3600"], catch_exceptions=False)
    return _Done(r.exit_code, r.stdout_bytes, r.stderr_bytes or b"")


@pytest.mark.parametrize("extra", [[], ["--top-k", "2", "--sparse-theta", "--max-bad", "50%"], ["--strict"],
                                   ["--max-bad", "3"]])
def test_workers_write_the_bytes_and_reports_of_one_process(hb: HandBundle, tmp_path: Path,
                                                            extra: list[str]) -> None:
    src = _write(tmp_path / "docs.jsonl", _mixed_rows(150))
    outs = {}
    for w in ("1", "2"):
        out = tmp_path / f"out{w}.jsonl"
        # --batch-size 2: chunks of 8 lines, so 19 chunks cross the workers and come back in order.
        p = _run([str(src), "--bundle", str(hb.path), "--out", str(out), "--batch-size", "2", "--workers", w,
                  *extra])
        outs[w] = (p.returncode, out.read_bytes() if out.exists() else None,
                   p.stderr.replace(str(out).encode(), b"OUT"))
    assert outs["1"] == outs["2"]
    code, data, err = outs["1"]
    assert b"Traceback" not in err
    if extra[0:1] == ["--strict"] or extra[0:1] == ["--max-bad"]:
        assert code == 2 and data is None  # stopped: --out not written, by either
    else:
        assert code == 0 and data is not None and len(data.splitlines()) > 50


def test_chunks_for_workers_are_cut_by_bytes_as_well_as_lines() -> None:
    """A chunk goes whole to a worker (pickled: held twice) with 2 per worker in flight, so its raw bytes
    are bounded, not only its line count: 1,024 lines of 2 MB once made one 2 GB chunk (4.2 GB resident)."""
    import io

    from xtm.runtime.records import line_chunks

    lines = [b"x" * 1000 + b"\n"] * 10 + [b"y" * 5000 + b"\n", b"\n", b"z\n"]
    chunks = list(line_chunks(io.BytesIO(b"".join(lines)), 100, max_bytes=2500))
    assert [len(c) for c in chunks] == [3, 3, 3, 2, 1]  # the 5 kB line ends its chunk; the blank one is skipped
    assert [n for c in chunks for n, _ in c] == [*range(1, 12), 13]
    assert all(sum(len(raw or b"") for _, raw in c[:-1]) < 2500 for c in chunks)  # the budget, plus one line
    assert [len(c) for c in line_chunks(io.BytesIO(b"".join(lines)), 4)] == [4, 4, 4]  # default: 16 MiB


def test_workers_keep_the_order_of_chunks_cut_by_bytes(hb: HandBundle, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import xtm.runtime.records as records

    src = _write(tmp_path / "docs.jsonl", _mixed_rows(60))
    single = _run([str(src), "--bundle", str(hb.path), "--workers", "1"])
    monkeypatch.setattr(records, "CHUNK_BYTES", 150)  # read in this process: 1-3 lines per chunk
    with open(src, "rb") as f:
        assert len(list(records.line_chunks(f, 1024))) > 20
    many = _run([str(src), "--bundle", str(hb.path), "--workers", "2"])
    assert single.returncode == many.returncode == 0
    assert single.stdout == many.stdout and single.stderr == many.stderr


def test_workers_on_stdout_text_csv_and_parquet(hb: HandBundle, tmp_path: Path) -> None:
    text = _write(tmp_path / "notes.txt", ["The stock market and the bank", "中国经济增长，北京市场", "!!!", "",
                                            "Football team and coach"] * 30)
    got = {w: _run([str(text), "--bundle", str(hb.path), "--batch-size", "1", "--workers", w]) for w in ("1", "2")}
    assert got["1"].returncode == got["2"].returncode == 0
    assert got["1"].stdout == got["2"].stdout and got["1"].stderr == got["2"].stderr
    src = _write(tmp_path / "docs.jsonl", _mixed_rows(60))
    for suffix in ("csv", "parquet"):
        if suffix == "parquet":
            pytest.importorskip("pyarrow")
        res = {}
        for w in ("1", "2"):
            out = tmp_path / f"out{w}.{suffix}"
            assert _run([str(src), "--bundle", str(hb.path), "--out", str(out), "--batch-size", "1",
                         "--workers", w]).returncode == 0
            res[w] = out.read_bytes()
        if suffix == "csv":
            assert res["1"] == res["2"]
        else:
            import pyarrow.parquet as pq

            assert pq.read_table(tmp_path / "out1.parquet").equals(pq.read_table(tmp_path / "out2.parquet"))
    pq_src = tmp_path / "docs.parquet"
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["The stock market", "中国经济增长", None, "Football coach"] * 20,
                             "id": [str(i) for i in range(80)]}), pq_src)
    got = {w: _run([str(pq_src), "--bundle", str(hb.path), "--batch-size", "1", "--workers", w]) for w in ("1", "2")}
    assert got["1"].returncode == 0 and got["1"].stdout == got["2"].stdout and got["1"].stderr == got["2"].stderr


def test_nothing_inferable_exits_1_with_workers(hb: HandBundle, tmp_path: Path) -> None:
    src = _write(tmp_path / "bad.jsonl", ["{nope", json.dumps({"text": ""})] * 10)
    out = tmp_path / "out.jsonl"
    p = _run([str(src), "--bundle", str(hb.path), "--out", str(out), "--workers", "2", "--batch-size", "1"])
    assert p.returncode == 1 and not out.exists() and b"Traceback" not in p.stderr
    assert b"no line could be inferred" in p.stderr


# -- processes: none left behind --------------------------------------------------------------------


def _descendants(pid: int) -> set[int]:
    """Every live process whose parent chain reaches `pid` (read from /proc)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents[int(d.name)] = int(fields[1])
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - out
        out |= frontier
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start_blocked_run(hb: HandBundle, out: Path, workers: int = 2) -> tuple[subprocess.Popen, set[int]]:
    """xtm-infer --workers reading a pipe we keep open, once it has written to the --out temporary;
    returns the process and its worker processes."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see the worker processes")
    p = subprocess.Popen([sys.executable, "-m", "xtm.cli.infer", "-", "--bundle", str(hb.path), "--out", str(out),
                          "--batch-size", "1", "--workers", str(workers)], stdin=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "PYTHONWARNINGS": "ignore"},
                         start_new_session=True)
    assert p.stdin is not None
    p.stdin.write(("".join(json.dumps({"id": i, **GOOD_EN}) + "\n" for i in range(40))).encode())
    p.stdin.flush()
    deadline = time.time() + 120
    while time.time() < deadline:
        tmps = [t for t in out.parent.iterdir() if t.name.endswith(".tmp")]
        if tmps and tmps[0].stat().st_size > 0:
            kids = _descendants(p.pid)
            assert len(kids) >= workers, kids
            return p, kids
        assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
        time.sleep(0.05)
    p.kill()
    raise AssertionError("xtm-infer never started writing")


def _gone(pids: set[int], timeout: float = 20) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if not any(map(_alive, pids)):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize(("sig", "code", "group"), [(signal.SIGTERM, 143, False), (signal.SIGHUP, 129, False),
                                                    (signal.SIGINT, 130, True)])
def test_a_signal_stops_the_workers_and_leaves_no_litter(hb: HandBundle, tmp_path: Path, sig: int, code: int,
                                                         group: bool) -> None:
    """SIGINT goes to the whole process group, as Ctrl-C does: workers ignore it, xtm-infer stops them."""
    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    p, kids = _start_blocked_run(hb, out)
    if group:
        os.killpg(p.pid, sig)
    else:
        p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err.decode()
    assert out.read_text() == PREVIOUS_OUTPUT
    assert not [t for t in tmp_path.iterdir() if t.name.endswith(".tmp")]
    assert b"Traceback" not in err and b"KeyboardInterrupt" not in err
    assert _gone(kids), [k for k in kids if _alive(k)]


def test_kill_9_of_xtm_infer_takes_its_workers_along(hb: HandBundle, tmp_path: Path) -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    p, kids = _start_blocked_run(hb, tmp_path / "out.jsonl")
    p.kill()
    p.wait(30)
    assert _gone(kids), [k for k in kids if _alive(k)]


def test_a_worker_that_dies_is_an_error_not_a_hang(hb: HandBundle, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    p, kids = _start_blocked_run(hb, out)
    workers = [k for k in kids if b"multiprocessing" in Path(f"/proc/{k}/cmdline").read_bytes()
               and b"resource_tracker" not in Path(f"/proc/{k}/cmdline").read_bytes()]
    assert workers
    for w in workers:  # the OOM killer, say; all of them, so that no live worker can finish the rest first
        with contextlib.suppress(ProcessLookupError):
            os.kill(w, signal.SIGKILL)
    assert p.stdin is not None
    p.stdin.write(("".join(json.dumps({"id": i, **GOOD_EN}) + "\n" for i in range(40))).encode())
    p.stdin.close()
    p.wait(60)
    assert p.stderr is not None
    err = p.stderr.read()
    assert p.returncode == 2, err.decode()
    assert b"worker process died" in err and b"Traceback" not in err
    assert out.read_text() == PREVIOUS_OUTPUT
    assert not [t for t in tmp_path.iterdir() if t.name.endswith(".tmp")]
    assert _gone(kids)


# -- the flags ------------------------------------------------------------------------------------


def test_default_workers_one_for_small_inputs_and_zero_means_every_core(hb: HandBundle, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import xtm.cpu
    from xtm.cli import infer as cli

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    monkeypatch.setattr(xtm.cpu, "idle_cores", lambda: cores)  # an idle machine

    src = _write(tmp_path / "docs.jsonl", _mixed_rows(20))
    assert cli._workers(None, str(src)) == 1 and cli._workers(None, "-") == 1
    assert cli._workers(0, str(src)) == cores and cli._workers(3, "-") == 3
    big = tmp_path / "big.jsonl"
    with open(big, "wb") as f:
        f.truncate(cli.WORKERS_MIN_BYTES)
    assert cli._workers(None, str(big)) == max(1, min(cores, cli.DEFAULT_MAX_WORKERS))
    # A busy machine: no idle core, one process (extra ones would get no more CPU there).
    monkeypatch.setattr(xtm.cpu, "idle_cores", lambda: 0)
    assert cli._workers(None, str(big)) == 1 and cli._workers(2, str(big)) == 2
    monkeypatch.setattr(xtm.cpu, "idle_cores", lambda: 1)  # one core idle
    assert cli._workers(None, str(big)) == 1
    # Without /proc/stat (macOS): the load average, as such a system tells it; without that either, every core.
    monkeypatch.setattr(xtm.cpu, "idle_cores", lambda: None)
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores) + 3, 0.0, 0.0))
    assert cli._workers(None, str(big)) == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert cli._workers(None, str(big)) == max(1, min(cores, cli.DEFAULT_MAX_WORKERS))

    def no_load_average() -> tuple[float, float, float]:
        raise OSError("no load average")

    monkeypatch.setattr(os, "getloadavg", no_load_average)
    assert cli._workers(None, str(big)) == max(1, min(cores, cli.DEFAULT_MAX_WORKERS))
    p = _run([str(src), "--bundle", str(hb.path), "-v", "--out", str(tmp_path / "o.jsonl")])
    assert p.returncode == 0 and b"1 inference process" in p.stderr


@pytest.mark.parametrize("args", [["--workers", "-1"], ["--workers", "two"], ["--segmenters", "turbo"]])
def test_bad_worker_and_segmenter_flags_are_one_line(hb: HandBundle, tmp_path: Path, args: list[str]) -> None:
    src = _write(tmp_path / "docs.jsonl", _mixed_rows(3))
    r = CliRunner().invoke(main, [str(src), "--bundle", str(hb.path), *args])
    assert r.exit_code == 2 and "Traceback" not in r.output


def test_workers_go_with_the_local_engine(hb: HandBundle, tmp_path: Path) -> None:
    src = _write(tmp_path / "docs.jsonl", _mixed_rows(3))
    r = CliRunner().invoke(main, [str(src), "--bundle", str(hb.path), "--engine", "ray", "--workers", "2"])
    assert r.exit_code == 2 and "--workers goes with the local engine" in r.output
    # a count no machine here serves: refused before a process starts (each is an interpreter and a model)
    out = tmp_path / "o.jsonl"
    r = CliRunner().invoke(main, [str(src), "--bundle", str(hb.path), "--workers", "100000", "--out", str(out)])
    assert r.exit_code == 2 and "workers=100000: more than 4 per core" in r.output and not out.exists()


def test_segmenter_choices_are_the_tokenizers(hb: HandBundle, tmp_path: Path) -> None:
    from xtm.cli import infer as cli
    from xtm.runtime import tokenize

    assert cli.SEGMENTERS == tokenize.SEGMENTERS
    src = _write(tmp_path / "docs.jsonl", _mixed_rows(40))
    got = {m: _run([str(src), "--bundle", str(hb.path), "--segmenters", m, "--batch-size", "2"])
           for m in ("auto", "reference")}
    assert got["auto"].returncode == 0 and got["auto"].stdout == got["reference"].stdout


def test_segmenters_flag_reaches_the_workers(tmp_path: Path) -> None:
    """--segmenters fast with a janome bundle: MeCab's tokens in every worker (the env is inherited)."""
    pytest.importorskip("fugashi")
    pytest.importorskip("ipadic")
    b = make_bundle(tmp_path / "ja", vocabs={"en": ["market"], "ja": ["試着", "段階", "試", "着", "大きい"]},
                    num_topics=2)
    manifest = json.loads((b.path / "manifest.json").read_text())
    assert manifest["encoders"]["ja"]["tokenizer"]["kind"] == "janome"
    src = _write(tmp_path / "ja.jsonl", [json.dumps({"id": i, "text": "試着段階で大きい", "lang": "ja"},
                                                    ensure_ascii=False) for i in range(16)])
    res = {}
    for m in ("auto", "fast"):
        for w in ("1", "2"):
            p = _run([str(src), "--bundle", str(b.path), "--segmenters", m, "--workers", w, "--batch-size", "1"])
            assert p.returncode == 0, p.stderr
            res[m, w] = p.stdout
    assert res["auto", "1"] == res["auto", "2"] and res["fast", "1"] == res["fast", "2"]
    assert res["auto", "1"] != res["fast", "1"]  # janome and MeCab read 試着段階 differently


def test_a_bad_segmenters_variable_is_one_error_before_any_document(hb: HandBundle, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """It used to pass unnoticed on English input and cost every Chinese line of a mixed file."""
    src = _write(tmp_path / "docs.jsonl", [json.dumps({"id": 1, **GOOD_EN}),
                                           json.dumps({"id": 2, "text": "中国经济增长", "lang": "zh"},
                                                      ensure_ascii=False)])
    monkeypatch.setenv("XTM_SEGMENTERS", "turbo")
    out = tmp_path / "out.jsonl"
    r = _run([str(src), "--bundle", str(hb.path), "--out", str(out)])
    assert r.returncode == 2 and not out.exists()
    assert b"XTM_SEGMENTERS must be one of auto, reference, got 'turbo'" in r.stderr
    assert b"Traceback" not in r.stderr


def test_fast_from_the_environment_is_refused_but_the_flag_is_served(hb: HandBundle, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    src = _write(tmp_path / "docs.jsonl", [json.dumps({"id": 1, **GOOD_EN})])
    monkeypatch.setenv("XTM_SEGMENTERS", "fast")
    r = _run([str(src), "--bundle", str(hb.path)])
    assert r.returncode == 2 and b"never by the environment" in r.stderr and b"Traceback" not in r.stderr
    r = _run([str(src), "--bundle", str(hb.path), "--segmenters", "fast"])
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 1


_HALF_SENT = '''
import gc, multiprocessing, os, struct, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.queues import SimpleQueue

def half_sent():
    # what a worker stopped while it sends its rows leaves: a message's length, then part of it
    queue = next(o for o in gc.get_objects() if isinstance(o, SimpleQueue) and o._writer is not None
                 and not o._writer.closed and o._reader is not None)
    os.write(queue._writer.fileno(), struct.pack("!i", 1000) + b"x" * 10)
    time.sleep(0.5)
    os._exit(1)

if __name__ == "__main__":
    from xtm.runtime.engine import stop_executor
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
    pool.submit(half_sent)
    time.sleep(3)  # the manager thread now waits in recv() for the other 990 bytes
    if sys.argv[1] == "stop":
        stop_executor(pool)
    print("leaving", flush=True)
'''


def test_a_pool_whose_worker_died_mid_message_lets_the_process_exit(tmp_path: Path) -> None:
    """Found by a review: Ctrl-C to `xtm-infer --workers 2`'s process group hung 2 runs in 30 at exit, the pool's
    manager thread in recv() for the rest of a message a killed worker had half sent (Python's exit joins that
    thread without a limit). The same state made on purpose: without stop_executor the process never exits."""
    script = tmp_path / "half_sent.py"
    script.write_text(_HALF_SENT, encoding="utf-8")
    stopped = subprocess.run([sys.executable, str(script), "stop"], capture_output=True, text=True, timeout=60)
    assert stopped.returncode == 0 and "leaving" in stopped.stdout, stopped.stderr
    with pytest.raises(subprocess.TimeoutExpired):  # the state is real: left alone, exit waits for ever
        subprocess.run([sys.executable, str(script), "plain"], capture_output=True, text=True, timeout=15)

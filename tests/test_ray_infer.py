"""Batch inference on Ray Data (xtm.runtime.ray, xtm-infer --engine ray) against the local engine.

One local Ray instance (2 CPUs, no dashboard) serves the whole module. Every comparison is with
the single-process engine on the same rows: same bytes out, same bad-row messages.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bundle_fixture import EN_VOCAB, PREVIOUS_OUTPUT, ZH_VOCAB, HandBundle, make_bundle
from click.testing import CliRunner
from log_isolation import library_logging  # noqa: F401  (a fixture)

from xtm.cli.infer import main
from xtm.errors import XtmError

# Protection for a bare runtime install only: ray is in the dev extra, so CI runs these tests.
ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

N_DOCS = 400


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def _docs(seed: int = 0) -> list[dict]:
    """N_DOCS documents in the bundle's languages; ids of several types, some langs left to detection."""
    rng = random.Random(seed)
    rows: list[dict] = []
    for i in range(N_DOCS):
        if i % 2:
            row = {"text": " ".join(rng.choices(EN_VOCAB, k=rng.randint(1, 15))), "lang": "en"}
        else:
            row = {"text": "".join(rng.choices(ZH_VOCAB, k=rng.randint(1, 10))), "lang": "zh"}
        if i % 7 == 0:
            del row["lang"]  # detected
        if i % 5 == 0:
            row["id"] = i
        elif i % 5 != 1:  # i % 5 == 1: no id, the line number stands in
            row["id"] = f"doc-{i}"
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    """TimeoutError in this (the main) thread after `seconds`: a run that hangs fails its test instead
    of stalling the suite for ever."""
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _local(args: list[str]) -> tuple[str, list[str]]:
    r = CliRunner().invoke(main, args, catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    return r.stdout, r.stderr.splitlines()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("inputs")
    rows: list = _docs()
    # Bad lines the local engine reports and skips, at places that cross the actors' batches.
    rows[3:3] = ["{not json", {"id": "x", "text": "  "}, {"text": "bonjour", "lang": "fr"}]
    rows.insert(250, "")  # blank: not a row
    rows.insert(300, {"id": "long", "text": "market " * 15_000, "lang": "en"})  # truncated, with a warning
    # Hostile rows both engines must handle alike: ids JSON cannot hold as such (written escaped / as
    # strings), languages the bundle cannot read (bad rows, never read as English).
    rows[100:100] = ['{"id": "\\ud800", "text": "bank market", "lang": "en"}', '{"id": NaN, "text": "stock"}',
                     {"id": "ar", "text": "مرحبا بالعالم، كيف حالك اليوم؟"}, {"id": "emoji", "text": "😀🎉"}]
    src = _write_jsonl(d / "docs.jsonl", rows)
    # A Parquet copy of other documents (one type per column: ids as strings), and its JSONL twin.
    prow = [{"id": f"p{i}", "text": r["text"], "lang": r.get("lang")} for i, r in enumerate(_docs(seed=1))]
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(prow), d / "docs.parquet", row_group_size=64)
    twin = _write_jsonl(d / "parquet_twin.jsonl", [{k: v for k, v in r.items() if v is not None} for r in prow])
    bad = pa.table({"text": ["the stock market", None, " ", "bonjour"], "lang": ["en", "en", "en", "fr"]})
    pq.write_table(bad, d / "bad.parquet")
    return {"jsonl": src, "parquet": d / "docs.parquet", "twin": twin, "bad_parquet": d / "bad.parquet"}


def test_infer_files_writes_the_local_engines_csv(ray_local, hb: HandBundle, inputs: dict[str, Path],
                                                 tmp_path: Path) -> None:
    """output_format: Python callers of infer_files get the tables xtm-infer --engine ray writes."""
    from xtm.runtime.ray import infer_files

    local = tmp_path / "local.csv"
    _local([str(inputs["jsonl"]), "--bundle", str(hb.path), "--top-k", "2", "--out", str(local)])
    out = tmp_path / "ray.csv"
    infer_files([inputs["jsonl"]], hb.path, out, num_actors=1, threads_per_actor=1, top_k=2, progress=False,
                report=lambda _: None)  # (the format by the name, as the local engine)
    assert out.read_bytes() == local.read_bytes()
    # options= as the engine's other functions take it (threads: the actors' threads_per_actor), keywords as overrides
    from xtm.runtime.engine import InferenceOptions
    from xtm.runtime.ray import infer_dataset

    out.unlink()
    infer_files([inputs["jsonl"]], hb.path, out, options=InferenceOptions(top_k=5, threads=1), top_k=2, num_actors=1,
                progress=False, report=lambda _: None)
    assert out.read_bytes() == local.read_bytes()
    for call in (lambda: infer_files([inputs["jsonl"]], hb.path, out, num_actor=1),
                 lambda: infer_dataset(ray.data.from_items([{"text": "bank"}]), hb.path, topk=2)):
        with pytest.raises(XtmError, match=r"^infer_(files|dataset): unknown keyword argument '(num_actor|topk)' "
                                           r"\(InferenceOptions fields: top_k, "):
            call()
    with pytest.raises(XtmError, match=r"infer_dataset: max_bad, strict do not apply: each bad row comes back"):
        infer_dataset(ray.data.from_items([{"text": "bank"}]), hb.path, strict=True, max_bad=3)
    with pytest.raises(XtmError, match="output format must be one of auto, jsonl, csv, parquet"):
        infer_files([inputs["jsonl"]], hb.path, None, output_format="xlsx")
    with pytest.raises(XtmError, match="TSV is not written"):
        infer_files([inputs["jsonl"]], hb.path, tmp_path / "o.tsv")


def test_infer_files_jsonl_and_parquet_match_the_local_engine(ray_local, hb: HandBundle, inputs: dict[str, Path],
                                                              tmp_path: Path) -> None:
    from xtm.runtime.ray import infer_files

    expected, local_err = _local([str(inputs["jsonl"]), "--bundle", str(hb.path), "--top-k", "3"])
    local_pq, _ = _local([str(inputs["parquet"]), "--bundle", str(hb.path), "--top-k", "3"])
    local_bad, bad_err = _local([str(inputs["bad_parquet"]), "--bundle", str(hb.path), "--top-k", "3"])
    # The local engine reads a Parquet file as it reads the same rows in JSONL.
    assert local_pq == _local([str(inputs["twin"]), "--bundle", str(hb.path), "--top-k", "3"])[0]
    messages: list[str] = []
    out = tmp_path / "ray.jsonl"
    res = infer_files([inputs["jsonl"], inputs["parquet"], inputs["bad_parquet"]], hb.path, out, num_actors=2,
                      threads_per_actor=1, top_k=3, batch_size=32, report=messages.append, progress=False)
    got = out.read_text(encoding="utf-8")
    # Byte for byte: same ids, the same 6-decimal weights, the same top topics and words, same order.
    assert got == expected + local_pq + local_bad
    exp_rows = [json.loads(line) for line in (expected + local_pq).splitlines()]
    got_rows = [json.loads(line) for line in got.splitlines()][:len(exp_rows)]
    assert [r["id"] for r in got_rows] == [r["id"] for r in exp_rows]
    assert len(got_rows) == 2 * N_DOCS + 3
    assert {"\ud800", "NaN"} <= {r["id"] for r in got_rows}
    # Same bad-row reports, in input order, named by file and line (Parquet: row number).
    bp = inputs["bad_parquet"]
    assert messages == [m for m in local_err + bad_err if not m.startswith("xtm-infer: warning: skipped")]
    assert messages[-3:] == [f"{bp}:2: missing field 'text'", f"{bp}:3: empty text",
                             f"{bp}:4: language 'fr' is not served by this bundle (it serves en, zh)"]
    assert any("warning: text has 105,000 characters" in m for m in messages)
    assert any("detected language 'ar'" in m for m in messages) and any("no language detected" in m for m in messages)
    assert (res.total, res.skipped) == (N_DOCS + 8 + N_DOCS + 4, 5 + 3)


def test_cli_engine_ray_on_a_directory_matches_local_and_strict_writes_nothing(
        ray_local, hb: HandBundle, inputs: dict[str, Path], tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_bytes(inputs["jsonl"].read_bytes())
    (d / "b.parquet").write_bytes(inputs["parquet"].read_bytes())
    (d / "notes.txt").write_text("not an input\n")  # ignored inside a directory
    # Jupyter's copy of a.jsonl, in a hidden directory: read, it doubled every document.
    (d / ".ipynb_checkpoints").mkdir()
    (d / ".ipynb_checkpoints" / "a-checkpoint.jsonl").write_bytes(inputs["jsonl"].read_bytes())
    flags = ["--bundle", str(hb.path), "--top-k", "2", "--sparse-theta", "--batch-size", "64"]
    out = tmp_path / "ray.jsonl"
    r = CliRunner().invoke(main, [str(d), *flags, "--engine", "ray", "--actors", "2", "--out", str(out)],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    local_a, err_a = _local([str(inputs["jsonl"]), *flags])
    local_b, _ = _local([str(inputs["parquet"]), *flags])
    assert out.read_text(encoding="utf-8") == local_a + local_b
    assert f"{d / 'a.jsonl'}:4: invalid JSON" in r.stderr
    assert f"skipped 5 of {N_DOCS + 8 + N_DOCS} lines" in r.stderr
    assert f"wrote {2 * N_DOCS + 3} results to {out}" in r.stderr

    # --strict: the first bad line (a.jsonl:4) is fatal and --out is not written at all.
    out2 = tmp_path / "strict.jsonl"
    r = CliRunner().invoke(main, [str(d), *flags, "--engine", "ray", "--actors", "1", "--out", str(out2), "--strict"])
    assert r.exit_code == 2
    assert f"error: {d / 'a.jsonl'}:4: invalid JSON" in r.stderr
    assert not out2.exists() and not list(tmp_path.glob(".strict.jsonl.*"))


def test_ray_max_bad_and_no_results_leave_out_unwritten(ray_local, hb: HandBundle, tmp_path: Path) -> None:
    from xtm.runtime.engine import NoResultsError
    from xtm.runtime.ray import infer_files

    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank", "lang": "en"}, "{bad", "{bad", {"text": "😀"}])
    with pytest.raises(XtmError, match=r"d\.jsonl:3: invalid JSON.*more than 1 \(--max-bad\)"):
        infer_files([src], hb.path, out, num_actors=1, max_bad=1, report=lambda m: None, progress=False)
    with pytest.raises(XtmError, match=r"too many bad lines: 3 of 4"):
        infer_files([src], hb.path, out, num_actors=1, max_share=0.5, report=lambda m: None, progress=False)
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["{bad", {"text": "😀"}])
    with pytest.raises(NoResultsError, match="no line could be inferred: all 2 lines were bad"):
        infer_files([bad], hb.path, out, num_actors=1, report=lambda m: None, progress=False)
    assert out.read_text() == PREVIOUS_OUTPUT and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.parametrize(("kwargs", "needle"), [({"num_actors": 0}, "num_actors"),
                                                ({"num_actors": 1.5}, "num_actors"),
                                                ({"threads_per_actor": "2"}, "threads_per_actor"),
                                                ({"threads_per_actor": 0}, "threads_per_actor")])
def test_ray_counts_must_be_whole_numbers(ray_local, hb: HandBundle, tmp_path: Path, kwargs: dict,
                                          needle: str) -> None:
    from xtm.runtime.ray import infer_files

    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank", "lang": "en"}])
    with pytest.raises(XtmError, match=rf"^{needle} must be a whole number of at least 1"):
        infer_files([src], hb.path, tmp_path / "o.jsonl", report=lambda m: None, progress=False, **kwargs)
    assert not (tmp_path / "o.jsonl").exists()


def test_damaged_bundle_fails_on_the_driver_naming_the_file(ray_local, hb: HandBundle, inputs: dict[str, Path],
                                                            tmp_path: Path) -> None:
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(hb.path, bad)
    with open(bad / "vocab_en.txt", "a", encoding="utf-8") as f:
        f.write("extra\n")
    r = CliRunner().invoke(main, [str(inputs["jsonl"]), "--bundle", str(bad), "--engine", "ray", "--out",
                                  str(tmp_path / "o.jsonl")])
    assert r.exit_code == 2
    assert f"error: {bad / 'vocab_en.txt'}: checksum mismatch" in r.stderr
    assert not (tmp_path / "o.jsonl").exists()


def test_infer_dataset_columns_equal_the_runtime(ray_local, hb: HandBundle) -> None:
    import numpy as np
    from ray.data import DataContext

    from xtm.runtime.model import TopicModel
    from xtm.runtime.ray import infer_dataset

    docs = _docs(seed=2)
    items = [{"id": f"r{i}", "text": d["text"], "lang": d.get("lang")} for i, d in enumerate(docs)]
    items.append({"id": "ar", "text": "مرحبا بالعالم، كيف حالك اليوم؟", "lang": None})  # detected, not served
    items.append({"id": "bad", "text": "", "lang": None})
    ctx = DataContext.get_current()
    saved = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        out = infer_dataset(ray.data.from_items(items), hb.path, num_actors=1, top_k=2, batch_size=50).take_all()
    finally:
        ctx.execution_options.preserve_order = saved
    ref = TopicModel.load(hb.path, threads=1).infer([d["text"] for d in docs], [d.get("lang") for d in docs],
                                                     top_k=2)
    good = out[:-2]
    assert [o["id"] for o in out] == [it["id"] for it in items]
    assert [o["lang"] for o in good] == ref.langs and {o["route"] for o in good} == {"bow"}
    np.testing.assert_array_equal(np.stack([o["theta"] for o in good]), ref.theta)
    np.testing.assert_array_equal(np.stack([o["top_ids"] for o in good]), ref.top_ids)
    np.testing.assert_array_equal(np.stack([o["top_weights"] for o in good]), ref.top_weights)
    assert [o["empty"] for o in good] == ref.empty.tolist()
    np.testing.assert_array_equal(np.array([np.nan if o["lang_conf"] is None else o["lang_conf"] for o in good],
                                           dtype=np.float32), ref.lang_conf)
    np.testing.assert_array_equal(np.array([o["oov_ratio"] for o in good], dtype=np.float32), ref.oov_ratio)
    assert all(o["error"] is None for o in good)
    assert "detected language 'ar'" in out[-2]["error"] and out[-2]["theta"] is None and out[-2]["route"] is None
    assert out[-1]["error"] == "empty text" and out[-1]["theta"] is None


def test_runtime_and_cli_never_import_ray() -> None:
    code = ("import sys, xtm.runtime, xtm.runtime.model, xtm.runtime.records, xtm.runtime.engine, xtm.cli.infer; "
            "assert 'ray' not in sys.modules, 'ray imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_ray_is_one_clear_error(monkeypatch: pytest.MonkeyPatch, hb: HandBundle, tmp_path: Path) -> None:
    from xtm.runtime import ray as xray

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(XtmError, match=r'pip install "xtm\[ray\]"'):
        xray.infer_files([_write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])], hb.path, tmp_path / "o.jsonl")
    r = CliRunner().invoke(main, [str(tmp_path / "d.jsonl"), "--bundle", str(hb.path), "--engine", "ray"])
    assert r.exit_code == 2 and 'pip install "xtm[ray]"' in r.stderr


def test_local_engine_refuses_what_only_ray_reads(hb: HandBundle, tmp_path: Path) -> None:
    r = CliRunner().invoke(main, [str(tmp_path), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and "--engine ray" in r.stderr
    r = CliRunner().invoke(main, [str(_write_jsonl(tmp_path / "d.jsonl", [{"text": "x"}])), "--bundle", str(hb.path),
                                  "--actors", "2"])
    assert r.exit_code == 2 and "--engine ray" in r.stderr
    r = CliRunner().invoke(main, ["--help"])
    assert "--engine" in r.stdout and "--address" in r.stdout and "Parquet" in r.stdout


def test_ray_output_that_cannot_be_written_is_one_error(ray_local, hb: HandBundle, tmp_path: Path) -> None:
    """A full device (or disk) under --out: one error line and exit 2, as the local engine (the
    writer is the engine's, shared by both), not a traceback."""
    import os

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank market", "lang": "en"}])
    for engine in ("local", "ray"):
        r = CliRunner().invoke(main, [str(src), "--bundle", str(hb.path), "--engine", engine, "--out", "/dev/full"])
        assert r.exit_code == 2, (engine, r.output)
        assert r.stderr == "error: /dev/full: cannot write: No space left on device\n", engine


def test_a_bundle_the_local_engine_serves_is_packed_for_ray(hb: HandBundle, tmp_path: Path) -> None:
    """A manifest may spell its checksums in capitals (read_manifest accepts them): the Ray engine
    compared them case-sensitively with its own copy of the check and refused the bundle. Now both
    engines use the format owner's check_checksum."""
    import shutil

    from xtm.runtime import TopicModel
    from xtm.runtime.ray import pack_bundle

    b = tmp_path / "upper"
    shutil.copytree(hb.path, b)
    m = json.loads((b / "manifest.json").read_text(encoding="utf-8"))
    m["files"] = {name: digest.upper() for name, digest in m["files"].items()}
    (b / "manifest.json").write_text(json.dumps(m), encoding="utf-8")
    TopicModel.load(b)  # the local engine serves it
    files = pack_bundle(b)
    assert set(files) == {"manifest.json", *m["files"]}
    assert files["vocab_en.txt"] == (b / "vocab_en.txt").read_bytes()
    with open(b / "vocab_en.txt", "a", encoding="utf-8") as f:  # a changed file is still refused, naming it
        f.write("extra\n")
    with pytest.raises(XtmError, match="checksum mismatch") as e:
        pack_bundle(b)
    assert str(b / "vocab_en.txt") in str(e.value)


@pytest.mark.usefixtures("library_logging")
def test_bad_rows_go_to_the_logger_by_default(ray_local, hb: HandBundle, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Without a report callback or a progress bar, infer_files reports bad rows to the
    "xtm.runtime.ray" logger (warning level), as the local engine does to its own, never by
    printing: a Python user's stderr stays theirs (xtm-infer passes its own reporter)."""
    import logging

    from xtm.runtime.ray import infer_files

    src = _write_jsonl(tmp_path / "d.jsonl", ["{bad", {"text": "bank market", "lang": "en"}])
    with caplog.at_level(logging.WARNING, logger="xtm.runtime"):
        counts = infer_files([src], hb.path, tmp_path / "o.jsonl", num_actors=1, progress=False)
    assert (counts.written, counts.skipped) == (1, 1)
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("xtm.")]
    assert len(got) == 1 and got[0][:2] == ("xtm.runtime.ray", logging.WARNING)
    assert got[0][2].startswith(f"{src}:1: ")
    assert str(src) not in capsys.readouterr().err


def test_hidden_directories_are_not_inputs(tmp_path: Path) -> None:
    """A directory's hidden files were skipped but not the files inside its hidden directories:
    .ipynb_checkpoints/a-checkpoint.jsonl doubled every document, .git/HEAD.json was read as input.
    Nothing below a hidden directory is read now; a hidden directory named as the input still is."""
    from xtm.runtime.ray import list_input_files

    root = tmp_path / ".data"  # named by the user: read
    for rel in ("a.jsonl", "sub/b.parquet", ".ipynb_checkpoints/a-checkpoint.jsonl", ".git/HEAD.json",
                "sub/.cache/c.jsonl", ".hidden.jsonl"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("{}\n")
    assert list_input_files([root]) == [(str(root / "a.jsonl"), "jsonl"), (str(root / "sub" / "b.parquet"), "parquet")]
    only = tmp_path / "only"
    (only / ".ipynb_checkpoints").mkdir(parents=True)
    (only / ".ipynb_checkpoints" / "a-checkpoint.jsonl").write_text("{}\n")
    with pytest.raises(XtmError, match="no .jsonl"):
        list_input_files([only])


def test_threads_no_node_has_are_refused_not_a_hang(ray_local, hb: HandBundle, tmp_path: Path) -> None:
    """--threads 4 on a 2-CPU cluster: each actor reserves 4 CPUs on one node, Ray never starts one and
    the run waited for ever ("Cluster resources are not enough ... may hang forever"). Now one error
    before any actor starts."""
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank market", "lang": "en"}])
    out = tmp_path / "o.jsonl"
    start = time.monotonic()
    with _deadline(60):
        r = CliRunner().invoke(main, [str(src), "--bundle", str(hb.path), "--engine", "ray", "--actors", "2",
                                      "--threads", "4", "--out", str(out)])
    assert time.monotonic() - start < 60
    assert r.exit_code == 2, (r.exception, r.output)
    assert r.stderr == ("error: --threads 4 needs 4 CPUs on one Ray node for each actor, and the largest node has "
                        "2: no actor could start (use --threads 2 or fewer)\n")
    assert not out.exists()


@pytest.mark.usefixtures("library_logging")
def test_more_actors_than_the_nodes_hold_is_a_warning(ray_local, caplog: pytest.LogCaptureFixture) -> None:
    """Actors beyond what the nodes hold wait for CPUs (they start as CPUs free up): said, not refused."""
    import logging

    from xtm.runtime.ray import _check_cpus

    with caplog.at_level(logging.WARNING, logger="xtm.runtime.ray"):
        _check_cpus(1, 2)
        assert not caplog.records
        _check_cpus(1, 3)
    assert [r.getMessage() for r in caplog.records] == [
        "--actors 3 x --threads 1: the Ray nodes (2 CPUs) hold 2 such actors at a time; the others wait for free CPUs"]


@pytest.mark.usefixtures("library_logging")
def test_on_a_cluster_at_an_address_a_node_too_small_is_a_warning(ray_local, caplog: pytest.LogCaptureFixture,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster joined by --address may have an autoscaler that adds a larger node: warned, not refused. (The
    fixture's Ray is one node on this machine, the caller's own: refused, as the CLI test above shows; here it
    stands for a cluster elsewhere.)"""
    import logging

    import xtm.runtime.ray as xray

    assert xray._one_node_here(ray) and not xray._started_here
    monkeypatch.setattr(xray, "_one_node_here", lambda ray: False)
    with caplog.at_level(logging.WARNING, logger="xtm.runtime.ray"):
        xray._check_cpus(4, 1)
    assert "no Ray node up now has 4 CPUs (the largest has 2)" in caplog.records[0].getMessage()


def test_an_unreachable_cluster_address_is_one_error_not_a_hang(hb: HandBundle, tmp_path: Path) -> None:
    """--address (or RAY_ADDRESS) naming a port nothing listens on: ray.init retried for ever, logging
    "Failed to connect to GCS" every 5 s and ignoring SIGTERM for ~20 s. Now a TCP connection is tried
    first (CONNECT_TIMEOUT_S) and the run stops with one error line. A fresh process: this module's
    Ray is already initialised, and ray.init must be the first."""
    from xtm.runtime.ray import _host_port

    assert _host_port("ray://head:10001") == ("head", 10001) and _host_port("[::1]:6379") == ("::1", 6379)
    assert _host_port("auto") is _host_port("local") is _host_port("head") is _host_port("http://h:1") is None
    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank market", "lang": "en"}])
    cmd = [sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(hb.path), "--engine", "ray"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with socket.socket() as held:  # bound, not listening: connections to its port are refused
        held.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{held.getsockname()[1]}"
        for args, extra_env, tail in ((["--address", addr], {}, ""),
                                      ([], {"RAY_ADDRESS": addr}, "; it comes from RAY_ADDRESS (unset it for a "
                                                                   "local Ray)")):
            start = time.monotonic()
            r = subprocess.run([*cmd, *args, "--out", str(tmp_path / "o.jsonl")], env={**env, **extra_env},
                               capture_output=True, text=True, timeout=60)
            assert time.monotonic() - start < 60
            assert r.returncode == 2, r.stderr
            want = f"error: cannot reach the Ray cluster at {addr} (Connection refused){tail}"
            assert r.stderr.splitlines()[-1] == want
    assert not (tmp_path / "o.jsonl").exists()


@contextlib.contextmanager
def _tcp_server(answer: bytes | None) -> Iterator[str]:
    """A port that accepts connections and is not Ray: it answers `answer` to whatever comes (a web server's
    400), or says nothing and keeps the connection open (None). Yields HOST:PORT."""
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # shut down
            held.append(conn)
            if answer is not None:
                with contextlib.suppress(OSError):  # one client gone early does not end the serving
                    conn.recv(1024)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.shutdown(socket.SHUT_RDWR)  # wakes accept(): close() alone leaves the port serving
        server.close()
        thread.join(5)
        for conn in held:
            conn.close()


def test_an_address_where_something_else_listens_is_one_error_not_a_hang(hb: HandBundle, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A port that accepts TCP but is not Ray (a web server, a silent program): the TCP check passed and
    ray.init waited there for ever. Now a gRPC greeting must be answered as an HTTP/2 server does (Ray's GCS
    and its ray:// client server are gRPC servers; the GCS is the positive case below, the ray:// server
    needs grpcio, which the dev install lacks). With TLS on, the greeting cannot be sent in clear, so only the
    connection is tried; through an HTTP proxy, nothing."""
    import xtm.runtime.ray as xray

    for name in ("RAY_USE_TLS", "RAY_grpc_enable_http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(xray, "CONNECT_TIMEOUT_S", 1.0)
    with _tcp_server(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as web:
        for address in (web, f"ray://{web}"):
            with pytest.raises(XtmError, match=rf"cannot reach the Ray cluster at {address} \(something listens "
                                               r"there, but not a Ray GCS or ray:// server speaking gRPC in clear "
                                               r"text; if the cluster uses TLS, set RAY_USE_TLS=1\)$"):
                xray._check_reachable(address)
        for switch in ("RAY_USE_TLS", "RAY_grpc_enable_http_proxy"):
            monkeypatch.setenv(switch, "True")
            xray._check_reachable(web)
            monkeypatch.delenv(switch)
        src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank market", "lang": "en"}])
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_USE_TLS")}
        r = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(hb.path), "--engine",
                            "ray", "--address", web, "--out", str(tmp_path / "o.jsonl")],
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.endswith(
            f"error: cannot reach the Ray cluster at {web} (something listens there, but not a Ray GCS or ray:// "
            "server speaking gRPC in clear text; if the cluster uses TLS, set RAY_USE_TLS=1)\n"), r.stderr
        assert not (tmp_path / "o.jsonl").exists()
    with _tcp_server(None) as silent, pytest.raises(XtmError, match=r"\(no answer in 1 s\)$"):
        xray._check_reachable(silent)
    with pytest.raises(XtmError, match=r"at a\.\.b:80 \(not a valid host name\)$"):
        xray._check_reachable("a..b:80")


def test_a_real_clusters_address_passes_the_check(ray_local, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GCS of a running Ray answers the gRPC greeting: an address that works is never refused."""
    import xtm.runtime.ray as xray

    for name in ("RAY_USE_TLS", "RAY_grpc_enable_http_proxy"):  # either would skip the greeting
        monkeypatch.delenv(name, raising=False)
    xray._check_reachable(ray.get_runtime_context().gcs_address)


def test_an_unreadable_input_is_one_error_naming_it(ray_local, hb: HandBundle, tmp_path: Path) -> None:
    """An I/O error in a reader task (/proc/self/mem reads as EIO) printed 150 lines of Ray tracebacks
    and ended `error: ray::MapBatches(_read_rows)() ... OSError: [Errno 5]`, no file named. Now the
    local engine's one line: the reader names the file, Ray Data's traces go to its log file only."""
    if not os.path.exists("/proc/self/mem"):
        pytest.skip("no /proc/self/mem here")
    out = tmp_path / "o.jsonl"
    with _deadline(120):
        r = CliRunner().invoke(main, ["/proc/self/mem", "--bundle", str(hb.path), "--engine", "ray", "--out",
                                      str(out)])
    assert r.exit_code == 2, (r.exception, r.output)
    assert r.stderr == "error: /proc/self/mem: cannot read: Input/output error\n"
    assert not out.exists()


def test_min_lang_conf_reaches_the_ray_actors(ray_local, hb: HandBundle, tmp_path: Path) -> None:
    rows = [{"id": "q", "text": "bank market"}, {"id": "s", "text": "The stock market fell sharply today."}]
    src = _write_jsonl(tmp_path / "d.jsonl", rows)
    args = [str(src), "--bundle", str(hb.path), "--min-lang-conf", "0.5"]
    local, local_err = _local(args)
    r = CliRunner().invoke(main, [*args, "--engine", "ray", "--actors", "1"], catch_exceptions=False)
    assert r.exit_code == 0, r.stderr
    assert r.stdout == local and [json.loads(line)["id"] for line in local.splitlines()] == ["s"]
    assert any(f"{src}:1: detected language 'en' with probability" in line for line in r.stderr.splitlines())
    assert any("under min_lang_conf 0.5" in line for line in local_err)


def test_an_unserved_lang_is_refused_before_ray_starts(hb: HandBundle, tmp_path: Path) -> None:
    # Checked on the driver from the manifest: each actor refused it after the bundle was shipped.
    from xtm.errors import XtmError
    from xtm.runtime.ray import infer_files

    src = _write_jsonl(tmp_path / "d.jsonl", [{"text": "bank market"}])
    with pytest.raises(XtmError, match="--lang 'fr' is not served by this bundle on route bow"):
        infer_files([src], hb.path, tmp_path / "out.jsonl", lang="fr", route="bow")
    assert not (tmp_path / "out.jsonl").exists()


def test_renamed_fields_read_by_ray_as_by_the_local_engine(ray_local, hb: HandBundle, tmp_path: Path) -> None:
    """--text-field/--lang-field/--id-field reach Ray's readers (Parquet columns) and actors (JSONL lines), and
    infer_dataset's columns: the same lines as the local engine."""
    import pyarrow as pa
    from ray.data import DataContext

    from xtm.runtime.ray import infer_dataset, infer_files

    names = {"text": "body", "lang": "locale", "id": "doc_id"}
    rows = [{**{names[k]: v for k, v in d.items()}, "doc_id": f"d{i}"} for i, d in enumerate(_docs(seed=3)[:60])]
    src = _write_jsonl(tmp_path / "renamed.jsonl", rows)
    pq.write_table(pa.Table.from_pylist([{"doc_id": r["doc_id"], "body": r["body"], "locale": r.get("locale")}
                                         for r in rows]), tmp_path / "renamed.parquet")
    flags = ["--text-field", "body", "--lang-field", "locale", "--id-field", "doc_id"]
    expected = _local([str(src), "--bundle", str(hb.path), *flags])[0]
    assert expected == _local([str(tmp_path / "renamed.parquet"), "--bundle", str(hb.path), *flags])[0]
    out = tmp_path / "ray.jsonl"
    res = infer_files([src, tmp_path / "renamed.parquet"], hb.path, out, num_actors=1, threads_per_actor=1,
                      progress=False, text_field="body", lang_field="locale", id_field="doc_id")
    assert out.read_text(encoding="utf-8") == expected * 2 and res.skipped == 0
    ctx = DataContext.get_current()
    saved = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        got = infer_dataset(ray.data.from_items([{"doc_id": r["doc_id"], "body": r["body"], "locale": r.get("locale")}
                                                 for r in rows]), hb.path, num_actors=1, text_field="body",
                            lang_field="locale", id_field="doc_id").take_all()
    finally:
        ctx.execution_options.preserve_order = saved
    lines = [json.loads(line) for line in expected.splitlines()]
    assert [g["id"] for g in got] == [x["id"] for x in lines] and [g["lang"] for g in got] == [x["lang"] for x in lines]
    assert all(g["error"] is None for g in got)


def test_ray_started_for_results_on_stdout_forwards_no_worker_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CI run's stdout held "(raylet) A worker died ..." after the JSONL results: Ray forwards its workers' and
    raylet's lines to the driver's stdout, where xtm-infer writes its results without --out. The Ray started for
    such a run forwards none (ray.init's log_to_driver; a stand-in for Ray records the call)."""
    import xtm.runtime.ray as ray_module

    calls: list[dict] = []

    class StandIn:  # (the boundary: which ray.init a run makes)
        @staticmethod
        def is_initialized() -> bool:
            return False

        @staticmethod
        def init(**kwargs) -> None:
            calls.append(kwargs)

        @staticmethod
        def shutdown() -> None:
            pass

    monkeypatch.setattr(ray_module, "_import_ray", lambda: StandIn)
    monkeypatch.setattr(ray_module, "_check_reachable", lambda address: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with ray_module._ray_session(None, log_to_driver=False):
        pass
    with ray_module._ray_session("ray://head:10001"):
        pass
    assert [c["log_to_driver"] for c in calls] == [False, True]

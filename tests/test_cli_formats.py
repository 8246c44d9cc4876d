"""Issue 16: xtm-infer in pipelines: plain text and Parquet in; JSONL, CSV or Parquet out; log
levels; progress lines a log file keeps; a quiet exit when the reader of stdout goes away."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from bundle_fixture import HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main

TEXTS = ["The stock market and the bank", "北京的经济增长很快", "", "Football: the team scored a goal in the match",
         "中国足球队在比赛中进球\r"]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def invoke(args: list[str], stdin: str | None = None):
    return CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)


def jsonl_for(hb: HandBundle, tmp_path: Path, extra: list[str] | None = None) -> list[dict]:
    """The reference: the same documents as JSONL records with line-number ids."""
    src = tmp_path / "ref.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t.rstrip("\r")}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(TEXTS, start=1) if t.strip()), encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path), *(extra or [])])
    assert r.exit_code == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_plain_text_is_one_document_per_line_with_line_number_ids(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes("\n".join(TEXTS).encode("utf-8") + b"\n\xff\xfe broken\n")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert out == jsonl_for(hb, tmp_path)  # the same lines as the equivalent JSONL records
    assert [o["id"] for o in out] == [1, 2, 4, 5] and [o["lang"] for o in out] == ["en", "zh", "en", "zh"]
    assert f"{src}:6: invalid UTF-8 (byte 0xff at offset 0)" in r.stderr and "skipped 1 of 5 lines" in r.stderr
    # The same file under another name, and from stdin, with --input-format text.
    other = tmp_path / "notes.data"
    other.write_bytes(src.read_bytes())
    assert invoke([str(other), "--bundle", str(hb.path), "--input-format", "text"]).stdout == r.stdout
    piped = invoke(["-", "--bundle", str(hb.path), "--input-format", "text"], stdin="\n".join(TEXTS) + "\n")
    assert piped.stdout == r.stdout


def test_a_text_line_is_never_read_as_json(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "t.txt"
    src.write_text('{"text": "not this", "lang": "fr"}\n', encoding="utf-8")
    out = json.loads(invoke([str(src), "--bundle", str(hb.path), "--top-k", "1"]).stdout)
    assert out["id"] == 1 and out["lang"] == "en"  # the whole line is English-looking text, detected


def test_csv_output_is_the_json_lines_as_a_table(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    out = tmp_path / "topics.csv"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--top-k", "2"])
    assert r.exit_code == 0 and f"wrote 4 results to {out}" in r.stderr
    table = list(csv.reader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    K = hb.num_topics
    assert table[0] == ["id", "lang", "lang_conf", "route", "empty", "oov_ratio", "topic_1", "weight_1", "topic_2",
                        "weight_2", "topic_1_words"] + [f"theta_{k}" for k in range(K)]
    ref = jsonl_for(hb, tmp_path, ["--top-k", "2"])
    assert len(table) == 1 + len(ref)
    for row, o in zip(table[1:], ref, strict=True):
        assert row[0] == str(o["id"]) and row[1] == o["lang"] and row[3] == o["route"]
        assert row[2] == ("" if o["lang_conf"] is None else f"{o['lang_conf']:.3f}")
        assert row[4] == str(o["empty"]).lower()
        assert [int(row[6]), int(row[8])] == [t["id"] for t in o["topics"]]
        assert [float(row[7]), float(row[9])] == [t["weight"] for t in o["topics"]]
        assert row[10].startswith("en: " + " ".join(o["topics"][0]["words"]["en"]) + " | zh: ")
        assert [float(x) for x in row[11:]] == o["theta"] and all(len(x.split(".")[1]) == 6 for x in row[11:])


def test_csv_with_sparse_theta_has_no_theta_columns_and_ids_as_text(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"id": "a,b \"quoted\"", "text": "the stock market", "lang": "en"},
        {"id": {"k": [1, 2]}, "text": "the team scored", "lang": "en"},
        {"id": None, "text": "the bank", "lang": "en"},
        {"id": "line\nbreak", "text": "the bank", "lang": "en"}])
        + '{"id": "\\ud800x", "text": "a goal", "lang": "en"}\n', encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path), "--format", "csv", "--sparse-theta", "--top-k", "1"])
    assert r.exit_code == 0, r.stderr
    table = list(csv.reader(io.StringIO(r.stdout, newline="")))
    assert table[0] == ["id", "lang", "lang_conf", "route", "empty", "oov_ratio", "topic_1", "weight_1",
                        "topic_1_words"]
    # Quotes, commas and newlines quoted; JSON ids as their JSON; null empty; a lone surrogate (which
    # no UTF-8 file can hold) as U+FFFD.
    assert [row[0] for row in table[1:]] == ['a,b "quoted"', '{"k":[1,2]}', "", "line\nbreak", "\ufffdx"]
    assert [row[2] for row in table[1:]] == [""] * 5  # lang given: no detection confidence


def test_parquet_in_and_out(hb: HandBundle, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"id": ["x", "y", "z"], "text": [TEXTS[0], TEXTS[1], TEXTS[3]]}), src)
    out = tmp_path / "topics.parquet"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--top-k", "3"])
    assert r.exit_code == 0, r.stderr
    t = pq.read_table(out)
    assert t.schema.names == ["id", "lang", "lang_conf", "route", "empty", "oov_ratio", "topics", "weights", "theta"]
    assert pa.types.is_list(t.schema.field("theta").type) and t.schema.field("theta").type.value_type == pa.float32()
    rows = t.to_pylist()
    lines = invoke([str(src), "--bundle", str(hb.path), "--top-k", "3"]).stdout.splitlines()
    ref = [json.loads(line) for line in lines]
    for row, o in zip(rows, ref, strict=True):
        assert row["id"] == o["id"] and row["lang"] == o["lang"] and row["route"] == o["route"]
        assert row["topics"] == [x["id"] for x in o["topics"]]
        assert row["weights"] == pytest.approx([x["weight"] for x in o["topics"]], abs=1e-6)
        assert row["theta"] == pytest.approx(o["theta"], abs=1e-6)
        assert row["oov_ratio"] == pytest.approx(o["oov_ratio"], abs=1e-6)
    # an output that fails leaves the previous file as it was
    before = out.read_bytes()
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\n")
    r = invoke([str(bad), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 1 and out.read_bytes() == before


@pytest.mark.parametrize("column", ["id", "lang", "text"])
def test_parquet_cells_python_cannot_hold_cost_their_rows_only(hb: HandBundle, tmp_path: Path, column: str) -> None:
    """Found by a review: a date32 of 2**31 - 1 days or a timestamp/duration of 2**62 in any read column was an
    OverflowError traceback for the whole file (both engines read Parquet through records.parquet_chunks)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    for kind, big in ((pa.date32(), 2**31 - 1), (pa.timestamp("ms"), 2**62), (pa.duration("s"), 2**62)):
        cols = {"id": pa.array(["a", "b"]), "lang": pa.array(["en", "en"]), "text": pa.array([TEXTS[0], TEXTS[0]])}
        cols[column] = pa.array([big, 0], kind)
        src = tmp_path / "odd.parquet"
        pq.write_table(pa.table(cols), src)
        r = invoke([str(src), "--bundle", str(hb.path)])
        # Row 1's cell is out of range, row 2's (0) a date, time or duration: a wrong type; each its own error.
        assert r.exit_code == 1 and "Traceback" not in r.stderr, (kind, r.stderr)
        assert f"odd.parquet:1: field '{column}'" in r.stderr and "OutOfRangeValue" in r.stderr, (kind, r.stderr)
        assert f"odd.parquet:2: field '{column}'" in r.stderr, (kind, r.stderr)


def test_parquet_without_pyarrow_names_the_extra(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "d.txt"
    src.write_text("the stock market\n", encoding="utf-8")
    code = ("import sys\nsys.modules['pyarrow'] = None\nsys.argv = ['xtm-infer', " +
            f"{str(src)!r}, '--bundle', {str(hb.path)!r}, '--out', {str(tmp_path / 'o.parquet')!r}]\n"
            "from xtm.cli.infer import main\nmain()\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().endswith('writing Parquet needs pyarrow: pip install "xtm[parquet]"')
    assert not (tmp_path / "o.parquet").exists()


def test_formats_by_name_and_bad_combinations(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "the stock market", "lang": "en"}\n', encoding="utf-8")
    out = tmp_path / "o.jsonl.csv"
    assert invoke([str(src), "--bundle", str(hb.path), "--out", str(out)]).exit_code == 0
    assert out.read_text(encoding="utf-8").startswith("id,lang,")
    out = tmp_path / "o.csv"
    assert invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--format", "jsonl"]).exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8"))["lang"] == "en"
    r = invoke(["-", "--bundle", str(hb.path), "--input-format", "parquet"], stdin="x\n")
    assert r.exit_code == 2 and "Parquet is read from a file" in r.stderr
    r = invoke([str(src), "--bundle", str(hb.path), "--format", "xml"])
    assert r.exit_code == 2 and "'xml' is not one of" in r.stderr


def test_log_levels(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "the stock market", "lang": "en"}\n{"text": ""}\n', encoding="utf-8")
    quiet = invoke([str(src), "--bundle", str(hb.path), "-q", "--out", str(tmp_path / "o.jsonl")])
    # only warnings (the bad line, the count of skipped lines); "wrote 1 results" was printed under -q (a review)
    assert quiet.exit_code == 0 and quiet.stderr.splitlines() == [f"{src}:2: empty text",
                                                                   "xtm-infer: warning: skipped 1 of 2 lines"]
    errors_only = invoke([str(src), "--bundle", str(hb.path), "--log-level", "error", "--out",
                          str(tmp_path / "e.jsonl")])
    assert errors_only.exit_code == 0 and errors_only.stderr == ""
    verbose = invoke([str(src), "--bundle", str(hb.path), "--log-level", "DEBUG"])
    assert "xtm-infer: bundle" in verbose.stderr and "xtm-infer: inference took" in verbose.stderr
    both = invoke([str(src), "--bundle", str(hb.path), "-v", "-q"])
    assert both.exit_code == 2 and "-v and -q contradict each other" in both.stderr
    # Bad lines are reported at every level that shows warnings: they are the run's outcome.
    assert f"{src}:2: empty text" in verbose.stderr


def test_progress_lines_reach_a_log_file(hb: HandBundle, tmp_path: Path) -> None:
    """stderr is a file (a scheduler's log): progress comes as lines, not a terminal's bar."""
    src = tmp_path / "d.txt"
    src.write_text("the stock market and the bank\n" * 3000, encoding="utf-8")
    log = tmp_path / "log.txt"
    with open(log, "wb") as err:
        p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(hb.path), "--out",
                            str(tmp_path / "o.jsonl"), "--batch-size", "50", "--progress-every", "0.001"],
                           stderr=err, stdout=subprocess.DEVNULL, timeout=300)
    text = log.read_text(encoding="utf-8")
    assert p.returncode == 0, text
    progress = [line for line in text.splitlines() if line.endswith("lines/s")]
    assert len(progress) >= 3 and "\r" not in text
    assert progress[0].startswith("xtm-infer: 200 lines, ") and progress[-1].startswith("xtm-infer: 3,000 lines, ")
    assert text.splitlines()[-1] == f"xtm-infer: wrote 3000 results to {tmp_path / 'o.jsonl'}"


def test_a_closed_pipe_ends_quietly_with_sigpipes_status(hb: HandBundle, tmp_path: Path) -> None:
    """`xtm-infer big.txt --bundle B | head -n 1`: the reader leaves after one line. xtm-infer stops
    without a word and exits 141 (128 + SIGPIPE), as `cat` or `grep` do there."""
    src = tmp_path / "big.txt"
    src.write_text("the stock market and the bank\n" * 20000, encoding="utf-8")
    script = (f"{sys.executable} -m xtm.cli.infer {src} --bundle {hb.path} --batch-size 64 2>{tmp_path / 'err'} "
              "| head -n 1; echo \"status=${PIPESTATUS[0]}\"")
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"})
    first, status = p.stdout.strip().splitlines()
    assert json.loads(first)["id"] == 1
    assert status == "status=141"
    assert (tmp_path / "err").read_text() == ""


@pytest.mark.slow
def test_ray_engine_writes_the_same_csv_and_parquet_as_local(hb: HandBundle, tmp_path: Path) -> None:
    """--engine ray hands its lines to the same table writer: the same bytes as the local engine."""
    pytest.importorskip("ray")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n"
                           for i, t in enumerate(TEXTS) if t.strip()), encoding="utf-8")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "RAY_AUTH_MODE": "disabled"}
    for name in ("o.csv", "o.parquet"):
        local, remote = tmp_path / f"local-{name}", tmp_path / f"ray-{name}"
        assert invoke([str(src), "--bundle", str(hb.path), "--top-k", "2", "--out", str(local)]).exit_code == 0
        p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(hb.path), "--top-k",
                            "2", "--out", str(remote), "--engine", "ray", "--actors", "1"], capture_output=True,
                           text=True, timeout=300, env=env)
        assert p.returncode == 0, p.stderr[-2000:]
        if name.endswith(".csv"):
            assert remote.read_bytes() == local.read_bytes()
        else:
            assert pq.read_table(remote).equals(pq.read_table(local))


def test_inputs_xtm_does_not_read_are_said_before_any_work(hb: HandBundle, tmp_path: Path) -> None:
    """A gzip file was read as 'invalid UTF-8', and --out x.tsv wrote JSONL under that name. (A .csv input, read as
    JSONL before, is read as CSV now: tests/test_infer_csv.py.)"""
    import gzip

    packed = tmp_path / "docs.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"text": "the stock market"}\n'))
    r = invoke([str(packed), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and "compressed input is not read: decompress it first" in r.stderr, r.stderr
    text = tmp_path / "docs.tsv"
    text.write_text("the stock market\n", encoding="utf-8")
    assert invoke([str(text), "--bundle", str(hb.path), "--input-format", "text"]).exit_code == 0  # told: read so
    good = tmp_path / "d.jsonl"
    good.write_text('{"text": "the stock market"}\n', encoding="utf-8")
    r = invoke([str(good), "--bundle", str(hb.path), "--out", str(tmp_path / "o.tsv")])
    assert r.exit_code == 2 and "TSV is not written: --out FILE.csv writes CSV" in r.stderr
    assert not (tmp_path / "o.tsv").exists()


def test_parquet_from_spark_binary_strings_and_another_text_column_name(hb: HandBundle, tmp_path: Path) -> None:
    """Spark and Hive write strings as Parquet's binary type: every row was bad ('must be a string, got bytes');
    a 'content' column was refused without saying it could be the text."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "spark.parquet"
    texts = [TEXTS[0].encode(), b"caf\xff", TEXTS[1].encode()]
    pq.write_table(pa.table({"id": ["a", "b", "c"], "text": pa.array(texts, pa.binary()),
                             "lang": pa.array([b"en", b"en", None], pa.binary())}), src)
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["a", "c"]
    assert "spark.parquet:2: field 'text' is binary and not UTF-8 text (byte at offset 3)" in r.stderr
    other = tmp_path / "content.parquet"
    pq.write_table(pa.table({"doc_id": ["a"], "content": [TEXTS[0]]}), other)
    r = invoke([str(other), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and "no 'text' column (it has doc_id, content): --text-field content reads 'content'" \
        in r.stderr, r.stderr


def test_binary_ids_misnamed_parquet_columns_and_compressed_outputs(hb: HandBundle, tmp_path: Path) -> None:
    """Writers that store every string as binary failed every row on the id ('Object of type bytes'); a doc_id or
    language column was not read and not said (ids became row numbers); --out o.csv.gz wrote plain JSONL."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    src = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"id": pa.array([b"a", b"b"], pa.binary()),
                             "text": pa.array([TEXTS[0].encode(), TEXTS[1].encode()], pa.binary())}), src)
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0 and [json.loads(x)["id"] for x in r.stdout.splitlines()] == ["a", "b"], r.stderr
    named = tmp_path / "named.parquet"
    pq.write_table(pa.table({"doc_id": ["a", "b"], "language": ["en", "en"], "text": [TEXTS[0], TEXTS[0]]}), named)
    r = invoke([str(named), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    assert "named.parquet:1: warning: field 'language' is not read (the language is detected)" in r.stderr
    assert "field 'doc_id' is not read (the id written is the line number)" in r.stderr
    assert "the same warning on 1 more line" in r.stderr
    for name in ("o.jsonl.gz", "o.csv.gz"):
        r = invoke([str(named), "--bundle", str(hb.path), "--out", str(tmp_path / name)])
        assert r.exit_code == 2 and "compressed output is not written" in r.stderr, r.stderr
        assert not (tmp_path / name).exists()


def test_summary_file_says_what_the_run_did_for_a_pipeline(hb: HandBundle, tmp_path: Path) -> None:
    """A pipeline learned a run's outcome only by parsing English on stderr (a review): --summary FILE is one JSON
    object, written whatever the outcome, naming the bundle by its manifest's SHA-256."""
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "the stock market", "lang": "en"}\n{"text": ""}\n{"text": "bank", "lang": "en"}\n',
                   encoding="utf-8")
    summary = tmp_path / "summary.json"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(tmp_path / "o.jsonl"), "--summary", str(summary)])
    assert r.exit_code == 0, r.stderr
    s = json.loads(summary.read_text())
    assert (s["status"], s["exit_code"], s["lines_read"], s["results_written"], s["lines_skipped"]) == \
        ("ok", 0, 3, 2, 1)
    from xtm.runtime import TopicModel

    manifest = (hb.path / "manifest.json").read_bytes()
    assert s["bundle"]["manifest_sha256"] == TopicModel.load(hb.path).manifest_sha256 is not None
    assert s["bundle"]["xtm_version"] == json.loads(manifest).get("xtm_version") and s["error"] is None
    # nothing to infer: exit 1, said so (the summary of the run before is replaced: it is xtm-infer's)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": ""}\n', encoding="utf-8")
    r = invoke([str(bad), "--bundle", str(hb.path), "--summary", str(summary)])
    s = json.loads(summary.read_text())
    assert r.exit_code == 1 and (s["status"], s["exit_code"], s["results_written"]) == ("no_results", 1, 0)
    # an error (a bundle that is not there): exit 2, its message
    r = invoke([str(src), "--bundle", str(tmp_path / "nope"), "--summary", str(summary)])
    s = json.loads(summary.read_text())
    assert r.exit_code == 2 and s["status"] == "error" and "bundle directory not found" in s["error"]
    assert s["bundle"] == {"path": str(tmp_path / "nope")}
    # a user's file, the output or an input: refused before any work
    mine = tmp_path / "notes.json"
    mine.write_text('{"my": "notes"}')
    for path, needle in ((mine, "not an xtm-infer summary"), (tmp_path / "o.jsonl", "names the output"),
                         (src, "names the output or an input")):
        before = path.read_bytes()
        r = invoke([str(src), "--bundle", str(hb.path), "--out", str(tmp_path / "o.jsonl"), "--summary", str(path)])
        assert r.exit_code == 2 and needle in r.stderr, r.stderr
        assert path.read_bytes() == before


def test_summary_never_lands_on_the_results_and_says_running_while_it_runs(
        hb: HandBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-review: `--summary /dev/stdout > res.jsonl` and a summary linked to --out replaced 50 results with the
    summary (exit 0); a killed run left the run before's "ok" summary in place."""
    src = tmp_path / "d.jsonl"
    src.write_text('{"text": "the stock market", "lang": "en"}\n', encoding="utf-8")
    out = tmp_path / "o.jsonl"
    link = tmp_path / "s.json"
    link.symlink_to(out)                                    # out does not exist yet
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--summary", str(link)])
    assert r.exit_code == 2 and "names the output or an input" in r.stderr and not out.exists()
    res = tmp_path / "res.jsonl"
    with open(res, "wb") as stdout:                         # results to stdout, redirected to a file
        p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(hb.path), "--summary",
                            "/dev/stdout"], stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=300)
    assert p.returncode == 2 and "the same file as stdout" in p.stderr and res.read_bytes() == b""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    r = invoke([str(src), "--bundle", str(hb.path), "--summary", str(fifo)])
    assert r.exit_code == 2 and "must name a regular file" in r.stderr
    # While the run runs, the summary says so (a run killed without a word leaves "running", not an older "ok").
    summary = tmp_path / "summary.json"
    import xtm.runtime.engine as engine

    seen = []
    real = engine.infer_file

    def watching(*a, **k):
        seen.append(json.loads(summary.read_text()))
        return real(*a, **k)

    monkeypatch.setattr(engine, "infer_file", watching)
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--summary", str(summary)])
    assert r.exit_code == 0 and seen[0]["status"] == "running" and seen[0]["pid"] == os.getpid()
    assert json.loads(summary.read_text())["status"] == "ok"


def test_a_top_k_above_the_topic_count_lists_every_topic_and_says_so(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    K = hb.num_topics
    r = invoke([str(src), "--bundle", str(hb.path), "--top-k", str(K + 5), "--sparse-theta"])
    assert r.exit_code == 0
    assert f"--top-k {K + 5} is more than the bundle's {K} topics: each result lists all {K}" in r.stderr
    assert all(len(json.loads(line)["theta"]) == K for line in r.stdout.splitlines())
    assert "more than the bundle" not in invoke([str(src), "--bundle", str(hb.path), "--top-k", str(K)]).stderr

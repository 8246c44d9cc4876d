"""xtm-infer and TopicModel against hostile input and hostile surroundings (issues 13 and 14).

One bad record costs its own line only; what cannot be read is said, never read as something else;
exit codes a pipeline can act on; outputs replaced whole or not at all; signals leave no litter.
Real files, FIFOs, symlinks, subprocesses and signals throughout.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import PREVIOUS_OUTPUT, HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main
from xtm.runtime import TopicModel

GOOD = {"text": "The stock market and the bank", "lang": "en"}
ARABIC = "مرحبا بالعالم، كيف حالك اليوم؟ الاقتصاد والسوق"
HINDI = "नमस्ते दुनिया, आप कैसे हैं? बाज़ार और अर्थव्यवस्था"
FRENCH = "Le match de football était passionnant et les joueurs ont marqué trois buts."


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def model(hb: HandBundle) -> TopicModel:
    return TopicModel.load(hb.path, threads=1)


def write_lines(path: Path, rows: list[object]) -> Path:
    """rows: dicts (JSON-encoded) or str (written as they are)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def strict_json(line: str) -> dict:
    """json.loads that refuses what is not JSON (NaN, Infinity), as other languages' parsers do."""
    def no_constant(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=no_constant)


def no_litter(d: Path) -> bool:
    return not [p for p in d.iterdir() if p.name.endswith(".tmp")]


# -- one record's failure is that record's error ---------------------------------------------------


def test_lone_surrogate_id_costs_nothing_and_comes_out_escaped(hb: HandBundle, tmp_path: Path) -> None:
    rows: list[object] = [{"id": i, **GOOD} for i in range(2400)]
    rows.insert(1200, '{"id": "\\ud800", "text": "market bank", "lang": "en"}')  # JSON escape of a lone surrogate
    src, out = write_lines(tmp_path / "docs.jsonl", rows), tmp_path / "out.jsonl"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--top-k", "1"])
    assert r.exit_code == 0, r.stderr
    raw = out.read_bytes()
    raw.decode("utf-8")  # valid UTF-8 throughout
    got = [strict_json(line) for line in raw.decode("utf-8").splitlines()]
    assert len(got) == 2401 and got[1200]["id"] == "\ud800"  # the same id, read back by Python's json
    assert b"\\ud800" in raw


def test_line_separators_in_an_id_keep_the_output_one_line_per_document(hb: HandBundle, tmp_path: Path) -> None:
    """U+2028 / U+2029 are legal raw in a JSON string, but str.splitlines() (and many JSONL readers) end a line
    there: an id holding them split its output line in two."""
    src = write_lines(tmp_path / "docs.jsonl", ['{"id": "a\u2028b", "text": "market bank", "lang": "en"}',
                                                '{"id": ["c\u2029"], "text": "market bank", "lang": "en"}'])
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert [strict_json(line)["id"] for line in lines] == ["a\u2028b", ["c\u2029"]]


def test_lone_surrogates_in_text_are_read_not_fatal(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", ['{"id": 1, "text": "market \\udc80 bank", "lang": "en"}',
                                                '{"id": 2, "text": "\\ud83d\\u5e02\\u573a", "lang": "zh"}', GOOD])
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0 and r.stderr == ""
    assert [strict_json(line)["id"] for line in r.stdout.splitlines()] == [1, 2, 3]


def test_deep_nesting_and_huge_numbers_are_bad_lines_with_their_numbers(hb: HandBundle, tmp_path: Path) -> None:
    deep = '{"id": ' + "[" * 1000 + "]" * 1000 + ', "text": "bank"}'
    huge = '{"id": ' + "7" * 5000 + ', "text": "bank", "lang": "en"}'
    src = write_lines(tmp_path / "docs.jsonl", [GOOD, deep, huge, GOOD])
    out = tmp_path / "out.jsonl"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 0
    assert f"{src}:2: invalid JSON: nested too deeply" in r.stderr
    assert f"{src}:3: invalid JSON: Exceeds the limit" in r.stderr
    assert [strict_json(line)["id"] for line in out.read_text().splitlines()] == [1, 4]
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--strict"])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {src}:2: invalid JSON: nested too deeply")


def test_non_finite_ids_come_out_as_valid_json(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [
        '{"id": NaN, "text": "bank"}', '{"id": Infinity, "text": "bank"}', '{"id": -Infinity, "text": "bank"}',
        '{"id": 1e400, "text": "bank"}', '{"id": {"k": [NaN, 1]}, "text": "bank"}'])
    r = invoke([str(src), "--bundle", str(hb.path), "--sparse-theta"])
    assert r.exit_code == 0, r.stderr
    ids = [strict_json(line)["id"] for line in r.stdout.splitlines()]
    assert ids == ["NaN", "Infinity", "-Infinity", "Infinity", {"k": ["NaN", 1]}]


def test_over_long_line_is_skipped_unread(hb: HandBundle, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import xtm.runtime.records as records

    monkeypatch.setattr(records, "MAX_LINE_BYTES", 1000)
    src = tmp_path / "docs.jsonl"
    with open(src, "w", encoding="utf-8") as f:
        f.write(json.dumps(GOOD) + "\n")
        f.write('{"text": "' + "bank " * 5000 + '"}\n')  # 25 kB on one line
        f.write(json.dumps({"id": "after", **GOOD}) + "\n")
        f.write("x" * 5000)  # and one without a final newline
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0
    assert f"{src}:2: line longer than 1,000 bytes (skipped unread)" in r.stderr
    assert f"{src}:4: line longer than 1,000 bytes" in r.stderr
    assert [strict_json(line)["id"] for line in r.stdout.splitlines()] == [1, "after"]


def test_control_characters_in_reported_values_are_escaped(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [{"text": "bank", "lang": "e\x1b[31mn\nfake: line"}, GOOD])
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0
    assert "\x1b" not in r.stderr and len(r.stderr.splitlines()) == 2  # one report line, one summary line
    assert "invalid language code 'e\\x1b[31mn\\nfake: line'" in r.stderr


def test_a_document_that_breaks_inference_costs_only_its_line(hb: HandBundle, model: TopicModel) -> None:
    """A tokenizer or encoder failure on one document (here: a tokenizer that cannot take one text)
    is isolated by retrying the chunk document by document."""
    from xtm.runtime.engine import Engine, InferenceOptions

    class Fragile:  # the real model, with a tokenizer that fails on one text
        def __init__(self, inner: TopicModel) -> None:
            self.inner = inner

        def __getattr__(self, name: str):
            return getattr(self.inner, name)

        def infer(self, texts, langs, **kw):
            if any("poison" in t for t in texts):
                raise RuntimeError("tokenizer crashed")
            return self.inner.infer(texts, langs, **kw)

    options = InferenceOptions(batch_size=8, top_k=2)
    fragile = Engine(Fragile(model), options)
    parsed = [fragile.parse_record({"text": t, "lang": "en"}, i + 1) for i, t in
              enumerate(["bank market", "poison pill", "stock price"])]
    got = fragile.infer(parsed)
    assert [r.error for r in got] == [None, "cannot infer this document: RuntimeError: tokenizer crashed", None]
    alone = Engine(model, options).infer(parsed[:1])
    assert got[0].output == alone[0].output  # the retried rows give the same bytes


# -- languages: detected among all, never read as another one --------------------------------------


def test_unsupported_languages_are_flagged_not_read_as_english(model: TopicModel) -> None:
    texts = [ARABIC, HINDI, "😀🎉👍", "12345 678 !!!", FRENCH, "The stock market and the bank fell today",
             "北京的经济增长很快"]
    res = model.infer(texts)  # does not raise: a batch is never lost to one text
    assert res.unsupported.tolist() == [True, True, True, True, True, False, False]
    assert res.langs == ["ar", "hi", None, None, "fr", "en", "zh"]
    assert res.routes == [None] * 5 + ["bow", "bow"]
    assert np.isnan(res.theta[:5]).all() and (res.top_ids[:5] == -1).all()
    assert "detected language 'ar'" in res.notes[0] and "not served by this bundle (it serves en, zh)" in res.notes[0]
    assert res.notes[2].startswith("no language detected: the text has no letters")
    assert res.notes[5] is None and res.lang_conf[5] > 0.5 and not np.isnan(res.theta[5:]).any()
    # resolve_languages says the same: None where the bag of words cannot read the text.
    assert model.resolve_languages(texts) == [None, None, None, None, None, "en", "zh"]
    # A language given by the caller stays authoritative, even for text without letters.
    forced = model.infer(["12345 678"], langs="en")
    assert forced.routes == ["bow"] and forced.empty.tolist() == [True] and np.isnan(forced.lang_conf[0])


def test_api_lone_surrogates_in_texts_are_replaced_not_fatal(model: TopicModel) -> None:
    # sentencepiece (the contextual route's tokenizer) raises on them; every route gets clean text.
    res = model.infer(["market \ud800 bank", "北京\udfff经济"], langs=["en", "zh"])
    ref = model.infer(["market \ufffd bank", "北京\ufffd经济"], langs=["en", "zh"])
    np.testing.assert_array_equal(res.theta, ref.theta)


def test_cli_reports_unsupported_lines_and_marks_empty_ones(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [
        {"id": "ar", "text": ARABIC}, {"id": "hi", "text": HINDI}, {"id": "emoji", "text": "😀😀🎉"},
        {"id": "fr", "text": FRENCH}, {"id": "en", "text": "The stock market and the bank fell today"},
        {"id": "oov", "text": "zzz qqq", "lang": "en"}, {"id": "half", "text": "market zzz", "lang": "en"}])
    r = invoke([str(src), "--bundle", str(hb.path), "--top-k", "1"])
    assert r.exit_code == 0
    for n, needle in [(1, "detected language 'ar'"), (2, "detected language 'hi'"), (3, "no language detected"),
                      (4, "detected language 'fr'")]:
        assert f"{src}:{n}: {needle}" in r.stderr, r.stderr
    out = {o["id"]: o for o in map(strict_json, r.stdout.splitlines())}
    assert set(out) == {"en", "oov", "half"}
    assert out["en"]["lang"] == "en" and out["en"]["route"] == "bow" and out["en"]["lang_conf"] > 0.5
    assert out["en"]["empty"] is False and 0 < out["en"]["oov_ratio"] < 1
    assert out["oov"]["empty"] is True and out["oov"]["oov_ratio"] == 1.0 and out["oov"]["lang_conf"] is None
    assert out["half"]["oov_ratio"] == 0.5 and out["half"]["empty"] is False
    r = invoke([str(src), "--bundle", str(hb.path), "--strict"])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {src}:1: detected language 'ar'")


# -- exit codes a pipeline can act on --------------------------------------------------------------


def test_no_line_inferred_exits_1_and_leaves_the_old_output(hb: HandBundle, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    bad = write_lines(tmp_path / "bad.jsonl", ["{nope", {"text": "😀"}])
    r = invoke([str(bad), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 1
    assert r.stderr.endswith(f"xtm-infer: warning: skipped 2 of 2 lines\nerror: {bad}: no line could be inferred: "
                             "all 2 lines were bad\n")
    assert out.read_text() == PREVIOUS_OUTPUT and no_litter(tmp_path)
    empty = write_lines(tmp_path / "empty.jsonl", ["", "   "])
    r = invoke([str(empty), "--bundle", str(hb.path)])
    assert r.exit_code == 1 and "no documents in the input" in r.stderr and r.stdout == ""


def test_max_bad_count_stops_at_the_line_that_exceeds_it(hb: HandBundle, tmp_path: Path) -> None:
    rows: list[object] = [{"id": i, **GOOD} if i % 3 else "{bad" for i in range(30)]  # bad: 0, 3, 6, ...
    src, out = write_lines(tmp_path / "docs.jsonl", rows), tmp_path / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--max-bad", "2", "--batch-size", "2"])
    assert r.exit_code == 2
    assert f"error: {src}:7: invalid JSON" in r.stderr and "more than 2 (--max-bad)" in r.stderr
    assert out.read_text() == PREVIOUS_OUTPUT and no_litter(tmp_path)
    # To stdout: exactly the good lines before the failing one.
    r = invoke([str(src), "--bundle", str(hb.path), "--max-bad", "2", "--batch-size", "2"])
    assert r.exit_code == 2 and [strict_json(x)["id"] for x in r.stdout.splitlines()] == [1, 2, 4, 5]
    assert invoke([str(src), "--bundle", str(hb.path), "--max-bad", "10"]).exit_code == 0


def test_max_bad_percentage_is_judged_at_the_end(hb: HandBundle, tmp_path: Path) -> None:
    rows: list[object] = [{"id": i, **GOOD} for i in range(18)] + ["{bad", "{bad"]  # 10% bad
    src, out = write_lines(tmp_path / "docs.jsonl", rows), tmp_path / "out.jsonl"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--max-bad", "5%"])
    assert r.exit_code == 2 and "too many bad lines: 2 of 20 (10.00%, --max-bad 5%)" in r.stderr
    assert not out.exists() and no_litter(tmp_path)
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--max-bad", "10%"])
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == 18
    for wrong in ("-1", "abc", "150%", "5%%"):
        r = invoke([str(src), "--bundle", str(hb.path), "--max-bad", wrong])
        assert r.exit_code == 2 and r.stderr.startswith("error: --max-bad takes"), wrong


# -- outputs: clean errors, never a user's file destroyed -----------------------------------------


def test_unwritable_out_is_one_clean_error(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [GOOD])
    plain = tmp_path / "plain.txt"
    plain.write_text("a file, not a directory")
    for out in ("/proc/xtm-infer-out.jsonl", "/sys/xtm-infer-out.jsonl", str(plain / "out.jsonl")):
        r = invoke([str(src), "--bundle", str(hb.path), "--out", out])
        assert r.exit_code == 2 and r.stderr.startswith(f"error: {out}: cannot write"), (out, r.stderr)
        assert "Traceback" not in r.stderr
    assert plain.read_text() == "a file, not a directory"


def test_full_device_and_a_fifo_whose_reader_leaves_are_clean_errors(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [{"id": i, **GOOD} for i in range(400)])
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # a private /dev/full: every write is ENOSPC
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(full)])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {full}: cannot write: No space left on device")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)

    def read_one_line_and_leave() -> None:
        with open(fifo, "rb") as f:
            f.readline()

    reader = threading.Thread(target=read_one_line_and_leave, daemon=True)
    reader.start()
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(fifo), "--batch-size", "1"])
    reader.join(30)
    assert r.exit_code == 2 and "its reader went away" in r.stderr and "Traceback" not in r.stderr


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 64 kB tmpfs mounted for the test (root only), unmounted after: a real full disk, a real
    read-only file system."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_and_read_only_file_systems_keep_the_old_output(hb: HandBundle, tmp_path: Path, small_tmpfs: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [{"id": i, **GOOD} for i in range(2000)])  # ~1 MB of results
    out = small_tmpfs / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {out}: cannot write: No space left on device")
    assert out.read_text() == PREVIOUS_OUTPUT and no_litter(small_tmpfs)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {out}: cannot write: Read-only file system")
    assert out.read_text() == PREVIOUS_OUTPUT


def test_out_that_is_the_input_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [GOOD])
    before = src.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(src)
    for out in (src, link):
        r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
        assert r.exit_code == 2 and "--out is an input file" in r.stderr
    assert src.read_bytes() == before


def test_bundle_vocabulary_that_is_not_utf8_is_a_clean_error(hb: HandBundle, tmp_path: Path) -> None:
    import hashlib
    import shutil

    b = tmp_path / "bundle"
    shutil.copytree(hb.path, b)
    vocab = b / "vocab_en.txt"
    vocab.write_bytes(vocab.read_bytes().replace(b"market", b"m\xe4rket"))  # Latin-1, exported that way
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["vocab_en.txt"] = hashlib.sha256(vocab.read_bytes()).hexdigest()  # checksums agree: a bad export
    (b / "manifest.json").write_text(json.dumps(m))
    r = invoke([str(write_lines(tmp_path / "d.jsonl", [GOOD])), "--bundle", str(b)])
    assert r.exit_code == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {vocab}:2: not UTF-8 (byte 0xe4)")  # (the one vocabulary rule's words)


def test_out_fifo_device_and_symlink(hb: HandBundle, tmp_path: Path) -> None:
    src = write_lines(tmp_path / "docs.jsonl", [GOOD, GOOD])
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(fifo)])
    reader.join(30)
    assert r.exit_code == 0 and len(got[0].splitlines()) == 2 and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    node = tmp_path / "null"
    os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    assert invoke([str(src), "--bundle", str(hb.path), "--out", str(node)]).exit_code == 0
    assert stat.S_ISCHR(os.lstat(node).st_mode)
    target = tmp_path / "results" / "real.jsonl"
    target.parent.mkdir()
    target.write_text(PREVIOUS_OUTPUT)
    link = tmp_path / "latest.jsonl"
    link.symlink_to(target)
    assert invoke([str(src), "--bundle", str(hb.path), "--out", str(link)]).exit_code == 0
    assert link.is_symlink() and len(target.read_text().splitlines()) == 2
    assert no_litter(tmp_path) and no_litter(target.parent)


def test_an_existing_file_that_is_not_an_xtm_infer_output_is_refused(hb: HandBundle, tmp_path: Path) -> None:
    """A user's file is replaced only when provably ours. Before: `--out thesis.docx` (a typo, a path in the wrong
    directory) was replaced by the results, exit 0; through a symlink too."""
    src = write_lines(tmp_path / "docs.jsonl", [GOOD])
    thesis = tmp_path / "thesis.docx"
    thesis.write_bytes(b"PK\x03\x04 my thesis")
    link = tmp_path / "latest.csv"
    link.symlink_to(thesis)
    notes = tmp_path / "notes.csv"
    notes.write_text("name,phone\nAda,555\n")
    fake_parquet = tmp_path / "other.parquet"
    fake_parquet.write_bytes(b"PAR1 not xtm's")
    for out in (thesis, link, notes, fake_parquet):
        before = out.read_bytes()
        r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
        assert r.exit_code == 2 and "exists and is not an xtm-infer output" in r.stderr, r.stderr
        assert out.read_bytes() == before and no_litter(tmp_path)
    # Its own outputs, in each format, and an empty file are replaced (reruns into the same path work).
    for name in ("r.jsonl", "r.csv", "r.parquet"):
        out = tmp_path / name
        for _ in range(2):
            r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
            assert r.exit_code == 0, r.stderr
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    assert invoke([str(src), "--bundle", str(hb.path), "--out", str(empty)]).exit_code == 0
    assert strict_json(empty.read_text().splitlines()[0])["lang"] == "en"
    # An output whose first line is longer than any fixed look-ahead (a 1.2 MB id) is still recognised.
    long_id = write_lines(tmp_path / "long.jsonl", [{"id": "x" * 1_200_000, **GOOD}])
    for _ in range(2):
        r = invoke([str(long_id), "--bundle", str(hb.path), "--out", str(tmp_path / "long-out.jsonl")])
        assert r.exit_code == 0, r.stderr


def test_csv_cells_a_spreadsheet_would_run_are_written_as_text(hb: HandBundle, tmp_path: Path) -> None:
    """An id or a label that starts a formula (a hostile document id, a bundle's or an LLM's label) gets a leading
    apostrophe in CSV; plain numbers stay numbers. Before: `=cmd|' /C calc'!A0` went into the cell as it was."""
    import csv
    import hashlib
    import shutil

    b = tmp_path / "bundle"
    shutil.copytree(hb.path, b)
    topics = json.loads((b / "topics.json").read_text())
    for t in topics["topics"]:
        t["labels"] = {"en": "=cmd|' /C calc'!A0"}
    (b / "topics.json").write_text(json.dumps(topics))
    m = json.loads((b / "manifest.json").read_text())
    m["files"]["topics.json"] = hashlib.sha256((b / "topics.json").read_bytes()).hexdigest()
    (b / "manifest.json").write_text(json.dumps(m))
    src = write_lines(tmp_path / "d.jsonl", [{"id": "=1+2", **GOOD}, {"id": "@SUM(A1)", **GOOD}, {"id": -5, **GOOD},
                                             {"id": "-2.5e3", **GOOD}, {"id": "+HYPERLINK(x)", **GOOD}])
    out = tmp_path / "o.csv"
    assert invoke([str(src), "--bundle", str(b), "--out", str(out), "--top-k", "1"]).exit_code == 0
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["id"] for r in rows] == ["'=1+2", "'@SUM(A1)", "-5", "-2.5e3", "'+HYPERLINK(x)"]
    assert {r["label_1"] for r in rows} == {"'=cmd|' /C calc'!A0"}
    # JSONL keeps every value exactly as it is: nothing runs a JSON string.
    jl = tmp_path / "o.jsonl"
    assert invoke([str(src), "--bundle", str(b), "--out", str(jl), "--top-k", "1"]).exit_code == 0
    assert strict_json(jl.read_text().splitlines()[0])["id"] == "=1+2"


def test_decomposed_unicode_reads_as_the_composed_text(tmp_path: Path) -> None:
    """The same words typed as base letters plus combining accents (NFD: macOS file names, text copied from
    PDFs) read as the composed words. Before: every accented word split at its accents and matched nothing
    ("naïve" -> "nai", "ve"), so the document came out empty."""
    import unicodedata

    vocab = ["café", "naïve", "résumé", "crème", "brûlée", "fiancé", "marché", "économie"]
    fr = make_bundle(tmp_path / "fr", vocabs={"fr": vocab, "en": ["market", "bank", "stock", "money"]})
    model = TopicModel.load(fr.path, threads=1)
    composed = "café naïve résumé crème brûlée marché économie"
    decomposed = unicodedata.normalize("NFD", composed)
    assert decomposed != composed
    res = model.infer([composed, decomposed], "fr")
    assert not res.empty.any() and res.oov_ratio.tolist() == [0.0, 0.0]
    np.testing.assert_array_equal(res.theta[0], res.theta[1])
    # A vocabulary written decomposed is matched the same way and still shown as the file has it.
    nfd_vocab = [unicodedata.normalize("NFD", w) for w in vocab]
    fr2 = make_bundle(tmp_path / "fr2", vocabs={"fr": nfd_vocab, "en": ["market", "bank", "stock", "money"]})
    model2 = TopicModel.load(fr2.path, threads=1)
    assert model2.vocabulary("fr") == nfd_vocab
    assert model2.infer([composed], "fr").oov_ratio.tolist() == [0.0]


# -- signals: no litter, the old output untouched --------------------------------------------------


def _start_blocked_run(hb: HandBundle, out: Path) -> subprocess.Popen:
    """xtm-infer reading a pipe we keep open: it has written its first chunk to the --out
    temporary and waits for more input; returns once that temporary exists and is not empty."""
    p = subprocess.Popen([sys.executable, "-m", "xtm.cli.infer", "-", "--bundle", str(hb.path), "--out", str(out),
                          "--batch-size", "1"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.stdin is not None
    p.stdin.write(("".join(json.dumps({"id": i, **GOOD}) + "\n" for i in range(40))).encode())
    p.stdin.flush()
    deadline = time.time() + 120
    while time.time() < deadline:
        tmps = [t for t in out.parent.iterdir() if t.name.endswith(".tmp")]
        if tmps and tmps[0].stat().st_size > 0:
            return p
        assert p.poll() is None, p.stderr.read().decode() if p.stderr else ""
        time.sleep(0.05)
    p.kill()
    raise AssertionError("xtm-infer never started writing")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129), (signal.SIGINT, 130)])
def test_signal_mid_run_removes_the_temporary_and_keeps_the_old_output(hb: HandBundle, tmp_path: Path, sig: int,
                                                                       code: int) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    p = _start_blocked_run(hb, out)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err.decode()
    assert out.read_text() == PREVIOUS_OUTPUT
    assert no_litter(tmp_path), list(tmp_path.iterdir())
    assert b"Traceback" not in err


def test_kill_9_temporary_is_removed_by_the_next_run(hb: HandBundle, tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    p = _start_blocked_run(hb, out)
    p.kill()
    p.wait(30)
    stale = [t for t in tmp_path.iterdir() if t.name.endswith(".tmp")]
    assert len(stale) == 1
    old = time.time() - 60
    os.utime(stale[0], (old, old))  # killed a minute ago
    r = invoke([str(write_lines(tmp_path / "d.jsonl", [GOOD])), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 0 and len(out.read_text().splitlines()) == 1
    assert no_litter(tmp_path)

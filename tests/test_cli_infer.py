"""xtm-infer as a user runs it: JSONL in, JSONL out, bad lines reported, atomic --out, stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main

GOOD = [
    {"id": "a", "text": "The stock market and the bank", "lang": "en"},
    {"id": 2, "text": "北京的经济增长很快"},
    {"id": "c", "text": "Football: the team scored a goal in the match"},
    {"id": "d", "text": "中国足球队在比赛中进球", "lang": "cn"},
]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                            for r in rows), encoding="utf-8")
    return path


def invoke(args: list[str], stdin: str | None = None):
    return CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)


def test_good_file_gives_one_json_line_per_document_in_order(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    r = invoke([str(src), "--bundle", str(hb.path), "--top-k", "2"])
    assert r.exit_code == 0, r.stderr
    out = [json.loads(line) for line in r.stdout.splitlines()]
    assert [o["id"] for o in out] == ["a", 2, "c", "d"]
    assert [o["lang"] for o in out] == ["en", "zh", "en", "zh"]
    for o in out:
        assert len(o["theta"]) == hb.num_topics and abs(sum(o["theta"]) - 1) < 1e-4
        assert len(o["topics"]) == 2 and o["topics"][0]["weight"] >= o["topics"][1]["weight"]
        assert o["topics"][0]["weight"] == o["theta"][o["topics"][0]["id"]]
        assert set(o["topics"][0]["words"]) == {"en", "zh"} and len(o["topics"][0]["words"]["en"]) == 10
    assert r.stderr == ""


def test_a_byte_order_mark_before_line_1_is_not_part_of_the_json(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    src.write_bytes(b"\xef\xbb\xbf" + src.read_bytes())  # as a Windows editor saves it
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0 and r.stderr == "", r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["a", 2, "c", "d"]


def test_sparse_theta_keeps_only_the_top_k(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD[:1])
    r = invoke([str(src), "--bundle", str(hb.path), "--top-k", "3", "--sparse-theta"])
    o = json.loads(r.stdout)
    assert list(o["theta"]) == [str(t["id"]) for t in o["topics"]] and len(o["theta"]) == 3


def test_bad_lines_are_reported_with_line_numbers_and_counted(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "docs.jsonl"
    rows = [GOOD[0], "{not json", "[1, 2]", {"id": 4}, {"text": 5}, "", {"text": "  "},
            {"text": "bonjour", "lang": "fr"}, GOOD[2]]
    write_jsonl(src, rows)
    with open(src, "ab") as f:
        f.write(b'{"text": "caf\xe9"}\n')  # latin-1 byte: invalid UTF-8
    r = invoke([str(src), "--bundle", str(hb.path), "--batch-size", "1"])  # chunks of 4: crosses chunk edges
    assert r.exit_code == 0
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["a", "c"]
    err = r.stderr
    for n, reason in [(2, "invalid JSON"), (3, "expected a JSON object"), (4, "missing field 'text'"),
                      (5, "field 'text' must be a string"), (7, "empty text"), (8, "language 'fr' is not served"),
                      (10, "invalid UTF-8")]:
        assert f"{src}:{n}: {reason}" in err, err
    assert f"{src}:6:" not in err  # blank lines are not documents
    assert "skipped 7 of 9 lines" in err


def test_strict_stops_at_the_first_bad_line_and_writes_nothing(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [GOOD[0], "{oops", GOOD[2]])
    out = tmp_path / "out.jsonl"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out), "--strict"])
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {src}:2: invalid JSON")
    assert not out.exists() and os.listdir(tmp_path) == ["docs.jsonl"]  # no temp file left either


def test_out_is_written_atomically_and_replaced_whole(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD)
    out = tmp_path / "res" / "out.jsonl"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 0 and r.stdout == ""
    assert len(out.read_text(encoding="utf-8").splitlines()) == 4
    assert "wrote 4 results" in r.stderr
    before = out.read_bytes()
    # A failing run leaves the previous output exactly as it was.
    bad = write_jsonl(tmp_path / "bad.jsonl", [GOOD[0], "nope"])
    assert invoke([str(bad), "--bundle", str(hb.path), "--out", str(out), "--strict"]).exit_code == 2
    assert out.read_bytes() == before
    assert sorted(os.listdir(out.parent)) == ["out.jsonl"]


def test_oversized_text_is_truncated_with_a_warning(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": 1, "text": "market " * 20_000, "lang": "en"}])
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0
    assert f"{src}:1: warning: text has 140,000 characters; using the first 100,000" in r.stderr
    assert json.loads(r.stdout)["id"] == 1


def test_bad_bundle_is_one_clean_error(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", GOOD[:1])
    r = invoke([str(src), "--bundle", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "error:" in r.stderr and "bundle directory not found" in r.stderr


def test_stdin_in_a_real_process(hb: HandBundle) -> None:
    data = "".join(json.dumps(g, ensure_ascii=False) + "\n" for g in (GOOD[0], GOOD[2]))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", "-", "--bundle", str(hb.path), "--top-k", "1"],
                       input=data.encode("utf-8"), capture_output=True, env=env, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    out = [json.loads(line) for line in p.stdout.decode("utf-8").splitlines()]
    assert [o["id"] for o in out] == ["a", "c"] and all(len(o["topics"]) == 1 for o in out)
    assert p.stderr == b""


def test_help_teaches_with_examples() -> None:
    r = invoke(["--help"])
    assert r.exit_code == 0
    assert "Examples:" in r.stdout and "--strict" in r.stdout and "--sparse-theta" in r.stdout
    for needle in ("--max-bad", "Exit status", "lang_conf", "oov_ratio", '"empty"'):
        assert needle in r.stdout, needle


def test_ids_of_any_json_type_round_trip(hb: HandBundle, tmp_path: Path) -> None:
    ids = [{"doc": ["é", 1]}, None, 3.5, "引号\"and\\slash"]
    src = write_jsonl(tmp_path / "docs.jsonl", [{"id": i, "text": "bank market", "lang": "en"} for i in ids]
                      + [{"text": "no id here", "lang": "en"}])
    r = invoke([str(src), "--bundle", str(hb.path), "--sparse-theta"])
    assert r.exit_code == 0
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ids + [5]  # line number when absent


def test_min_lang_conf_makes_a_guessed_language_a_bad_line_with_its_reason(hb: HandBundle, tmp_path: Path) -> None:
    # "bank market" is read as English with probability 0.04: a guess a pipeline can now refuse by line. A given
    # language is not judged; a sentence passes.
    rows = [{"id": "q", "text": "bank market"}, {"id": "s", "text": "The stock market fell sharply today."},
            {"id": "g", "text": "bank market", "lang": "en"},
            {"id": "z", "text": "北京的经济增长很快，股票市场也很活跃"}]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    plain = invoke([str(src), "--bundle", str(hb.path)])
    assert [json.loads(line)["id"] for line in plain.stdout.splitlines()] == ["q", "s", "g", "z"]
    assert json.loads(plain.stdout.splitlines()[0])["lang_conf"] < 0.5
    for workers in ([], ["--workers", "2"]):
        r = invoke([str(src), "--bundle", str(hb.path), "--min-lang-conf", "0.5", *workers])
        assert r.exit_code == 0, r.stderr
        assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["s", "g", "z"]
        assert f"{src}:1: detected language 'en' with probability 0.0" in r.stderr
        assert "under min_lang_conf 0.5: a guess (give the text's language)" in r.stderr
        assert "skipped 1 of 4" in r.stderr
    bad = invoke([str(src), "--bundle", str(hb.path), "--min-lang-conf", "1.5"])
    assert bad.exit_code == 2 and "1.5 is not in the range 0<=x<1" in bad.stderr


def test_min_lang_conf_in_the_python_api(hb: HandBundle) -> None:
    from xtm.errors import XtmError
    from xtm.runtime import TopicModel

    model = TopicModel.load(hb.path)
    res = model.infer(["bank market", "The stock market fell sharply today."], min_lang_conf=0.5)
    assert res.unsupported.tolist() == [True, False] and res.routes[0] is None and res.langs[0] == "en"
    assert "under min_lang_conf 0.5" in res.notes[0] and np.isnan(res.theta[0]).all()
    assert not model.infer(["bank market"], langs="en", min_lang_conf=0.99).unsupported[0]  # given: not judged
    for bad in (-0.1, 1.0):  # (1 would refuse every detection)
        with pytest.raises(XtmError, match=f"min_lang_conf must be a number from 0 to under 1 .*, got {bad}"):
            model.infer(["bank market"], min_lang_conf=bad)
    lines = list(model.infer_records([{"text": "bank market"}, {"text": "The stock market fell sharply today."}],
                                     min_lang_conf=0.5, report=lambda msg: None))
    assert len(lines) == 1 and json.loads(lines[0])["id"] == 2


def test_lang_gives_plain_text_lines_their_language(hb: HandBundle, tmp_path: Path) -> None:
    # A text file has no lang field: a short line was a guess (or, with --min-lang-conf, a bad line) and nothing
    # could say its language. --lang does, for every line that names none; a line that names one keeps it.
    src = tmp_path / "queries.txt"
    src.write_text("bank market\nstock\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path), "--input-format", "text", "--lang", "EN", "--min-lang-conf", "0.9"])
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["lang"], x["lang_conf"]) for x in rows] == [("en", None), ("en", None)]  # given, not detected
    mixed = write_jsonl(tmp_path / "d.jsonl", [{"text": "北京的经济增长很快", "lang": "zh"}, {"text": "bank market"}])
    r = invoke([str(mixed), "--bundle", str(hb.path), "--lang", "en"])
    assert [json.loads(line)["lang"] for line in r.stdout.splitlines()] == ["zh", "en"]
    for bad, message in (("fr", "--lang 'fr' is not served by this bundle"), ("not a language", "not a language")):
        r = invoke([str(src), "--bundle", str(hb.path), "--input-format", "text", "--lang", bad, "--route", "bow"])
        assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_a_line_whose_text_field_is_named_otherwise_says_which_field_it_has(hb: HandBundle, tmp_path: Path) -> None:
    # "missing field 'text'" left the user to find that the line had "Text" or another tool's "content".
    src = write_jsonl(tmp_path / "docs.jsonl", [{"Text": "bank market"}, {"content": "stock"}, GOOD[0]])
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0
    assert f"{src}:1: missing field 'text' (this line has 'Text': --text-field Text reads it)" in r.stderr
    assert f"{src}:2: missing field 'text' (this line has 'content': --text-field content reads it)" in r.stderr


def test_a_language_or_id_under_another_name_is_said_once_and_counted(hb: HandBundle, tmp_path: Path) -> None:
    # 'Lang' and 'doc_id' were not read and nothing said so: every line's language was detected and its id was the
    # line number, so a pipeline joined its results to the wrong documents. Said at the first line, then counted.
    rows = [{"doc_id": f"d{i}", "Lang": "en", "text": "bank market stock"} for i in range(5)]
    src = write_jsonl(tmp_path / "docs.jsonl", [*rows, {"id": "x", "lang": "en", "text": "bank"}])
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    said = ("warning: field 'Lang' is not read (the language is detected): xtm reads 'lang' (--lang-field Lang reads "
            "it); field 'doc_id' is not read (the id written is the line number): xtm reads 'id' (--id-field doc_id "
            "reads it)")
    assert f"{src}:1: {said}" in r.stderr
    assert r.stderr.count("'Lang' is not read") == 2  # the first line's, and the count below
    assert f"the same warning on 4 more lines: {said.removeprefix('warning: ')}" in r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == [1, 2, 3, 4, 5, "x"]  # still served
    quiet = write_jsonl(tmp_path / "ok.jsonl", [{"id": 1, "text": "bank", "locale_hint": "x", "lang_conf": 0.5}])
    assert "warning" not in invoke([str(quiet), "--bundle", str(hb.path)]).stderr


def test_distinct_warnings_past_the_remembered_number_are_all_reported() -> None:
    from xtm.runtime import engine

    said: list[str] = []
    tally = engine.BadLines(said.append)
    for i in range(engine._DISTINCT_WARNINGS + 3):
        tally.warn("f", i, f"w{i}")
    tally.warn("f", 1, "w0")
    tally.warn("f", 2, "w0")
    tally.total = 1
    tally.finish("f")
    assert len(said) == engine._DISTINCT_WARNINGS + 3 + 1 and said[-1] == "f: the same warning on 2 more lines: w0"

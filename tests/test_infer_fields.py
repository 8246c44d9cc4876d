"""xtm-infer --text-field / --lang-field / --id-field (and the Python API's text_field, lang_field, id_field):
a pipeline's records under their own names are read as the same records under xtm's, in every reader.

A data engineer's review found records from other tools ('body', 'locale', 'doc_id') had to be rewritten first;
without the rewrite their ids became line numbers. Every comparison here is with the same documents under xtm's
own names: the same bytes out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_fixture import HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main
from xtm.errors import XtmError

DOCS = [
    {"id": "a", "text": "The stock market and the bank", "lang": "en"},
    {"id": 2, "text": "北京的经济增长很快"},
    {"id": "c", "text": "Football: the team scored a goal in the match"},
    {"id": "d", "text": "中国足球队在比赛中进球", "lang": "zh"},
]
RENAMED = [{{"id": "doc_id", "text": "body", "lang": "locale"}[k]: v for k, v in d.items()} for d in DOCS]
FLAGS = ["--text-field", "body", "--lang-field", "locale", "--id-field", "doc_id"]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_renamed_jsonl_fields_give_the_same_lines_as_xtms_names(hb: HandBundle, tmp_path: Path) -> None:
    plain = invoke([str(write_jsonl(tmp_path / "plain.jsonl", DOCS)), "--bundle", str(hb.path)])
    renamed = invoke([str(write_jsonl(tmp_path / "renamed.jsonl", RENAMED)), "--bundle", str(hb.path), *FLAGS])
    assert plain.exit_code == renamed.exit_code == 0, renamed.stderr
    assert renamed.stdout == plain.stdout
    rows = [json.loads(line) for line in renamed.stdout.splitlines()]
    assert [r["id"] for r in rows] == ["a", 2, "c", "d"]  # the pipeline's ids, not line numbers
    assert [r["lang_conf"] is None for r in rows] == [True, False, False, True]  # 'locale' was read as given
    assert "warning" not in renamed.stderr  # (lines 2 and 3 have no 'locale': detected, as without the flags)
    # Without the flags the same file is bad on every line, and says which option reads it.
    r = invoke([str(tmp_path / "renamed.jsonl"), "--bundle", str(hb.path)])
    assert r.exit_code == 1 and "missing field 'text' (this line has 'body': --text-field body reads it)" in r.stderr


def test_renamed_fields_missing_from_a_record_are_said(hb: HandBundle, tmp_path: Path) -> None:
    rows = [{"body": "bank market stock", "locale": "en", "doc_id": "x"}, {"body": "bank market"},
            {"text": "bank", "doc_id": "y"}, {"body": "bank", "locale": 3, "doc_id": "z"}]
    src = write_jsonl(tmp_path / "docs.jsonl", rows)
    r = invoke([str(src), "--bundle", str(hb.path), *FLAGS])
    assert r.exit_code == 0, r.stderr
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["x", 2]
    # (a record without its language is one to detect, under any name; a missing id loses the pipeline's join key)
    assert f"{src}:2: warning: no field 'doc_id' (--id-field) (the id written is the line number)" in r.stderr
    assert f"{src}:3: missing field 'body' (--text-field)" in r.stderr  # 'text' is not read once renamed
    assert f"{src}:4: field 'locale' (--lang-field) must be a string, got int" in r.stderr


def test_a_field_named_like_another_tools_name_is_not_warned_about(hb: HandBundle, tmp_path: Path) -> None:
    # 'language' is another tool's name for lang: read as the text here, it is not "a language field not read".
    src = write_jsonl(tmp_path / "docs.jsonl", [{"language": "bank market stock", "id": 1}])
    r = invoke([str(src), "--bundle", str(hb.path), "--text-field", "language"])
    assert r.exit_code == 0 and "warning" not in r.stderr, r.stderr


def test_renamed_parquet_columns_give_the_same_lines_and_a_missing_one_is_an_error(hb: HandBundle,
                                                                                  tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    plain = invoke([str(write_jsonl(tmp_path / "plain.jsonl", [{**d, "id": str(d["id"])} for d in DOCS])),
                    "--bundle", str(hb.path)])
    src = tmp_path / "renamed.parquet"
    pq.write_table(pa.table({"doc_id": [str(d["id"]) for d in DOCS], "body": [d["text"] for d in DOCS],
                             "locale": [d.get("lang") for d in DOCS]}), src)
    r = invoke([str(src), "--bundle", str(hb.path), *FLAGS])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == plain.stdout
    # A column the user named and the file lacks: an error before any row, naming it and the file's columns
    # (a whole file without it is a mistake, where one JSONL record without a language is one to detect).
    r = invoke([str(src), "--bundle", str(hb.path), *FLAGS[:4], "--id-field", "uuid"])
    assert r.exit_code == 2
    assert "no 'uuid' (--id-field) column (it has doc_id, body, locale)" in r.stderr and str(src) in r.stderr
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and "no 'text' column" in r.stderr


def test_worker_processes_read_the_renamed_fields(hb: HandBundle, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "renamed.jsonl", RENAMED * 50)
    one = invoke([str(src), "--bundle", str(hb.path), *FLAGS])
    two = invoke([str(src), "--bundle", str(hb.path), *FLAGS, "--workers", "2", "--batch-size", "16"])
    assert one.exit_code == two.exit_code == 0, two.stderr
    assert two.stdout == one.stdout and len(one.stdout.splitlines()) == 200


@pytest.mark.parametrize(("flags", "message"), [
    (["--text-field", "id"], "three different fields"),
    (["--lang-field", "body", "--text-field", "body"], "three different fields"),
    (["--text-field", ""], "1 to 200 printable characters"),
    (["--id-field", "a\nb"], "1 to 200 printable characters"),
    (["--text-field", "x" * 201], "1 to 200 printable characters"),
])
def test_field_names_that_cannot_be_meant_are_refused(hb: HandBundle, tmp_path: Path, flags: list[str],
                                                      message: str) -> None:
    src = write_jsonl(tmp_path / "docs.jsonl", DOCS)
    r = invoke([str(src), "--bundle", str(hb.path), *flags])
    assert r.exit_code == 2 and message in r.stderr, r.stderr


def test_plain_text_has_no_fields_to_rename(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("bank market\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path), "--text-field", "body"])
    assert r.exit_code == 2 and "plain text has no fields" in r.stderr, r.stderr


def test_python_api_reads_renamed_keys(hb: HandBundle) -> None:
    from xtm.runtime.model import TopicModel

    model = TopicModel.load(hb.path, threads=1)
    plain = list(model.infer_records(DOCS))
    assert list(model.infer_records(RENAMED, text_field="body", lang_field="locale", id_field="doc_id")) == plain
    said: list[str] = []
    assert list(model.infer_records(RENAMED, report=said.append)) == []
    assert said[0] == "<records>:1: missing field 'text' (this line has 'body': --text-field body reads it)"
    with pytest.raises(XtmError, match="text_field must be a string, got int"):
        model.infer_records(DOCS, text_field=3)

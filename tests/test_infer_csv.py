"""CSV and TSV input to xtm-infer (xtm.runtime.delimited): the same lines as the same records in JSONL, and every
hostile row (malformed quoting, bytes that are not UTF-8, short rows, a header without the text) a bad row or a
clear error naming the file and line, never a crash or a silent loss of the rows after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bundle_fixture import HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main
from xtm.errors import XtmError

DOCS = [
    {"id": "a", "text": "The stock market, and the bank", "lang": "en"},
    {"id": "2", "text": "北京的经济增长很快"},
    {"id": "c", "text": "Football:\nthe team scored a \"goal\" in the match"},
    {"id": "d", "text": "中国足球队在比赛中进球", "lang": "zh"},
]
# The same records as a spreadsheet writes them: a byte-order mark, CRLF, quoted commas, quotes and a newline.
CSV = ('\ufeffid,text,lang\r\na,"The stock market, and the bank",en\r\n2,北京的经济增长很快,\r\n'
       'c,"Football:\nthe team scored a ""goal"" in the match",\r\nd,中国足球队在比赛中进球,zh\r\n')


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


def invoke(args: list[str], stdin: bytes | None = None):
    return CliRunner().invoke(main, args, input=stdin, catch_exceptions=False)


def jsonl_twin(tmp_path: Path, rows: list[dict]) -> str:
    src = tmp_path / "twin.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(src)


def test_csv_and_tsv_give_the_lines_of_the_same_records_in_jsonl(hb: HandBundle, tmp_path: Path) -> None:
    expected = invoke([jsonl_twin(tmp_path, DOCS), "--bundle", str(hb.path)])
    assert expected.exit_code == 0 and len(expected.stdout.splitlines()) == 4
    src = tmp_path / "docs.csv"
    src.write_bytes(CSV.encode("utf-8"))
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    assert r.stdout == expected.stdout and "warning" not in r.stderr
    assert [json.loads(line)["lang_conf"] is None for line in r.stdout.splitlines()] == [True, False, False, True]
    # TSV holds no tab or newline in a cell and no quoting: a quote is text (the '"goal"' below stays as it is).
    one_line = [{**d, "text": d["text"].replace("\n", " ")} for d in DOCS]
    tsv = tmp_path / "docs.tsv"
    tsv.write_text("id\ttext\tlang\n" + "".join(f"{d['id']}\t{d['text']}\t{d.get('lang', '')}\n" for d in one_line),
                   encoding="utf-8")
    r = invoke([str(tsv), "--bundle", str(hb.path)])
    assert r.exit_code == 0 and r.stdout == invoke([jsonl_twin(tmp_path, one_line), "--bundle", str(hb.path)]).stdout
    r = invoke([str(src), "--bundle", str(hb.path)])
    # From stdin, told the format; and by worker processes, the same bytes.
    assert invoke(["-", "--bundle", str(hb.path), "--input-format", "csv"], stdin=CSV.encode()).stdout == r.stdout
    many = tmp_path / "many.csv"
    many.write_bytes(CSV.encode() + CSV.split("\r\n", 1)[1].encode() * 60)
    one = invoke([str(many), "--bundle", str(hb.path)])
    two = invoke([str(many), "--bundle", str(hb.path), "--workers", "2", "--batch-size", "8"])
    assert one.exit_code == two.exit_code == 0 and one.stdout == two.stdout and len(one.stdout.splitlines()) == 244


def test_hostile_rows_are_bad_rows_named_by_the_line_they_start_on(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "hostile.csv"
    src.write_bytes(b"id,text,lang\n"
                    b'1,"a quoted\nfield over\nthree lines",en\n'   # lines 2-4: good
                    b"3,caf\xff bank,en\n"                          # line 5: not UTF-8
                    b"4\n"                                          # line 6: a short row, no text
                    b"5,bank market,en,extra,cells\n"               # line 7: extra cells are not read
                    b",stock market,\n"                             # line 8: empty id and lang: absent
                    b"7,   ,en\n"                                   # line 9: blank text
                    b"8,bank\x00market,en\n"                        # line 10: a NUL inside a text
                    b"\n"                                           # line 11: blank, not a row
                    b"9,market,xx-nope\n"                           # line 12: a language not served
                    b"10,,en\n")                                    # line 13: empty text cell
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    ids = [json.loads(line)["id"] for line in r.stdout.splitlines()]
    assert ids == ["1", "5", 8, "8"]  # the empty id is the line number, as an absent JSONL id
    err = r.stderr
    assert f"{src}:5: field 'text' is not UTF-8 text (byte 0xff)" in err
    assert f"{src}:6: missing field 'text'" in err
    assert f"{src}:9: empty text" in err and f"{src}:13: empty text" in err
    assert f"{src}:12: language 'xx-nope' is not served by this bundle" in err
    assert "skipped 5 of 9 lines" in err


@pytest.mark.parametrize(("content", "line", "message"), [
    # The reader cannot tell where a broken row ends: reading on gave pieces of one cell as rows under real ids.
    (b'text,id\n"economy bank"x,"football match\nteam goal player",7\nmusic film song,8\n', 2,
     "malformed CSV (',' expected after '\"'): the rows after it cannot be told apart"),
    # A quote never closed took the rest of the file as one bad row, under exit 0 ("skipped 2 of 3 lines").
    (b'text,id\nbank,1\n"never closed,2\n' + b"market,3\n" * 100, 3,
     "a quote opened on line 3 is never closed: lines 3-103 would be one cell"),
    (b"\xff\xfet\x00e\x00x\x00t\x00\n\x00", 1, "the file is UTF-16"),
])
def test_csv_that_cannot_be_read_with_confidence_stops_naming_the_line(hb: HandBundle, tmp_path: Path, content: bytes,
                                                                       line: int, message: str) -> None:
    src = tmp_path / "broken.csv"
    src.write_bytes(content)
    out = tmp_path / "out.jsonl"
    r = invoke([str(src), "--bundle", str(hb.path), "--out", str(out)])
    assert r.exit_code == 2 and f"{src}:{line}: {message}" in r.stderr, r.stderr
    assert not out.exists()


def test_a_line_past_the_limit_is_an_error_not_gigabytes(hb: HandBundle, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # A 100 MB line of 12.5 M short cells took 1.08 GB (the csv module holds a line and its cells at once).
    from xtm.runtime import delimited

    monkeypatch.setattr(delimited, "MAX_CSV_LINE", 1000)
    src = tmp_path / "wide.csv"
    src.write_text("id,text\n1,bank\n" + "x," * 1000 + "\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and f"{src}:3: a line longer than 1,000 characters" in r.stderr, r.stderr


def test_tsv_is_read_as_pandas_and_excel_write_it_and_an_unquoted_leading_quote_is_said(hb: HandBundle,
                                                                                      tmp_path: Path) -> None:
    """pandas, Python's csv module and Excel quote a TSV cell holding a quote or a newline (read without quoting, the
    doubled quotes stayed and a text over two lines became two rows); a TSV written without quoting (Postgres COPY)
    whose text begins with '"' swallowed the rest of the file under exit 0 when it was read on."""
    src = tmp_path / "pandas.tsv"
    src.write_text('id\tlang\ttext\na\ten\t"the ""market"" and bank"\nb\ten\t"stock prices\nrise again"\n'
                   'c\ten\tteam player coach\n', encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0 and [json.loads(x)["id"] for x in r.stdout.splitlines()] == ["a", "b", "c"], r.stderr
    same = [{"id": "a", "lang": "en", "text": 'the "market" and bank'},
            {"id": "b", "lang": "en", "text": "stock prices\nrise again"},
            {"id": "c", "lang": "en", "text": "team player coach"}]
    twin = invoke([jsonl_twin(tmp_path, same), "--bundle", str(hb.path)])
    assert r.stdout == twin.stdout
    copy = tmp_path / "copy.tsv"
    copy.write_text('text\tid\nbank market\t1\n"stock market\t2\n' + "football match\t3\n" * 50, encoding="utf-8")
    r = invoke([str(copy), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and f"{copy}:3: a quote opened on line 3 is never closed" in r.stderr, r.stderr
    assert "a TSV written without quoting, as Postgres COPY writes it" in r.stderr


def test_the_rows_before_a_broken_line_are_written_whatever_the_workers(hb: HandBundle, tmp_path: Path) -> None:
    """Rows before broken quoting were written in part, and a different part with --workers 2 (5,120 against
    2,048 of 6,000): now all of them, as JSONL's good lines before a bad one under --strict."""
    src = tmp_path / "big.csv"
    src.write_text("text,id\n" + "".join(f"bank market stock,{i}\n" for i in range(600)) + '"a"b,x\nteam,y\n',
                   encoding="utf-8")
    outs = [invoke([str(src), "--bundle", str(hb.path), "--batch-size", "16", *w]) for w in ([], ["--workers", "2"])]
    assert all(r.exit_code == 2 for r in outs)
    assert outs[0].stdout == outs[1].stdout and len(outs[0].stdout.splitlines()) == 600


def test_another_tools_names_for_the_columns_are_said(hb: HandBundle, tmp_path: Path) -> None:
    """A doc_id or language column was ignored without a word (ids became line numbers), as JSONL and Parquet
    say; a header ' Text' or 'content' got no hint of the option that reads it."""
    src = tmp_path / "docs.csv"
    src.write_text("text,doc_id,language\nbank market,a,en\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0 and "field 'doc_id' is not read" in r.stderr and "field 'language' is not read" \
        in r.stderr, r.stderr
    src.write_text(" Text,id\nbank market,a\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and "--text-field ' Text' reads ' Text'" in r.stderr, r.stderr


def test_a_text_past_the_csv_modules_own_limit_is_cut_as_in_jsonl(hb: HandBundle, tmp_path: Path) -> None:
    # The csv module refuses cells over 128 KiB by default: a long text was an error here and a warning in JSONL.
    src = tmp_path / "long.csv"
    src.write_text("id,text,lang\nlong," + "market " * 30_000 + ",en\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 0, r.stderr
    assert "text has 210,000 characters; using the first 100,000" in r.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("id,body,lang\n1,bank,en\n", "the header has no 'text' column (it has 'id', 'body', 'lang'): --text-field body "
                                  "reads 'body'"),
    ("text,id,text\nbank,1,market\n", "the header names column 'text' 2 times (columns 1 and 3)"),
    ("the stock market\nbank\n", "the header has no 'text' column (it has 'the stock market') (the first line is "
                                  "read as the header)"),
])
def test_a_header_without_the_text_column_is_an_error_before_any_row(hb: HandBundle, tmp_path: Path, content: str,
                                                                     message: str) -> None:
    src = tmp_path / "docs.csv"
    src.write_text(content, encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path)])
    assert r.exit_code == 2 and f"{src}:1: {message}" in r.stderr, r.stderr


def test_renamed_columns_an_empty_file_and_a_header_alone(hb: HandBundle, tmp_path: Path) -> None:
    src = tmp_path / "docs.csv"
    src.write_text("doc_id,body,locale\nx,the stock market,en\n", encoding="utf-8")
    r = invoke([str(src), "--bundle", str(hb.path), "--text-field", "body", "--lang-field", "locale",
                "--id-field", "doc_id"])
    assert r.exit_code == 0 and json.loads(r.stdout)["id"] == "x", r.stderr
    r = invoke([str(src), "--bundle", str(hb.path), "--text-field", "body", "--id-field", "uuid"])
    assert r.exit_code == 2 and "no 'uuid' (--id-field) column" in r.stderr
    for content in ("", "id,text,lang\n"):
        src.write_text(content, encoding="utf-8")
        r = invoke([str(src), "--bundle", str(hb.path)])
        assert r.exit_code == 1 and "no documents in the input" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["docs.csv", "notes.txt"])
def test_the_ray_engine_refuses_csv_and_plain_text_by_name(hb: HandBundle, tmp_path: Path, name: str) -> None:
    """Read as JSONL they were "invalid JSON" on every line, while the local engine reads them."""
    from xtm.runtime.ray import list_input_files

    src = tmp_path / name
    src.write_bytes(CSV.encode())
    with pytest.raises(XtmError, match="--engine ray reads JSONL and Parquet: read CSV, TSV and plain text with the "
                                       "local engine"):
        list_input_files([str(src)])

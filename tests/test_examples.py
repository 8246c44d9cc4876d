"""Tests for the built-in synthetic example corpus (xtm.examples)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from xtm.examples import CATEGORIES, write_example

# Small enough to keep the suite fast, large enough for every label/split to appear.
DOCS_PER_LANG = 120


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_example(tmp_path_factory.mktemp("ex"), docs_per_lang=DOCS_PER_LANG, seed=0)


def _read_jsonl(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _dict_pairs(path: Path) -> list[tuple[str, str]]:
    with open(path, encoding="utf-8") as f:
        return [tuple(line.rstrip("\n").split("\t")) for line in f]  # type: ignore[misc]


def test_writes_all_files(example: dict[str, Path]) -> None:
    assert set(example) == {"docs", "unseen", "dict", "ref_en", "ref_zh", "readme"}
    for path in example.values():
        assert path.is_file() and path.stat().st_size > 0
    # Atomic writes leave no temp files behind.
    assert not [p for p in example["docs"].parent.rglob("*") if ".tmp" in p.name]
    readme = example["readme"].read_text(encoding="utf-8")
    assert "synthetic" in readme.lower() and "xtm.examples" in readme and "License" in readme


def test_docs_fields_languages_splits_labels(example: dict[str, Path]) -> None:
    rows = _read_jsonl(example["docs"])
    assert len(rows) == 2 * DOCS_PER_LANG
    for r in rows:
        assert set(r) == {"id", "text", "lang", "label", "split"}
        assert all(isinstance(v, str) and v for v in r.values())
        assert r["id"].startswith(r["lang"] + "-")
        assert r["label"] in CATEGORIES and r["split"] in {"train", "test"}
    assert len({r["id"] for r in rows}) == len(rows)
    for lang in ("en", "zh"):
        sub = [r for r in rows if r["lang"] == lang]
        assert len(sub) == DOCS_PER_LANG
        assert {r["label"] for r in sub} == set(CATEGORIES)
        n_test = sum(r["split"] == "test" for r in sub)
        assert abs(n_test - 0.2 * DOCS_PER_LANG) <= len(CATEGORIES)
        assert {r["label"] for r in sub if r["split"] == "test"} == set(CATEGORIES)
    for r in rows:
        if r["lang"] == "en":
            assert 20 <= len(re.findall(r"[A-Za-z]+", r["text"])) <= 80
        else:
            assert " " not in r["text"] and re.search(r"[\u4e00-\u9fff]", r["text"])


def test_unseen_languages(example: dict[str, Path]) -> None:
    rows = _read_jsonl(example["unseen"])
    assert 24 <= len(rows) <= 96
    assert Counter(r["lang"] for r in rows).keys() == {"fr", "de", "es", "ja"}
    for r in rows:
        assert set(r) == {"id", "text", "lang", "label", "split"} and r["label"] in CATEGORIES


def test_deterministic(tmp_path: Path, example: dict[str, Path]) -> None:
    again = write_example(tmp_path / "a", docs_per_lang=DOCS_PER_LANG, seed=0)
    for name, path in example.items():
        assert path.read_bytes() == again[name].read_bytes(), name
    other = write_example(tmp_path / "b", docs_per_lang=DOCS_PER_LANG, seed=1)
    assert other["docs"].read_bytes() != example["docs"].read_bytes()


def test_dictionary(example: dict[str, Path]) -> None:
    pairs = _dict_pairs(example["dict"])
    assert len(pairs) > 100
    for pair in pairs:
        assert len(pair) == 2
        zh, en = pair
        assert re.fullmatch(r"[\u4e00-\u9fff]+", zh), zh
        assert re.fullmatch(r"[a-z]+", en), en
    zh_text = "".join(r["text"] for r in _read_jsonl(example["docs"]) if r["lang"] == "zh")
    en_words = {w.lower() for r in _read_jsonl(example["docs"]) if r["lang"] == "en"
                for w in re.findall(r"[A-Za-z]+", r["text"])}
    zh_words = {zh for zh, _ in pairs}
    assert sum(w in zh_text for w in zh_words) >= 0.9 * len(zh_words)
    assert sum(en in en_words for _, en in pairs) >= 0.85 * len(pairs)


def test_jieba_keeps_dictionary_words_whole(example: dict[str, Path]) -> None:
    jieba = pytest.importorskip("jieba")
    zh_words = {zh for zh, _ in _dict_pairs(example["dict"])}
    texts = [r["text"] for r in _read_jsonl(example["docs"]) if r["lang"] == "zh"]
    whole = total = 0
    for text in texts:
        tokens = Counter(jieba.lcut(text))
        for w in zh_words:
            n = text.count(w)
            total += n
            whole += min(n, tokens[w])
    assert total > 0
    assert whole >= 0.8 * total, f"only {whole}/{total} dictionary occurrences segmented whole"


def test_reference_corpus(example: dict[str, Path]) -> None:
    en = example["ref_en"].read_text(encoding="utf-8").splitlines()
    zh = example["ref_zh"].read_text(encoding="utf-8").splitlines()
    assert len(en) == len(zh) >= 200
    for line in en + zh:
        assert line and line == line.strip() and "  " not in line
    # Aligned lines are the same document: a topic word and its translation occur together.
    for en_word, zh_word in (("match", "比赛"), ("stock", "股票"), ("designer", "设计师")):
        hits = [(en_word in e.split(), zh_word in z.split()) for e, z in zip(en, zh, strict=True)]
        assert any(a for a, _ in hits) and all(a == b for a, b in hits)


def test_xtm_example_prints_paths_and_its_readme_command_gives_the_same_bytes(tmp_path: Path) -> None:
    """The console script (the one command line of the example: `python -m xtm.examples` is gone) prints
    what it wrote, and the command README.txt gives to rerun it writes the same bytes, --docs-per-lang
    included (the README gave only --seed, so an example of another size was not reproduced)."""
    script = Path(sys.executable).with_name("xtm-example")
    p = subprocess.run([str(script), str(tmp_path / "cli"), "--docs-per-lang", "12", "--seed", "3"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "docs.jsonl" in p.stdout and "dict.tsv" in p.stdout and "ref.zh.tok.txt" in p.stdout and not p.stderr
    readme = (tmp_path / "cli" / "README.txt").read_text(encoding="utf-8")
    rerun = re.search(r"`(xtm-example OUT_DIR [^`]*)`", readme)
    assert rerun is not None and rerun[1] == "xtm-example OUT_DIR --docs-per-lang 12 --seed 3"
    p = subprocess.run([str(script), str(tmp_path / "again"), *rerun[1].split()[2:]], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    written = sorted(f.relative_to(tmp_path / "cli") for f in (tmp_path / "cli").rglob("*") if f.is_file())
    assert written == sorted(f.relative_to(tmp_path / "again") for f in (tmp_path / "again").rglob("*") if f.is_file())
    assert all((tmp_path / "cli" / f).read_bytes() == (tmp_path / "again" / f).read_bytes() for f in written)


def test_files_of_those_names_are_replaced_only_where_the_example_was_written(tmp_path: Path) -> None:
    from xtm.errors import XtmError

    write_example(tmp_path / "ex", docs_per_lang=12)
    write_example(tmp_path / "ex", docs_per_lang=12, seed=1)  # its own directory: rewritten
    mine = tmp_path / "demo"  # a user's own demo/docs.jsonl was replaced
    mine.mkdir()
    (mine / "docs.jsonl").write_text("my corpus\n", encoding="utf-8")
    with pytest.raises(XtmError, match="holds docs.jsonl, not written by xtm-example"):
        write_example(mine, docs_per_lang=12)
    assert sorted(p.name for p in mine.iterdir()) == ["docs.jsonl"]
    assert (mine / "docs.jsonl").read_text(encoding="utf-8") == "my corpus\n"
    (tmp_path / "project").mkdir()  # other files are left beside the example
    (tmp_path / "project" / "notes.txt").write_text("x", encoding="utf-8")
    write_example(tmp_path / "project", docs_per_lang=12)
    assert (tmp_path / "project" / "notes.txt").read_text(encoding="utf-8") == "x"


def test_xtm_example_is_a_click_command_like_the_others(tmp_path: Path) -> None:
    """`xtm-example` (issue 16): the same files as write_example, a line per file, --help with
    examples, --version, bad values as usage errors and unwritable places as one `error:` line."""
    from click.testing import CliRunner

    import xtm
    from xtm.cli.example import main as example_main

    runner = CliRunner()
    r = runner.invoke(example_main, [str(tmp_path / "a"), "--docs-per-lang", "12", "--seed", "3"])
    assert r.exit_code == 0, r.output
    write_example(tmp_path / "b", docs_per_lang=12, seed=3)
    assert (tmp_path / "a" / "docs.jsonl").read_bytes() == (tmp_path / "b" / "docs.jsonl").read_bytes()
    assert [line.split()[0] for line in r.stdout.splitlines()] == ["docs", "unseen", "dict", "ref_en", "ref_zh",
                                                                   "readme"]
    assert runner.invoke(example_main, ["--version"]).stdout.startswith(f"xtm-example (xtm) {xtm.__version__}\n")
    assert "Examples:" in runner.invoke(example_main, ["--help"]).stdout
    r = runner.invoke(example_main, [str(tmp_path / "c"), "--docs-per-lang", "3"])
    assert r.exit_code == 2 and "--docs-per-lang" in r.stderr and not (tmp_path / "c").exists()
    (tmp_path / "file").write_text("x", encoding="utf-8")
    r = runner.invoke(example_main, [str(tmp_path / "file" / "sub")])
    assert r.exit_code == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.output

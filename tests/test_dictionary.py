"""Bilingual dictionary reading and vocabulary linking."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from shared_data import need

from xtm.errors import XtmError
from xtm.trainer.data.dictionary import build_links, read_dictionary


def read_vocab(p: Path) -> list[str]:
    return p.read_text(encoding="utf-8").splitlines()


def test_read_tsv_space_comments_crlf_bom(tmp_path: Path) -> None:
    f = tmp_path / "d.tsv"
    f.write_bytes("\ufeff# a comment\r\n猫\tcat\r\n\r\n犬 dog\n  鳥\t bird \n".encode())
    assert read_dictionary(f) == [("猫", "cat"), ("犬", "dog"), ("鳥", "bird")]


def test_malformed_lines_skipped_with_warning(tmp_path: Path) -> None:
    f = tmp_path / "d.tsv"
    f.write_text("a\tb\none two three\nc\td\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 1 malformed line\(s\), first at line 2"):
        assert read_dictionary(f) == [("a", "b"), ("c", "d")]


def test_no_valid_pair_names_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "d.tsv"
    f.write_text("# header\none two three\nfour\n", encoding="utf-8")
    with pytest.raises(XtmError) as e:
        read_dictionary(f)
    assert e.value.path == str(f) and e.value.line == 2
    assert "no valid" in str(e.value) and str(f) in str(e.value)


@pytest.mark.parametrize(("content", "message"), [
    # MUSE-style scores on every line: was "no valid pair ... (this line is the first that is not one)" alone
    ("world\t世界\t0.9\nalbum\t专辑\t0.8\n".encode(), "3 columns, expected 2 (source<TAB>target)"),
    ("ice cream 冰淇淋\n".encode(), "3 words and no tab, expected 2"),
    ("world\t世界\ralbum\t专辑\r".encode(), "its lines end in CR alone"),  # read as one line of 3 columns
    ("world\t世界\n".encode("utf-16"), "UTF-16 text: save it as UTF-8"),  # was "binary data (NUL byte)"
    ("world\t世界\n".encode("utf-32"), "UTF-32 text: save it as UTF-8"),
])
def test_a_file_without_pairs_says_why(tmp_path: Path, content: bytes, message: str) -> None:
    f = tmp_path / "d.tsv"
    f.write_bytes(content)
    with pytest.raises(XtmError) as e:
        read_dictionary(f)
    assert e.value.path == str(f) and message in str(e.value)


def test_three_columns_among_pairs_are_still_skipped_with_a_warning(tmp_path: Path) -> None:
    f = tmp_path / "d.tsv"
    f.write_text("a\tb\nc\td\t0.5\ne\tf\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"skipped 1 malformed line\(s\), first at line 2"):
        assert read_dictionary(f) == [("a", "b"), ("e", "f")]


def test_binary_and_undecodable_files(tmp_path: Path) -> None:
    f = tmp_path / "junk.bin"
    f.write_bytes(b"a\tb\nc\td\n\x00\x01\x02\xff")
    with pytest.raises(XtmError, match="binary") as e:
        read_dictionary(f)
    assert (e.value.path, e.value.line) == (str(f), 3)
    g = tmp_path / "latin1.txt"
    g.write_bytes("a\tb\ncaf\xe9\tcoffee\n".encode("latin-1"))
    with pytest.raises(XtmError, match="UTF-8") as e:
        read_dictionary(g)
    assert (e.value.path, e.value.line) == (str(g), 2)


def test_endless_and_huge_files_are_not_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--dict /dev/zero was read whole (a MemoryError traceback); a file past the bound is not a dictionary."""
    import xtm.trainer.data.dictionary as dictionary

    with pytest.raises(XtmError, match="binary data") as e:
        read_dictionary("/dev/zero")
    assert e.value.line == 1
    monkeypatch.setattr(dictionary, "MAX_DICTIONARY_BYTES", 3 << 20)
    big = tmp_path / "big.tsv"
    big.write_bytes(b"word\tmot\n" * 400_000)  # 4 MB
    with pytest.raises(XtmError, match="larger than 3 MiB"):
        read_dictionary(big)
    ok = tmp_path / "ok.tsv"
    ok.write_bytes(b"word\tmot\n" * 300_000)  # 3,000,000 bytes: under the bound, read
    assert len(read_dictionary(ok)) == 300_000


def test_empty_missing_and_directory(tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(XtmError, match="empty") as e:
        read_dictionary(empty)
    assert e.value.path == str(empty)
    with pytest.raises(XtmError, match="not found") as e:
        read_dictionary(tmp_path / "nope.txt")
    assert e.value.path == str(tmp_path / "nope.txt")
    with pytest.raises(XtmError, match="directory"):
        read_dictionary(tmp_path)


def test_links_pick_the_orientation_that_matches() -> None:
    pairs = [("猫", "cat"), ("犬", "dog"), ("犬", "hound"), ("猫", "cat"), ("鱼", "fish")]
    en = ["cat", "dog", "hound", "tree"]
    zh = ["狗", "猫", "犬"]
    m, stats = build_links(pairs, en, zh, names=("en", "zh"))
    assert isinstance(m, sp.csr_matrix) and m.dtype == np.float32 and m.shape == (4, 3)
    # Binary although (猫, cat) is listed twice.
    assert m.toarray().tolist() == [[0, 1, 0], [0, 0, 1], [0, 0, 1], [0, 0, 0]]
    assert stats["orientation"] == "zh->en"
    assert stats["pairs_read"] == 5 and stats["pairs_matched"] == 4 and stats["links"] == 3
    assert stats["words_covered"] == {"en": 3, "zh": 2}
    assert stats["stemmed"] is False
    m2, stats2 = build_links(pairs, zh, en, names=("zh", "en"))
    assert stats2["orientation"] == "zh->en"
    assert (m2.toarray() == m.toarray().T).all()


STEMS = ["comput", "certif", "nation", "agre", "happi", "run", "univers", "gener", "organ", "studi",
         "polit", "invest", "market", "educ", "compani", "technolog", "game", "player", "film", "music",
         "fashion", "busi", "sport", "govern"]


def test_stemmed_dictionary_side_matches_via_porter_stem() -> None:
    pairs = [(f"词{i}", s) for i, s in enumerate(STEMS)]
    en = ["computers", "certification", "happiness", "organization", "running", "xylophone"]
    zh = [f"词{i}" for i in range(len(STEMS))]
    m, stats = build_links(pairs, en, zh, names=("en", "zh"))
    assert stats["stemmed"] is True and stats["stemmed_sides"] == ["en"]
    linked = {en[i]: STEMS[int(zh[j][1:])] for i, j in zip(*m.nonzero(), strict=True)}
    assert linked == {"computers": "comput", "certification": "certif", "happiness": "happi",
                      "organization": "organ", "running": "run"}


def test_plain_dictionary_is_matched_exactly() -> None:
    words = ["computer", "certificate", "nation", "agreement", "happiness", "running", "university",
             "general", "organ", "organization", "study", "politics", "investment", "market",
             "education", "company", "technology", "games", "players", "films", "music", "fashion",
             "business", "sports", "government"]
    pairs = [(f"词{i}", w) for i, w in enumerate(words)]
    # `organizations` stems to `organ`: on a plain dictionary that would be a false link.
    m, stats = build_links(pairs, ["organizations", "organ", "music"], [f"词{i}" for i in range(len(words))])
    assert stats["stemmed"] is False
    assert m.getnnz(axis=1).tolist() == [0, 1, 1]


def test_no_match_is_a_clear_error() -> None:
    with pytest.raises(XtmError, match="matches none of the vocabularies"):
        build_links([("gato", "Katze"), ("perro", "Hund")], ["cat", "dog"], ["猫", "狗"])


@pytest.mark.benchmark_data
def test_ecnews_ch_en_dictionary_with_stemming() -> None:
    path = need("dict", "ch_en_dict.dat")
    vocab_en = read_vocab(need("ECNews", "vocab_en"))
    vocab_cn = read_vocab(need("ECNews", "vocab_cn"))
    t = time.perf_counter()
    pairs = read_dictionary(path)
    m, stats = build_links(pairs, vocab_en, vocab_cn, names=("en", "zh"))
    elapsed = time.perf_counter() - t
    assert stats["pairs_read"] == len(pairs) == 487_333
    assert stats["stemmed"] is True and stats["stemmed_sides"] == ["en"]
    assert stats["orientation"] == "zh->en"
    # Unstemmed matching (TopMost) finds 9,788 links on 1,425 English words.
    assert m.nnz == stats["links"] > 20_000
    assert stats["words_covered"]["en"] > 3_000
    assert m.shape == (5000, 5000) and set(np.unique(m.data)) == {1.0}
    i, j = vocab_en.index("computer"), vocab_cn.index("电脑")
    assert m[i, j] == 1.0
    assert elapsed < 10.0  # about 3 s; generous for a loaded CI machine


@pytest.mark.benchmark_data
def test_rakuten_muse_ja_en_dictionary() -> None:
    pairs = read_dictionary(need("dict", "MUSE", "ja-en.txt"))
    vocab_en = read_vocab(need("Rakuten_Amazon", "vocab_en"))
    vocab_ja = read_vocab(need("Rakuten_Amazon", "vocab_ja"))
    m, stats = build_links(pairs, vocab_en, vocab_ja, names=("en", "ja"))
    assert stats["orientation"] == "ja->en" and stats["stemmed"] is False
    assert stats["links"] > 1_000
    assert m[vocab_en.index("japan"), vocab_ja.index("日本")] == 1.0


def test_no_nltk_warning_where_no_vocabulary_has_latin_words() -> None:
    """Linking zh and ja vocabularies with a dictionary that holds English words warned 'nltk is not installed'
    with nltk installed: no stemmer was wanted, none was missing."""
    import warnings

    pairs = [("猫", "cat"), ("ねこ", "cat"), ("犬", "いぬ")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m, _ = build_links(pairs, ["猫", "犬"], ["いぬ", "ねこ"], names=("zh", "ja"))
    assert m.nnz == 1

"""Small text inputs read whole (xtm.text_files): the word list of xtm-train --stopwords."""

from __future__ import annotations

from pathlib import Path

import pytest

from xtm.errors import XtmError
from xtm.text_files import MAX_WORD_LIST_BYTES, read_word_list, word_list_option


def test_a_word_list_reads_words_in_order_once_without_comments_or_a_bom(tmp_path: Path) -> None:
    p = tmp_path / "w.txt"
    p.write_bytes("\ufeff# boilerplate\r\n  product \r\ncustomer\n\n#not a word\nproduct\n제품\x0cx\n".encode())
    # (a form feed is not a line end here: the line numbers are those an editor shows)
    with pytest.raises(XtmError, match=r"w.txt:7: '제품\\x0cx' is several words"):
        read_word_list(p)
    p.write_bytes("\ufeff# boilerplate\r\n  product \r\ncustomer\n\n#not a word\nproduct\n제품\n".encode())
    assert read_word_list(p) == ("product", "customer", "제품")
    assert word_list_option(None) == () and word_list_option(str(p)) == ("product", "customer", "제품")


def test_dev_zero_a_directory_and_an_oversized_file_are_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(XtmError, match="binary data"):
        read_word_list("/dev/zero")  # stops after the first MiB
    with pytest.raises(XtmError, match="is a directory, expected a word list file"):
        read_word_list(tmp_path)
    with pytest.raises(XtmError, match="word list file not found"):
        read_word_list(tmp_path / "missing.txt")
    big = tmp_path / "big.txt"
    big.write_bytes(b"word\n" * (MAX_WORD_LIST_BYTES // 5 + 1))
    with pytest.raises(XtmError, match="larger than 16 MiB: not a word list"):
        read_word_list(big)


def test_a_line_after_a_byte_order_mark_is_numbered_as_an_editor_shows_it(tmp_path: Path) -> None:
    """Decoding with "utf-8-sig" counted error offsets after the mark: the bad byte of line 3 was reported at line 1."""
    p = tmp_path / "w.txt"
    p.write_bytes(b"\xef\xbb\xbfa\n\n\xe9\n")
    with pytest.raises(XtmError, match="not valid UTF-8") as e:
        read_word_list(p)
    assert e.value.line == 3

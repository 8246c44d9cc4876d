"""Small text inputs read whole (a bilingual dictionary, parallel text, a stopword list): bounded, and every way
one can be wrong named with its file and line."""

from __future__ import annotations

import codecs
from pathlib import Path

from xtm.errors import XtmError

__all__ = ["MAX_WORD_LIST_BYTES", "is_one_word", "read_bounded", "read_text_file", "read_word_list",
           "word_list_option"]

# A list of stopwords is kilobytes; a file past this is another kind of file.
MAX_WORD_LIST_BYTES = 16 << 20


def read_bounded(path: Path, limit: int) -> bytes:
    """A text input read whole, at most `limit` + 1 bytes: a longer result means the file is over the bound.
    Reading stops after the first MiB when it holds a NUL byte (never in text), so /dev/zero or a binary fails at
    once instead of filling memory. OSError passes through."""
    with open(path, "rb") as f:
        data = f.read(min(1 << 20, limit + 1))
        if b"\x00" not in data and len(data) <= limit:
            data += f.read(limit + 1 - len(data))
    return data


# Marks of the encodings whose text holds NUL bytes (UTF-32 first: its little-endian mark starts as UTF-16's).
_WIDE_BOMS = (("UTF-32", codecs.BOM_UTF32_LE), ("UTF-32", codecs.BOM_UTF32_BE), ("UTF-16", codecs.BOM_UTF16_LE),
              ("UTF-16", codecs.BOM_UTF16_BE))


def _line_of(data: bytes, offset: int) -> int:
    return data.count(b"\n", 0, offset) + 1


def read_text_file(path: str | Path, limit: int, what: str, form: str) -> str:
    """`path` as UTF-8 text (a BOM dropped), at most `limit` bytes. A missing, unreadable, oversized, binary or
    non-UTF-8 file is an XtmError naming it (and the line, where there is one): "expected a `what` `form`"."""
    p = Path(path)
    try:
        data = read_bounded(p, limit)
    except IsADirectoryError:
        raise XtmError(f"is a directory, expected a {what} file", path=p) from None
    except FileNotFoundError:
        raise XtmError(f"{what} file not found", path=p) from None
    except OSError as e:
        raise XtmError(f"cannot read {what}: {e.strerror or e}", path=p) from None
    if len(data) > limit:
        raise XtmError(f"larger than {limit >> 20} MiB: not a {what} {form}", path=p)
    # Before the NUL check: a UTF-16 file (Windows' "Unicode" text) is no binary, only another encoding.
    encoding = next((name for name, bom in _WIDE_BOMS if data.startswith(bom)), None)
    if encoding is not None:
        raise XtmError(f"{encoding} text: save it as UTF-8, expected a UTF-8 {what} {form}", path=p)
    nul = data.find(b"\x00")
    if nul >= 0:
        raise XtmError(f"binary data (NUL byte), expected a text {what} {form}", path=p, line=_line_of(data, nul))
    data = data.removeprefix(b"\xef\xbb\xbf")  # (not "utf-8-sig": its error offsets skip the mark, and lines with it)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise XtmError(f"not valid UTF-8 text, expected a {what} {form}", path=p,
                       line=_line_of(data, e.start)) from None


def is_one_word(value: object) -> bool:
    """Whether `value` is a string of one word (no whitespace inside or only around it): an entry of a word list."""
    return isinstance(value, str) and len(value.split()) == 1


def read_word_list(path: str | Path) -> tuple[str, ...]:
    """The words of a list with one word a line (blank lines and lines starting with # skipped), in file order
    without repeats. A line of several words, or a file without any, is an XtmError naming it."""
    p = Path(path)
    words: dict[str, None] = {}
    text = read_text_file(p, MAX_WORD_LIST_BYTES, "word list", "(one word a line)")
    for lineno, line in enumerate(text.split("\n"), start=1):  # (splitlines also cuts at \x0c, \u2028, ...)
        word = line.strip()
        if not word or word.startswith("#"):
            continue
        if not is_one_word(word):
            raise XtmError(f"{word[:60]!r} is several words: one word a line", path=p, line=lineno)
        words[word] = None
    if not words:
        raise XtmError("holds no words: expected one word a line", path=p)
    return tuple(words)


def word_list_option(path: str | None) -> tuple[str, ...]:
    """A command-line option naming a word list: its words, or none when the option is absent."""
    return () if path is None else read_word_list(path)

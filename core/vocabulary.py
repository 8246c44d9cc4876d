"""Vocabulary files: one word per line, line j = column j of the bag of words. One reader, one rule.

Run directories (vocab_<lang>.txt), bundles (the same files, copied) and benchmark directories
(vocab_<L>) all hold vocabularies in this format, so they are read here and nowhere else:
UTF-8 (a byte-order mark dropped), lines separated by "\\n" (a trailing "\\r" is dropped, a final
newline is optional), no empty word, no word twice (a repeated word would make its column
ambiguous). Violations are an XtmError naming the file and line.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from xtm.atomic import write_text
from xtm.errors import XtmError

__all__ = ["parse_vocabulary", "read_vocabulary", "write_vocabulary"]


def read_vocabulary(path: str | Path, expected_size: int | None = None) -> list[str]:
    """The words of a vocabulary file, in column order; XtmError naming the file (and line) when it
    is unreadable, not UTF-8, has an empty or repeated word, or not `expected_size` words."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise XtmError(f"cannot read the vocabulary: {e.strerror or e}", path=path) from None
    return parse_vocabulary(raw, path, expected_size)


def parse_vocabulary(raw: bytes, path: str | Path, expected_size: int | None = None) -> list[str]:
    """read_vocabulary's words and checks on a file's bytes already read (a bundle's, checked against its
    checksum first); errors name `path`."""
    path = Path(path)
    # A Windows editor's byte-order mark is not part of the first word (it lost that word's dictionary links).
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise XtmError(f"not UTF-8 (byte 0x{raw[e.start]:02x}): a vocabulary is one UTF-8 word per line",
                       path=path, line=line) from None
    words = text.split("\n")
    if words and words[-1] == "":
        words.pop()
    words = [w[:-1] if w.endswith("\r") else w for w in words]
    seen: dict[str, int] = {}
    for i, w in enumerate(words, start=1):
        if not w.strip():
            raise XtmError("empty vocabulary entry", path=path, line=i)
        if any(c.isspace() for c in w):  # topic files list words separated by spaces, one topic a line
            raise XtmError(f"the word {w!r} contains whitespace (a space, tab or line separator): a vocabulary "
                           "word is one token", path=path, line=i)
        first = seen.setdefault(w, i)
        if first != i:
            raise XtmError(f"the word {w!r} is listed twice (lines {first} and {i})", path=path, line=i)
    if expected_size is not None and len(words) != expected_size:
        raise XtmError(f"has {len(words)} words, expected {expected_size}", path=path)
    return words


def write_vocabulary(path: str | Path, words: Sequence[str]) -> None:
    """Write `words` one per line (atomically); refuses words `read_vocabulary` could not read back."""
    for i, w in enumerate(words, start=1):
        if not w.strip() or any(c.isspace() for c in w):
            raise XtmError(f"word {i} ({w!r}) cannot be written to a vocabulary file", path=path)
    write_text(path, "".join(w + "\n" for w in words))

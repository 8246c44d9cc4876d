"""Parallel text a user gives the contextual head (`xtm-contextual RUN_DIR --parallel FILE`).

The head's cross-lingual consistency term (`lambda_xl`) pulls together the theta of documents that say
the same thing in two languages. By default those are pseudo-parallel training documents mined with the
sentence encoder: comparable, not parallel (about half of ECNews' mined en-zh pairs share a category).
Translations a user has are exact pairs, in the run's languages or in others the encoder reads; what they
are worth depends on how close they are to the user's documents (docs/contextual.md, Choice 9 measures
out-of-domain and in-domain pairs).

FILE is JSONL, one object per line mapping language codes to the same text in each language:

    {"en": "The central bank raised rates.", "ja": "中央銀行は利上げした。", "fr": "La banque a relevé ses taux."}

Codes are ISO 639-1 (aliases such as `cn` are mapped); an `id` key is allowed and ignored. Each line
gives one pair per language after the anchor: the run's first training language when the line has it,
else the line's first language. Blank lines are skipped; anything else that is not such an object is an
XtmError naming the file, line and field.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.runtime.records import drop_bom
from xtm.text_files import read_bounded
from xtm.trainer.data.jsonl import check_unicode_text, json_object

# Parallel text is held in memory whole (every pair is a training example); past this it is not a parallel text
# a contextual fit reads.
MAX_PARALLEL_BYTES = 1 << 30

__all__ = ["ParallelText", "read_parallel"]

IGNORED_KEYS = frozenset({"id"})


@dataclass
class ParallelText:
    """The translations of one file, line by line ({language: text}, at least two languages each)."""

    lines: list[dict[str, str]]
    file: str
    sha256: str

    def pairs(self, anchor: str) -> tuple[list[str], list[str], Counter[str]]:
        """(left, right, pairs per "a-b"): left[i] translates right[i]. Each line pairs its anchor (`anchor`
        where the line has it, else the line's first language) with each of its other languages."""
        left: list[str] = []
        right: list[str] = []
        counts: Counter[str] = Counter()
        for texts in self.lines:
            first = anchor if anchor in texts else next(iter(texts))
            for lang, text in texts.items():
                if lang != first:
                    left.append(texts[first])
                    right.append(text)
                    counts[f"{first}-{lang}"] += 1
        return left, right, counts


def read_parallel(path: str | Path) -> ParallelText:
    """A parallel JSONL file (module doc), every line checked: read before any expensive step, so a bad
    file fails in seconds."""
    path = Path(path)
    try:
        data = read_bounded(path, MAX_PARALLEL_BYTES)  # (--parallel /dev/zero was read whole: a MemoryError)
    except OSError as e:
        raise XtmError(f"cannot read the parallel text: {e.strerror or e}", path=path) from None
    if len(data) > MAX_PARALLEL_BYTES:
        raise XtmError(f"larger than {MAX_PARALLEL_BYTES >> 20} MiB: split the parallel text or sample it", path=path)
    lines = []
    for lineno, raw in enumerate(data.splitlines(), start=1):
        raw = drop_bom(lineno, raw)
        if raw.strip():
            lines.append(_line_texts(raw, path, lineno))
    if not lines:
        raise XtmError("no parallel text: expected JSONL lines such as {\"en\": \"...\", \"ja\": \"...\"}",
                       path=path)
    if sum(len(texts) - 1 for texts in lines) < 2:  # the consistency term compares a batch of at least two pairs
        raise XtmError("one pair is not enough parallel text: give at least two", path=path)
    return ParallelText(lines=lines, file=path.name, sha256=hashlib.sha256(data).hexdigest())


def _line_texts(raw: bytes, path: Path, lineno: int) -> dict[str, str]:
    """One line's {language: text}, in the line's order, with at least two languages."""
    obj = json_object(raw, path, lineno)
    texts: dict[str, str] = {}
    for key, text in obj.items():
        if key in IGNORED_KEYS:
            continue
        try:
            lang = normalize_lang(key)
        except XtmError as e:
            raise XtmError(e.reason, path=path, line=lineno, field=key) from None
        if lang in texts:
            raise XtmError(f"names language '{lang}' twice", path=path, line=lineno, field=key)
        if not isinstance(text, str):
            raise XtmError(f"must be a string, got {type(text).__name__}", path=path, line=lineno, field=key)
        check_unicode_text(text, path, lineno, key)
        if text.strip():
            texts[lang] = text
    if len(texts) < 2:
        raise XtmError(f"needs the same text in at least two languages, got {sorted(texts) or 'none'}",
                       path=path, line=lineno)
    return texts

"""Language identification with py3langid (its model ships in the wheel: no download, no torch)."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Sequence
from typing import Any

from xtm.errors import XtmError
from xtm.languages import normalize_lang

__all__ = ["detect_language", "detect_languages"]

_lock = threading.Lock()
_identifier: Any = None


def _get_identifier() -> Any:
    global _identifier
    if _identifier is None:
        with _lock:
            if _identifier is None:
                # Our own instance, not py3langid's module-level one: set_languages() there is
                # global state that other code in the process could change under us.
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                _identifier = LanguageIdentifier.from_model_file(MODEL_FILE)
    return _identifier


# Writing systems that tell candidate languages apart without a statistical model.
_SCRIPTS = {
    "kana": re.compile(r"[\u3040-\u30ff]"),
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]"),
    "hangul": re.compile(r"[\u1100-\u11ff\uac00-\ud7af]"),
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
}
_LANG_SCRIPTS: dict[str, frozenset[str]] = {
    "zh": frozenset({"han"}), "ja": frozenset({"kana", "han"}), "ko": frozenset({"hangul"}),
    **{c: frozenset({"cyrillic"}) for c in ("ru", "uk", "bg", "sr", "mk", "be", "kk")},
    **{c: frozenset({"arabic"}) for c in ("ar", "fa", "ur")},
    "el": frozenset({"greek"}), "he": frozenset({"hebrew"}), "th": frozenset({"thai"}),
    **{c: frozenset({"devanagari"}) for c in ("hi", "mr", "ne")},
}


def _dominant_script(text: str) -> str | None:
    counts = {name: len(rx.findall(text)) for name, rx in _SCRIPTS.items()}
    if counts["kana"]:  # any kana in CJK text means Japanese writing, whatever the kanji count
        counts["kana"] += counts["han"]
        counts["han"] = 0
    name, best = max(counts.items(), key=lambda kv: kv[1])
    return name if best else None


def _by_script(text: str, wanted: set[str]) -> str | None:
    """The one candidate whose writing system the text uses, if exactly one fits (else None).

    With candidates like {en, zh} or {en, ja} this answers at regex speed, ~10x faster than the
    statistical model, and is never wrong where the scripts differ; {en, fr} falls through.
    """
    script = _dominant_script(text)
    if script is None:
        return None
    fits = [c for c in wanted if script in _LANG_SCRIPTS.get(c, frozenset({"latin"}))]
    return fits[0] if len(fits) == 1 else None


def detect_language(text: str, candidates: Sequence[str] | None = None) -> str:
    """ISO 639-1 code of the language `text` is written in.

    `candidates` restricts the answer to those languages (more reliable on short texts, e.g.
    kanji-only Japanese that would otherwise read as Chinese).
    """
    if not isinstance(text, str) or not text.strip():
        raise XtmError("cannot detect the language of an empty text")
    wanted = {normalize_lang(c) for c in candidates} if candidates else None
    if wanted is not None and len(wanted) == 1:
        return next(iter(wanted))
    if wanted is not None:
        fast = _by_script(text, wanted)
        if fast is not None:
            return fast
    # rank() scores every language without touching the identifier's state (thread-safe). The
    # model also knows languages without an ISO 639-1 code (e.g. `fuv`); those are skipped.
    for code, _score in _get_identifier().rank(text):
        try:
            iso = normalize_lang(code)
        except XtmError:
            continue
        if wanted is None or iso in wanted:
            return iso
    raise XtmError(f"none of the candidate languages {sorted(wanted or [])} is known to the "
                   "language identifier")


def detect_languages(texts: Iterable[str], candidates: Sequence[str] | None = None) -> list[str]:
    """detect_language for each text."""
    return [detect_language(t, candidates) for t in texts]

"""Language identification with py3langid (its model ships in the wheel: no download, no torch)."""

from __future__ import annotations

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

"""Language codes: ISO 639-1 everywhere a user sees them, dataset aliases mapped, nothing else guessed."""

from __future__ import annotations

import pytest

from xtm.errors import XtmError
from xtm.languages import normalize_lang


@pytest.mark.parametrize(("given", "code"), [
    ("en", "en"), ("EN", "en"), (" en-US ", "en"), ("zh_TW", "zh"), ("zh-Hans", "zh"), ("cn", "zh"), ("jp", "ja"),
    ("eng", "en"), ("kor", "ko"),
    # Every named language's ISO 639-2 codes (terminology and bibliographic) and English name, not some of them.
    ("ita", "it"), ("por", "pt"), ("zho", "zh"), ("chi", "zh"), ("vie", "vi"), ("ara", "ar"), ("hin", "hi"),
    ("Italian", "it"), ("PORTUGUESE", "pt"), ("Chinese", "zh"), ("wel", "cy"), ("pt-BR", "pt"), ("en_US", "en"),
    ("iw", "he"), ("in", "id"), ("ji", "yi"), ("jw", "jv"),  # withdrawn ISO codes Java's Locale still writes
    ("kr", "kr"),  # Kanuri's ISO 639-1 code: not an alias of Korean (ko)
])
def test_codes_and_aliases_map_to_iso_639_1(given: str, code: str) -> None:
    assert normalize_lang(given) == code


@pytest.mark.parametrize("bad", ["", "  ", "xyz", "中文", "e1", None, 3])
def test_what_is_no_language_code_is_one_error(bad: object) -> None:
    with pytest.raises(XtmError, match="invalid language code"):
        normalize_lang(bad)  # type: ignore[arg-type]

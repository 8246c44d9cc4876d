"""Language codes: ISO 639-1 everywhere a user sees them; dataset aliases are accepted and mapped."""

from __future__ import annotations

from xtm.errors import XtmError

# Aliases found in public datasets and tools (e.g. `cn` in ECNews, `jp` in some corpora).
ALIASES: dict[str, str] = {
    "cn": "zh",
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "chinese": "zh",
    "jp": "ja",
    "jpn": "ja",
    "japanese": "ja",
    "eng": "en",
    "english": "en",
    "fra": "fr",
    "fre": "fr",
    "deu": "de",
    "ger": "de",
    "spa": "es",
    "kor": "ko",
    "rus": "ru",
    # ISO 639-1's withdrawn codes, which Java's Locale still writes: the same languages as their new codes.
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "jw": "jv",
}
# Not aliases, though datasets use them so: ISO 639-1 codes of other languages ("kr" is Kanuri, not Korean;
# "ko" is Korean). A code ISO 639-1 assigns is read as that language.

# Scripts that do not separate words with spaces: they need a word segmenter.
UNSEGMENTED = frozenset({"zh", "ja", "th", "lo", "km", "my"})


def normalize_lang(code: str) -> str:
    """Map a language code or known alias to ISO 639-1 (`cn` -> `zh`, `EN` -> `en`)."""
    if not isinstance(code, str) or not code.strip():
        raise XtmError(f"invalid language code {code!r}: expected an ISO 639-1 code such as 'en'")
    c = code.strip().lower().replace("_", "-")
    c = ALIASES.get(c, c)
    if "-" in c:  # region subtags: en-US -> en
        c = ALIASES.get(c.split("-", 1)[0], c.split("-", 1)[0])
    if len(c) != 2 or not (c.isascii() and c.isalpha()):  # "中文" and "éé" are letters, not ISO 639-1 codes
        raise XtmError(f"invalid language code {code!r}: expected an ISO 639-1 code such as 'en', 'zh', 'ja'")
    return c


def dataset_suffixes(lang: str) -> list[str]:
    """File-name suffixes a benchmark directory may use for `lang` (ISO code first, then aliases)."""
    lang = normalize_lang(lang)
    return [lang] + sorted(a for a, v in ALIASES.items() if v == lang and len(a) == 2)


# English names for prompts (an LLM reads "English and Chinese" better than "en and zh").
NAMES: dict[str, str] = {
    "en": "English", "zh": "Chinese", "ja": "Japanese", "ko": "Korean", "fr": "French", "de": "German",
    "es": "Spanish", "it": "Italian", "pt": "Portuguese", "ru": "Russian", "ar": "Arabic", "nl": "Dutch",
    "pl": "Polish", "tr": "Turkish", "th": "Thai", "vi": "Vietnamese", "hi": "Hindi", "sv": "Swedish",
}


def language_name(code: str) -> str:
    """'zh' -> 'Chinese'; unknown codes are returned as given."""
    return NAMES.get(normalize_lang(code), code)

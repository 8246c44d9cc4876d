"""Language codes: ISO 639-1 everywhere a user sees them; dataset aliases are accepted and mapped."""

from __future__ import annotations

from xtm.errors import XtmError

# Languages by ISO 639-1 code: English name (prompts: an LLM reads "English and Chinese" better than "en and zh")
# and ISO 639-2 codes (terminology code first, then the bibliographic one where it differs). Both the names and
# the three-letter codes are read as the code, for every language here: a table of some ("eng", "deu") and not
# others ("ita", "zho") was a trap.
_LANGUAGES: dict[str, tuple[str, str]] = {
    "af": ("Afrikaans", "afr"), "am": ("Amharic", "amh"), "ar": ("Arabic", "ara"), "az": ("Azerbaijani", "aze"),
    "be": ("Belarusian", "bel"), "bg": ("Bulgarian", "bul"), "bn": ("Bengali", "ben"), "bs": ("Bosnian", "bos"),
    "ca": ("Catalan", "cat"), "cs": ("Czech", "ces cze"), "cy": ("Welsh", "cym wel"), "da": ("Danish", "dan"),
    "de": ("German", "deu ger"), "el": ("Greek", "ell gre"), "en": ("English", "eng"),
    "eo": ("Esperanto", "epo"), "es": ("Spanish", "spa"), "et": ("Estonian", "est"), "eu": ("Basque", "eus baq"),
    "fa": ("Persian", "fas per"), "fi": ("Finnish", "fin"), "fr": ("French", "fra fre"),
    "ga": ("Irish", "gle"), "gl": ("Galician", "glg"), "gu": ("Gujarati", "guj"), "ha": ("Hausa", "hau"),
    "he": ("Hebrew", "heb"), "hi": ("Hindi", "hin"), "hr": ("Croatian", "hrv"), "hu": ("Hungarian", "hun"),
    "hy": ("Armenian", "hye arm"), "id": ("Indonesian", "ind"), "is": ("Icelandic", "isl ice"),
    "it": ("Italian", "ita"), "ja": ("Japanese", "jpn"), "jv": ("Javanese", "jav"), "ka": ("Georgian", "kat geo"),
    "kk": ("Kazakh", "kaz"), "km": ("Khmer", "khm"), "kn": ("Kannada", "kan"), "ko": ("Korean", "kor"),
    "ku": ("Kurdish", "kur"), "la": ("Latin", "lat"), "lo": ("Lao", "lao"), "lt": ("Lithuanian", "lit"),
    "lv": ("Latvian", "lav"), "mk": ("Macedonian", "mkd mac"), "ml": ("Malayalam", "mal"),
    "mn": ("Mongolian", "mon"), "mr": ("Marathi", "mar"), "ms": ("Malay", "msa may"), "mt": ("Maltese", "mlt"),
    "my": ("Burmese", "mya bur"), "ne": ("Nepali", "nep"), "nl": ("Dutch", "nld dut"), "no": ("Norwegian", "nor"),
    "pa": ("Punjabi", "pan"), "pl": ("Polish", "pol"), "ps": ("Pashto", "pus"), "pt": ("Portuguese", "por"),
    "ro": ("Romanian", "ron rum"), "ru": ("Russian", "rus"), "si": ("Sinhala", "sin"), "sk": ("Slovak", "slk slo"),
    "sl": ("Slovenian", "slv"), "so": ("Somali", "som"), "sq": ("Albanian", "sqi alb"), "sr": ("Serbian", "srp"),
    "sv": ("Swedish", "swe"), "sw": ("Swahili", "swa"), "ta": ("Tamil", "tam"), "te": ("Telugu", "tel"),
    "th": ("Thai", "tha"), "tl": ("Tagalog", "tgl"), "tr": ("Turkish", "tur"), "uk": ("Ukrainian", "ukr"),
    "ur": ("Urdu", "urd"), "uz": ("Uzbek", "uzb"), "vi": ("Vietnamese", "vie"), "yi": ("Yiddish", "yid"),
    "yo": ("Yoruba", "yor"), "zh": ("Chinese", "zho chi"), "zu": ("Zulu", "zul"),
}
NAMES: dict[str, str] = {code: name for code, (name, _) in _LANGUAGES.items()}

# Aliases found in public datasets and tools (e.g. `cn` in ECNews, `jp` in some corpora), then every language's
# ISO 639-2 codes and English name.
ALIASES: dict[str, str] = {
    "cn": "zh",
    "zh-cn": "zh",
    "zh-tw": "zh",
    "zh-hans": "zh",
    "zh-hant": "zh",
    "jp": "ja",
    # ISO 639-1's withdrawn codes, which Java's Locale still writes: the same languages as their new codes.
    "iw": "he",
    "in": "id",
    "ji": "yi",
    "jw": "jv",
    **{alias: code for code, (_, iso3) in _LANGUAGES.items() for alias in iso3.split()},
    **{name.lower(): code for code, (name, _) in _LANGUAGES.items()},
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
        raise XtmError(f"invalid language code {code!r}: expected an ISO 639-1 code such as 'en', 'zh', 'ja' (or "
                       f"the ISO 639-2 code or English name of one of the {len(_LANGUAGES)} languages xtm names)")
    return c


def dataset_suffixes(lang: str) -> list[str]:
    """File-name suffixes a benchmark directory may use for `lang` (ISO code first, then aliases)."""
    lang = normalize_lang(lang)
    return [lang] + sorted(a for a, v in ALIASES.items() if v == lang and len(a) == 2)


def language_name(code: str) -> str:
    """'zh' -> 'Chinese'; unknown codes are returned as given."""
    return NAMES.get(normalize_lang(code), code)

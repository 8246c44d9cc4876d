"""Language identification with py3langid (its model ships in the wheel: no download, no torch).

Two questions, two functions:
- `identify(text, prefer)`: what language is this, among every language the model knows, and how
  sure is it? Inference uses it: a bundle must never read French or Arabic as English because
  English is the only Latin-script language it has (`detect_language` restricted to the bundle's
  languages did exactly that). Texts without letters (emoji, digits, punctuation) have no language.
- `detect_language(text, candidates)`: the best of the given candidates, always one of them.
  Training uses it, where the corpus declares its languages.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xtm.errors import XtmError, os_error
from xtm.languages import normalize_lang

__all__ = ["CONFIDENT", "Detection", "detect_language", "detect_languages", "identify"]

_lock = threading.Lock()
_identifiers: dict[bool, Any] = {}


def _get_identifier(norm_probs: bool = False) -> Any:
    """py3langid's identifier, loaded once per kind: ranking scores, or probabilities (its length-calibrated
    softmax) with `norm_probs`. Our own instances, not py3langid's module-level one: set_languages() there is global
    state that other code in the process could change under us."""
    ident = _identifiers.get(norm_probs)
    if ident is None:
        with _lock:
            ident = _identifiers.get(norm_probs)
            if ident is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                try:
                    ident = _identifiers[norm_probs] = LanguageIdentifier.from_model_file(MODEL_FILE,
                                                                                          norm_probs=norm_probs)
                except OSError as e:  # its model file, read on first use: a shortage of files or memory passes
                    raise os_error(f"cannot read the language detector's model: {e.strerror or e}", e,
                                   path=MODEL_FILE) from e
    return ident


# Writing systems that tell candidate languages apart without a statistical model.
_SCRIPTS = {
    # kana letters: not the middle dot, the prolonged sound mark or the iteration marks (U+30FB-30FE), which
    # Chinese names and kaomoji use too
    "kana": re.compile(r"[\u3040-\u30fa\u30ff]"),
    "han": re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff]"),
    "hangul": re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]"),  # with compatibility jamo (ㅋㅋ)
    "cyrillic": re.compile(r"[\u0400-\u04ff]"),
    "arabic": re.compile(r"[\u0600-\u06ff\u0750-\u077f]"),
    "greek": re.compile(r"[\u0370-\u03ff]"),
    "hebrew": re.compile(r"[\u0590-\u05ff]"),
    "thai": re.compile(r"[\u0e00-\u0e7f]"),
    "devanagari": re.compile(r"[\u0900-\u097f]"),
    "latin": re.compile(r"[A-Za-z\u00c0-\u024f]"),
}
_LANG_SCRIPTS: dict[str, frozenset[str]] = {
    "zh": frozenset({"han"}), "ja": frozenset({"kana", "han"}), "ko": frozenset({"hangul"}),
    **{c: frozenset({"cyrillic"}) for c in ("ru", "uk", "bg", "sr", "mk", "be", "kk")},
    **{c: frozenset({"cyrillic"}) for c in ("ky", "mn", "tg", "tt", "ba")},
    **{c: frozenset({"arabic"}) for c in ("ar", "fa", "ur", "ps", "ug")},
    "el": frozenset({"greek"}), "he": frozenset({"hebrew"}), "th": frozenset({"thai"}),
    **{c: frozenset({"devanagari"}) for c in ("hi", "mr", "ne", "sa")},
}


def _script_counts(text: str, weighted: bool) -> dict[str, int]:
    """`text`'s letters per script, Japanese writing's kanji counted as kana. `weighted` (identify; training under
    token rules 3 on): a Han, kana or Hangul character as _WIDE letters, and Japanese writing as `_japanese_writing`
    tells it; else any kana makes Japanese writing."""
    counts = {name: len(rx.findall(text)) * (_WIDE.get(name, 1) if weighted else 1) for name, rx in _SCRIPTS.items()}
    if counts["kana"] and (not weighted or _japanese_writing(text, counts)):
        counts["kana"] += counts["han"]
        counts["han"] = 0
    return counts


def _dominant_script(text: str, weighted: bool = False) -> str | None:
    """The script most of `text`'s letters are in (`weighted`: see _script_counts)."""
    name, best = max(_script_counts(text, weighted).items(), key=lambda kv: kv[1])
    return name if best else None


def _by_script(text: str, wanted: set[str], weighted: bool = False) -> str | None:
    """The one candidate whose writing system the text uses, if exactly one fits (else None).

    With candidates like {en, zh} or {en, ja} this answers at regex speed, ~10x faster than the
    statistical model, and is never wrong where the scripts differ; {en, fr} falls through.
    """
    script = _dominant_script(text, weighted)
    if script is None:
        return None
    fits = [c for c in wanted if script in _LANG_SCRIPTS.get(c, frozenset({"latin"}))]
    return fits[0] if len(fits) == 1 else None


def detect_language(text: str, candidates: Sequence[str] | None = None, weighted: bool = False) -> str:
    """ISO 639-1 code of the language `text` is written in.

    `candidates` restricts the answer to those languages (more reliable on short texts, e.g.
    kanji-only Japanese that would otherwise read as Chinese). `weighted` (training under token rules 3 on): a
    Han, kana or Hangul character counts as three letters when the script decides between candidates, so Korean
    with English product words is Korean (letter for syllable, English won).
    """
    if not isinstance(text, str) or not text.strip():
        raise XtmError("cannot detect the language of an empty text")
    wanted = {normalize_lang(c) for c in candidates} if candidates else None
    if wanted is not None and len(wanted) == 1:
        return next(iter(wanted))
    if wanted is not None:
        fast = _by_script(text, wanted, weighted)
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


# -- identify: every language the model knows --------------------------------------------------------

# A language whose (folded) probability reaches this is taken as detected. Measured on the example
# corpus (en, zh, fr, de, es, ja) cut to 1, 2, 3 and 5 words: no wrong answer reached 0.45; from 5
# words on, the right one is above 0.9 for nearly every text.
CONFIDENT = 0.5
# Below CONFIDENT (short texts), a preferred language (one the caller can serve) that fits the
# script is taken when its probability is at least this share of the best one: "bank market" is
# English to an English/Chinese bundle, while 2-word French stays unread more often than misread.
COMPETITIVE = 0.5
# The first characters decide: the model's cost grows with the text (a Python loop over its bytes),
# its answer stops changing long before: from 10 words on, every example text was told right.
DETECT_CHARS = 300
# Varieties the model tells apart but that a bag of words of the main language reads alike
# (Wu and Cantonese written in Han characters, Moroccan and Egyptian Arabic, Nigerian Pidgin).
FOLD = {"wuu": "zh", "yue": "zh", "ary": "ar", "arz": "ar", "pcm": "en"}
# How the model's special labels read in a message.
_LABEL_NAMES = {"zxx": "zxx (no linguistic content)"}


@dataclass(frozen=True)
class Detection:
    """What `identify` found.

    lang: ISO 639-1 code, or None when the text has no language it can name (no letters, a language
        without an ISO 639-1 code, or too uncertain: see `note`).
    confidence: the model's probability of `lang` (varieties folded in), 0..1; for lang None, that
        of its best guess (0.0 without letters).
    note: why lang is None (a short sentence), else None.
    """

    lang: str | None
    confidence: float
    note: str | None = None


def _has_letters(text: str) -> bool:
    return any(map(str.isalpha, text))


class _Folder:
    """The model's probabilities per language code, varieties folded (FOLD), as one vector.

    Uses the identifier's score vector (`_decide`, py3langid 0.4) when it agrees with the public
    `rank()` on a probe text, else `rank()`: ranking and sorting 140 labels per text in Python
    cost a third of the detection time."""

    def __init__(self, ident: Any) -> None:
        import numpy as np

        self.ident = ident
        labels = list(ident.nb_classes)
        self.codes = list(dict.fromkeys(FOLD.get(label, label) for label in labels))
        index = {c: j for j, c in enumerate(self.codes)}
        self.col = np.array([index[FOLD.get(label, label)] for label in labels], dtype=np.int64)
        self._masks: dict[Any, Any] = {}
        self._decide = getattr(ident, "_decide", None)
        probe = "The quick brown fox jumps over the lazy dog, 快速的狐狸."
        if self._decide is not None and not np.allclose(self._vector(probe), self._from_rank(probe), atol=1e-6):
            self._decide = None

    def _from_rank(self, text: str) -> Any:
        import numpy as np

        index = {c: j for j, c in enumerate(self.codes)}
        out = np.zeros(len(self.codes))
        for label, p in self.ident.rank(text):
            out[index[FOLD.get(label, label)]] += p
        return out

    def _vector(self, text: str) -> Any:
        import numpy as np

        return np.bincount(self.col, weights=self._decide(text), minlength=len(self.codes))

    def probs(self, text: str) -> Any:
        return self._vector(text) if self._decide is not None else self._from_rank(text)

    def mask(self, key: Any, keep: Any) -> Any:
        """Boolean vector over codes, keep(code) for each; cached under `key`."""
        m = self._masks.get(key)
        if m is None:
            import numpy as np

            m = self._masks[key] = np.array([bool(keep(c)) for c in self.codes])
        return m


_folder: _Folder | None = None


def _get_folder() -> _Folder:
    global _folder
    if _folder is None:
        ident = _get_identifier(norm_probs=True)
        with _lock:
            if _folder is None:
                _folder = _Folder(ident)
    return _folder


def _fits(code: str, script: str | None) -> bool:
    return script is None or script in _LANG_SCRIPTS.get(code, frozenset({"latin"}))


# A Han, kana or Hangul character is a syllable or a word: about three Latin letters of text. A script holding at
# least _PRESENT of a text's letters so weighted is one its language may be written in: "블루투스 이어폰 battery life
# is great 음질도 좋아요" is Korean with English words (counted one to one, the Latin letters won, Korean was ruled
# out and the text read as English or as no language).
_WIDE = {"han": 3, "kana": 3, "hangul": 3}
_PRESENT = 0.25


# Japanese writes kana between its kanji: a text with hiragana, or with katakana at least this share of its kana
# and Han characters, is Japanese writing (its kanji count as kana). A katakana or two in Chinese (a kaomoji's ノ) is
# not: it read as Japanese at 1.0; one hiragana is ("北海道大学大学院工学研究科の教授").
_KANA_SHARE = 0.2
_HIRAGANA = re.compile(r"[\u3041-\u309f]")


def _japanese_writing(text: str, counts: dict[str, int]) -> bool:
    return bool(_HIRAGANA.search(text)) or counts["kana"] >= _KANA_SHARE * (counts["kana"] + counts["han"])


def _present_scripts(text: str) -> frozenset[str]:
    """The scripts a language of `text` may be written in (empty: no letters of a known script)."""
    counts = _script_counts(text, weighted=True)
    total = sum(counts.values())
    return frozenset(name for name, n in counts.items() if n and n >= _PRESENT * total)


def _fits_any(code: str, scripts: frozenset[str]) -> bool:
    return not scripts or any(_fits(code, s) for s in scripts)


def identify(text: str, prefer: Collection[str] | None = None) -> Detection:
    """The language of `text` among all the model knows, with its probability (see Detection).

    prefer: languages the caller can serve; only consulted when the model is unsure (short
    texts): the best preferred language that fits the text's script is taken if its probability
    is at least COMPETITIVE x the best one's. A confident answer is never overridden, so a text
    in a language outside `prefer` comes back as that language, for the caller to refuse."""
    import numpy as np

    if not isinstance(text, str) or not _has_letters(text):
        return Detection(None, 0.0, "no language detected: the text has no letters (only digits, punctuation, "
                                    "symbols or emoji)")
    sample = text[:DETECT_CHARS]
    scripts = _present_scripts(sample)
    folder = _get_folder()
    probs = folder.probs(sample)
    fits = folder.mask(("scripts", scripts), lambda c: _fits_any(c, scripts))
    mass = float(probs[fits].sum())
    if mass > 0:
        # Languages written in another script are out (short Latin text is not Arabic), and the probability is among
        # those left: "책" is Korean whatever py3langid spread over languages that cannot write it (0.007 before).
        probs = probs * fits / mass
    best = int(probs.argmax())
    p_best = float(probs[best])
    pick: tuple[str, float] | None = None
    if p_best >= CONFIDENT or prefer is None:
        pick = (folder.codes[best], p_best)
    else:
        wanted = frozenset(prefer)
        ok = folder.mask(("prefer", wanted), wanted.__contains__)
        if ok.any():
            near = int(np.where(ok, probs, -1.0).argmax())
            if probs[near] >= COMPETITIVE * p_best:
                pick = (folder.codes[near], float(probs[near]))
    if pick is None:
        guesses = ", ".join(f"{_LABEL_NAMES.get(folder.codes[j], folder.codes[j])} {probs[j]:.2f}"
                            for j in np.argsort(-probs, kind="stable")[:3])
        return Detection(None, p_best, f"language uncertain (best guesses: {guesses})")
    if pick[0] == "zxx":  # the model's own label for "no linguistic content"
        return Detection(None, pick[1], f"no language detected: no linguistic content (confidence {pick[1]:.2f})")
    if len(pick[0]) != 2:  # e.g. 'fuv', 'hbo': known to the model, outside ISO 639-1
        return Detection(None, pick[1], f"detected language '{pick[0]}' (confidence {pick[1]:.2f}) has no "
                                        "ISO 639-1 code")
    return Detection(pick[0], pick[1])

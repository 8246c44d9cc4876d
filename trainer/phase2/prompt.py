"""The refinement prompt (seed 001, Appendix E) and a tolerant parser for what LLMs answer.

One prompt per topic, as the public LLM-XTM code sends (the paper's Appendix E lists all N topics in
one prompt): R samples of a topic stay independent, requests run concurrently and a garbled answer
costs one topic, not all of them. Unlike the public code the other topics are not shown as context
(a small model cannot follow 50 topics of it). It asks for `n_words` per language: the public code
asks for 20 and keeps the 15 most voted (Phase2Config.asked_words, refined_words). The wording is
otherwise the paper's, for any language pair.

The parser never raises on model output. Real answers (SmolLM2 included) number their words,
mix separators, add prose, repeat words, put words of one language on the other's line, return
phrases or words outside the vocabulary. Every token is matched to a vocabulary entry (exact,
then case-folded, then Porter stem for Latin-script words, then longest-match segmentation for
unsegmented scripts) of the line's language first and of any other language second; tokens
that match nothing are dropped and counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from xtm.config import Phase2Config, default_of
from xtm.errors import XtmError
from xtm.languages import UNSEGMENTED, language_name, normalize_lang

ASKED_WORDS = default_of(Phase2Config, "asked_words")


@dataclass(frozen=True)
class TopicWords:
    """One topic's candidate pool: the model's own top words per language (`words`, what the
    prompt shows), and optionally a longer ranked list per language (`more`) for refiners that
    re-rank deeper into the topic (the embedding refiner)."""

    topic: int
    words: dict[str, list[str]]
    more: dict[str, list[str]] | None = None


def build_prompt(topic: TopicWords, langs: Sequence[str], n_words: int = ASKED_WORDS) -> str:
    """Appendix E's refinement prompt for one topic and any language pair."""
    names = " and ".join(language_name(lang) for lang in langs)
    labels = [lang.upper() for lang in langs]
    fmt = "\n".join(f"{lab}: word1 - word2 - ... - word{n_words}" for lab in labels)
    after = " and ".join(f"{lab}:" for lab in labels)
    given = "\n".join(f"{lang.upper()}: " + " - ".join(topic.words.get(lang, [])) for lang in langs)
    return (
        f"Given the following cross-lingual topic words from {names} for 1 topic, refine the topic:\n"
        f"1) Identify the main theme shared across {'both' if len(langs) == 2 else 'all'} languages.\n"
        "2) Remove irrelevant/noisy words that do not fit the theme.\n"
        "3) Add relevant words that strengthen coherence and cross-lingual coverage.\n"
        "4) Use only SINGLE WORDS (no phrases, no underscores, no hyphenated expressions).\n"
        f"5) Return exactly {n_words} words per language.\n\n"
        f"Output format:\nTopic {topic.topic}: <brief theme>\n{fmt}\n\n"
        f"Rules:\n- Exactly {n_words} words after {after}\n- Separate words with \" - \".\n\n"
        f"Topic {topic.topic}:\n{given}\n"
    )


# Labels an answer may use for a language besides its ISO code, alias or English name.
_NATIVE_LABELS = {"中文": "zh", "汉语": "zh", "漢語": "zh", "英文": "en", "英语": "en", "英語": "en",
                  "日本語": "ja", "日语": "ja", "日文": "ja", "한국어": "ko", "français": "fr",
                  "deutsch": "de", "español": "es", "русский": "ru"}


def _label_lang(label: str, langs: Sequence[str]) -> str | None:
    lab = label.strip().strip("*_#`[]()").strip().lower()
    if lab in _NATIVE_LABELS:
        code = _NATIVE_LABELS[lab]
    else:
        names = {language_name(x).lower(): x for x in langs}
        if lab in names:
            return names[lab]
        try:
            code = normalize_lang(lab)
        except XtmError:
            return None
    return code if code in langs else None


_LABEL_LINE = re.compile(r"^[\s>*#•·\-+|]*([^\W\d_][^\s:：]{0,15}?)[\s*_`\]\)]*[:：]\s*(.*)$")
_SPLIT = re.compile(r"\s+[-–—]\s+|[,，、;；|/\n\t·•]+|\s+|(?<=\S)[-–—](?=\s|$)")
_NUMBERING = re.compile(r"^\(?\d{1,3}[.)、:]\s*")
_STRIP = "\"'“”‘’`*_()[]{}<>«»「」『』【】（）.,:;!?。！？：；…"
_LIST_SEPARATOR = re.compile(r"\s[-–—]\s|[,，、;；|]")
_TOPIC_LINE = re.compile(r"^\W*(topic|theme|main theme|主题|主題)\b", re.IGNORECASE)


def _is_latin(word: str) -> bool:
    return word.isascii() and word.isalpha()


class VocabMatcher:
    """Maps a word an LLM wrote to a vocabulary entry of one of the languages."""

    def __init__(self, vocabs: dict[str, Sequence[str]]) -> None:
        self.langs = list(vocabs)
        self.exact = {lang: {w: w for w in v} for lang, v in vocabs.items()}
        self.folded: dict[str, dict[str, str]] = {}
        self.stems: dict[str, dict[str, str]] = {}
        self.max_len: dict[str, int] = {}
        stemmer = _porter()
        for lang, vocab in vocabs.items():
            folded: dict[str, str] = {}
            stems: dict[str, str] = {}
            for w in vocab:  # vocabulary order: the first (most frequent in most builds) wins
                folded.setdefault(w.lower(), w)
                if stemmer is not None and _is_latin(w):
                    stems.setdefault(stemmer.stem(w.lower()), w)
            self.folded[lang], self.stems[lang] = folded, stems
            self.max_len[lang] = max((len(w) for w in vocab), default=1)
        self._stemmer = stemmer

    def match(self, token: str, lang: str) -> tuple[str, bool] | None:
        """(vocabulary word, exact?) in `lang`, or None."""
        if token in self.exact[lang]:
            return token, True
        low = token.lower()
        if low in self.folded[lang]:
            return self.folded[lang][low], False
        if self._stemmer is not None and _is_latin(low):
            stem = self._stemmer.stem(low)
            if stem in self.stems[lang]:
                return self.stems[lang][stem], False
        return None

    def segment(self, token: str, lang: str) -> list[str]:
        """Greedy longest-match split of an unsegmented run ('音乐专辑' -> 音乐, 专辑); [] if it fails."""
        out, i, vocab = [], 0, self.exact[lang]
        while i < len(token):
            for j in range(min(len(token), i + self.max_len[lang]), i, -1):
                if token[i:j] in vocab:
                    out.append(token[i:j])
                    i = j
                    break
            else:
                return []
        return out if len(out) > 1 else []


def _porter():
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:  # pragma: no cover - nltk is a dependency of the train extra
        return None
    return PorterStemmer()


@dataclass
class ParsedAnswer:
    """Words per language that an answer contributes, plus how many tokens needed help."""

    words: dict[str, list[str]]
    mapped: int = 0      # matched by case, stem, segmentation or another language's vocabulary
    dropped: int = 0     # matched nothing in any vocabulary
    notes: list[str] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return any(self.words.values())


def _tokens(text: str) -> list[str]:
    out = []
    for raw in _SPLIT.split(text):
        tok = _NUMBERING.sub("", raw.strip()).strip(_STRIP).strip()
        if tok:
            out.append(tok)
    return out


def parse_answer(text: str | None, matcher: VocabMatcher, max_words: int = 30) -> ParsedAnswer:
    """Words per language from one LLM answer (never raises; empty when nothing is usable)."""
    langs = matcher.langs
    answer = ParsedAnswer(words={lang: [] for lang in langs})
    if not text or not text.strip():
        answer.notes.append("empty answer")
        return answer
    lines: list[tuple[str | None, str]] = []
    for line in text.splitlines():
        if not line.strip() or _TOPIC_LINE.match(line):
            continue
        m = _LABEL_LINE.match(line)
        lang = _label_lang(m.group(1), langs) if m else None
        if lang is not None:
            lines.append((lang, m.group(2)))
        elif lines and lines[-1][0] is not None and not m:
            # A wrapped continuation of the previous language's line.
            lines.append((lines[-1][0], line))
        else:
            lines.append((None, line))
    if any(lang is not None for lang, _ in lines):
        lines = [(lang, body) for lang, body in lines if lang is not None]
    else:
        answer.notes.append("no language labels: words assigned by vocabulary")
        # Prefer lines that look like word lists over prose around them.
        lists = [(lang, body) for lang, body in lines if len(_LIST_SEPARATOR.findall(body)) >= 2]
        lines = lists or lines

    seen = {lang: set() for lang in langs}
    for line_lang, body in lines:
        for tok in _tokens(body):
            placed = _place(tok, line_lang, matcher)
            if not placed:
                answer.dropped += 1
                continue
            for lang, word, exact in placed:
                if not exact or (line_lang is not None and lang != line_lang):
                    answer.mapped += 1
                if word not in seen[lang] and len(answer.words[lang]) < max_words:
                    seen[lang].add(word)
                    answer.words[lang].append(word)
    return answer


def _place(tok: str, line_lang: str | None, matcher: VocabMatcher) -> list[tuple[str, str, bool]]:
    order = ([line_lang] if line_lang else []) + [x for x in matcher.langs if x != line_lang]
    for lang in order:
        hit = matcher.match(tok, lang)
        if hit is not None:
            return [(lang, hit[0], hit[1])]
    for lang in order:
        if lang in UNSEGMENTED:
            parts = matcher.segment(tok, lang)
            if parts:
                return [(lang, p, False) for p in parts]
    return []

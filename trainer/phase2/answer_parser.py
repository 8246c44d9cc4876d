"""A tolerant parser for what LLMs answer to the refinement prompt (xtm.trainer.phase2.prompt).

The parser never raises on model output. Real answers (SmolLM2 included) number their words,
mix separators, add prose, repeat words, put words of one language on the other's line, return
phrases or words outside the vocabulary, label their lines "EN:", "English words:", "Chinese
(Simplified):" or "中文：". A label's own words are never topic words; a language's line goes on
over following lines until one reads as a sentence (after a blank line: until one is no bullet
or numbered item), so prose after the lists is not read as words. Every token is matched to a
vocabulary entry (exact, then case-folded, then a regular inflection of a vocabulary word for
Latin-script words, then longest-match segmentation for unsegmented scripts) of the line's
language first and of any other language second; tokens that match nothing are dropped and
counted.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from xtm.errors import XtmError
from xtm.languages import UNSEGMENTED, normalize_lang
from xtm.trainer.data.dictionary import is_latin_word, porter_stemmer
from xtm.trainer.data.stopwords import function_words

# Labels an answer may use for a language besides its ISO code, alias or English name.
_NATIVE_LABELS = {"中文": "zh", "汉语": "zh", "漢語": "zh", "英文": "en", "英语": "en", "英語": "en",
                  "日本語": "ja", "日语": "ja", "日文": "ja", "한국어": "ko", "français": "fr",
                  "deutsch": "de", "español": "es", "русский": "ru"}
# Words a language header may hold besides the language ("English words:", "Chinese (Simplified):",
# "Refined English keywords:"); the header stays a label, and none of its words is a topic word.
_HEADER_WORDS = frozenset({
    "word", "words", "term", "terms", "keyword", "keywords", "list", "vocabulary", "refined", "top", "new",
    "topic", "output", "language", "translation", "translations", "version", "simplified", "traditional",
    "in", "the", "of", "and", "script", "mandarin", "简体", "繁体", "簡體", "繁體"})
# The same after a native label written without a space ("中文词语：", "英文单词：").
_NATIVE_HEADER_SUFFIXES = ("词语", "詞語", "词汇", "詞彙", "单词", "單詞", "关键词", "關鍵詞", "词", "詞")


def _one_label(lab: str) -> str | None:
    """The language one label word names (a code, an alias, an English or native name), or None.
    The code may be of a language the answer was not asked for."""
    if lab in _NATIVE_LABELS:
        return _NATIVE_LABELS[lab]
    for native, code in _NATIVE_LABELS.items():
        if lab.startswith(native) and lab[len(native):] in _NATIVE_HEADER_SUFFIXES:
            return code
    try:  # a code, an ISO 639-2 code or an English name (xtm.languages.ALIASES)
        return normalize_lang(lab)
    except XtmError:
        return None


def _label_lang(label: str, langs: Sequence[str]) -> str | None:
    """The language of `langs` a line label names, or None. A label is one name ("EN", "Chinese",
    "中文", "zh-CN") or a header: names of one language among header words ("English words",
    "Chinese (Simplified)", "English (EN)"); any other word makes it no language label."""
    lab = label.strip().strip("*_#`[]()（）").strip().lower()
    code = _one_label(lab)
    if code is None:
        codes = set()
        for part in re.findall(r"[^\W\d_]+", lab):
            if part in _HEADER_WORDS:
                continue
            one = _one_label(part)
            if one is None:
                return None
            codes.add(one)
        if len(codes) != 1:
            return None
        code = codes.pop()
    return code if code in langs else None


# "Label: words" (colon) or "Language words - words" (a dash after a header of several words).
_LABEL_LINE = re.compile(r"^[\s>*#•·\-+|]*([^\W\d_][^:：\n]{0,40}?)[\s*_`\]\)）]*[:：]\s*(.*)$")
_DASH_HEADER = re.compile(r"^[\s>*#•·\-+|]*([^\W\d_][^:：\-–—\n]{0,40}?)[\s*_`\]\)）]*\s[-–—](?:\s+(.*))?$")
_SPLIT = re.compile(r"\s+[-–—]\s+|[,，、;；|/\n\t·•]+|\s+|(?<=\S)[-–—](?=\s|$)")
_NUMBERING = re.compile(r"^\(?\d{1,3}[.)、:]\s*")
_STRIP = "\"'“”‘’`*_()[]{}<>«»「」『』【】（）.,:;!?。！？：；…"
_LIST_SEPARATOR = re.compile(r"\s[-–—]\s|[,，、;；|]")
_TOPIC_LINE = re.compile(r"^\W*(topic|theme|main theme|主题|主題)\b", re.IGNORECASE)
# A bullet or a number at the start of a line: an item of a list, even after a blank line (loose markdown).
_ITEM_MARKER = re.compile(r"^\s*(?:[>*•·+]|[-–—](?=\s|\S)|\(?\d{1,3}[.)、])")
_BULLET = re.compile(r"^[\s>*#•·\-–—+|]*")
_SENTENCE_END = tuple(".!?。！？")


def _split_label(line: str, langs: Sequence[str]) -> tuple[bool, str | None, str]:
    """(the line starts with a label?, the language it names or None, the text after the label).
    A "Header - words" line counts only when its header names a language with header words
    ("Japanese words - ..."): a bare "english - chinese - ..." is a word list."""
    m = _LABEL_LINE.match(line)
    if m and not _LIST_SEPARATOR.search(m.group(1)):
        return True, _label_lang(m.group(1), langs), m.group(2)
    d = _DASH_HEADER.match(line)
    if d and len(re.findall(r"[^\W\d_]+", d.group(1))) > 1:
        lang = _label_lang(d.group(1), langs)
        if lang is not None:
            return True, lang, d.group(2) or ""
    return False, None, line


def _is_cjk(text: str) -> bool:
    return any(ord(ch) >= 0x2E80 for ch in text)


def _is_prose(line: str, lang: str) -> bool:
    """Whether an unlabelled line reads as a sentence rather than more of a word list: it holds function words
    (two or more, a quarter of its words: "These words were chosen because ..."), or it ends like a sentence
    with a function word in it, or, in an unsegmented script, it ends like a sentence at all (。！？). A list
    holds content words, however it is separated (spaces, commas, one long Japanese word per bullet)."""
    s = _NUMBERING.sub("", _BULLET.sub("", line.strip())).strip()
    words = [w.strip(_STRIP).lower() for w in s.split()]
    words = [w for w in words if w]
    if not words:
        return False
    function = function_words("en") | function_words(lang)
    n = sum(w in function for w in words)
    if n >= 2 and 4 * n >= len(words):
        return True
    if s.endswith(_SENTENCE_END):
        return n >= 1 or (_is_cjk(s) and len(words) == 1 and len(s) >= 6)
    return False


_VOWELS = "aeiou"
# Adjectives whose -ly adverb is the same word (generally, seriously, possibly); a noun or verb with
# -ly is another word (likely/like, lovely/love, timely/time, namely/name), so those are not undone.
_ADJECTIVE_ENDINGS = ("al", "ic", "ful", "ous", "ive", "ent", "ant", "ar", "ary", "ory", "ble", "ple", "less", "ish",
                      "ate")


def _bases(word: str, adverbs: bool = True) -> set[str]:
    """The words `word` may be a regular English inflection of: less s/es/ies (markets, taxes,
    studies), ed/ing with the e dropped, the final consonant doubled or y turned to i (declared,
    making, stopped, studied), s after ing (buildings), and with `adverbs` -ly of an adjective
    (generally, basically, possibly, internationally). Not -er/-ers/-est: with the Porter stem's
    measure rule the stems they share are agent nouns, other words (customer/custom,
    officer/office, receiver/receive, oliver/olive), while comparatives (larger, bigger) keep their
    own stem. Over-generous on purpose (markets -> markete): a base counts only where it is a
    vocabulary word with the token's Porter stem."""
    out: set[str] = set()

    def undo(b: str) -> None:  # b: the word less -ed or -ing
        if len(b) < 2:
            return
        out.update((b, b + "e"))                          # played -> play, making -> make
        if (len(b) > 3 and b[-1] == b[-2] and b[-1] not in _VOWELS + "wxy"
                and b[-3] in _VOWELS and b[-4] not in _VOWELS):
            out.add(b[:-1])                               # stopped -> stop, but earring -/-> ear
        if b.endswith("i"):
            out.add(b[:-1] + "y")                         # studied -> study

    forms = [word]
    if len(word) > 2 and word.endswith("s") and not word.endswith("ss"):
        out.add(word[:-1])                                # markets, ads, plays, buildings
        if word.endswith("ies"):
            out.add(word[:-3] + "y")                      # studies -> study
        elif word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
            out.add(word[:-2])                            # taxes, matches, heroes
        forms.append(word[:-1])
    for w in forms:
        if w.endswith("ed"):
            undo(w[:-2])
        elif w.endswith("ing"):
            undo(w[:-3])
    if adverbs and len(word) > 5 and word.endswith("ly"):
        for adj in (word[:-2], word[:-1] + "e", word[:-3] + "y", word[:-4]):  # -ly, -bly, -arily, -ically
            if len(adj) >= 5 and adj.endswith(_ADJECTIVE_ENDINGS) and not (adj.endswith("ate") and len(adj) < 7):
                out.add(adj)
    out.discard(word)
    return out


def _inflection_rank(token: str, word: str) -> int | None:
    """0 if `token` is a regular inflection of `word` (markets -> market), 1 if `word` is one of
    `token` (market -> markets), 2 if both are noun or verb forms of one word (threatens ->
    threatened), None if none of these: they are different lexemes."""
    if word in _bases(token):
        return 0
    if token in _bases(word):
        return 1
    if _bases(token, adverbs=False) & _bases(word, adverbs=False):
        return 2
    return None


class VocabMatcher:
    """Maps a word an LLM wrote to a vocabulary entry of one of the languages.

    A Latin-script word outside the vocabulary goes to a vocabulary word with the same Porter stem
    only when one of the two is a regular inflection of the other, or both are of one word
    (`_bases`: plural, -ed, -ing, -ly of an adjective). Porter's stem alone also joins different
    words, derivations with other meanings: animation/animal, communism/communication,
    generous/general and internationally/internal share a stem. Measured on the ECNews English
    vocabulary (docs/llm_xtm.md, "Parsing answers"): the rule keeps plural, verb and adverb forms
    and refuses those."""

    def __init__(self, vocabs: dict[str, Sequence[str]]) -> None:
        self.langs = list(vocabs)
        self.exact = {lang: {w: w for w in v} for lang, v in vocabs.items()}
        self.folded: dict[str, dict[str, str]] = {}
        self.stems: dict[str, dict[str, list[str]]] = {}
        self.max_len: dict[str, int] = {}
        stemmer = porter_stemmer()
        for lang, vocab in vocabs.items():
            folded: dict[str, str] = {}
            stems: dict[str, list[str]] = {}
            for w in vocab:  # vocabulary order: the first (most frequent in most builds) wins
                folded.setdefault(w.lower(), w)
                if stemmer is not None and is_latin_word(w):
                    stems.setdefault(stemmer.stem(w.lower()), []).append(w)
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
        if self._stemmer is not None and is_latin_word(low):
            best = None
            for i, w in enumerate(self.stems[lang].get(self._stemmer.stem(low), ())):
                rank = _inflection_rank(low, w.lower())
                if rank is not None:  # the token's own base first, then the nearest form, then vocabulary order
                    key = (rank, abs(len(w) - len(low)), i)
                    if best is None or key < best[0]:
                        best = (key, w)
            if best is not None:
                return best[1], False
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
    # The language a following line may continue; whether it has words yet; whether a blank line came since.
    open_lang, has_words, after_blank = None, False, False
    for line in text.splitlines():
        if not line.strip():
            after_blank = has_words
            continue
        if _TOPIC_LINE.match(line):
            open_lang = None
            continue
        labelled, lang, body = _split_label(line, langs)
        if lang is not None:
            lines.append((lang, body))
            open_lang, has_words, after_blank = lang, bool(body.strip()), False
        elif (open_lang is not None and not labelled and not _is_prose(line, open_lang)
              and (not after_blank or _ITEM_MARKER.match(line))):
            # A wrapped continuation of the open language's line, or its next bullet point (also after a blank
            # line, as loose markdown lists have them). After a blank line anything else is a new paragraph.
            lines.append((open_lang, line))
            has_words, after_blank = True, False
        else:
            # Prose, or a line under a label that names no language: only the text after the label.
            lines.append((None, body))
            open_lang = None
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

"""Topic labels: the labels.json format of a run (and the labels in a bundle's topics.json), and what
a label may be.

A label is a short human name for one topic in one language ("stock market", "股市"). It comes
from an LLM (xtm.trainer.labels asks any refiner backend) or from the LLM-free fallback (the
topic's best-connected top words). Both end up here: `clean_label` decides whether an LLM's answer
is a label at all (a 10 KB essay, markup, a refusal or an answer in the wrong script is not, and the
fallback is used instead), and `check_label` is what a reader of a file accepts. Torch- and
numpy-free: the report, the exporter and the runtime read labels too.

labels.json (RUN_DIR/labels.json, named by xtm.run_dir.RunDir.LABELS):

    {"format": "xtm-topic-labels", "schema_version": 1, "num_topics": K, "langs": ["en", "zh"],
     "generator": "openai:model" | "fallback", "fallback": "<how fallback labels were made>",
     "topics": [{"id": k, "labels": {"en": "...", "zh": "..."}, "sources": {"en": "llm" | "fallback", ...}}],
     "stats": {"calls": n, "cache_hits": n, "rejected": n, ...}}
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xtm.errors import XtmError

__all__ = ["FORMAT", "MAX_ANSWER_CHARS", "MAX_LABEL_CHARS", "SCHEMA_VERSION", "TopicLabels", "check_label",
           "clean_label", "script_matches"]

FORMAT = "xtm-topic-labels"
SCHEMA_VERSION = 1
# A label a file may hold (readers); what an LLM answer may be is stricter (LabelConfig.max_chars).
MAX_LABEL_CHARS = 120
# An answer longer than this is an essay, not a label: refused without looking for a label in it.
MAX_ANSWER_CHARS = 2000
SOURCES = ("llm", "fallback")

# The scripts a label in a language must (mostly) be written in, by Unicode character-name prefix.
_SCRIPTS: dict[str, tuple[str, ...]] = {
    "zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL", "CJK"),
    "ru": ("CYRILLIC",), "uk": ("CYRILLIC",), "bg": ("CYRILLIC",), "sr": ("CYRILLIC", "LATIN"),
    "ar": ("ARABIC",), "fa": ("ARABIC",), "he": ("HEBREW",), "el": ("GREEK",), "th": ("THAI",),
    "hi": ("DEVANAGARI",), "mr": ("DEVANAGARI",), "bn": ("BENGALI",),
}
_LATIN = frozenset("en fr de es it pt nl pl tr vi sv da no nb fi cs sk sl hr ro hu et lv lt id ms ca eu gl ga "
                   "is sq af sw tl".split())
# Scripts written without spaces between words: a word count means nothing there.
_NO_SPACES = frozenset({"zh", "ja", "th", "lo", "km", "my"})

_PREFIX = re.compile(r"^(?:the\s+)?(?:topic|label|name|title|theme|answer|标签|主题|主題|ラベル|トピック|라벨|주제)"
                     r"(?:\s*#?\d+)?(?:\s+(?:label|name|title))?(?:\s+for this topic)?\s*(?:[:：=]|\s-\s|\bis\b)\s*",
                     re.IGNORECASE)
_MARKDOWN = re.compile(r"^(?:[#>*\-•·+]+\s*|\d{1,3}[.)]\s+)+")
_QUOTES = "\"'`*_“”‘’«»「」『』《》【】()（）[]"
_TRAILING = ".。!！?？;；,，:：、 "
_PREAMBLE = re.compile(r"^(sure|certainly|of course|okay|ok|here('s| is| are)|i (would|will|can(?!'t)|think|suggest)|"
                       r"as an ai|i'm sorry|sorry|this topic|the topic is about|these words|based on)\b", re.IGNORECASE)
# A refusal or an error's text is no label ("I cannot help with that", "N/A", "Error: rate limit exceeded", 抱歉，
# 我无法回答): these were accepted, cached and served on every line. Only what declines in the first person, an
# error message's "Error:" prefix, or a whole answer that names nothing: "Unable to Work", "No Name Brands",
# "予約できません" (a support topic), "Error" and "Nil" (the Nile) are labels.
_REFUSAL = re.compile(
    r"^(?:i\s+(?:cannot|can't|can not|am unable to|'m unable to|am not able to|'m not able to|won't)\s+"
    r"(?:help|provide|assist|answer|determine|label|name|title|identify|do|create|come up|generate|give|comply|"
    r"tell|find|say|think|categori[sz]e|summari[sz]e|see|read)\b"
    r"|i\s+(?:don't|do not)\s+know\b|i'm sorry,? but\b|(?:sorry|apologies),? (?:but )?i\b"
    r"|as an? (?:ai|language model|assistant)\b.*\b(?:can't|cannot|unable|not able)\b"
    r"|unable to (?:provide|generate|determine|help|answer|create|come up|label|name)\b"
    r"|no (?:suitable |appropriate )?(?:title|label)s? (?:available|provided|found|possible|can)\b"
    r"|(?:error|erreur|fehler|错误|錯誤|エラー|오류)\s*[:：]"
    r"|je ne (?:peux|sais) pas|d[ée]sol[ée]|ich kann (?:das |dies |es )?nicht|es tut mir leid|lo siento"
    r"|no (?:puedo|s[ée])\b)"
    r"|(?:很|非常)?(?:抱歉|对不起|對不起)[，,、 ]*我|我(?:无法|不能|無法|不知道)"
    r"|申し訳(?:ありません|ございません|ない)|判断できません|分かりません"
    r"|죄송(?:합니다|하지만)|(?:주제를 )?(?:알 수 없|파악할 수 없)(?:음|습니다)$", re.IGNORECASE)
_NOT_A_NAME = re.compile(r"(?:n/?a|none|null|unknown|undefined|not applicable|nothing|no label|no title|untitled|"
                         r"label|title|topic|sorry|apologies|不明|未知|无|無|なし|抱歉|对不起|對不起|不知道|无法回答|無法回答|"
                         r"すみません|わかりません|답변할 수 없습니다|모르겠습니다|죄송합니다|없음)", re.IGNORECASE)
# Markup, code and links are never a label (the report escapes them anyway; pipelines may not).
_FORBIDDEN = re.compile(r"[<>{}\\]|://|www\.|&#?\w+;", re.IGNORECASE)


def _script(c: str) -> str:
    try:
        return unicodedata.name(c).split()[0]
    except ValueError:
        return "?"


def script_matches(label: str, lang: str) -> bool:
    """Whether most letters of `label` are in the script `lang` is written in (a Chinese label must be
    Chinese characters, an English one Latin letters; "NBA 总决赛" passes for zh). Languages not known
    here accept any letters."""
    letters = [c for c in label if c.isalpha()]
    if not letters:
        return False
    wanted = _SCRIPTS.get(lang) or (("LATIN",) if lang in _LATIN else None)
    if wanted is None:
        return True
    hits = sum(1 for c in letters if _script(c).startswith(wanted))
    # CJK labels are few characters and may carry a Latin acronym; Latin ones must be Latin throughout.
    return hits * 2 >= len(letters) if lang in _SCRIPTS else hits == len(letters)


def _strip_invisible(text: str) -> str:
    """Control and format characters (bidi overrides, zero-width joiners, NUL) removed; line breaks kept."""
    return "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Co", "Cn"))


def _words_in(label: str, lang: str) -> int:
    return 1 if lang in _NO_SPACES else len(label.split())


def clean_label(answer: Any, lang: str, max_chars: int = 40, max_words: int = 6) -> str | None:
    """The label in an LLM's answer, or None when the answer is not one (the caller falls back).

    Accepted: the first line that is not a preamble ("Sure! Here is a label:"), with list markers,
    "Label:" prefixes, quotes and trailing punctuation removed, at most `max_chars` characters and
    `max_words` words, letters mostly of `lang`'s script, and no markup, code or link. Everything
    else (empty, an essay, HTML or script, prose sentences, the wrong language) is None.
    """
    if not isinstance(answer, str) or not answer.strip() or len(answer) > MAX_ANSWER_CHARS:
        return None
    text = _strip_invisible(answer)
    if _FORBIDDEN.search(text):
        return None
    for line in text.splitlines():
        line = " ".join(line.split())
        if _REFUSAL.search(line[:80]) or _REFUSAL.search(_MARKDOWN.sub("", line)[:80]):
            return None  # the model declined (an apology alone is a preamble: a label may follow it)
        if not line or line.endswith((":", "：")) or _PREAMBLE.match(line):
            continue
        label = _MARKDOWN.sub("", line)
        for _ in range(2):                       # "Topic 3: Label: Sports"
            label = _PREFIX.sub("", label, count=1)
        # "The Stock Market: A World of Finances", "School: School": a title and its subtitle, the title kept.
        head, colon, _ = label.partition(": ")
        if colon and head.strip(_QUOTES + " "):
            label = head
        label = label.strip(_QUOTES + " ").rstrip(_TRAILING).strip(_QUOTES + " ")
        label = " ".join(label.split())
        if not label or len(label) > max_chars or _words_in(label, lang) > max_words or _NOT_A_NAME.fullmatch(label) \
                or _REFUSAL.search(label):  # (a refusal under markdown, quotes or "Label:": "**Sorry, I can't**")
            return None
        # A sentence (". " inside, or a question) is prose, and a list of words ("足球, 球队, 进球") the
        # topic's words again: neither is a name.
        if re.search(r"[.!?。！？]\s", label) or len(re.findall(r"[,，、;；]", label)) >= 2 \
                or not script_matches(label, lang):
            return None
        return label
    return None


def check_label(value: Any) -> str | None:
    """A label read from a file (labels.json, topics.json) if it is one: a non-empty string of at most
    MAX_LABEL_CHARS characters without control characters or markup; None otherwise."""
    if not isinstance(value, str):
        return None
    if not value.strip() or len(value) > MAX_LABEL_CHARS or _strip_invisible(value) != value or "\n" in value \
            or "\t" in value or _FORBIDDEN.search(value):
        return None
    return value


def topics_digest(topics: dict[str, list[list[str]]]) -> str:
    """SHA-256 of each language's topics (their top words, in order): what a set of labels was made for."""
    canonical = json.dumps({lang: [list(t) for t in topics[lang]] for lang in sorted(topics)}, ensure_ascii=False,
                           separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass
class TopicLabels:
    """Every topic's label in every language, with where each came from (`sources`: "llm" or "fallback")."""

    langs: list[str]
    labels: list[dict[str, str]]
    sources: list[dict[str, str]]
    generator: str = "fallback"
    fallback: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    # `topics_digest` of the top words labelled: export leaves out labels made for other topics (the run
    # trained on after labelling); None in files written before it was recorded.
    topics_sha256: str | None = None

    @property
    def num_topics(self) -> int:
        return len(self.labels)

    def label(self, topic: int, lang: str | None = None) -> str | None:
        """Topic `topic`'s label in `lang` (else in the first language that has one)."""
        row = self.labels[topic]
        if lang is not None and lang in row:
            return row[lang]
        return next((row[x] for x in self.langs if x in row), None)

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "schema_version": SCHEMA_VERSION, "num_topics": self.num_topics,
                "langs": list(self.langs), "generator": self.generator, "fallback": self.fallback,
                "topics": [{"id": k, "labels": dict(lab), "sources": dict(src)}
                           for k, (lab, src) in enumerate(zip(self.labels, self.sources, strict=True))],
                "stats": dict(self.stats),
                **({"topics_sha256": self.topics_sha256} if self.topics_sha256 is not None else {})}

    @classmethod
    def from_json(cls, raw: Any, path: Path | str, num_topics: int | None = None,
                  langs: list[str] | None = None) -> TopicLabels:
        """labels.json's content checked: XtmError naming the file and field for anything that is not
        what `to_json` writes (labels that are not labels included), so no reader shows it."""
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise XtmError(f"not an xtm labels file (expected \"format\": \"{FORMAT}\"): run xtm-label RUN_DIR",
                           path=path)
        file_langs = raw.get("langs")
        if not isinstance(file_langs, list) or not all(isinstance(x, str) and re.fullmatch(r"[a-z]{2,3}", x)
                                                       for x in file_langs):
            raise XtmError("expected a list of language codes", path=path, field="langs")
        topics = raw.get("topics")
        if not isinstance(topics, list) or (num_topics is not None and len(topics) != num_topics):
            want = f"{num_topics} topics" if num_topics is not None else "a list of topics"
            raise XtmError(f"expected {want} (this run's); run xtm-label RUN_DIR again", path=path, field="topics")
        labels: list[dict[str, str]] = []
        sources: list[dict[str, str]] = []
        for k, t in enumerate(topics):
            lab = t.get("labels") if isinstance(t, dict) else None
            src = t.get("sources") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("id", k) != k or not isinstance(lab, dict):
                raise XtmError(f"topic #{k}: needs \"id\": {k} and a \"labels\" object", path=path, field="topics")
            row: dict[str, str] = {}
            for lang in file_langs:
                value = check_label(lab.get(lang))
                if lang in lab and value is None:
                    raise XtmError(f"topic {k}: the {lang!r} label is not a short line of text (at most "
                                   f"{MAX_LABEL_CHARS} characters, no markup)", path=path, field="topics")
                if value is not None:
                    row[lang] = value
            labels.append(row)
            sources.append({lang: s for lang, s in (src.items() if isinstance(src, dict) else ())
                            if lang in row and s in SOURCES})
        if langs is not None:
            missing = [x for x in langs if x not in file_langs]
            if missing:
                raise XtmError(f"no labels for {', '.join(missing)} (this run's languages: {', '.join(langs)})",
                               path=path, field="langs")
        gen = raw.get("generator")
        fallback = raw.get("fallback")
        stats = raw.get("stats")
        digest = raw.get("topics_sha256")
        if digest is not None and not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
            raise XtmError("expected the SHA-256 of the labelled topics in hex", path=path, field="topics_sha256")
        return cls(langs=list(file_langs), labels=labels, sources=sources, topics_sha256=digest,
                   generator=gen if isinstance(gen, str) and len(gen) <= 200 else "?",
                   fallback=fallback if isinstance(fallback, str) and len(fallback) <= 500 else "",
                   stats={k: v for k, v in stats.items() if isinstance(k, str) and type(v) in (int, float)}
                   if isinstance(stats, dict) else {})

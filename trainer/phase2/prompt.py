"""The refinement prompt (seed 001, Appendix E): one topic's words in, the text sent to an LLM out.

One prompt per topic, as the public LLM-XTM code sends (the paper's Appendix E lists all N topics in
one prompt): R samples of a topic stay independent, requests run concurrently and a garbled answer
costs one topic, not all of them. Unlike the public code the other topics are not shown as context
(a small model cannot follow 50 topics of it). It asks for `n_words` per language: the public code
asks for 20 and keeps the 15 most voted (Phase2Config.asked_words, refined_words). The wording is
otherwise the paper's, for any language pair. What comes back is read by
xtm.trainer.phase2.answer_parser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xtm.config import Phase2Config, default_of
from xtm.languages import language_name

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

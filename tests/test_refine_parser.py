"""The refinement prompt, the tolerant answer parser (on recorded real and messy answers) and voting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xtm.trainer.phase2.objective import vote
from xtm.trainer.phase2.prompt import ParsedAnswer, TopicWords, VocabMatcher, build_prompt, parse_answer

ANSWERS = json.loads((Path(__file__).parent / "data" / "llm_answers.json").read_text(encoding="utf-8"))
VOCABS = {
    "en": ["player", "team", "football", "referee", "stadium", "coach", "student", "exam", "school", "teacher",
           "degree", "market", "profit", "topic", "words"],
    "zh": ["球员", "球队", "比赛", "足球", "裁判", "球迷", "学生", "考试", "学校", "老师",
           "市场", "利润", "股票", "价格"],
}


@pytest.fixture(scope="module")
def matcher() -> VocabMatcher:
    return VocabMatcher(VOCABS)


def test_prompt_follows_appendix_e_for_any_language_pair() -> None:
    p = build_prompt(TopicWords(7, {"en": ["a", "b"], "ja": ["本"]}), ["en", "ja"], n_words=15)
    assert "from English and Japanese" in p
    assert "Return exactly 15 words per language" in p
    assert "EN: word1 - word2 - ... - word15" in p and "JA: word1" in p
    assert "SINGLE WORDS" in p
    assert p.rstrip().endswith("Topic 7:\nEN: a - b\nJA: 本")


def test_markdown_numbering_plural_and_case_are_mapped(matcher: VocabMatcher) -> None:
    a = parse_answer(ANSWERS["markdown_numbered"], matcher)
    assert a.words["en"] == ["player", "team", "football", "referee", "stadium"]
    assert a.words["zh"] == ["球员", "球队", "比赛", "足球", "裁判"]
    assert a.mapped == 2          # "teams" by stem, "Football" by case
    assert a.dropped == 0


def test_words_on_the_other_languages_line_go_to_their_language(matcher: VocabMatcher) -> None:
    a = parse_answer(ANSWERS["mixed_lines"], matcher)
    assert a.words["en"] == ["player", "football", "coach", "referee"]
    assert a.words["zh"] == ["球员", "比赛", "球迷"]
    assert a.mapped == 2


def test_native_labels_and_cjk_separators(matcher: VocabMatcher) -> None:
    a = parse_answer(ANSWERS["native_labels_commas"], matcher)
    assert a.words == {"en": ["student", "exam", "school", "teacher"], "zh": ["学生", "考试", "学校", "老师"]}


def test_unsegmented_runs_are_split_against_the_vocabulary(matcher: VocabMatcher) -> None:
    a = parse_answer(ANSWERS["unsegmented_run"], matcher)
    assert a.words["zh"] == ["市场", "利润", "股票", "价格"]


@pytest.mark.parametrize("key", ["smollm2_prose", "smollm2_task_echo", "no_usable_words"])
def test_real_answers_without_a_word_list_are_unusable_or_tiny(matcher: VocabMatcher, key: str) -> None:
    a = parse_answer(ANSWERS[key], matcher)
    assert a.dropped > 0
    assert sum(len(w) for w in a.words.values()) <= 2      # only stray prose words, if any


def test_real_unlabelled_list_is_preferred_over_the_prose_around_it(matcher: VocabMatcher) -> None:
    a = parse_answer(ANSWERS["smollm2_partial_list"], matcher)
    assert a.words["en"] == ["student", "exam", "school", "teacher", "degree"]
    assert "no language labels" in a.notes[0]


@pytest.mark.parametrize("text", [None, "", "   \n", "EN:\nZH:", "::::", "- - -", "\x00\x01", "1. 2. 3."])
def test_parser_never_raises_on_garbage(matcher: VocabMatcher, text) -> None:
    a = parse_answer(text, matcher)
    assert isinstance(a, ParsedAnswer) and not a.usable


def test_runaway_answers_are_capped_and_deduplicated(matcher: VocabMatcher) -> None:
    a = parse_answer("EN: " + " - ".join(["player"] * 50 + VOCABS["en"]), matcher, max_words=4)
    assert a.words["en"] == ["player", "team", "football", "referee"]


def test_vote_keeps_the_most_frequent_words_per_language() -> None:
    rounds = [ParsedAnswer({"en": ["a", "b", "c"], "zh": ["x"]}), ParsedAnswer({"en": ["b", "c", "d"], "zh": []}),
              ParsedAnswer({"en": ["c", "b"], "zh": ["y", "x"]}), ParsedAnswer({"en": [], "zh": []}), None]
    r = vote(rounds, ["en", "zh"], m=2)
    assert r.words == {"en": ["b", "c"], "zh": ["x", "y"]}     # b and c named 3 times; ties -> earlier
    assert r.counts == {"en": [3, 3], "zh": [2, 1]}
    assert vote([ParsedAnswer({"en": [], "zh": []}), None], ["en", "zh"], m=5) is None

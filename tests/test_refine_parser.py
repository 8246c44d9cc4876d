"""The refinement prompt, the tolerant answer parser (on recorded real and messy answers) and voting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xtm.trainer.phase2.answer_parser import ParsedAnswer, VocabMatcher, parse_answer
from xtm.trainer.phase2.objective import vote
from xtm.trainer.phase2.prompt import TopicWords, build_prompt

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


# Review defects F3, F4 and F10 (docs/llm_xtm.md, "Parsing answers").

def test_prose_after_the_lists_is_not_read_as_words(matcher: VocabMatcher) -> None:
    """A blank line ends a language's line, and an unlabelled sentence never continues one: the
    explanation LLMs add after the lists (naming words they removed) gives no topic words."""
    lists = "Topic 0: sports\nEN: player - team - football\nZH: 球员 - 球队 - 比赛\n"
    prose = "These words were chosen because they fit the topic better than school or exam."
    for text in (lists + "\n" + prose, lists + prose, lists + "\n" + "school, exam"):
        a = parse_answer(text, matcher)
        assert a.words == {"en": ["player", "team", "football"], "zh": ["球员", "球队", "比赛"]}, text
        assert a.mapped == 0


def test_wrapped_lists_and_bullet_points_still_continue_a_language(matcher: VocabMatcher) -> None:
    wrapped = parse_answer("EN: player - team -\nfootball, referee\nZH: 球员 - 球队\n比赛、足球", matcher)
    assert wrapped.words == {"en": ["player", "team", "football", "referee"], "zh": ["球员", "球队", "比赛", "足球"]}
    bullets = parse_answer("EN:\n\n- player\n- team\n2. football\n\nZH:\n* 球员\n* 球队\n\nHope this helps!", matcher)
    assert bullets.words == {"en": ["player", "team", "football"], "zh": ["球员", "球队"]}


LIST_VOCABS = {"en": ["player", "team", "match", "goal", "football", "club", "world", "cup", "final"],
               "zh": ["球员", "球队", "比赛", "进球"],
               "ja": ["選手", "チーム", "試合", "チャンピオンズリーグ", "コミュニケーション", "サッカー"]}


@pytest.mark.parametrize(("text", "expected"), [
    ("EN:\nplayer team match goal\nZH:\n球员 球队 比赛 进球",
     {"en": ["player", "team", "match", "goal"], "zh": ["球员", "球队", "比赛", "进球"]}),
    ("EN: player, team, match,\ngoal, football club, world cup final",
     {"en": ["player", "team", "match", "goal", "football", "club", "world", "cup", "final"]}),
    ("English:\n\n1. player\n\n2. team\n\n3. match\n\nChinese:\n\n1. 球员\n\n2. 球队",
     {"en": ["player", "team", "match"], "zh": ["球员", "球队"]}),
    ("EN:\n- player (球员)\n- team (球队)\n- match\nZH:\n- 球员 (player)\n- 球队 (team)",
     {"en": ["player", "team", "match"], "zh": ["球员", "球队"]}),
    ("JA: 選手 - チーム - 試合 -\nチャンピオンズリーグ - コミュニケーション - サッカー",
     {"ja": ["選手", "チーム", "試合", "チャンピオンズリーグ", "コミュニケーション", "サッカー"]}),
    ("JA:\n- 選手\n- コミュニケーション\n- チーム\n- 試合", {"ja": ["選手", "コミュニケーション", "チーム", "試合"]}),
    ("EN: player, team, match, goal\nThese words reflect the football topic, removing the club and the cup.",
     {"en": ["player", "team", "match", "goal"]}),
    ("ZH: 球员、球队\n这些词语反映了比赛的主题。", {"zh": ["球员", "球队"]}),
], ids=["header-alone-space-list", "wrapped-multiword-items", "loose-markdown", "glosses", "ja-wrapped-long-words",
        "ja-bullets-long-word", "prose-directly-below", "zh-prose-below"])
def test_lists_in_every_layout_keep_their_words_and_prose_gives_none(text: str, expected: dict) -> None:
    """Lists that parsed before the prose rule must still parse: a header alone with a space-separated list
    below lost the whole answer, one long Japanese word ended a list, a blank line between bullets kept one."""
    langs = {"en", "zh"} | set(expected)
    a = parse_answer(text, VocabMatcher({lang: LIST_VOCABS[lang] for lang in sorted(langs)}))
    assert {lang: words for lang, words in a.words.items() if words} == expected


HEADER_VOCABS = {"en": ["english", "chinese", "japanese", "words", "simplified", "player", "team", "coach"],
                 "zh": ["球员", "球队", "教练", "中文", "词语"], "ja": ["選手", "チーム", "監督"],
                 "de": ["spieler", "mannschaft", "wörter"], "fr": ["joueur", "équipe", "mots"]}
EN_ZH = {"en": ["player", "team"], "zh": ["球员", "球队"]}


@pytest.mark.parametrize(("text", "expected"), [
    ("English words: player - team - coach\nChinese words: 球员 - 球队 - 教练",
     {"en": ["player", "team", "coach"], "zh": ["球员", "球队", "教练"]}),
    ("EN: player - team\nChinese (Simplified): 球员 - 球队", EN_ZH),
    ("**English (EN):** player - team\n**Chinese (ZH):** 球员 - 球队", EN_ZH),
    ("Refined English keywords:\nplayer, team\n中文词语：球员、球队", EN_ZH),
    ("English words - player - team\nJapanese words - 選手 - チーム",
     {"en": ["player", "team"], "ja": ["選手", "チーム"]}),
    ("Japanese words -\n選手 - チーム - 監督\nEnglish (EN): player",
     {"en": ["player"], "ja": ["選手", "チーム", "監督"]}),
    ("German words: spieler - mannschaft\nFrench (FR): joueur - équipe",
     {"de": ["spieler", "mannschaft"], "fr": ["joueur", "équipe"]}),
], ids=["words", "parenthesis", "markdown-code", "keywords-next-line-native", "dash", "dash-alone", "de-fr"])
def test_language_headers_are_labels_and_their_words_are_not_topic_words(text: str, expected: dict) -> None:
    langs = list(expected)
    a = parse_answer(text, VocabMatcher({lang: HEADER_VOCABS[lang] for lang in langs}))
    assert a.words == expected
    assert a.notes == [] and a.mapped == 0


def test_a_header_for_a_language_not_asked_for_is_no_label_and_gives_no_words() -> None:
    a = parse_answer("English words: player - team\nFrench words: joueur\nChinese words: 球员",
                     VocabMatcher({"en": HEADER_VOCABS["en"], "zh": HEADER_VOCABS["zh"]}))
    assert a.words == {"en": ["player", "team"], "zh": ["球员"]}


def test_stem_matches_are_inflections_not_other_words_with_the_same_porter_stem() -> None:
    """Porter gives internationally/internal, animation/animal, communism/communication,
    generous/general, experiments/experience one stem each; only inflections are matched."""
    vocab = ["experience", "experiment", "internal", "animal", "communication", "general", "market", "player",
             "invest", "threatened", "customer", "study"]
    m = VocabMatcher({"en": vocab})
    for word in ("internationally", "animation", "anime", "communism", "generous", "generator", "custom"):
        assert m.match(word, "en") is None, word
    for word, base in [("markets", "market"), ("players", "player"), ("investing", "invest"), ("invested", "invest"),
                       ("threatens", "threatened"), ("experiments", "experiment"), ("studies", "study"),
                       ("Markets", "market")]:
        assert m.match(word, "en") == (base, False), word
    both = VocabMatcher({"en": ["internal", "international"]})
    assert both.match("internationally", "en") == ("international", False)
    a = parse_answer("EN: markets - animation - generous - players", m)
    assert a.words["en"] == ["market", "player"] and a.dropped == 2 and a.mapped == 2


def test_a_word_line_of_a_language_with_a_broad_stopword_list_is_not_prose() -> None:
    # Italian's stopword list (stopwords-iso) holds content words (anni, città): a line of topic words under its
    # header must still be read as words, not as a sentence (it was dropped whole).
    m = VocabMatcher({"en": ["government", "economy", "market", "bank", "price"],
                      "it": ["governo", "economia", "mercato", "banca", "prezzo"]})
    a = parse_answer("English: government, economy, market, bank, price\nItalian:\n"
                     "governo, economia, mercato, banca, prezzo, anni, città\n", m)
    assert a.words["it"] == ["governo", "economia", "mercato", "banca", "prezzo"]

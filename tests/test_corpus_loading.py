"""Corpus loading: JSONL documents (every bad-input case) and the benchmark directory layout."""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from shared_data import need

from xtm.config import Preprocessing
from xtm.errors import XtmError
from xtm.trainer.data.loading import HOLDOUT_FRACTION, load_corpus
from xtm.trainer.data.sharding import ShardedCorpus, build_shards, open_or_build_shards

# --------------------------------------------------------------------------- helpers

TOPICS: dict[str, dict[str, list[str]]] = {
    "en": {"sport": ["football", "match", "team", "coach", "goal", "player"],
           "biz": ["market", "stock", "investor", "bank", "price", "trade"],
           "tech": ["chip", "phone", "camera", "software", "computer", "robot"]},
    "zh": {"sport": ["足球", "比赛", "球队", "教练", "进球", "球员"],
           "biz": ["市场", "股票", "投资者", "银行", "价格", "贸易"],
           "tech": ["芯片", "手机", "相机", "软件", "电脑", "机器人"]},
    "ja": {"sport": ["サッカー", "試合", "チーム", "監督", "ゴール", "選手"],
           "biz": ["市場", "株価", "銀行", "価格", "貿易", "経済"],
           "tech": ["カメラ", "ソフト", "パソコン", "ロボット", "スマホ", "電池"]},
}
GLUE = {"en": "the {} and {} of {} with {}", "zh": "{} 的 {} 和 {} 了 {}", "ja": "{} の {} は {} と {}"}
LABELS = ["sport", "biz", "tech"]


def make_docs(lang: str, n: int, *, label: bool = True, split: bool = False, offset: int = 0,
              with_lang: bool = True) -> list[dict[str, Any]]:
    """n documents of 4 topic words each; every word lands in about 2/9 of the documents."""
    docs = []
    for i in range(n):
        topic = LABELS[i % 3]
        words = TOPICS[lang][topic]
        picks = [words[(i // 3 + k) % 6] for k in range(4)]
        d: dict[str, Any] = {"id": f"{lang}{offset + i}", "text": GLUE[lang].format(*picks)}
        if with_lang:
            d["lang"] = lang
        if label:
            d["label"] = topic
        if split:
            d["split"] = "test" if i % 5 == 4 else "train"
        docs.append(d)
    return docs


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def load_quiet(path: Path, **kw: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_corpus(path, progress=False, **kw)


# --------------------------------------------------------------------------- JSONL: good input


def test_jsonl_split_labels_and_counts(tmp_path: Path) -> None:
    rows = make_docs("zh", 30, split=True) + make_docs("en", 30, split=True)
    rows.append({"id": "twice", "lang": "en", "text": "Football football MATCH robot, the end.",
                 "label": "sport", "split": "train"})
    f = write_jsonl(tmp_path / "news.jsonl", rows)
    c = load_corpus(f, progress=False)
    assert c.langs == ["en", "zh"] and c.name == "news"
    en, zh = c.lang("en"), c.lang("zh")
    assert (en.num_train, en.test_bow.shape[0]) == (25, 6)
    assert (zh.num_train, zh.test_bow.shape[0]) == (24, 6)
    for lc in (en, zh):
        assert isinstance(lc.train_bow, sp.csr_matrix) and lc.train_bow.dtype == np.float32
        assert lc.train_bow.shape[1] == len(lc.vocab) == lc.test_bow.shape[1]
        assert lc.vocab == sorted(lc.vocab)
    assert "football" in en.vocab and "the" not in en.vocab and "and" not in en.vocab
    assert "足球" in zh.vocab and "的" not in zh.vocab
    assert zh.tokenizer.kind == "jieba" and en.tokenizer.kind == "words"
    # Counts: "twice" has football x2 (case folded), match x1, robot x1; "end" is in one doc only.
    row = en.train_bow[en.train_ids.index("twice")].toarray().ravel()
    assert row[en.vocab.index("football")] == 2 and row[en.vocab.index("match")] == 1
    assert row.sum() == 4
    # Raw texts stay row-aligned with the bags of words (sentence encoders embed them).
    assert en.train_texts[en.train_ids.index("twice")] == "Football football MATCH robot, the end."
    assert len(zh.test_texts) == 6 and zh.test_texts[0] == rows[4]["text"]
    # Labels: one mapping for both languages.
    assert c.info["label_names"] == ["biz", "sport", "tech"]
    assert en.train_labels[en.train_ids.index("en0")] == zh.train_labels[zh.train_ids.index("zh0")] == 1
    assert zh.test_ids == [f"zh{i}" for i in range(4, 30, 5)]
    assert c.has_labels and c.info["split"] == "file"


def test_ids_default_to_line_numbers(tmp_path: Path) -> None:
    rows = [{k: v for k, v in d.items() if k != "id"} for d in make_docs("en", 9) + make_docs("zh", 9)]
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", rows))
    assert c.lang("en").train_ids[:2] == ["1", "2"] and c.lang("zh").train_ids[0] == "10"


def test_directory_of_jsonl_files(tmp_path: Path) -> None:
    d = tmp_path / "mycorpus"
    d.mkdir()
    write_jsonl(d / "a_en.jsonl", [{k: v for k, v in x.items() if k != "id"} for x in make_docs("en", 12)])
    write_jsonl(d / "b_ja.jsonl", make_docs("ja", 12))
    c = load_quiet(d)
    assert c.name == "mycorpus" and c.langs == ["en", "ja"]
    assert c.lang("en").train_ids[0] == "a_en.jsonl:1"
    assert c.lang("ja").tokenizer.kind == "janome" and {"チーム", "試合"} <= set(c.lang("ja").vocab)


def test_hidden_jsonl_files_in_a_directory_are_skipped_and_counted(tmp_path: Path,
                                                                   data_log: list[logging.LogRecord]) -> None:
    """A Jupyter `.docs-checkpoint.jsonl` beside docs.jsonl doubled every document (exit 0); a Mac's `._docs.jsonl`
    (AppleDouble, binary) stopped training with "invalid JSON" in a file the user cannot see."""
    d = tmp_path / "corpus"
    d.mkdir()
    docs = write_jsonl(d / "docs.jsonl", make_docs("en", 12) + make_docs("zh", 12))
    (d / ".docs-checkpoint.jsonl").write_bytes(docs.read_bytes())
    (d / "._docs.jsonl").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        ")
    c = load_quiet(d)
    assert sum(lc.train_bow.shape[0] + lc.test_bow.shape[0] for lc in c.languages) == 24
    assert [r.getMessage() for r in data_log] == [
        f"skipped 2 hidden file(s) in {d}: ._docs.jsonl, .docs-checkpoint.jsonl"]
    build_shards(d, tmp_path / "s", progress=False)  # out of core: the same files
    shards = ShardedCorpus(tmp_path / "s")
    assert sum(s["docs"] for lc in shards.languages for s in lc.train + lc.test) == 24


def test_langs_select_and_order(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12) + make_docs("ja", 12)
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", rows), langs=["JA", "en"])
    assert c.langs == ["ja", "en"]
    assert c.info["skipped_other_languages"] == {"zh": 12}


def test_missing_lang_is_detected(tmp_path: Path) -> None:
    en = ["The government announced new measures to support small businesses this year.",
          "Our football team won the championship after a difficult final match.",
          "The new phone has a better camera and a much faster chip than before."] * 4
    fr = ["Le gouvernement a annoncé de nouvelles mesures pour soutenir les petites entreprises.",
          "Notre équipe de football a gagné le championnat après une finale difficile.",
          "Le nouveau téléphone a un meilleur appareil photo et une puce plus rapide."] * 4
    rows = [{"text": t} for t in en + fr]
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", rows), min_df=1, max_df=1.0)
    assert sorted(c.langs) == ["en", "fr"]
    assert c.info["detected_lang"] == 24
    assert c.lang("en").num_train == 12 and c.lang("fr").num_train == 12
    assert "gouvernement" in c.lang("fr").vocab and "les" not in c.lang("fr").vocab


def test_rare_detected_language_is_dropped(tmp_path: Path) -> None:
    rows = [{k: v for k, v in d.items() if k != "lang"} for d in make_docs("en", 60)]
    rows += make_docs("ja", 60)
    rows.append({"text": "中国经济今年继续保持稳定增长，消费市场十分活跃。"})
    with pytest.warns(UserWarning, match=r"detected as zh \(1\)"):
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    assert c.langs == ["en", "ja"]
    assert c.info["dropped"]["rare_detected_language"] == 1


def test_holdout_when_all_labeled_and_no_split(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 30) + make_docs("zh", 40))
    c = load_quiet(f, seed=3)
    assert c.info["split"] == "holdout" and c.has_labels
    for lc, n in ((c.lang("en"), 30), (c.lang("zh"), 40)):
        assert lc.test_bow.shape[0] == round(HOLDOUT_FRACTION * n)
        assert lc.num_train + lc.test_bow.shape[0] == n
        assert not set(lc.train_ids) & set(lc.test_ids)
        assert len(lc.test_labels) == lc.test_bow.shape[0]
    again = load_quiet(f, seed=3)
    other = load_quiet(f, seed=4)
    assert again.lang("zh").test_ids == c.lang("zh").test_ids
    assert other.lang("zh").test_ids != c.lang("zh").test_ids


def test_no_labels_no_split_means_no_test_set(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 12, label=False) + make_docs("zh", 12, label=False))
    c = load_quiet(f)
    assert c.info["split"] == "none" and c.info["label_names"] is None
    assert all(lc.test_bow is None and lc.train_labels is None for lc in c.languages)
    assert c.lang("en").num_train == 12


def test_partial_labels_are_ignored_with_warning(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12, label=False)
    with pytest.warns(UserWarning, match="only 12 of 24 documents have a label"):
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    assert all(lc.train_labels is None for lc in c.languages)
    assert c.info["label_names"] is None


def test_a_number_and_the_same_string_as_labels_are_two_classes_with_a_warning(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12)
    for i, r in enumerate(rows):
        r["label"] = 1 if i % 2 else "1"
    with pytest.warns(UserWarning, match='labels 1 and "1" are different classes'):
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    assert c.info["label_names"] == [1, "1"]


def test_integer_labels_map_in_order(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12)
    for r in rows:
        r["label"] = {"sport": 10, "biz": 2, "tech": 7}[r["label"]]
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", rows))
    assert c.info["label_names"] == [2, 7, 10]
    en = c.lang("en")
    labels = dict(zip(en.train_ids + en.test_ids, list(en.train_labels) + list(en.test_labels), strict=True))
    assert labels["en0"] == 2 and labels["en1"] == 0 and labels["en2"] == 1


def test_empty_documents_dropped_and_counted(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12)
    rows += [{"lang": "en", "text": ""}, {"lang": "zh", "text": "   "}, {"text": "\n"},
             {"lang": "en", "text": "the and of, is!"}, {"lang": "zh", "text": "的了。。"},
             {"lang": "en", "text": "!!! 42"}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False, langs=["en", "zh"])
    dropped_msgs = [str(w.message) for w in caught if "dropped" in str(w.message)]
    assert len(dropped_msgs) == 1 and "dropped 6 document(s)" in dropped_msgs[0]
    assert c.info["dropped"]["empty_text"] == 3 and c.info["dropped"]["no_tokens"] == 3
    assert c.info["dropped"]["total"] == 6
    assert c.info["languages"]["zh"]["dropped"] == {"empty_text": 1, "no_tokens": 1}
    # Labels held out per language; the 6 dropped documents are nowhere.
    assert sum(lc.num_train + lc.test_bow.shape[0] for lc in c.languages) == 24


def test_min_doc_tokens_drops_short_documents(tmp_path: Path) -> None:
    rows = make_docs("en", 12, label=False) + make_docs("zh", 12, label=False)
    rows.append({"id": "short", "lang": "en", "text": "football and xylophone"})
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", rows), min_doc_tokens=2)
    assert "short" not in c.lang("en").train_ids
    assert c.info["dropped"]["too_few_vocab_tokens"] == 1


def test_vocab_filters(tmp_path: Path) -> None:
    rows = make_docs("en", 30, label=False) + make_docs("zh", 30, label=False)
    for r in rows:
        if r["lang"] == "en":
            r["text"] += " news"  # in every English document: above max_df
    rows.append({"lang": "en", "text": "unique football"})  # `unique` in one document: below min_df
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", rows))
    en = c.lang("en").vocab
    assert "news" not in en and "unique" not in en and "football" in en
    assert len(en) == 18
    small = load_quiet(write_jsonl(tmp_path / "c2.jsonl", rows), vocab_size=5)
    # Highest document frequency wins: 5 of the 18 topic words.
    assert len(small.lang("en").vocab) == 5 and set(small.lang("en").vocab) <= set(en)
    assert small.lang("en").train_bow.shape[1] == 5


def _glued_docs(lang: str, glue: list[str], topics: list[list[str]], n: int) -> list[dict[str, Any]]:
    """n documents of two topic words and one of `glue`'s function words each: every function word sits in
    a third of the documents, under max_df, which therefore keeps it."""
    return [{"lang": lang, "text": f"{topics[i % 3][i % 4]} {glue[i % 3]} {topics[i % 3][(i + 1) % 4]}"}
            for i in range(n)]


def test_languages_without_an_xtm_list_take_stopwords_iso(tmp_path: Path) -> None:
    # Italian and Portuguese: xtm has no list of its own. Their articles and prepositions are in a third of
    # the documents, which max_df (0.5) keeps; stopwords-iso's lists remove them.
    it = _glued_docs("it", ["della", "nel", "sono"], [["calcio", "squadra", "partita", "allenatore"],
                     ["mercato", "banca", "azioni", "prezzo"], ["telefono", "computer", "robot", "software"]], 30)
    pt = _glued_docs("pt", ["das", "pelo", "também"], [["futebol", "equipe", "jogo", "treinador"],
                     ["mercado", "banco", "ações", "preço"], ["telefone", "computador", "robô", "programa"]], 30)
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", it + pt))
    assert not {"della", "nel", "sono"} & set(c.lang("it").vocab) and "calcio" in c.lang("it").vocab
    assert not {"das", "pelo", "também"} & set(c.lang("pt").vocab) and "futebol" in c.lang("pt").vocab
    stop = c.info["preprocessing"]["stopwords"]
    assert set(stop) == {"it", "pt"} and all(v.startswith("stopwords-iso ") for v in stop.values())


def test_a_language_without_any_stopword_list_is_a_warning(tmp_path: Path) -> None:
    # Welsh: neither xtm nor stopwords-iso has a list. Its function words stay, and the run says so.
    cy = _glued_docs("cy", ["yr", "mae", "gyda"], [["pêl", "tîm", "gêm", "hyfforddwr"],
                     ["marchnad", "banc", "pris", "masnach"], ["ffôn", "cyfrifiadur", "robot", "meddalwedd"]], 30)
    rows = cy + make_docs("en", 30, label=False)
    with pytest.warns(UserWarning, match=r"no stopword list for cy: "):
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    assert "mae" in c.lang("cy").vocab
    assert c.info["preprocessing"]["stopwords"] == {"cy": "none", "en": "xtm"}


def test_without_stopwordsiso_only_xtm_lists_apply() -> None:
    import sys

    from xtm.trainer.data import stopwords as sw

    sw._iso_list.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(sys.modules, "stopwordsiso", None)  # a runtime-only install: the package is absent
            assert sw.stopwords("it") == frozenset() and sw.stopword_source("it") == "none"
            assert "the" in sw.stopwords("en")
    finally:
        sw._iso_list.cache_clear()
    assert "della" in sw.stopwords("it")


def test_tiny_corpus_falls_back_with_warning(tmp_path: Path) -> None:
    rows = [{"lang": "en", "text": "apples oranges"}, {"lang": "en", "text": "pears plums"},
            {"lang": "zh", "text": "苹果 橙子"}, {"lang": "zh", "text": "梨 李子"}]
    with pytest.warns(UserWarning, match="no word passes min_df=2"):
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    assert c.lang("en").vocab == ["apples", "oranges", "pears", "plums"]
    assert c.lang("en").num_train == 2


def test_jsonl_with_dictionary_links(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 30, split=True) + make_docs("zh", 30, split=True))
    dct = tmp_path / "zh_en.tsv"
    dct.write_text("足球\tfootball\n股票\tstock\n芯片\tchip\n", encoding="utf-8")
    c = load_quiet(f, dict_path=dct)
    assert list(c.links) == [("en", "zh")]
    m = c.link_matrix("zh", "en")
    en, zh = c.lang("en").vocab, c.lang("zh").vocab
    assert m.nnz == 3 and m[zh.index("足球"), en.index("football")] == 1
    assert c.info["links"]["en-zh"]["orientation"] == "zh->en"
    wrong = tmp_path / "de_fr.tsv"
    wrong.write_text("Hund\tchien\nKatze\tchat\n", encoding="utf-8")
    with pytest.raises(XtmError, match="matches none of the vocabularies") as e:
        load_quiet(f, dict_path=wrong)
    assert e.value.path == str(wrong)


def test_another_tools_field_names_are_said_not_silently_ignored(tmp_path: Path) -> None:
    # "language" for "lang" and "category" for "label": read as absent (the language detected, no labels), and
    # said once per name with how many documents carry it.
    rows = [{"text": r["text"], "language": r["lang"], "category": r["label"]}
            for r in make_docs("en", 30) + make_docs("zh", 30)]
    with pytest.warns(UserWarning, match=r"60 document\(s\) have 'category' and no 'label'; 60 document\(s\) "
                                         r"have 'language' and no 'lang'"):
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    assert not c.has_labels
    # Where the ignored field is what makes the corpus fail, the error says so (the warning never came).
    english_only = [{"text": r["text"], "language": "en"} for r in make_docs("en", 30)]
    with pytest.raises(XtmError, match="at least two languages.*30 document\\(s\\) name their language in a field "
                                       "xtm does not read, such as 'language'"):
        load_quiet(write_jsonl(tmp_path / "en.jsonl", english_only))
    with pytest.raises(XtmError, match="no documents left for requested language\\(s\\) zh.*'language'"):
        load_quiet(write_jsonl(tmp_path / "en2.jsonl", english_only), langs=["en", "zh"])
    # A line without text that has 'content' says which field it has.
    with pytest.raises(XtmError, match="this line has 'content': xtm reads 'text'") as e:
        load_quiet(write_jsonl(tmp_path / "d.jsonl", [{"lang": "en", "content": "football match"}]))
    assert (e.value.line, e.value.field) == (1, "text")
    # Misspelt names are said too: another case ("Lang"), one letter off ("lable"); "Text" names the line's field.
    typos = [{"text": r["text"], "Lang": r["lang"], "lable": r["label"], "url": "u", "long": -122.4}
             for r in make_docs("en", 30) + make_docs("zh", 30)]
    with pytest.warns(UserWarning, match=r"60 document\(s\) have 'Lang' and no 'lang'; 60 document\(s\) "
                                         r"have 'lable' and no 'label'\. xtm reads"):
        load_corpus(write_jsonl(tmp_path / "t.jsonl", typos), progress=False)
    with pytest.raises(XtmError, match="this line has 'Text': xtm reads 'text'"):
        load_quiet(write_jsonl(tmp_path / "T.jsonl", [{"lang": "en", "Text": "football match"}]))
    # A document with both names is read as it is: nothing to say.
    both = [{**r, "language": r["lang"]} for r in make_docs("en", 30) + make_docs("zh", 30)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_corpus(write_jsonl(tmp_path / "e.jsonl", both), progress=False)


def test_a_hindi_dictionary_links_hindi_words(tmp_path: Path) -> None:
    # Hindi words keep their vowel signs, so a dictionary's Hindi words are found in the vocabulary (they were
    # cut at every sign: "the dictionary matches none of the vocabularies").
    hi = _glued_docs("hi", ["और", "के", "में"], [["फ़ुटबॉल", "टीम", "मैच", "खिलाड़ी"],
                     ["बाज़ार", "बैंक", "शेयर", "कीमत"], ["फ़ोन", "कंप्यूटर", "रोबोट", "सॉफ़्टवेयर"]], 30)
    en = _glued_docs("en", ["the", "of", "and"], [["football", "team", "match", "player"],
                     ["market", "bank", "shares", "price"], ["phone", "computer", "robot", "software"]], 30)
    dct = tmp_path / "hi_en.tsv"
    dct.write_text("बाज़ार\tmarket\nकंप्यूटर\tcomputer\nखिलाड़ी\tplayer\n", encoding="utf-8")
    c = load_quiet(write_jsonl(tmp_path / "c.jsonl", hi + en), dict_path=dct)
    assert {"बाज़ार", "कंप्यूटर", "खिलाड़ी"} <= set(c.lang("hi").vocab)
    assert c.link_matrix("hi", "en").nnz == 3
    assert "और" not in c.lang("hi").vocab  # stopwords-iso's Hindi


def test_a_language_without_word_spaces_is_a_warning(tmp_path: Path) -> None:
    th = [{"lang": "th", "text": f"ตลาดหุ้น{i % 3} ลดลง ข่าว{i % 5}"} for i in range(30)]
    with pytest.warns(UserWarning, match="no word segmenter for th"):
        load_corpus(write_jsonl(tmp_path / "c.jsonl", th + make_docs("en", 30, label=False)), progress=False)


# --------------------------------------------------------------------------- JSONL: bad input

GOOD = json.dumps({"id": "ok", "lang": "en", "text": "football match"})


@pytest.mark.parametrize(("bad", "field", "fragment"), [
    ('{"lang": "en", "text": "unterminated', None, "invalid JSON"),
    ('["a", "list"]', None, "expected a JSON object"),
    ('{"lang": "en", "title": "no text"}', "text", "missing"),
    ('{"lang": "en", "text": 42}', "text", "must be a string"),
    ('{"lang": "en", "text": null}', "text", "must be a string"),
    ('{"lang": "klingon!", "text": "qapla"}', "lang", "invalid language code"),
    ('{"lang": "中文", "text": "你好"}', "lang", "invalid language code"),
    ('{"lang": "éé", "text": "bonjour"}', "lang", "invalid language code"),
    ('{"lang": 7, "text": "hello"}', "lang", "must be a language code string"),
    ('{"lang": "en", "text": "hello", "split": "dev"}', "split", "\"train\" or \"test\""),
    ('{"lang": "en", "text": "hello", "label": [1]}', "label", "integer or a string"),
    ('{"lang": "en", "text": "hello", "label": 1.5}', "label", "integer or a string"),
    ('{"lang": "en", "text": "hello", "id": {"x": 1}}', "id", "string or an integer"),
])
def test_bad_lines_name_file_line_and_field(tmp_path: Path, bad: str, field: str | None,
                                            fragment: str) -> None:
    f = write_jsonl(tmp_path / "bad.jsonl", [GOOD, "", GOOD, bad, GOOD])
    with pytest.raises(XtmError) as e:
        load_corpus(f, progress=False)
    err = e.value
    assert (err.path, err.line, err.field) == (str(f), 4, field)
    msg = str(err)
    assert msg.startswith(f"{f}:4: ") and fragment in msg
    if field is not None:
        assert f"field '{field}'" in msg


def test_invalid_utf8_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.jsonl"
    f.write_bytes(GOOD.encode() + b"\n" + b'{"lang": "en", "text": "caf\xe9"}\n')
    with pytest.raises(XtmError, match="UTF-8") as e:
        load_corpus(f, progress=False)
    assert (e.value.path, e.value.line) == (str(f), 2)


def test_a_byte_order_mark_before_line_1_is_not_part_of_the_json(tmp_path: Path) -> None:
    plain = write_jsonl(tmp_path / "plain.jsonl", make_docs("en", 12) + make_docs("zh", 12))
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    a, b = load_quiet(plain), load_quiet(bom)
    assert b.lang("en").train_ids == a.lang("en").train_ids and b.lang("en").vocab == a.lang("en").vocab
    assert (b.lang("en").train_bow != a.lang("en").train_bow).nnz == 0


def test_one_language_is_not_enough(tmp_path: Path) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 12))
    with pytest.raises(XtmError, match="at least two languages") as e:
        load_quiet(f)
    assert "en (12 docs)" in str(e.value) and e.value.path == str(f)


def test_requested_language_without_documents(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12) + [{"lang": "ja", "text": "。。。"}]
    f = write_jsonl(tmp_path / "c.jsonl", rows)
    with pytest.raises(XtmError, match="no documents left for requested language") as e:
        load_quiet(f, langs=["en", "ja"])
    assert e.value.field == "langs" and "ja" in str(e.value)


def test_unrequested_empty_language_warns(tmp_path: Path) -> None:
    rows = make_docs("en", 12) + make_docs("zh", 12) + [{"lang": "fr", "text": "le la les"}]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = load_corpus(write_jsonl(tmp_path / "c.jsonl", rows), progress=False)
    msgs = [str(w.message) for w in caught]
    assert any("every 'fr' document was dropped" in m for m in msgs)
    assert any("dropped 1 document(s) with no usable words (1 no tokens)" in m for m in msgs)
    assert c.langs == ["en", "zh"]


def test_bad_paths_and_arguments(tmp_path: Path) -> None:
    with pytest.raises(XtmError, match="does not exist"):
        load_corpus(tmp_path / "nope.jsonl")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(XtmError, match="not a corpus directory") as e:
        load_corpus(empty)
    assert e.value.path == str(empty)
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 6) + make_docs("zh", 6))
    with pytest.raises(XtmError, match="max_df"):
        load_corpus(f, max_df=2.0)
    with pytest.raises(XtmError, match="invalid language code"):
        load_corpus(f, langs=["en", "??"])


def test_both_readers_list_a_corpus_path_alike_with_their_own_errors(tmp_path: Path) -> None:
    """xtm.trainer.data.jsonl.input_files lists the in-memory loader's and the out-of-core preprocessor's input:
    a directory's top-level, visible *.jsonl files in name order (not Ray's wider rule: subdirectories,
    .ndjson), a file by its name; each caller keeps its own error for a directory without any."""
    from xtm.trainer.data.jsonl import input_files

    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    for name in ("b.jsonl", "a.jsonl", ".hidden.jsonl", "sub/c.jsonl", "d.ndjson", "e.json"):
        (d / name).write_text("", encoding="utf-8")
    assert input_files(d, none_found="none") == [d / "a.jsonl", d / "b.jsonl"]
    assert input_files(d / "d.ndjson", none_found="none") == [d / "d.ndjson"]  # a file named: read as JSONL
    with pytest.raises(XtmError, match="CSV is not read for training"):
        input_files(d / "x.csv", none_found="none")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(XtmError) as e:
        input_files(empty, none_found="none here")
    assert str(e.value) == f"{empty}: none here"
    with pytest.raises(XtmError, match="not a corpus directory"):
        load_corpus(empty)
    with pytest.raises(XtmError, match=r"no \*\.jsonl files to preprocess"):
        build_shards(empty, tmp_path / "s", progress=False)
    with pytest.raises(XtmError, match="train it in memory, without --out-of-core"):
        build_shards(write_benchmark(tmp_path / "Tiny"), tmp_path / "s2", progress=False)


@pytest.mark.parametrize(("name", "message"), [
    ("docs.jsonl.gz", "compressed input is not read: decompress it first"),
    ("docs.csv", "CSV is not read for training"),
    ("Docs.TSV", "TSV is not read for training"),
    ("docs.parquet", "Parquet is not read for training"),
])
def test_a_data_file_of_another_format_is_refused_by_name(tmp_path: Path, name: str, message: str) -> None:
    """Read as JSONL, each failed at its line 1 with "invalid UTF-8" or "invalid JSON"."""
    f = tmp_path / name
    f.write_bytes(b"PAR1\x15\x04\x15 id,text\n")
    for build in (lambda: load_corpus(f, progress=False), lambda: build_shards(f, tmp_path / "s", progress=False)):
        with pytest.raises(XtmError, match=message) as e:
            build()
        assert e.value.path == str(f)
        assert "xtm-train reads JSONL documents (one JSON object a line) or a benchmark directory" in str(e.value)


# --------------------------------------------------------------------------- benchmark layout


def write_benchmark(d: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A two-language benchmark directory: en (labels, vectors) and cn (no labels, no vectors)."""
    d.mkdir()
    rng = np.random.default_rng(0)
    files: dict[str, Any] = {
        "vocab_en": "apple\nbanana\ncherry\n", "vocab_cn": "苹果\n香蕉\n",
        "train_bow_matrix_en.npz": sp.random(8, 3, density=0.5, random_state=1, format="csr") * 5,
        "test_bow_matrix_en.npz": sp.random(2, 3, density=0.5, random_state=2, format="csr") * 5,
        "train_bow_matrix_cn.npz": sp.random(6, 2, density=0.5, random_state=3, format="csr") * 5,
        "test_bow_matrix_cn.npz": sp.random(3, 2, density=0.5, random_state=4, format="csr") * 5,
        "train_labels_en.txt": "\n".join(str(x) for x in rng.integers(0, 2, 8)) + "\n",
        "test_labels_en.txt": "0\n1\n",
        "word2vec_en.npz": sp.csc_matrix(rng.normal(size=(3, 4)).astype(np.float32)),
    }
    for name, content in files.items():
        if name in skip:
            continue
        if isinstance(content, str):
            (d / name).write_text(content, encoding="utf-8")
        else:
            sp.save_npz(d / name, content.astype(np.int64) if "bow" in name else content)
    return d


def test_synthetic_benchmark_dir(tmp_path: Path) -> None:
    c = load_corpus(write_benchmark(tmp_path / "Tiny"))
    assert c.name == "Tiny" and c.langs == ["en", "zh"] and c.info["format"] == "benchmark"
    en, zh = c.lang("en"), c.lang("zh")
    assert en.train_bow.dtype == np.float32 and isinstance(en.train_bow, sp.csr_matrix)
    assert en.train_bow.shape == (8, 3) and zh.test_bow.shape == (3, 2)
    assert en.train_labels is not None and en.test_labels.tolist() == [0, 1]
    assert zh.train_labels is None and zh.test_labels is None and zh.word_vectors is None
    assert en.word_vectors.shape == (3, 4) and en.word_vectors.dtype == np.float32
    assert zh.tokenizer.kind == "jieba" and zh.vocab == ["苹果", "香蕉"]
    # The tokenizer a run records for raw text follows its token rules (a run made before them: regex).
    assert en.tokenizer.kind == "words"
    old = load_corpus(write_benchmark(tmp_path / "Old"), prep=Preprocessing(token_rules=1))
    assert old.lang("en").tokenizer.kind == "regex" and old.lang("zh").tokenizer.kind == "jieba"
    with pytest.raises(XtmError, match="token_rules must be a whole number"):
        load_corpus(write_benchmark(tmp_path / "Bad"), prep=Preprocessing(token_rules=True))
    # --stopwords cannot reach bags of words already counted: said, not silently ignored.
    with pytest.raises(XtmError, match="--stopwords applies to JSONL documents"):
        load_corpus(write_benchmark(tmp_path / "Stop"), prep=Preprocessing(extra_stopwords=("apple",)))


@pytest.mark.parametrize("missing", ["vocab_cn", "train_bow_matrix_en.npz", "test_bow_matrix_cn.npz"])
def test_benchmark_missing_file_is_named(tmp_path: Path, missing: str) -> None:
    d = write_benchmark(tmp_path / "Tiny", skip=(missing,))
    with pytest.raises(XtmError, match="required file is missing") as e:
        load_corpus(d)
    assert e.value.path == str(d / missing)


def test_benchmark_inconsistent_files(tmp_path: Path) -> None:
    d = write_benchmark(tmp_path / "Tiny")
    (d / "vocab_en").write_text("apple\nbanana\n", encoding="utf-8")
    with pytest.raises(XtmError, match="3 columns but the vocabulary has 2") as e:
        load_corpus(d)
    assert e.value.path == str(d / "train_bow_matrix_en.npz")
    (d / "vocab_en").write_text("apple\nbanana\ncherry\n", encoding="utf-8")
    (d / "test_labels_en.txt").write_text("0\nbad\n", encoding="utf-8")
    with pytest.raises(XtmError, match="not an integer") as e:
        load_corpus(d)
    assert (e.value.path, e.value.line) == (str(d / "test_labels_en.txt"), 2)
    with pytest.raises(XtmError, match="not in this benchmark directory"):
        load_corpus(d, langs=["en", "ja"])


def _coo(rows: int, data: list[Any], dtype: Any = np.float64) -> sp.coo_matrix:
    return sp.coo_matrix((np.array(data, dtype=dtype), ([0] * len(data), list(range(len(data))))), shape=(rows, 3))


@pytest.mark.parametrize(("matrix", "needle"), [
    (_coo(10**15, [1.0]), "declares 1,000,000,000,000,000 rows"),  # converting it asked for 7 PiB
    (_coo(8, [1.0, -2.0]), "finite and non-negative"),
    (_coo(8, [1.0, np.nan]), "finite and non-negative"),
    (_coo(8, [1.0, 1e300]), "finite and non-negative"),  # infinite as float32
    (_coo(8, [1 + 2j], np.complex128), "must hold real numbers"),
])
def test_benchmark_matrices_hold_counts(tmp_path: Path, matrix: sp.coo_matrix, needle: str) -> None:
    d = write_benchmark(tmp_path / "Tiny")
    sp.save_npz(d / "train_bow_matrix_en.npz", matrix)
    with pytest.raises(XtmError, match=needle) as e:
        load_corpus(d)
    assert e.value.path == str(d / "train_bow_matrix_en.npz")


@pytest.mark.parametrize(("name", "damage"), [
    ("train_bow_matrix_en.npz", "column past the vocabulary"),
    ("train_bow_matrix_en.npz", "negative column"),
    ("test_bow_matrix_cn.npz", "decreasing indptr"),
    ("word2vec_en.npz", "column past the vectors"),
])
def test_benchmark_sparse_index_arrays_are_checked(tmp_path: Path, name: str, damage: str) -> None:
    """load_npz checks the index arrays' lengths, not their values: a column index past the vocabulary segfaulted
    training, a negative one corrupted the heap, a decreasing indptr was a RuntimeError traceback."""
    d = write_benchmark(tmp_path / "Tiny")
    m = sp.load_npz(d / name).tocsr()
    indptr, indices = m.indptr.copy(), m.indices.copy()
    if damage == "negative column":
        indices[1] = -3
    elif damage == "decreasing indptr":
        indptr[1] = indptr[-1]
    else:
        indices[1] = 10**6
    np.savez(d / name, format=np.array(b"csr"), shape=np.array(m.shape), indptr=indptr, indices=indices, data=m.data)
    with pytest.raises(XtmError, match="damaged sparse matrix: .* do not describe a") as e:  # (scipy's words between)
        load_corpus(d)
    assert e.value.path == str(d / name)


@pytest.mark.parametrize(("vectors", "needle"), [
    (np.full((3, 4), "abc"), "word vectors must be real numbers, the array holds <U3"),  # was a ValueError traceback
    (np.full((3, 4), np.nan), "word vectors must be finite"),  # was trained on, silently
    (np.full((3, 4), 1e300), "word vectors must be finite"),  # infinite as float32
    (np.ones((3, 4), dtype=np.complex64) * 1j, "word vectors must be real numbers, the array holds complex64"),
])
def test_benchmark_dense_word_vectors_hold_finite_real_numbers(tmp_path: Path, vectors: np.ndarray,
                                                               needle: str) -> None:
    d = write_benchmark(tmp_path / "Tiny")
    np.savez(d / "word2vec_en.npz", wv=vectors)
    with pytest.raises(XtmError, match=needle) as e:
        load_corpus(d)
    assert e.value.path == str(d / "word2vec_en.npz")
    np.savez(d / "word2vec_en.npz", wv=np.arange(12).reshape(3, 4))  # integers are real numbers
    assert load_corpus(d).lang("en").word_vectors.dtype == np.float32


def test_a_byte_order_mark_is_not_part_of_a_benchmark_files_first_line(tmp_path: Path) -> None:
    """A Windows editor's mark became part of the first word ('\\ufeffapple': its dictionary link lost) and of the
    first label ("label '\\ufeff0' is not an integer")."""
    d = write_benchmark(tmp_path / "Tiny")
    labels = load_corpus(d).lang("en").train_labels
    for name in ("vocab_en", "train_labels_en.txt"):
        (d / name).write_bytes(b"\xef\xbb\xbf" + (d / name).read_bytes())
    (d / "train_texts_en.txt").write_bytes(b"\xef\xbb\xbf" + b"apple banana\n" * 8)
    dictionary = tmp_path / "dict.tsv"
    dictionary.write_text("apple\t苹果\nbanana\t香蕉\n", encoding="utf-8")
    c = load_corpus(d, dict_path=dictionary)
    en = c.lang("en")
    assert en.vocab[0] == "apple" and c.link_matrix("en", "zh")[0].nnz == 1
    assert en.train_labels.tolist() == labels.tolist() and en.train_texts[0] == "apple banana"


@pytest.mark.parametrize("word", ["new york", "a\u2028b", "c\x85d", "tab\tbed"])
def test_vocabulary_words_are_single_tokens(tmp_path: Path, word: str) -> None:
    """A word with whitespace or a line separator broke the run's topic files (one topic a line, words
    separated by spaces): the report and the labels were not written."""
    d = write_benchmark(tmp_path / "Tiny")
    (d / "vocab_en").write_text(f"apple\n{word}\ncherry\n", encoding="utf-8")
    with pytest.raises(XtmError, match="contains whitespace") as e:
        load_corpus(d)
    assert (e.value.path, e.value.line) == (str(d / "vocab_en"), 2)


@pytest.mark.benchmark_data
def test_ecnews_benchmark() -> None:
    d = need("ECNews")
    t = time.perf_counter()
    c = load_corpus(d)
    elapsed = time.perf_counter() - t
    assert elapsed < 5.0
    assert c.name == "ECNews" and c.langs == ["en", "zh"]
    en, zh = c.lang("en"), c.lang("zh")
    assert en.train_bow.shape == (37_480, 5_000) and zh.train_bow.shape == (40_000, 5_000)
    assert en.test_bow.shape == (9_370, 5_000) and zh.test_bow.shape == (10_000, 5_000)
    for lc in (en, zh):
        assert isinstance(lc.train_bow, sp.csr_matrix) and lc.train_bow.dtype == np.float32
        assert lc.word_vectors.shape[0] == 5_000 and lc.word_vectors.dtype == np.float32
    assert set(np.unique(en.train_labels)) == set(range(1, 7))
    assert len(zh.test_labels) == 10_000 and c.has_labels
    assert en.vocab[:3] == ["aaron", "abbey", "abc"] and zh.tokenizer.kind == "jieba"
    assert c.info["file_suffixes"] == {"en": "en", "zh": "cn"}
    assert len(zh.train_texts) == 40_000 and len(en.test_texts) == 9_370
    assert zh.train_texts[0] == "一起 拍戏 觉得 演 喜剧 一起 喜剧"
    assert load_corpus(d, langs=["cn", "en"]).langs == ["zh", "en"]


@pytest.mark.benchmark_data
def test_ecnews_with_dictionary() -> None:
    c = load_corpus(need("ECNews"), dict_path=need("dict", "ch_en_dict.dat"))
    stats = c.info["links"]["en-zh"]
    assert stats["stemmed"] and stats["links"] > 20_000
    m = c.link_matrix("en", "zh")
    assert m.shape == (5_000, 5_000) and m.nnz == stats["links"]


@pytest.mark.benchmark_data
def test_benchmark_missing_file_on_real_data(tmp_path: Path) -> None:
    src = need("Rakuten_Amazon")
    d = tmp_path / "Rakuten_Amazon"
    d.mkdir()
    for f in src.iterdir():
        if f.name != "test_bow_matrix_ja.npz":
            (d / f.name).symlink_to(f)
    with pytest.raises(XtmError) as e:
        load_corpus(d)
    assert e.value.path == str(d / "test_bow_matrix_ja.npz")
    assert str(d / "test_bow_matrix_ja.npz") in str(e.value)


@pytest.mark.benchmark_data
def test_rakuten_with_muse_dictionary() -> None:
    c = load_corpus(need("Rakuten_Amazon"), dict_path=need("dict", "MUSE", "ja-en.txt"))
    assert c.langs == ["en", "ja"] and c.lang("ja").tokenizer.kind == "janome"
    assert c.info["links"]["en-ja"]["links"] > 1_000
    assert c.lang("ja").train_bow.shape == (20_000, 5_000)


@pytest.mark.parametrize(("content", "line", "fragment"), [
    (b"0\n99999999999999999999\n", 2, "'99999999999999999999' is out of range for a 64-bit integer"),
    (b"0\n\xff\n", 2, "labels are not valid UTF-8 text (byte 0xff)"),
    (b"+1\nx\n", 2, "label 'x' is not an integer"),
    (b"\n\n0\r\n  x \n", 4, "label 'x' is not an integer"),  # the line, not its place among the labels (2)
    # the right count over fewer lines: every label after line 2 shifted onto the next document, silently
    (b"0\n1 0\n", 2, "more than one label on a line"),
])
def test_benchmark_labels_that_are_not_int64_are_one_error(tmp_path: Path, content: bytes, line: int,
                                                           fragment: str) -> None:
    d = write_benchmark(tmp_path / "Tiny")
    (d / "test_labels_en.txt").write_bytes(content)
    with pytest.raises(XtmError) as e:
        load_corpus(d)
    assert (e.value.path, e.value.line) == (str(d / "test_labels_en.txt"), line)
    assert fragment in str(e.value)


def test_a_label_file_missing_beside_the_others_is_a_warning(tmp_path: Path) -> None:
    """JSONL input warns when some documents lack labels; a benchmark's label file missing or misnamed for one
    language left classification out without a word."""
    d = write_benchmark(tmp_path / "Tiny")
    (d / "train_labels_cn.txt").write_text("0\n1\n" * 3, encoding="utf-8")
    (d / "test_labels_cn.txt").write_text("0\n1\n0\n", encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_corpus(d).has_labels
    (d / "test_labels_en.txt").rename(d / "test_label_en.txt")
    with pytest.warns(UserWarning) as caught:
        assert not load_corpus(d).has_labels
    assert [str(w.message) for w in caught] == [
        f"{d}: no test_labels_en.txt beside the other label files: classification needs every language's train and "
        "test labels and is left out"]
    for f in d.glob("*label*"):  # no label file at all: a corpus without labels, nothing to say
        f.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not load_corpus(d).has_labels


# --------------------------------------------------------------------------- shared by both loaders


def test_max_df_must_be_a_number(tmp_path: Path) -> None:
    """A string passed float() and was then repeated, not compared, by the frequency filter: max_df
    was silently ignored."""
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 12) + make_docs("zh", 12))
    for build in (lambda: load_corpus(f, max_df="0.5", progress=False),
                  lambda: build_shards(f, tmp_path / "s", max_df="0.5", progress=False)):
        with pytest.raises(XtmError, match=r"max_df must be a share of documents in \(0, 1\], got '0.5'"):
            build()


def test_warnings_name_the_callers_line(tmp_path: Path) -> None:
    """Both loaders' warnings point at the line that called them, not somewhere inside xtm."""
    rows = [{"lang": "en", "text": "apples oranges"}, {"lang": "en", "text": "pears plums"},
            {"lang": "zh", "text": "苹果 橙子"}, {"lang": "zh", "text": "梨 李子"},
            {"lang": "en", "text": "the and of"}]
    f = write_jsonl(tmp_path / "c.jsonl", rows)
    for build in (lambda: load_corpus(f, progress=False), lambda: build_shards(f, tmp_path / "s", progress=False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build()
        assert len(caught) == 3  # two relaxed vocabularies, one dropped document
        assert {w.filename for w in caught} == {__file__}


# --------------------------------------------------------------------------- out of core


def spill_files_open(out: Path) -> list[str]:
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue  # the fd listing's own descriptor, gone already
    return [x for x in links if x.startswith(str(out))]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_bad_line_out_of_core_leaves_no_spill_file_open(tmp_path: Path) -> None:
    """The spill's files were closed only when the error's traceback was freed (5 descriptors per
    language, on deleted files, for as long as a caller kept the exception)."""
    f = write_jsonl(tmp_path / "c.jsonl", [*make_docs("en", 12), *make_docs("zh", 12), '{"lang": "en", "text": 7}'])
    out = tmp_path / "shards"
    with pytest.raises(XtmError, match="must be a string") as e:
        build_shards(f, out, progress=False)
    assert e.value.line == 25
    assert spill_files_open(out) == []
    assert not (out / ".spill").exists() and not (out / "index.json").exists()


@pytest.fixture
def data_log() -> Iterator[list[logging.LogRecord]]:
    """The records the data modules log (the CLIs print them as `xtm-train: ...` lines)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("xtm.trainer.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_reused_shards_are_logged(tmp_path: Path, data_log: list[logging.LogRecord]) -> None:
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 12) + make_docs("zh", 12))
    out = tmp_path / "s"
    open_or_build_shards(f, out, progress=False)
    assert data_log == []
    open_or_build_shards(f, out, progress=False)
    assert [(r.levelno, r.getMessage()) for r in data_log] == [
        (logging.INFO, f"reusing the shards in {out} (same input files and settings)")]


def damage(out: Path, how: str) -> None:
    if how.startswith("index="):
        (out / "index.json").write_text(how[len("index="):], encoding="utf-8")
    elif how == "no word counts":
        (out / "word_counts_en.npy").unlink()
    elif how == "short word counts":
        np.save(out / "word_counts_en.npy", np.zeros(3))
    elif how == "index without name":
        index = json.loads((out / "index.json").read_text(encoding="utf-8"))
        del index["name"]
        (out / "index.json").write_text(json.dumps(index), encoding="utf-8")
    elif how == "an older shard format":  # built by an earlier xtm: not opened, rebuilt
        index = json.loads((out / "index.json").read_text(encoding="utf-8"))
        index["format"] -= 1
        (out / "index.json").write_text(json.dumps(index), encoding="utf-8")


@pytest.mark.parametrize("how", ["index=[]", "index=null", 'index="x"', "no word counts", "short word counts",
                                 "index without name", "an older shard format"])
def test_damaged_shards_are_one_error_and_rebuilt_when_reused(tmp_path: Path, how: str,
                                                             data_log: list[logging.LogRecord]) -> None:
    """A shard directory of ours with a damaged index or file: opening it is one XtmError (was an
    AttributeError, FileNotFoundError or KeyError traceback), and reusing it rebuilds it."""
    f = write_jsonl(tmp_path / "c.jsonl", make_docs("en", 12) + make_docs("zh", 12))
    out = tmp_path / "s"
    good = ShardedCorpus(build_shards(f, out, progress=False)).eval_corpus()
    damage(out, how)
    with pytest.raises(XtmError, match="shard|rebuild"):
        ShardedCorpus(out)
    again = open_or_build_shards(f, out, progress=False).eval_corpus()
    assert (again.lang("en").train_bow != good.lang("en").train_bow).nnz == 0
    assert np.array_equal(again.lang("en").word_counts(), good.lang("en").word_counts())
    if how.startswith("index=") or how == "an older shard format":
        assert data_log == []  # no index of this format to match: rebuilt without a word
    else:
        assert [r.levelno for r in data_log] == [logging.WARNING]
        assert "damaged" in data_log[0].getMessage() and "rebuilding" in data_log[0].getMessage()


def test_benchmark_label_and_text_files_with_cr_or_crlf_line_ends_read_as_before(tmp_path: Path) -> None:
    """Read as Python's text mode reads them (they were, until a reader of their bytes): a CR-only label file was one
    line ("more than one label on a line"), a CRLF text file's texts kept a "\\r" each."""
    d = write_benchmark(tmp_path / "Tiny")
    (d / "test_labels_en.txt").write_bytes(b"1\r0\r")
    (d / "test_texts_en.txt").write_bytes(b"the stock market\r\nla bourse\r\n")
    with pytest.warns(UserWarning, match="no train_labels_cn.txt"):
        en = load_corpus(d).lang("en")
    assert en.test_labels.tolist() == [1, 0] and en.test_texts == ["the stock market", "la bourse"]

"""Korean through Kiwi (tokenizer kind "kiwi", token rules 3), with the real kiwipiepy and its model."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from xtm.config import TOKEN_RULES
from xtm.corpus import TokenizerSpec
from xtm.errors import XtmError
from xtm.runtime import korean
from xtm.runtime.tokenize import default_tokenizer_spec, make_tokenizer
from xtm.trainer.data.stopwords import stopwords

KO = TokenizerSpec("ko", "kiwi")


def test_korean_is_cut_by_kiwi_from_token_rules_3_and_as_it_was_before() -> None:
    assert TOKEN_RULES >= 3 and default_tokenizer_spec("ko") == KO and default_tokenizer_spec("kor").kind == "kiwi"
    # Runs made under older rules keep their tokens (xtm.config.TOKEN_RULES).
    assert default_tokenizer_spec("ko", 2).kind == "words" and default_tokenizer_spec("ko", 1).kind == "regex"
    assert default_tokenizer_spec("en", 3).kind == "words" and default_tokenizer_spec("ja", 3).kind == "janome"


def test_particles_and_endings_go_and_predicates_take_their_dictionary_form() -> None:
    tok = make_tokenizer(KO)
    # The words kind kept each noun under its particles: 학교에서 and 학교는 were two words, neither 학교.
    assert make_tokenizer(TokenizerSpec("ko", "words"))("학교에서 친구를 만났다. 학교는 크다.") == [
        "학교에서", "친구를", "만났다", "학교는", "크다"]
    assert tok("학교에서 친구를 만났다. 학교는 크다.") == ["학교", "친구", "만나다", "학교", "크다"]
    assert tok("삼성전자는 2024년에 새로운 스마트폰을 출시했습니다.") == ["삼성전자", "새롭다", "스마트폰", "출시"]
    assert tok("가격은 1,000원이고 평점은 3.5점") == ["가격", "평점"]  # numbers go (Kiwi's "1,000" is one token)
    assert tok("깨끗한 방") == ["깨끗하다", "방"]  # a root with the derivational 하
    assert tok("Apple의 iPhone은 비싸다") == ["apple", "iphone", "비싸다"]
    assert make_tokenizer(TokenizerSpec("ko", "kiwi", lowercase=False))("Apple의 iPhone") == ["Apple", "iPhone"]
    # Hashtags keep their word; URLs, mentions, laughter and punctuation go.
    assert tok("@user #맛집 https://example.com ㅋㅋㅋ!!") == ["맛집"]
    assert tok("") == [] and tok("   ") == []
    assert make_tokenizer(TokenizerSpec("ko", "kiwi", min_token_length=2))("방 학교") == ["학교"]


def test_kiwi_reads_past_a_nul_and_a_lone_surrogate() -> None:
    # Kiwi reads UTF-16: a lone surrogate raised UnicodeDecodeError and lost the document.
    tok = make_tokenizer(KO)
    assert tok("학교\x00친구") == ["학교", "친구"]
    assert tok("학교\ud800친구") == ["학교", "친구"]


def test_a_long_text_is_cut_at_whitespace_and_no_word_is_split() -> None:
    # Kiwi's time grew faster than the text (43 s for 400,000 characters); pieces make it linear.
    sentence = "학교에서 친구를 만났다. "
    text = sentence * 10_000  # 140,000 characters
    pieces = korean._pieces(text)
    assert len(pieces) > 1 and "".join(pieces) == text
    assert all(len(p) <= korean._PIECE for p in pieces)
    assert all(p[-1] != " " and q[0] == " " for p, q in zip(pieces, pieces[1:], strict=False))
    assert make_tokenizer(KO)(text) == ["학교", "친구", "만나다"] * 10_000
    unbroken = "가" * (3 * korean._PIECE + 5)  # no whitespace: cut at the limit
    assert [len(p) for p in korean._pieces(unbroken)] == [korean._PIECE] * 3 + [5]


def test_kiwi_is_thread_safe() -> None:
    tok = make_tokenizer(KO)
    texts = ["학교에서 친구를 만났다", "삼성전자는 새로운 스마트폰을 출시했습니다", "깨끗한 방에서 음식을 먹었다"] * 20
    expected = [tok(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(tok, texts)) == expected


def test_korean_stopwords_are_cut_by_the_rules_tokenizer() -> None:
    # stopwords-iso's Korean entries as Kiwi reads them, in the dictionary form its tokens take: 하다 ("to do"),
    # 되다 ("to become"); under rules 2 the list was cut by the words kind (its inflected forms, no 하다).
    assert {"하다", "되다"} <= stopwords("ko", 3) and "하다" not in stopwords("ko", 2)


def test_missing_kiwi_says_which_extra(tmp_path: Path) -> None:
    code = ("import sys\nsys.modules['kiwipiepy_model'] = None  # not installed\n"
            "from xtm.corpus import TokenizerSpec\nfrom xtm.errors import XtmError\n"
            "from xtm.runtime.tokenize import make_tokenizer, missing_tokenizer\n"
            "print('load:', missing_tokenizer('kiwi'))\n"
            "try:\n    make_tokenizer(TokenizerSpec('ko', 'kiwi'))('학교')\n"
            "except XtmError as e:\n    print('first use:', e)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in p.stderr
    for line in lines:
        assert 'Korean text is tokenized with kiwipiepy, which is not installed: pip install "xtm[ko]"' in line


def _korean_english(tmp_path: Path) -> tuple[list[dict], Path]:
    topics = {"ko": [["축구", "선수", "경기"], ["시장", "은행", "가격"], ["전화", "로봇", "반도체"]],
              "en": [["football", "player", "match"], ["market", "bank", "price"], ["phone", "robot", "chip"]]}
    particles = ["에서", "도", "만"]  # they follow any noun (는/은, 를/을 depend on its last sound)
    rows = []
    for i in range(90):
        t, a, b = i % 3, (i // 3) % 3, (i // 3 + 1) % 3
        words = topics["ko"][t]
        text = f"{words[a]}{particles[a]} {words[b]}{particles[b]} 좋았다"
        rows.append({"lang": "ko", "label": str(t), "text": text})
        rows.append({"lang": "en", "label": str(t), "text": f"{topics['en'][t][a]} {topics['en'][t][b]}"})
    dct = tmp_path / "dict.tsv"
    dct.write_text("축구\tfootball\n시장\tmarket\n전화\tphone\n은행\tbank\n", encoding="utf-8")
    return rows, dct


def test_a_korean_english_run_trains_exports_and_serves_korean_words(tmp_path: Path) -> None:
    import xtm

    docs, dct = _korean_english(tmp_path)
    run = xtm.train(docs, dictionary=dct, model="nmtm", num_topics=3, epochs=2, out=tmp_path / "run", min_df=1,
                    contextual=False, seed=0)
    vocab = (run.run_dir / "vocab_ko.txt").read_text(encoding="utf-8").split()
    assert {"축구", "선수", "경기", "시장", "은행", "가격"} <= set(vocab)
    assert not {"축구에서", "축구도", "좋았다", "좋다"} & set(vocab)  # 좋다, in every document, goes by max_df
    cfg = json.loads((run.run_dir / "config.json").read_text(encoding="utf-8"))
    assert cfg["tokenizers"]["ko"]["kind"] == "kiwi"
    assert run.metrics["corpus"]["preprocessing"]["token_rules"] == TOKEN_RULES
    model = run.export(tmp_path / "bundle")
    out = model.infer(["시장에서 은행은 가격을 봤다", "market bank price"], langs=["ko", "en"], route="bow")
    assert out.routes == ["bow", "bow"] and np.allclose(out.theta.sum(axis=1), 1, atol=1e-5)
    assert model.bag_of_words(["시장에서 은행은 가격을"], "ko").sum() == 3  # every word found


def test_a_korean_run_made_under_rules_2_resumes_with_its_own_words(tmp_path: Path) -> None:
    # A run trained before Kiwi (rules 2: kind words) keeps its vocabulary of word+particle forms on resume, and
    # its bundle says words: Kiwi's words would find none of them. (Under rules 2 the dictionary's 축구 matched
    # nothing: this run's dictionary lists the particle forms.)
    from xtm.config import DataConfig, TrainConfig
    from xtm.run_dir import run_token_rules
    from xtm.trainer.run import run_training

    rows, _ = _korean_english(tmp_path)
    dct = tmp_path / "dict_rules2.tsv"
    dct.write_text("축구에서\tfootball\n시장에서\tmarket\n전화에서\tphone\n", encoding="utf-8")
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg, old = TrainConfig(model="nmtm", num_topics=3, epochs=1, progress=False, seed=0), tmp_path / "old"
    run_training(DataConfig(path=str(docs), dict_path=str(dct), min_df=1, token_rules=2), cfg, old)
    vocab = (old / "vocab_ko.txt").read_text(encoding="utf-8")
    assert "축구에서" in vocab.split() and run_token_rules(old) == 2
    m = run_training(DataConfig(path=str(docs), dict_path=str(dct), min_df=1), TrainConfig(
        model="nmtm", num_topics=3, epochs=2, progress=False, seed=0), old, resume=True)
    assert (old / "vocab_ko.txt").read_text(encoding="utf-8") == vocab
    assert m["corpus"]["preprocessing"]["token_rules"] == 2
    assert json.loads((old / "config.json").read_text())["tokenizers"]["ko"]["kind"] == "words"


def test_a_users_korean_stopwords_are_words_as_kiwi_writes_them(tmp_path: Path) -> None:
    # A word Kiwi rewrites (경기는 -> 경기, 자기집 "one's own house" -> 집 "house") is another word: not used, and
    # said; the word as the topics show it (선수) is.
    import warnings

    import xtm

    docs, dct = _korean_english(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = xtm.train(docs, dictionary=dct, model="nmtm", num_topics=3, epochs=1, out=tmp_path / "run", min_df=1,
                        contextual=False, seed=0, extra_stopwords=["선수", "match", "경기는"])
    ko = (run.run_dir / "vocab_ko.txt").read_text(encoding="utf-8").split()
    assert "선수" not in ko and "경기" in ko
    assert "match" not in (run.run_dir / "vocab_en.txt").read_text(encoding="utf-8").split()
    # each word as each language's tokenizer writes it: ko keeps 선수 and match (Latin), en all three as written
    assert run.metrics["corpus"]["preprocessing"]["extra_stopwords"] == {"words": 3, "used": {"ko": 2, "en": 3}}
    said = [str(w.message) for w in caught if "--stopwords" in str(w.message)]
    assert said == ["--stopwords: 1 word(s) are not 'ko' words as its tokenizer writes them, and are not used for it "
                    "(it reads 경기는 as 경기): write them as the vocabulary and topics show them"]
    from xtm.trainer.data.stopwords import extra_stopwords

    assert extra_stopwords("ko", 3, ("자기집", "비교적", "배송")) == {"배송"}
    # A compound Kiwi splits is not used either, and is said too (it was left out silently).
    from xtm.trainer.data.stopwords import unused_stopwords

    assert unused_stopwords("ko", 3, ("고객센터", "배송")) == (("고객센터", "고객 센터"),)
    assert unused_stopwords("en", 3, ("e-mail", "product")) == (("e-mail", "e mail"),)


def test_hostile_korean_text_gives_one_word_tokens_with_letters() -> None:
    tok = make_tokenizer(KO)
    # Kiwi's multi-word titles were one token with spaces, which no vocabulary file holds (training failed).
    assert tok("해리 포터와 마법사의 돌을 읽었다") == ["해리", "포터", "마법사", "돌", "읽다"]
    # A zero-width space was a noun of its own; joiners and the BOM separate words too.
    assert tok("학교에서\u200b공부했다") == ["학교", "공부"] and tok("\ufeff학교\u2060친구") == ["학교", "친구"]
    assert tok("학교\u115f\u1160 친구") == ["학교", "친구"]  # Hangul fillers were an invisible word
    # A hashtag's words are analysed like the text's (the hashtag kept its particle: 맛집에서).
    assert tok("#맛집에서 좋아요") == ["맛집", "좋다"]
    assert all(" " not in w and "\xa0" not in w for w in tok("#태그\xa0다음 위대한 개츠비 반지 원정대"))


def test_a_dictionarys_korean_words_match_as_kiwi_writes_them(tmp_path: Path) -> None:
    # The vocabulary holds 선생 and 사람 (Kiwi drops the suffixes 님 and 들): the dictionary's 선생님 "teacher" and
    # 사람들 "people" matched nothing. Words that match as written still do (학교).
    from xtm.trainer.data.loading import load_corpus

    rows = []
    for i in range(30):
        rows.append({"lang": "ko", "text": ["선생님이 학교에서 가르쳤다", "사람들이 학교에 모였다"][i % 2]})
        rows.append({"lang": "en", "text": ["the teacher taught at school", "people gathered at school"][i % 2]})
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    dct = tmp_path / "dict.tsv"
    dct.write_text("선생님\tteacher\n사람들\tpeople\n학교\tschool\n없는말\tnothing\n", encoding="utf-8")
    corpus = load_corpus(docs, dict_path=dct, min_df=1, max_df=1.0, progress=False)
    [stats] = corpus.info["links"].values()
    assert stats["pairs_matched"] == 3 and stats["words_covered"]["ko"] == 3
    assert stats["unmatched_sample"] == ["없는말\tnothing"]  # what matched nothing, as examples
    ko, en = corpus.lang("ko"), corpus.lang("en")
    [((a, _), link)] = corpus.links.items()
    pair = (ko.vocab.index("선생"), en.vocab.index("teacher"))
    assert link[pair if a == "ko" else pair[::-1]] == 1


def _cosmetics(tmp_path: Path) -> tuple[list[dict], Path]:
    """Korean and English reviews whose Korean nouns Kiwi splits (선크림 'sunscreen' -> 선 + 크림, 세럼 -> 세 + 럼)."""
    ko = [["선크림", "자외선", "피부"], ["세럼", "보습", "수분"], ["배송", "포장", "택배"]]
    en = [["sunscreen", "uv", "skin"], ["serum", "moisture", "hydration"], ["delivery", "package", "courier"]]
    rows = []
    for i in range(120):
        t, a, b = i % 3, (i // 3) % 3, (i // 3 + 1) % 3
        rows.append({"lang": "ko", "label": str(t), "text": f"{ko[t][a]}이 {ko[t][b]}도 좋았다"})
        rows.append({"lang": "en", "label": str(t), "text": f"{en[t][a]} {en[t][b]}"})
    dct = tmp_path / "dict.tsv"
    dct.write_text("선크림\tsunscreen\n세럼\tserum\n배송\tdelivery\n", encoding="utf-8")
    return rows, dct


def test_user_words_are_kept_whole_by_kiwi_and_by_no_other_tokenizer() -> None:
    plain = make_tokenizer(default_tokenizer_spec("ko"))
    assert plain("선크림 세럼이 좋아요") == ["선", "크림", "럼", "좋다"]  # what the option is for
    spec = default_tokenizer_spec("ko", TOKEN_RULES, ("선크림", "세럼", "skincare", "선크림"))
    assert spec.user_words == ("선크림", "세럼")  # Hangul words, once; Kiwi is given nothing else
    assert make_tokenizer(spec)("선크림 세럼이 좋아요") == ["선크림", "세럼", "좋다"]
    assert plain("선크림") == ["선", "크림"]  # another list's analyser is not changed by this one's words
    assert default_tokenizer_spec("ko", 2, ("선크림",)).user_words == ()  # rules 2 cut Korean without Kiwi
    assert default_tokenizer_spec("zh", TOKEN_RULES, ("防晒霜",)).user_words == ()
    assert TokenizerSpec.from_dict(spec.to_dict()) == spec
    assert "user_words" not in default_tokenizer_spec("ko").to_dict()  # specs without words read as before
    # Latin letters are lowered after Kiwi reads the text: a listed XTM크림 is whole in either case
    mixed = make_tokenizer(default_tokenizer_spec("ko", TOKEN_RULES, ("XTM크림",)))
    assert mixed("XTM크림 좋아요 xtm크림") == ["xtm크림", "좋다", "xtm크림"]


def test_a_run_with_user_words_trains_serves_and_resumes_with_them(tmp_path: Path) -> None:
    import warnings

    import xtm
    from xtm.runtime.bundle import SCHEMA_VERSION

    docs, dct = _cosmetics(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = xtm.train(docs, dictionary=dct, model="nmtm", num_topics=3, epochs=1, out=tmp_path / "run", min_df=1,
                        contextual=False, seed=0, user_words=["선크림", "세럼", "skincare"],
                        extra_stopwords=["선크림"])
    ko = (run.run_dir / "vocab_ko.txt").read_text(encoding="utf-8").split()
    assert "세럼" in ko and not {"선", "크림", "럼", "선크림"} & set(ko)  # 선크림: a stopword, as Kiwi now reads it
    said = [str(w.message) for w in caught if "--user-words" in str(w.message)]
    assert len(said) == 1 and "1 word(s) are kept whole by no tokenizer" in said[0] and "(skincare)" in said[0]
    prep = run.metrics["corpus"]["preprocessing"]
    assert prep["user_words"] == {"words": 3, "used": {"ko": 2, "en": 0}}
    assert prep["extra_stopwords"]["used"]["ko"] == 1
    model = run.export(tmp_path / "bundle")
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["schema_version"] == SCHEMA_VERSION == 3  # a runtime that would cut 세럼 apart refuses it
    assert manifest["encoders"]["ko"]["tokenizer"]["user_words"] == ["선크림", "세럼"]
    assert manifest["encoders"]["en"]["tokenizer"].get("user_words") is None
    assert model.bag_of_words(["세럼이 좋아요"], "ko").sum() == 1  # found whole at inference too
    # --resume from the command line takes the recorded words; other words are refused, naming the option.
    base = [sys.executable, "-m", "xtm.cli.train", "--data", str(run.data_path), "--dict", str(dct), "--out",
            str(run.run_dir), "--resume", "--no-contextual"]
    again = subprocess.run([*base, "--epochs", "2"], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "--user-words (3 words)" in again.stderr, again.stderr
    other = tmp_path / "other.txt"
    other.write_text("자외선\n", encoding="utf-8")
    changed = subprocess.run([*base, "--epochs", "3", "--user-words", str(other)], capture_output=True, text=True,
                             timeout=300)
    assert changed.returncode == 2 and "--user-words: 3 words then, 1 words now" in changed.stderr, changed.stderr


def test_out_of_core_shards_record_the_user_words_and_evaluate_with_them(tmp_path: Path) -> None:
    from xtm.config import PREPROCESSING
    from xtm.trainer.data.sharding import ShardedCorpus, build_shards

    rows, _ = _cosmetics(tmp_path)
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    from dataclasses import replace

    prep = replace(PREPROCESSING, min_df=1, user_words=("세럼",))
    build_shards(docs, tmp_path / "s", prep=prep, shard_size=50, progress=False)
    index = json.loads((tmp_path / "s" / "index.json").read_text(encoding="utf-8"))
    assert index["settings"]["user_words"] == ["세럼"]
    corpus = ShardedCorpus(tmp_path / "s").eval_corpus(1000)
    assert corpus.lang("ko").tokenizer.user_words == ("세럼",) and "세럼" in corpus.lang("ko").vocab


def test_user_words_training_takes_are_those_a_bundle_takes_and_a_resume_keeps_its_own(tmp_path: Path) -> None:
    """A BOM inside a concatenated list, a NUL or a 101-letter word trained and then no export could write the run
    (the manifest check refused them); and a resume given one more word that no document has resumed silently and
    recorded the new list for the bundle."""
    import pytest

    import xtm
    from xtm.errors import XtmError

    docs, dct = _cosmetics(tmp_path)
    for bad in ("\ufeff세럼", "선\x00크림", "가" * 101):
        with pytest.raises(XtmError, match="user_words must be single words of at most 100 printable characters"):
            xtm.train(docs, dictionary=dct, model="nmtm", num_topics=3, epochs=1, out=tmp_path / "bad", min_df=1,
                      contextual=False, user_words=["선크림", bad])
    run = xtm.train(docs, dictionary=dct, model="nmtm", num_topics=3, epochs=1, out=tmp_path / "run", min_df=1,
                    contextual=False, seed=0, user_words=["선크림"])
    with pytest.raises(XtmError, match=r"--resume: --user-words: 1 words then, 2 words now"):
        xtm.train(docs, dictionary=dct, out=run.run_dir, epochs=2, resume=True, user_words=["선크림", "수분크림"])
    assert json.loads((run.run_dir / "config.json").read_text(encoding="utf-8"))["data"]["user_words"] == ["선크림"]


# -- analysers in a long-running service (review of 2026-12-07) ----------------------------------------------------


def _no_kiwi(cause: BaseException | None) -> XtmError:
    return XtmError(f"kiwipiepy is not installed ({cause})")


def test_an_analyser_goes_with_the_last_tokenizer_that_uses_it() -> None:
    """Each analyser stayed for good: a service that reloaded a bundle with another list of user words kept one more,
    250-360 MB, each time."""
    from kiwipiepy import Kiwi

    def kiwis() -> int:
        gc.collect()
        return sum(type(o) is Kiwi for o in gc.get_objects())

    spec = default_tokenizer_spec("ko", TOKEN_RULES, ("보습크림",))
    korean._recent = None  # (another test's analyser, kept as the last built)
    before = kiwis()
    first, second = make_tokenizer(spec), make_tokenizer(spec)
    analyser = weakref.ref(korean._analysers[spec.user_words])
    assert kiwis() == before + 1  # one analyser for a list of words, whichever tokenizers use it
    del first
    gc.collect()
    assert analyser() is not None and second("보습크림이 좋아요") == ["보습크림", "좋다"]
    del second
    gc.collect()
    # The analyser built last stays (training's readers make and drop a tokenizer each, in turn: one build, not
    # three); one for other words (a reload) takes its place, and then it goes.
    assert analyser() is not None and korean._recent is analyser()
    other = make_tokenizer(default_tokenizer_spec("ko", TOKEN_RULES, ("선크림",)))
    gc.collect()
    assert analyser() is None and spec.user_words not in korean._analysers and kiwis() <= before + 1
    assert other("선크림") == ["선크림"]


def test_building_an_analyser_holds_up_no_other_analysers_text(monkeypatch) -> None:
    """An analyser was built (about a second) under the lock every Korean tokenize took: a bundle loaded with a new
    list of words held up the Korean text of every other bundle."""
    tok = make_tokenizer(KO)
    want = tok("학교에서 친구를 만났다")
    building, release = threading.Event(), threading.Event()
    build = korean._new_kiwi

    def held_build(not_installed: Callable[[BaseException | None], XtmError], user_words: tuple[str, ...]) -> Any:
        building.set()
        assert release.wait(120)
        return build(not_installed, user_words)

    monkeypatch.setattr(korean, "_new_kiwi", held_build)
    with ThreadPoolExecutor(max_workers=2) as pool:
        try:
            loading = pool.submit(make_tokenizer, default_tokenizer_spec("ko", TOKEN_RULES, ("수분세럼",)))
            assert building.wait(60)
            # While the other analyser is being built, this one's text goes through (it waited; here it would hang).
            assert pool.submit(tok, "학교에서 친구를 만났다").result(timeout=60) == want
            assert not loading.done()
        finally:
            release.set()
        assert loading.result(timeout=120)("수분세럼이 좋아요") == ["수분세럼", "좋다"]


def test_threads_building_one_list_of_words_at_once_end_up_sharing_one_analyser(monkeypatch) -> None:
    both = threading.Barrier(2, timeout=60)
    built: list[object] = []

    def build(not_installed: Callable[[BaseException | None], XtmError], user_words: tuple[str, ...]) -> object:
        both.wait()  # each thread builds one, neither having found the other's
        built.append(object())
        return built[-1]

    monkeypatch.setattr(korean, "_new_kiwi", build)
    words = ("공유단어",)
    with ThreadPoolExecutor(max_workers=2) as pool:
        a, b = pool.map(lambda _: korean._get_kiwi(_no_kiwi, words), range(2))
    assert len(built) == 2 and a is b and a.kiwi in built and korean._analysers[words] is a

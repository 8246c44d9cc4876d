"""Tokenizers, language detection and stopwords, with the real jieba, janome and py3langid."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from xtm.corpus import TokenizerSpec
from xtm.errors import XtmError
from xtm.runtime.langid import detect_language, detect_languages
from xtm.runtime.tokenize import default_tokenizer_spec, make_tokenizer
from xtm.trainer.data.stopwords import stopwords


def test_default_specs_pick_segmenters_for_cjk() -> None:
    assert default_tokenizer_spec("zh").kind == "jieba"
    cn = default_tokenizer_spec("cn")
    assert (cn.lang, cn.kind) == ("zh", "jieba")
    assert default_tokenizer_spec("JA").kind == "janome"
    assert default_tokenizer_spec("en") == TokenizerSpec(lang="en", kind="regex")
    assert default_tokenizer_spec("fr").kind == "regex"
    with pytest.raises(XtmError):
        default_tokenizer_spec("not a language")


def test_regex_lowercases_and_drops_punctuation() -> None:
    tok = make_tokenizer(TokenizerSpec("en", "regex"))
    assert tok("Hello, World! -- The café's 3 snake_case ...") == [
        "hello", "world", "the", "café", "s", "3", "snake", "case"]
    assert tok("?!... ---") == []


def test_min_token_length_and_case_kept() -> None:
    tok = make_tokenizer(TokenizerSpec("en", "regex", lowercase=False, min_token_length=3))
    assert tok("An Apple a day at NASA") == ["Apple", "day", "NASA"]


def test_whitespace_kind_keeps_tokens_but_not_punctuation() -> None:
    tok = make_tokenizer(TokenizerSpec("en", "whitespace"))
    assert tok("New-York ,  is  BIG . e-mail") == ["new-york", "is", "big", "e-mail"]


def test_jieba_segments_raw_chinese() -> None:
    tok = make_tokenizer(default_tokenizer_spec("zh"))
    out = tok("我爱北京天安门，今天天气很好！iPhone 2024")
    assert "北京" in out and "天安门" in out
    assert "iphone" in out and "2024" in out
    assert not {"，", "！", " "} & set(out)


def test_jieba_keeps_presegmented_text() -> None:
    tok = make_tokenizer(default_tokenizer_spec("zh"))
    # A line in the style of ECNews train_texts_cn.txt: words already separated by spaces.
    line = "债务 上限 改变 美国 复苏 方向 发展 形势"
    assert tok(line) == line.split()


def test_janome_segments_raw_and_presegmented_japanese() -> None:
    tok = make_tokenizer(default_tokenizer_spec("ja"))
    out = tok("東京に行きました。とても楽しかった！")
    assert out[:2] == ["東京", "に"]
    assert "。" not in out and "！" not in out
    # Rakuten_Amazon style: MeCab surface forms separated by spaces, kept as they are.
    line = "センチ 着丈 長 過ぎ バランス 悪い 着る"
    assert tok(line) == line.split()


def test_tokenizers_are_thread_safe() -> None:
    zh = make_tokenizer(default_tokenizer_spec("zh"))
    ja = make_tokenizer(default_tokenizer_spec("ja"))
    texts = ["我爱北京天安门，今天天气很好", "東京に行きました。とても楽しかった"] * 20
    expected = [zh(t) if i % 2 == 0 else ja(t) for i, t in enumerate(texts)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(lambda it: zh(it[1]) if it[0] % 2 == 0 else ja(it[1]), enumerate(texts)))
    assert got == expected


def test_unknown_kind_is_a_user_error() -> None:
    with pytest.raises(XtmError, match="unknown tokenizer kind 'spacy'"):
        make_tokenizer(TokenizerSpec("en", "spacy"))


def test_runtime_modules_import_lightly() -> None:
    code = ("import sys, xtm.runtime.tokenize, xtm.runtime.langid;"
            "print(sorted(m for m in ('jieba', 'janome', 'py3langid', 'torch', 'nltk') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize(("text", "lang"), [
    ("中国经济今年继续保持稳定增长，消费市场十分活跃。", "zh"),
    ("今日はとても良い天気ですね。明日も晴れるでしょうか。", "ja"),
    ("The government announced new measures to support small businesses this year.", "en"),
    ("Le gouvernement a annoncé de nouvelles mesures pour soutenir les petites entreprises.", "fr"),
])
def test_detect_language(text: str, lang: str) -> None:
    assert detect_language(text) == lang


def test_detect_language_candidates_and_errors() -> None:
    # Kanji only: Chinese to an unrestricted model, Japanese once only ja is allowed besides en.
    assert detect_language("東京大学") == "zh"
    assert detect_language("東京大学", candidates=["ja", "en"]) == "ja"
    assert detect_languages(["hello there my friend, how are you today?", "我们今天去公园"]) == ["en", "zh"]
    with pytest.raises(XtmError, match="empty"):
        detect_language("   ")


def test_stopwords() -> None:
    en = stopwords("en")
    assert {"the", "and", "of", "is"} <= en and "market" not in en
    assert 150 <= len(en) <= 400
    assert {"的", "了", "是"} <= stopwords("cn")
    assert {"の", "は", "です", "まし"} <= stopwords("ja")
    for lang, word in (("fr", "les"), ("de", "und"), ("es", "los")):
        assert word in stopwords(lang)
    assert stopwords("sw") == frozenset()
    assert stopwords("???") == frozenset()


def test_script_fast_path_agrees_with_the_model_where_scripts_differ() -> None:
    from xtm.runtime.langid import _by_script, detect_language

    cases = {"The coach said the team will win.": "en", "教练表示球队将在周日赢得决赛。": "zh",
             "コーチはチームが勝つと言った。": "ja", "Тренер сказал, что команда победит.": "ru"}
    for text, lang in cases.items():
        assert _by_script(text, {"en", lang} if lang != "en" else {"en", "zh"}) == lang
        assert detect_language(text, ["en", "zh", "ja", "ru"]) == lang
    # Kanji-only text fits both zh and ja, and Latin text fits en and fr: left to the model.
    assert _by_script("東京大学", {"zh", "ja"}) is None
    assert _by_script("le chat noir", {"en", "fr"}) is None
    assert detect_language("le chat noir est sur la table", ["en", "fr"]) == "fr"


# -- jieba's prefix-dictionary cache (issue 13 item 14) ---------------------------------------------
#
# jieba loads its cache with marshal and trusts it: a planted or edited cache changes segmentation
# silently. Each check runs in a fresh process (jieba is initialised once per process), on a real
# cache directory, attacked the way a file on disk can be.

_JIEBA_TEXT = "我爱北京天安门，今天天气很好"
_JIEBA_SCRIPT = ("import json, sys, warnings\n"
                 "warnings.simplefilter('always')\n"
                 "from xtm.runtime.tokenize import default_tokenizer_spec, make_tokenizer\n"
                 "print(json.dumps(make_tokenizer(default_tokenizer_spec('zh'))(sys.argv[1])))\n")


def _tokens_in_fresh_process(cache: object, tmp: object) -> tuple[list[str], str]:
    import json
    import os

    env = {**os.environ, "XTM_CACHE_DIR": str(cache), "TMPDIR": str(tmp)}
    p = subprocess.run([sys.executable, "-c", _JIEBA_SCRIPT, _JIEBA_TEXT], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout), p.stderr


def _planted_cache() -> bytes:
    """What jieba itself would read as a cache: a marshal of (prefix dict, total) that segments
    "爱北京" as one word."""
    import marshal

    return marshal.dumps(({"我": 5, "爱": 5, "爱北": 0, "爱北京": 10 ** 9, "北": 5, "京": 5}, 10 ** 9 + 20))


def _cache_files(root: object) -> list:
    from pathlib import Path

    return [p for p in Path(str(root)).rglob("*") if p.is_file() and "jieba" in p.name and p.suffix == ".cache"]


@pytest.fixture
def jieba_dirs(tmp_path):
    cache, tmp = tmp_path / "cache", tmp_path / "tmp"
    tmp.mkdir()
    return cache, tmp


def test_jieba_cache_is_keyed_and_a_tampered_one_is_rebuilt(jieba_dirs) -> None:
    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    assert "北京" in want and "天安门" in want
    files = _cache_files(cache)
    assert len(files) == 1
    import jieba

    # Keyed: the name carries jieba's version and a digest of the dictionary it was built from.
    assert jieba.__version__ in files[0].name and len(files[0].name) > len(f"jieba-{jieba.__version__}.cache") + 8
    files[0].write_bytes(_planted_cache())
    got, err = _tokens_in_fresh_process(cache, tmp)
    assert got == want                                  # the planted cache was not used
    assert "jieba" in err and "cache" in err and "rebuil" in err   # and the user is told
    again, err = _tokens_in_fresh_process(cache, tmp)   # rebuilt: valid again, no more warnings
    assert again == want and "cache" not in err


def test_a_corrupted_jieba_cache_is_rebuilt(jieba_dirs) -> None:
    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    (f,) = _cache_files(cache)
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF                        # one flipped byte deep in the marshal data
    f.write_bytes(bytes(data))
    got, err = _tokens_in_fresh_process(cache, tmp)
    assert got == want and "rebuil" in err


def test_a_cache_planted_in_the_temp_dir_is_never_read(jieba_dirs, tmp_path) -> None:
    """With no usable cache directory jieba used to fall back to /tmp, where anyone can plant one."""
    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    (tmp / "jieba.cache").write_bytes(_planted_cache())
    got, _ = _tokens_in_fresh_process(blocker / "xtm", tmp)
    assert got == want
    assert (tmp / "jieba.cache").read_bytes() == _planted_cache()   # not ours: left alone


def test_a_cache_writable_by_others_is_not_trusted(jieba_dirs) -> None:
    import os

    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    (f,) = _cache_files(cache)
    os.chmod(f, 0o666)                                   # anyone could have rewritten it
    got, err = _tokens_in_fresh_process(cache, tmp)
    assert got == want and "rebuil" in err
    (f,) = _cache_files(cache)
    assert not f.stat().st_mode & 0o002


def test_a_symlink_in_place_of_the_cache_is_replaced_not_written_through(jieba_dirs, tmp_path) -> None:
    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    (f,) = _cache_files(cache)
    victim = tmp_path / "users-file.txt"
    victim.write_text("the user's own file")
    f.unlink()
    f.symlink_to(victim)
    got, err = _tokens_in_fresh_process(cache, tmp)
    assert got == want and "rebuil" in err
    assert victim.read_text() == "the user's own file"
    assert not f.is_symlink() and f.is_file()

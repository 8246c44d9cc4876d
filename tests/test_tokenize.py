"""Tokenizers, language detection and stopwords, with the real jieba, janome and py3langid."""

from __future__ import annotations

import subprocess
import sys
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
    assert default_tokenizer_spec("en") == TokenizerSpec(lang="en", kind="words")
    assert default_tokenizer_spec("fr").kind == "words"
    with pytest.raises(XtmError):
        default_tokenizer_spec("not a language")


def test_regex_lowercases_and_drops_punctuation() -> None:
    tok = make_tokenizer(TokenizerSpec("en", "regex"))
    assert tok("Hello, World! -- The café's 3 snake_case ...") == [
        "hello", "world", "the", "café", "s", "3", "snake", "case"]
    assert tok("?!... ---") == []


# Words with combining marks: Hindi vowel signs and nukta, Tamil viramas, Arabic harakat, Thai vowels,
# and a Turkish capital İ, which lower() would leave with a combining dot (İlk and ilk two words).
MARKED = [("hi", "बाज़ार आज बहुत गिर गया", ["बाज़ार", "आज", "बहुत", "गिर", "गया"]),
          ("ta", "சந்தை இன்று வீழ்ச்சி", ["சந்தை", "இன்று", "வீழ்ச்சி"]),
          ("ar", "السُّوقُ انخفضَ اليوم", ["السُّوقُ", "انخفضَ", "اليوم"]),
          ("th", "ตลาดหุ้น ลดลง", ["ตลาดหุ้น", "ลดลง"]),
          ("tr", "İstanbul borsası İlk ilk", ["istanbul", "borsası", "ilk", "ilk"])]


@pytest.mark.parametrize(("lang", "text", "words"), MARKED)
def test_words_keep_their_combining_marks(lang: str, text: str, words: list[str]) -> None:
    tok = make_tokenizer(default_tokenizer_spec(lang))
    assert tok(text) == words
    # Decomposed input is the same words (NFC first), and a mark after a space starts no word.
    assert tok(unicodedata.normalize("NFD", text)) == words
    assert tok("\u0301" + text) == words


def test_words_cut_latin_text_as_the_regex_kind_did() -> None:
    # Text below U+0300 takes the plain pattern; above it (curly quotes, Greek, Cyrillic) the marked one.
    words, regex = make_tokenizer(TokenizerSpec("fr", "words")), make_tokenizer(TokenizerSpec("fr", "regex"))
    for text in ("L'économie s'effondre, dit-il: 3 snake_case", "l’économie — Δημοκρατία и экономика",
                 "Hello, World! -- The café's 3 snake_case ...", "", "?!..."):
        assert words(text) == regex(text)


def test_the_regex_kind_still_cuts_as_its_bundles_were_trained() -> None:
    # Runs and bundles made before "words" recorded kind regex: their vocabularies hold the pieces.
    assert make_tokenizer(TokenizerSpec("hi", "regex"))("बाज़ार आज") == ["ब", "ज", "र", "आज"]


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
            "heavy = ('jieba', 'janome', 'kiwipiepy', 'py3langid', 'torch', 'nltk');"
            "print(sorted(m for m in heavy if m in sys.modules))")
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
    # Languages without an xtm list: stopwords-iso's, one token per entry as the tokenizer cuts it.
    assert {"della", "nel", "dell"} <= stopwords("it") and "dell'" not in stopwords("it")
    assert {"и", "не"} <= stopwords("ru")
    assert not any(" " in w for w in stopwords("ko"))
    assert stopwords("cy") == frozenset()  # in neither
    # Vietnamese's list is of words a syllable tokenizer cuts smaller ("chính phủ"): its one-syllable entries
    # would remove syllables of content words, so it is not used.
    assert stopwords("vi") == frozenset()
    # Token rules 1 (runs made before stopwords-iso was used): xtm's lists only.
    assert stopwords("it", rules=1) == frozenset() and stopwords("en", rules=1) == stopwords("en")
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

    # The cache is the Python jieba's (rjieba needs none): that segmenter, whatever is installed.
    env = {**os.environ, "XTM_CACHE_DIR": str(cache), "TMPDIR": str(tmp), "XTM_SEGMENTERS": "reference"}
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


def test_a_cache_directory_the_user_linked_elsewhere_still_caches(jieba_dirs, tmp_path) -> None:
    """The cache directory itself may be a link the user made (a bigger disk): followed. The cache's own
    subdirectory inside it is xtm's, never taken through a link."""
    cache, tmp = jieba_dirs
    real = tmp_path / "bigger-disk"
    real.mkdir()
    cache.symlink_to(real)
    want, _ = _tokens_in_fresh_process(cache, tmp)
    assert "北京" in want and len(_cache_files(real)) == 1
    again, err = _tokens_in_fresh_process(cache, tmp)  # read back: no warning
    assert again == want and "cache" not in err


def test_a_jieba_folder_the_user_linked_elsewhere_is_used(jieba_dirs, tmp_path) -> None:
    cache, tmp = jieba_dirs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cache.mkdir()
    (cache / "jieba").symlink_to(elsewhere)
    want, _ = _tokens_in_fresh_process(cache, tmp)
    assert "北京" in want and len(_cache_files(elsewhere)) == 1


@pytest.mark.parametrize("thing", ["a directory", "a FIFO"])
def test_something_else_at_the_jieba_cache_entry_is_a_warning_not_a_failure(thing: str, jieba_dirs) -> None:
    """A directory there made every Chinese tokenization fail with IsADirectoryError (the descriptor was wrapped
    before its type was checked); a FIFO must not block."""
    import os

    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    (f,) = _cache_files(cache)
    f.unlink()
    if thing == "a directory":
        f.mkdir()
    else:
        os.mkfifo(f)
    got, err = _tokens_in_fresh_process(cache, tmp)
    assert got == want and f"is {thing}, not a regular file" in err


def test_the_cache_an_older_xtm_kept_in_the_cache_root_is_removed_only_when_ours(jieba_dirs) -> None:
    cache, tmp = jieba_dirs
    want, _ = _tokens_in_fresh_process(cache, tmp)
    (f,) = _cache_files(cache)
    old = cache / f.name  # where xtm kept it before 2026-12-07
    old.write_bytes(f.read_bytes())
    f.unlink()
    _tokens_in_fresh_process(cache, tmp)  # rebuilt in jieba/: the old one is provably ours, removed
    assert not old.exists() and [p.parent.name for p in _cache_files(cache)] == ["jieba"]
    (cache / "jieba" / f.name).unlink()
    old.write_text("a user's file that happens to have this name")
    _tokens_in_fresh_process(cache, tmp)
    assert old.read_text() == "a user's file that happens to have this name"


# -- segmenter implementations (issue 16: throughput on raw text) -----------------------------------
#
# A bundle records its tokenizer kind; the process picks what serves it (XTM_SEGMENTERS). "auto" runs
# jieba's plain blocks through rjieba: the promise is jieba's bags of words (theta depends on nothing
# else), with the token order allowed to differ only between equally scored segmentations.

_HOSTILE_ZH = [
    "我爱北京天安门，今天天气很好！iPhone 2024年发布了新款T恤和A股AA制",
    "e-mail地址是test@example.com，C++与C#编程，3.14%的增长，COVID-19疫情",
    "全角ＡＢＣ１２３和半角abc123混合　全角空格\u3000和\t制表符\r\n换行",
    "了解北大第一批文科计划数实际录取一一一零六零零分文科两名高考总分第一名",  # a tie jieba-rs breaks otherwise
    "表情😀符号½Ⅲ①与_下划线__以及#话题#@用户&amp;",
    "www.example.com/path?q=中文&x=1.5亿元 10:30开会",
    "分隔\x1c符号\x85下一行\u2028段落\x00零字节", "孤立代理\ud800字符", "", "   ", "。！？",
    "混合English和中文,with punctuation...!!", "北京 经济 增长 北京 经济",
    "ＣＰＵ和ＧＰＵ的性能提升了５０％", "一一一一一一一一", "的的的的的的", "abc" * 50 + "中文" * 50,
]


def _bag(tokens: list[str]) -> dict[str, int]:
    from collections import Counter

    return dict(Counter(tokens))


def _reference_tokens(text: str, lowercase: bool = True, min_len: int = 1) -> list[str]:
    import xtm.runtime.tokenize as T

    return T._finish(T._get_jieba().lcut(text), lowercase, min_len)


def test_jieba_blocks_pattern_is_jiebas_own() -> None:
    """The rjieba path splits text where jieba does without importing it: the pattern must be jieba's."""
    import jieba

    import xtm.runtime.tokenize as T

    assert T._JIEBA_BLOCKS.pattern == jieba.re_han_default.pattern
    assert T._JIEBA_BLOCKS.flags == jieba.re_han_default.flags


@pytest.mark.parametrize("spec", [TokenizerSpec("zh", "jieba"),
                                  TokenizerSpec("zh", "jieba", lowercase=False, min_token_length=2)])
def test_reference_segmenter_gives_jiebas_tokens_in_order(spec: TokenizerSpec) -> None:
    tok = make_tokenizer(spec, "reference")
    for text in _HOSTILE_ZH * 2:  # the second round from the block cache
        assert tok(text) == _reference_tokens(text, spec.lowercase, spec.min_token_length), text


@pytest.mark.parametrize("spec", [TokenizerSpec("zh", "jieba"),
                                  TokenizerSpec("zh", "jieba", lowercase=False, min_token_length=2)])
def test_rjieba_segmenter_gives_jiebas_bags_of_words(spec: TokenizerSpec) -> None:
    pytest.importorskip("rjieba")
    from xtm.runtime.tokenize import segmenter_of

    assert segmenter_of("jieba", "auto") == "jieba+rjieba"
    tok = make_tokenizer(spec, "auto")
    for text in _HOSTILE_ZH * 2:
        want = _reference_tokens(text, spec.lowercase, spec.min_token_length)
        got = tok(text)
        assert _bag(got) == _bag(want), text
        if "一一一零" not in text:  # the documented exception: a tie, broken the other way (same words)
            assert got == want, text


def test_rjieba_segmenter_on_random_mixes_of_dictionary_words_and_ascii() -> None:
    """Blocks handed to rjieba are CJK letters with ASCII letters/digits: jieba's dictionary words with
    ASCII (T恤, A股, C语言, AA制) glued to Chinese words and random ASCII runs, checked against jieba."""
    pytest.importorskip("rjieba")
    import random
    import re

    import xtm.runtime.tokenize as T

    with T._get_jieba().get_dict_file() as f:
        words = [line.split()[0].decode() for line in f]
    ascii_words = [w for w in words if re.search("[a-zA-Z0-9]", w) and T._RJIEBA_BLOCK(w)]
    han = [w for w in words if re.fullmatch("[\u4e00-\u9fd5]+", w)]
    assert len(ascii_words) > 40
    rng = random.Random(16)
    alphabet = "abcxyzABCXYZ0123456789一二三了的是不我他年月日中国人大"
    tok = make_tokenizer(TokenizerSpec("zh", "jieba"), "auto")
    for _ in range(1500):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            parts.append(rng.choice(ascii_words) if r < 0.3 else rng.choice(han) if r < 0.6 else
                         "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 5))))
        text = "".join(parts)
        assert _bag(tok(text)) == _bag(_reference_tokens(text)), text


def test_rjieba_segmenter_on_ecnews_raw_chinese() -> None:
    """The real text users have: ECNews Chinese with its spaces removed. Every bag of words is jieba's."""
    pytest.importorskip("rjieba")
    from shared_data import need

    lines = need("ECNews", "test_texts_cn.txt").read_text(encoding="utf-8").splitlines()[:4000]
    tok = make_tokenizer(TokenizerSpec("zh", "jieba"), "auto")
    same = 0
    for line in lines:
        text = line.replace(" ", "")
        got, want = tok(text), _reference_tokens(text)
        assert _bag(got) == _bag(want), text
        same += got == want
    assert same >= len(lines) - 2  # token order: ties only (1 in 50,000 documents of train + test)


def _segmenter_script(code: str, tmp: object, **env: str) -> subprocess.CompletedProcess:
    import os

    full = {**os.environ, **env}
    return subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, timeout=120,
                          cwd=str(tmp))


def test_rjieba_path_loads_no_jieba_dictionary_for_plain_chinese(tmp_path) -> None:
    """The cold start: rjieba's dictionary is in its binary (0.1 s); jieba's costs most of a second."""
    pytest.importorskip("rjieba")
    code = ("import sys\nfrom xtm.corpus import TokenizerSpec\nfrom xtm.runtime.tokenize import make_tokenizer\n"
            "tok = make_tokenizer(TokenizerSpec('zh', 'jieba'))\n"
            "print(tok('我爱北京天安门，今天天气很好'), 'jieba' in sys.modules)\n"
            "print(tok('发邮件e-mail'), 'jieba' in sys.modules)\n")
    p = _segmenter_script(code, tmp_path, XTM_SEGMENTERS="auto")
    assert p.returncode == 0, p.stderr
    first, second = p.stdout.strip().splitlines()
    assert first.endswith("False") and "天安门" in first
    assert second.endswith("True") and "'mail'" in second  # a block with '-' is jieba's, loaded then


def test_without_rjieba_auto_is_plain_jieba(tmp_path) -> None:
    code = ("import sys\nsys.modules['rjieba'] = None  # not installed\n"
            "from xtm.corpus import TokenizerSpec\nfrom xtm.runtime import tokenize as T\n"
            "print(T.segmenter_of('jieba'), T.make_tokenizer(TokenizerSpec('zh', 'jieba'))('北京天安门'))\n")
    p = _segmenter_script(code, tmp_path, XTM_SEGMENTERS="auto")
    assert p.returncode == 0, p.stderr
    assert p.stdout.split()[0] == "jieba" and "天安门" in p.stdout


@pytest.mark.parametrize("value", ["turbo", "REFERENCE ", "Fast"])
def test_segmenters_setting_is_checked(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from xtm.runtime.tokenize import SEGMENTERS_ENV, segmenter_mode

    monkeypatch.setenv(SEGMENTERS_ENV, value)
    if value.strip().lower() == "reference":
        assert segmenter_mode() == "reference"
    else:
        with pytest.raises(XtmError, match=f"XTM_SEGMENTERS must be one of auto, reference, got '{value.lower()}'"):
            make_tokenizer(TokenizerSpec("ja", "janome"))
    with pytest.raises(XtmError, match="segmenters must be one of"):
        segmenter_mode("quick")


def test_fast_segmenters_never_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shell-wide XTM_SEGMENTERS=fast would reach xtm-train too, which tokenizes with make_tokenizer:
    MeCab's tokens counted into a model whose bundle records janome. Only a serving process asks."""
    from xtm.runtime.tokenize import SEGMENTERS_ENV, segmenter_mode, use_segmenters

    monkeypatch.setenv(SEGMENTERS_ENV, "fast")
    with pytest.raises(XtmError, match="never by the environment"):
        make_tokenizer(TokenizerSpec("ja", "janome"))
    monkeypatch.setenv(SEGMENTERS_ENV, "reference")
    try:
        use_segmenters("fast")
        assert segmenter_mode() == "fast"              # the process's choice wins over the environment
        assert segmenter_mode("auto") == "auto"        # and an explicit argument over both
    finally:
        use_segmenters(None)
    assert segmenter_mode() == "reference"
    with pytest.raises(XtmError, match="segmenters must be one of"):
        use_segmenters("turbo")


# -- jieba inside an application (review of 2026-12-07) ------------------------------------------------
#
# A service that embeds the runtime may use jieba itself: xtm segments with a jieba.Tokenizer of its own, never
# jieba's process-wide one, and remembers only short blocks (a service fed long documents without punctuation grew
# by about 0.9 MB a document).

_HOST_SCRIPT = ("import json, logging, sys\n"
                "import jieba\n"
                "from xtm.corpus import TokenizerSpec\n"
                "from xtm.runtime.tokenize import make_tokenizer\n"
                "text, level = sys.argv[1], logging.getLogger('jieba').level\n"
                "jieba.add_word('爱北京')  # the application's word, before xtm needs jieba\n"
                "tok = make_tokenizer(TokenizerSpec('zh', 'jieba'), 'reference')\n"
                "first = tok(text)\n"
                "jieba.add_word('天气很好')  # and one after\n"
                "second = make_tokenizer(TokenizerSpec('zh', 'jieba'), 'reference')(text)  # a new memo\n"
                "print(json.dumps({'host': jieba.lcut(text), 'first': first, 'second': second,\n"
                "                  'levels': [level, logging.getLogger('jieba').level]}))\n")


def test_an_applications_jieba_words_and_xtms_tokens_stay_apart(jieba_dirs) -> None:
    """xtm loaded its dictionary into jieba.dt, which dropped the words the application had added, and tokenized
    with it, so the application's words changed xtm's bags of words (and its topics); it also lowered jieba's
    logger for the whole process."""
    import json
    import os

    cache, tmp = jieba_dirs
    want = make_tokenizer(TokenizerSpec("zh", "jieba"), "reference")(_JIEBA_TEXT)
    assert "爱北京" not in want and "天气很好" not in want
    env = {**os.environ, "XTM_CACHE_DIR": str(cache), "TMPDIR": str(tmp)}
    p = subprocess.run([sys.executable, "-c", _HOST_SCRIPT, _JIEBA_TEXT], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    assert "爱北京" in got["host"] and "天气很好" in got["host"]  # the application keeps its words
    assert got["first"] == want and got["second"] == want      # and xtm's tokens are its own
    assert got["levels"][0] == got["levels"][1]                 # jieba's logger as the application left it


def test_xtm_segments_with_a_jieba_tokenizer_of_its_own() -> None:
    import jieba

    import xtm.runtime.tokenize as T

    assert make_tokenizer(TokenizerSpec("zh", "jieba"), "reference")(_JIEBA_TEXT)
    ours = T._get_jieba()
    assert ours is not jieba.dt and ours.FREQ is not jieba.dt.FREQ and ours.initialized


def _jieba_memo(tok: Any) -> dict[str, list[str]]:
    """The block memo of a jieba tokenizer from make_tokenizer (closure cells: tok_nfc -> tok_jieba -> cache)."""
    def cells(f: Any) -> dict[str, Any]:
        return dict(zip(f.__code__.co_freevars, (c.cell_contents for c in f.__closure__ or ()), strict=True))
    return cells(cells(tok)["tokenize"])["cache"]


@pytest.mark.parametrize("mode", ["reference", "auto"])
def test_jieba_memo_holds_short_blocks_only_within_its_bounds(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import random
    import re

    import xtm.runtime.tokenize as T

    with T._get_jieba().get_dict_file() as f:
        han = [w for w in (line.split()[0].decode() for line in f) if re.fullmatch("[\u4e00-\u9fd5]+", w)]
    rng = random.Random(7)
    # Documents without punctuation: one block each (the second has an ASCII run, the third a '-', jieba's under
    # auto too), thousands of characters that no memo should keep.
    docs = ["".join(rng.choice(han) for _ in range(3000)) + tail for tail in ("", "abc123", "e-mail")]
    short = "北京，天安门。今天天气很好！"
    tok = make_tokenizer(TokenizerSpec("zh", "jieba"), mode)
    for text in docs * 2 + [short]:
        got, want = tok(text), _reference_tokens(text)
        assert (got if mode == "reference" else _bag(got)) == (want if mode == "reference" else _bag(want))
    memo = _jieba_memo(tok)
    assert set(memo) == {"北京", "天安门", "今天天气很好"}  # the long blocks were segmented, not remembered
    # Bounded by the characters held, too: cleared before it would hold more than _JIEBA_CACHE_CHARS.
    monkeypatch.setattr(T, "_JIEBA_CACHE_CHARS", 80)
    tok = make_tokenizer(TokenizerSpec("zh", "jieba"), mode)
    memo, sizes = _jieba_memo(tok), []
    for text in (_HOSTILE_ZH + [short]) * 2:
        assert _bag(tok(text)) == _bag(_reference_tokens(text)), text
        sizes.append(sum(map(len, memo)))
        assert sizes[-1] <= 80 and all(len(b) <= T._JIEBA_CACHE_BLOCK for b in memo)
    assert any(b < a for a, b in zip(sizes, sizes[1:], strict=False))  # and was cleared on the way


# -- MeCab (fugashi + IPAdic): kind "mecab", and kind janome under XTM_SEGMENTERS=fast ----------------


def test_mecab_kind_segments_japanese_and_keeps_presegmented_text() -> None:
    pytest.importorskip("fugashi")
    pytest.importorskip("ipadic")
    tok = make_tokenizer(TokenizerSpec("ja", "mecab"))
    out = tok("東京に行きました。とても楽しかった！")
    assert out[:2] == ["東京", "に"] and "。" not in out and "！" not in out
    line = "センチ 着丈 長 過ぎ バランス 悪い 着る"
    assert tok(line) == line.split()


def test_mecab_reads_past_a_nul_and_a_lone_surrogate() -> None:
    """MeCab takes a C string: a NUL ended the document there (the rest was lost without a word) and
    a lone surrogate raised UnicodeEncodeError."""
    pytest.importorskip("fugashi")
    pytest.importorskip("ipadic")
    tok = make_tokenizer(TokenizerSpec("ja", "mecab"))
    assert tok("東京\x00大阪") == ["東京", "大阪"]
    assert tok("東京\ud800大阪") == ["東京", "大阪"]


def test_fast_segmenters_serve_janome_bundles_with_mecab_only_when_asked() -> None:
    pytest.importorskip("fugashi")
    pytest.importorskip("ipadic")
    from xtm.runtime.tokenize import segmenter_of

    spec = TokenizerSpec("ja", "janome")
    assert segmenter_of("janome", "auto") == "janome" and segmenter_of("janome", "reference") == "janome"
    assert segmenter_of("janome", "fast") == "mecab"
    text = "試着段階で大きさを確認しました"
    janome, mecab = make_tokenizer(spec, "auto")(text), make_tokenizer(spec, "fast")(text)
    assert janome != mecab  # the documented difference (janome groups this unknown word otherwise)
    assert mecab == make_tokenizer(TokenizerSpec("ja", "mecab"))(text)


def test_mecab_agrees_with_janome_on_most_rakuten_documents() -> None:
    """The measured agreement (docs/benchmarks.md: 98.97% of 25,000 documents), on a sample."""
    pytest.importorskip("fugashi")
    pytest.importorskip("ipadic")
    from shared_data import need

    lines = need("Rakuten_Amazon", "test_texts_ja.txt").read_text(encoding="utf-8").splitlines()[:300]
    janome = make_tokenizer(TokenizerSpec("ja", "janome"), "reference")
    mecab = make_tokenizer(TokenizerSpec("ja", "mecab"))
    texts = [line.replace(" ", "") for line in lines]
    same = sum(janome(t) == mecab(t) for t in texts)
    assert same >= 0.97 * len(texts)


def test_missing_mecab_says_which_extra(tmp_path) -> None:
    code = ("import sys\nsys.modules['ipadic'] = None  # not installed\n"
            "from xtm.corpus import TokenizerSpec\nfrom xtm.errors import XtmError\n"
            "from xtm.runtime.tokenize import make_tokenizer, missing_tokenizer\n"
            "print('load:', missing_tokenizer('mecab'))\n"
            "try:\n    make_tokenizer(TokenizerSpec('ja', 'janome'), 'fast')('東京')\n"
            "except XtmError as e:\n    print('first use:', e)\n")
    p = _segmenter_script(code, tmp_path)
    assert p.returncode == 0, p.stderr
    for line in p.stdout.strip().splitlines():
        assert 'pip install "xtm[ja-mecab]"' in line and "Traceback" not in p.stderr


@pytest.mark.parametrize(("text", "lang"), [
    # Korean with English product words: counted letter for syllable, the Latin letters won, Korean was ruled out
    # and the text was read as English (confidence 0.000) or as no language at all.
    ("블루투스 이어폰 battery life is great 음질도 좋아요", "ko"),
    ("아이폰 15 pro max case 너무 좋아요", "ko"),
    ("다이슨 hair dryer 강추", "ko"),
    ("iPhone 케이스", "ko"),
    ("The market fell sharply today.", "en"),
    ("東京の天気は晴れです", "ja"),
    # A kaomoji's kana or a name's middle dot in Chinese made it Japanese at 1.0 (all its Han counted as kana).
    ("今天天气很好，我们去公园散步吧ヽ(´▽`)ノ", "zh"),
    ("迈克尔・杰克逊是美国著名的流行音乐歌手", "zh"),
    ("这家店的拉面很好吃，一定要去尝尝ー", "zh"),
    ("ㅋㅋㅋㅋㅋㅋㅋㅋ ㅠㅠㅠ", "ko"),  # compatibility jamo are Hangul
    ("北海道大学大学院工学研究科の教授", "ja"),  # one hiragana among kanji: Japanese writing
])
def test_identify_reads_mixed_script_text_by_its_wide_characters(text: str, lang: str) -> None:
    from xtm.runtime.langid import identify

    for prefer in (None, ["en", "ko"], ["en", "zh"]):
        assert identify(text, prefer).lang == lang, prefer


def test_identify_gives_the_probability_among_languages_the_script_allows() -> None:
    # "책" can only be Korean: py3langid spread 99% of its probability over languages that cannot write it, and
    # --min-lang-conf refused it (0.007) while it took "laptop" for English at 0.014.
    from xtm.runtime.langid import identify

    assert identify("책").confidence > 0.99 and identify("밥", ["en", "zh"]).lang == "ko"
    assert identify("bank market", ["en", "zh"]).confidence < 0.1  # a guess among Latin languages stays a guess
    assert identify("Le marché a chuté fortement aujourd'hui.").lang == "fr"


def test_training_detection_between_candidates_weighs_wide_characters_from_token_rules_3() -> None:
    # Korean with English words, its language not given, in a run with --langs en,ko: the script decided letter
    # for syllable, and the review trained as English. Runs made under older rules keep their detection.
    text = "블루투스 이어폰 battery life is great 음질도 좋아요"
    assert detect_language(text, ["en", "ko"], weighted=True) == "ko"
    assert detect_language(text, ["en", "ko"]) == "en"
    assert detect_language("The battery life is great", ["en", "ko"], weighted=True) == "en"
    kaomoji = "我今天很开心，这个产品质量非常好，物流也很快 ノ"  # a katakana in Chinese made it Japanese
    assert detect_language(kaomoji, ["zh", "ja"], weighted=True) == "zh"
    assert detect_language(kaomoji, ["zh", "ja"]) == "ja"  # (rules 1-2, as they were)

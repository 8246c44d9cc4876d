"""Korean text -> content words, with Kiwi (kiwipiepy: a morphological analyser, Apache-2.0, `pip install
"xtm[ko]"`): tokenizer kind "kiwi", Korean's default from token rules 3.

Why a morphological analyser: Korean writes a word and its particles as one space-separated unit (학교에서 "at
school", 학교는 "school" as topic), so splitting at spaces or at letters makes a vocabulary of word+particle
forms: each noun counted under a dozen spellings, and a dictionary's 학교 matching none of them.

What is kept, by Kiwi's tag (the Sejong tag set):
- nouns (NNG common, NNP proper) and word roots (XR), as written;
- verb and adjective stems (VV, VA; irregular ones tagged VV-I, VA-R, ... too) in their dictionary form, stem + 다
  (먹 -> 먹다), the form bilingual dictionaries list; a root with the derivational 하 (깨끗 + 하 -> 깨끗하다) likewise;
- Latin-script words (SL) and Hanja (SH), as the "words" kind keeps them;
- a hashtag's words, analysed like the rest of the text (#맛집에서 -> 맛집).
Dropped: numbers (SN: "1,000" and "3.5" would be words, where the words kind's pieces are digits, which training
drops), particles (J*), endings (E*), other affixes, dependent nouns (것, 수), pronouns, numerals, determiners,
adverbs, interjections, auxiliaries and the copula, punctuation, URLs, e-mail addresses and mentions, and letters
of scripts Kiwi does not analyse (Cyrillic, Arabic, Devanagari: tagged SW with symbols and ㅋㅋ).

A token is one word: Kiwi's dictionary of multi-word titles is not loaded ("해리 포터와 마법사의 돌" was one token,
with spaces, which no vocabulary file can hold), and a token without a letter or digit (a zero-width space Kiwi
tagged as a noun) is dropped; zero-width spaces and joiners separate words, as spaces do.

Words Kiwi does not know are cut into pieces it does (선크림 "sunscreen" -> 선 + 크림): a user's list of them
(xtm-train --user-words, the spec's `user_words`) is added to the analyser as common nouns, one analyser per list.

Kiwi's time grows faster than the text (about 3 s for 100,000 characters, 43 s for 400,000), so a long text is
cut at whitespace into pieces of at most _PIECE characters, each analysed alone: linear time (a megabyte line of
sentences about 3 s; of one word repeated without spaces, Kiwi's slowest, about 25 s). Training and the runtime
cut the same way. Kiwi is slower than the other tokenizers (about 260 Korean reviews of 150 characters a second
on one core, against 3,800 English ones), and one analyser serves a process: more cores help through processes
(xtm-infer --workers), not threads.
"""

from __future__ import annotations

import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

from xtm.errors import XtmError

__all__ = ["MODULE", "MODEL_MODULE", "has_hangul", "korean_tokenizer"]

MODULE = "kiwipiepy"
MODEL_MODULE = "kiwipiepy_model"  # the analyser's model, a package of its own (about 100 MB)

_NOUNS = frozenset({"NNG", "NNP", "XR", "SL", "SH"})
_PREDICATES = frozenset({"VV", "VA"})
_DERIVING = frozenset({"XSA", "XSV"})  # 하 after a root: 깨끗 + 하 -> 깨끗하다
_PIECE = 4096
# Kiwi reads UTF-16: a lone surrogate raised UnicodeDecodeError; a NUL is replaced too, as for MeCab; zero-width
# spaces, joiners and the BOM separate words (Kiwi tagged U+200B as a noun).
_UNSAFE = re.compile("[\x00\ud800-\udfff\u200b-\u200d\u2060\ufeff\u115f\u1160\u3164\uffa0]")  # and Hangul fillers
_SPACE = re.compile(r"\s")


class _Analyser:
    """A Kiwi and the lock its calls take. Kiwi's documentation shows threads sharing one analyser only in an example
    it calls experimental (free-threaded Python), so calls to one analyser wait for each other, never for another's."""

    __slots__ = ("__weakref__", "kiwi", "lock")

    def __init__(self, kiwi: Any) -> None:
        self.kiwi = kiwi
        self.lock = threading.Lock()


# One analyser per list of user words (a Kiwi's words are its own: a bundle's must not reach another's), about 260
# MB each; nearly always one in a process. Held by the tokenizers that use it and only weakly here, so it goes with
# the last of them: a service that reloaded bundles with other lists of words kept every analyser it had built.
_analysers: weakref.WeakValueDictionary[tuple[str, ...], _Analyser] = weakref.WeakValueDictionary()
# The analyser built last, held strongly: training's readers each make a tokenizer and drop it (the documents,
# the stopwords, the dictionary), and a weak registry alone rebuilt Kiwi for each (1.4-1.8 s and 260 MB churn
# each, three builds for one corpus). At most one analyser more than the tokenizers hold is kept: a reload
# with other words replaces it.
_recent: _Analyser | None = None
# Guards _analysers only, never held while an analyser is built (about a second) or used: a bundle loaded with a new
# list of words held up the Korean text of every other bundle for that second.
_lock = threading.Lock()
_HANGUL = re.compile("[\uac00-\ud7a3\u1100-\u11ff\u3130-\u318f]")


def has_hangul(word: str) -> bool:
    """Whether `word` has a Hangul syllable or letter (a word Kiwi takes as a user word)."""
    return _HANGUL.search(word) is not None


def _get_kiwi(not_installed: Callable[[BaseException | None], XtmError], user_words: tuple[str, ...] = ()) -> _Analyser:
    """The analyser for `user_words`, the one in use if a tokenizer holds it, else a new one (built outside _lock)."""
    global _recent
    with _lock:
        analyser = _analysers.get(user_words)
    if analyser is not None:
        return analyser
    analyser = _Analyser(_new_kiwi(not_installed, user_words))
    with _lock:
        # Two threads that built it at once share the first one published; the other is dropped.
        analyser = _recent = _analysers.setdefault(user_words, analyser)
    return analyser


def _new_kiwi(not_installed: Callable[[BaseException | None], XtmError], user_words: tuple[str, ...]) -> Any:
    try:
        from kiwipiepy import Kiwi
    except ImportError as e:
        raise not_installed(e) from e
    # One worker thread: analysing one text uses one, and training already runs one reader per core.
    kiwi = Kiwi(num_workers=1, load_multi_dict=False)
    for word in user_words:
        # a common noun, at Kiwi's neutral score: kept whole where the text has it (선크림, not 선 + 크림)
        kiwi.add_user_word(word, "NNG", 0.0)
    # Kiwi finishes loading its model at its first analysis (about half of the second it costs): here, before it is
    # shared, rather than in the first document's call.
    kiwi.tokenize("")
    return kiwi


def _match_options() -> int:
    """What Kiwi recognises as a whole: URLs, e-mail addresses and mentions (then dropped), not hashtags, whose
    words are analysed like the text's (a hashtag token kept its particles: #맛집에서)."""
    from kiwipiepy import Match

    return int(Match.ALL & ~Match.HASHTAG)


def _pieces(text: str) -> list[str]:
    """`text` cut at whitespace into pieces of at most _PIECE characters (a piece without whitespace: cut at
    _PIECE)."""
    if len(text) <= _PIECE:
        return [text]
    out, start = [], 0
    while len(text) - start > _PIECE:
        end = start + _PIECE
        cut = max((m.start() for m in _SPACE.finditer(text, start + _PIECE // 2, end)), default=end)
        out.append(text[start:cut])
        start = cut
    out.append(text[start:])
    return out


def _content_words(tokens: Any) -> list[str]:
    out: list[str] = []
    n = len(tokens)
    for i, token in enumerate(tokens):
        tag, form = token.tag.split("-", 1)[0], token.form
        if tag in _NOUNS:
            if tag == "XR" and i + 1 < n and tokens[i + 1].tag in _DERIVING:
                form += tokens[i + 1].form + "다"
        elif tag in _PREDICATES:
            form += "다"
        else:
            continue
        # one word a token, with a letter or digit in it (whatever Kiwi's dictionary or a stray character gives)
        out += [w for w in form.split() if any(c.isalnum() for c in w)]
    return out


def korean_tokenizer(lowercase: bool, min_len: int, not_installed: Callable[[BaseException | None], XtmError],
                     user_words: tuple[str, ...] = ()) -> Callable[[str], list[str]]:
    """A function Korean text -> content words (module docstring); Latin words lowercased when `lowercase`,
    words shorter than `min_len` characters dropped; `user_words` (one word each, with Hangul) kept whole, as nouns.
    `not_installed` makes the error raised without kiwipiepy."""
    if lowercase:  # matched before Latin letters are lowered: XTM크림 listed, xtm크림 in a text was cut apart
        user_words = tuple(dict.fromkeys(v for w in user_words for v in (w, w.lower())))
    # The closure holds the analyser (not only its Kiwi): it lives as long as a tokenizer that uses it.
    analyser, options = _get_kiwi(not_installed, tuple(user_words)), _match_options()

    def tok_kiwi(text: str) -> list[str]:
        text = _UNSAFE.sub(" ", text)
        words: list[str] = []
        for piece in _pieces(text):
            with analyser.lock:  # this analyser's own (_Analyser)
                tokens = analyser.kiwi.tokenize(piece, match_options=options)
            words += _content_words(tokens)
        if lowercase:
            words = [w.lower() for w in words]
        return words if min_len == 1 else [w for w in words if len(w) >= min_len]
    return tok_kiwi

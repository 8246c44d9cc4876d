"""Text -> tokens, shared by training and the torch-free runtime so both see the same words.

Imports stay light: jieba and janome are imported (and their dictionaries loaded) only when a
tokenizer of that kind is first made, once per process, under a lock.
"""

from __future__ import annotations

import logging
import re
import threading
import warnings
from collections.abc import Callable
from itertools import chain
from typing import Any

from xtm.corpus import TokenizerSpec
from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.paths import cache_dir

__all__ = ["KINDS", "default_tokenizer_spec", "make_tokenizer"]

KINDS = ("whitespace", "regex", "jieba", "janome")

# Runs of Unicode letters/digits: \w minus the underscore. Apostrophes and hyphens split words
# ("don't" -> "don", "t"); stopword lists carry the fragments.
_WORD_RE = re.compile(r"[^\W_]+")

# Distinct jieba blocks remembered per tokenizer (about 300 bytes each).
_JIEBA_CACHE_SIZE = 1 << 16

_lock = threading.Lock()
_jieba: Any = None
_janome: Any = None
_janome_lock = threading.Lock()


def default_tokenizer_spec(lang: str) -> TokenizerSpec:
    """The tokenizer used for `lang` unless told otherwise: jieba (zh), janome (ja), regex (others)."""
    code = normalize_lang(lang)
    kind = {"zh": "jieba", "ja": "janome"}.get(code, "regex")
    return TokenizerSpec(lang=code, kind=kind)


def _has_word_char(tok: str) -> bool:
    return _WORD_RE.search(tok) is not None


def _get_jieba() -> Any:
    global _jieba
    if _jieba is None:
        with _lock:
            if _jieba is None:
                with warnings.catch_warnings():
                    # jieba 0.42 imports pkg_resources, which warns about its own deprecation.
                    warnings.simplefilter("ignore")
                    import jieba
                # jieba logs "Building prefix dict ..." to stderr on first use; users need not see it.
                jieba.setLogLevel(logging.WARNING)
                logging.getLogger("jieba").setLevel(logging.WARNING)
                # jieba caches its prefix dictionary in /tmp by default, which is often wiped;
                # rebuilding it costs 2-3 s of every cold start. Keep it with xtm's other caches.
                cache = cache_dir()
                try:
                    cache.mkdir(parents=True, exist_ok=True)
                    jieba.dt.tmp_dir = str(cache)
                except OSError:
                    pass  # read-only home: jieba falls back to the temp dir
                jieba.initialize()
                _jieba = jieba
    return _jieba


def _get_janome() -> Any:
    global _janome
    if _janome is None:
        with _lock:
            if _janome is None:
                from janome.tokenizer import Tokenizer

                # wakati mode yields surface strings only, the cheapest path through janome.
                _janome = Tokenizer(wakati=True)
    return _janome


def _finish(tokens: Any, lowercase: bool, min_len: int) -> list[str]:
    """Strip, lowercase, drop whitespace/pure punctuation and too-short tokens."""
    out: list[str] = []
    for tok in tokens:
        tok = tok.strip()
        if not tok or len(tok) < min_len or not _has_word_char(tok):
            continue
        out.append(tok.lower() if lowercase else tok)
    return out


def _jieba_tokenizer(jieba: Any, lowercase: bool, min_len: int) -> Callable[[str], list[str]]:
    """_finish(jieba.lcut(text)), memoised per whitespace-separated piece: the same tokens, faster.

    jieba segments the runs of its `re_han_default` pattern (CJK letters, ASCII letters/digits,
    +#&._%-) one by one and yields everything between them character by character, whitespace
    included. That pattern never matches whitespace, so a text's tokens are the concatenation of
    its whitespace-separated pieces' tokens plus whitespace tokens, which _finish drops anyway
    (str.split and jieba's whitespace pattern both use Python's Unicode whitespace). Pieces repeat
    a lot (one per word in pre-segmented text, clauses in raw text), so their finished tokens are
    cached; the cache is cleared when it holds _JIEBA_CACHE_SIZE pieces, so memory stays flat.
    """
    lcut = jieba.lcut
    cache: dict[str, list[str]] = {}
    get = cache.get

    def tok_jieba(text: str) -> list[str]:
        pieces = text.split()
        parts = list(map(get, pieces))
        if None in parts:
            for j, part in enumerate(parts):
                if part is None:
                    part = parts[j] = _finish(lcut(pieces[j]), lowercase, min_len)
                    if len(cache) >= _JIEBA_CACHE_SIZE:
                        cache.clear()
                    cache[pieces[j]] = part
        return list(chain.from_iterable(parts))  # copies: a cached list is never handed out
    return tok_jieba


def make_tokenizer(spec: TokenizerSpec) -> Callable[[str], list[str]]:
    """A function text -> tokens for `spec`.

    Works on raw text and on text already segmented with spaces (the benchmark files): spaces
    always separate tokens, and the segmenters keep nearly every pre-segmented word whole.
    Japanese tokens are janome surface forms, not base forms: the Rakuten vocabulary is MeCab
    surfaces (作っ, 作ら, 作る are separate words), so surfaces match it (97% of its
    pre-segmented words survive as one token, against 75% with base forms).
    """
    kind = spec.kind
    lowercase = bool(spec.lowercase)
    min_len = max(1, int(spec.min_token_length))

    if kind == "regex":
        findall = _WORD_RE.findall
        if min_len == 1:  # every match has at least one character: no filter pass
            def tok_regex(text: str) -> list[str]:
                return findall(text.lower() if lowercase else text)
        else:
            def tok_regex(text: str) -> list[str]:
                return [t for t in findall(text.lower() if lowercase else text) if len(t) >= min_len]
        return tok_regex

    if kind == "whitespace":
        def tok_ws(text: str) -> list[str]:
            return _finish(text.split(), lowercase, min_len)
        return tok_ws

    if kind == "jieba":
        return _jieba_tokenizer(_get_jieba(), lowercase, min_len)

    if kind == "janome":
        janome = _get_janome()

        def tok_janome(text: str) -> list[str]:
            # janome's lattice state is per call, but nothing documents the instance as
            # thread-safe; it is pure Python, so the lock costs no parallelism under the GIL.
            with _janome_lock:
                pieces = list(janome.tokenize(text, wakati=True))
            return _finish(pieces, lowercase, min_len)
        return tok_janome

    raise XtmError(f"unknown tokenizer kind {kind!r}: expected one of {', '.join(KINDS)}",
                   field="tokenizer")

"""Text -> tokens, shared by training and the torch-free runtime so both see the same words.

Imports stay light: jieba and janome are imported (and their dictionaries loaded) only when a
tokenizer of that kind is first made, once per process, under a lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import marshal
import os
import re
import stat
import tempfile
import threading
import warnings
from collections.abc import Callable
from itertools import chain
from pathlib import Path
from typing import Any

from xtm.corpus import TokenizerSpec
from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.paths import cache_dir

__all__ = ["KINDS", "default_tokenizer_spec", "make_tokenizer", "missing_tokenizer"]

KINDS = ("whitespace", "regex", "jieba", "janome")
# Kinds whose segmenter is an optional install (the base install serves other languages without
# them): kind -> (module, language, extra that installs it).
_OPTIONAL = {"jieba": ("jieba", "Chinese", "zh"), "janome": ("janome", "Japanese", "ja")}

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


def _not_installed(kind: str, cause: BaseException | None = None) -> XtmError:
    module, language, extra = _OPTIONAL[kind]
    why = f" ({cause})" if cause is not None and not isinstance(cause, ModuleNotFoundError) else ""
    return XtmError(f"{language} text is tokenized with {module}, which is not installed{why}: "
                    f'pip install "xtm[{extra}]"')


def missing_tokenizer(kind: str) -> XtmError | None:
    """The error to raise when `kind`'s segmenter is not installed (None: it is, or none is needed).

    Looked up without importing it (janome's dictionary costs seconds), so a bundle can be checked
    when it is loaded rather than at its first Japanese document."""
    if kind not in _OPTIONAL:
        return None
    import importlib.util

    try:
        found = importlib.util.find_spec(_OPTIONAL[kind][0]) is not None
    except (ImportError, ValueError):  # a module object without a spec (set by hand in sys.modules)
        found = False
    return None if found else _not_installed(kind)


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
                    try:
                        import jieba
                    except ImportError as e:
                        raise _not_installed("jieba", e) from e
                # jieba logs "Building prefix dict ..." to stderr on first use; users need not see it.
                jieba.setLogLevel(logging.WARNING)
                logging.getLogger("jieba").setLevel(logging.WARNING)
                _initialize_jieba(jieba)
                _jieba = jieba
    return _jieba


# -- jieba's prefix dictionary, cached by us ---------------------------------------------------------
#
# Building jieba's prefix dictionary from its word list costs 2-3 s of every cold start, so it is
# cached. jieba's own cache is a marshal file it trusts blindly, by default in the shared temp
# directory (/tmp, where anyone can plant one); a planted or edited cache changed segmentation,
# and so every zh topic, silently. So xtm keeps the cache itself, in its cache directory:
#   - keyed: the name holds jieba's version, Python's marshal format and a digest of the dictionary,
#     so a cache built from another dictionary or jieba is never read;
#   - validated before marshal sees a byte: a header with the SHA-256 of the payload, a file owned by
#     this user and not writable by others; anything else is rebuilt (with a warning) and replaced.
# The checksum catches corruption and tampering that does not recompute it (jieba's own format
# planted in our place, edited bytes). A process that can rewrite files with this user's rights can
# also rewrite the installed packages, so nothing stronger is attempted. With no writable cache
# directory nothing is cached: never the shared temp directory.

_JIEBA_CACHE_MAGIC = b"xtm-jieba-cache 1 sha256="


def _initialize_jieba(jieba: Any) -> None:
    """Give jieba's default tokenizer its prefix dictionary, from our validated cache or rebuilt."""
    dt = jieba.dt
    with dt.get_dict_file() as f:
        dictionary = f.read()
    key = hashlib.sha256(dictionary).hexdigest()[:16]
    path = cache_dir() / f"jieba-{jieba.__version__}-m{marshal.version}-{key}.cache"
    loaded = _read_jieba_cache(path)
    if loaded is None:
        loaded = dt.gen_pfdict(io.BytesIO(dictionary))
        _write_jieba_cache(path, loaded)
    # What jieba.Tokenizer.initialize sets; its own (unchecked) cache is then never consulted.
    dt.FREQ, dt.total = loaded
    dt.initialized = True


def _read_jieba_cache(path: Path) -> tuple[dict[str, int], int] | None:
    """The cached (prefix dict, total), or None when absent or not to be trusted (then a warning)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None  # absent (or unreadable directory): build it
    problem = None
    if not stat.S_ISREG(st.st_mode):
        problem = "is not a regular file"
    elif hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        problem = "belongs to another user"
    elif st.st_mode & stat.S_IWOTH:
        problem = "is writable by other users"
    else:
        try:
            data = path.read_bytes()
        except OSError as e:
            problem = f"cannot be read ({e.strerror})"
        else:
            head, _, payload = data.partition(b"\n")
            digest = hashlib.sha256(payload).hexdigest().encode()
            if not head.startswith(_JIEBA_CACHE_MAGIC) or head[len(_JIEBA_CACHE_MAGIC):] != digest:
                problem = "failed its checksum"
            else:
                try:
                    freq, total = marshal.loads(payload)
                    if isinstance(freq, dict) and isinstance(total, int):
                        return freq, total
                except (ValueError, EOFError, TypeError):
                    pass
                problem = "does not hold a prefix dictionary"
    warnings.warn(f"xtm: jieba's dictionary cache {path} {problem}; not used, rebuilding it", RuntimeWarning,
                  stacklevel=4)
    return None


def _write_jieba_cache(path: Path, loaded: tuple[dict[str, int], int]) -> None:
    """Best effort: a cache that cannot be written costs the next cold start 2-3 s, nothing else.

    Not xtm.atomic.atomic_open: that follows a symlink at the path and writes its target, and a
    symlink where our cache belongs is exactly what must be replaced, never written through.
    """
    payload = marshal.dumps(loaded)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(_JIEBA_CACHE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)  # replaces a file or a link in place, atomically
        tmp = None
    except OSError:
        pass
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _get_janome() -> Any:
    global _janome
    if _janome is None:
        with _lock:
            if _janome is None:
                try:
                    from janome.tokenizer import Tokenizer
                except ImportError as e:
                    raise _not_installed("janome", e) from e

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

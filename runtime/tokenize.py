"""Text -> tokens, shared by training and the torch-free runtime so both see the same words.

Imports stay light: jieba and janome are imported (and their dictionaries loaded) only when a
tokenizer of that kind is first made, once per process, under a lock.

A bundle records its tokenizer kind; which implementation serves that kind is this process's choice
(`SEGMENTERS`: `use_segmenters`, xtm-infer --segmenters; auto and reference also from the environment
variable XTM_SEGMENTERS), measured in benchmarks/raw_text_throughput.py and docs/benchmarks.md:

- "auto" (default): kind jieba runs its blocks of Han characters and ASCII letters/digits through
  rjieba (jieba-rs, the same dictionary and algorithm in Rust, 7x jieba's speed) when it is
  installed, every other block through jieba itself. The bags of words, and so theta, are
  jieba's; the token order may differ only where two segmentations score exactly the same, which
  are then the same words in another order (1 document in 50,000 ECNews documents). Kind janome is
  janome.
- "reference": jieba and janome in Python for every block: the tokens, in order, of earlier releases.
- "fast": "auto", and kind janome served by MeCab (fugashi with IPAdic, the dictionary janome
  ships; 40x janome's speed). Not the same tokens: 99% of Rakuten documents come out identical,
  0.1% of tokens differ (janome's unknown-word grouping), so it is an explicit opt-in of a process
  that serves bundles (never from the environment, which training reads too).

Kind "mecab" (fugashi + IPAdic surfaces, `pip install "xtm[ja-mecab]"`) is MeCab as a bundle's own
recorded tokenizer, for models trained with it.

Kind "kiwi" (Korean from token rules 3; `pip install "xtm[ko]"`) keeps Korean's content words in their dictionary
form, without particles and endings: xtm.runtime.korean.

Kind "words" (every other language since 2026-12-07) cuts runs of letters and digits with the combining marks
inside them: Indic vowel signs and viramas, Arabic harakat, Thai and Hebrew vowels. Kind "regex", what runs and
bundles made before used, leaves the marks out and so cut "बाज़ार" into 'ब', 'ज', 'र' and Tamil, Thai or
diacritised Arabic likewise; it is kept as it was, so a bundle trained with it serves the words it was trained on.
"""

from __future__ import annotations

import hashlib
import io
import marshal
import os
import re
import stat
import threading
import unicodedata
import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from xtm.atomic import NotRegularFileError, open_directory, open_entry, replacing_at
from xtm.config import TOKEN_RULES
from xtm.corpus import TokenizerSpec
from xtm.errors import XtmError
from xtm.languages import normalize_lang
from xtm.paths import cache_dir
from xtm.runtime import korean

__all__ = ["KINDS", "REWRITING_KINDS", "SEGMENTERS", "SEGMENTERS_ENV", "TEXT_NORMALIZATION", "default_tokenizer_spec",
           "make_tokenizer", "missing_tokenizer", "normalized_token", "segmenter_drift", "segmenter_mode",
           "segmenter_of", "segmenter_release", "taken_user_words", "use_segmenters", "user_words_problem",
           "with_segmenter"]

KINDS = ("whitespace", "words", "regex", "jieba", "janome", "mecab", "kiwi")
# Kinds whose tokens are not always pieces of the text: Kiwi writes verbs and adjectives in their dictionary form
# (만났다 -> 만나다) and drops particles (학교에서 -> 학교). A list's word (stopwords) is used only where such a
# kind reads it as itself (xtm.trainer.data.stopwords).
REWRITING_KINDS = frozenset({"kiwi"})
# The Unicode normal form every tokenizer puts text in (make_tokenizer) and the runtime reads vocabularies
# in; recorded where tokens are stored (shard settings).
TEXT_NORMALIZATION = "NFC"
# Kinds whose segmenter is an optional install (the base install serves other languages without
# them): kind -> (module, language, extra that installs it).
_OPTIONAL = {"jieba": ("jieba", "Chinese", "zh"), "janome": ("janome", "Japanese", "ja"),
             "mecab": ("fugashi", "Japanese", "ja-mecab"), "kiwi": (korean.MODULE, "Korean", "ko")}
# Modules a kind needs besides its segmenter (MeCab's dictionary and Kiwi's model are packages of their own).
_ALSO_NEEDED = {"mecab": ("ipadic",), "kiwi": (korean.MODEL_MODULE,)}
# The distributions whose release decides a segmenting kind's tokens (another dictionary or model cuts words
# otherwise, and a bundle's vocabulary then misses them): recorded beside the tokenizer settings as "segmenter"
# (config.json, a bundle's manifest) and compared where a tokenizer is made for a bundle (segmenter_drift). rjieba
# is not named: it cuts as jieba does (tests/test_tokenize.py).
_RELEASES = {"jieba": ("jieba",), "janome": ("janome",), "mecab": ("fugashi", "ipadic"),
             "kiwi": (korean.MODULE, korean.MODEL_MODULE)}
# Which implementation serves a kind (module docstring). The environment variable may say auto or
# reference (the same bags of words: safe for training too); fast changes tokens, so only a process
# that serves bundles asks for it, with use_segmenters (xtm-infer --segmenters fast): a shell-wide
# XTM_SEGMENTERS=fast would also reach xtm-train, which would then count MeCab's tokens into a model
# whose bundle says janome.
SEGMENTERS = ("auto", "reference", "fast")
SEGMENTERS_ENV = "XTM_SEGMENTERS"
_ENV_SEGMENTERS = ("auto", "reference")
_process_segmenters: str | None = None

# Runs of Unicode letters/digits: \w minus the underscore. Apostrophes and hyphens split words
# ("don't" -> "don", "t"); stopword lists carry the fragments. Kind "regex" (and jieba's block filter).
_WORD_RE = re.compile(r"[^\W_]+")
# Kind "words": text without a combining mark cuts the same under _WORD_RE, at a third to a half of the cost of the
# pattern with marks (whose 299 ranges `re` scans per character). Which texts have one is a set test, a quarter
# of a findall's cost: a curly apostrophe or a dash no longer sends English to the slow pattern.
_FIRST_MARK = 0x300  # no combining mark lies below U+0300; the last are variation selectors, up to U+E01EF
_LAST_MARK = 0xE01EF


@cache
def _combining_marks() -> tuple[frozenset[str], re.Pattern[str]]:
    """The combining marks (categories Mn, Mc, Me; `re` has no class for them, so they come from this Python's
    Unicode tables once, about 0.1 s) and kind "words"' pattern: a letter or digit, then letters, digits and
    marks."""
    category = unicodedata.category
    marks = frozenset(ch for ch in map(chr, range(_FIRST_MARK, _LAST_MARK + 1)) if category(ch)[0] == "M")
    ranges: list[list[int]] = []
    for cp in sorted(map(ord, marks)):
        if ranges and ranges[-1][1] == cp - 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    marks_class = "".join(f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)
    return marks, re.compile(rf"[^\W_](?:[^\W_]|[{marks_class}])*")

# jieba's memo of blocks (_jieba_tokenizer), per tokenizer. It is for the blocks that come again: words of
# pre-segmented text and short clauses between punctuation (98% of ECNews's raw blocks have at most 64 characters).
# A longer block, a document without punctuation above all, hardly ever comes again, and it held its text and its
# tokens, about 45 bytes a character, until the memo filled: a service fed 20,000-character documents kept about
# 0.9 MB a document, on to tens of GB. So a longer block is segmented and not remembered, and the characters held are
# bounded too: at most _JIEBA_CACHE_SIZE blocks and _JIEBA_CACHE_CHARS characters, under 60 MB whatever the blocks
# (typical 20-character clauses reach both bounds at about the same point).
_JIEBA_CACHE_SIZE = 1 << 16
_JIEBA_CACHE_CHARS = 1 << 20
_JIEBA_CACHE_BLOCK = 64

_lock = threading.Lock()
_jieba: Any = None
_janome: Any = None
_janome_lock = threading.Lock()
_mecab: Any = None
_mecab_lock = threading.Lock()
_NO_MODULE: Any = object()  # an accelerator looked for and not installed
_rjieba: Any = None


def default_tokenizer_spec(lang: str, rules: int = TOKEN_RULES, user_words: tuple[str, ...] = ()) -> TokenizerSpec:
    """The tokenizer used for `lang` unless told otherwise, under token `rules` (xtm.config.TOKEN_RULES): jieba
    (zh), janome (ja), kiwi (ko; words under rules 1-2), words (others; regex under rules 1); with those of
    `user_words` (xtm-train --user-words) its kind keeps whole (`taken_user_words`)."""
    code = normalize_lang(lang)
    segmenters = {"zh": "jieba", "ja": "janome", "ko": "kiwi"} if rules >= 3 else {"zh": "jieba", "ja": "janome"}
    kind = segmenters.get(code, "regex" if rules < 2 else "words")
    return TokenizerSpec(lang=code, kind=kind, user_words=taken_user_words(kind, user_words))


MAX_USER_WORDS = 1_000_000  # a word list is at most 16 MiB (xtm.text_files.MAX_WORD_LIST_BYTES)
MAX_USER_WORD_CHARS = 100


def user_words_problem(words: Any) -> str | None:
    """Why `words` cannot be a list of user words (xtm-train --user-words; a bundle's tokenizer `user_words`), or
    None: at most MAX_USER_WORDS single words of printable characters, each at most MAX_USER_WORD_CHARS long. One
    check for training and the manifest: a list training took once made a run no export could write (a BOM in the
    middle of a concatenated file, a 102-letter word)."""
    if not isinstance(words, (list, tuple)):
        return f"must be a list of words, got {type(words).__name__}"
    if len(words) > MAX_USER_WORDS:
        return f"must be at most {MAX_USER_WORDS:,} words, got {len(words):,}"
    for w in words:
        if not (isinstance(w, str) and 0 < len(w) <= MAX_USER_WORD_CHARS and len(w.split()) == 1
                and w.isprintable()):
            return (f"must be single words of at most {MAX_USER_WORD_CHARS} printable characters, got "
                    f"{str(w)[:60]!r}")
    return None


def taken_user_words(kind: str, words: tuple[str, ...]) -> tuple[str, ...]:
    """The words of a user's list (xtm-train --user-words) tokenizer `kind` keeps whole, in NFC and in order: Kiwi
    takes those with Hangul (as nouns); the other kinds none (jieba, janome and MeCab would each need their own
    dictionary format, and a words kind already keeps every run of letters whole)."""
    if kind != "kiwi":
        return ()
    nfc = (unicodedata.normalize(TEXT_NORMALIZATION, w.strip()) for w in words)
    return tuple(dict.fromkeys(w for w in nfc if korean.has_hangul(w) and len(w.split()) == 1))


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
    return None if all(map(_installed, (_OPTIONAL[kind][0], *_ALSO_NEEDED.get(kind, ())))) else _not_installed(kind)


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module object without a spec (set by hand in sys.modules)
        return False


def segmenter_mode(mode: str | None = None) -> str:
    """`mode`, else the process's (`use_segmenters`), else XTM_SEGMENTERS (auto or reference), else
    "auto"; XtmError for anything else."""
    if mode is None:
        mode = _process_segmenters
    if mode is not None:
        value = str(mode).strip().lower()
        if value not in SEGMENTERS:
            raise XtmError(f"segmenters must be one of {', '.join(SEGMENTERS)}, got {value!r}")
        return value
    value = (os.environ.get(SEGMENTERS_ENV) or "auto").strip().lower()
    if value not in _ENV_SEGMENTERS:
        why = (": fast changes tokens, so it is asked for by the process that serves bundles (xtm-infer "
               "--segmenters fast, xtm.runtime.tokenize.use_segmenters('fast')), never by the environment, "
               "which training reads too" if value == "fast" else "")
        raise XtmError(f"environment variable {SEGMENTERS_ENV} must be one of {', '.join(_ENV_SEGMENTERS)}, "
                       f"got {value!r}{why}")
    return value


def use_segmenters(mode: str | None) -> None:
    """This process's choice of segmenters (one of SEGMENTERS; None: back to XTM_SEGMENTERS/auto), for
    tokenizers made from now on (a loaded TopicModel keeps those it has made)."""
    global _process_segmenters
    _process_segmenters = None if mode is None else segmenter_mode(mode)


def segmenter_of(kind: str, mode: str | None = None) -> str:
    """The implementation that serves tokenizer `kind` under `mode` (see the module docstring):
    "jieba", "jieba+rjieba", "janome", "mecab" or the kind itself for regex/whitespace."""
    mode = segmenter_mode(mode)
    if kind == "jieba":
        return "jieba" if mode == "reference" or _get_rjieba() is None else "jieba+rjieba"
    if kind == "janome" and mode == "fast":
        return "mecab"
    return kind


def segmenter_release(kind: str) -> str | None:
    """The releases of the distributions that segment `kind` here ("kiwipiepy 0.24.1, kiwipiepy_model 0.24.0"; one
    not installed: "name none"); None for a kind without a segmenter (words, regex, whitespace)."""
    names = _RELEASES.get(kind)
    if names is None:
        return None
    from importlib import metadata

    def release(name: str) -> str:
        try:
            return f"{name} {metadata.version(name)}"
        except metadata.PackageNotFoundError:
            return f"{name} none"
    return ", ".join(map(release, names))


def with_segmenter(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """A tokenizer setting (TokenizerSpec.to_dict) with the releases that segment it here (`segmenter`), as a run
    records it."""
    release = segmenter_release(tokenizer["kind"])
    return {**tokenizer, "segmenter": release} if release is not None else dict(tokenizer)


def segmenter_drift(tokenizer: dict[str, Any], mode: str | None = None) -> str | None:
    """What to tell a user whose process would cut `tokenizer`'s language with other segmenter releases than the
    run recorded (None: the same, nothing recorded, or another implementation asked for with `mode` fast)."""
    recorded, kind = tokenizer.get("segmenter"), tokenizer.get("kind")
    if not isinstance(recorded, str) or not isinstance(kind, str) or segmenter_of(kind, mode) not in (kind,
                                                                                                      "jieba+rjieba"):
        return None
    now = segmenter_release(kind)
    if now is None or now == recorded:
        return None
    return (f"'{tokenizer.get('lang')}' was tokenized with {recorded} when the model was trained; this process has "
            f"{now}: words may be cut otherwise and miss the vocabulary (install those releases to serve it as "
            "trained)")


def _has_word_char(tok: str) -> bool:
    return _WORD_RE.search(tok) is not None


def _get_jieba() -> Any:
    """xtm's own jieba.Tokenizer on jieba's dictionary: its `lcut` cuts as jieba.lcut in a process that changed
    nothing in jieba.

    Never jieba's process-wide tokenizer (jieba.dt, behind jieba.lcut and jieba.add_word): that one belongs to
    whatever application xtm runs in. xtm loading its dictionary into it dropped the application's add_word
    words, and the application's words (or its set_dictionary) changed xtm's bags of words, and so its topics.
    jieba's logger is left as it is too: this tokenizer is handed its prefix dictionary already initialised, so
    jieba's "Building prefix dict" messages, which xtm silenced by lowering the logger for the whole process,
    are never logged. One thing jieba shares between its tokenizers remains: a word an application deletes
    (jieba.del_word, add_word with frequency 0) is split into characters by jieba's HMM for every tokenizer
    (jieba.finalseg's module-wide set), so where the HMM recognises that very word xtm's tokens follow it.
    """
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
                _jieba = _initialize_jieba(jieba)
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


def _initialize_jieba(jieba: Any) -> Any:
    """A new jieba.Tokenizer on jieba's own dictionary (never one an application set on jieba.dt), with its prefix
    dictionary from our validated cache or rebuilt."""
    dt = jieba.Tokenizer()
    with dt.get_dict_file() as f:
        dictionary = f.read()
    key = hashlib.sha256(dictionary).hexdigest()[:16]
    # In a folder of its own inside the cache, as every cache of xtm's (a link there is followed, as for
    # embeddings/: a user may have moved it to a bigger disk; the entry itself never is).
    name = f"jieba-{jieba.__version__}-m{marshal.version}-{key}.cache"
    path = cache_dir() / "jieba" / name
    loaded = _read_jieba_cache(path)
    if loaded is None:
        loaded = dt.gen_pfdict(io.BytesIO(dictionary))
        _write_jieba_cache(path, loaded)
        _remove_old_jieba_cache(cache_dir() / name)
    # What jieba.Tokenizer.initialize sets; its own (unchecked) cache is then never consulted, and nothing logged.
    dt.FREQ, dt.total = loaded
    dt.initialized = True
    return dt


def _read_jieba_cache(path: Path) -> tuple[dict[str, int], int] | None:
    """The cached (prefix dict, total), or None when absent or not to be trusted (then a warning). Opened
    relative to the cache directory without following a link (xtm.atomic.open_directory) and checked on the
    descriptor read, so nothing swapped in after a check is read."""
    try:
        dfd = open_directory(path.parent, follow=True)
    except OSError:
        return None  # absent, not a directory, unreadable: build it (and not cache it)
    try:
        fd = open_entry(dfd, path.name)  # a regular file, never through a link; a FIFO or device never opened
    except FileNotFoundError:
        return None
    except NotRegularFileError as e:
        fd, problem = None, f"is {e.kind}, not a regular file"
    except OSError as e:
        fd, problem = None, f"cannot be read ({e.strerror})"
    finally:
        os.close(dfd)
    if fd is not None:
        with os.fdopen(fd, "rb") as f:
            problem = _jieba_cache_problem(os.fstat(fd))
            if problem is None:
                try:
                    data = f.read()
                except OSError as e:
                    problem = f"cannot be read ({e.strerror})"
                else:
                    loaded = _jieba_cache_payload(data)
                    if isinstance(loaded, tuple):
                        return loaded
                    problem = loaded
    warnings.warn(f"xtm: jieba's dictionary cache {path} {problem}; not used, rebuilding it", RuntimeWarning,
                  stacklevel=4)
    return None


def _jieba_cache_problem(st: os.stat_result) -> str | None:
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return "belongs to another user"
    if st.st_mode & stat.S_IWOTH:
        return "is writable by other users"
    return None


def _jieba_cache_payload(data: bytes) -> tuple[dict[str, int], int] | str:
    """(prefix dict, total) from a cache file's bytes, or what is wrong with them. The checksum is checked
    before marshal sees a byte."""
    head, _, payload = data.partition(b"\n")
    digest = hashlib.sha256(payload).hexdigest().encode()
    if not head.startswith(_JIEBA_CACHE_MAGIC) or head[len(_JIEBA_CACHE_MAGIC):] != digest:
        return "failed its checksum"
    try:
        freq, total = marshal.loads(payload)
        if isinstance(freq, dict) and isinstance(total, int):
            return freq, total
    except (ValueError, EOFError, TypeError):
        pass
    return "does not hold a prefix dictionary"


def _write_jieba_cache(path: Path, loaded: tuple[dict[str, int], int]) -> None:
    """Best effort: a cache that cannot be written costs the next cold start 2-3 s, nothing else.

    xtm.atomic.replacing_at, as every cache: a symlink where our cache belongs is replaced, never written
    through (atomic_open, for users' outputs, would follow it)."""
    payload = marshal.dumps(loaded)
    try:
        dfd = open_directory(path.parent, create=True, follow=True)
    except OSError:
        return
    try:
        with replacing_at(dfd, path.name) as f:
            os.fchmod(f.fileno(), 0o644)  # never writable by others, whatever the umask: the reader refuses that
            f.write(_JIEBA_CACHE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n")
            f.write(payload)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _remove_old_jieba_cache(path: Path) -> None:
    """The same cache where xtm kept it until 2026-12-07 (the cache directory's root), removed once the new one
    is built: only a regular file that starts with our header (provably ours; anything else stays)."""
    try:
        dfd = open_directory(path.parent, follow=True)
    except OSError:
        return
    try:
        fd = open_entry(dfd, path.name)
        try:
            ours = os.read(fd, len(_JIEBA_CACHE_MAGIC)) == _JIEBA_CACHE_MAGIC
        finally:
            os.close(fd)
        if ours:
            os.unlink(path.name, dir_fd=dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


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


def _get_rjieba() -> Any:
    """rjieba (jieba-rs), or None when it is not installed: an accelerator, never required."""
    global _rjieba
    if _rjieba is None:
        with _lock:
            if _rjieba is None:
                try:
                    import rjieba
                except ImportError:
                    _rjieba = _NO_MODULE
                else:
                    _rjieba = rjieba
    return None if _rjieba is _NO_MODULE else _rjieba


def _get_mecab() -> Any:
    """A MeCab tagger (fugashi) on IPAdic that writes surfaces separated by spaces."""
    global _mecab
    if _mecab is None:
        with _lock:
            if _mecab is None:
                missing = missing_tokenizer("mecab")
                if missing is not None:
                    raise missing
                try:
                    import fugashi
                    import ipadic
                except ImportError as e:
                    raise _not_installed("mecab", e) from e
                _mecab = fugashi.GenericTagger(ipadic.MECAB_ARGS + " -Owakati")
    return _mecab


# MeCab reads C strings: a NUL ends the text there (the rest was silently lost) and lone surrogates
# cannot be encoded; both become spaces, which separate tokens anyway.
_MECAB_UNSAFE = re.compile("[\x00\ud800-\udfff]")


def _mecab_tokenizer(lowercase: bool, min_len: int) -> Callable[[str], list[str]]:
    tagger = _get_mecab()

    def tok_mecab(text: str) -> list[str]:
        text = _MECAB_UNSAFE.sub(" ", text)
        with _mecab_lock:  # one tagger per process; MeCab's lattice is per call but undocumented as shared
            pieces = tagger.parse(text)
        return _finish(pieces.split(), lowercase, min_len)
    return tok_mecab


def _finish(tokens: Any, lowercase: bool, min_len: int) -> list[str]:
    """Strip, lowercase, drop whitespace/pure punctuation and too-short tokens."""
    out: list[str] = []
    for tok in tokens:
        tok = tok.strip()
        if not tok or len(tok) < min_len or not _has_word_char(tok):
            continue
        out.append(tok.lower() if lowercase else tok)
    return out


# jieba's tokens are the concatenation of those of its blocks: runs of `re_han_default` (CJK letters
# U+4E00-U+9FD5, ASCII letters and digits, +#&._%-), each segmented alone, and everything between
# them, yielded character by character (whitespace runs as one token), which _finish reduces to the
# characters that have a letter or digit. Blocks of only CJK letters and ASCII letters/digits go to
# rjieba when it serves: jieba-rs segments them with the same dictionary, DAG and HMM (the same bags
# of words on every ECNews document and on 26,000 random mixes of dictionary words and ASCII, tests
# in tests/test_tokenize.py). Blocks with +#&._%- stay with jieba: jieba-rs keeps "e-mail" or
# "covid-19" whole where jieba splits them.
_RJIEBA_BLOCK = re.compile("[\u4E00-\u9FD5a-zA-Z0-9]+").fullmatch
# jieba 0.42's `re_han_default`, copied so that the rjieba path never imports jieba (a test checks
# they are the same pattern).
_JIEBA_BLOCKS = re.compile("([\u4E00-\u9FD5a-zA-Z0-9+#&\\._%\\-]+)", re.U)


def _jieba_tokenizer(lowercase: bool, min_len: int, rjieba: Any) -> Callable[[str], list[str]]:
    """_finish(jieba.lcut(text)) block by block (see above), memoised per block: the same tokens.

    Blocks repeat a lot (words in pre-segmented text, clauses in raw text), so the finished tokens of
    those of at most _JIEBA_CACHE_BLOCK characters are cached; the cache is cleared when it would hold
    more than _JIEBA_CACHE_SIZE blocks or _JIEBA_CACHE_CHARS characters, so memory stays flat (see
    there). With `rjieba`, plain blocks are segmented by it, and jieba (its dictionary costs most of a
    cold start) is loaded only when a block needs it.
    """
    split = _JIEBA_BLOCKS.split
    plain = _RJIEBA_BLOCK if rjieba is not None else None
    fast_cut = rjieba.cut if rjieba is not None else None
    cache: dict[str, list[str]] = {}
    get = cache.get
    # Characters of the blocks in `cache`. Threads sharing the tokenizer may miscount it by a block's length when
    # they race on a clear (no lock on the hot path); the next clear sets it right.
    held = 0

    def segment(block: str) -> list[str]:
        if plain is not None and plain(block):
            # Every character of a plain block is a letter or digit, so each token is already what
            # _finish keeps: only case and length are left to apply (and cost a pass only if needed).
            toks = fast_cut(block)
            if lowercase and block.lower() != block:
                toks = [t.lower() for t in toks]
            return toks if min_len == 1 else [t for t in toks if len(t) >= min_len]
        return _finish(_get_jieba().lcut(block), lowercase, min_len)

    def tok_jieba(text: str) -> list[str]:
        nonlocal held
        out: list[str] = []
        for i, part in enumerate(split(text)):
            if not part:
                continue
            if not i % 2:  # between blocks: single characters and whitespace
                out += _finish(part, lowercase, min_len)
                continue
            if len(part) > _JIEBA_CACHE_BLOCK:  # seen once, as a rule: not worth its memory (see there)
                out += segment(part)
                continue
            toks = get(part)
            if toks is None:
                toks = segment(part)
                if len(cache) >= _JIEBA_CACHE_SIZE or held + len(part) > _JIEBA_CACHE_CHARS:
                    cache.clear()
                    held = 0
                cache[part] = toks
                held += len(part)
            out += toks  # copies: a cached list is never handed out
        return out
    return tok_jieba


def normalized_token(word: str, spec: TokenizerSpec) -> str:
    """`word` as a token of `spec` would be written (NFC, lowercased if the spec lowercases): for comparing a word
    with what the tokenizer made of it."""
    word = unicodedata.normalize(TEXT_NORMALIZATION, word)
    return word.lower() if spec.lowercase else word


def make_tokenizer(spec: TokenizerSpec, mode: str | None = None) -> Callable[[str], list[str]]:
    """A function text -> tokens for `spec`, served by the implementation `mode` picks (one of
    SEGMENTERS; default XTM_SEGMENTERS, else "auto": see the module docstring).

    The text is put in Unicode NFC first: the same word typed on another keyboard or copied from
    a PDF may come decomposed ("é" as "e" + U+0301), and a word pattern does not match a combining
    mark, so decomposed words split at every accent ("naïve" -> "nai", "ve") and match nothing in
    the vocabulary. The runtime reads vocabularies in NFC too (xtm.runtime.model).

    Works on raw text and on text already segmented with spaces (the benchmark files): spaces
    always separate tokens, and the segmenters keep nearly every pre-segmented word whole.
    Japanese tokens are janome surface forms, not base forms: the Rakuten vocabulary is MeCab
    surfaces (作っ, 作ら, 作る are separate words), so surfaces match it (97% of its
    pre-segmented words survive as one token, against 75% with base forms).
    """
    tokenize = _segmenting_tokenizer(spec, mode)

    def tok_nfc(text: str) -> list[str]:
        # normalize() returns its argument when a quick check says it is already NFC (nearly always).
        return tokenize(unicodedata.normalize(TEXT_NORMALIZATION, text))
    return tok_nfc


def _segmenting_tokenizer(spec: TokenizerSpec, mode: str | None) -> Callable[[str], list[str]]:
    kind = spec.kind
    lowercase = bool(spec.lowercase)
    min_len = max(1, int(spec.min_token_length))

    if kind == "words":
        marks, pattern = _combining_marks()
        plain, marked, no_mark = _WORD_RE.findall, pattern.findall, marks.isdisjoint

        def tok_words(text: str) -> list[str]:
            if lowercase:
                # A Turkish capital İ lowers to i + U+0307 (a mark): "İlk" and "ilk" would be two words.
                text = (text.replace("\u0130", "i") if "\u0130" in text else text).lower()
            found = plain(text) if text.isascii() or no_mark(set(text)) else marked(text)
            return found if min_len == 1 else [t for t in found if len(t) >= min_len]
        return tok_words

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
        missing = missing_tokenizer("jieba")
        if missing is not None:
            raise missing
        if segmenter_of("jieba", mode) == "jieba":
            _get_jieba()  # the dictionary now, not at the first document
            return _jieba_tokenizer(lowercase, min_len, None)
        return _jieba_tokenizer(lowercase, min_len, _get_rjieba())

    if kind == "mecab" or (kind == "janome" and segmenter_mode(mode) == "fast"):
        return _mecab_tokenizer(lowercase, min_len)

    if kind == "janome":
        janome = _get_janome()

        def tok_janome(text: str) -> list[str]:
            # janome's lattice state is per call, but nothing documents the instance as
            # thread-safe; it is pure Python, so the lock costs no parallelism under the GIL.
            with _janome_lock:
                pieces = list(janome.tokenize(text, wakati=True))
            return _finish(pieces, lowercase, min_len)
        return tok_janome

    if kind == "kiwi":
        missing = missing_tokenizer("kiwi")
        if missing is not None:
            raise missing
        return korean.korean_tokenizer(lowercase, min_len, lambda cause: _not_installed("kiwi", cause),
                                       spec.user_words)

    raise XtmError(f"unknown tokenizer kind {kind!r}: expected one of {', '.join(KINDS)}",
                   field="tokenizer")

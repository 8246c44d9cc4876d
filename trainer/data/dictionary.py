"""Bilingual dictionaries: read `source<TAB>target` files and link two vocabularies with them.

Some public dictionaries store one side Porter-stemmed (ch_en_dict.dat's English side reads
`certif`, `comput`). Matching such a side against plain vocabulary words finds a fraction of the
links (TopMost: 9,788 pairs on ECNews), so a side whose words look stemmed is matched through
the vocabulary's Porter stems as well as exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from functools import cache
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from xtm.corpus import Corpus, TokenizerSpec
from xtm.errors import XtmError
from xtm.text_files import read_text_file

__all__ = ["attach_links", "build_links", "is_latin_word", "porter_stemmer", "read_dictionary"]

# A dictionary side counts as stemmed when this share of its Latin words are fixed points of
# the Porter stemmer: 0.97 for ch_en_dict.dat's English side, 0.58 for MUSE's plain English.
_STEMMED_FIXED_POINT_SHARE = 0.85
_STEM_SAMPLE = 3000
_MIN_LATIN_WORDS = 20


# Bilingual dictionaries are a few MB (MUSE's full en-zh: 2 MB); a file past this is another kind of file.
MAX_DICTIONARY_BYTES = 256 << 20
_FORM = "`source<TAB>target`"


def read_dictionary(path: str | Path) -> list[tuple[str, str]]:
    """Word pairs of a bilingual dictionary file, in file order.

    One pair a line, `source<TAB>target` (or two words separated by spaces); blank lines and
    lines starting with `#` are skipped. Malformed lines are skipped with one warning; a file
    that cannot be read, is binary, or holds no pair at all raises XtmError.
    """
    p = Path(path)
    text = read_text_file(p, MAX_DICTIONARY_BYTES, "dictionary", _FORM)
    pairs, bad, first_bad = _parse_pairs(text)
    if not pairs:
        if first_bad is not None:
            why = _not_a_pair(text.split("\n")[first_bad - 1])
            raise XtmError(f"no valid `source<TAB>target` pair in the dictionary: {why} (this line is the first "
                           "that is not one)", path=p, line=first_bad)
        raise XtmError("the dictionary is empty: expected lines `source<TAB>target`", path=p)
    if bad:
        warnings.warn(f"{p}: skipped {bad} malformed line(s), first at line {first_bad}", stacklevel=2)
    return pairs


def _parse_pairs(text: str) -> tuple[list[tuple[str, str]], int, int | None]:
    """(pairs, malformed lines, first malformed line number); blank and comment lines are neither."""
    pairs: list[tuple[str, str]] = []
    bad = 0
    first_bad: int | None = None
    for lineno, line in enumerate(text.split("\n"), start=1):
        pair = _pair(line)
        if pair is not None:
            pairs.append(pair)
        elif line.strip() and not line.lstrip().startswith("#"):
            bad += 1
            if first_bad is None:
                first_bad = lineno
    return pairs, bad, first_bad


def _pair(line: str) -> tuple[str, str] | None:
    """The two words on a line, or None. A line with a tab is split at tabs only (words may hold
    spaces), before the comment rule applies: `#<TAB>x` reads as a pair."""
    if "\t" in line:
        # Trailing empty columns (`a<TAB>b<TAB>`) are harmless; anything else is not a pair.
        fields = [x.strip() for x in line.split("\t") if x.strip()]
    else:
        fields = [] if line.lstrip().startswith("#") else line.split()
    return (fields[0], fields[1]) if len(fields) == 2 else None


def _not_a_pair(line: str) -> str:
    """Why a line is no pair, as the user can fix it: MUSE-style scores in a third column, or a file whose lines
    end in CR alone (read as one line) were both "no valid pair at line 1"."""
    if "\r" in line.rstrip("\r"):
        return "its lines end in CR alone (classic Mac OS): save it with LF or CRLF line ends"
    if "\t" in line:
        n = sum(1 for x in line.split("\t") if x.strip())
        return f"{n} column{'s' if n != 1 else ''}, expected 2 (source<TAB>target)"
    n = len(line.split())
    return f"{n} word{'s' if n != 1 else ''} and no tab, expected 2 (source<TAB>target)"


def is_latin_word(w: str) -> bool:
    """A word of ASCII letters only: the words Porter stemming applies to."""
    return w.isascii() and w.isalpha()


def porter_stemmer() -> Any:
    """nltk's PorterStemmer (default NLTK_EXTENSIONS mode), or None when nltk is not installed."""
    try:
        from nltk.stem.porter import PorterStemmer
    except ImportError:
        return None
    return PorterStemmer()


def _looks_stemmed(words: set[str], stemmer: Any) -> bool:
    """Whether a dictionary side is Porter stems: nearly all its Latin words are stemmer fixed points."""
    latin = sorted(w for w in words if is_latin_word(w))
    if len(latin) < _MIN_LATIN_WORDS:
        return False
    step = max(1, len(latin) // _STEM_SAMPLE)
    sample = latin[::step]
    fixed = sum(stemmer.stem(w) == w for w in sample)
    return fixed / len(sample) >= _STEMMED_FIXED_POINT_SHARE


def _index(vocab: Sequence[str], stemmer: Any) -> dict[str, list[int]]:
    """Dictionary word -> vocabulary rows it matches: the word itself, lowercased, Porter stem."""
    out: dict[str, list[int]] = {}
    for i, w in enumerate(vocab):
        keys = {w, w.lower()}
        if stemmer is not None and is_latin_word(w):
            keys.add(stemmer.stem(w.lower()))
        for k in keys:
            out.setdefault(k, []).append(i)
    return out


Rewrite = Callable[[str], str | None]


def _lookup(index: dict[str, list[int]], word: str, rewrite: Rewrite | None) -> list[int] | None:
    """The rows `word` matches: as written, lowercased, or as the language's rewriting tokenizer writes it."""
    rows = index.get(word)
    if rows is None:
        rows = index.get(word.lower())
        if rows is None and rewrite is not None:
            written = rewrite(word)
            rows = index.get(written) if written is not None else None
    return rows


# Pairs that link no words, kept as examples in the run's statistics (a user diffing vocabularies by hand to find
# which of a dictionary's pairs matched nothing: a multi-word side, a word the vocabulary holds in another form).
UNMATCHED_SAMPLE = 10


def _match(pairs: Sequence[tuple[str, str]], src: dict[str, list[int]], tgt: dict[str, list[int]],
           rewrite_src: Rewrite | None = None, rewrite_tgt: Rewrite | None = None
           ) -> tuple[list[int], list[int], int, list[str]]:
    rows: list[int] = []
    cols: list[int] = []
    matched = 0
    unmatched: list[str] = []
    for s, t in pairs:
        r = _lookup(src, s, rewrite_src)
        c = _lookup(tgt, t, rewrite_tgt) if r is not None else None
        if r is None or c is None:
            if len(unmatched) < UNMATCHED_SAMPLE:
                unmatched.append(f"{s}\t{t}")
            continue
        matched += 1
        if len(r) == 1 and len(c) == 1:
            rows.append(r[0])
            cols.append(c[0])
        else:
            for i in r:
                for j in c:
                    rows.append(i)
                    cols.append(j)
    return rows, cols, matched, unmatched


def build_links(
    pairs: Sequence[tuple[str, str]],
    vocab_a: Sequence[str],
    vocab_b: Sequence[str],
    *,
    names: tuple[str, str] = ("a", "b"),
    rewrites: tuple[Rewrite | None, Rewrite | None] = (None, None),
) -> tuple[sp.csr_matrix, dict[str, Any]]:
    """Binary (V_a, V_b) float32 link matrix from dictionary pairs, plus matching statistics.

    The dictionary may run either way (source in language a or in b): both orientations are
    tried and the one linking more pairs wins. A vocabulary word matches a dictionary word
    exactly, lowercased, (on a dictionary side that looks Porter-stemmed) through its
    Porter stem, or as `rewrites` (per language: a word -> the one word its tokenizer writes, or None) gives it.
    `names` labels the two languages in the statistics and messages.
    Raises XtmError when no pair links the vocabularies (probably the wrong languages).
    """
    na, nb = names
    rw_a, rw_b = rewrites
    stemmer, src_stemmed, tgt_stemmed = _stemming(pairs, vocab_a, vocab_b)
    index = _Indexes(vocab_a, vocab_b, stemmer)
    # Orientation "a->b": the dictionary's source words are language a's.
    ra, ca, ma, ua = _match(pairs, index.get("a", src_stemmed), index.get("b", tgt_stemmed), rw_a, rw_b)
    rb, cb, mb, ub = _match(pairs, index.get("b", src_stemmed), index.get("a", tgt_stemmed), rw_b, rw_a)
    if mb > ma:
        rows, cols, matched, unmatched, orientation = cb, rb, mb, ub, f"{nb}->{na}"
        stemmed_sides = ([nb] if src_stemmed else []) + ([na] if tgt_stemmed else [])
    else:
        rows, cols, matched, unmatched, orientation = ra, ca, ma, ua, f"{na}->{nb}"
        stemmed_sides = ([na] if src_stemmed else []) + ([nb] if tgt_stemmed else [])
    if matched == 0:
        raise XtmError(f"the dictionary matches none of the vocabularies ({na}: {len(vocab_a)} words, "
                       f"{nb}: {len(vocab_b)} words): it is probably for other languages")
    m = _link_matrix(rows, cols, (len(vocab_a), len(vocab_b)))
    stats = {"pairs_read": len(pairs), "pairs_matched": matched, **_coverage(m, names),
             "orientation": orientation, "stemmed": bool(stemmed_sides), "stemmed_sides": stemmed_sides,
             "unmatched_sample": unmatched}
    return m, stats


def _coverage(m: sp.csr_matrix, names: tuple[str, str]) -> dict[str, Any]:
    na, nb = names
    return {"links": int(m.nnz),
            "words_covered": {na: int(np.count_nonzero(m.getnnz(axis=1))), nb: int(np.count_nonzero(m.getnnz(axis=0)))},
            "vocab_size": {na: m.shape[0], nb: m.shape[1]}}


def _stemming(pairs: Sequence[tuple[str, str]], vocab_a: Sequence[str],
              vocab_b: Sequence[str]) -> tuple[Any, bool, bool]:
    """(Porter stemmer or None, source side looks stemmed, target side looks stemmed)."""
    src_words = {s for s, _ in pairs}
    tgt_words = {t for _, t in pairs}
    stemmer = None
    if any(is_latin_word(w) for w in vocab_a) or any(is_latin_word(w) for w in vocab_b):
        stemmer = porter_stemmer()
        # Only where a stemmer was wanted and is missing: vocabularies without Latin words (zh and ja) need none,
        # and said "nltk is not installed" with nltk installed.
        if stemmer is None and any(is_latin_word(w) for w in list(tgt_words)[:1000] + list(src_words)[:1000]):
            warnings.warn("nltk is not installed: dictionary words are matched exactly, without Porter "
                          "stemming (install xtm[train])", stacklevel=3)
    src_stemmed = stemmer is not None and _looks_stemmed(src_words, stemmer)
    tgt_stemmed = stemmer is not None and _looks_stemmed(tgt_words, stemmer)
    return stemmer, src_stemmed, tgt_stemmed


class _Indexes:
    """Vocabulary indexes, built on first use: each only as stem-aware as the dictionary side it is
    matched against."""

    def __init__(self, vocab_a: Sequence[str], vocab_b: Sequence[str], stemmer: Any) -> None:
        self.vocabs = {"a": vocab_a, "b": vocab_b}
        self.stemmer = stemmer
        self.built: dict[tuple[str, bool], dict[str, list[int]]] = {}

    def get(self, which: str, stemmed: bool) -> dict[str, list[int]]:
        key = (which, stemmed)
        if key not in self.built:
            self.built[key] = _index(self.vocabs[which], self.stemmer if stemmed else None)
        return self.built[key]


def _link_matrix(rows: list[int], cols: list[int], shape: tuple[int, int]) -> sp.csr_matrix:
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float32),
                       (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))),
                      shape=shape, dtype=np.float32)
    m.sum_duplicates()
    m.data[:] = 1.0  # binary: a pair listed twice (or reached twice via stems) is still one link
    m.sort_indices()
    return m


def _rewrite(spec: TokenizerSpec | None) -> Rewrite | None:
    """For a language whose tokenizer rewrites words (Korean's writes dictionary forms and drops suffixes: 선생님
    "teacher" -> 선생, 사람들 "people" -> 사람), a dictionary word -> the one word the tokenizer makes of it (None
    when it makes several or none); None for other tokenizers, whose words match as written."""
    from xtm.runtime.tokenize import REWRITING_KINDS, make_tokenizer

    if spec is None or spec.kind not in REWRITING_KINDS:
        return None
    tokenize = make_tokenizer(spec)

    @cache
    def rewrite(word: str) -> str | None:
        cut = tokenize(word)
        return cut[0] if len(cut) == 1 else None
    return rewrite


def attach_links(corpus: Corpus, dict_path: Path) -> None:
    """Link every pair of the corpus's languages that the dictionary covers (`corpus.links`, and the
    matching statistics in `corpus.info["links"]`); XtmError when it covers none.

    The in-memory loader and the out-of-core evaluation corpus both link through here.
    """
    pairs = read_dictionary(dict_path)
    stats_all: dict[str, Any] = {}
    rewrites = {lc.lang: _rewrite(lc.tokenizer) for lc in corpus.languages}
    for a, b in combinations(corpus.languages, 2):
        try:
            m, stats = build_links(pairs, a.vocab, b.vocab, names=(a.lang, b.lang),
                                   rewrites=(rewrites[a.lang], rewrites[b.lang]))
        except XtmError:
            continue  # this pair of languages is not the dictionary's; others may be
        corpus.links[(a.lang, b.lang)] = m
        stats_all[f"{a.lang}-{b.lang}"] = stats
    if not stats_all:
        raise XtmError(f"the dictionary matches none of the vocabularies "
                       f"({', '.join(corpus.langs)}): it is probably for other languages", path=dict_path)
    corpus.info["dict"] = str(dict_path)
    corpus.info["links"] = stats_all

"""The rules that turn JSONL documents into a corpus, shared by both ways of building one.

The in-memory loader (xtm.trainer.data.loading) and the out-of-core preprocessor
(xtm.trainer.data.sharding) read the same documents (xtm.trainer.data.jsonl) and decide here,
with the same code, which languages are kept and in what order, whether labels are used, which
documents are test documents, and what `corpus.info` says: so a corpus that fits in memory comes
out identical either way. The vocabulary rule is xtm.trainer.data.vocab_rules.
"""

from __future__ import annotations

import os
import sys
import unicodedata
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xtm.config import Preprocessing
from xtm.errors import XtmError
from xtm.languages import UNSEGMENTED, normalize_lang
from xtm.runtime.tokenize import default_tokenizer_spec
from xtm.trainer.data.jsonl import ReadStats
from xtm.trainer.data.stopwords import extra_stopwords, stopword_source, unused_stopwords

__all__ = ["HOLDOUT_FRACTION", "corpus_info", "label_names", "language_order", "normalize_langs",
           "choose_test_documents", "split_mode", "warn_user"]

# Share of each language's documents held out as test set when every document is labeled but
# none says which split it belongs to: without a test set classification cannot be evaluated.
HOLDOUT_FRACTION = 0.2
# Without `langs`, a language that only language detection produced and that holds less than
# this share of the documents is taken as misdetection (short texts read as Sotho, Latin, ...)
# and its documents are dropped, counted, with a warning.
_RARE_DETECTED_SHARE = 0.01
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_user(message: str) -> None:
    """A UserWarning attributed to the first caller outside xtm.trainer.data (the user's call).

    The data modules call each other at varying depths; counting `stacklevel` by hand breaks with
    every refactoring (Python 3.12's `skip_file_prefixes`, for 3.11).
    """
    level, frame = 2, sys._getframe(1)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    warnings.warn(message, UserWarning, stacklevel=level)


def normalize_langs(langs: Sequence[str] | str | None) -> list[str] | None:
    """The `langs` argument as distinct ISO codes in the caller's order (None: every language found).

    A string is read as a comma- or space-separated list; aliases (`cn`, `jp`) are accepted.
    """
    if langs is None:
        return None
    if isinstance(langs, str):
        langs = [x for x in langs.replace(",", " ").split() if x]
    out: list[str] = []
    for code in langs:
        iso = normalize_lang(code)
        if iso in out:
            raise XtmError(f"language '{iso}' is listed twice in langs", field="langs")
        out.append(iso)
    if not out:
        raise XtmError("langs is empty", field="langs")
    return out


def language_order(n_docs: dict[str, int], explicit: dict[str, int], want: list[str] | None, source: Path,
                   stats: ReadStats) -> list[str]:
    """Languages in output order; a requested language without documents is an error.

    n_docs: usable documents per language met (0 for a language whose documents were all dropped);
    explicit: how many of them named their language (the rest were detected). Without `want`,
    rarely detected languages are dropped (counted in `stats`) and empty ones ignored, with warnings.
    """
    if want is not None:
        _require_requested(n_docs, want, source, stats)
        order = list(want)
    else:
        # Largest first (ties by code): a stable default; English first when present, the order
        # of the published tables.
        order = sorted(n_docs, key=lambda x: (x != "en", -n_docs[x], x))
        _drop_rare_detected(order, n_docs, explicit, source, stats)
        for x in [x for x in order if n_docs[x] == 0]:
            warn_user(f"{source}: every '{x}' document was dropped as empty; language ignored")
            order.remove(x)
    if len(order) < 2:
        found = ", ".join(f"{x} ({n_docs.get(x, 0)} docs)" for x in order) or "none"
        raise XtmError(f"a cross-lingual corpus needs documents in at least two languages; found {found}"
                       + _language_field_hint(stats), path=source)
    return order


def _language_field_hint(stats: ReadStats) -> str:
    """What to add to an error about languages when documents carry another tool's name for `lang` (the
    warning that says so comes after the corpus is built, which such an error stops)."""
    n = sum(k for (other, name), k in stats.unread_fields.items() if name == "lang")
    return f" ({n} document(s) name their language in a field xtm does not read, such as 'language': " \
           "rename it to 'lang')" if n else ""


def _require_requested(n_docs: dict[str, int], want: list[str], source: Path, stats: ReadStats) -> None:
    empty = [x for x in want if n_docs.get(x, 0) == 0]
    if empty:
        dropped = stats.dropped
        raise XtmError(f"no documents left for requested language(s) {', '.join(empty)}"
                       + (f" ({sum(dropped.values())} dropped as empty)" if dropped else "")
                       + _language_field_hint(stats), path=source, field="langs")


def _drop_rare_detected(order: list[str], n_docs: dict[str, int], explicit: dict[str, int], source: Path,
                        stats: ReadStats) -> None:
    """Remove from `order` the detected-only languages too rare to be real (misdetections)."""
    total = sum(n_docs[x] for x in order)
    rare = [x for x in order if explicit.get(x, 0) == 0 and 0 < n_docs[x] < _RARE_DETECTED_SHARE * total]
    if not rare:
        return
    k = sum(n_docs[x] for x in rare)
    stats.dropped["rare_detected_language"] += k
    for x in rare:
        stats.dropped_by_lang[x]["rare_detected_language"] += n_docs[x]
        order.remove(x)
    warn_user(f"{source}: dropped {k} document(s) detected as "
              f"{', '.join(f'{x} ({n_docs[x]})' for x in rare)}: fewer than "
              f"{_RARE_DETECTED_SHARE:.0%} of the documents each, probably misdetected; "
              f"give documents a 'lang' field or pass langs")


def label_names(n_total: int, n_labeled: int, values: set[Any], source: Path) -> list[Any] | None:
    """Label values in class order, or None: labels are all or nothing, mapped to 0..C-1 the same way
    in every language (integers before strings, each sorted)."""
    if n_labeled == n_total:
        names = sorted(values, key=lambda v: (isinstance(v, str), v))
        twins = sorted(str(v) for v in names if not isinstance(v, str) and str(v) in values)
        if twins:  # 1 and "1" in one file: two classes, which is rarely what was meant
            warn_user(f"{source}: labels {', '.join(f'{t} and {chr(34)}{t}{chr(34)}' for t in twins)} are different "
                      "classes (a number and a string); write each label one way if they are one class")
        return names
    if n_labeled:
        warn_user(f"{source}: only {n_labeled} of {n_total} documents have a label; labels are ignored")
    return None


def split_mode(has_split: bool, label_names: list[Any] | None) -> str:
    """How test documents are chosen: "file" (their `split` field), "holdout" (drawn, labeled data
    without splits) or "none" (no test set)."""
    return "file" if has_split else ("holdout" if label_names is not None else "none")


def choose_test_documents(split_mode: str, n: int, file_test: np.ndarray | None,
                          rng: np.random.Generator) -> np.ndarray:
    """Which of a language's n documents are test documents; draws from `rng` in holdout mode only.

    file_test: the documents whose `split` says test (split mode "file" only).
    """
    if split_mode == "file":
        assert file_test is not None
        return file_test
    is_test = np.zeros(n, dtype=bool)
    if split_mode == "holdout":
        # At least one test document per language once there are two to split.
        n_test = max(1, int(round(HOLDOUT_FRACTION * n))) if n >= 2 else 0
        is_test[rng.permutation(n)[:n_test]] = True
    return is_test



def corpus_info(source: Path, files: list[Path], stats: ReadStats, label_names: list[Any] | None,
                split_mode: str, lang_info: dict[str, Any], prep: Preprocessing, seed: int) -> dict[str, Any]:
    """corpus.info for JSONL input (the shards' index.json holds the same); warns about what was dropped
    or skipped."""
    _warn_dropped(source, stats)
    sources = {lang: stopword_source(lang, prep.token_rules) for lang in lang_info}
    if prep.token_rules >= 2:  # a run made under rules 1 (xtm's lists only) is read as it was made: nothing new to say
        _warn_no_stopwords(sources)
    _warn_unused_stopwords(lang_info, prep)
    _warn_untaken_user_words(lang_info, prep)
    _warn_no_segmenter(lang_info)
    return {
        "source": str(source),
        "format": "jsonl",
        "files": [str(f) for f in files],
        "dropped": {**dict(stats.dropped), "total": sum(stats.dropped.values())},
        "skipped_other_languages": dict(stats.skipped_lang),
        "detected_lang": stats.detected,
        "label_names": label_names,
        "split": split_mode,
        "languages": lang_info,
        "preprocessing": {"vocab_size": prep.vocab_size, "min_df": prep.min_df, "max_df": float(prep.max_df),
                          "min_doc_tokens": prep.min_doc_tokens, "seed": seed, "token_rules": prep.token_rules,
                          "stopwords": sources,
                          # the user's words (--stopwords), and how many each language's tokenizer kept as one word
                          "extra_stopwords": {"words": len(prep.extra_stopwords), "used": {
                              lang: len(extra_stopwords(lang, prep.token_rules, prep.extra_stopwords, prep.user_words))
                              for lang in lang_info}} if prep.extra_stopwords else None,
                          # the words the segmenters keep whole (--user-words), and how many each language's took
                          "user_words": {"words": len(prep.user_words), "used": {
                              lang: len(default_tokenizer_spec(lang, prep.token_rules, prep.user_words).user_words)
                              for lang in lang_info}} if prep.user_words else None,
                          "holdout_fraction": HOLDOUT_FRACTION if split_mode == "holdout" else None},
    }


def _warn_no_stopwords(sources: dict[str, str]) -> None:
    missing = sorted(lang for lang, source in sources.items() if source == "none")
    if missing:
        warn_user(f"no stopword list for {', '.join(missing)}: its function words will crowd its topics, as max_df "
                  "removes only the most common (list them in a file for --stopwords). xtm uses its own lists (en, "
                  "zh, ja, fr, de, es, ko) and stopwords-iso's (the stopwordsiso package, which training installs) "
                  "where its entries are single words for xtm's tokenizer (not Vietnamese's)")


def _warn_unused_stopwords(langs: dict[str, Any], prep: Preprocessing) -> None:
    for lang in langs:
        unused = unused_stopwords(lang, prep.token_rules, prep.extra_stopwords, prep.user_words)
        if unused:
            shown = ", ".join(f"{entry} as {token}" for entry, token in unused[:5])
            more = f" and {len(unused) - 5} more" if len(unused) > 5 else ""
            warn_user(f"--stopwords: {len(unused)} word(s) are not '{lang}' words as its tokenizer writes them, and "
                      f"are not used for it (it reads {shown}{more}): write them as the vocabulary and topics show "
                      "them")


def _warn_untaken_user_words(langs: dict[str, Any], prep: Preprocessing) -> None:
    taken = {w for lang in langs for w in default_tokenizer_spec(lang, prep.token_rules, prep.user_words).user_words}
    untaken = [w for w in prep.user_words if unicodedata.normalize("NFC", w) not in taken]
    if untaken:
        shown = ", ".join(untaken[:5]) + (f" and {len(untaken) - 5} more" if len(untaken) > 5 else "")
        warn_user(f"--user-words: {len(untaken)} word(s) are kept whole by no tokenizer of this corpus's languages "
                  f"({shown}): only Korean's analyser (Kiwi) takes user words today, those with Hangul; other "
                  "languages' words are not used")


def _warn_no_segmenter(langs: dict[str, Any]) -> None:
    # Thai, Lao, Khmer and Burmese write no space between words, and xtm has no segmenter for them: the words
    # tokenizer cuts at spaces and punctuation only, so a token is a phrase unless the text was segmented.
    unsegmented = sorted(lang for lang in langs
                         if lang in UNSEGMENTED and default_tokenizer_spec(lang).kind not in ("jieba", "janome"))
    if unsegmented:
        warn_user(f"xtm has no word segmenter for {', '.join(unsegmented)}, written without spaces between words: "
                  "each run of text between spaces or punctuation is one token. Segment the texts first (words "
                  "separated by spaces); the contextual route serves such text without a segmenter")


def _warn_dropped(source: Path, stats: ReadStats) -> None:
    # Misdetected languages had their own warning.
    empty = {k: v for k, v in stats.dropped.items() if k != "rare_detected_language"}
    if empty:
        detail = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(empty.items()))
        warn_user(f"{source}: dropped {sum(empty.values())} document(s) with no usable words ({detail})")
    if stats.unread_fields:
        named = "; ".join(f"{n} document(s) have '{other}' and no '{name}'"
                          for (other, name), n in sorted(stats.unread_fields.items()))
        warn_user(f"{source}: {named}. xtm reads the fields id, text, lang, label and split: rename them, or "
                  "those documents go on without them (a missing lang is detected, a missing label is no label)")
    skipped = stats.skipped_lang
    if skipped:
        warn_user(f"{source}: skipped {sum(skipped.values())} document(s) in languages not requested "
                  f"({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})")

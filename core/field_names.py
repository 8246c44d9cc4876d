"""The JSONL fields xtm reads (id, text, lang, label, split), and the names other tools give them or a typing slip
makes of them: said to the user, in training (a warning) and in inference (a bad line's reason), instead of read
as absent."""

from __future__ import annotations

from typing import Any

__all__ = ["OTHER_FIELD_NAMES", "names_for"]


# Names other tools give the fields xtm reads. A document that has one of them and not xtm's field is counted
# (training: ReadStats.unread_fields) and said once: "language" for "lang" was ignored and the language detected, spread
# over a dozen languages on short texts; "category" for "label" trained without classification.
OTHER_FIELD_NAMES: dict[str, tuple[str, ...]] = {
    "text": ("content", "body", "document", "doc", "sentence", "txt"),
    "lang": ("language", "lng", "locale", "lang_code", "language_code"),
    "label": ("labels", "category", "class"),
    "split": ("subset", "fold"),
    "id": ("doc_id", "docid", "_id"),
}


def names_for(obj: dict[str, Any], name: str) -> list[str]:
    """The keys of `obj` that are another tool's name for field `name` or a misspelling of it."""
    others = OTHER_FIELD_NAMES[name]
    return [k for k in obj if isinstance(k, str) and (k in others or _misspelt(k.lower(), name))]


def _misspelt(key: str, name: str) -> bool:
    """`key` (lowercased) is `name` or one slip from it (a letter added or dropped, or two swapped); names shorter
    than four letters ("id") only in another case. Not a letter changed: "long" (a longitude) and "test" are other
    fields, not "lang" and "text"."""
    if key == name:
        return True
    if len(name) < 4 or abs(len(key) - len(name)) > 1:
        return False
    if len(key) == len(name):
        diff = [i for i, (a, b) in enumerate(zip(key, name, strict=True)) if a != b]
        return len(diff) == 2 and diff[1] == diff[0] + 1 and key[diff[0]] == name[diff[1]] \
            and key[diff[1]] == name[diff[0]]
    short, long_ = (key, name) if len(key) < len(name) else (name, key)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))

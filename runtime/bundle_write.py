"""Writing a bundle's manifest.json and topics.json: the only place either is put together.

The exporter (xtm.exporters.onnx_export), the contextual exporter (through its `ContextualEntry`)
and the tests' hand-made bundle all write through `write_manifest`, so every manifest has the
same keys, is checked by the reader's own rules (xtm.runtime.bundle) before it is written, and
lists every file of the directory with its SHA-256. The manifest is written last and atomically:
a directory whose manifest.json exists is complete.

Torch-free and onnx-free, like the reader.
"""

from __future__ import annotations

import datetime as _dt
import os
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xtm
from xtm.atomic import write_json
from xtm.errors import XtmError
from xtm.runtime.bundle import (
    FORMAT,
    MANIFEST,
    SCHEMA_VERSION,
    BundleManifest,
    ContextualEntry,
    EncoderEntry,
    sha256_file,
    validate_manifest,
)

__all__ = ["TOPICS", "SourceRun", "checksum_files", "manifest_schema_version", "write_manifest", "write_topics"]

TOPICS = "topics.json"
# Keys of a run's train_config that locate things on the training machine: the bundle names the
# run, it does not say where it was (paths can be private, and mean nothing elsewhere).
_MACHINE_KEYS = ("cache_dir",)


@dataclass(frozen=True)
class SourceRun:
    """The run a bundle was exported from, as the manifest's "source_run" names it."""

    name: str
    train_config: dict[str, Any] | None = None
    # The epochs the exported model completed, and whether that is all train_config asked for (an interrupted
    # run exported as it was); None in bundles from before they were recorded.
    epochs_done: int | None = None
    finished: bool | None = None

    @classmethod
    def of(cls, run_dir: str | Path, train_config: Mapping[str, Any] | None, epochs_done: int | None = None,
           finished: bool | None = None) -> SourceRun:
        """The run's directory name (never its path) and its training settings without machine paths."""
        kept = {k: v for k, v in (train_config or {}).items() if k not in _MACHINE_KEYS}
        return cls(name=Path(run_dir).resolve().name, train_config=kept or None, epochs_done=epochs_done,
                   finished=finished)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "train_config": self.train_config}
        if self.epochs_done is not None:
            out.update(epochs_done=self.epochs_done, finished=self.finished)
        return out


def manifest_schema_version(encoders: Sequence[EncoderEntry]) -> int:
    """The oldest schema that describes these encoders: 1 when all are dense, 2 with sparse inputs, 3 when a
    tokenizer has user words, so that runtimes from before each still read the bundles they can serve."""
    if any(e.tokenizer.get("user_words") for e in encoders):
        return SCHEMA_VERSION
    return 2 if any(e.sparse for e in encoders) else 1


def write_topics(directory: str | Path, topic_words: Mapping[str, Sequence[Sequence[str]]], top_n: int,
                 labels: Sequence[Mapping[str, str]] | None = None) -> str:
    """Write topics.json (top `top_n` words of every topic in every language; topic ids are shared
    across languages; with `labels`, each topic's label per language under "labels", which runtimes
    from before labels ignore) atomically; returns its name in the bundle."""
    langs = list(topic_words)
    num_topics = len(topic_words[langs[0]]) if langs else 0
    write_json(Path(directory) / TOPICS, {
        "num_topics": num_topics, "top_n": top_n, "languages": langs,
        "topics": [{"id": k, "words": {lang: list(topic_words[lang][k]) for lang in langs},
                    **({"labels": {lang: labels[k][lang] for lang in langs if lang in labels[k]}} if labels else {})}
                   for k in range(num_topics)]})
    return TOPICS


def checksum_files(directory: str | Path) -> dict[str, str]:
    """SHA-256 of every file in the directory but manifest.json, by name (sorted). A bundle holds
    only regular files: a link, a FIFO or a subdirectory is an XtmError (it would not be listed,
    so the reader would ignore it and the next export would refuse to replace the directory)."""
    d = Path(directory)
    files: dict[str, str] = {}
    for name in sorted(os.listdir(d)):
        if name == MANIFEST:
            continue
        if not stat.S_ISREG(os.lstat(d / name).st_mode):
            raise XtmError("not a regular file: a bundle holds only regular files", path=d / name)
        files[name] = sha256_file(d / name)
    return files


def write_manifest(directory: str | Path, *, model: str, num_topics: int, languages: Sequence[str],
                   encoders: Sequence[EncoderEntry], opset: int | None, quantization: str | None,
                   source_run: SourceRun, parity: Mapping[str, Mapping[str, Any]],
                   contextual: ContextualEntry | None = None, topics: str = TOPICS,
                   xtm_version: str | None = None, created: str | None = None) -> BundleManifest:
    """Checksum every file in `directory`, then write its manifest.json, last and atomically.

    `parity` is the ONNX-vs-torch check per language as measured ({} when none was run); it is
    recorded, not judged here. The manifest is first checked by the reader's rules (structure,
    every referenced file listed, regular and without external ONNX data), so an invalid bundle is
    never written. Returns it as the reader sees it.
    """
    d = Path(directory)
    raw = {
        "schema_version": manifest_schema_version(encoders), "format": FORMAT,
        "xtm_version": xtm_version or xtm.__version__,
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model, "num_topics": num_topics, "languages": list(languages), "opset": opset,
        "quantization": quantization, "encoders": {e.lang: e.to_json() for e in encoders}, "topics": topics,
        "source_run": source_run.to_json(), "parity": {lang: dict(p) for lang, p in parity.items()},
        # Optional: runtimes without the contextual route ignore the key, so it stays absent when empty.
        **({"contextual": contextual.to_json()} if contextual else {}),
        "files": checksum_files(d),
    }
    manifest = validate_manifest(raw, d, verify=False)
    write_json(d / MANIFEST, raw)
    return manifest

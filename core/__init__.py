"""xtm: cross-lingual topic modeling.

The package root holds only what every part shares (version, language codes, errors, the
corpus type). Importing `xtm` must stay cheap and torch-free: the runtime depends on it.

`xtm.train(docs, langs=..., dictionary=...)` (xtm.trainer.api) trains from Python on documents in
memory; it is looked up on first access (PEP 562, as xtm.runtime's attributes are), so `import xtm`
loads neither the trainer nor torch, and a runtime-only install gets the install line when it calls it.
`xtm.TopicModel` is the runtime's model (xtm.runtime.TopicModel), at the top as sentence-transformers has its main
class: `xtm.TopicModel.load("bundle")`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.1"

if TYPE_CHECKING:
    from xtm.runtime.model import TopicModel
    from xtm.trainer.api import TrainedRun, train

__all__ = ["TopicModel", "TrainedRun", "__version__", "train"]

# Attributes served by other subpackages, imported when first used.
_LAZY = {"train": "xtm.trainer.api", "TrainedRun": "xtm.trainer.api", "TopicModel": "xtm.runtime.model"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xtm' has no attribute {name!r}")

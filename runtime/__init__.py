"""The torch-free runtime: tokenizers, language ID, bundles, `TopicModel` inference and the batch
engine (`xtm.runtime.engine`: records and files in, xtm-infer's lines out).

Attributes are imported on first access (PEP 562) so `import xtm.runtime` stays cheap for code
that only needs the tokenizers (the trainer) and onnxruntime loads only when a model does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xtm.runtime.bundle import read_manifest
    from xtm.runtime.engine import InferenceOptions, infer_file, infer_records
    from xtm.runtime.model import InferenceResult, TopicModel

__all__ = ["InferenceOptions", "InferenceResult", "TopicModel", "infer_file", "infer_records", "read_manifest"]

_LAZY = {"TopicModel": "xtm.runtime.model", "InferenceResult": "xtm.runtime.model",
         "read_manifest": "xtm.runtime.bundle", "InferenceOptions": "xtm.runtime.engine",
         "infer_file": "xtm.runtime.engine", "infer_records": "xtm.runtime.engine"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'xtm.runtime' has no attribute {name!r}")

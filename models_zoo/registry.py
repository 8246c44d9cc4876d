"""Backbone names -> classes, and the one check of what a backbone can train on.

The names (the CLI's --model choices) are declared in xtm.config.MODEL_NAMES; each class says what
it needs in class attributes (xtm.models_zoo.base.CrossLingualTopicModel: `num_languages`,
`needs_dictionary`, `in_memory_only`), and `check_capabilities` is the only place that compares
them with a run: the trainer asks it before any work and again once the corpus is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from xtm.config import MODEL_NAMES
from xtm.errors import XtmError

if TYPE_CHECKING:
    import torch

    from xtm.corpus import Corpus
    from xtm.models_zoo.base import CrossLingualTopicModel

__all__ = ["MODEL_NAMES", "check_capabilities", "model_class", "model_from_state"]


def model_class(name: str) -> type[CrossLingualTopicModel]:
    """The backbone class for `name` (imported lazily: torch is only needed once a model is built)."""
    key = name.lower()
    if key == "nmtm":
        from xtm.models_zoo.nmtm import NMTM

        return NMTM
    if key == "infoctm":
        from xtm.models_zoo.infoctm import InfoCTM

        return InfoCTM
    if key == "xtra":
        from xtm.models_zoo.xtra import XTRA

        return XTRA
    if key == "gloctm":
        from xtm.models_zoo.gloctm import GloCTM

        return GloCTM
    raise XtmError(f"unknown model '{name}'; choose one of {', '.join(MODEL_NAMES)}")


def model_from_state(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> CrossLingualTopicModel:
    """Rebuild a model from its config (`model.config()`) and state dict (aux buffers included): no
    corpus needed, which is what lets a checkpoint alone be exported or evaluated."""
    from xtm.models_zoo.base import load_unique_state_dict

    cls = model_class(config["model"])
    aux = {k[len("aux_"):]: v for k, v in tensors.items() if k.startswith("aux_")}
    model = cls(config["langs"], config["vocab_sizes"], config["num_topics"], aux=aux,
                **cls.saved_hparams(config["hparams"]))
    load_unique_state_dict(model, tensors)
    return model


def _names(where: Callable[[type[CrossLingualTopicModel]], bool]) -> list[str]:
    """The backbones whose class satisfies `where` (error messages say what to use instead)."""
    return [n for n in MODEL_NAMES if where(model_class(n))]


def check_capabilities(model_name: str, corpus: Corpus | None = None, *, out_of_core: bool = False,
                       phase2: bool = False) -> None:
    """Refuse a run the backbone cannot do, saying what to do instead.

    Without `corpus` (before any work): what the settings alone decide, i.e. whether the model and
    phase 2 can train from streamed (--out-of-core) shards. With `corpus`: its languages, and the
    dictionary links a dictionary-aligned backbone needs.
    """
    cls = model_class(model_name)
    if out_of_core:
        if cls.in_memory_only:
            streamable = " or ".join(_names(lambda c: not c.in_memory_only))
            raise XtmError(f"--model {cls.name} cannot train --out-of-core: {cls.in_memory_only}. Train it without "
                           f"--out-of-core, or use {streamable}, which need only vocabularies, the dictionary and "
                           "word counts from the corpus")
        if phase2:
            raise XtmError("LLM-XTM phase 2 (--phase2-epochs) embeds every training document; it cannot run "
                           "--out-of-core")
    if corpus is None:
        return
    cls.check_languages(corpus.langs)
    if cls.needs_dictionary:
        a, b = corpus.langs
        if corpus.link_matrix(a, b).nnz == 0:
            without = " or ".join(f"--model {n}" for n in _names(lambda c: not c.needs_dictionary))
            raise XtmError(f"--model {cls.name} aligns topics through a bilingual dictionary, but no {a}-{b} word "
                           f"pairs are known: pass --dict PATH (TSV source<TAB>target), or use {without}, which "
                           "need none")

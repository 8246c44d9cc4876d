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

__all__ = ["MODEL_NAMES", "check_capabilities", "model_class", "model_from_state", "unused_dictionary_note"]


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

    _check_model_config(config)
    cls = model_class(config["model"])
    aux = {k[len("aux_"):]: v for k, v in tensors.items() if k.startswith("aux_")}
    model = cls(config["langs"], config["vocab_sizes"], config["num_topics"], aux=aux,
                **cls.saved_hparams(config.get("hparams", {})))
    load_unique_state_dict(model, tensors)
    return model


def _check_model_config(config: Any) -> None:
    """A saved model_config (a checkpoint's state.json) as model.config() writes it: anything else, from an
    edit or another tool, was a KeyError, TypeError or RuntimeError traceback."""
    def whole(v: Any, low: int, high: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and low <= v <= high

    problem = None
    if not isinstance(config, dict):
        problem = f"expected an object, got {type(config).__name__}"
    elif not isinstance(config.get("model"), str):
        problem = "'model' must be a model name"
    elif not (isinstance(config.get("langs"), list) and all(isinstance(x, str) for x in config["langs"])):
        problem = "'langs' must be a list of language codes"
    elif not (isinstance(config.get("vocab_sizes"), list) and len(config["vocab_sizes"]) == len(config["langs"])
              and all(whole(v, 1, 10_000_000) for v in config["vocab_sizes"])):
        problem = "'vocab_sizes' must be one whole number per language"
    elif not whole(config.get("num_topics"), 1, 10_000):
        problem = "'num_topics' must be a whole number from 1 to 10,000"
    elif not isinstance(config.get("hparams", {}), dict):
        problem = "'hparams' must be an object"
    if problem is not None:
        raise XtmError(f"the checkpoint's model_config is not one xtm wrote: {problem}")


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


def unused_dictionary_note(model_name: str) -> str | None:
    """What to say when --dict is given to a backbone that never reads it (None when it does): the
    dictionary is loaded all the same, and a user who expected it to align the topics learns otherwise."""
    cls = model_class(model_name)
    if cls.reads_links:
        return None
    readers = " or ".join(f"--model {n}" for n in _names(lambda c: c.needs_dictionary))
    return (f"--dict is not used by {cls.name}: it aligns topics through multilingual sentence embeddings "
            f"({readers} align through the dictionary)")

"""Backbone names -> classes. The CLI's --model choices come from here."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xtm.errors import XtmError

if TYPE_CHECKING:
    import torch

    from xtm.models_zoo.base import CrossLingualTopicModel

MODEL_NAMES = ("nmtm", "infoctm", "xtra", "gloctm")


def model_class(name: str) -> type:
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
    model = cls(config["langs"], config["vocab_sizes"], config["num_topics"], aux=aux, **config["hparams"])
    load_unique_state_dict(model, tensors)
    return model

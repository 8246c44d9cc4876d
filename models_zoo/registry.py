"""Backbone names -> classes. The CLI's --model choices come from here."""

from __future__ import annotations

from xtm.errors import XtmError

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

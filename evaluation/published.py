"""Published numbers for the benchmark datasets, in one place: the benchmarks and report.html read them.

Source: the LLM-XTM paper (seed 001), K=50: Table 2 (TU, CNPMI), Table 3 (Rakuten ablations of
phase 2) and Table 5 (classification); its NMTM and InfoCTM baseline rows are cited from Wu et al.
2023a. The paper states 500 phase-1 epochs (800 for XTRA) and 30 phase-2 epochs with Gemini 2.5
Flash; its public code runs 179 / 479 / 749 phase-1 epochs (NMTM / InfoCTM / XTRA) + 51 phase-2.
Their CNPMI uses the WikiComp reference corpus and BobXWu/CNPMI's token-count marginals: it compares with
metrics.json's CNPMI_published (the same marginals) and only when that used WikiComp too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

SOURCE = ("LLM-XTM paper (seed 001): Table 2 (TU, CNPMI), Table 3 (ablations), Table 5 (classification); "
          "K=50, 500 epochs (XTRA 800), phase 2 30 epochs")
CNPMI_NOTE = ("published CNPMI uses the WikiComp reference corpus and token-count marginals (BobXWu/CNPMI): "
              "read it against this run's published-protocol CNPMI, and only on WikiComp")


@dataclass(frozen=True)
class Published:
    """One published row: a backbone (xtm-train --model name), plain or with LLM-XTM phase 2."""

    name: str
    model: str
    phase2: bool
    TU: float
    CNPMI: float
    classification: Mapping[str, float] = field(default_factory=dict)
    epochs: int = 500

    @property
    def TQ(self) -> float:  # noqa: N802 - the metric's name
        return max(0.0, self.CNPMI) * self.TU


PUBLISHED: dict[str, tuple[Published, ...]] = {
    "ECNews": (
        Published("NMTM", "nmtm", False, 0.818, 0.034, {"EN-I": .7917, "EN-C": .4941, "ZH-I": .7742, "ZH-C": .5139}),
        Published("InfoCTM", "infoctm", False, 0.943, 0.041,
                  {"EN-I": .7813, "EN-C": .5242, "ZH-I": .7652, "ZH-C": .5592}),
        Published("XTRA", "xtra", False, 0.978, 0.078, epochs=800),
        Published("NMTM + LLM-XTM", "nmtm", True, 0.821, 0.039,
                  {"EN-I": .7975, "EN-C": .5173, "ZH-I": .7785, "ZH-C": .5333}),
        Published("InfoCTM + LLM-XTM", "infoctm", True, 0.898, 0.062,
                  {"EN-I": .7849, "EN-C": .5445, "ZH-I": .7682, "ZH-C": .5875}),
        Published("XTRA + LLM-XTM", "xtra", True, 0.954, 0.088, epochs=800),
    ),
    "Rakuten_Amazon": (
        Published("NMTM", "nmtm", False, 0.633, 0.012, {"EN-I": .7966, "EN-C": .6104, "JA-I": .8264, "JA-C": .6816}),
        Published("InfoCTM", "infoctm", False, 0.870, 0.032,
                  {"EN-I": .7940, "EN-C": .6910, "JA-I": .8256, "JA-C": .7342}),
        Published("XTRA", "xtra", False, 0.966, 0.034, epochs=800),
        Published("NMTM + LLM-XTM", "nmtm", True, 0.666, 0.016,
                  {"EN-I": .792, "EN-C": .621, "JA-I": .833, "JA-C": .728}),
        Published("InfoCTM + LLM-XTM", "infoctm", True, 0.870, 0.040,
                  {"EN-I": .7984, "EN-C": .7314, "JA-I": .8296, "JA-C": .7875}),
        Published("XTRA + LLM-XTM", "xtra", True, 0.945, 0.037, epochs=800),
        Published("w/o doc-align", "nmtm", True, 0.679, 0.012,
                  {"EN-I": .791, "EN-C": .611, "JA-I": .832, "JA-C": .723}),
        Published("w/o MMD", "nmtm", True, 0.641, 0.012, {"EN-I": .795, "EN-C": .621, "JA-I": .833, "JA-C": .723}),
        Published("w/o self-consistency", "nmtm", True, 0.654, 0.011,
                  {"EN-I": .792, "EN-C": .619, "JA-I": .832, "JA-C": .720}),
    ),
}


def dataset_key(name: str | None) -> str | None:
    """The PUBLISHED key for a dataset name as metrics.json spells it (case and -/_ ignored), or None."""
    if not name:
        return None
    norm = name.lower().replace("-", "_")
    return next((k for k in PUBLISHED if k.lower() == norm), None)


def published_rows(dataset: str | None, model: str | None = None, phase2: bool | None = None) -> list[Published]:
    """Published rows of a dataset, optionally only one backbone and/or only with (or without) phase 2."""
    key = dataset_key(dataset)
    rows = PUBLISHED.get(key, ()) if key else ()
    return [r for r in rows if (model is None or r.model == model.lower()) and (phase2 is None or r.phase2 == phase2)]

"""Which phase-2 settings a run resumed from a checkpoint may change, and which it may not.

The tables and `phase2_differences` compare two settings objects and nothing else, so they are apart from the
loop and can be read and tested without training. The checks that compare a checkpoint with the run being
resumed (`_Training._check_*` in xtm.trainer.loop.training) read that run's model, settings and rank, and
stay with it.
"""

from __future__ import annotations

from typing import Any

from xtm.config import Phase2Config, flat_settings, option_text

__all__ = ["phase2_differences"]

# Phase-2 settings a resumed run may change: its length, and where and how the refiner is reached (not what
# it is asked or how it samples). Everything else shapes the objective and is checked against the checkpoint.
_PHASE2_SERVING = frozenset({"epochs", "refiner.llm_url", "refiner.api_key_env", "refiner.concurrency",
                             "refiner.timeout", "refiner.retries"})
# Settings a refiner never reads (so a resumed run may change them), by backend; the LLM backends' default.
_UNREAD_BY = {"embedding": frozenset({"refiner.llm_model", "refiner.sampling.temperature", "refiner.sampling.top_p",
                                      "refiner.sampling.max_tokens"})}
_UNREAD_BY_LLMS = frozenset({"refiner.exclusive"})
# Settings xtm-train fills from another option: named by that option in a refusal.
_PHASE2_FROM_OPTION = {"refiner.sampling.seed": "--seed"}


def phase2_differences(saved: dict[str, Any], cfg: Phase2Config) -> list[tuple[str, Any, Any, str]]:
    """(setting, the checkpoint's value, this run's, the option that gives the checkpoint's) for every phase-2
    setting a resumed run may not change: not _PHASE2_SERVING, nor what neither run's refiner reads."""
    before, now = flat_settings(Phase2Config.from_dict(saved)), flat_settings(cfg)
    ignored = set(_PHASE2_SERVING)
    backends = {b for b in (before["refiner.backend"][0], now["refiner.backend"][0]) if isinstance(b, str)}
    ignored |= frozenset.intersection(*(_UNREAD_BY.get(b, _UNREAD_BY_LLMS) for b in backends)) if backends else set()
    return [(k, before[k][0], value, f"{_PHASE2_FROM_OPTION[k]} {before[k][0]}" if k in _PHASE2_FROM_OPTION
             else option_text(option, k, before[k][0]))
            for k, (value, option) in now.items() if k not in ignored and k in before and before[k][0] != value]

"""What a --resume takes from the run it continues (xtm.trainer.recorded), as the command line gives it: which options
it gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xtm.config import DataConfig, Phase2Config, RefinerConfig, RunConfig, Sampling, TrainConfig, cli_spec
from xtm.trainer.recorded import RecordedSettings

__all__ = ["recorded_settings"]


def recorded_settings(parsed: dict[str, Any], ctx: click.Context) -> RecordedSettings | None:
    """With --resume, the run's recorded settings (None without, or before the run wrote its config.json)."""
    from xtm.cli.options import given, settings
    from xtm.run_dir import RunDir, refuse_foreign_dir

    out = Path(parsed["out"])
    if not parsed.get("resume"):
        return None
    refuse_foreign_dir(out)  # another tool's config.json is never read as the run's settings
    if not (out / RunDir.CONFIG).is_file():
        if parsed.get(cli_spec(DataConfig, "path").name) is None:  # (--data's parameter)
            raise click.UsageError(f"--resume: {out} holds no finished or interrupted run to take its settings from "
                                   "(no config.json): give --data and the run's other options")
        return None
    options = {cls: given(cls, ctx) for cls in (DataConfig, TrainConfig, Phase2Config, RefinerConfig, Sampling,
                                                RunConfig)}
    given_training = {k: v for k, v in settings(TrainConfig, parsed).items() if k in options[TrainConfig]}
    return RecordedSettings(RunDir(out).load_config(), options, out / RunDir.CONFIG, given_training)

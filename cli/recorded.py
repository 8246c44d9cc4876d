"""What a --resume takes from the run it continues: the settings its config.json records, for every option the
command line does not give (xtm-train --out RUN --resume --epochs 200), each checked as the command line checks it
and named in one line of the log; options given still win, and the checkpoint refuses what contradicts it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from xtm.config import (
    PAPER_TRAINING,
    WORD_LIST_SETTINGS,
    DataConfig,
    Phase2Config,
    RefinerConfig,
    RunConfig,
    Sampling,
    TrainConfig,
    cli_spec,
)
from xtm.errors import XtmError

__all__ = ["COMMAND_KEY", "RecordedSettings", "record_contextual_route", "recorded_phase2", "recorded_settings"]

# config.json's record of what xtm-train was told beyond the configs (whether to fit the contextual route).
COMMAND_KEY = "command"


def record_contextual_route(out: Path, run: RunConfig) -> None:
    """--contextual / --no-contextual into the run's config.json, for a later --resume (`contextual_route`)."""
    from xtm.run_dir import RunDir

    rd = RunDir(out)
    if (out / RunDir.CONFIG).is_file():
        config = rd.load_config()
        config[COMMAND_KEY] = {"contextual": run.contextual, "no_contextual": run.no_contextual}
        rd.save_config(config)


class RecordedSettings:
    """What a run's config.json records, for the options a --resume does not give (which those are: `given`)."""

    def __init__(self, config: dict[str, Any], given_options: dict[type, set[str]], path: Path,
                 given_training: dict[str, Any]) -> None:
        self.config, self.given, self.path = config, given_options, path
        self.given_training = given_training  # the training settings this command line gives, as it gives them
        self.taken: list[str] = []

    def contextual_route(self) -> dict[str, Any]:
        """--contextual / --no-contextual as the run was trained with them (config.json "command"), where this
        command line gives neither: a resume of a --no-contextual run fitted the route (minutes of embedding) and
        changed what its bundles serve."""
        record = self.config.get(COMMAND_KEY)
        if not isinstance(record, dict) or self.given[RunConfig] & {"contextual", "no_contextual"}:
            return {}
        out = {k: record[k] for k in ("contextual", "no_contextual") if record.get(k) in (True, False, None)
               and k in record}
        if out.get("no_contextual"):
            self.taken.append("--no-contextual")
        elif out.get("contextual"):
            self.taken.append("--contextual")
        return out

    def fill_train(self, cfg: TrainConfig, record: Any) -> TrainConfig:
        """The training settings: given ones as given; the rest recorded, except what the run's recipe derived
        (batch, rates, schedule, its --set values), which the recipe of this command derives again, so a --recipe
        given on a resume is the recipe trained with (the checkpoint refuses one that contradicts it) rather than a
        name over the recorded recipe's values."""
        from dataclasses import fields

        if not isinstance(record, dict):
            return cfg
        try:
            then = TrainConfig(model=record.get("model", cfg.model), recipe=record.get("recipe", cfg.recipe))
        except Exception:  # noqa: BLE001 - a bad recorded model or recipe is named by fill's checks below
            then = None
        own = dict(record)
        if then is not None:
            for name in PAPER_TRAINING:
                if name in own and own[name] == getattr(then, name):
                    del own[name]
            if isinstance(own.get("hparams"), dict):
                own["hparams"] = {k: v for k, v in own["hparams"].items() if then.hparams.get(k, object()) != v}
        # the values this command gives, then the recorded ones; the recipe derives what neither gives
        given = self.given_training
        bare = TrainConfig(**{**given, "progress": cfg.progress})
        filled = self.fill(bare, TrainConfig, "train_config", own, keep=frozenset({"progress"}))
        try:
            return TrainConfig(**{f.name: getattr(filled, f.name) for f in fields(TrainConfig)
                                  if f.name in given or f.name in own or f.name == "progress"})
        except XtmError as e:
            raise XtmError(f"train_config: {e.reason}", path=self.path) from None

    def fill(self, cfg: Any, cls: type, where: str, record: Any, keep: frozenset[str] = frozenset()) -> Any:
        """`cfg` with each setting the command line did not give taken from `record` (config.json's `where`),
        checked as the command line checks it; a value it refuses is an error naming config.json."""
        from dataclasses import fields, is_dataclass, replace

        if not isinstance(record, dict):
            return cfg
        values: dict[str, Any] = {}
        for f in fields(cls):
            taken_elsewhere = f.name in self.given[cls] or f.name in keep or is_dataclass(getattr(cfg, f.name))
            if f.name not in record or taken_elsewhere:
                continue
            spec = f.metadata.get("cli")
            try:
                value = self._checked(cls, f.name, record[f.name], spec)
            except XtmError as e:
                raise XtmError(f"{where}.{f.name}: {e.reason}", path=self.path) from None
            if value != getattr(cfg, f.name) and f.name not in _NOT_SHOWN and value not in ({}, ()):
                self.taken.append(f"{spec.flags.split()[0] if spec else f.name}{_shown(f.name, value)}")
            values[f.name] = value
        try:
            return replace(cfg, **values)
        except XtmError as e:
            raise XtmError(f"{where}: {e.reason}", path=self.path) from None

    @staticmethod
    def _checked(cls: type, name: str, value: Any, spec: Any) -> Any:
        """A recorded value as the command line's option would give it, checked as that option is (check_setting,
        which xtm.train's keywords go through too)."""
        from xtm.trainer.api import check_setting

        if name == "hparams" and not isinstance(value, dict):
            raise XtmError(f"must be an object of settings, got {type(value).__name__}")
        if name == "langs" and value is not None and not (
                isinstance(value, list) and all(isinstance(x, str) for x in value)):
            raise XtmError(f"must be a list of language codes or null, got {str(value)[:60]}")
        # (a file of words, --stopwords FILE or --user-words FILE, records its words)
        if spec is None or spec.path is None or spec.parse is not None:
            value = check_setting(cls, name, value)
        elif value is not None:
            if not isinstance(value, str) or not value:
                raise XtmError(f"must be a path, got {value!r}")
            if not Path(value).is_absolute() and not Path(value).exists():
                raise XtmError(f"{value!r} is relative to the directory the run was trained in and is not found "
                               f"from here: give {spec.flags.split()[0]}")
        return tuple(value) if name == "langs" and value is not None else value


# Settings a recipe derives (the training line says them): not listed among the settings a --resume took.
_NOT_SHOWN = frozenset({"topic_lr_scale", "lr_schedule"})


def recorded_phase2(recorded: RecordedSettings, phase2: Phase2Config) -> Phase2Config:
    """`phase2` with what the command line does not give taken from the run's phase 2, setting by setting: the
    refiner and its sampling too (the epochs follow --phase2-epochs; the seed, the run's --seed)."""
    from dataclasses import replace

    record = recorded.config.get("phase2")
    if not isinstance(record, dict):
        return phase2
    try:  # read as it was written (settings added since, values refused since)
        record = Phase2Config.from_dict(record).to_dict()
    except (XtmError, TypeError, ValueError, AttributeError) as e:
        raise XtmError(f"phase2: {e}", path=recorded.path) from None
    refiner_record = record["refiner"]
    sampling = recorded.fill(phase2.refiner.sampling, Sampling, "phase2.refiner.sampling",
                             refiner_record.get("sampling"), keep=frozenset({"seed"}))
    refiner = recorded.fill(phase2.refiner, RefinerConfig, "phase2.refiner", refiner_record)
    filled = recorded.fill(phase2, Phase2Config, "phase2", record, keep=frozenset({"epochs"}))
    return replace(filled, refiner=replace(refiner, sampling=sampling))


def _shown(name: str, value: Any) -> str:
    """A setting's value as its option would be written (a switch: nothing)."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, dict):  # --set KEY=VALUE pairs
        return " " + (",".join(f"{k}={v}" for k, v in value.items()) or "(none)")
    if name in WORD_LIST_SETTINGS:  # a file of words: how many
        return f" ({len(value)} words)"
    if isinstance(value, (tuple, list)):  # --langs
        return " " + ",".join(map(str, value))
    return f" {value}"


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

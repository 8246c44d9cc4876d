"""What a resumed run takes from the run it continues: the settings its config.json records, for every setting the
caller does not give (xtm-train --out RUN --resume --epochs 200; xtm.train(..., resume=True, epochs=200)), each
checked as the command line checks it and named in one line; settings given still win, and the checkpoint refuses
what contradicts it. The command line's use (which options were given) is xtm.cli.recorded's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xtm.config import (
    PAPER_TRAINING,
    WORD_LIST_SETTINGS,
    Phase2Config,
    RefinerConfig,
    RunConfig,
    Sampling,
    TrainConfig,
)
from xtm.errors import XtmError
from xtm.setting_values import check_setting

__all__ = ["COMMAND_KEY", "RecordedSettings", "record_contextual_route", "recorded_phase2"]

# config.json's record of what xtm-train was told beyond the configs (whether to fit the contextual route).
COMMAND_KEY = "command"


def record_contextual_route(out: Path, contextual: bool | None, no_contextual: bool) -> None:
    """Whether the run was told to fit the contextual route (--contextual, --no-contextual; xtm.train's contextual=
    True / False) into its config.json, for a later resume (`RecordedSettings.contextual_route`). Both the command
    line and xtm.train record it: a resume=True of an xtm.train(contextual=False) run fitted the route (minutes of
    embedding, and bundles serving what the run was told not to)."""
    from xtm.run_dir import RunDir

    rd = RunDir(out)
    if (out / RunDir.CONFIG).is_file():
        config = rd.load_config()
        config[COMMAND_KEY] = {"contextual": contextual, "no_contextual": no_contextual}
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
        if record is not None and not isinstance(record, dict):
            raise XtmError(f"{COMMAND_KEY} must be an object, got {str(record)[:40]}", path=self.path)
        if record is None or self.given[RunConfig] & {"contextual", "no_contextual"}:
            return {}
        for k in ("contextual", "no_contextual"):
            # ("yes" was ignored, and a --no-contextual run's resume fitted the route)
            if record.get(k) not in (True, False, None):
                raise XtmError(f"{COMMAND_KEY}.{k} must be true, false or null, got {str(record[k])[:40]!r}",
                               path=self.path)
        out = {k: record[k] for k in ("contextual", "no_contextual") if k in record}
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

        if record is None:
            return cfg
        if not isinstance(record, dict):
            raise XtmError(f"train_config must be an object, got {str(record)[:40]}", path=self.path)
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

        if record is None:
            return cfg
        if not isinstance(record, dict):  # ("data": [] was read as nothing recorded: "Missing option '--data'")
            raise XtmError(f"{where} must be an object, got {str(record)[:40]}", path=self.path)
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



"""The configuration tree (xtm.config) is the one source of defaults: the CLIs' options read their defaults,
help and ranges from it, configs are frozen, and the dictionaries a run writes keep their format."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from xtm.cli.contextual import main as contextual_main
from xtm.cli.infer import main as infer_main
from xtm.cli.options import SectionOption, build
from xtm.cli.train import main as train_main
from xtm.cli.train import run_config
from xtm.config import (
    PREPROCESSING,
    Cli,
    ContextualConfig,
    DataConfig,
    Phase2Config,
    Preprocessing,
    RefinerConfig,
    RunConfig,
    Sampling,
    TrainConfig,
    cli_spec,
    default_of,
    from_dict,
    option_text,
)
from xtm.errors import XtmError
from xtm.runtime.engine import InferenceOptions

ROOT = Path(__file__).resolve().parents[1]
TRAIN_TREE = (DataConfig, RunConfig, TrainConfig, Phase2Config, RefinerConfig, Sampling)
ALL = (Preprocessing, *TRAIN_TREE, ContextualConfig)
# xtm-infer's flags that are not InferenceOptions settings: what to read and write, which engine, logging.
INFER_OWN_FLAGS = {"input_paths", "bundle", "out", "input_format", "output_format", "engine", "address", "actors",
                   "providers", "workers", "segmenters", "progress_every", "summary_path", "verbose", "quiet",
                   "log_level", "version"}


def declared(classes: tuple[type, ...]) -> list[tuple[type, dataclasses.Field, Cli]]:
    return [(cls, f, f.metadata["cli"]) for cls in classes for f in dataclasses.fields(cls)
            if f.metadata.get("cli") is not None]


def params(command: click.Command) -> dict[str, click.Parameter]:
    return {p.name: p for p in command.params}


# --------------------------------------------------------------------------- options come from the tree


@pytest.mark.parametrize("command,classes", [(train_main, TRAIN_TREE), (contextual_main, (ContextualConfig,)),
                                             (infer_main, (InferenceOptions,))])
def test_every_option_default_and_help_is_the_trees(command: click.Command, classes: tuple[type, ...],
                                                   tmp_path: Path) -> None:
    required = {train_main: ["--data", str(tmp_path), "--out", str(tmp_path / "r")],
                infer_main: [str(tmp_path), "--bundle", str(tmp_path)]}.get(command, [str(tmp_path)])
    parsed = command.make_context("xtm", required).params  # what the command gets when nothing is said
    by_name = params(command)
    settings = declared(classes)
    assert len({spec.name for _, _, spec in settings}) == len(settings)  # one option per setting
    for cls, f, spec in settings:
        p = by_name.pop(spec.name)
        where = f"{cls.__name__}.{f.name} ({spec.flags})"
        assert isinstance(p, SectionOption), where
        assert p.opts + p.secondary_opts == spec.flags.split() + ([spec.off] if spec.off else []), where
        assert p.help == (spec.help or f.metadata["help"]), where
        if spec.switch is not None:
            # A switch: absent it leaves the default, present it changes it (or, progress, turns it off).
            assert p.is_flag and parsed[spec.name] is False, where
            assert spec.tty or spec.switch != f.default, where
        elif spec.multiple:
            assert p.multiple and parsed[spec.name] == (), where
        elif f.default is dataclasses.MISSING and spec.flags == "--data":
            # required, but checked by xtm-train itself: --resume takes the run's own
            assert not p.required, where
        elif f.default is dataclasses.MISSING:
            assert p.required, where
        elif spec.parse is not None and spec.path is not None:
            # A file the setting is read from (--stopwords FILE): absent, no file, and the parse gives the default.
            assert parsed[spec.name] is None and spec.parse(None) == f.default and not p.show_default, where
        else:
            assert parsed[spec.name] == f.default and type(parsed[spec.name]) is type(f.default), where
            assert p.show_default or f.default is None, where
    # What is left is not a setting: --version (eager, every command has it) and the contextual
    # run directory argument, nothing else; xtm-infer's own flags (input, output, engine, logging).
    assert set(by_name) == {contextual_main: {"run_dir", "version"}, infer_main: INFER_OWN_FLAGS}.get(command,
                                                                                                     {"version"})


def test_option_ranges_are_the_declared_ones() -> None:
    p = params(train_main)
    assert (p["topics"].type.min, p["topics"].type.max) == (2, 10000)
    assert p["vocab_size"].type.min == 10 and p["max_df"].type.min_open and p["max_df"].type.max == 1
    assert p["llm_timeout"].type.min == 1 and isinstance(p["llm_timeout"].type, click.FloatRange)
    assert p["model"].type.case_sensitive is False and "gloctm" in p["model"].type.choices
    assert p["dict"].type.dir_okay is False and p["dict"].type.exists
    c = params(contextual_main)
    assert c["dropout"].type.max_open and c["lr"].type.min_open and c["max_tokens"].type.min == 3


@pytest.mark.parametrize("module", ["cli/train.py", "cli/contextual.py"])
def test_the_clis_restate_no_default_or_range(module: str) -> None:
    tree = ast.parse((ROOT / module).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "option":
            raise AssertionError(f"{module}:{node.lineno}: a click.option written by hand")
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                assert kw.arg not in ("default", "show_default"), f"{module}:{node.lineno}: {kw.arg}="
        if isinstance(node, ast.Attribute) and node.attr in ("IntRange", "FloatRange", "Choice"):
            raise AssertionError(f"{module}:{node.lineno}: a range or choice written by hand")


def test_inference_options_are_declared_once() -> None:
    """xtm-infer and the Python inference functions take InferenceOptions (options= plus keyword overrides): none
    of them restates one of its fields as a parameter of its own (a field added is written once)."""
    import inspect

    from xtm.runtime import engine, ray
    from xtm.runtime.model import TopicModel

    names = {f.name for f in dataclasses.fields(InferenceOptions)}
    for fn in (infer_main.callback, engine.infer_records, engine.infer_file, TopicModel.infer_records,
               ray.infer_dataset, ray.infer_files):
        params = inspect.signature(fn).parameters
        assert not names & set(params), f"{fn.__qualname__} restates {sorted(names & set(params))}"
        assert "overrides" in params or fn is infer_main.callback, fn.__qualname__
    # a yes/no pair (--full-theta/--sparse-theta) is named by the flag that gives the value
    spec = cli_spec(InferenceOptions, "full_theta")
    assert (option_text(spec, "full_theta", True), option_text(spec, "full_theta", False)) == ("--full-theta",
                                                                                               "--sparse-theta")


def test_every_setting_has_help() -> None:
    for cls in (*ALL, InferenceOptions):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"


def test_library_signatures_take_the_config_not_numbers() -> None:
    """load_corpus & co. take a Preprocessing (default: the tree's default object) and no numeric defaults
    except the split seed."""
    from xtm.trainer.data import loading, sharding

    wanted = {"load_corpus", "build_shards", "open_or_build_shards", "eval_corpus"}
    found = set()
    for module in (loading, sharding):
        for node in ast.walk(ast.parse(Path(module.__file__).read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.name in wanted:
                found.add(node.name)
                args = node.args.args + node.args.kwonlyargs
                defaults = [*([None] * (len(node.args.args) - len(node.args.defaults))), *node.args.defaults,
                            *node.args.kw_defaults]
                for arg, default in zip(args, defaults, strict=True):
                    if isinstance(default, ast.Constant) and type(default.value) in (int, float):
                        assert arg.arg == "seed", f"{module.__name__}.{node.name}: {arg.arg}={default.value}"
    assert found == wanted
    assert sharding.DEFAULT_SHARD_SIZE == default_of(DataConfig, "shard_size")


def test_the_model_zoo_takes_its_defaults_from_the_config() -> None:
    """One definition: the encoders' DEFAULT_ENCODER / DEFAULT_MAX_TOKENS are xtm.config's objects."""
    import xtm.config as config
    from xtm.models_zoo import context_encoders, encoders, gloctm, registry, xtra

    assert encoders.DEFAULT_ENCODER is config.DEFAULT_ENCODER is context_encoders.DEFAULT_ENCODER
    assert encoders.DEFAULT_MAX_TOKENS is config.DEFAULT_MAX_TOKENS is context_encoders.DEFAULT_MAX_TOKENS
    assert default_of(Phase2Config, "encoder") is default_of(ContextualConfig, "encoder") is config.DEFAULT_ENCODER
    assert default_of(ContextualConfig, "max_tokens") is config.DEFAULT_MAX_TOKENS
    assert xtra.XTRA.defaults["encoder"] is gloctm.GloCTM.defaults["encoder"] is config.DEFAULT_ENCODER
    assert registry.MODEL_NAMES is config.MODEL_NAMES


def test_refiner_defaults_are_the_configs() -> None:
    """The LLM client and the refiners restate no default: they are RefinerConfig's and Phase2Config's."""
    import inspect

    from xtm.trainer.phase2 import llm_http, refiners

    taken = {"api_key_env": (RefinerConfig, "api_key_env"), "concurrency": (RefinerConfig, "concurrency"),
             "timeout": (RefinerConfig, "timeout"), "retries": (RefinerConfig, "retries"),
             "n_words": (Phase2Config, "asked_words"), "exclusive": (RefinerConfig, "exclusive")}
    classes = {"OpenAICompatibleGenerator": ("api_key_env", "concurrency", "timeout", "retries"),
               "LLMRefiner": ("n_words",), "EmbeddingRefiner": ("n_words", "exclusive")}
    homes = {"OpenAICompatibleGenerator": llm_http, "LLMRefiner": refiners, "EmbeddingRefiner": refiners}
    for cls_name, names in classes.items():
        params = inspect.signature(getattr(homes[cls_name], cls_name)).parameters
        for name in names:
            assert params[name].default == default_of(*taken[name]), (cls_name, name)
    # ... and not by writing the same value again: no literal default for these in the source.
    trees = [ast.parse(Path(module.__file__).read_text(encoding="utf-8")) for module in (llm_http, refiners)]
    seen = set()
    for cls in (n for tree in trees for n in tree.body if isinstance(n, ast.ClassDef) and n.name in classes):
        init = next(f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "__init__")
        args = init.args.args
        for arg, default in zip(args[len(args) - len(init.args.defaults):], init.args.defaults, strict=True):
            if arg.arg in classes[cls.name]:
                seen.add((cls.name, arg.arg))
                assert not isinstance(default, ast.Constant), f"{cls.name}({arg.arg}={ast.unparse(default)})"
    assert seen == {(c, n) for c, names in classes.items() for n in names}


# --------------------------------------------------------------------------- frozen configs


@pytest.mark.parametrize("config", [PREPROCESSING, DataConfig(path="x"), TrainConfig(), Phase2Config(),
                                    RefinerConfig(), Sampling(), ContextualConfig(),
                                    RunConfig(out="o", data=DataConfig(path="x"))], ids=lambda c: type(c).__name__)
def test_configs_are_frozen(config: Any) -> None:
    name = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, name, getattr(config, name))


def test_run_training_derives_the_phase2_schedule_without_touching_the_callers_config(
        example_dir: Path, tmp_path: Path) -> None:
    """run.py used to write cfg.phase2_epochs into the caller's object; now it makes its own."""
    from xtm.trainer.run import run_training

    cfg = TrainConfig(model="nmtm", num_topics=4, epochs=1, checkpoint_every=0, progress=False, threads=1)
    data = DataConfig(path=str(example_dir / "docs.jsonl"), dict_path=str(example_dir / "dict.tsv"))
    m = run_training(data, cfg, tmp_path / "run", phase2=Phase2Config(epochs=1, refine_every=1, rounds=1,
                                                                      doc_align=False))
    assert cfg.phase2_epochs == 0
    assert m["epochs"] == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train_config"]
    assert saved == {**cfg.to_dict(), "phase2_epochs": 1}


# --------------------------------------------------------------------------- from the command line


def parse(args: list[str]) -> RunConfig:
    ctx = train_main.make_context("xtm-train", args)
    return run_config(dict(ctx.params))


def test_the_command_line_builds_the_configs_the_run_gets(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    run = parse(["--data", str(data), "--out", str(tmp_path / "r"), "--model", "NMTM", "--topics", "6",
                 "--seed", "7", "--langs", "en, zh", "--set", "hidden=100", "--set", "act=relu", "-q",
                 "--phase2-epochs", "3", "--no-mmd", "--refiner", "openai", "--llm-url", "http://h/v1",
                 "--llm-max-tokens", "64", "--vocab-size", "900"])
    assert run.train == TrainConfig(model="nmtm", num_topics=6, seed=7, progress=False, phase2_epochs=3,
                                    hparams={"hidden": 100, "act": "relu"})
    assert run.data == DataConfig(path=str(data), langs=("en", "zh"), vocab_size=900)
    assert run.data.preprocessing == Preprocessing(vocab_size=900)
    # phase 2 runs --phase2-epochs epochs; the refiner samples with the run's seed
    assert run.phase2 == Phase2Config(epochs=3, mmd=False, refiner=RefinerConfig(
        backend="openai", llm_url="http://h/v1", sampling=Sampling(max_tokens=64, seed=7)))
    assert run.out == str(tmp_path / "r") and not run.resume and not run.contextual

    plain = parse(["--data", str(data), "--out", str(tmp_path / "r")])
    # no --set: the default backbone (infoctm) gets only what the fast recipe sets
    assert plain.phase2 is None and plain.train.hparams == {"bn_eps": 1e-10} and plain.data.langs is None
    assert plain.train == TrainConfig(progress=False)  # stderr is not a terminal under pytest


def test_progress_only_when_stderr_is_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    main_fd, sub_fd = os.openpty()  # a real terminal
    try:
        with os.fdopen(sub_fd, "w", closefd=False) as tty:
            monkeypatch.setattr(sys, "stderr", tty)
            assert parse(["--data", str(data), "--out", "r"]).train.progress is True
            assert parse(["--data", str(data), "--out", "r", "--quiet"]).train.progress is False
            ctx = contextual_main.make_context("xtm-contextual", [str(tmp_path)])
            assert build(ContextualConfig, {k: v for k, v in ctx.params.items() if k != "run_dir"}).progress
    finally:
        os.close(main_fd)
        os.close(sub_fd)


def test_contextual_after_out_of_core_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    with pytest.raises(XtmError, match="--contextual .* --out-of-core"):
        parse(["--data", str(data), "--out", "r", "--contextual", "--out-of-core"])


def test_bad_set_is_one_error_line(tmp_path: Path) -> None:
    data = tmp_path / "docs.jsonl"
    data.write_text("{}\n", encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "xtm.cli.train", "--data", str(data), "--out", str(tmp_path / "r"),
                        "--set", "hidden"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.strip() == "error: --set expects KEY=VALUE, got 'hidden'"
    assert not (tmp_path / "r").exists()


def test_help_lists_options_by_part_of_the_configuration() -> None:
    text = CliRunner().invoke(train_main, ["--help"], terminal_width=100).output
    for heading in ("Data:", "Run:", "Training:", "Phase 2 (LLM-XTM", "Phase 2: the refiner:", "Examples:"):
        assert heading in text
    assert text.index("--vocab-size") < text.index("Training:") < text.index("--lr") < text.index("--lambda-mmd")
    assert "total seconds one attempt" in text  # --llm-timeout says it is a deadline per attempt
    assert "(the paper uses 30; 0: no phase 2)" in params(train_main)["phase2_epochs"].help


def test_cli_imports_stay_light() -> None:
    """`xtm-train --help` must stay instant: neither the CLI nor the tree imports torch or numpy."""
    code = ("import sys, xtm.config; assert 'click' not in sys.modules; import xtm.cli.train, xtm.cli.contextual; "
            "heavy = {'torch', 'numpy', 'scipy'} & set(sys.modules); assert not heavy, heavy")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


# --------------------------------------------------------------------------- what a run writes


TRAIN_CONFIG_V1 = {"model": "infoctm", "num_topics": 50, "epochs": 100, "batch_size": 200, "lr": 0.002, "seed": 0,
                   "device": "auto", "checkpoint_every": 10, "threads": None, "cache_dir": None, "progress": True,
                   "hparams": {}, "phase2_epochs": 0}
# Fields added since, at the end (what an older run's config lacks reads back as the default).
TRAIN_CONFIG_V2 = {**TRAIN_CONFIG_V1, "eval_every": 0}
# Issue 15: the topic-word weights' own learning rate (docs/benchmarks.md "Full length").
TRAIN_CONFIG_V3 = {**TRAIN_CONFIG_V2, "topic_lr_scale": 1.0}
# Issue 15: --recipe (fast: NMTM at batch 50 and a 5x topic rate; the default backbone is as before).
TRAIN_CONFIG_V4 = {**TRAIN_CONFIG_V3, "recipe": "fast"}
TRAIN_CONFIG_V5 = {**TRAIN_CONFIG_V4, "lr_schedule": "constant"}
# Issue 15: the fast recipe sets InfoCTM's batch-norm eps (a value under "hparams", no new key: a file written
# before keeps its {}, and its model_config records the eps it was trained with).
TRAIN_CONFIG_V6 = {**TRAIN_CONFIG_V5, "hparams": {"bn_eps": 1e-10}}
DATA_V1 = {"path": "d", "dict_path": None, "langs": None, "vocab_size": 5000, "min_df": 2, "max_df": 0.5,
           "ref_corpus": None, "out_of_core": False, "shard_size": 10000, "shard_dir": None, "eval_train_docs": 20000}
# Token rules 2 (stopwords-iso, kind words; 2026-12-07): recorded for information, the run's own are in run.json.
DATA_V2 = {**DATA_V1, "token_rules": 2}
DATA_V3 = {**DATA_V2, "token_rules": 3}  # Korean through Kiwi (2026-12-07, later)
DATA_V4 = {**DATA_V3, "extra_stopwords": ()}  # xtm-train --stopwords FILE: the words (JSON: a list)
DATA_V5 = {**DATA_V4, "user_words": ()}  # xtm-train --user-words FILE: the words (JSON: a list)
PHASE2_V1 = {"epochs": 30, "refine_every": 8, "rounds": 5, "top_words": 15, "refined_words": 15,
             "lambda_mmd": 20000.0, "lambda_doc": 100.0, "doc_tau": 0.1, "mmd": True, "doc_align": True,
             "multi_kernel": False, "encoder": "use-multilingual",
             "refiner": {"backend": "embedding", "llm_url": None, "llm_model": None, "api_key_env": "OPENAI_API_KEY",
                         "concurrency": 8, "timeout": 120.0, "retries": 4,
                         "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 400, "seed": 0}}}
# Issue 15: tau, sampling and four settings of the public LLM-XTM code (fields at the end; values that were
# defaults before: docs/llm_xtm.md). A run written with V1 reads its missing fields back as these defaults.
PHASE2_V2 = {**PHASE2_V1, "doc_tau": 0.2,
             "refiner": {**PHASE2_V1["refiner"], "sampling": {"temperature": 0.7, "top_p": 0.7, "max_tokens": 400,
                                                              "seed": 0}},
             "lr_scale": 0.3, "grad_clip": 1.0, "balanced_mmd": True, "asked_words": 20}
# Issue 15: the embedding refiner's sets are disjoint by default; V2 files lack the key (they refined shared sets).
PHASE2_V3 = {**PHASE2_V2, "refiner": {**PHASE2_V2["refiner"], "exclusive": True}}
# Issue 15: the MMD source holds the refined words beside the top-N; V3 files lack the key (top-N only).
PHASE2_V4 = {**PHASE2_V3, "refined_support": True}
CONTEXTUAL_V1 = {"encoder": "use-multilingual", "objective": "distill", "lambda_tc": 1.0, "epochs": 30,
                 "batch_size": 256, "lr": 0.002, "hidden": 200, "dropout": 0.2, "finetune_epochs": 0,
                 "finetune_lr": 0.0001, "finetune_batch_size": 64, "max_tokens": 256, "seed": 0}
# Issue 14: the consistency terms and what --route auto serves (fields at the end). contextual.json files written
# with V1 also lack the top-level "auto_route": their bundles keep the bags of words on auto.
CONTEXTUAL_V2 = {**CONTEXTUAL_V1, "lambda_xl": 3.0, "xl_neighbors": 4, "lambda_smooth": 10.0, "smooth_sigma": 0.05,
                 "auto_route": "contextual"}
# After issue 14: pairs weigh 5 and each language's teacher is debiased. Files written with V2 keep their
# lambda_xl and lack teacher_debias (they were fitted with 0).
CONTEXTUAL_V3 = {**CONTEXTUAL_V2, "lambda_xl": 5.0, "teacher_debias": 1.0}
CONTEXTUAL_V4 = {**CONTEXTUAL_V3, "teacher_others": 0.1}  # issue 14, Choice 8


def test_the_written_dictionaries_keep_their_keys_order_and_defaults() -> None:
    """config.json, checkpoints and contextual.json written before the tree existed read the same (byte for byte
    in JSON: same keys, same order, same values)."""
    dump = json.dumps
    assert dump(TrainConfig().to_dict()) == dump(TRAIN_CONFIG_V6)
    assert dump(DataConfig(path="d").to_dict()) == dump(DATA_V5)
    assert dump(DataConfig(path="d", langs=("en", "zh")).to_dict()["langs"]) == '["en", "zh"]'
    assert dump(Phase2Config().to_dict()) == dump(PHASE2_V4)
    assert dump(ContextualConfig().to_dict()) == dump(CONTEXTUAL_V4)


def test_old_dictionaries_read_back_into_configs() -> None:
    assert Phase2Config.from_dict(PHASE2_V4) == Phase2Config()
    assert Phase2Config.from_dict(PHASE2_V3).refined_support is False
    assert Phase2Config.from_dict(PHASE2_V2).refiner.exclusive is False
    # a V1 run (before issue 15) keeps the values it wrote; what it lacks takes today's defaults
    old = Phase2Config.from_dict(PHASE2_V1)
    assert old.doc_tau == 0.1 and old.refiner.sampling.temperature == 1.0 and old.refiner.sampling.top_p == 0.95
    assert (old.lr_scale, old.grad_clip, old.balanced_mmd, old.asked_words) == (0.3, 1.0, True, 20)
    assert from_dict(DataConfig, {**DATA_V1, "name": "docs"}) == DataConfig(path="d")
    assert from_dict(TrainConfig, TRAIN_CONFIG_V1) == TrainConfig()
    # an NMTM run written before the recipes keeps the batch and rate it recorded
    old_nmtm = from_dict(TrainConfig, {**TRAIN_CONFIG_V3, "model": "nmtm"})
    assert (old_nmtm.batch_size, old_nmtm.topic_lr_scale) == (200, 1.0)
    assert from_dict(TrainConfig, TRAIN_CONFIG_V4).lr_schedule == "constant"  # before the setting: constant


@pytest.mark.parametrize(("model", "recipe", "given", "expected"), [
    ("nmtm", "fast", {}, (50, 5.0)),
    ("nmtm", "paper", {}, (200, 1.0)),
    ("nmtm", "fast", {"batch_size": 64}, (64, 5.0)),           # what is given wins over the recipe
    ("nmtm", "fast", {"topic_lr_scale": 1.0}, (50, 1.0)),
    ("infoctm", "fast", {}, (200, 1.0)),
    ("xtra", "fast", {}, (200, 1.0)),
    ("gloctm", "paper", {"batch_size": 100}, (100, 1.0)),
    ("infoctm", "authors", {}, (128, 1.0)),
    ("nmtm", "authors", {"batch_size": 64}, (64, 1.0)),
])
def test_the_recipe_fills_only_the_training_settings_not_given(model, recipe, given, expected) -> None:
    cfg = TrainConfig(model=model, recipe=recipe, **given)
    assert (cfg.batch_size, cfg.topic_lr_scale) == expected
    assert TrainConfig(**cfg.to_dict()) == cfg  # config.json reads back as the same run


@pytest.mark.parametrize(("model", "recipe", "given", "expected"), [
    ("infoctm", "fast", {}, {"bn_eps": 1e-10}),
    ("infoctm", "paper", {}, {}),                                  # the papers' (the backbone's default, 1e-5)
    ("infoctm", "fast", {"bn_eps": 1e-5}, {"bn_eps": 1e-5}),       # --set wins over the recipe
    ("infoctm", "fast", {"weight_mi": 15.0}, {"bn_eps": 1e-10, "weight_mi": 15.0}),
    ("nmtm", "fast", {}, {}),
    ("xtra", "fast", {}, {}),
    ("gloctm", "fast", {}, {}),
    ("infoctm", "authors", {}, {"hidden": 100, "grad_clip": 1.0}),        # their eps: the backbone's default
    ("nmtm", "authors", {"grad_clip": 0.0}, {"hidden": 100, "grad_clip": 0.0}),
    ("xtra", "authors", {}, {}),                                   # XTRA's defaults are its authors' already
])
def test_the_recipe_fills_only_the_backbone_settings_not_given(model, recipe, given, expected) -> None:
    cfg = TrainConfig(model=model, recipe=recipe, hparams=given)
    assert cfg.hparams == expected
    assert TrainConfig(**cfg.to_dict()) == cfg  # config.json reads back as the same run


def test_the_training_line_says_what_the_recipe_made_of_the_run() -> None:
    assert TrainConfig().describe() == ("training infoctm, K=50, 100 epochs, recipe fast: batch 200, Adam 0.002 (1x "
                                        "for the topic-word weights), constant rate; bn_eps=1e-10")
    assert TrainConfig(hparams={"weight_mi": 15.0, "mi_decay_from": 0.4}).describe().endswith(
        "constant rate; bn_eps=1e-10, weight_mi=15, mi_decay_from=0.4")
    assert TrainConfig(recipe="paper").describe().endswith("recipe paper: batch 200, Adam 0.002 (1x for the "
                                                           "topic-word weights), constant rate")
    assert TrainConfig(model="nmtm", recipe="paper", hparams={"hidden": 100}).describe().endswith(
        "recipe paper: batch 200, Adam 0.002 (1x for the topic-word weights), constant rate; hidden=100")


def test_the_authors_recipe_is_the_llm_xtm_code_per_backbone() -> None:
    """--recipe authors: the published rows' code (LLM-XTM configs/model/*.yaml, runners/Runner.py): batch 128,
    StepLR (125 epochs, XTRA 250), NMTM at Adam 1e-3; what is given still wins, and config.json reads back."""
    nmtm, infoctm, xtra = (TrainConfig(model=m, recipe="authors") for m in ("nmtm", "infoctm", "xtra"))
    assert (nmtm.lr, infoctm.lr, xtra.lr) == (0.001, 0.002, 0.002)
    assert {c.lr_schedule for c in (nmtm, infoctm, xtra)} == {"step"}
    assert xtra.describe().endswith("recipe authors: batch 128, Adam 0.002 (1x for the topic-word weights), step "
                                    "rate (halved every 250 epochs)")
    assert infoctm.describe().endswith("step rate (halved every 125 epochs); hidden=100, grad_clip=1")
    given = TrainConfig(model="nmtm", recipe="authors", lr=0.004, lr_schedule="constant")
    assert (given.lr, given.lr_schedule) == (0.004, "constant")
    assert TrainConfig(**given.to_dict()) == given
    assert (TrainConfig().lr, TrainConfig(recipe="paper", model="nmtm").lr) == (0.002, 0.002)


def test_an_unknown_recipe_is_refused_naming_the_choices() -> None:
    with pytest.raises(XtmError, match="recipe must be one of fast, paper, authors"):
        TrainConfig(recipe="quick")
    # a hand-edited config.json whose hparams is not a mapping is named, not a TypeError
    for bad in (None, [1], "bn_eps=1"):
        with pytest.raises(XtmError, match="hparams must map backbone hyper-parameters"):
            from_dict(TrainConfig, {"hparams": bad})
    # a run written before a rule existed: the rule's default
    assert from_dict(Preprocessing, {"vocab_size": 800, "path": "d"}) == Preprocessing(vocab_size=800)


@pytest.mark.filterwarnings("ignore:.*dropped")
def test_load_corpus_takes_the_rules_as_an_object_or_by_name(example_dir: Path) -> None:
    from xtm.trainer.data.loading import load_corpus

    docs = example_dir / "docs.jsonl"
    by_object = load_corpus(docs, prep=Preprocessing(vocab_size=30, min_df=3), progress=False)
    by_name = load_corpus(docs, vocab_size=30, min_df=3, progress=False)
    assert [lc.vocab for lc in by_object.languages] == [lc.vocab for lc in by_name.languages]
    assert all(lc.vocab_size == 30 for lc in by_object.languages)
    with pytest.raises(TypeError):
        load_corpus(docs, vocab_sise=30, progress=False)


def test_cli_value_gives_what_a_shell_command_line_takes_back() -> None:
    import shlex

    from xtm.config import cli_value

    for value, shown in ((2.0, "2"), (20000.0, "20000"), (0.000316227766, "0.000316227766"), (20240101, "20240101"),
                         (1e-10, "1e-10"), ("openai", "openai"), ("/m/My Models/q.gguf", "'/m/My Models/q.gguf'"),
                         ("", "''"), ("x;rm -rf ~", "'x;rm -rf ~'")):
        assert cli_value(value) == shown
        if isinstance(value, str):
            assert shlex.split(f"--llm-model {cli_value(value)}") == ["--llm-model", value]

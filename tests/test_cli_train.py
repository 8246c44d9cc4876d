"""xtm-train as a user runs it: a real process, real files, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CLI = [sys.executable, "-m", "xtm.cli.train"]


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(CLI + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


def test_train_on_the_builtin_example_writes_the_contract(example_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"),
             "--model", "nmtm", "--topics", "6", "--epochs", "15", "--out", str(out),
             "--ref-corpus", str(example_dir / "ref_en_zh"), "--seed", "1"])
    assert p.returncode == 0, p.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("TU", "TQ", "CNPMI", "classification", "seconds_per_epoch"):
        assert key in metrics
    assert set(metrics["classification"]) == {"EN-I", "ZH-I", "EN-C", "ZH-C"}
    # The example's six categories are learnable: far above chance (1/6) in and across languages.
    assert min(metrics["classification"].values()) > 0.5, metrics["classification"]
    # and under the published tables' protocol (RBF SVC on the encoder means), on stdout too
    assert set(metrics["classification_published"]) == {"EN-I", "ZH-I", "EN-C", "ZH-C"}
    assert min(metrics["classification_published"].values()) > 0.5, metrics["classification_published"]
    assert metrics["CNPMI"] > 0.05 and metrics["TQ"] == pytest.approx(metrics["CNPMI"] * metrics["TU"])
    for lang in ("en", "zh"):
        lines = (out / f"topics_{lang}.txt").read_text(encoding="utf-8").splitlines()
        assert len(lines) == 6 and all(len(line.split()) == 15 for line in lines)
    assert (out / "checkpoints" / "latest.json").exists()
    # stdout is machine-readable JSON summary
    assert json.loads(p.stdout)["TU"] == metrics["TU"]
    assert json.loads(p.stdout)["classification_published"] == metrics["classification_published"]
    # stderr is a pipe here, so no bar: the library's log lines, one per epoch among them (issue 16)
    assert "xtm-train: loaded " in p.stderr and "xtm-train: evaluating" in p.stderr
    assert "is not used by" not in p.stderr  # nmtm reads the --dict it is given
    epochs = [line for line in p.stderr.splitlines() if line.startswith("xtm-train: epoch ")]
    assert [line.split(":")[1].strip() for line in epochs] == [f"epoch {e}/15" for e in range(1, 16)]


def test_help_teaches_with_examples() -> None:
    p = run(["--help"])
    assert p.returncode == 0
    assert "--resume" in p.stdout and "Examples:" in p.stdout and "ISO 639-1" in p.stdout


def test_bad_jsonl_line_is_reported_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "docs.jsonl"
    bad.write_text('{"text": "hello world", "lang": "en"}\n{"text": broken\n', encoding="utf-8")
    p = run(["--data", str(bad), "--model", "nmtm", "--out", str(tmp_path / "r")])
    assert p.returncode == 2
    assert f"{bad}:2" in p.stderr and "Traceback" not in p.stderr


def test_dictionary_backbone_without_dictionary_says_what_to_do(example_dir: Path, tmp_path: Path) -> None:
    p = run(["--data", str(example_dir / "docs.jsonl"), "--model", "infoctm", "--topics", "6",
             "--epochs", "1", "--out", str(tmp_path / "r")])
    assert p.returncode == 2
    assert "--dict" in p.stderr and "xtra" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("extra,message", [
    (["--model", "xtra", "--set", "encoder=5"], "error: unknown encoder '5': use 'use-multilingual' or 'st:<"),
    (["--model", "nmtm", "--phase2-epochs", "1", "--encoder", "st:"], "error: encoder 'st:' names no model"),
])
def test_a_bad_encoder_name_is_one_error_line(example_dir: Path, tmp_path: Path, extra, message) -> None:
    """Before: `--set encoder=5` died in AttributeError ('int' has no encode), `--encoder st:` built an empty
    sentence-transformers model that failed later; both were tracebacks."""
    p = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--topics", "4",
             "--epochs", "1", "--out", str(tmp_path / "r"), *extra])
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_a_dictionary_xtra_never_reads_is_said_not_silently_ignored(example_dir: Path, tmp_path: Path) -> None:
    p = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "xtra",
             "--topics", "4", "--epochs", "1", "--no-contextual", "--out", str(tmp_path / "r")])
    assert p.returncode == 0, p.stderr
    assert "xtm-train: --dict is not used by xtra: it aligns topics through multilingual sentence embeddings " \
           "(--model nmtm or --model infoctm align through the dictionary)" in p.stderr
    without = run(["--data", str(example_dir / "docs.jsonl"), "--model", "xtra", "--topics", "4", "--epochs", "1",
                   "--no-contextual", "--out", str(tmp_path / "r2")])
    assert without.returncode == 0 and "--dict" not in without.stderr, without.stderr


def test_a_data_warning_is_a_command_line_not_a_python_traceback_line(example_dir: Path, tmp_path: Path) -> None:
    # Warnings xtm raises while reading the data (here: one document without a label) read like every other
    # line of the command, not as "/path/to/xtm/trainer/run.py:201: UserWarning: ..." plus a source line.
    docs = tmp_path / "docs.jsonl"
    docs.write_text((example_dir / "docs.jsonl").read_text(encoding="utf-8")
                    + json.dumps({"lang": "en", "text": "the coach praised the team after the match"}) + "\n",
                    encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    p = subprocess.run(CLI + ["--data", str(docs), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
                              "--topics", "4", "--epochs", "1", "--no-contextual", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if "have a label" in ln]
    assert len(lines) == 1 and lines[0].startswith("xtm-train: warning: "), p.stderr
    assert "UserWarning" not in p.stderr, p.stderr
    # One epoch of a small corpus is a few optimizer steps: said, with what to change.
    few = [ln for ln in p.stderr.splitlines() if "optimizer steps in all" in ln]
    assert len(few) == 1 and few[0].startswith("xtm-train: warning: 1 epoch(s) of "), p.stderr
    assert "the topics may not settle. Train more (more --epochs, or a smaller --batch-size such as" in few[0]


def test_existing_run_needs_resume(example_dir: Path, tmp_path: Path) -> None:
    args = ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--no-contextual", "--topics", "6", "--epochs", "1", "--out", str(tmp_path / "r")]
    assert run(args).returncode == 0
    again = run(args)
    assert again.returncode == 2 and "--resume" in again.stderr
    resumed = run(args[:-4] + ["--epochs", "2", "--out", str(tmp_path / "r"), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["epochs"] == 2


def test_phase2_from_the_command_line(example_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    p = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"),
             "--model", "nmtm", "--topics", "6", "--epochs", "4", "--phase2-epochs", "2", "--refine-every", "1",
             "--rounds", "2", "--refined-words", "8", "--no-doc-align", "--no-contextual", "--out", str(out)])
    assert p.returncode == 0, p.stderr
    assert "refinement at epoch 5 (embedding): 12/12 usable answers" in p.stderr
    summary = json.loads(p.stdout)
    assert summary["refined_sets"]["TU"] > 0
    cfg = json.loads((out / "config.json").read_text())["phase2"]
    assert cfg["rounds"] == 2 and cfg["doc_align"] is False and cfg["refined_words"] == 8
    lines = (out / "refined_topics_en.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6 and all(0 < len(line.split()) <= 8 for line in lines)


@pytest.mark.parametrize("extra,message", [
    (["--refiner", "openai", "--llm-model", "m"], "--refiner openai needs --llm-url"),
    (["--refiner", "vllm"], "--refiner vllm needs --llm-model"),
])
def test_phase2_misconfigured_refiner_is_a_clear_error(example_dir: Path, tmp_path: Path, extra, message) -> None:
    p = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
             "--topics", "4", "--epochs", "1", "--phase2-epochs", "1", "--out", str(tmp_path / "r"), *extra])
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr


def test_an_llm_refiner_without_phase_2_is_refused_not_ignored(example_dir: Path, tmp_path: Path) -> None:
    """Before: `--refiner openai --llm-url ...` without --phase2-epochs trained, labelled the topics without the
    LLM and never said the LLM went unused."""
    p = run(["--data", str(example_dir / "docs.jsonl"), "--model", "nmtm", "--topics", "4", "--epochs", "1",
             "--refiner", "openai", "--llm-url", "http://127.0.0.1:9/v1", "--llm-model", "m",
             "--out", str(tmp_path / "r")])
    assert p.returncode == 2 and "--phase2-epochs" in p.stderr and "xtm-label" in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()


def test_stopwords_from_a_file_leave_every_vocabulary_and_a_resume_with_others_says_so(
        example_dir: Path, tmp_path: Path) -> None:
    # Domain words the built-in lists do not hold ("experts", "reports"; 报道 "report"), dropped in every language,
    # recorded in config.json and said back by metrics.json and by a --resume that forgot them.
    words = tmp_path / "domain.txt"
    words.write_text("\ufeff# words of this corpus's boilerplate\nExperts\r\nreports\n\n报道\nreports\n",
                     encoding="utf-8")
    out = tmp_path / "r"
    base = ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--no-contextual", "--topics", "4", "--out", str(out)]
    p = run(base + ["--epochs", "1", "--stopwords", str(words)])
    assert p.returncode == 0, p.stderr
    en = (out / "vocab_en.txt").read_text(encoding="utf-8").split()
    zh = (out / "vocab_zh.txt").read_text(encoding="utf-8").split()
    assert "experts" not in en and "reports" not in en and "报道" not in zh
    assert "agreed" in en and "计划" in zh  # only those
    assert json.loads((out / "config.json").read_text())["data"]["extra_stopwords"] == ["Experts", "reports", "报道"]
    prep = json.loads((out / "metrics.json").read_text())["corpus"]["preprocessing"]
    assert prep["extra_stopwords"] == {"words": 3, "used": {"en": 3, "zh": 3}}
    # A resume without --stopwords takes the run's words; one with other words is refused, saying which.
    other = tmp_path / "other.txt"
    other.write_text("agreed\n", encoding="utf-8")
    changed = run(base + ["--epochs", "2", "--resume", "--stopwords", str(other)])
    assert changed.returncode == 2
    assert "--stopwords: 3 words then, 1 words now" in changed.stderr, changed.stderr
    again = run(base + ["--epochs", "2", "--resume"])
    assert again.returncode == 0, again.stderr
    assert "--stopwords (3 words)" in again.stderr
    # A contextual fit rebuilds the run's vocabulary with the recorded words.
    from xtm.run_dir import RunDir
    from xtm.trainer.contextual.fit import load_run_corpus

    assert load_run_corpus(out, RunDir(out).load_config(), progress=False).lang("en").vocab == en
    # A config.json edited by hand: a wrong type is named with the file; null is no words (then the vocabulary
    # differs, which is said as such).
    from xtm.errors import XtmError

    cfg = RunDir(out).load_config()
    with pytest.raises(XtmError, match="data.extra_stopwords: extra_stopwords must be a list of single words") as e:
        load_run_corpus(out, {**cfg, "data": {**cfg["data"], "extra_stopwords": "the"}}, progress=False)
    assert e.value.path == str(out / "config.json")
    with pytest.raises(XtmError, match="the data no longer gives the run's en vocabulary"):
        load_run_corpus(out, {**cfg, "data": {**cfg["data"], "extra_stopwords": None}}, progress=False)


@pytest.mark.parametrize(("content", "message"), [
    (b"market\nnew york\n", "domain.txt:2: 'new york' is several words: one word a line"),
    (b"# nothing but a comment\n\n", "domain.txt: holds no words: expected one word a line"),
    (b"market\n\xff\xfe\n", "domain.txt:2: not valid UTF-8 text, expected a word list (one word a line)"),
    (b"market\nst\x00ock\n", "domain.txt:2: binary data (NUL byte), expected a text word list"),
])
def test_a_bad_stopword_file_is_one_error_naming_its_line(content: bytes, message: str, example_dir: Path,
                                                          tmp_path: Path) -> None:
    words = tmp_path / "domain.txt"
    words.write_bytes(content)
    p = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
             "--topics", "4", "--epochs", "1", "--stopwords", str(words), "--out", str(tmp_path / "r")])
    assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_resume_takes_the_runs_own_settings_for_the_options_it_is_not_given(example_dir: Path, tmp_path: Path) -> None:
    # `--out RUN --resume --epochs N` continues the run: every other option had to be repeated, and a forgotten
    # --model or --topics was refused as another run ("the checkpoint is nmtm with K=4, but this run asks for
    # infoctm with K=50"). Options given still win, and the checkpoint still refuses what contradicts it.
    words = tmp_path / "stop.txt"
    words.write_text("experts\n", encoding="utf-8")
    out = tmp_path / "r"
    first = run(["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
                 "--topics", "4", "--epochs", "1", "--batch-size", "32", "--stopwords", str(words), "--no-contextual",
                 "--out", str(out)])
    assert first.returncode == 0, first.stderr
    vocab = (out / "vocab_en.txt").read_text(encoding="utf-8")
    p = run(["--out", str(out), "--resume", "--epochs", "2", "--no-contextual"])
    assert p.returncode == 0, p.stderr
    said = next(line for line in p.stderr.splitlines() if "--resume: the run's own settings" in line)
    for part in ("--model nmtm", "--topics 4", "--batch-size 32", f"--data {example_dir / 'docs.jsonl'}",
                 "--stopwords (1 words)"):
        assert part in said, said
    assert "--epochs" not in said and json.loads((out / "metrics.json").read_text())["epochs"] == 2
    assert (out / "vocab_en.txt").read_text(encoding="utf-8") == vocab
    other = run(["--out", str(out), "--resume", "--epochs", "3", "--topics", "5", "--no-contextual"])
    assert other.returncode == 2 and "--topics 4" in other.stderr, other.stderr
    # A recipe given on a resume is the recipe (its batch and rates), refused by the checkpoint, not a name over
    # the recorded recipe's values; --no-contextual is recorded too (a resume fitted the route, minutes of work).
    recipe = run(["--out", str(out), "--resume", "--epochs", "3", "--recipe", "paper"])
    assert recipe.returncode == 2 and "--recipe fast" in recipe.stderr, recipe.stderr
    p = run(["--out", str(out), "--resume", "--epochs", "3"])
    assert p.returncode == 0 and "--no-contextual" in p.stderr and not (out / "contextual").exists(), p.stderr
    missing = run(["--out", str(tmp_path / "new"), "--epochs", "1"])
    assert missing.returncode == 2 and "Missing option '--data'" in missing.stderr


def test_resume_fills_phase_2_setting_by_setting_and_checks_what_it_reads(example_dir: Path, tmp_path: Path) -> None:
    # One phase-2 option given on a --resume reset every other recorded phase-2 setting to its default; a tampered
    # config.json went round the command line's checks into tracebacks, or read the current directory as the data.
    out = tmp_path / "r"
    base = ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm",
            "--topics", "4", "--no-contextual", "--out", str(out)]
    first = run(base + ["--epochs", "1", "--phase2-epochs", "1", "--refine-every", "1", "--rounds", "2",
                        "--lambda-mmd", "5000"])
    assert first.returncode == 0, first.stderr
    p = run(["--out", str(out), "--resume", "--epochs", "1", "--phase2-epochs", "2", "--rounds", "2",
             "--no-contextual"])
    assert p.returncode == 0, p.stderr
    phase2 = json.loads((out / "config.json").read_text())["phase2"]
    assert (phase2["lambda_mmd"], phase2["refine_every"], phase2["rounds"], phase2["epochs"]) == (5000.0, 1, 2, 2)
    config = json.loads((out / "config.json").read_text())
    for where, name, value, said in (("train_config", "num_topics", "4", "num_topics must be a number, got '4'"),
                                     ("train_config", "lr", "NaN", "lr must be"),
                                     ("data", "path", "", "data.path: must be a path, got ''"),
                                     ("data", "path", "moved/docs.jsonl", "is relative to the directory the run was "
                                                                          "trained in and is not found from here")):
        bad = json.loads(json.dumps(config))
        bad[where][name] = float("nan") if value == "NaN" else value
        (out / "config.json").write_text(json.dumps(bad))
        p = run(["--out", str(out), "--resume", "--epochs", "1", "--phase2-epochs", "3", "--no-contextual"])
        assert p.returncode == 2 and f"{out / 'config.json'}: " in p.stderr and said in p.stderr, p.stderr
        assert "Traceback" not in p.stderr
    # A part that is not an object was read as nothing recorded ("Missing option '--data'"), and a --no-contextual
    # recorded as "yes" was ignored (the resume fitted the route).
    for key, value, said in (("data", [], "data must be an object, got []"),
                             ("command", {"no_contextual": "yes"}, "command.no_contextual must be true, false or null"),
                             ("train_config", 5, "train_config must be an object, got 5")):
        (out / "config.json").write_text(json.dumps({**config, key: value}))
        p = run(["--out", str(out), "--resume", "--epochs", "1", "--phase2-epochs", "3"])
        assert p.returncode == 2 and f"{out / 'config.json'}: {said}" in p.stderr, p.stderr
    (out / "config.json").write_text(json.dumps(config))
    empty = run(["--out", str(tmp_path / "nothing"), "--resume"])
    assert empty.returncode == 2 and "holds no finished or interrupted run" in empty.stderr


def test_a_bad_cache_limit_is_said_before_training(example_dir: Path, tmp_path: Path) -> None:
    # It was noticed when the contextual fit embedded the corpus, after the whole training.
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "XTM_EMBEDDINGS_CACHE_MB": "1e308"}
    p = subprocess.run(CLI + ["--data", str(example_dir / "docs.jsonl"), "--dict", str(example_dir / "dict.tsv"),
                              "--model", "nmtm", "--topics", "4", "--epochs", "1", "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 2 and "XTM_EMBEDDINGS_CACHE_MB must be a number of megabytes" in p.stderr
    assert not (tmp_path / "r").exists()

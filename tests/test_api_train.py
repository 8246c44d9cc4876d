"""Issue 16: training from Python on documents in memory (`xtm.train`), the same run xtm-train makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from run_lock import held_by_another_process

import xtm
from xtm.errors import XtmError
from xtm.examples import write_example
from xtm.run_dir import RunDir

DOCS_PER_LANG = 60


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_example(tmp_path_factory.mktemp("ex"), docs_per_lang=DOCS_PER_LANG, seed=0)


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.mark.slow
def test_train_on_lists_export_and_infer(example: dict[str, Path], tmp_path: Path) -> None:
    docs = rows(example["docs"])
    pairs = [tuple(line.split("\t")) for line in example["dict"].read_text(encoding="utf-8").splitlines()]
    run = xtm.train([d["text"] for d in docs], langs=[d["lang"] for d in docs], labels=[d["label"] for d in docs],
                    dictionary=pairs, model="NMTM", num_topics=6, epochs=3, out=tmp_path / "run", min_df=1, seed=1)
    assert isinstance(run, xtm.TrainedRun) and not run.interrupted
    assert run.run_dir == tmp_path / "run" and RunDir(run.run_dir).load_metrics() == run.metrics
    assert run.metrics["model"] == "nmtm" and run.metrics["num_topics"] == 6 and run.metrics["epochs"] == 3
    assert 0 < run.metrics["TU"] <= 1 and run.metrics["classification"]  # labels reached the evaluation
    assert set(run.topics) == {"en", "zh"} and len(run.topics["en"]) == 6
    # The documents went through the JSONL reader from a file the run records (xtm-contextual reads it again).
    cfg = RunDir(run.run_dir).load_config()
    assert Path(cfg["data"]["path"]) == run.data_path == tmp_path / "run.data" / "docs.jsonl"
    assert [r["text"] for r in rows(run.data_path)] == [d["text"] for d in docs]
    assert cfg["train_config"]["seed"] == 1 and cfg["data"]["min_df"] == 1

    # As xtm-train: the contextual route is fitted by default, so the bundle serves languages never trained on.
    assert run.contextual is not None and (run.run_dir / "contextual" / "contextual.json").is_file()

    model = run.export(tmp_path / "bundle")
    assert model.num_topics == 6 and model.languages == ["en", "zh"]
    theta = model.transform(["The coach said the team will win the final.", "股市今天大幅下跌"])
    assert theta.shape == (2, 6) and np.allclose(theta.sum(axis=1), 1, atol=1e-5)
    assert [w for w, _ in model.get_topic(0, "en", 15)] == run.topics["en"][0]
    assert model.infer(["L'entraîneur a dit que l'équipe gagnera la finale."], langs="fr").routes == ["contextual"]


def test_contextual_false_trains_without_the_route(example: dict[str, Path], tmp_path: Path) -> None:
    run = xtm.train(rows(example["docs"]), dictionary=example["dict"], model="nmtm", num_topics=6, epochs=1,
                    out=tmp_path / "run", min_df=1, contextual=False)
    assert run.contextual is None and not (run.run_dir / "contextual").exists()
    with pytest.raises(XtmError, match="contextual must be True, False or None"):
        xtm.train(rows(example["docs"]), dictionary=example["dict"], out=tmp_path / "run2", contextual="yes")


def test_train_leaves_the_callers_random_state_and_takes_numpy_labels_and_out_dot(
        example: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: train() reseeded Python's and torch's global generators and left them so (every `random` user in
    the calling service restarted the same sequence); numpy labels could not be written as JSON; out="." was a
    ValueError (a path with no name to put ".data" after)."""
    import random

    import torch

    docs = rows(example["docs"])
    labels = np.array([d["label"] for d in docs])
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    random.seed(12345)
    torch.manual_seed(12345)
    expected = (random.random(), torch.rand(1).item())
    random.seed(12345)
    torch.manual_seed(12345)
    run = xtm.train([d["text"] for d in docs], langs=[d["lang"] for d in docs], labels=labels,
                    dictionary=example["dict"], model="nmtm", num_topics=6, epochs=1, out=".", min_df=1,
                    contextual=False, seed=3)
    assert (random.random(), torch.rand(1).item()) == expected
    assert run.metrics["classification"] and (tmp_path / "here.data" / "docs.jsonl").is_file()


def test_someone_elses_directory_is_refused_before_anything_is_written(example: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    """out= holding other files is refused as xtm-train refuses it, before the documents are written
    beside it (records and a dictionary file as input)."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me", encoding="utf-8")
    with pytest.raises(XtmError, match="not an xtm run"):
        xtm.train(rows(example["docs"]), dictionary=example["dict"], model="nmtm", num_topics=6, epochs=1,
                  out=foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"] and not (tmp_path / "mine.data").exists()
    # A data_dir holding only the user's own docs.jsonl is not ours either (it was overwritten).
    data = tmp_path / "corpus"
    data.mkdir()
    (data / "docs.jsonl").write_text('{"text": "my only copy"}\n', encoding="utf-8")
    with pytest.raises(XtmError, match="data_dir must be new, empty or one an earlier xtm.train call wrote"):
        xtm.train(rows(example["docs"]), dictionary=example["dict"], model="nmtm", num_topics=6, epochs=1,
                  out=tmp_path / "run2", data_dir=data)
    assert (data / "docs.jsonl").read_text(encoding="utf-8") == '{"text": "my only copy"}\n'


@pytest.mark.parametrize("layout", ["same", "holds the run"])
def test_a_data_dir_that_is_out_or_holds_it_is_refused_before_anything_is_written(
        example: dict[str, Path], tmp_path: Path, layout: str) -> None:
    """data_dir=out (or out inside data_dir) trained once, then every resume=True was refused as "holds other
    files" (the run's own files, to the data check): refused at the first call, saying what to pass."""
    data = tmp_path / "both"
    out = data if layout == "same" else data / "run"
    with pytest.raises(XtmError, match=r"data_dir is (the run directory|a directory holding).*another data_dir"):
        xtm.train(rows(example["docs"]), dictionary=example["dict"], model="nmtm", num_topics=6, epochs=1,
                  out=out, data_dir=data)
    assert not data.exists()


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"docs": "one text"}, "docs must be a list of texts or records"),
    ({"docs": []}, "docs is empty"),
    ({"docs": ["a", 3]}, r"docs\[1\] must be a text or a record"),
    ({"docs": ["a", {"text": None}]}, r"docs\[1\]: 'text' must be a string, got None"),
    ({"docs": ["a"], "model_langs": "en,ja"}, "model_langs must be a list of language codes"),
    ({"docs": ["a"], "model_langs": ["en", "en"]}, "model_langs must name each language once"),
    ({"docs": ["a"], "model_langs": ["en", "klingon"]}, "model_langs: invalid language code 'klingon'"),
    ({"docs": ["a", "b"], "langs": ["en"]}, r"langs must give one value per document \(2\), got 1 values"),
    ({"docs": ["a", "b"], "langs": ["en", "q"]}, r"langs\[1\]: invalid language code 'q'"),
    ({"docs": [{"text": "a", "lang": "en"}], "langs": "en"}, "give their languages and labels in the records"),
    ({"docs": ["a"], "num_topics": 1}, "num_topics must be >= 2 and <= 10000, got 1"),
    ({"docs": ["a"], "epochs": 0}, "epochs must be >= 1"),
    ({"docs": ["a"], "lr": float("nan")}, "lr must be a finite number, got nan"),
    ({"docs": ["a"], "seed": -1}, "seed must be >= 0"),
    ({"docs": ["a"], "model": "lda"}, "model must be one of nmtm, infoctm"),
    # Before: each of these passed the check and crashed inside training with a TypeError or AttributeError,
    # after the run directory was written.
    ({"docs": ["a"], "num_topics": 2.5}, "num_topics must be a whole number, got 2.5"),
    ({"docs": ["a"], "min_df": None}, r"min_df must not be None: leave it out for its default \(2\)"),
    ({"docs": ["a"], "epochs": 1.5}, "epochs must be a whole number, got 1.5"),
    ({"docs": ["a"], "seed": None}, "seed must not be None"),
    ({"docs": ["a"], "model": 5}, "model must be one of"),
    ({"docs": ["a"], "device": 5}, "device must be a string, got 5"),
    ({"docs": ["a"], "lr": "0.1"}, "lr must be a number, got '0.1'"),
    ({"docs": ["a"], "seed": 10**400}, "seed must be >= 0 and <= 4.29497e"),  # was an OverflowError
    ({"docs": ["a"], "device": "tpu"}, "--device 'tpu' is not a device"),  # was written first, then refused
    ({"docs": ["a"], "vocab_sise": 10}, "unknown setting.*vocab_sise.*vocab_size"),
    ({"docs": ["a"], "dictionary": [("a", "b", "c")]}, "dictionary entry 0 must be a pair"),
    ({"docs": ["a"], "dictionary": {"a\tb": "c"}}, "without tabs or newlines"),
    ({"docs": ["a"], "extra_stopwords": "market"}, "extra_stopwords must be a list of words, got str"),
    ({"docs": ["a"], "extra_stopwords": ["market", "new york"]}, "must be single words, got 'new york'"),
    ({"docs": ["a"], "extra_stopwords": [3]}, "extra_stopwords must be single words, got 3"),
    ({"docs": ["caf\ud800"]}, "docs\\[0\\]: 'text' is not Unicode text: a lone surrogate at character 3"),
])
def test_bad_arguments_are_one_clear_error_before_anything_is_written(kwargs: dict, needle: str,
                                                                     tmp_path: Path) -> None:
    with pytest.raises(XtmError, match=needle):
        xtm.train(**{"out": tmp_path / "run", **kwargs})
    assert not (tmp_path / "run").exists()


def test_a_bad_document_is_named_by_its_line_in_the_written_jsonl(tmp_path: Path) -> None:
    """What only the JSONL reader checks (a record's split) fails as xtm-train fails: one line naming
    the file and line, and line N is docs[N - 1]."""
    docs = [{"text": "The market fell sharply today.", "lang": "en"}, {"text": "股市今天大幅下跌", "lang": "zh"},
            {"text": "The team won.", "lang": "en", "split": "validation"}]
    with pytest.raises(XtmError) as e:
        xtm.train(docs, model="nmtm", num_topics=2, epochs=1, out=tmp_path / "run")
    assert "docs.jsonl:3: field 'split'" in str(e.value)


def test_a_dictionary_given_as_pairs_is_named_as_the_callers_pairs(example: dict[str, Path], tmp_path: Path) -> None:
    # The error named only OUT.data/dict.tsv, a file the caller never wrote.
    with pytest.raises(XtmError, match=r"^the dictionary given as pairs \(written to .*dict\.tsv\): the dictionary "
                                       "matches none of the vocabularies"):
        xtm.train(rows(example["docs"]), dictionary={"foo": "bar"}, model="nmtm", num_topics=6, epochs=1,
                  out=tmp_path / "run", contextual=False)


def test_numpy_numbers_and_whole_floats_are_taken_as_the_command_line_takes_them() -> None:
    from xtm.trainer.api import _configs

    cfg, data = _configs({"model": "nmtm", "num_topics": np.int64(6), "epochs": 3.0}, False,
                         {"lr": np.float32(0.01), "seed": np.uint32(7), "min_df": np.int64(1)})
    assert (cfg.num_topics, cfg.epochs, cfg.seed, data["min_df"]) == (6, 3, 7, 1)
    assert all(type(x) is int for x in (cfg.num_topics, cfg.epochs, cfg.seed, data["min_df"]))
    assert type(cfg.lr) is float and cfg.lr == pytest.approx(0.01)


def test_a_device_torch_does_not_know_is_one_error() -> None:
    from xtm.trainer.loop.torch_setup import pick_device

    with pytest.raises(XtmError, match="--device 'tpu' is not a device: give auto, cpu, cuda or cuda:N"):
        pick_device("tpu")


def test_a_pandas_column_with_missing_entries_reads_them_as_none() -> None:
    pd = pytest.importorskip("pandas")
    from xtm.trainer.api import _per_doc

    assert _per_doc("labels", pd.Series(["a", np.nan, pd.NA, None], index=[9, 3, 1, 0]), 4) == ["a", None, None, None]


def test_a_run_is_resumed_with_resume_true_and_never_written_over(example: dict[str, Path], tmp_path: Path) -> None:
    # The error said "pass --resume", which train() did not take, and a second call had already replaced the run's
    # documents with its own before refusing.
    docs = rows(example["docs"])
    out = tmp_path / "run"
    xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=out, min_df=1,
              contextual=False)
    written = (tmp_path / "run.data" / "docs.jsonl").read_bytes()
    with pytest.raises(XtmError, match="out already holds a run: pass resume=True"):
        xtm.train(docs[:50], dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=out, min_df=1,
                  contextual=False)
    with pytest.raises(XtmError, match="resume=True with other documents than the run was trained on"):
        xtm.train(docs[:50], dictionary=example["dict"], model="nmtm", num_topics=4, epochs=2, out=out, min_df=1,
                  contextual=False, resume=True)
    assert (tmp_path / "run.data" / "docs.jsonl").read_bytes() == written
    run = xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=2, out=out, min_df=1,
                    contextual=False, resume=True)
    assert run.metrics["epochs"] == 2 and not run.interrupted


def _pairs(example: dict[str, Path]) -> list[tuple[str, str]]:
    return [tuple(line.split("\t")) for line in example["dict"].read_text(encoding="utf-8").splitlines() if line]


def test_a_refused_resume_leaves_the_runs_dictionary_and_a_resume_takes_the_runs_settings(
        example: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A resume with other pairs replaced the run's dict.tsv before the links were refused, so the run could no
    longer be resumed at all; a resume without batch_size trained on at the default (50), recording it; and a resume
    of a contextual=False run fitted the contextual route (xtm.train did not record contextual=False)."""
    import logging

    docs, pairs = rows(example["docs"]), _pairs(example)
    out = tmp_path / "run"
    xtm.train(docs, dictionary=pairs, model="nmtm", num_topics=4, epochs=1, out=out, min_df=1, contextual=False,
              batch_size=16)
    written = (tmp_path / "run.data" / "dict.tsv").read_bytes()
    with pytest.raises(XtmError, match="resume=True with other dictionary pairs than the run was trained with"):
        xtm.train(docs, dictionary=pairs[:5], out=out, epochs=2, resume=True)
    assert (tmp_path / "run.data" / "dict.tsv").read_bytes() == written
    with caplog.at_level(logging.INFO, logger="xtm"):
        run = xtm.train(docs, dictionary=pairs, out=out, epochs=2, resume=True)  # no model, K, min_df, batch
    assert run.metrics["epochs"] == 2
    train_config = RunDir(out).load_config()["train_config"]
    assert (train_config["model"], train_config["num_topics"], train_config["batch_size"]) == ("nmtm", 4, 16)
    assert "the run's own settings where the call gives none" in caplog.text and "--batch-size 16" in caplog.text
    assert "--no-contextual" in caplog.text and run.contextual is None and not (out / "contextual").exists()


def test_a_resume_without_dictionary_takes_the_runs_own(example: dict[str, Path], tmp_path: Path) -> None:
    """README's `xtm.train(texts, ..., out=..., epochs=80, resume=True)`: nmtm/infoctm runs were refused for "no
    en-zh word pairs are known: pass --dict", while xtm-train --resume takes the recorded --dict."""
    import shutil

    docs = rows(example["docs"])
    mine = tmp_path / "mine.tsv"
    shutil.copyfile(example["dict"], mine)
    out = tmp_path / "run"
    xtm.train(docs, dictionary=mine, model="nmtm", num_topics=4, epochs=1, out=out, min_df=1, contextual=False)
    run = xtm.train(docs, out=out, epochs=2, resume=True)
    assert run.metrics["epochs"] == 2 and RunDir(out).load_config()["data"]["dict_path"] == str(mine.resolve())
    mine.unlink()
    with pytest.raises(XtmError, match="the run was trained with this dictionary, which is gone; pass the same one"):
        xtm.train(docs, out=out, epochs=3, resume=True)


def test_a_second_call_on_a_run_in_use_is_refused_before_it_writes_the_inputs(example: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """While one process trained, a second xtm.train on the same out replaced its docs.jsonl and dict.tsv, then
    said 'in use'; the first then finished with a config.json naming the second's documents."""
    docs, pairs = rows(example["docs"]), _pairs(example)
    out = tmp_path / "run"
    xtm.train(docs, dictionary=pairs, model="nmtm", num_topics=4, epochs=1, out=out, min_df=1, contextual=False)
    written = {p.name: p.read_bytes() for p in (tmp_path / "run.data").iterdir()}
    with held_by_another_process(out), pytest.raises(XtmError, match="is in use by xtm-train"):
        xtm.train(docs[:40], dictionary=pairs[:5], out=out, epochs=2, resume=True)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run.data").iterdir()} == written


def test_a_finished_run_without_its_checkpoints_is_not_trained_over(example: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    docs = rows(example["docs"])
    out = tmp_path / "run"
    xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=out, min_df=1,
              contextual=False)
    shutil.rmtree(out / "checkpoints")
    metrics = (out / "metrics.json").read_bytes()
    for resume in (False, True):
        with pytest.raises(XtmError, match="holds a finished run's results and no checkpoint"):
            xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=out, min_df=1,
                      contextual=False, resume=resume)
    assert (out / "metrics.json").read_bytes() == metrics


def test_a_set_of_pairs_is_written_in_one_order_whatever_the_hash_seed(tmp_path: Path) -> None:
    """A set's order follows PYTHONHASHSEED: a resume in a new process was refused as 'other dictionary pairs'."""
    import subprocess
    import sys

    code = ("from xtm.trainer.api import _Inputs\n"
            "print(_Inputs.of([], {('market', '市场'), ('bank', '银行'), ('stock', '股票'), ('team', '球队')})"
            ".dictionary, end='')")
    texts = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60,
                            env={**__import__("os").environ, "PYTHONHASHSEED": seed}).stdout for seed in "1234"}
    assert len(texts) == 1 and texts.pop().startswith("bank\t银行\n")


def test_two_threads_of_one_process_do_not_share_a_run(tmp_path: Path) -> None:
    """The run lock was re-entrant per process: a second xtm.train(resume=True), or an export, in another thread
    trained or exported beside the first (their checkpoints mixed)."""
    import threading

    from xtm.run_dir import lock_dir, reading_run

    run = tmp_path / "run"
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with lock_dir(run, "xtm.train"):
            held.set()
            release.wait(30)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(XtmError, match="in use by xtm.train in another thread of this process"):
            with lock_dir(run, "xtm.train"):
                pass
        with pytest.raises(XtmError, match="in use by xtm.train in another thread of this process"):
            with reading_run(run):
                pass
    finally:
        release.set()
        t.join()
    with lock_dir(run, "xtm-train"), lock_dir(run, "xtm-train"), reading_run(run):  # the holder's own, nested
        pass


def test_model_langs_chooses_two_of_three_languages_and_too_many_is_said_before_any_work(
        example: dict[str, Path], tmp_path: Path) -> None:
    """A 3-language corpus could not be trained from Python: the error said 'choose two with --langs', which
    xtm.train did not take, and came after every document was tokenized. A blank text among them (a DataFrame's
    empty cell) stopped the whole training; from a JSONL file it is dropped with the other short documents."""
    docs = rows(example["docs"]) + [{"text": "Le marché boursier a chuté aujourd'hui.", "lang": "fr"}] * 30
    docs.append({"text": "   ", "lang": "en"})
    with pytest.raises(XtmError, match=r"nmtm models 2 languages; docs have 3 \(en, fr, zh\): choose 2 with "
                                       r"model_langs=\[\.\.\.\] \(xtm-train --langs\)"):
        xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=tmp_path / "refused",
                  min_df=1, contextual=False)
    assert not (tmp_path / "refused.data").exists()  # said before the documents were written
    run = xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=tmp_path / "run",
                    min_df=1, contextual=False, model_langs=["zh", "en"])
    assert run.metrics["langs"] == ["zh", "en"] and RunDir(run.run_dir).load_config()["data"]["langs"] == ["zh", "en"]
    again = xtm.train(docs, dictionary=example["dict"], out=tmp_path / "run", epochs=2, resume=True)
    assert again.metrics["langs"] == ["zh", "en"]  # the run's own languages, taken by the resume


def test_a_data_dir_in_use_by_another_training_is_refused_before_its_documents_are_replaced(
        example: dict[str, Path], tmp_path: Path) -> None:
    """Two calls with other outs and one data_dir replaced each other's docs.jsonl: the first's contextual fit,
    which reads them again when training ends, then embedded the second's documents."""
    docs = rows(example["docs"])
    data = tmp_path / "shared.data"
    xtm.train(docs, dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=tmp_path / "a",
              data_dir=data, min_df=1, contextual=False)
    written = (data / "docs.jsonl").read_bytes()
    with held_by_another_process(data), pytest.raises(XtmError, match="is in use by xtm-train"):
        xtm.train(docs[::2], dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=tmp_path / "b",
                  data_dir=data, min_df=1, contextual=False)
    assert (data / "docs.jsonl").read_bytes() == written
    # Its lock file is ours: the directory is still one the next call may write.
    run = xtm.train(docs[::2], dictionary=example["dict"], model="nmtm", num_topics=4, epochs=1, out=tmp_path / "b",
                    data_dir=data, min_df=1, contextual=False)
    assert not run.interrupted and (data / "docs.jsonl").read_bytes() != written

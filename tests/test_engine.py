"""The inference engine's Python API (xtm.runtime.engine): records in, xtm-infer's lines out, one
bad-record policy, one set of defaults and routes. Real bundles, files, pipes and devices; the CLI
runs beside it so both are held to the same bytes."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from bundle_fixture import PREVIOUS_OUTPUT, HandBundle, make_bundle
from click.testing import CliRunner

from xtm.cli.infer import main
from xtm.errors import XtmError
from xtm.runtime import TopicModel
from xtm.runtime.engine import (
    ROUTES,
    Engine,
    InferenceCounts,
    InferenceOptions,
    NoResultsError,
    check_route,
    infer_file,
    infer_records,
)

GOOD = [
    {"id": "a", "text": "The stock market and the bank", "lang": "en"},
    {"id": 2, "text": "北京的经济增长很快"},
    {"text": "Football: the team scored a goal in the match"},
    {"id": "d", "text": "中国足球队在比赛中进球", "lang": "cn"},
]


@pytest.fixture(scope="module")
def hb(tmp_path_factory: pytest.TempPathFactory) -> HandBundle:
    return make_bundle(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture(scope="module")
def model(hb: HandBundle) -> TopicModel:
    return TopicModel.load(hb.path, threads=1)


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def cli(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=False)


# -- records in, lines out -------------------------------------------------------------------------


def test_records_give_the_cli_bytes(hb: HandBundle, model: TopicModel, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", GOOD)
    r = cli([str(src), "--bundle", str(hb.path), "--top-k", "2", "--sparse-theta"])
    assert r.exit_code == 0, r.stderr
    lines = list(infer_records(model, iter(GOOD), options=InferenceOptions(top_k=2, full_theta=False)))
    assert "".join(line + "\n" for line in lines) == r.stdout
    assert list(model.infer_records(GOOD, top_k=2, full_theta=False)) == lines
    out = [json.loads(line) for line in lines]
    assert [o["id"] for o in out] == ["a", 2, 3, "d"]  # no id: the record's 1-based position
    assert [o["lang"] for o in out] == ["en", "zh", "en", "zh"]


def test_records_and_arrays_agree(model: TopicModel) -> None:
    texts = [r["text"] for r in GOOD]
    res = model.infer(texts, [r.get("lang") for r in GOOD])
    got = [json.loads(line) for line in model.infer_records(GOOD)]
    np.testing.assert_allclose(np.array([o["theta"] for o in got]), res.theta, atol=5e-7)
    assert [[t["id"] for t in o["topics"]] for o in got] == res.top_ids.tolist()


def test_a_chunk_boundary_changes_nothing(model: TopicModel) -> None:
    rows = [dict(r, id=i) for i, r in enumerate(GOOD * 5)]
    assert list(infer_records(model, rows, options=InferenceOptions(batch_size=1))) == list(model.infer_records(rows))


# -- bad records: reported, skipped, or fatal ------------------------------------------------------


BAD = [GOOD[0], {"text": ""}, "a plain string", {"text": "bonjour", "lang": "fr"}, {"id": 9}, GOOD[1],
       {"text": "x", "lang": 3}]


def test_bad_records_are_reported_with_their_position_and_skipped(model: TopicModel) -> None:
    messages: list[str] = []
    lines = list(infer_records(model, BAD, report=messages.append))
    assert [json.loads(line)["id"] for line in lines] == ["a", 2]
    assert messages == [
        "<records>:2: empty text",
        "<records>:3: expected a record (a mapping with a 'text' field), got str",
        "<records>:4: language 'fr' is not served by this bundle (it serves en, zh)",
        "<records>:5: missing field 'text'",
        "<records>:7: field 'lang' must be a string, got int",
    ]


def test_default_report_is_the_engine_logger(model: TopicModel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="xtm.runtime.engine"):
        assert len(list(model.infer_records([{"text": ""}, GOOD[0]]))) == 1
    assert [r.getMessage() for r in caplog.records] == ["<records>:1: empty text"]


def test_strict_yields_the_good_prefix_then_raises(model: TopicModel) -> None:
    got: list[str] = []
    with pytest.raises(XtmError, match=r"^<records>:2: empty text$"):
        for line in infer_records(model, BAD, options=InferenceOptions(strict=True)):
            got.append(line)
    assert [json.loads(line)["id"] for line in got] == ["a"]


def test_max_bad_count_and_share(model: TopicModel) -> None:
    with pytest.raises(XtmError, match=r"<records>:4: .*more than 2 \(--max-bad\)"):
        list(model.infer_records(BAD, max_bad=2, report=lambda m: None))
    assert len(list(model.infer_records(BAD, max_bad=5, report=lambda m: None))) == 2
    with pytest.raises(XtmError, match=r"too many bad lines: 5 of 7 \(71.43%, --max-bad 50%\)"):
        list(model.infer_records(BAD, max_bad="50%", report=lambda m: None))
    assert len(list(model.infer_records(BAD, max_bad="80%", report=lambda m: None))) == 2


def test_nothing_to_infer_yields_nothing_without_raising(model: TopicModel) -> None:
    assert list(model.infer_records([])) == []
    assert list(model.infer_records([{"text": " "}], report=lambda m: None)) == []


# -- files: the local engine as a function ---------------------------------------------------------


def test_infer_file_writes_the_cli_bytes_atomically(hb: HandBundle, model: TopicModel, tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "d.jsonl", [*GOOD, "{bad"])
    expected = cli([str(src), "--bundle", str(hb.path)])
    out = tmp_path / "o.jsonl"
    messages: list[str] = []
    counts = infer_file(src, model, out, report=messages.append)
    assert counts == InferenceCounts(total=5, skipped=1) and counts.written == 4
    assert out.read_text(encoding="utf-8") == expected.stdout
    summary = "xtm-infer: warning: skipped"  # (the command's count of skipped lines, not a line's report)
    assert messages == [line for line in expected.stderr.splitlines() if not line.startswith(summary)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "o.jsonl"]  # no temporary left


def test_infer_file_streams_and_parquet(model: TopicModel, tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [dict(r, id=str(r.get("id", i + 1))) for i, r in enumerate(GOOD)]
    src = write_jsonl(tmp_path / "d.jsonl", rows)
    pq.write_table(pa.Table.from_pylist([{"id": r["id"], "text": r["text"], "lang": r.get("lang")} for r in rows]),
                   tmp_path / "d.parquet")
    sink = io.BytesIO()
    assert infer_file(io.BytesIO(src.read_bytes()), model, sink).written == 4
    via_parquet = tmp_path / "p.jsonl"
    infer_file(tmp_path / "d.parquet", model, via_parquet)
    assert via_parquet.read_bytes() == sink.getvalue()


def test_infer_file_failures_leave_the_previous_output(model: TopicModel, tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text(PREVIOUS_OUTPUT)
    bad = write_jsonl(tmp_path / "bad.jsonl", ["{x", {"text": ""}])
    with pytest.raises(NoResultsError, match="no line could be inferred: all 2 lines were bad") as e:
        infer_file(bad, model, out, report=lambda m: None)
    assert (e.value.total, e.value.skipped) == (2, 2)
    with pytest.raises(XtmError, match=r"bad\.jsonl:1: invalid JSON"):
        infer_file(bad, model, out, options=InferenceOptions(strict=True))
    with pytest.raises(XtmError, match="--out is an input file"):
        infer_file(out, model, out)
    with pytest.raises(XtmError, match="cannot read: Is a directory"):
        infer_file(tmp_path, model, out)
    assert out.read_text() == PREVIOUS_OUTPUT and sorted(p.name for p in tmp_path.iterdir()) == ["bad.jsonl", "o.jsonl"]


def test_a_full_device_is_one_error_naming_it(model: TopicModel, tmp_path: Path) -> None:
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    src = write_jsonl(tmp_path / "d.jsonl", GOOD)
    with open("/dev/full", "wb", buffering=0) as sink:  # unbuffered: close() has nothing left to flush
        with pytest.raises(XtmError, match="^/dev/full: cannot write: No space left"):
            infer_file(src, model, sink)


# -- one set of defaults, one definition of routes -------------------------------------------------


def test_cli_flags_read_the_engine_options() -> None:
    # xtm-infer's flags are made from InferenceOptions' declarations (xtm.config.setting, xtm.cli.options), as
    # xtm-train's are from the configuration tree: one flag per declared field, its help, default and range.
    params = {p.name: p for p in main.params}
    declared = [(f, f.metadata["cli"]) for f in dataclasses.fields(InferenceOptions) if f.metadata.get("cli")]
    assert {f.name for f, _ in declared} == {f.name for f in dataclasses.fields(InferenceOptions)} - {"max_share"}
    for f, spec in declared:
        p = params[f.name]
        assert p.help == f.metadata["help"], f.name
        assert p.opts + p.secondary_opts == [spec.flags] + ([spec.off] if spec.off else []), f.name
        if f.default is not None and f.default is not False:
            assert p.default == f.default and p.show_default, f.name
        if spec.min is not None:
            assert p.type.min == spec.min, f.name
    assert tuple(params["route"].type.choices) == ROUTES
    assert params["min_lang_conf"].type.max_open and params["max_bad"].metavar == "N|P%"
    assert params["full_theta"].secondary_opts == ["--sparse-theta"] and params["strict"].is_flag


def test_python_apis_take_options_and_keyword_overrides(model: TopicModel, hb: HandBundle, tmp_path: Path) -> None:
    # options= and keyword overrides of its fields, the same everywhere; a keyword naming no field is an XtmError
    # naming it (not a TypeError, nor dropped).
    base = list(model.infer_records(GOOD, options=InferenceOptions(top_k=1, full_theta=False)))
    assert list(model.infer_records(GOOD, top_k=1, full_theta=False)) == base
    assert list(model.infer_records(GOOD, options=InferenceOptions(top_k=5), top_k=1, full_theta=False)) == base
    assert list(infer_records(model, GOOD, top_k=1, full_theta=False)) == base
    assert len(json.loads(base[0])["topics"]) == 1
    for call in (lambda: model.infer_records(GOOD, topk=1), lambda: infer_records(model, GOOD, topk=1),
                 lambda: infer_file(io.BytesIO(b""), model, tmp_path / "o.jsonl", topk=1)):
        with pytest.raises(XtmError, match=r"^infer_\w+: unknown keyword argument 'topk' \(InferenceOptions fields: "
                                           r"top_k, batch_size, "):
            call()
    with pytest.raises(XtmError, match="options must be an InferenceOptions, got dict"):
        model.infer_records(GOOD, options={"top_k": 1})
    with pytest.raises(XtmError, match=r"^top_k must be a whole number of at least 0, got -1$"):
        model.infer_records(GOOD, options=InferenceOptions(), top_k=-1)  # checked at the call, not the first record


def test_options_are_checked_once_with_one_message_each(model: TopicModel) -> None:
    with pytest.raises(XtmError, match=r"^batch_size must be a whole number of at least 1, got 0$"):
        InferenceOptions(batch_size=0)
    with pytest.raises(XtmError, match=r"^top_k must be a whole number of at least 0, got True$"):
        InferenceOptions(top_k=True)
    with pytest.raises(XtmError, match=r"--max-bad takes a number of lines \(10\) or a percentage"):
        InferenceOptions(max_bad="1x")
    assert InferenceOptions(top_k=np.int64(2)).top_k == 2
    o = InferenceOptions(max_bad="2.5%")
    assert (o.max_bad, o.max_share) == (None, 0.025)
    route_error = r"^route must be one of auto, bow, contextual, got 'fast'$"
    for call in (lambda: check_route("fast"), lambda: InferenceOptions(route="fast"),
                 lambda: model.infer(["bank"], route="fast"), lambda: model.served_languages("fast")):
        with pytest.raises(XtmError, match=route_error):
            call()


@pytest.mark.parametrize("bad", [0, 2.5, "2", True])
def test_every_runtime_count_is_checked_by_one_rule_with_one_message(model: TopicModel, hb: HandBundle,
                                                                    tmp_path: Path, bad: object) -> None:
    # Options, workers, TopicModel.load's threads and infer's batch_size: one validator, one wording.
    src = io.StringIO('{"text": "bank"}\n')
    calls = [("threads", lambda: InferenceOptions(threads=bad)),
             ("workers", lambda: infer_file(src, model, tmp_path / "o.jsonl", workers=bad)),
             ("batch_size", lambda: model.infer(["bank"], batch_size=bad)),
             ("threads", lambda: TopicModel.load(hb.path, threads=bad))]
    for name, call in calls:
        with pytest.raises(XtmError, match=rf"^{name} must be a whole number of at least 1, got {bad!r}$"):
            call()
    assert not (tmp_path / "o.jsonl").exists()


def test_contextual_route_missing_is_the_same_error_everywhere(hb: HandBundle, model: TopicModel,
                                                               tmp_path: Path) -> None:
    r = cli([str(write_jsonl(tmp_path / "d.jsonl", GOOD)), "--bundle", str(hb.path), "--route", "contextual"])
    assert r.exit_code == 2
    with pytest.raises(XtmError) as e:
        Engine(model, InferenceOptions(route="contextual"), bundle=str(hb.path))
    assert r.stderr == f"error: {e.value}\n"
    with pytest.raises(XtmError, match=r"no contextual route \(export a run that has one.*training languages: en, zh"):
        model.embed(["x"])

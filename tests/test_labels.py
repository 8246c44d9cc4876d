"""Topic labels (issue 16.7): what an LLM answer may be, the LLM-free fallback, labels from a real
OpenAI-compatible HTTP server on 127.0.0.1 (hostile answers included), the answer cache, xtm-label,
the labels after training, in the bundle, in every xtm-infer line and in TopicModel."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from adversarial_llm_server import completion

from xtm.config import LabelConfig, RefinerConfig, default_of
from xtm.errors import XtmError
from xtm.labels import MAX_ANSWER_CHARS, TopicLabels, check_label, clean_label
from xtm.run_dir import RunDir
from xtm.trainer.labels import central_words, label_run, label_topics

LANGS = ("en", "zh")


def env() -> dict[str, str]:
    import os

    return {**os.environ, "PYTHONWARNINGS": "ignore"}


# ---- what an answer may be ----------------------------------------------------------------------

GOOD = [("Sports", "en", "Sports"), ("Label: **Stock market**", "en", "Stock market"),
        ("The Stock Market: A World of Finances", "en", "The Stock Market"),
        ("1. School: School\n2. Exam", "en", "School"),
        ("Topic 3: Football news.", "en", "Football news"), ('Sure! Here is a label:\n"Football"', "en", "Football"),
        ("1. Finance\n2. Money", "en", "Finance"), ("体育", "zh", "体育"), ("标签：股市", "zh", "股市"),
        ("NBA 总决赛", "zh", "NBA 总决赛"), ("Fin\u202eance", "en", "Finance"), ("「金融」", "zh", "金融")]
BAD = [("", "en"), ("   \n\n", "en"), (None, "en"), (42, "en"),
       ("This topic is about the economy. It covers markets, banks and the decisions of investors.", "en"),
       ("The economy and the markets and the banks and the investors", "en"),       # too many words
       ("<script>alert(1)</script>", "en"), ("<b>Sports</b>", "en"), ("Sports <img src=x onerror=alert(1)>", "en"),
       ("{\"label\": \"Sports\"}", "en"), ("https://example.com/sports", "en"), ("Sports &amp; games", "en"),
       ("x" * (MAX_ANSWER_CHARS + 1), "en"), ("Sports " * 2000, "en"),                 # 10 KB+
       ("Sports", "zh"), ("体育", "en"), ("Спорт", "en"), ("I'm sorry, I cannot help with that.", "en"),
       ("a" * 41, "en"), ("!!! ???", "en"), ("足球, 球队, 进球, 三国", "zh"), ("stock, bank, market", "en")]


@pytest.mark.parametrize("answer,lang,label", GOOD)
def test_an_answer_that_is_a_label_is_cleaned(answer: str, lang: str, label: str) -> None:
    assert clean_label(answer, lang) == label
    assert check_label(label) == label


@pytest.mark.parametrize("answer,lang", BAD)
def test_an_answer_that_is_not_a_label_is_refused(answer: Any, lang: str) -> None:
    assert clean_label(answer, lang) is None


def test_check_label_refuses_what_no_label_is() -> None:
    for bad in ["", " ", "a\nb", "a\tb", "x" * 121, "<b>x</b>", "a\u202eb", "a\x00b", 5, None, ["x"]]:
        assert check_label(bad) is None, bad
    assert check_label("stock market · 股市") == "stock market · 股市"


# ---- the LLM-free fallback --------------------------------------------------------------------------

def test_the_fallback_takes_the_best_connected_top_words() -> None:
    """'said' is the topic's most probable word but shows up at random; 'goal', 'team', 'match' appear
    together: they are the label, in topic order. Without documents: the first words."""
    rng = np.random.default_rng(0)
    vocab = ["said", "year", "goal", "team", "match", "bank", "stock", "trade"]
    rows = []
    for i in range(400):
        doc = {vocab.index("said"): 1} if rng.random() < 0.6 else {}
        if i % 2 == 0:
            doc.update({vocab.index(w): 1 for w in ("goal", "team", "match")})
        else:
            doc.update({vocab.index(w): 1 for w in ("bank", "stock")})
        if rng.random() < 0.5:
            doc[vocab.index("year")] = 1
        rows.append(doc)
    m = sp.lil_matrix((len(rows), len(vocab)))
    for i, doc in enumerate(rows):
        for j, c in doc.items():
            m[i, j] = c
    docs = m.tocsr()
    index = {w: i for i, w in enumerate(vocab)}
    words = ["said", "goal", "year", "team", "bank", "match"]
    assert central_words(words, index, docs, 3) == ["goal", "team", "match"]
    assert central_words(words, index, None, 3) == ["said", "goal", "year"]
    assert central_words(["unknown", "goal", "team", "match"], index, docs, 3) == ["goal", "team", "match"]
    labels = label_topics({"en": [words], "zh": [["足球", "比赛"]]}, docs={"en": (index, docs)})
    assert labels.labels == [{"en": "goal · team · match", "zh": "足球 · 比赛"}]
    assert labels.sources == [{"en": "fallback", "zh": "fallback"}] and labels.generator == "fallback"
    assert labels.stats["calls"] == 0 and labels.stats["fallback_labels"] == 2


# ---- an OpenAI-compatible server that answers per topic and language ---------------------------

TOPICS = {"en": [["football", "team", "goal"], ["stock", "bank", "market"], ["film", "actor", "music"],
                 ["school", "student", "exam"]],
          "zh": [["足球", "球队", "进球"], ["股票", "银行", "市场"], ["电影", "演员", "音乐"],
                 ["学校", "学生", "考试"]]}
ESSAY = "Sports. " + "This topic is about sports and many other things. " * 220     # ~11 KB
ANSWERS = {  # (topic, lang) -> what the server answers
    (0, "en"): "Label: Football", (0, "zh"): "足球",
    (1, "en"): "", (1, "zh"): "<script>alert('x')</script>",
    (2, "en"): ESSAY, (2, "zh"): "Movies and music",              # English where Chinese was asked
    (3, "en"): "<img src=x onerror=alert(1)>Schools", (3, "zh"): "教育",
}


class LabelServer:
    """A real http.server on 127.0.0.1: each chat request's answer is chosen by the topic words and
    the language its prompt names; every request is counted."""

    def __init__(self, answers: dict[tuple[int, str], str], status: int = 200,
                 hold: frozenset[tuple[int, str]] = frozenset(), port: int = 0) -> None:
        self.answers, self.status, self.requests, self.hold = answers, status, 0, hold
        self.answered, self.holding = 0, 0      # answers sent; requests waiting in `hold`
        self._lock = threading.Lock()
        self._released = threading.Event()      # the answers in `hold` wait for it (or 30 s)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests += 1
                prompt = body["messages"][0]["content"]
                if server.key(prompt) in server.hold:
                    with server._lock:
                        server.holding += 1
                    server._released.wait(30)
                data = json.dumps(completion(server.answer(prompt), {"prompt_tokens": 50, "completion_tokens": 5}))
                self.send_response(server.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data.encode())))
                self.end_headers()
                self.wfile.write(data.encode())
                with server._lock:
                    server.answered += 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def key(self, prompt: str) -> tuple[int, str]:
        lang = "zh" if "short Chinese title" in prompt else "en"
        return next(k for k, ws in enumerate(TOPICS["en"]) if ", ".join(ws) in prompt), lang

    def answer(self, prompt: str) -> str:
        return self.answers[self.key(prompt)]

    def close(self) -> None:
        self._released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def label_server() -> Iterator[LabelServer]:
    s = LabelServer(ANSWERS)
    yield s
    s.close()


def hand_run(root: Path, topics: dict[str, list[list[str]]] = TOPICS) -> Path:
    """A finished run as label_run reads it: config.json, topics_<lang>.txt, vocab_<lang>.txt (no parity sample)."""
    root.mkdir(parents=True, exist_ok=True)
    run = RunDir(root)
    (root / "run.json").write_text('{"xtm_run": 1}')
    run.save_config({"langs": list(topics), "xtm_version": "test"})
    for lang, ts in topics.items():
        run.write_topics(lang, ts)
        run.write_vocab(lang, sorted({w for t in ts for w in t}))
    return root


def llm_config(url: str) -> LabelConfig:
    return LabelConfig(backend="openai", llm_url=url, llm_model="tiny", concurrency=2, timeout=10, retries=0)


def test_llm_labels_from_a_real_server_fall_back_on_every_bad_answer(label_server: LabelServer,
                                                                    tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run")
    labels = label_run(run, llm_config(label_server.url), cache_dir=tmp_path / "cache")
    assert label_server.requests == 8                       # one per topic and language
    fallback = {(t, lang): " · ".join(TOPICS[lang][t]) for t in range(4) for lang in LANGS}
    want = {(0, "en"): "Football", (0, "zh"): "足球", (3, "zh"): "教育"}
    for t in range(4):
        for lang in LANGS:
            assert labels.labels[t][lang] == want.get((t, lang), fallback[(t, lang)]), (t, lang)
            assert labels.sources[t][lang] == ("llm" if (t, lang) in want else "fallback")
    # empty (not cached: no text), markup x2, an essay, the wrong language: 4 answers that were not labels
    assert labels.stats["rejected"] == 4 and labels.stats["failures"] == 1 and labels.stats["llm_labels"] == 3
    assert labels.generator == "openai:tiny" and labels.stats["prompt_tokens"] == 8 * 50
    saved = RunDir(run).load_labels(4, list(LANGS))
    assert saved.labels == labels.labels and saved.sources == labels.sources
    # Labels are cached like refinement answers: a rerun asks only for the 5 answers that were no label.
    again = label_run(run, llm_config(label_server.url), cache_dir=tmp_path / "cache")
    assert label_server.requests == 13 and again.labels == labels.labels
    assert again.stats["cache_hits"] == 3 and again.stats["calls"] == 5
    # A new sampling setting is a new cache key.
    label_run(run, dataclasses.replace(llm_config(label_server.url), temperature=0.5), cache_dir=tmp_path / "cache")
    assert label_server.requests == 21


def test_an_answer_that_was_no_label_is_asked_again_once_the_server_is_well(tmp_path: Path) -> None:
    """A proxy's error text passed on as the answer, or a refusal on a bad day: cached, it was the fallback
    label for good (a hostile review). Only labels are cached, so the next xtm-label gets the real one."""
    answers = {(t, lang): ("Topic " + str(t) if lang == "en" else "主题" + "一二三四"[t])
               for t in range(4) for lang in LANGS}
    bad_day = {**answers, (1, "en"): "Error: upstream rate limit exceeded", (2, "zh"): "I'm sorry, I can't help."}
    run = hand_run(tmp_path / "run")
    server = LabelServer(bad_day)
    try:
        first = label_run(run, llm_config(server.url), cache_dir=tmp_path / "cache")
        assert first.sources[1]["en"] == first.sources[2]["zh"] == "fallback" and first.stats["llm_labels"] == 6
        server.answers = answers                            # the server is well again
        second = label_run(run, llm_config(server.url), cache_dir=tmp_path / "cache")
    finally:
        server.close()
    assert second.stats["calls"] == 2 and second.stats["cache_hits"] == 6 and server.requests == 10
    assert second.labels[1]["en"] == "Topic 1" and second.labels[2]["zh"] == "主题三"
    assert all(s == "llm" for row in second.sources for s in row.values())


def test_every_answer_good_means_a_rerun_makes_no_call(tmp_path: Path) -> None:
    answers = {(t, lang): ("Topic " + str(t) if lang == "en" else "主题" + "一二三四"[t])
               for t in range(4) for lang in LANGS}
    server = LabelServer(answers)
    try:
        first = label_run(hand_run(tmp_path / "a"), llm_config(server.url), cache_dir=tmp_path / "cache")
        assert first.stats["llm_labels"] == 8 and server.requests == 8
        second = label_run(hand_run(tmp_path / "b"), llm_config(server.url), cache_dir=tmp_path / "cache")
        assert server.requests == 8 and second.stats["calls"] == 0 and second.stats["cache_hits"] == 8
        assert second.labels == first.labels
    finally:
        server.close()


def test_labels_stopped_half_way_keep_the_answers_that_came(tmp_path: Path) -> None:
    """Ctrl-C while the last label is still being answered: the labels already given are in the cache, so
    the redo asks only for the rest (the answers that were no label, never cached, and the one that had not
    come)."""
    import os
    import signal

    warm = LabelServer(ANSWERS)
    try:
        label_run(hand_run(tmp_path / "warm"), llm_config(warm.url))   # imports done: the signal lands in the requests
    finally:
        warm.close()
    server = LabelServer(ANSWERS, hold=frozenset({(3, "zh")}))
    cfg = dataclasses.replace(llm_config(server.url), timeout=5)
    run = hand_run(tmp_path / "run")

    def interrupt_once_the_rest_came() -> None:
        # The signal when the other 7 answers have been sent and the last request waits: on a loaded machine
        # a fixed delay could come before the answers did.
        deadline = time.monotonic() + 60
        while not (server.answered >= 7 and server.holding) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)                     # the 7th answer read by its client thread
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_the_rest_came, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt):
            label_run(run, cfg, cache_dir=tmp_path / "cache")
    finally:
        server.close()
    assert not (run / "labels.json").exists()
    # The same server again (answers are cached per server and model): restarted on its address.
    again_server = LabelServer(ANSWERS, port=int(server.url.rsplit(":", 1)[1].split("/")[0]))
    try:
        labels = label_run(run, llm_config(again_server.url), cache_dir=tmp_path / "cache")
    finally:
        again_server.close()
    assert labels.stats["cache_hits"] == 2 and labels.stats["calls"] == 6 and again_server.requests == 6
    assert labels.labels[3]["zh"] == "教育"


def test_a_server_that_refuses_stops_xtm_label_and_keeps_the_old_labels(tmp_path: Path) -> None:
    run = hand_run(tmp_path / "run")
    label_run(run)                                          # LLM-free labels first
    before = (run / "labels.json").read_bytes()
    server = LabelServer(ANSWERS, status=401)
    try:
        p = subprocess.run([sys.executable, "-m", "xtm.cli.label", str(run), "--refiner", "openai", "--llm-url",
                            server.url, "--llm-model", "tiny", "--no-report", "--cache-dir", str(tmp_path / "c")],
                           capture_output=True, text=True, timeout=120, env=env())
    finally:
        server.close()
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.strip().splitlines()[-1].startswith("error:") and "HTTP 401" in p.stderr
    assert (run / "labels.json").read_bytes() == before
    # ... while training's own labelling never fails on it: fallback labels and a warning.
    labels = label_topics(TOPICS, llm_config("http://127.0.0.1:1/v1"), llm_errors="fallback")
    assert all(s == "fallback" for row in labels.sources for s in row.values())


def test_a_server_that_answers_nothing_stops_xtm_label_and_keeps_the_old_labels(tmp_path: Path) -> None:
    """Nothing listening at --llm-url: every request fails every attempt. Labels from that would all be the
    fallback under the LLM's name, replacing good ones; it is the same error as a refusing server."""
    run = hand_run(tmp_path / "run")
    label_run(run)
    before = (run / "labels.json").read_bytes()
    with socket.socket() as s:  # a port nothing listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.run([sys.executable, "-m", "xtm.cli.label", str(run), "--refiner", "openai", "--llm-url",
                        f"http://127.0.0.1:{port}/v1", "--llm-model", "tiny", "--llm-retries", "0", "--no-report",
                        "--cache-dir", str(tmp_path / "c")], capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "answered none of the 8 label requests sent" in last, p.stderr
    assert "that label is the LLM-free one" in p.stderr and "refined set" not in p.stderr
    assert (run / "labels.json").read_bytes() == before
    # Training's own labelling goes on with the fallback, and says that it is the fallback.
    labels = label_topics(TOPICS, llm_config(f"http://127.0.0.1:{port}/v1"), llm_errors="fallback")
    assert labels.generator == "fallback"
    # Answers cached from an earlier run do not hide a server that answers nothing now (the same address, down).
    earlier = LabelServer(ANSWERS)
    try:
        label_run(run, llm_config(earlier.url), cache_dir=tmp_path / "c2")  # 3 labels cached, 5 answers no label
    finally:
        earlier.close()
    with pytest.raises(XtmError, match="answered none of the 5 label requests sent"):
        label_run(run, llm_config(earlier.url), cache_dir=tmp_path / "c2")


def test_xtm_label_cli_writes_labels_and_the_report(example_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(example_run, run)
    (run / "labels.json").unlink()
    p = subprocess.run([sys.executable, "-m", "xtm.cli.label", str(run), "--fallback-words", "2"],
                       capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["generator"] == "fallback" and len(out["labels"]) == 6
    assert all(len(row["en"].split(" · ")) == 2 for row in out["labels"])
    html = (run / "report.html").read_text(encoding="utf-8")
    for row in out["labels"]:
        assert f'<div class="lbl">{row["en"]}</div>' in html
    p = subprocess.run([sys.executable, "-m", "xtm.cli.label", str(run), "--refiner", "openai"],
                       capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 2 and "--llm-url" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "xtm.cli.label", str(tmp_path)], capture_output=True, text=True,
                       timeout=120, env=env())
    assert p.returncode == 2 and "not a training run directory" in p.stderr


def test_xtm_label_options_are_label_configs() -> None:
    from xtm.cli.label import main
    from xtm.cli.options import SectionOption

    by_name = {p.name: p for p in main.params}
    for f in dataclasses.fields(LabelConfig):
        spec = f.metadata.get("cli")
        if spec is None:
            continue
        p = by_name[spec.name]
        assert isinstance(p, SectionOption) and p.help == (spec.help or f.metadata["help"])
        default = f.default if f.default is not dataclasses.MISSING else None
        if default is not None:
            assert p.default == default, f.name
    assert by_name["llm_timeout"].default == default_of(RefinerConfig, "timeout")
    assert LabelConfig.after_training(None).uses_llm is False


@pytest.mark.parametrize("option", [["--max-chars", "400"], ["--llm-timeout", "1e10"]])
def test_label_options_beyond_what_works_are_refused(example_run: Path, option: list[str]) -> None:
    """Found by a review: --max-chars 400 wrote labels that xtm-export then refused (labels.json holds at most
    120 characters); --llm-timeout 1e10 overflowed the client's timers (13 tracebacks)."""
    from click.testing import CliRunner

    from xtm.cli.label import main

    r = CliRunner().invoke(main, [str(example_run), "--refiner", "openai", "--llm-url", "http://127.0.0.1:9/v1",
                                  "--llm-model", "m", *option])
    assert r.exit_code == 2 and option[0] in r.output and "range" in r.output, r.output


def test_training_labels_every_run_without_network(example_run: Path) -> None:
    labels = RunDir(example_run).load_labels(6, list(LANGS))
    assert labels is not None and labels.generator == "fallback" and labels.num_topics == 6
    for t, row in enumerate(labels.labels):
        assert set(row) == set(LANGS) and all(0 < len(v) <= 120 for v in row.values())
        top = RunDir(example_run).read_topics("en")[t][:10]
        assert all(w in top for w in row["en"].split(" · "))


def test_labels_in_the_bundle_every_infer_line_and_topic_model(example_run: Path, tmp_path: Path) -> None:
    from xtm.runtime.bundle import read_manifest, read_topic_labels
    from xtm.runtime.model import TopicModel

    run = tmp_path / "run"
    shutil.copytree(example_run, run)
    labels = TopicLabels.from_json(json.loads((run / "labels.json").read_text()), run / "labels.json")
    labels.labels[2]["en"] = 'A "quoted" & odd label'    # a label pipelines must get byte-exact
    RunDir(run).save_labels(labels)
    p = subprocess.run([sys.executable, "-m", "xtm.cli.export", str(run), "--out", str(tmp_path / "b"), "-q"],
                       capture_output=True, text=True, timeout=300, env=env())
    assert p.returncode == 0, p.stderr
    topics = json.loads((tmp_path / "b" / "topics.json").read_text())
    assert [t["labels"] for t in topics["topics"]] == labels.labels
    m = TopicModel.load(tmp_path / "b")
    assert m.labels == labels.labels and m.has_labels
    assert m.get_topic(2, "en", 3).label == 'A "quoted" & odd label' and len(m.get_topic(2, "en", 3)) == 3
    assert m.get_topic(2, "zh").label == labels.labels[2]["zh"]
    info = m.topic_info(n_words=3)
    assert info[2]["label"] == labels.labels[2]["en"] and info[2]["label_zh"] == labels.labels[2]["zh"]
    src = tmp_path / "docs.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"id": 1, "text": "the football player scored a brilliant goal", "lang": "en"},
        {"id": 2, "text": "公司 利润 市场 银行", "lang": "zh"}]), encoding="utf-8")
    infer = [sys.executable, "-m", "xtm.cli.infer", str(src), "--bundle", str(tmp_path / "b"), "--top-k", "3"]
    p = subprocess.run(infer, capture_output=True, text=True, timeout=120, env=env())
    assert p.returncode == 0, p.stderr
    lines = [json.loads(line) for line in p.stdout.splitlines()]
    for line in lines:
        for t in line["topics"]:
            assert list(t)[:2] == ["id", "label"] and t["label"] == labels.labels[t["id"]][line["lang"]]
    p = subprocess.run(infer + ["--format", "csv", "--sparse-theta"], capture_output=True, text=True, timeout=120,
                       env=env())
    table = list(csv.reader(io.StringIO(p.stdout, newline="")))
    assert table[0][6:15] == ["topic_1", "weight_1", "label_1", "topic_2", "weight_2", "label_2", "topic_3",
                              "weight_3", "label_3"]
    for row, line in zip(table[1:], lines, strict=True):
        assert row[8] == line["topics"][0]["label"] and row[11] == line["topics"][1]["label"]
    pq = pytest.importorskip("pyarrow.parquet")
    p = subprocess.run(infer + ["--out", str(tmp_path / "o.parquet")], capture_output=True, text=True, timeout=120,
                       env=env())
    assert p.returncode == 0, p.stderr
    rows = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert [r["labels"] for r in rows] == [[t["label"] for t in line["topics"]] for line in lines]
    # topics.json edited by hand: a label that is not one is left out, never served
    obj = json.loads((tmp_path / "b" / "topics.json").read_text())
    obj["topics"][0]["labels"] = {"en": "<script>alert(1)</script>", "zh": "x" * 500, "xx": "ok"}
    obj["topics"][1]["labels"] = "<b>"
    (tmp_path / "b" / "topics.json").write_text(json.dumps(obj))
    got = read_topic_labels(read_manifest(tmp_path / "b", verify=False))
    assert got[0] == {} and got[1] == {} and got[2] == labels.labels[2]


def test_a_damaged_labels_file_stops_export_with_its_name(example_run: Path, tmp_path: Path) -> None:

    run = tmp_path / "run"
    shutil.copytree(example_run, run)
    obj = json.loads((run / "labels.json").read_text())
    obj["topics"][1]["labels"]["en"] = "<img src=x onerror=alert(1)>"
    (run / "labels.json").write_text(json.dumps(obj))
    with pytest.raises(XtmError, match="labels.json"):
        RunDir(run).load_labels(6, list(LANGS))
    p = subprocess.run([sys.executable, "-m", "xtm.cli.export", str(run), "--out", str(tmp_path / "b"), "-q"],
                       capture_output=True, text=True, timeout=300, env=env())
    assert p.returncode == 2 and "labels.json" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "b").exists()


# ---- the real tiny LLM behind a real OpenAI-compatible server ------------------------------------


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from llm_server import convert_smollm2

    return convert_smollm2(tmp_path_factory.mktemp("llm") / "smollm2")


@pytest.mark.slow
def test_smollm2_labels_topics_through_transformers_serve(smollm2_dir: Path, tmp_path: Path) -> None:
    """SmolLM2-135M-Instruct served by `transformers serve` on 127.0.0.1 labels 4 topics in English and
    Chinese: every label comes back short and clean (the model's or, where its answer is not a label,
    the fallback), at least one is the model's own, and a rerun is served from the cache."""
    import time

    from llm_server import serve

    run = hand_run(tmp_path / "run")
    with serve(smollm2_dir) as url:
        cfg = LabelConfig(backend="openai", llm_url=url, llm_model=str(smollm2_dir), concurrency=2, timeout=600,
                          retries=1)
        t0 = time.perf_counter()
        labels = label_run(run, cfg, cache_dir=tmp_path / "cache")
        seconds = time.perf_counter() - t0
        again = label_run(run, cfg, cache_dir=tmp_path / "cache")
    print(f"SmolLM2 labels in {seconds:.1f}s: {labels.labels} (sources {labels.sources}; stats {labels.stats})")
    s = labels.stats
    # 8 answers (a request cut by the timeout on a loaded machine is retried once: calls may be 9)
    assert 8 <= s["calls"] <= 9 and s["failures"] == 0 and s["completion_tokens"] > 0
    assert s["llm_labels"] >= 1 and s["llm_labels"] + s["rejected"] == 8
    for t, row in enumerate(labels.labels):
        for lang in LANGS:
            label = row[lang]
            assert check_label(label) == label
            if labels.sources[t][lang] == "llm":
                assert len(label) <= cfg.max_chars and clean_label(label, lang) == label
            else:
                assert label == " · ".join(TOPICS[lang][t])
    # The model's labels come from the cache; only answers that were no label are asked again.
    assert again.stats["cache_hits"] == s["llm_labels"] and again.stats["calls"] >= s["rejected"]
    assert all(again.labels[t][lang] == labels.labels[t][lang] for t in range(4) for lang in LANGS
               if labels.sources[t][lang] == "llm")


@pytest.mark.parametrize(("answer", "lang"), [
    ("I cannot help with that", "en"), ("I am unable to answer", "en"), ("As a language model, I can't", "en"),
    ("I don't know", "en"), ("No title available", "en"), ("N/A", "en"), ("None", "en"), ("Unknown", "en"),
    ("Error: rate limit exceeded", "en"), ("抱歉，我无法回答", "zh"), ("我不能帮助你", "zh"), ("对不起", "zh"),
    ("申し訳ありませんが、お答えできません", "ja"), ("죄송합니다", "ko"), ("I'm sorry, but I can't", "en"),
    # (a second review: refusals the first filter let through, some under markdown, quotes or a "Label:" prefix)
    ("很抱歉，我无法提供标签", "zh"), ("죄송하지만 주제를 파악할 수 없습니다", "ko"), ("알 수 없음", "ko"),
    ("申し訳ないですが、判断できません", "ja"), ("判断できません", "ja"), ("1. Error: rate limit", "en"),
    ("Je ne peux pas répondre", "fr"), ("Désolé, je ne peux pas", "fr"), ("Ich kann das nicht beantworten", "de"),
    ("Es tut mir leid", "de"), ("Lo siento, no puedo ayudar", "es"), ("Erreur : délai dépassé", "fr"),
    ("Fehler: Zeitüberschreitung", "de"), ("Apologies, but I can't do that", "en"), ('"I cannot label this"', "en"),
    ("- I cannot provide a label", "en"), ("**Sorry, I can't help**", "en"), ("Label: I cannot determine", "en"),
    ("Topic 3: I don't know", "en"), ("**抱歉，我无法**", "zh"),
])
def test_a_refusal_or_an_error_text_is_no_label(answer: str, lang: str) -> None:
    """These were accepted as labels (a hostile review): cached, exported and written on every xtm-infer line."""
    assert clean_label(answer, lang) is None


@pytest.mark.parametrize(("answer", "lang", "label"), [
    ("Sorry! Here is a label:\nStock Market", "en", "Stock Market"),  # an apology is a preamble: the label follows
    ("Unknown Pleasures", "en", "Unknown Pleasures"), ("No Country for Old Men", "en", "No Country for Old Men"),
    ("国际新闻", "zh", "国际新闻"),
    # (a review of the filter: support-ticket topics and one-word names it rejected)
    *((x, lang, x) for x, lang in (
        ("ログインできません問題", "ja"), ("予約できません", "ja"), ("알 수 없는 질병", "ko"),
        ("无法提供医疗服务", "zh"), ("不知道的秘密", "zh"), ("Unable to Work", "en"), ("No Name Brands", "en"),
        ("Error", "en"), ("エラー", "ja"), ("错误", "zh"), ("오류", "ko"), ("Nil", "fr"),
        ("I Can't Breathe Protests", "en"), ("Marché boursier", "fr"), ("Desolation Row", "en"))),
])
def test_names_that_begin_like_a_refusal_are_still_labels(answer: str, lang: str, label: str) -> None:
    assert clean_label(answer, lang) == label

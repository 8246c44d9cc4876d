"""report.html: written by every training run, re-rendered by xtm-report, usable at 6 or 200 topics."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html import escape
from pathlib import Path

import numpy as np
import pytest

from xtm.errors import XtmError
from xtm.evaluation.report import load_run, render_report, write_report_html


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONWARNINGS": "ignore"}


def topic_rows(html: str) -> dict[int, str]:
    """Topic k -> the HTML of its table row."""
    return {int(m.group(1)): m.group(2) for m in re.finditer(r'<tr id="topic-(\d+)"[^>]*>(.*?)</tr>', html, re.S)}


def read_topics(run: Path, prefix: str = "topics") -> dict[str, list[list[str]]]:
    return {lang: [line.split() for line in (run / f"{prefix}_{lang}.txt").read_text(encoding="utf-8").splitlines()]
            for lang in ("en", "zh")}


def assert_self_contained(html: str) -> None:
    assert '<meta charset="utf-8">' in html
    # Nothing to fetch: the only URL is the SVG namespace, which browsers never load.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert re.findall(r"https?://[^\s\"']+", html) == ["http://www.w3.org/2000/svg"] * html.count("<svg")


@pytest.fixture(scope="module")
def phase2_run(example_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phase-2 (LLM-XTM, embedding refiner) run with the aligned reference corpus, via xtm-train."""
    out = tmp_path_factory.mktemp("report-p2") / "run"
    p = subprocess.run(
        [sys.executable, "-m", "xtm.cli.train", "--data", str(example_dir / "docs.jsonl"),
         "--dict", str(example_dir / "dict.tsv"), "--model", "nmtm", "--topics", "6", "--epochs", "10",
         "--phase2-epochs", "2", "--refine-every", "1", "--rounds", "2", "--ref-corpus",
         str(example_dir / "ref_en_zh"), "--out", str(out), "--seed", "0", "--no-contextual"],
        capture_output=True, text=True, timeout=600,
        env={**env(), "XTM_CACHE_DIR": str(tmp_path_factory.getbasetemp() / "xtm-cache")})
    assert p.returncode == 0, p.stderr
    assert "report.html" in p.stderr
    return out


def test_every_training_run_writes_its_report(example_run: Path) -> None:
    html = (example_run / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    topics = read_topics(example_run)
    rows = topic_rows(html)
    assert sorted(rows) == list(range(6))
    for k, row in rows.items():
        for lang in ("en", "zh"):
            assert f'lang="{lang}"' in row
            assert all(escape(w) in row for w in topics[lang][k]), (k, lang)
    metrics = json.loads((example_run / "metrics.json").read_text())
    table = html[html.index('id="metrics"'):html.index('id="plots"')]
    assert f"{metrics['TU']:.3f}" in table and f"{metrics['classification']['EN-C']:.3f}" in table
    assert "no reference corpus" in table                  # CNPMI absent, and said why
    assert html.count("<svg") >= 4 + 1 + 1                 # loss panels, prevalence, topic map
    # report_data.json: prevalence from evaluation's theta, one share per topic, summing to 1
    data = json.loads((example_run / "report_data.json").read_text())
    for lang in ("en", "zh"):
        assert len(data["prevalence"][lang]) == 6 and sum(data["prevalence"][lang]) == pytest.approx(1.0)
    assert len(data["topic_map"]["x"]) == 6 and "confusion" not in data


def test_phase2_report_shows_refined_sets_and_aligned_confusion(phase2_run: Path) -> None:
    html = (phase2_run / "report.html").read_text(encoding="utf-8")
    assert_self_contained(html)
    own, refined = read_topics(phase2_run), read_topics(phase2_run, "refined_topics")
    rows = topic_rows(html)
    assert sorted(rows) == list(range(6))
    changed = 0
    for k, row in rows.items():
        for lang in ("en", "zh"):
            added, dropped = set(refined[lang][k]) - set(own[lang][k]), set(own[lang][k]) - set(refined[lang][k])
            for w in added:
                assert f'<span class="add">{escape(w)}</span>' in row
            for w in dropped:
                assert f'<span class="del">{escape(w)}</span>' in row
            if added or dropped:
                assert f'refined +{len(added)} −{len(dropped)}' in row
            changed += len(added)
    assert changed > 0
    assert "refined sets (phase 2)" in html and "Phase 2: refiner embedding" in html
    assert ">mmd</text>" in html and ">doc_align</text>" in html   # phase-2 losses have their curves
    data = json.loads((phase2_run / "report_data.json").read_text())
    conf = data["confusion"]
    counts = np.array(conf["counts"])
    assert counts.shape == (6, 6) and counts.sum() == conf["documents"] > 0
    assert conf["diagonal_share"] == pytest.approx(np.trace(counts) / counts.sum())
    assert conf["diagonal_share"] > 0.5                    # the example's topics align across languages
    assert f"{conf['diagonal_share'] * 100:.1f}%" in html
    assert len(data["cnpmi_per_topic"]) == 6 and len(data["refined_cnpmi_per_topic"]) == 6
    metrics = json.loads((phase2_run / "metrics.json").read_text())
    assert np.mean(data["cnpmi_per_topic"]) == pytest.approx(metrics["CNPMI"])
    assert np.mean(data["refined_cnpmi_per_topic"]) == pytest.approx(metrics["refined"]["CNPMI"])


def synthetic_run(run: Path, k: int = 200) -> Path:
    """A run directory written by hand: K topics, an ECNews-named dataset, words that need escaping."""
    rng = np.random.default_rng(0)
    run.mkdir(parents=True)
    words = {"en": [[f"w{t}_{i}" for i in range(15)] for t in range(k)],
             "zh": [[f"词{t}字{i}" for i in range(15)] for t in range(k)]}
    words["en"][7][0] = "<b>&amp;"                          # must arrive as text, not markup
    if k > 11:
        words["en"][11], words["zh"][11] = list(words["en"][10]), list(words["zh"][10])   # a duplicate pair
    refined = {lang: [ws[2:] + ws[:2] for ws in words[lang]] for lang in words}   # same sets, reordered
    refined["en"][3] = ["w3_0", "added_word", "<i>"]
    for lang in ("en", "zh"):
        (run / f"topics_{lang}.txt").write_text("".join(" ".join(t) + "\n" for t in words[lang]), encoding="utf-8")
        (run / f"refined_topics_{lang}.txt").write_text("".join(" ".join(t) + "\n" for t in refined[lang]),
                                                        encoding="utf-8")
    metrics = {"TU": 0.9, "TU_per_language": {"en": 0.9, "zh": 0.9}, "CNPMI": 0.05, "TQ": 0.045,
               "classification": {"EN-I": 0.8, "ZH-I": 0.78, "EN-C": 0.5, "ZH-C": 0.52},
               "classification_published": {"EN-I": 0.8125, "ZH-I": 0.7715, "EN-C": 0.5015, "ZH-C": 0.5338},
               "refined": {"TU": 0.91, "CNPMI": 0.06, "TQ": 0.055}, "phase2": {"refinement_steps": 3, "steps": []},
               "model": "nmtm", "dataset": "ECNews", "langs": ["en", "zh"], "num_topics": k, "epochs": 12,
               "interrupted": False, "seconds_per_epoch": 3.5}
    (run / "metrics.json").write_text(json.dumps(metrics))
    history = [{"epoch": e, "loss": 100.0 / e, "recon_en": 50.0 / e, "recon_zh": 50.0 / e, "kl_en": 1.0, "kl_zh": 1.0,
                "seconds": 1.0, **({"mmd": 5.0 - e / 10, "doc_align": 3.0} if e > 10 else {}),
                **({"eval": {"TU": 0.5 + e / 30, "CNPMI": None, "TQ": None, "seconds": 0.1,
                             "classification": {"EN-I": 0.5 + e / 40, "ZH-C": 0.4 + e / 50}}} if e % 4 == 0 else {})}
               for e in range(1, 13)]
    (run / "history.json").write_text(json.dumps(history))
    (run / "config.json").write_text(json.dumps({"langs": ["en", "zh"], "train_config": {"epochs": 10,
                                                                                         "phase2_epochs": 2}}))
    top_a, top_b = rng.integers(0, k, 5000), rng.integers(0, k, 5000)
    top_b[:4000] = top_a[:4000]
    counts = np.zeros((k, k), dtype=int)
    np.add.at(counts, (top_a, top_b), 1)
    prev = rng.dirichlet(np.ones(k), size=2) * 0.5 + 0.5 / k
    prev[:, 5] = 0.0                                          # topic 5: nobody's top topic
    prev /= prev.sum(axis=1, keepdims=True)
    labels = [{"en": f"label {t}", "zh": f"标签{t}"} for t in range(k)]
    labels[7]["en"] = 'Q&A "quoted"'
    (run / "labels.json").write_text(json.dumps({
        "format": "xtm-topic-labels", "schema_version": 1, "num_topics": k, "langs": ["en", "zh"],
        "generator": "openai:qwen", "fallback": "best-connected words",
        "topics": [{"id": t, "labels": lab, "sources": {"en": "llm", "zh": "fallback"}}
                   for t, lab in enumerate(labels)],
        "stats": {"calls": 2 * k}}, ensure_ascii=False), encoding="utf-8")
    docs = {lang: [[{"id": f"d{t}-{i}", "weight": 0.9 - i / 10, "text": f"document {i} of topic {t} <i>{lang}</i>"}
                    for i in range(3)] for t in range(k)] for lang in ("en", "zh")}
    (run / "report_data.json").write_text(json.dumps({
        "schema_version": 1, "num_topics": k, "langs": ["en", "zh"],
        "prevalence": {"en": prev[0].tolist(), "zh": prev[1].tolist()},
        "topic_map": {"x": rng.normal(size=k).tolist(), "y": rng.normal(size=k).tolist(), "explained": [0.2, 0.1]},
        "cnpmi_per_topic": rng.normal(0.05, 0.02, k).tolist(),
        "word_weights": {lang: [np.sort(rng.dirichlet(np.ones(15)))[::-1].tolist() for _ in range(k)]
                         for lang in ("en", "zh")},
        "representative_docs": docs,
        "confusion": {"langs": ["en", "zh"], "counts": counts.tolist(), "documents": 5000,
                      "reference_documents": 5000, "diagonal_share": float(np.trace(counts) / 5000)}}))
    return run


def test_200_topics_render_escaped_with_published_numbers(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run")
    html = render_report(run)
    assert_self_contained(html)
    rows = topic_rows(html)
    assert sorted(rows) == list(range(200))
    assert "词199字14" in rows[199] and 'lang="zh"' in rows[199]
    assert "&lt;b&gt;&amp;amp;" in rows[7] and "<b>&amp;" not in rows[7]
    assert '<span class="add">added_word</span>' in rows[3] and '<span class="add">&lt;i&gt;</span>' in rows[3]
    assert '<span class="del">w3_1</span>' in rows[3]
    assert "refined: the same words" in rows[4]                # reordered, same set: not repeated
    # ECNews + nmtm: the paper's NMTM row and, for a phase-2 run, its LLM-XTM row
    assert "published: NMTM (500 ep)" in html and "published: NMTM + LLM-XTM (500 ep)" in html
    assert "0.7917" not in html and "0.792" in html and "This run has K=200" in html
    # the run's accuracies under both protocols, the published rows to be read against the second
    metrics = html[html.index('id="metrics"'):html.index('id="plots"')]
    assert "this run (xtm&#x27;s protocol)" in metrics and "this run (published protocol)" in metrics
    assert "0.534" in metrics and "read a published row against it" in metrics
    assert html.count("<svg") == 7 + 3 + 3   # 7 loss panels, 3 eval curves (TU, EN-I, ZH-C), prevalence, map, conf.
    assert len(html) < 3_000_000                              # 200 topics stay a light page


def test_report_sections_labels_warnings_glossary_eval_curves_details(tmp_path: Path) -> None:
    """What issue 16.9 asks: labels, word-weight bars, representative documents, a metric glossary,
    evaluation curves, warnings on near-empty and duplicate topics, each in its section."""
    run = synthetic_run(tmp_path / "run", k=20)
    html = render_report(run)
    assert_self_contained(html)
    rows = topic_rows(html)
    assert '<div class="lbl">label 3</div>' in rows[3] and '<div class="lbl">标签3</div>' in rows[3]
    assert '<div class="lbl">Q&amp;A &quot;quoted&quot;</div>' in rows[7]
    warnings = html[html.index('id="warnings"'):html.index('id="metrics"')]
    assert "1 near-empty topic" in warnings and '<a href="#topic-5">5</a> (label 5)' in warnings
    assert "1 duplicate pair" in warnings and '<a href="#topic-10">10</a> (label 10) and <a href="#topic-11">11' \
        in warnings and "(100%)" in warnings
    glossary = html[html.index('id="glossary"'):html.index("</dl>")]
    for term in ("TU", "CNPMI", "TQ", "XX-I / XX-C"):
        assert f"<dt>{term}</dt>" in glossary
    curves = html[html.index('id="eval-curves"'):html.index("Topic prevalence")]
    assert "3 evaluations" in curves and curves.count("<svg") == 3       # TU, EN-I, ZH-C (CNPMI null: none)
    details = html[html.index('id="details"'):]
    cards = re.findall(r'<details class="card" id="card-(\d+)"', details)
    assert cards == [str(t) for t in range(20)]
    card = details[details.index('id="card-4"'):details.index('id="card-5"')]
    assert card.count('class="wb"') == 20 and 'style="width:100%"' in card          # 10 words x 2 languages
    assert "document 0 of topic 4 &lt;i&gt;en&lt;/i&gt;" in card and "<i>" not in card
    assert "label 4" in card and "openai:qwen" in details


def test_training_report_has_labels_bars_and_documents(example_run: Path) -> None:
    html = (example_run / "report.html").read_text(encoding="utf-8")
    labels = json.loads((example_run / "labels.json").read_text(encoding="utf-8"))
    data = json.loads((example_run / "report_data.json").read_text(encoding="utf-8"))
    rows = topic_rows(html)
    for t in labels["topics"]:
        assert f'<div class="lbl">{escape(t["labels"]["en"])}</div>' in rows[t["id"]]
    for lang in ("en", "zh"):
        assert len(data["word_weights"][lang]) == 6
        assert all(w == sorted(w, reverse=True) and 0 < w[0] <= 1 for w in data["word_weights"][lang])
        docs = data["representative_docs"][lang]
        assert len(docs) == 6 and all(1 <= len(d) <= 3 for d in docs)
        for d in docs[0]:
            assert len(d["text"]) <= 242 and escape(d["text"]) in html
    assert "No evaluation curves: train with --eval-every N" in html


def test_inference_report_of_a_scored_corpus(example_run: Path, tmp_path: Path) -> None:
    """xtm-report --theta over xtm-infer's output: documents and prevalence per language, labels."""
    bundle = tmp_path / "bundle"
    p = subprocess.run([sys.executable, "-m", "xtm.cli.export", str(example_run), "--out", str(bundle), "-q"],
                       capture_output=True, text=True, env=env(), timeout=300)
    assert p.returncode == 0, p.stderr
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in [
        {"text": "the football player scored", "lang": "en"}, {"text": "the market and the bank", "lang": "en"},
        {"text": "zzz qqq", "lang": "en"}, {"text": "公司 利润 市场", "lang": "zh"}]), encoding="utf-8")
    theta = tmp_path / "theta.jsonl"
    p = subprocess.run([sys.executable, "-m", "xtm.cli.infer", str(docs), "--bundle", str(bundle), "--out",
                        str(theta)], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 0, p.stderr
    with theta.open("a", encoding="utf-8") as f:
        f.write('not json\n{"topics": [{"id": 99}]}\n')
    cli = [sys.executable, "-m", "xtm.cli.report", "--theta", str(theta), "--bundle", str(bundle)]
    p = subprocess.run(cli, capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 0, p.stderr
    page = Path(str(theta) + ".report.html")
    html = page.read_text(encoding="utf-8")
    assert_self_contained(html)
    lines = [json.loads(line) for line in theta.read_text(encoding="utf-8").splitlines()[:4]]
    top_en = [line["topics"][0]["id"] for line in lines if line["lang"] == "en" and not line["empty"]]
    rows = topic_rows(html)
    assert sorted(rows) == list(range(6))
    for k in set(top_en):
        assert f"en {top_en.count(k) / len(top_en):.1%}" in rows[k]
    labels = json.loads((example_run / "labels.json").read_text(encoding="utf-8"))
    assert all(escape(t["labels"]["zh"]) in rows[t["id"]] for t in labels["topics"])
    assert "<th>en</th><td>3</td><td>1 (33.3%)</td>" in html                # one empty English document
    assert "2 of 6 lines are not xtm-infer results" in html and "(the first: line 5)" in html
    assert html.count("<svg") == 1                                         # the prevalence chart
    if CHROMIUM is not None:                                               # the page's script runs, cleanly
        p = chromium("--dump-dom", page.as_uri())
        assert p.returncode == 0 and console_messages(p.stderr) == [] and 'data-ready="1"' in p.stdout
    # The default output is ours to replace; a user's file of that name is not.
    assert subprocess.run(cli, capture_output=True, env=env(), timeout=120).returncode == 0
    page.write_text("my notes", encoding="utf-8")
    p = subprocess.run(cli, capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 2 and "--out" in p.stderr and page.read_text(encoding="utf-8") == "my notes"
    p = subprocess.run([sys.executable, "-m", "xtm.cli.report", "--theta", str(docs), "--bundle", str(bundle),
                        "--out", str(tmp_path / "x.html")], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 2 and "no xtm-infer result lines" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "xtm.cli.report", "--theta", str(theta)], capture_output=True,
                       text=True, env=env(), timeout=120)
    assert p.returncode == 2 and "--bundle" in p.stderr
    scored = theta.read_bytes()  # --out naming its own input: refused, the scored corpus kept
    p = subprocess.run([*cli, "--out", str(theta)], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 2 and "is not an xtm report" in p.stderr and theta.read_bytes() == scored


def test_an_over_long_theta_line_is_one_bad_line_and_the_lines_after_it_count(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A line over the reader's limit was read in limit-sized pieces, each counted as one more bad line (so
    "N of M lines" counted lines the file does not have); it is skipped to its end as xtm-infer skips it
    (xtm.runtime.records.read_lines). The limit is 64 MiB; 64 bytes here, to keep the file small."""
    from xtm.evaluation import report_theta

    monkeypatch.setattr(report_theta, "MAX_LINE_BYTES", 64)
    good = [json.dumps({"lang": lang, "topics": [{"id": k}], "theta": {str(k): 1.0}})
            for lang, k in (("en", 0), ("zh", 1), ("en", 1), ("zh", 0))]
    assert all(len(line) < 64 for line in good)
    theta = tmp_path / "theta.jsonl"
    theta.write_text("\n".join([good[0], json.dumps({"lang": "en", "text": "x" * 300}), good[1], "", good[2],
                                "not json", good[3]]) + "\n", encoding="utf-8")
    stats = report_theta.read_theta(theta, num_topics=2)
    assert (stats.lines, stats.bad, stats.first_bad) == (6, 2, 2)   # the blank line 4 is no line of results
    assert {code: (s.docs, s.top) for code, s in stats.langs.items()} == {"en": (2, [1, 1]), "zh": (2, [1, 1])}
    # over-long as the file's last line, without a newline: still one bad line
    theta.write_text(good[0] + "\n" + "y" * 200, encoding="utf-8")
    stats = report_theta.read_theta(theta, num_topics=2)
    assert (stats.lines, stats.bad, stats.first_bad) == (2, 1, 2)
    # numbers Python will not convert are bad lines too, not a traceback (a topic key int() refuses, a weight
    # too large for a float)
    monkeypatch.undo()
    theta.write_text("\n".join([good[0], '{"lang": "en", "topics": [{"id": 0}], "theta": {"' + "1" * 5000 + '": 1}}',
                                '{"lang": "en", "topics": [{"id": 0}], "theta": [1' + "0" * 400 + ", 0]}"]) + "\n",
                     encoding="utf-8")
    stats = report_theta.read_theta(theta, num_topics=2)
    assert (stats.lines, stats.bad, stats.first_bad) == (3, 2, 2)


def test_published_numbers_have_one_home() -> None:
    from xtm.evaluation.published import published_rows

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    for script in ("backbones.py", "llm_xtm.py"):
        text = (bench / script).read_text(encoding="utf-8")
        assert "from xtm.evaluation.published import" in text and "0.818" not in text, script
    (nmtm,) = published_rows("ecnews", "nmtm", phase2=False)
    assert (nmtm.TU, nmtm.CNPMI) == (0.818, 0.034) and nmtm.TQ == pytest.approx(0.034 * 0.818)
    assert published_rows("docs") == []
    # every backbone has its phase-2 row (Table 2), and the paper's printed TQ is CNPMI x TU
    for dataset, tq in (("ECNews", {"nmtm": .032, "infoctm": .056, "xtra": .084}),
                        ("Rakuten_Amazon", {"nmtm": .011, "infoctm": .035, "xtra": .035})):
        for model, printed in tq.items():
            (row,) = [r for r in published_rows(dataset, model, phase2=True) if r.name.endswith("+ LLM-XTM")]
            assert row.TQ == pytest.approx(printed, abs=6e-4), (dataset, model)


def test_xtm_report_cli_rewrites_and_errors_cleanly(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", k=10)
    cli = [sys.executable, "-m", "xtm.cli.report"]
    p = subprocess.run(cli + [str(run)], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 0, p.stderr
    assert (run / "report.html").is_file() and p.stdout.strip().endswith("report.html")
    p = subprocess.run(cli + [str(run), "--out", str(tmp_path / "elsewhere.html")], capture_output=True, text=True,
                       env=env(), timeout=120)
    assert p.returncode == 0 and len(topic_rows((tmp_path / "elsewhere.html").read_text(encoding="utf-8"))) == 10
    # An existing --out is replaced only when it is a report xtm-report wrote (a run's or an inference
    # report) or empty: a user's file, or one of the run's own files, is refused and left as it was.
    (tmp_path / "empty.html").touch()
    for out in (tmp_path / "elsewhere.html", tmp_path / "empty.html"):
        p = subprocess.run(cli + [str(run), "--out", str(out)], capture_output=True, text=True, env=env(), timeout=120)
        assert p.returncode == 0 and out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>"), p.stderr
    thesis = tmp_path / "thesis.docx"
    thesis.write_bytes(b"PK\x03\x04 my thesis")
    metrics = (run / "metrics.json").read_bytes()
    for out, before in ((thesis, thesis.read_bytes()), (run / "metrics.json", metrics)):
        p = subprocess.run(cli + [str(run), "--out", str(out)], capture_output=True, text=True, env=env(), timeout=120)
        assert p.returncode == 2 and "is not an xtm report" in p.stderr and "choose another --out" in p.stderr
        assert out.read_bytes() == before and "Traceback" not in p.stderr
    fifo = tmp_path / "pipe"  # written in place (it was opened to read first, and waited for a writer)
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    p = subprocess.run(cli + [str(run), "--out", str(fifo)], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 0 and reader.communicate(timeout=60)[0].startswith(b"<!DOCTYPE html>"), p.stderr
    not_a_run = tmp_path / "empty"
    not_a_run.mkdir()
    p = subprocess.run(cli + [str(not_a_run)], capture_output=True, text=True, env=env(), timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert str(not_a_run / "metrics.json") in p.stderr and "not an xtm-train run directory" in p.stderr
    assert not (not_a_run / "report.html").exists()


def test_missing_or_broken_run_files_are_named(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", k=10)
    (run / "topics_zh.txt").unlink()
    with pytest.raises(XtmError, match="topics_zh.txt"):
        load_run(run)
    (run / "metrics.json").write_text("{broken")
    with pytest.raises(XtmError, match="metrics.json"):
        write_report_html(run)
    (run / "metrics.json").write_text("[1, 2]")  # read by RunDir.load_metrics, the run directory's owner
    with pytest.raises(XtmError) as e:
        load_run(run)
    assert str(e.value) == f"{run / 'metrics.json'}: must hold a JSON object"
    with pytest.raises(XtmError, match="not a directory"):
        load_run(tmp_path / "nope")


def test_report_without_report_data_still_renders(tmp_path: Path) -> None:
    run = synthetic_run(tmp_path / "run", k=10)
    (run / "report_data.json").unlink()
    html = render_report(run)
    assert len(topic_rows(html)) == 10 and "report_data.json is missing" in html


# ---- in a real browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install "
                                                              "chromium); the browser check is skipped")


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", *args], capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    # Chromium logs every console message and uncaught exception of the page as a CONSOLE line.
    return [line for line in stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]


@needs_chromium
def test_browser_check_sees_script_errors(tmp_path: Path) -> None:
    """The console check below is not vacuous: a failing script is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><script>undefinedFunction();</script></body></html>')
    p = chromium("--dump-dom", page.as_uri())
    assert any("Uncaught" in line for line in console_messages(p.stderr)), p.stderr


@needs_chromium
@pytest.mark.parametrize("which", ["phase2", "200-topics"])
def test_report_in_a_headless_browser(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if which == "phase2":
        run: Path = request.getfixturevalue("phase2_run")
    else:
        run = synthetic_run(tmp_path / "run")
        write_report_html(run)
    k = len(read_topics(run)["en"])
    page = (run / "report.html").as_uri()
    p = chromium("--dump-dom", page)
    assert p.returncode == 0, p.stderr
    assert console_messages(p.stderr) == []
    dom = p.stdout
    assert 'data-ready="1"' in dom                            # the page's script ran to its end
    rows = topic_rows(dom)
    assert sorted(rows) == list(range(k))
    assert not re.search(r'<tr id="topic-\d+"[^>]*hidden', dom)   # the filter starts by showing every topic
    assert f'<b id="shown">{k}</b>' in dom
    for section in ('id="warnings"', 'id="glossary"', 'id="details"', 'class="wb"', 'class="docs"',
                    'class="lbl"', "Evaluation during training"):
        assert section in dom, section
    assert len(re.findall(r'<details class="card" id="card-\d+"', dom)) == k
    shot = tmp_path / f"report-{which}.png"
    p = chromium(f"--screenshot={shot}", "--window-size=1280,3000", page)
    assert p.returncode == 0, p.stderr
    assert console_messages(p.stderr) == []
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    print(f"screenshot of the {which} report: {shot}")

"""report.html from a hostile run directory: every value is text or a typed number, never markup.

A run directory is user input: it is copied around, shared, edited by hand. Every string and
number it holds (metrics.json, report_data.json, history.json, config.json, the topic files and the
directory's own name) is replaced here by markup that would run a script if it reached the page
unescaped, and the page must stay inert: no element, attribute or URL from the payloads, the page's
own script the only one (allowed by hash in the Content-Security-Policy), and in a real browser
nothing injected runs while the page's filter/sort still does. The leaf replacement is generic, so
a field added to these files later is attacked too.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from itertools import cycle
from pathlib import Path
from typing import Any

import pytest

from xtm.errors import XtmError
from xtm.evaluation.report import JS, load_run, render_report, write_report_html

# Each payload, if it ever ran, marks <html> with data-xss (or logs to the console): the browser test looks for both.
MARK = "document.documentElement.setAttribute('data-xss','{}')"
PAYLOADS = [
    f'"><script>{MARK.format(1)}</script>',
    "'><script>console.log('XSS-RAN')</script>",
    f"</script><script>{MARK.format(2)}</script>",
    f"<img src=x onerror=\"{MARK.format(3)}\">",
    f"<svg onload=\"{MARK.format(4)}\"></svg>",
    f"javascript:{MARK.format(5)}",
    f"\u2028\u2029</style></title></textarea><script>{MARK.format(6)}</script>",
    f"--><!--<script>{MARK.format(7)}</script>",
    f"<iframe srcdoc=\"<script>parent.{MARK.format(8)}</script>\"></iframe>",
    f"<a href=\"javascript:{MARK.format(9)}\" id=x>x</a>",
    f"' onmouseover='{MARK.format(10)}' x='",
    f"\" autofocus onfocus=\"{MARK.format(11)}\" x=\"",
]
# Topic files split on whitespace, so their payloads have none.
WORD_PAYLOADS = [
    f'"><script>{MARK.format(20).replace(" ", "")}</script>',
    "<img/src=x/onerror=document.documentElement.setAttribute('data-xss','21')>",
    "<svg/onload=document.documentElement.setAttribute('data-xss','22')>",
    "\"/onmouseover=\"document.documentElement.setAttribute('data-xss','23')",
    "</script><script>console.log('XSS-RAN')</script>",
    "javascript:document.documentElement.setAttribute('data-xss','24')",
]
HOSTILE_DIR_NAME = "\"><svg onload=\"console.log('XSS-RAN')\">"
K = 3
LANGS = ["en", "zh"]
# The fields that say what the run *is*: hostile there is a clean error, tested on its own below.
IDENTITY = {("metrics.json", "langs"), ("config.json", "langs"), ("report_data.json", "num_topics")}
# Element names and attributes the report uses besides those below: the glossary and the topic cards.


# ---- a complete phase-2 run directory, every field xtm-train writes --------------------------------

def run_files(k: int = K) -> dict[str, Any]:
    """The JSON files of a phase-2 run with a reference corpus, shaped as xtm-train writes them."""
    refiner = {"backend": "llm", "llm_url": "http://127.0.0.1:8000/v1", "llm_model": "qwen", "api_key_env":
               "OPENAI_API_KEY", "concurrency": 8, "timeout": 120.0, "retries": 4,
               "sampling": {"temperature": 1.0, "top_p": 0.95, "max_tokens": 400, "seed": 0}}
    p2cfg = {"epochs": 2, "refine_every": 1, "rounds": 2, "top_words": 15, "refined_words": 15, "lambda_mmd": 2e4,
             "lambda_doc": 100.0, "doc_tau": 0.1, "mmd": True, "doc_align": True, "multi_kernel": False,
             "encoder": "use-multilingual", "refiner": refiner}
    step = {"epoch": 11, "refiner": "llm", "calls": 6, "cache_hits": 0, "failures": 1, "prompt_tokens": 900,
            "completion_tokens": 300, "seconds": 1.5, "answers": 6, "usable_answers": 5,
            "topics_kept_previous_set": 0, "topics_without_set": 1}
    metrics = {
        "TU": 0.86, "TU_per_language": {"en": 0.84, "zh": 0.88}, "CNPMI_pair": "en-zh",
        "CNPMI_reference": {"source": "/data/ref_en_zh", "documents": 300, "max_tokens": 50},
        "CNPMI": 0.17, "TQ": 0.15, "classification": {"EN-I": 0.88, "ZH-I": 0.83, "EN-C": 0.85, "ZH-C": 0.83},
        "classification_published": {"EN-I": 0.9, "ZH-I": 0.85, "EN-C": 0.8, "ZH-C": 0.81},
        "classification_published_note": "not computed: too many documents",
        "refined": {"TU": 0.87, "TU_per_language": {"en": 0.89, "zh": 0.86}, "CNPMI": 0.16, "TQ": 0.14},
        "phase2": {"config": p2cfg, "refinement_steps": 2, "seconds_per_refinement": 1.5,
                   "events": {"unusable_answers": 1, "words_mapped": 3, "words_dropped": 2,
                              "topics_kept_previous_set": 0, "topics_without_set": 1},
                   "steps": [step, {**step, "epoch": 12}], "topics_with_refined_set": k - 1},
        "model": "nmtm", "dataset": "ECNews", "langs": LANGS, "num_topics": k, "epochs": 12, "interrupted": True,
        "seconds_per_epoch": 0.5, "train_seconds_total": 6.0, "CNPMI_note": "computed on the reference corpus",
        "corpus": {"source": "/data/docs.jsonl", "languages": {"en": {"train_docs": 480}}},
        "distributed": {"world_size": 2, "backend": "gloo", "steps_per_epoch_per_rank": 3,
                        "rank_state_sha256": ["ab", "cd"]},
    }
    config = {
        "xtm_version": "0.1.0", "langs": LANGS,
        "model_config": {"model": "nmtm", "langs": LANGS, "vocab_sizes": [305, 325], "num_topics": k,
                         "hparams": {"hidden": 200, "dropout": 0.0}},
        "train_config": {"model": "nmtm", "num_topics": k, "epochs": 10, "batch_size": 200, "lr": 0.002, "seed": 0,
                         "device": "auto", "phase2_epochs": 2, "hparams": {}},
        "data": {"path": "/data/docs.jsonl", "ref_corpus": "/data/ref_en_zh", "name": "ECNews"},
        "tokenizers": {"en": {"lang": "en", "kind": "regex"}, "zh": {"lang": "zh", "kind": "jieba"}},
        "corpus_info": {"source": "/data/docs.jsonl", "label_names": ["business", "sports"]}, "phase2": p2cfg,
    }
    history = [{"epoch": e, "recon_en": 130.0 / e, "kl_en": 2.5, "recon_zh": 180.0 / e, "kl_zh": 2.7, "loss": 300.0 / e,
                "seconds": 0.1, "steps": 3, **({"mmd": 690.0, "doc_align": 59.0} if e > 1 else {}),
                "eval": {"TU": 0.8, "CNPMI": 0.1, "TQ": 0.08, "classification": {"EN-I": 0.7, "ZH-C": 0.6},
                         "seconds": 0.2}}
               for e in (1, 2, 3)]
    labels = {"format": "xtm-topic-labels", "schema_version": 1, "num_topics": k, "langs": LANGS,
              "generator": "openai:qwen", "fallback": "the best-connected top words",
              "topics": [{"id": t, "labels": {"en": f"label {t}", "zh": f"标签{t}"},
                          "sources": {"en": "llm", "zh": "fallback"}} for t in range(k)],
              "stats": {"calls": 6, "cache_hits": 0, "rejected": 1}}
    report_data = {
        "schema_version": 1, "num_topics": k, "langs": LANGS,
        "prevalence": {"en": [0.5, 0.3, 0.2][:k], "zh": [0.4, 0.4, 0.2][:k]},
        "topic_map": {"x": [0.1, -0.2, 0.3][:k], "y": [0.0, 0.5, -0.5][:k], "explained": [0.27, 0.25]},
        "cnpmi_per_topic": [0.1, 0.2, 0.05][:k], "refined_cnpmi_per_topic": [0.12, 0.18, 0.07][:k],
        "confusion": {"langs": ["en", "zh"], "counts": [[8, 1, 0], [0, 7, 1], [1, 0, 6]],
                      "documents": 24, "reference_documents": 30, "diagonal_share": 21 / 24},
        "word_weights": {lang: [[0.3, 0.2, 0.1, 0.05, 0.01] for _ in range(k)] for lang in LANGS},
        "representative_docs": {lang: [[{"id": f"doc{t}", "weight": 0.9, "text": f"a document about topic {t}"},
                                        {"id": None, "weight": 0.8, "text": "w1 w2", "bag": True}]
                                       for t in range(k)] for lang in LANGS},
    }
    files = {"metrics.json": metrics, "config.json": config, "history.json": history, "report_data.json": report_data,
             "labels.json": labels}
    return json.loads(json.dumps(files))                   # no list shared between fields: each leaf is its own


def topic_words(k: int = K) -> dict[str, list[list[str]]]:
    return {"en": [[f"word{t}_{i}" for i in range(5)] for t in range(k)],
            "zh": [[f"词{t}字{i}" for i in range(5)] for t in range(k)]}


def write_run(run: Path, files: dict[str, Any], words: dict[str, list[list[str]]] | None = None,
              refined: dict[str, list[list[str]]] | None = None) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    for name, obj in files.items():
        (run / name).write_text(json.dumps(obj, ensure_ascii=False), encoding="utf-8")
    words = words or topic_words()
    refined = refined or {lang: [ws[1:] + [f"new{t}"] for t, ws in enumerate(w)] for lang, w in words.items()}
    for lang in LANGS:
        for prefix, topics in (("topics", words), ("refined_topics", refined)):
            (run / f"{prefix}_{lang}.txt").write_text("".join(" ".join(ws) + "\n" for ws in topics[lang]),
                                                      encoding="utf-8")
        # Not read by the report today; hostile anyway, so a later reader of them is attacked too.
        (run / f"vocab_{lang}.txt").write_text("\n".join(WORD_PAYLOADS) + "\n", encoding="utf-8")
    return run


# ---- generic attacks on every leaf -----------------------------------------------------------------

Path_ = tuple[Any, ...]


def leaves(obj: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Paths of every string, number and boolean in a JSON value."""
    if isinstance(obj, dict):
        for key, v in obj.items():
            yield from leaves(v, (*path, key))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from leaves(v, (*path, i))
    elif isinstance(obj, (str, int, float)):
        yield path


def containers(obj: Any, path: Path_ = ()) -> Iterator[Path_]:
    """Paths of every object and array below the top level."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for key, v in items:
        if isinstance(v, (dict, list)):
            yield (*path, key)
            yield from containers(v, (*path, key))


def set_at(obj: Any, path: Path_, value: Any) -> None:
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = value


def is_identity(name: str, path: Path_) -> bool:
    return bool(path) and (name, path[0]) in IDENTITY


def every_leaf(files: dict[str, Any], values: Callable[[], Any]) -> dict[str, Any]:
    """A copy of the run's files with every leaf (but the run's identity) replaced by values()."""
    files = copy.deepcopy(files)
    for name, obj in files.items():
        for path in list(leaves(obj)):
            if not is_identity(name, path):
                set_at(obj, path, values())
    return files


def hostile_keys(files: dict[str, Any]) -> dict[str, Any]:
    """A copy where every object also holds markup keys: a name that is shown (a loss, a metric, an event)."""
    files = copy.deepcopy(files)
    payloads = cycle(PAYLOADS)

    def add(obj: Any) -> None:
        for v in obj.values() if isinstance(obj, dict) else obj if isinstance(obj, list) else ():
            add(v)
        if isinstance(obj, dict):
            obj[next(payloads)] = 0.5                     # a number under a markup name is shown
            obj[next(payloads)] = next(payloads)

    for obj in files.values():
        add(obj)
    return files


def hostile_words() -> dict[str, list[list[str]]]:
    payloads = cycle(WORD_PAYLOADS)
    return {lang: [[next(payloads) for _ in range(4)] for _ in range(K)] for lang in LANGS}


def hostile_run(root: Path) -> Path:
    """Every attack at once: all leaves markup, markup keys everywhere, markup words, a markup directory name."""
    payloads = cycle(PAYLOADS)
    files = hostile_keys(every_leaf(run_files(), lambda: next(payloads)))
    return write_run(root / HOSTILE_DIR_NAME, files, hostile_words(), hostile_words())


# ---- what an inert page looks like ------------------------------------------------------------------

# Every element the report uses; anything else came from a payload.
TAGS = {"html", "head", "meta", "title", "style", "body", "header", "h1", "h2", "h3", "code", "div", "p", "span",
        "b", "nav", "a", "section", "table", "thead", "tbody", "tr", "th", "td", "ul", "li", "details", "summary",
        "pre", "svg", "rect", "text", "line", "polyline", "circle", "input", "label", "select", "option", "br",
        "script", "dl", "dt", "dd"}


class Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))
        self._in_script = tag == "script"
        if self._in_script:
            self.scripts.append("")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script:
            self.scripts[-1] += data


def csp_of(html: str) -> str:
    m = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html)
    assert m, "report.html has no Content-Security-Policy"
    return m.group(1)


def assert_inert(html: str) -> None:
    """No element, attribute, URL or script from a payload; the page's own script is the only one."""
    for p in PAYLOADS + WORD_PAYLOADS:
        assert p not in html or "<" not in p, p        # a payload with markup never arrives as it was
    page = Elements()
    page.feed(html)
    page.close()
    strange = {t for t, _ in page.tags} - TAGS
    assert not strange, strange
    assert page.scripts == [JS], page.scripts              # one script, the page's own, byte for byte
    assert [t for t, _ in page.tags].count("style") == 1
    metas = [dict(a) for t, a in page.tags if t == "meta"]
    assert len(metas) == 3 and all(set(m) <= {"charset", "name", "content", "http-equiv"} for m in metas)
    for tag, attrs in page.tags:
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)
            assert name in {"id", "class", "lang", "style", "href", "title", "type", "placeholder", "aria-label",
                            "value", "role", "viewbox", "xmlns", "x", "y", "x1", "x2", "y1", "y2", "cx", "cy", "r",
                            "width", "height", "points", "fill", "fill-opacity", "text-anchor", "transform",
                            "charset", "name", "content", "http-equiv", "hidden", "open"} or name.startswith("data-"), \
                name
            if name == "href":
                assert re.fullmatch(r"#[a-z0-9-]+", value or ""), value     # only in-page links: no javascript:
            if name == "style":
                assert re.fullmatch(r"[a-zA-Z0-9:;#%.\- ]*", value or ""), value
    digest = base64.b64encode(hashlib.sha256(JS.encode("utf-8")).digest()).decode()
    policy = csp_of(html)
    assert f"script-src 'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert "unsafe-inline" not in policy.split("script-src", 1)[1].split(";", 1)[0]


# ---- tests without a browser ------------------------------------------------------------------------

def test_a_clean_run_passes_the_inertness_check(tmp_path: Path) -> None:
    """The check above is not vacuous the other way round: a normal report passes it and shows its values."""
    html = render_report(write_run(tmp_path / "run", run_files()))
    assert_inert(html)
    assert "0.860" in html and 'data-cnpmi="0.1"' in html and "2 refinement steps" in html
    assert "words_mapped 3" in html and "2 topics with a refined set" in html


def test_every_field_at_once_renders_inert(tmp_path: Path) -> None:
    run = hostile_run(tmp_path)
    html = render_report(run)
    assert_inert(html)
    assert len(re.findall(r'<tr id="topic-\d+"', html)) == K
    write_report_html(run)                                  # and the file is written where it belongs
    assert (run / "report.html").read_text(encoding="utf-8") == html


@pytest.mark.parametrize("name", ["metrics.json", "config.json", "history.json", "report_data.json", "labels.json"])
def test_each_field_alone_renders_inert(name: str, tmp_path: Path) -> None:
    """One markup leaf at a time, the rest valid: every section that shows the field is reached."""
    files = run_files()
    paths = [p for p in leaves(files[name]) if not is_identity(name, p)]
    assert len(paths) > 5
    payloads = cycle(PAYLOADS)
    for i, path in enumerate(paths):
        hostile = copy.deepcopy(files)
        set_at(hostile[name], path, next(payloads))
        html = render_report(write_run(tmp_path / f"r{i}", hostile))
        try:
            assert_inert(html)
        except AssertionError as e:
            raise AssertionError(f"{name} {list(path)}: {e}") from e


def test_labels_and_documents_with_markup_are_text_or_refused(tmp_path: Path) -> None:
    """Representative documents hold any text: markup in them is shown as text. A label that could
    break an attribute is shown escaped; one with markup makes labels.json unusable (a note), never shown."""
    files = run_files()
    payloads = cycle(PAYLOADS)
    for lang in LANGS:
        for row in files["report_data.json"]["representative_docs"][lang]:
            for d in row:
                d["text"], d["id"] = next(payloads), next(payloads)
    quote_breaker = "' onmouseover='alert(1)' x='"          # no markup: a valid label, shown escaped
    files["labels.json"]["topics"][1]["labels"]["en"] = quote_breaker
    html = render_report(write_run(tmp_path / "docs", files))
    assert_inert(html)
    assert html.count("&#x27; onmouseover=&#x27;alert(1)&#x27; x=&#x27;") >= 3   # topic table, card title and column
    assert escape_text(PAYLOADS[0]) in html and 'class="docs"' in html
    files["labels.json"]["topics"][0]["labels"]["zh"] = PAYLOADS[3]
    html = render_report(write_run(tmp_path / "markup-label", files))
    assert_inert(html)
    assert "labels.json is not usable" in html and 'class="lbl"' not in html


def escape_text(s: str) -> str:
    from html import escape

    return escape(s, quote=True)


def test_numbers_that_are_not_numbers_render_as_none(tmp_path: Path) -> None:
    """Where a number is expected: NaN, infinities, an int too large for a float, a bool, null, [], {} or a string."""
    odd = [float("nan"), float("inf"), float("-inf"), 10 ** 400, True, None, [], {}, "0.5", "1e3", -0.0, 1e308]
    files = run_files()
    for i, value in enumerate(odd):
        for name in files:
            nums = [p for p in leaves(files[name]) if not isinstance(get_at(files[name], p), str)
                    and not is_identity(name, p)]
            hostile = copy.deepcopy(files)
            for path in nums:
                set_at(hostile[name], path, value)
            html = render_report(write_run(tmp_path / f"r{i}-{name}", hostile))
            assert_inert(html)
    # A string where a count belongs is not shown at all, not even escaped.
    files["metrics.json"]["phase2"]["refinement_steps"] = "12 <b>"
    files["report_data.json"]["cnpmi_per_topic"][1] = "0.5"
    html = render_report(write_run(tmp_path / "strings", files))
    assert "12 &lt;b&gt;" not in html and "— refinement steps" in html
    assert 'data-cnpmi="nan"' in html and "cnpmi_per_topic" in html      # the note names the field


def get_at(obj: Any, path: Path_) -> Any:
    for key in path:
        obj = obj[key]
    return obj


def test_any_object_or_array_of_another_type_renders_inert(tmp_path: Path) -> None:
    """Each object/array replaced by markup, a number, or the other container type: shown without it, no crash."""
    files = run_files()
    payloads = cycle(PAYLOADS)
    i = 0
    for name in files:
        for path in list(containers(files[name])):
            if is_identity(name, path):
                continue
            for value in (next(payloads), 7, [] if isinstance(get_at(files[name], path), dict) else {}):
                hostile = copy.deepcopy(files)
                set_at(hostile[name], path, value)
                i += 1
                assert_inert(render_report(write_run(tmp_path / f"r{i}", hostile)))
    for name, value in (("metrics.json", []), ("config.json", "<script>x</script>"), ("history.json", {"a": 1}),
                        ("report_data.json", 5)):
        hostile = {**files, name: value}
        if name == "metrics.json":
            with pytest.raises(XtmError, match="metrics.json"):
                load_run(write_run(tmp_path / "top-metrics", hostile))
            continue
        i += 1
        html = render_report(write_run(tmp_path / f"r{i}", hostile))
        assert_inert(html)
        assert name in html                                # a note says which file was not usable


@pytest.mark.parametrize("where", ["metrics.json", "config.json"])
def test_markup_language_codes_are_a_clean_error(where: str, tmp_path: Path) -> None:
    """The languages name files (topics_<lang>.txt): markup or a path there is refused, naming the file and field."""
    for i, bad in enumerate(["\"><img src=x onerror=alert(1)>", "../../etc", 5, "en/../../x"]):
        files = run_files()
        if where == "config.json":
            del files["metrics.json"]["langs"]
        files[where]["langs"] = ["en", bad]
        run = write_run(tmp_path / f"r{i}", files)
        with pytest.raises(XtmError, match=rf"{re.escape(where)}.*langs"):
            load_run(run)
        assert not (run / "report.html").exists()


def test_markup_topic_file_names_are_not_languages(tmp_path: Path) -> None:
    """Without langs in the JSON files the languages come from topics_<lang>.txt names; markup names are skipped."""
    files = run_files()
    del files["metrics.json"]["langs"], files["config.json"]["langs"]
    run = write_run(tmp_path / "run", files)
    (run / "topics_\"><svg onload=alert(1)>.txt").write_text("a b c\nd e f\ng h i\n", encoding="utf-8")
    html = render_report(run)
    assert_inert(html)
    assert load_run(run).langs == LANGS


def test_json_nested_too_deep_is_a_clean_error(tmp_path: Path) -> None:
    """A file nested 100000 levels deep makes json recurse past Python's limit: an error naming it, not a crash."""
    for name in ("metrics.json", "history.json", "report_data.json", "config.json"):
        run = write_run(tmp_path / name, run_files())
        (run / name).write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
        if name == "metrics.json":
            with pytest.raises(XtmError, match="metrics.json"):
                load_run(run)
            continue
        with pytest.raises(XtmError, match=re.escape(name)):
            load_run(run)


def test_xtm_report_on_markup_languages_exits_2_in_one_line(tmp_path: Path) -> None:
    files = run_files()
    files["metrics.json"]["langs"] = ["en", "\"><script>alert(1)</script>"]
    run = write_run(tmp_path / "run", files)
    p = subprocess.run([sys.executable, "-m", "xtm.cli.report", str(run)], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "metrics.json" in p.stderr and "'langs'" in p.stderr
    assert not (run / "report.html").exists()


# ---- in a real browser ------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (Debian: apt-get install "
                                                              "chromium); the browser check is skipped")


def chromium_dom(page: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts (and any injected timers or load handlers) ran, and its console lines."""
    p = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return p.stdout, console


def attributes(dom: str) -> list[tuple[str, str, str | None]]:
    page = Elements()
    page.feed(dom)
    return [(t, n, v) for t, attrs in page.tags for n, v in attrs]


def issue_fields_run(root: Path) -> Path:
    """Only the fields issue 13 names, the rest valid: the page renders on the old code too, and runs the script."""
    files = run_files()
    p2 = files["metrics.json"]["phase2"]
    p2["refinement_steps"] = PAYLOADS[0]
    p2["events"]["words_mapped"] = PAYLOADS[3]
    p2["topics_with_refined_set"] = PAYLOADS[4]
    files["report_data.json"]["cnpmi_per_topic"][0] = PAYLOADS[0]
    return write_run(root / "issue", files)


@needs_chromium
@pytest.mark.parametrize("which", ["issue-fields", "everything"])
def test_no_injected_script_runs_in_a_browser(which: str, tmp_path: Path) -> None:
    run = issue_fields_run(tmp_path) if which == "issue-fields" else hostile_run(tmp_path)
    page = write_report_html(run)
    dom, console = chromium_dom(page)
    assert console == []                                    # nothing logged, nothing refused by the policy
    attrs = attributes(dom)
    assert not [a for a in attrs if a[1] == "data-xss"], [a for a in attrs if a[1] == "data-xss"]
    assert not [a for a in attrs if a[1].startswith("on")]
    assert ("body", "data-ready", "1") in attrs             # the page's own script ran to its end
    assert len(re.findall(r'<tr id="topic-\d+"', dom)) == K and f'<b id="shown">{K}</b>' in dom


@needs_chromium
def test_the_policy_stops_a_script_that_escaping_missed(tmp_path: Path) -> None:
    """Defence in depth: markup spliced into a rendered report (an escaping bug) still does not run."""
    run = write_run(tmp_path / "run", run_files())
    html = render_report(run)
    # (not the comment opener: it would swallow the rest of the page, the page's own script with it)
    spliced = html.replace("<h2>Metrics</h2>", "<h2>Metrics</h2>" + "".join(p for p in PAYLOADS if "<!--" not in p), 1)
    page = tmp_path / "spliced.html"
    page.write_text(spliced, encoding="utf-8")
    dom, console = chromium_dom(page)
    attrs = attributes(dom)
    assert not [a for a in attrs if a[1] == "data-xss"], [a for a in attrs if a[1] == "data-xss"]
    assert not any("XSS-RAN" in line for line in console)
    assert any("Content Security Policy" in line for line in console), console   # it was refused, not absent
    assert ("body", "data-ready", "1") in attrs

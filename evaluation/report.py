"""report.html: one self-contained page per training run (inline CSS, SVG and JS; nothing fetched).

Torch-free: it reads only run-directory files, so `xtm-report RUN_DIR` works anywhere the run
was copied. metrics.json and topics_<lang>.txt are required; history.json, config.json,
refined_topics_<lang>.txt and report_data.json (what needs the model: prevalence, per-topic
CNPMI, the topic map, the aligned-document confusion; see xtm.trainer.report_data) add their
sections when present.

A run directory is user input (copied, shared, edited by hand), so nothing from it reaches the page
as markup: every word, name and key is escaped (text and attributes alike), every number is checked
to be a finite JSON number before it is formatted (anything else shows as "—"), report_data.json's
arrays are checked for shape before they are drawn, and language codes, which name files, must look
like language codes. The page embeds no run data in its script (it reads data-* attributes), and a
Content-Security-Policy allows only that script, by hash: no injected script or handler would run
even if an escape were missed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from xtm.atomic import write_text
from xtm.errors import XtmError
from xtm.evaluation import report_svg as svg
from xtm.evaluation.metrics import topic_uniqueness_per_topic
from xtm.evaluation.published import CNPMI_NOTE, SOURCE, Published, published_rows
from xtm.labels import TopicLabels
from xtm.run_dir import RunDir

REPORT_NAME = RunDir.REPORT


@dataclass
class RunFiles:
    """What the report reads from a run directory."""

    run_dir: Path
    metrics: dict[str, Any]
    config: dict[str, Any]
    history: list[dict[str, Any]]
    langs: list[str]
    topics: dict[str, list[list[str]]]
    refined: dict[str, list[list[str]]] | None
    data: dict[str, Any]
    notes: list[str]
    labels: TopicLabels | None = None
    evals: list[dict[str, float]] = field(default_factory=list)


# A language code names files (topics_<lang>.txt) and reaches the page: letters, then optional subtags.
LANG_CODE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8}){0,3}")


def _langs(run_dir: Path, metrics: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The run's languages: metrics.json's, else config.json's, else the topics_<lang>.txt names."""
    for name, source in ((RunDir.METRICS, metrics), (RunDir.CONFIG, config)):
        value = source.get("langs")
        if not value:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and LANG_CODE.fullmatch(v) for v in value):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise XtmError(f"expected a list of language codes such as [\"en\", \"zh\"], got {shown}",
                           path=run_dir / name, field="langs")
        return list(value)
    return sorted(n for n in RunDir(run_dir).topic_files() if LANG_CODE.fullmatch(n))


def load_run(run_dir: str | Path) -> RunFiles:
    """Read a run directory; XtmError naming the file when it is not a (complete) xtm-train run."""
    run_dir = Path(run_dir)
    run = RunDir(run_dir)
    if not run_dir.is_dir():
        raise XtmError("not a directory (expected an xtm-train run directory)", path=run_dir)
    metrics_path = run.file(RunDir.METRICS)
    if not metrics_path.is_file():
        raise XtmError("not an xtm-train run directory: metrics.json is missing (xtm-train writes it when "
                       "training ends)", path=metrics_path)
    metrics = run.load_metrics()  # the run-directory owner's reader: a JSON object, or an error naming the file
    notes: list[str] = []
    config = run.read_json(RunDir.CONFIG) if run.has(RunDir.CONFIG) else {}
    if not isinstance(config, dict):
        notes.append("config.json does not hold a JSON object; the run's settings are not shown")
        config = {}
    langs = _langs(run_dir, metrics, config)
    if not langs:
        raise XtmError("not an xtm-train run directory: no languages in metrics.json and no topics_<lang>.txt",
                       path=metrics_path)
    topics = {}
    for lang in langs:
        path = run.topics_path(lang)
        if not path.is_file():
            raise XtmError(f"{path.name} is missing (metrics.json lists language '{lang}')", path=path)
        topics[lang] = run.read_topics(lang)
    ks = {len(t) for t in topics.values()}
    if len(ks) != 1 or 0 in ks or any(not words for t in topics.values() for words in t):
        counts = ", ".join(f"{lang}: {len(t)}" for lang, t in topics.items())
        raise XtmError(f"topics_<lang>.txt disagree or have empty topics (lines: {counts}); line k must be "
                       "topic k in every language", path=run_dir)
    k = ks.pop()
    refined = None
    if all(run.refined_topics_path(lang).is_file() for lang in langs):
        refined = {lang: run.read_refined_topics(lang) for lang in langs}
        if any(len(t) != k for t in refined.values()):
            notes.append("refined_topics_<lang>.txt do not have one line per topic; the refined sets are not shown")
            refined = None
    history = _history(run_dir, notes)
    data: dict[str, Any] = {}
    if run.has(RunDir.REPORT_DATA):
        raw = run.load_report_data()
        if not isinstance(raw, dict) or _num(raw.get("num_topics")) != k:
            notes.append(f"report_data.json is not for this run's {k} topics; sizes, map and confusion are not shown")
        else:
            data = _report_data(raw, k, langs, notes)
            data.update(_topic_details(raw, topics, notes))
    else:
        notes.append("report_data.json is missing (xtm-train writes it when training ends): topic sizes, "
                     "per-topic CNPMI, the topic map and the confusion matrix need the model and are not shown")
    labels = None
    try:
        labels = run.load_labels(k)
    except XtmError as e:
        notes.append(f"labels.json is not usable, so no labels are shown ({e}): run xtm-label again")
    if labels is None and not notes_mention(notes, RunDir.LABELS):
        notes.append("labels.json is missing: topics have no labels (xtm-label RUN_DIR writes them)")
    return RunFiles(run_dir, metrics, config, history, langs, topics, refined, data, notes, labels,
                    _evals(run_dir))


def notes_mention(notes: list[str], name: str) -> bool:
    return any(name in n for n in notes)


def _evals(run_dir: Path) -> list[dict[str, float]]:
    """history.json's "eval" points (xtm-train --eval-every N): epoch, TU, CNPMI, TQ and each
    classification score, finite numbers only."""
    run = RunDir(run_dir)
    if not run.has(RunDir.HISTORY):
        return []
    try:
        raw = run.load_history()
    except XtmError:
        return []
    out = []
    for i, h in enumerate(raw if isinstance(raw, list) else []):
        ev = h.get("eval") if isinstance(h, dict) else None
        if not isinstance(ev, dict):
            continue
        point = {"epoch": _num(h.get("epoch")) if _num(h.get("epoch")) is not None else float(i + 1)}
        for key in ("TU", "CNPMI", "TQ"):
            if _num(ev.get(key)) is not None:
                point[key] = _num(ev[key])
        for key, v in _obj(ev.get("classification")).items():
            if isinstance(key, str) and _num(v) is not None:
                point[key] = _num(v)
        out.append(point)
    return out


def _topic_details(raw: dict[str, Any], topics: dict[str, list[list[str]]], notes: list[str]) -> dict[str, Any]:
    """report_data.json's word weights (one per word of topics_<lang>.txt, in [0, 1]) and representative
    documents ({"id", "weight", "text"}), each kept only when its shape and types are right."""
    out: dict[str, Any] = {}
    bad = []
    ww = raw.get("word_weights")
    if ww is not None:
        checked = {lang: [_numbers(row, len(words), 0.0, 1.0) for row, words in zip(ww[lang], topics[lang],
                                                                                    strict=False)]
                   for lang in topics if isinstance(ww, dict) and isinstance(ww.get(lang), list)
                   and len(ww[lang]) == len(topics[lang])}
        if checked and all(row is not None for rows in checked.values() for row in rows):
            out["word_weights"] = checked
        else:
            bad.append("word_weights (one weight in [0, 1] per word of topics_<lang>.txt)")
    rd = raw.get("representative_docs")
    if rd is not None:
        docs = {lang: [_docs(row) for row in rd[lang]] for lang in topics
                if isinstance(rd, dict) and isinstance(rd.get(lang), list) and len(rd[lang]) == len(topics[lang])}
        if docs and all(row is not None for rows in docs.values() for row in rows):
            out["representative_docs"] = docs
        else:
            bad.append("representative_docs (per topic: a list of {id, weight, text})")
    if bad:
        notes.append("report_data.json: not in the expected shape, so not shown: " + "; ".join(bad))
    return out


def _docs(row: Any) -> list[dict[str, Any]] | None:
    if not isinstance(row, list) or len(row) > 20:
        return None
    out = []
    for d in row:
        if not isinstance(d, dict) or not isinstance(d.get("text"), str) or len(d["text"]) > 2000:
            return None
        w = _num(d.get("weight"))
        if w is None or not 0 <= w <= 1 or not (d.get("id") is None or isinstance(d.get("id"), str)):
            return None
        out.append({"id": d.get("id"), "weight": w, "text": d["text"], "bag": d.get("bag") is True})
    return out


def _history(run_dir: Path, notes: list[str]) -> list[dict[str, float]]:
    """history.json's epochs, each keeping only its finite numbers (a loss curve plots nothing else)."""
    run = RunDir(run_dir)
    if not run.has(RunDir.HISTORY):
        return []
    raw = run.load_history()
    if not isinstance(raw, list):
        notes.append("history.json does not hold a list of epochs; no loss curves")
        return []
    return [{key: v for key, v in ((key, _num(v)) for key, v in h.items()) if v is not None}
            for h in raw if isinstance(h, dict)]


def _numbers(x: Any, n: int, lo: float = -math.inf, hi: float = math.inf, nulls: bool = False) -> list[Any] | None:
    """x as n finite floats in [lo, hi] (None for null/NaN where `nulls`), or None when it is anything else."""
    if not isinstance(x, list) or len(x) != n:
        return None
    out = []
    for v in x:
        f = _num(v)
        if f is None and nulls and (v is None or (isinstance(v, float) and math.isnan(v))):
            out.append(None)
        elif f is None or not lo <= f <= hi:
            return None
        else:
            out.append(f)
    return out


def _confusion(c: Any, k: int) -> dict[str, Any] | None:
    """report_data.json's confusion with its types checked; None when any part is not what xtm-train writes."""
    if not isinstance(c, dict):
        return None
    langs, counts = c.get("langs"), c.get("counts")
    if not (isinstance(langs, list) and len(langs) == 2 and all(isinstance(x, str) for x in langs)):
        return None
    if not (isinstance(counts, list) and len(counts) == k and all(
            isinstance(row, list) and len(row) == k and all(type(v) is int and v >= 0 for v in row) for row in counts)):
        return None
    docs, ref_docs, share = (c.get(key) for key in ("documents", "reference_documents", "diagonal_share"))
    if _num(docs) is None or (ref_docs is not None and _num(ref_docs) is None):
        return None
    if share is not None and not 0 <= (_num(share) if _num(share) is not None else -1.0) <= 1:
        return None  # null is what xtm-train writes when no pair was usable
    return {"langs": langs, "counts": counts, "documents": _num(docs), "reference_documents": _num(ref_docs),
            "diagonal_share": _num(share)}


def _report_data(raw: dict[str, Any], k: int, langs: list[str], notes: list[str]) -> dict[str, Any]:
    """The parts of report_data.json whose shapes and types are right; a note names each part left out."""
    data: dict[str, Any] = {}
    bad: list[str] = []
    prev = raw.get("prevalence")
    if prev is not None:
        checked = {lang: _numbers(prev[lang], k, 0.0, 1.0) for lang in langs if lang in prev} \
            if isinstance(prev, dict) else {}
        if checked and all(v is not None for v in checked.values()):
            data["prevalence"] = checked
        else:
            bad.append(f"prevalence (a list of {k} shares per language)")
    tm = raw.get("topic_map")
    if tm is not None:
        xy = [_numbers(tm.get(a), n) for a, n in (("x", k), ("y", k), ("explained", 2))] if isinstance(tm, dict) \
            else [None]
        if all(v is not None for v in xy):
            data["topic_map"] = {"x": xy[0], "y": xy[1], "explained": xy[2]}
        else:
            bad.append(f"topic_map (x and y: {k} numbers, explained: 2)")
    for key in ("cnpmi_per_topic", "refined_cnpmi_per_topic"):
        if raw.get(key) is not None:
            values = _numbers(raw[key], k, nulls=True)
            if values is not None:
                data[key] = values
            else:
                bad.append(f"{key} ({k} numbers)")
    if raw.get("confusion") is not None:
        conf = _confusion(raw["confusion"], k)
        if conf is not None:
            data["confusion"] = conf
        else:
            bad.append(f"confusion (2 languages, {k} x {k} counts)")
            data["confusion_unusable"] = True
    if bad:
        notes.append("report_data.json: not in the expected shape, so not shown: " + "; ".join(bad))
    data["num_topics"] = k
    return data


# --------------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------------


def _num(x: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a string, a bool, NaN, an int too big for a float).

    Numbers reach the page only through this, so a string where a number belongs is never shown raw.
    """
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    try:
        v = float(x)
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


def fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "—" if v is None else f"{v:.{digits}f}"


def _count(x: Any) -> str:
    """A count (steps, calls, documents) as digits; "—" when it is not a number."""
    v = _num(x)
    return "—" if v is None else str(int(v)) if v.is_integer() else f"{v:g}"


def _obj(x: Any) -> dict[str, Any]:
    """x where it is a JSON object, else an empty one: a section reads its fields without type checks."""
    return x if isinstance(x, dict) else {}


def _text(x: Any) -> str:
    """Any JSON value as escaped text, safe in element content and in quoted attributes alike."""
    return escape(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False), quote=True)


def _words(words: list[str], lang: str, mark: set[str] | None = None, cls: str = "") -> str:
    """Space-separated words, those in `mark` wrapped in a span of class `cls`."""
    out = []
    for w in words:
        e = escape(w)
        out.append(f'<span class="{cls}">{e}</span>' if mark is not None and w in mark else e)
    return f'<span lang="{escape(lang)}">{" ".join(out)}</span>'


def _class_keys(langs: list[str], found: dict[str, Any]) -> list[str]:
    keys = [f"{lang.upper()}-{kind}" for lang in langs for kind in ("I", "C")]
    return keys + sorted(k for k in found if k not in keys)


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _header(run: RunFiles) -> str:
    m, cfg = run.metrics, _obj(run.config.get("train_config"))
    k = len(next(iter(run.topics.values())))
    epochs = _count(cfg.get("epochs", m.get("epochs")))
    if run.refined is not None or m.get("phase2"):
        epochs += f" + {_count(cfg.get('phase2_epochs'))} (phase 2, LLM-XTM)"
    facts = [("model", m.get("model") or _obj(run.config.get("model_config")).get("model")),
             ("dataset", m.get("dataset")), ("topics", k), ("languages", ", ".join(run.langs)),
             ("epochs", epochs), ("xtm", run.config.get("xtm_version"))]
    items = "".join(f"<span><b>{a}</b> {_text(b)}</span>" for a, b in facts if b is not None and b != "—")
    reason = (m.get("interrupted_at") or {}).get("reason") if isinstance(m.get("interrupted_at"), dict) else None
    why = f": {escape(reason)}" if isinstance(reason, str) else ""  # (a stop for a reason other than a signal)
    warn = f'<p class="warn">training was interrupted{why}; these are the last saved parameters</p>' \
        if m.get("interrupted") is True else ""
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in run.notes)
    return (f"<header><h1>xtm run <code>{escape(run.run_dir.resolve().name)}</code></h1>"
            f'<div class="facts">{items}</div>{warn}{notes}'
            '<nav><a href="#warnings">warnings</a> <a href="#metrics">metrics</a> <a href="#plots">plots</a> '
            '<a href="#topics">topics</a> <a href="#details">topic details</a></nav>'
            "</header>")


def _metric_row(name: str, values: dict[str, Any], keys: list[str], cls: str = "") -> str:
    # CNPMI and TQ are small (0.005 on Rakuten): 3 decimals showed 0.0046 and 0.0054 alike.
    cells = "".join(f"<td>{fmt(values.get(key), 4 if key in ('CNPMI', 'TQ') else 3)}</td>" for key in keys)
    return f'<tr class="{cls}"><th>{escape(name)}</th>{cells}</tr>'


def _metrics(run: RunFiles) -> str:
    m = run.metrics
    classification = _obj(m.get("classification"))
    pub = _published_for(run)
    ckeys = _class_keys(run.langs, classification)
    keys = ["TU", "CNPMI", "TQ", *ckeys, "seconds_per_epoch"]
    heads = "".join(f"<th>{escape(key if key != 'seconds_per_epoch' else 's/epoch')}</th>" for key in keys)
    published_protocol = {**_obj(m.get("classification_published")),
                          **{key: m[f"{key}_published"] for key in ("CNPMI", "TQ") if _num(m.get(f"{key}_published"))
                             is not None}}
    rows = [_metric_row("this run" + (" (xtm's protocol)" if published_protocol else ""),
                        {**m, **classification}, keys, "ours")]
    if published_protocol:
        rows.append(_metric_row("this run (published protocol)", {"TU": m.get("TU"), **published_protocol}, keys,
                                "ours"))
    if isinstance(m.get("refined"), dict):
        rows.append(_metric_row("refined sets (phase 2)", m["refined"], keys, "ours"))
    for p in pub:
        vals = {"TU": p.TU, "CNPMI": p.CNPMI, "TQ": p.TQ, **p.classification}
        rows.append(_metric_row(f"published: {p.name} ({p.epochs} ep)", vals, keys, "pub"))
    per_lang = ", ".join(f"{escape(k)} {fmt(v)}" for k, v in _obj(m.get("TU_per_language")).items())
    notes = [f"TU per language: {per_lang}" if per_lang else ""]
    if _num(m.get("CNPMI")) is None:
        notes.append(_text(m.get("CNPMI_note", "CNPMI was not computed")))
    elif isinstance(m.get("CNPMI_reference"), dict):
        r = m["CNPMI_reference"]
        notes.append(f"CNPMI ({_text(m.get('CNPMI_pair', ''))}) on {_count(r.get('documents'))} aligned "
                     f"documents of {_text(r.get('source'))}"
                     + ("; xtm's protocol takes a word's probability from document frequencies (Hao et al.), the "
                        "published protocol from token counts (BobXWu/CNPMI), as the published CNPMI did"
                        if _num(m.get("CNPMI_published")) is not None else ""))
    if _obj(m.get("classification_published")):
        notes.append("Accuracies: xtm's protocol is a linear SVM on standardised theta, the distribution the "
                     "runtime serves; the published protocol is the public code's RBF SVC on the encoder mean, "
                     "the one the published rows were measured with: read a published row against it.")
    elif classification and m.get("classification_published_note"):
        notes.append(f"Published protocol: {_text(m['classification_published_note'])}")
    if pub:
        k = len(next(iter(run.topics.values())))
        notes.append(f"Published: {escape(SOURCE)}; {escape(CNPMI_NOTE)}"
                     + (f". This run has K={k}, so compare with care." if k != 50 else "."))
    p2 = m.get("phase2")
    if isinstance(p2, dict):
        notes.append(_phase2_note(p2))
    note_html = "".join(f"<li>{n}</li>" for n in notes if n)
    return (f'<section id="metrics"><h2>Metrics</h2><div class="pair"><div class="scroll"><table class="metrics">'
            f"<thead><tr><th></th>{heads}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>{GLOSSARY}</div>"
            f"<ul class='notes'>{note_html}</ul>{_settings(run)}</section>")


# What the metrics mean, next to the table (the papers' definitions; higher is better for all of them).
GLOSSARY = (
    '<dl class="glossary" id="glossary">'
    "<dt>TU</dt><dd>Topic uniqueness, 0 to 1: how rarely a topic's top words are also top words of other topics "
    "(1: no word shared). Low TU means repeated topics.</dd>"
    "<dt>CNPMI</dt><dd>Cross-lingual NPMI, -1 to 1: how often a topic's top words in one language appear in the "
    "same aligned documents as its top words in the other (needs --ref-corpus). Above 0: the languages' words "
    "go together.</dd>"
    "<dt>TQ</dt><dd>Topic quality: CNPMI x TU, one number for coherent and distinct topics.</dd>"
    "<dt>XX-I / XX-C</dt><dd>Classification accuracy from the topic shares (theta): -I trained and tested on "
    "language XX (intra-lingual); -C trained on the other language, tested on XX (cross-lingual: do topics "
    "mean the same in both?).</dd>"
    "<dt>s/epoch</dt><dd>Training seconds per epoch.</dd></dl>")


def _phase2_note(p2: dict[str, Any]) -> str:
    """metrics.json's phase-2 summary: every count typed (a string shows as "—"), every name escaped."""
    steps = [s for s in p2.get("steps") or [] if isinstance(s, dict)] if isinstance(p2.get("steps"), list) else []
    calls = sum(_num(s.get("calls")) or 0.0 for s in steps)
    tokens = sum((_num(s.get("prompt_tokens")) or 0.0) + (_num(s.get("completion_tokens")) or 0.0) for s in steps)
    events = ", ".join(f"{escape(k)} {_count(v)}" for k, v in _obj(p2.get("events")).items() if _num(v))
    backend = _obj(_obj(p2.get("config")).get("refiner")).get("backend", "?")
    return (f"Phase 2: refiner {_text(backend)}, {_count(p2.get('refinement_steps', 0))} refinement steps, "
            f"{_count(calls)} LLM calls, {_count(tokens)} tokens, {fmt(p2.get('seconds_per_refinement'), 1)} s per "
            f"refinement; {_count(p2.get('topics_with_refined_set'))} topics with a refined set"
            + (f"; events: {events}" if events else ""))


def _published_for(run: RunFiles) -> list[Published]:
    """The paper's rows for this dataset and backbone (all of the dataset's rows if the backbone has none)."""
    dataset, model = (v if isinstance(v, str) else None for v in (run.metrics.get("dataset"), run.metrics.get("model")))
    phase2 = run.refined is not None or bool(run.metrics.get("phase2"))
    rows = published_rows(dataset, model)
    if rows and not phase2:
        rows = [r for r in rows if not r.phase2] or rows
    return rows or published_rows(dataset)


def _settings(run: RunFiles) -> str:
    keep = {k: run.config[k] for k in ("model_config", "train_config", "data", "phase2", "tokenizers")
            if run.config.get(k) is not None}
    if not keep:
        return ""
    text = json.dumps(keep, indent=1, ensure_ascii=False)
    return f"<details><summary>settings (config.json)</summary><pre>{escape(text)}</pre></details>"


def _loss_order(key: str) -> tuple[int, str]:
    rank = 0 if key == "loss" else 1 if key.startswith("recon") else 2 if key.startswith("kl") else 3
    return rank, key


def _plots(run: RunFiles) -> str:
    parts = ['<section id="plots"><h2>Plots</h2>']
    if run.history:
        keys = sorted({k for h in run.history for k in h if k not in ("epoch", "seconds", "steps")}, key=_loss_order)
        epochs = _num(_obj(run.config.get("train_config")).get("epochs"))
        mark = epochs if (run.refined is not None or run.metrics.get("phase2")) and epochs else None
        panels = []
        for key in keys:
            pts = [(h.get("epoch", i + 1), h[key]) for i, h in enumerate(run.history) if key in h]
            panels.append(svg.line_panel(key, [p[0] for p in pts], [p[1] for p in pts], mark_x=mark))
        parts.append("<h3>Training losses per epoch</h3>"
                     + ('<p class="note">dashed line: phase 2 starts</p>' if mark else "")
                     + f'<div class="grid">{"".join(panels)}</div>')
    else:
        parts.append('<p class="note">history.json is missing or empty: no loss curves</p>')
    parts.append(_eval_curves(run))
    d = run.data
    if d.get("prevalence"):
        prev = {lang: d["prevalence"][lang] for lang in run.langs if lang in d["prevalence"]}
        legend = " ".join(f'<span class="sw" style="background:{svg.lang_color(i)}"></span>{escape(lang)}'
                          for i, lang in enumerate(prev))
        parts.append("<h3>Topic prevalence</h3><p class=\"note\">share of each language's training documents "
                     f"whose top topic it is. {legend}</p>{svg.prevalence_bars(prev)}")
    side = []
    if d.get("topic_map"):
        tm = d["topic_map"]
        sizes = _mean_sizes(run)
        first = run.langs[0]
        tips = [f"topic {t}" + (f" ({_label(run, t)})" if _label(run, t) else "") + ": "
                + " ".join(run.topics[first][t][:8]) for t in range(len(tm["x"]))]
        side.append('<div><h3>Map of topics</h3><p class="note">PCA of each topic\'s word distributions '
                    "(square roots, all languages side by side): near = similar words. Area: size; click a "
                    f"topic to see its words.</p>{svg.topic_scatter(tm['x'], tm['y'], sizes, tips, tm['explained'])}"
                    "</div>")
    conf = d.get("confusion")
    if conf:
        a, b = conf["langs"]
        share = conf["diagonal_share"]
        side.append(f'<div><h3>Aligned documents: top topic {escape(a)} vs {escape(b)}</h3><p class="note">'
                    f"{_count(conf['documents'])} aligned reference pairs (of {_count(conf['reference_documents'])}; "
                    "pairs without vocabulary words are left out). Same top topic in both languages "
                    f'(diagonal): <b class="diagshare">{fmt(share * 100 if share is not None else None, 1)}%</b>'
                    f"</p>{svg.confusion_heatmap(conf['counts'], [a, b])}</div>")
    elif d and not d.get("confusion_unusable"):
        side.append('<div><p class="note">No confusion matrix: it needs aligned documents (--ref-corpus).</p></div>')
    if side:
        parts.append(f'<div class="pair">{"".join(side)}</div>')
    parts.append("</section>")
    return "".join(parts)


def _mean_sizes(run: RunFiles) -> list[float]:
    k = len(next(iter(run.topics.values())))
    prev = run.data.get("prevalence") or {}
    vals = [prev[lang] for lang in run.langs if lang in prev]
    return [sum(v[t] for v in vals) / len(vals) for t in range(k)] if vals else [1.0] * k


def _topic_rows(run: RunFiles) -> str:
    langs, k = run.langs, len(next(iter(run.topics.values())))
    tu = {lang: topic_uniqueness_per_topic(run.topics[lang]) for lang in langs}
    rtu = {lang: topic_uniqueness_per_topic(run.refined[lang]) for lang in langs} if run.refined else {}
    prev = run.data.get("prevalence") or {}
    cnpmi = run.data.get("cnpmi_per_topic")
    rcnpmi = run.data.get("refined_cnpmi_per_topic")
    sizes = _mean_sizes(run) if prev else [float("nan")] * k
    smax = max((v for lang in langs for v in prev.get(lang, [])), default=0.0) or 1.0
    rows = []
    for t in range(k):
        size_cells = []
        for i, lang in enumerate(langs):
            if lang in prev:
                v = prev[lang][t]
                size_cells.append(f'<div class="sz"><span class="bar" style="width:{v / smax * 100:.0f}%;'
                                  f'background:{svg.lang_color(i)}"></span>{escape(lang)} {v:.1%}</div>')
        tu_cell = "<br>".join(f"{escape(lang)} {fmt(tu[lang][t], 2)}" + (
            f' <span class="r">→ {fmt(rtu[lang][t], 2)}</span>' if rtu else "") for lang in langs)
        c_own = cnpmi[t] if cnpmi else None
        c_cell = fmt(c_own) + (f'<br><span class="r">→ {fmt(rcnpmi[t])}</span>' if rcnpmi else "")
        word_cells, text = [], [f"#{t}"]
        for lang in langs:
            own = run.topics[lang][t]
            text.extend(own)
            label = _label(run, t, lang)
            text.append(label or "")
            label_html = f'<div class="lbl">{escape(label)}</div>' if label else ""
            if run.refined:
                ref = run.refined[lang][t]
                text.extend(ref)
                added, removed = set(ref) - set(own), set(own) - set(ref)
                # An unchanged set is not repeated: at 200 topics every saved line counts.
                changes = (f'<span class="tag">refined +{len(added)} −{len(removed)}</span> '
                           f'{_words(ref, lang, added, "add")}') if added or removed else \
                    '<span class="tag">refined: the same words</span>'
                cell = (f'{label_html}<div class="own">{_words(own, lang, removed, "del")}</div>'
                        f'<div class="ref">{changes}</div>')
            else:
                cell = f'{label_html}<div class="own">{_words(own, lang)}</div>'
            word_cells.append(f'<td class="w" lang="{escape(lang)}">{cell}</td>')
        mean_tu = sum(tu[lang][t] for lang in langs) / len(langs)
        attrs = (f'id="topic-{t}" data-k="{t}" data-size="{sizes[t]:.6g}" data-tu="{mean_tu:.6g}" '
                 f'data-cnpmi="{f"{c_own:.6g}" if c_own is not None else "nan"}" '
                 f'data-text="{escape(" ".join(text).lower(), quote=True)}"')
        rows.append(f'<tr {attrs}><th><a href="#topic-{t}">{t}</a></th><td class="n">{"".join(size_cells) or "—"}'
                    f'</td><td class="n">{tu_cell}</td><td class="n">{c_cell}</td>{"".join(word_cells)}</tr>')
    return "".join(rows)


def _topics(run: RunFiles) -> str:
    langs, k = run.langs, len(next(iter(run.topics.values())))
    heads = "".join(f'<th lang="{escape(lang)}">{escape(lang)} words</th>' for lang in langs)
    legend = ('<p class="note">Each row: the model\'s own top words, then phase 2\'s refined set. '
              '<span class="add">added</span> by refinement, <span class="del">dropped</span> from the '
              "model's words. TU and CNPMI: own → refined.</p>") if run.refined else ""
    return (f'<section id="topics"><h2>Topics</h2>{legend}<div class="controls">'
            '<input id="q" type="search" placeholder="filter: a word or #topic" aria-label="filter topics">'
            '<label>sort <select id="sort"><option value="k">topic number</option>'
            '<option value="size">size</option><option value="cnpmi">CNPMI</option><option value="tu">TU</option>'
            f'</select></label> <span class="note">showing <b id="shown">{k}</b> of {k}</span></div>'
            '<div class="scroll"><table class="topics"><thead><tr><th>#</th><th>size (top topic of)</th><th>TU</th>'
            f'<th>CNPMI</th>{heads}</tr></thead><tbody id="topics-body">{_topic_rows(run)}</tbody></table></div>'
            "</section>")


def _label(run: RunFiles, t: int, lang: str | None = None) -> str | None:
    """Topic t's label in `lang` (else the first language's), None without labels.json."""
    if run.labels is None or t >= run.labels.num_topics:
        return None
    return run.labels.label(t, lang)


NEAR_EMPTY = 0.1   # a topic is near-empty below this share of an even split (1/K) in every language
DUPLICATE = 0.5    # two topics are duplicates at this mean top-10-word Jaccard overlap across languages


def near_empty_topics(prevalence: dict[str, list[float]], k: int) -> list[int]:
    """Topics that are the top topic of under NEAR_EMPTY / K of the documents in every language."""
    if not prevalence:
        return []
    limit = NEAR_EMPTY / k
    return [t for t in range(k) if all(v[t] < limit for v in prevalence.values())]


def duplicate_topics(topics: dict[str, list[list[str]]], n: int = 10) -> list[tuple[int, int, float]]:
    """(i, j, overlap) for topic pairs whose top-n words overlap by DUPLICATE or more (Jaccard, mean over
    languages), largest overlap first."""
    langs = list(topics)
    sets = {lang: [set(ws[:n]) for ws in topics[lang]] for lang in langs}
    k = len(topics[langs[0]])
    out = []
    for i in range(k):
        for j in range(i + 1, k):
            overlap = sum(len(sets[x][i] & sets[x][j]) / max(len(sets[x][i] | sets[x][j]), 1)
                          for x in langs) / len(langs)
            if overlap >= DUPLICATE:
                out.append((i, j, overlap))
    return sorted(out, key=lambda x: (-x[2], x[0], x[1]))


def _topic_link(run: RunFiles, t: int) -> str:
    label = _label(run, t)
    return f'<a href="#topic-{t}">{t}</a>' + (f" ({escape(label)})" if label else "")


def _warnings(run: RunFiles) -> str:
    """Topics to look at first: near-empty ones (almost no document's top topic) and duplicates."""
    k = len(next(iter(run.topics.values())))
    items = []
    empty = near_empty_topics(run.data.get("prevalence") or {}, k)
    if empty:
        items.append(f"<li><b>{len(empty)} near-empty topic{'s' if len(empty) != 1 else ''}</b> (the top topic of "
                     f"under {NEAR_EMPTY / k:.2%} of the documents in every language, a tenth of an even share): "
                     + ", ".join(_topic_link(run, t) for t in empty)
                     + ". Fewer topics (--topics) or more epochs may merge or fill them.</li>")
    dups = duplicate_topics(run.topics)
    if dups:
        shown = ", ".join(f"{_topic_link(run, i)} and {_topic_link(run, j)} ({o:.0%})" for i, j, o in dups[:30])
        more = f" and {len(dups) - 30} more pairs" if len(dups) > 30 else ""
        items.append(f"<li><b>{len(dups)} duplicate pair{'s' if len(dups) != 1 else ''}</b> (top-10 words overlap "
                     f"by {DUPLICATE:.0%} or more): {shown}{more}. Such topics split one theme; fewer topics may "
                     "merge them.</li>")
    if not run.data.get("prevalence"):
        items.append('<li class="note">Near-empty topics are not checked: report_data.json has no topic '
                     "sizes.</li>")
    body = f'<ul class="warnings">{"".join(items)}</ul>' if items else \
        '<p class="note ok">No near-empty or duplicate topics.</p>'
    return f'<section id="warnings"><h2>Warnings</h2>{body}</section>'


def _eval_curves(run: RunFiles) -> str:
    """Evaluation every N epochs (history.json "eval", xtm-train --eval-every N): one panel per metric."""
    if not run.evals:
        return ('<h3>Evaluation during training</h3><p class="note">No evaluation curves: train with '
                "--eval-every N to evaluate every N epochs.</p>")
    keys = sorted({key for p in run.evals for key in p if key != "epoch"},
                  key=lambda key: (["TU", "CNPMI", "TQ"].index(key) if key in ("TU", "CNPMI", "TQ") else 3, key))
    panels = [svg.line_panel(key, [p["epoch"] for p in run.evals if key in p], [p[key] for p in run.evals if key in p])
              for key in keys]
    return (f'<h3 id="eval-curves">Evaluation during training</h3><p class="note">{len(run.evals)} evaluations '
            f'(--eval-every): TU, classification and (with --ref-corpus) CNPMI by epoch.</p>'
            f'<div class="grid">{"".join(panels)}</div>')


def _word_bars(words: list[str], weights: list[float] | None, lang: str, n: int = 10) -> str:
    if weights is None:
        return f'<div class="own">{_words(words, lang)}</div>'
    top = max(weights[:n], default=0.0) or 1.0
    return "".join(f'<div class="wb"><span class="wbar" style="width:{w / top * 100:.0f}%"></span>'
                   f'<span class="ww" lang="{escape(lang)}">{escape(word)}</span> <span class="wv">{w:.3f}</span></div>'
                   for word, w in zip(words[:n], weights[:n], strict=True))


def _doc_list(docs: list[dict[str, Any]] | None, lang: str) -> str:
    if not docs:
        return ""
    items = "".join(f'<li><span class="dw">{d["weight"]:.2f}</span> <span lang="{escape(lang)}">{escape(d["text"])}'
                    f'</span>' + (' <span class="tag">(its words)</span>' if d["bag"] else "")
                    + (f' <span class="did">{escape(d["id"])}</span>' if d["id"] is not None else "") + "</li>"
                    for d in docs)
    return f'<ul class="docs">{items}</ul>'


def _details(run: RunFiles) -> str:
    """Per topic: its label, the weights of its top words (bars) and its most representative training
    documents, in every language."""
    langs, k = run.langs, len(next(iter(run.topics.values())))
    ww = run.data.get("word_weights") or {}
    rd = run.data.get("representative_docs") or {}
    sizes = _mean_sizes(run) if run.data.get("prevalence") else None
    cards = []
    for t in range(k):
        cols = []
        for lang in langs:
            label = _label(run, t, lang)
            docs = rd.get(lang, [None] * k)[t] if lang in rd else None
            cols.append(f'<div class="col" lang="{escape(lang)}"><b>{escape(lang)}</b>'
                        + (f' <span class="lbl">{escape(label)}</span>' if label else "")
                        + _word_bars(run.topics[lang][t], ww[lang][t] if lang in ww else None, lang)
                        + (f'<div class="note">representative documents (share of this topic):</div>'
                           f'{_doc_list(docs, lang)}' if docs else "") + "</div>")
        label = _label(run, t)
        size = f" · {sizes[t]:.1%} of documents" if sizes is not None else ""
        opened = " open" if k <= 12 else ""
        cards.append(f'<details class="card" id="card-{t}"{opened}><summary><b>#{t}</b> '
                     f'{escape(label) if label else ""}{size}</summary><div class="cols">{"".join(cols)}</div>'
                     "</details>")
    notes = []
    if not ww:
        notes.append("word weights need report_data.json from this version of xtm-train")
    if not rd:
        notes.append("representative documents need report_data.json from this version of xtm-train")
    source = ""
    if run.labels is not None:
        source = (f'<p class="note">Labels: {_text(run.labels.generator)}'
                  + (f"; LLM-free labels are {_text(run.labels.fallback)}" if run.labels.fallback else "") + ".</p>")
    return (f'<section id="details"><h2>Topic details</h2>{source}<p class="note">Each topic\'s top words with '
            "p(word | topic) as bars, and the training documents with the largest share of it."
            + "".join(f" ({escape(n)})" for n in notes) + f'</p>{"".join(cards)}</section>')


CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI","Noto Sans","Noto Sans CJK SC","PingFang SC",
"Microsoft YaHei","Hiragino Sans",sans-serif;margin:0 auto;max-width:1400px;padding:0 16px 40px;color:#222}
:lang(zh){font-family:system-ui,"Noto Sans CJK SC","PingFang SC","Microsoft YaHei","Source Han Sans SC",sans-serif}
:lang(ja){font-family:system-ui,"Noto Sans CJK JP","Hiragino Sans","Yu Gothic","Meiryo",sans-serif}
:lang(ko){font-family:system-ui,"Noto Sans CJK KR","Apple SD Gothic Neo","Malgun Gothic",sans-serif}
h1{font-size:22px;margin:16px 0 6px}h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:28px}
h3{font-size:15px;margin:14px 0 4px}.facts span{margin-right:16px}.note{color:#555;font-size:13px;margin:4px 0}
.warn{color:#a00;font-weight:bold}nav a{margin-right:12px}code{font-size:90%}
table{border-collapse:collapse}th,td{padding:3px 7px;border-bottom:1px solid #eee;vertical-align:top;text-align:left}
.metrics td{text-align:right;font-variant-numeric:tabular-nums}.metrics tr.pub{color:#666;background:#fafafa}
.scroll{overflow-x:auto}.topics{width:100%;font-size:13px}.topics thead th{position:sticky;top:0;background:#fff}
.topics td.n{white-space:nowrap;font-variant-numeric:tabular-nums}.topics td.w{overflow-wrap:anywhere;min-width:14em}
.topics tr:target{background:#fff6cc}.sz{position:relative;min-width:7em}.bar{display:inline-block;height:8px;
margin-right:4px;vertical-align:middle;max-width:4em}.ref{color:#333;margin-top:2px}.tag{font-size:11px;color:#777}
.add{background:#d4f5d4;color:#064;border-radius:2px;padding:0 1px}.del{text-decoration:line-through;color:#b33}
.r{color:#777}.controls{margin:8px 0}.controls input{font:inherit;padding:3px 6px;width:18em;margin-right:12px}
.grid{display:flex;flex-wrap:wrap;gap:6px}.grid svg{width:300px;flex:0 0 auto}
.pair{display:flex;flex-wrap:wrap;gap:20px}
.pair>div{flex:1 1 480px;max-width:680px}.chart{width:100%;height:auto;font-size:10px}.chart text{fill:#333}
.chart .t{font-size:12px;font-weight:bold}.frame{fill:none;stroke:#ccc}.line{fill:none;stroke:#0072B2;stroke-width:1.6}
.dot{fill:#0072B2}.mark{stroke:#D55E00;stroke-dasharray:4 3}.pt{fill:#0072B2;fill-opacity:.55;stroke:#035}
.pl{font-size:9px;pointer-events:none}.cell{fill:#555}.cell.d{fill:#0072B2}.diag{stroke:#0072B2;stroke-opacity:.25}
.sw{display:inline-block;width:10px;height:10px;margin:0 3px 0 8px}pre{font-size:12px;background:#f6f6f6;padding:8px;
overflow-x:auto}details{margin:8px 0}ul.notes{padding-left:18px}
.lbl{font-weight:600;color:#035}.glossary{flex:1 1 320px;max-width:520px;font-size:13px;margin:0}
.glossary dt{font-weight:bold;margin-top:4px}.glossary dd{margin:0 0 0 12px;color:#444}
.warnings li{margin:3px 0}.ok{color:#064}.card{border:1px solid #e4e4e4;border-radius:4px;padding:4px 8px}
.card summary{cursor:pointer}.cols{display:flex;flex-wrap:wrap;gap:18px;margin-top:6px}.col{flex:1 1 380px}
.wb{position:relative;font-size:13px;line-height:1.5;padding-left:4px}.wbar{position:absolute;left:0;top:3px;
bottom:3px;background:#cfe3f3;z-index:-1}.ww{position:relative}.wv{color:#777;font-size:11px}
.docs{padding-left:18px;font-size:13px}.docs li{margin:3px 0}.dw{font-variant-numeric:tabular-nums;color:#035}
.did{color:#888;font-size:11px}
"""

# Filter and sort the topic table in place; rows keep their ids so the map's links still work.
JS = """
(function () {
  var q = document.getElementById('q'), sel = document.getElementById('sort');
  var body = document.getElementById('topics-body'), shown = document.getElementById('shown');
  var rows = Array.prototype.slice.call(body.rows);
  function num(r, key) { var v = parseFloat(r.getAttribute('data-' + key)); return isNaN(v) ? -Infinity : v; }
  function apply() {
    var text = q.value.trim().toLowerCase(), key = sel.value, n = 0;
    var order = rows.slice().sort(function (a, b) {
      return key === 'k' ? num(a, 'k') - num(b, 'k') : num(b, key) - num(a, key);
    });
    order.forEach(function (r) {
      var ok = !text || r.getAttribute('data-text').indexOf(text) >= 0;
      r.hidden = !ok; if (ok) { n++; } body.appendChild(r);
    });
    shown.textContent = n;
  }
  q.addEventListener('input', apply); sel.addEventListener('change', apply); apply();
  document.body.setAttribute('data-ready', '1');  // lets a headless browser test see the script ran
})();
"""


def content_security_policy() -> str:
    """Only the page's own script runs (allowed by its hash, so no injected script or handler would);
    nothing is fetched, and there is no form or <base> to redirect. Inline styles stay: the bars use them."""
    digest = base64.b64encode(hashlib.sha256(JS.encode("utf-8")).digest()).decode("ascii")
    return (f"default-src 'none'; script-src 'sha256-{digest}'; style-src 'unsafe-inline'; base-uri 'none'; "
            "form-action 'none'")


def render_report(run_dir: str | Path) -> str:
    """The whole page as a string."""
    run = load_run(run_dir)
    title = f"xtm run {run.run_dir.resolve().name}"
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{content_security_policy()}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"{_header(run)}{_warnings(run)}{_metrics(run)}{_plots(run)}{_topics(run)}{_details(run)}"
            f"<script>{JS}</script></body></html>\n")


def write_report_html(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Render RUN_DIR's report and write it atomically (default RUN_DIR/report.html); returns the path."""
    html = render_report(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_NAME
    write_text(path, html)
    return path

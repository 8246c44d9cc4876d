"""The inference report: topic prevalence per language over a corpus scored by xtm-infer.

    xtm-report --theta theta.jsonl --bundle B [--out inference.html]

Reads xtm-infer's JSONL output line by line (memory does not grow with the corpus) and the bundle's
topics (words and labels), and writes one self-contained page like report.html (same CSS, the same
script allowed by hash, nothing fetched): how many documents each language has, how many were empty
or took the contextual route, for every topic the share of each language's documents whose top topic
it is and its mean share (theta), with its label and words. Torch- and onnxruntime-free.

The scored file is user input like a run directory: every value is checked (a topic id must be an
integer below K, a weight a finite number in [0, 1], a language a language code) and every text
escaped; lines that are not xtm-infer results are counted and named in a note, never fatal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from xtm.atomic import write_text
from xtm.errors import XtmError
from xtm.evaluation import report_svg as svg
from xtm.evaluation.report import CSS, JS, LANG_CODE, content_security_policy
from xtm.runtime.bundle import read_manifest, read_topic_labels, read_topics
from xtm.runtime.records import MAX_LINE_BYTES, decode_json_line, naming_read_errors, read_lines

__all__ = ["ThetaStats", "read_theta", "render_theta_report", "write_theta_report"]


@dataclass
class LangStats:
    """One language's documents in the scored file."""

    docs: int = 0
    empty: int = 0
    contextual: int = 0
    top: list[int] = field(default_factory=list)          # documents whose top topic is k (non-empty ones)
    theta_sum: list[float] = field(default_factory=list)  # sum of theta_k over documents with a theta
    with_theta: int = 0


@dataclass
class ThetaStats:
    num_topics: int
    langs: dict[str, LangStats] = field(default_factory=dict)
    lines: int = 0
    bad: int = 0
    first_bad: int | None = None

    def lang(self, code: str) -> LangStats:
        if code not in self.langs:
            self.langs[code] = LangStats(top=[0] * self.num_topics, theta_sum=[0.0] * self.num_topics)
        return self.langs[code]


def _weight(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    v = float(x)
    return v if 0.0 <= v <= 1.0 else None


def _theta(value: Any, k: int) -> list[float] | None:
    """A line's theta as K shares: the full list, or the sparse {"k": w} object (absent topics 0)."""
    if isinstance(value, list):
        out = [_weight(v) for v in value]
        return out if len(out) == k and all(v is not None for v in out) else None  # type: ignore[return-value]
    if isinstance(value, dict):
        dense = [0.0] * k
        for key, v in value.items():
            w = _weight(v)
            if not (isinstance(key, str) and key.isdigit() and int(key) < k) or w is None:
                return None
            dense[int(key)] = w
        return dense
    return None


def _record(obj: Any, stats: ThetaStats) -> bool:
    """Add one xtm-infer line; False when it is not one."""
    k = stats.num_topics
    if not isinstance(obj, dict) or not isinstance(obj.get("topics"), list):
        return False
    lang = obj.get("lang")
    code = lang if isinstance(lang, str) and LANG_CODE.fullmatch(lang) else "?"
    topics = obj["topics"]
    ids = [t.get("id") for t in topics if isinstance(t, dict)]
    if len(ids) != len(topics) or not all(type(i) is int and 0 <= i < k for i in ids):
        return False
    theta = _theta(obj.get("theta"), k) if "theta" in obj else None
    if "theta" in obj and theta is None:
        return False
    s = stats.lang(code)
    s.docs += 1
    if obj.get("route") == "contextual":
        s.contextual += 1
    if obj.get("empty") is True:
        s.empty += 1
        return True                      # its theta is the encoder's prior: counted nowhere else
    if ids:
        s.top[ids[0]] += 1
    if theta is not None:
        s.with_theta += 1
        for j, v in enumerate(theta):
            if v:
                s.theta_sum[j] += v
    return True


def read_theta(path: str | Path, num_topics: int) -> ThetaStats:
    """Per-language counts over an xtm-infer JSONL file, streamed."""
    stats = ThetaStats(num_topics)
    p = Path(path)
    try:
        f = p.open("rb")
    except OSError as e:
        raise XtmError(f"cannot read: {e.strerror or e}", path=p) from None
    with f:
        # xtm-infer's own reader and limit (the longest line it reads is the longest read back): non-blank lines
        # numbered as in the file, one over the limit skipped to its end as one bad line (read in limit-sized
        # pieces, its rest was counted as more bad lines and the line count ran ahead of the file's).
        for lineno, raw in naming_read_errors(read_lines(f, MAX_LINE_BYTES), str(p)):
            stats.lines += 1
            obj, reason = decode_json_line(raw)
            try:
                ok = reason is None and _record(obj, stats)
            except (ValueError, OverflowError):  # a topic key int() refuses (5,000 digits), a weight float() does
                ok = False
            if not ok:
                stats.bad += 1
                stats.first_bad = stats.first_bad or lineno
    if stats.lines - stats.bad == 0:
        raise XtmError("no xtm-infer result lines (JSONL: one {\"id\", \"lang\", \"theta\", \"topics\", ...} "
                       "object per line, as xtm-infer writes them)", path=p)
    return stats


def _langs_table(stats: ThetaStats) -> str:
    rows = []
    for code, s in stats.langs.items():
        empty, ctx = (f"{n} ({n / s.docs:.1%})" if s.docs else str(n) for n in (s.empty, s.contextual))
        rows.append(f"<tr><th>{escape(code)}</th><td>{s.docs}</td><td>{empty}</td><td>{ctx}</td></tr>")
    return ('<table class="metrics"><thead><tr><th>language</th><th>documents</th><th>empty (no known word)</th>'
            f"<th>contextual route</th></tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _topic_rows(stats: ThetaStats, words: list[dict[str, list[str]]], labels: list[dict[str, str]],
                bundle_langs: list[str]) -> str:
    langs = list(stats.langs)
    prev = {code: [c / max(sum(s.top), 1) for c in s.top] for code, s in stats.langs.items()}
    smax = max((v for vals in prev.values() for v in vals), default=0.0) or 1.0
    rows = []
    for t in range(stats.num_topics):
        cells = []
        for i, code in enumerate(langs):
            s, v = stats.langs[code], prev[code][t]
            mean = f" · θ {s.theta_sum[t] / s.with_theta:.3f}" if s.with_theta else ""
            cells.append(f'<div class="sz"><span class="bar" style="width:{v / smax * 100:.0f}%;'
                         f'background:{svg.lang_color(i)}"></span>{escape(code)} {v:.1%}{mean}</div>')
        label = next((labels[t][x] for x in bundle_langs if x in labels[t]), None)
        word_cells = "".join(f'<td class="w" lang="{escape(x)}">'
                             + (f'<div class="lbl">{escape(labels[t][x])}</div>' if x in labels[t] else "")
                             + f'<span lang="{escape(x)}">{" ".join(escape(w) for w in words[t].get(x, [])[:10])}'
                             "</span></td>" for x in bundle_langs)
        size = sum(prev[c][t] for c in langs) / max(len(langs), 1)
        text = " ".join([f"#{t}", label or ""] + [w for x in bundle_langs for w in words[t].get(x, [])[:10]])
        rows.append(f'<tr id="topic-{t}" data-k="{t}" data-size="{size:.6g}" data-tu="nan" data-cnpmi="nan" '
                    f'data-text="{escape(text.lower(), quote=True)}"><th><a href="#topic-{t}">{t}</a></th>'
                    f'<td class="n">{"".join(cells)}</td>{word_cells}</tr>')
    return "".join(rows)


def render_theta_report(theta: str | Path, bundle: str | Path) -> str:
    """The inference report of `theta` (xtm-infer JSONL) scored with `bundle`, as a string."""
    manifest = read_manifest(bundle)
    words, labels = read_topics(manifest), read_topic_labels(manifest)
    stats = read_theta(theta, manifest.num_topics)
    k, blangs = manifest.num_topics, list(manifest.languages)
    total = sum(s.docs for s in stats.langs.values())
    notes = []
    if stats.bad:
        notes.append(f"{stats.bad} of {stats.lines} lines are not xtm-infer results and are not counted "
                     f"(the first: line {stats.first_bad}).")
    if "?" in stats.langs:
        notes.append("“?”: documents whose language is not a language code.")
    if not any(labels):
        notes.append("The bundle's topics have no labels (xtm-label RUN_DIR, then xtm-export).")
    prev = {code: [c / max(sum(s.top), 1) for c in s.top] for code, s in stats.langs.items() if sum(s.top)}
    facts = [("bundle", Path(bundle).resolve().name), ("model", manifest.model), ("topics", k),
             ("documents", total), ("languages", ", ".join(stats.langs))]
    items = "".join(f"<span><b>{a}</b> {escape(str(b))}</span>" for a, b in facts)
    legend = " ".join(f'<span class="sw" style="background:{svg.lang_color(i)}"></span>{escape(code)}'
                      for i, code in enumerate(prev))
    heads = "".join(f'<th lang="{escape(x)}">{escape(x)} label and words</th>' for x in blangs)
    title = f"xtm inference report {Path(theta).name}"
    body = (f'<header><h1>xtm inference report <code>{escape(Path(theta).name)}</code></h1>'
            f'<div class="facts">{items}</div>' + "".join(f'<p class="note">{escape(n)}</p>' for n in notes)
            + '<nav><a href="#languages">languages</a> <a href="#prevalence">prevalence</a> '
              '<a href="#topics">topics</a></nav></header>'
            f'<section id="languages"><h2>Documents per language</h2>{_langs_table(stats)}</section>'
            '<section id="prevalence"><h2>Topic prevalence per language</h2><p class="note">share of each '
            f"language's (non-empty) documents whose top topic it is. {legend}</p>"
            + (svg.prevalence_bars(prev) if prev else '<p class="note">no non-empty documents</p>') + "</section>"
            '<section id="topics"><h2>Topics</h2><div class="controls">'
            '<input id="q" type="search" placeholder="filter: a word or #topic" aria-label="filter topics">'
            '<label>sort <select id="sort"><option value="k">topic number</option>'
            f'<option value="size">prevalence</option></select></label> <span class="note">showing <b id="shown">{k}'
            f'</b> of {k}</span></div><div class="scroll"><table class="topics"><thead><tr><th>#</th>'
            f'<th>top topic of (θ: mean share)</th>{heads}</tr></thead><tbody id="topics-body">'
            f"{_topic_rows(stats, words, labels, blangs)}</tbody></table></div></section>")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{content_security_policy()}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>{body}"
            f"<script>{JS}</script></body></html>\n")


def write_theta_report(theta: str | Path, bundle: str | Path, out: str | Path) -> Path:
    """Render the inference report and write it atomically to `out`; returns the path."""
    html = render_theta_report(theta, bundle)
    write_text(Path(out), html)
    return Path(out)

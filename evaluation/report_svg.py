"""Inline SVG charts for report.html: plain strings, no plotting library, nothing fetched.

Every chart scales with its container (viewBox + width 100%) and stays cheap at 200 topics:
bars and points are one element each, the confusion matrix draws only its non-zero cells.
Every text that reaches the SVG goes through html.escape, and every number through float() or
int() before it is formatted: a value of the wrong type raises or is left out, it never reaches the
markup as it was (the caller, xtm.evaluation.report, checks run-directory values before this).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

# Colour-blind-safe (Okabe-Ito) colours, one per language.
LANG_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9")


def lang_color(i: int) -> str:
    return LANG_COLORS[i % len(LANG_COLORS)]


def _num(x: float) -> str:
    """Short coordinates keep a 200-topic SVG small."""
    return f"{float(x):.1f}".rstrip("0").rstrip(".")


def _finite(x: object) -> bool:
    """A real, finite number (not a bool, a string or None): the only values a chart plots."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _tick(v: float) -> str:
    v = float(v)
    if v == 0 or not math.isfinite(v):
        return "0" if v == 0 else str(v)
    return f"{v:.3g}" if 1e-3 <= abs(v) < 1e5 else f"{v:.2e}"


def _svg(width: int, height: int, body: str, label: str, cls: str = "chart") -> str:
    return (f'<svg class="{cls}" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(label)}" '
            f'xmlns="http://www.w3.org/2000/svg"><title>{escape(label)}</title>{body}</svg>')


def line_panel(title: str, xs: Sequence[float], ys: Sequence[float], mark_x: float | None = None,
               width: int = 300, height: int = 170) -> str:
    """One small line chart (a loss curve) with its own y range; `mark_x` draws a dashed vertical line."""
    left, right, top, bottom = 52, 10, 22, 24
    pts = [(float(x), float(y)) for x, y in zip(xs, ys, strict=True) if _finite(x) and _finite(y)]
    body = [f'<text x="{width / 2}" y="14" text-anchor="middle" class="t">{escape(title)}</text>']
    if not pts:
        body.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no values</text>')
        return _svg(width, height, "".join(body), title)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    mark_x = float(mark_x) if mark_x is not None else None
    if mark_x is not None:
        x0, x1 = min(x0, mark_x), max(x1, mark_x)
    xspan, yspan = (x1 - x0) or 1.0, (y1 - y0) or (abs(y0) or 1.0)
    pw, ph = width - left - right, height - top - bottom

    def sx(x: float) -> float:
        return left + (x - x0) / xspan * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / yspan * ph

    body.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>')
    for v in (y0, y1):
        body.append(f'<text x="{left - 4}" y="{_num(sy(v) + 4)}" text-anchor="end">{_tick(v)}</text>')
    for v in (x0, x1):
        body.append(f'<text x="{_num(sx(v))}" y="{height - 8}" text-anchor="middle">{_tick(v)}</text>')
    if mark_x is not None:
        body.append(f'<line x1="{_num(sx(mark_x))}" x2="{_num(sx(mark_x))}" y1="{top}" y2="{top + ph}" '
                    'class="mark"><title>phase 2 starts after this epoch</title></line>')
    path = " ".join(f"{_num(sx(x))},{_num(sy(y))}" for x, y in pts)
    body.append(f'<polyline points="{path}" class="line"/>')
    if len(pts) == 1:
        body.append(f'<circle cx="{_num(sx(pts[0][0]))}" cy="{_num(sy(pts[0][1]))}" r="3" class="dot"/>')
    return _svg(width, height, "".join(body), title)


def prevalence_bars(prevalence: dict[str, Sequence[float]], width: int = 960, height: int = 220) -> str:
    """Grouped bars: for each topic, the share of each language's documents whose top topic it is."""
    langs = list(prevalence)
    k = len(next(iter(prevalence.values())))
    left, right, top, bottom = 46, 8, 12, 34
    pw, ph = width - left - right, height - top - bottom
    ymax = max((v for vals in prevalence.values() for v in vals), default=0.0) or 1.0
    slot = pw / max(k, 1)
    bar = slot * 0.9 / max(len(langs), 1)
    body = [f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
            f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{ymax:.0%}</text>',
            f'<text x="{left - 4}" y="{top + ph + 4}" text-anchor="end">0%</text>']
    step = 1 if k <= 30 else 5 if k <= 100 else 10  # label every topic only while the labels fit
    for t in range(k):
        x = left + t * slot + slot * 0.05
        for i, lang in enumerate(langs):
            v = float(prevalence[lang][t])
            h = v / ymax * ph
            body.append(f'<rect x="{_num(x + i * bar)}" y="{_num(top + ph - h)}" width="{_num(bar)}" '
                        f'height="{_num(h)}" fill="{lang_color(i)}"><title>topic {t}, {escape(lang)}: '
                        f'{v:.1%}</title></rect>')
        if t % step == 0:
            body.append(f'<text x="{_num(left + (t + 0.5) * slot)}" y="{top + ph + 14}" '
                        f'text-anchor="middle">{t}</text>')
    body.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">topic</text>')
    return _svg(width, height, "".join(body), "topic prevalence per language")


def topic_scatter(xs: Sequence[float], ys: Sequence[float], sizes: Sequence[float], tips: Sequence[str],
                  explained: Sequence[float], width: int = 640, height: int = 480) -> str:
    """Topics as points (area ~ prevalence), each a link to its row in the topic table."""
    k = len(xs)
    left, bottom = 24, 24  # room for the axis titles
    x0, x1 = min(xs, default=0.0), max(xs, default=0.0)
    y0, y1 = min(ys, default=0.0), max(ys, default=0.0)
    xspan, yspan = (x1 - x0) or 1.0, (y1 - y0) or 1.0
    smax = max(sizes, default=0.0) or 1.0
    rmax = 18 if k <= 30 else 10 if k <= 100 else 7
    inner = rmax + 4  # the largest circle stays inside the frame
    fw, fh = width - left - 4, height - bottom - 4
    body = [f'<rect x="{left}" y="4" width="{fw}" height="{fh}" class="frame"/>',
            f'<text x="{left + fw / 2}" y="{height - 6}" text-anchor="middle">PC1 ({explained[0]:.0%} of '
            'variance)</text>',
            f'<text x="14" y="{4 + fh / 2}" text-anchor="middle" transform="rotate(-90 14 {4 + fh / 2})">'
            f'PC2 ({explained[1]:.0%})</text>']
    for t in range(k):
        cx = left + inner + (xs[t] - x0) / xspan * (fw - 2 * inner)
        cy = 4 + inner + (1 - (ys[t] - y0) / yspan) * (fh - 2 * inner)
        r = 2.5 + (rmax - 2.5) * math.sqrt(max(sizes[t], 0.0) / smax)
        label = f'<text x="{_num(cx)}" y="{_num(cy + 4)}" text-anchor="middle" class="pl">{t}</text>' \
            if k <= 60 else ""
        body.append(f'<a href="#topic-{t}"><circle cx="{_num(cx)}" cy="{_num(cy)}" r="{_num(r)}" class="pt">'
                    f'<title>{escape(tips[t])}</title></circle>{label}</a>')
    return _svg(width, height, "".join(body), "map of topics (PCA)", cls="chart map")


def confusion_heatmap(counts: Sequence[Sequence[int]], langs: Sequence[str], size: int = 520) -> str:
    """K x K counts of (top topic in langs[0], top topic in langs[1]); only non-zero cells are drawn."""
    k = len(counts)
    pad = 40
    cell = (size - pad) / max(k, 1)
    cmax = max((c for row in counts for c in row), default=0) or 1
    a, b = (escape(x) for x in langs[:2])
    body = [f'<rect x="{pad}" y="0" width="{size - pad}" height="{size - pad}" class="frame"/>',
            f'<line x1="{pad}" y1="0" x2="{size}" y2="{size - pad}" class="diag"/>',
            f'<text x="{pad + (size - pad) / 2}" y="{size - 8}" text-anchor="middle">top topic, {b}</text>',
            f'<text x="12" y="{(size - pad) / 2}" text-anchor="middle" transform="rotate(-90 12 '
            f'{(size - pad) / 2})">top topic, {a}</text>']
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            if c:
                # sqrt: one dominant cell should not wash out the rest
                alpha = 0.12 + 0.88 * math.sqrt(c / cmax)
                cls = "cell d" if i == j else "cell"
                body.append(f'<rect x="{_num(pad + j * cell)}" y="{_num(i * cell)}" width="{_num(cell)}" '
                            f'height="{_num(cell)}" class="{cls}" fill-opacity="{alpha:.2f}"><title>{a} topic {i}'
                            f', {b} topic {j}: {int(c)} pair{"s" if c != 1 else ""}</title></rect>')
    if k <= 30:
        for t in range(k):
            body.append(f'<text x="{_num(pad + (t + 0.5) * cell)}" y="{size - pad + 14}" '
                        f'text-anchor="middle">{t}</text>')
            body.append(f'<text x="{pad - 4}" y="{_num((t + 0.5) * cell + 4)}" text-anchor="end">{t}</text>')
    return _svg(size, size, "".join(body), f"top topics of aligned documents, {langs[0]} vs {langs[1]}",
                cls="chart square")

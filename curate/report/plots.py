"""Small inline-SVG charts for the HTML report: no plotting library, no network at view time."""

from __future__ import annotations

from html import escape

import numpy as np

WIDTH, HEIGHT, PAD = 560, 200, 36
BAR = "#4c78a8"
DROP = "#e45756"
LINE = "#f58518"


def _fmt(v: float) -> str:
    if v == int(v) and abs(v) < 1e6:
        return str(int(v))
    return f"{v:.3g}"


def histogram_data(values, thresholds: list[float] = (), bins: int = 30) -> dict | None:
    """Counts and bin edges of the finite values (range widened to show every threshold)."""
    x = np.asarray([v for v in values if v is not None], dtype=float)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return None
    lo, hi = float(x.min()), float(x.max())
    span = max(hi - lo, 1e-9)
    for t in thresholds:  # widen to show a nearby threshold; a far one would squash the data
        if lo - 0.25 * span <= t <= hi + 0.25 * span:
            lo, hi = min(lo, t), max(hi, t)
    if hi == lo:
        hi = lo + 1.0
    counts, edges = np.histogram(x, bins=bins, range=(lo, hi))
    return {"n": int(x.size), "counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges]}


def histogram(data: dict | None, title: str, thresholds: list[float] = ()) -> str:
    """An SVG histogram of `histogram_data` output, with dashed threshold lines."""
    if not data:
        return ""
    counts, edges = data["counts"], data["edges"]
    lo, hi = edges[0], edges[-1]
    top = max(max(counts), 1)
    plot_w, plot_h = WIDTH - 2 * PAD, HEIGHT - 2 * PAD
    bw = plot_w / len(counts)
    parts = [f'<svg class="plot" role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{HEIGHT}" '
             f'viewBox="0 0 {WIDTH} {HEIGHT}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="{PAD}" y="16" class="t">{escape(title)} (n={data["n"]})</text>']
    for i, c in enumerate(counts):
        h = plot_h * c / top
        parts.append(f'<rect x="{PAD + i * bw:.1f}" y="{PAD + plot_h - h:.1f}" width="{max(bw - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="{BAR}"><title>{_fmt(edges[i])}–{_fmt(edges[i + 1])}: {c}</title></rect>')
    off = [t for t in thresholds if not lo <= t <= hi]
    if off:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT - 12}" class="s" text-anchor="middle" fill="{LINE}">threshold '
                     + ", ".join(_fmt(t) for t in off) + ' off the chart</text>')
    for t in (t for t in thresholds if lo <= t <= hi):
        tx = PAD + plot_w * (t - lo) / (hi - lo)
        parts.append(f'<line class="threshold" x1="{tx:.1f}" x2="{tx:.1f}" y1="{PAD - 6}" y2="{PAD + plot_h}" '
                     f'stroke="{LINE}" stroke-width="2" stroke-dasharray="4 3"><title>threshold {_fmt(t)}</title></line>')
        parts.append(f'<text x="{tx + 3:.1f}" y="{PAD - 8}" class="s" fill="{LINE}">{_fmt(t)}</text>')
    parts += [f'<line x1="{PAD}" x2="{PAD + plot_w}" y1="{PAD + plot_h}" y2="{PAD + plot_h}" stroke="#888"/>',
              f'<text x="{PAD}" y="{HEIGHT - 12}" class="s">{_fmt(lo)}</text>',
              f'<text x="{PAD + plot_w}" y="{HEIGHT - 12}" class="s" text-anchor="end">{_fmt(hi)}</text>',
              f'<text x="{PAD - 4}" y="{PAD + 4}" class="s" text-anchor="end">{top}</text>', "</svg>"]
    return "".join(parts)


def bars(labels: list[str], values: list[float], title: str, dropped: list[float] | None = None) -> str:
    """Horizontal bars (optionally with a red 'dropped' segment after each bar)."""
    if not labels:
        return ""
    row_h, label_w = 24, 190
    height = PAD + row_h * len(labels) + 10
    top = max(max(values, default=0) + max(dropped or [0]), 1)
    plot_w = WIDTH - label_w - 70
    parts = [f'<svg class="plot" role="img" aria-label="{escape(title)}" width="{WIDTH}" height="{height}" '
             f'viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg">',
             f'<text x="8" y="16" class="t">{escape(title)}</text>']
    for i, (label, v) in enumerate(zip(labels, values)):
        y = PAD + i * row_h
        w = plot_w * v / top
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" class="s" text-anchor="end">{escape(str(label))[:32]}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 8}" fill="{BAR}">'
                     f'<title>{escape(str(label))}: {_fmt(v)}</title></rect>')
        end = label_w + w
        if dropped and dropped[i]:
            dw = plot_w * dropped[i] / top
            parts.append(f'<rect x="{end:.1f}" y="{y + 3}" width="{dw:.1f}" height="{row_h - 8}" fill="{DROP}">'
                         f'<title>dropped: {_fmt(dropped[i])}</title></rect>')
            end += dw
        parts.append(f'<text x="{end + 4:.1f}" y="{y + 15}" class="s">{_fmt(v)}'
                     + (f" (−{_fmt(dropped[i])})" if dropped and dropped[i] else "") + "</text>")
    parts.append("</svg>")
    return "".join(parts)

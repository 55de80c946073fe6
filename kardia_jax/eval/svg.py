"""Inline SVG charts for the report (no JavaScript, nothing fetched): grouped bars
with interval whiskers, and line charts of training scalars. Every label goes
through `html.escape`; numbers are formatted here, never taken as text."""

from __future__ import annotations

import math
from html import escape

PALETTE = ("#3b6fb6", "#d9822b", "#3a9d5d", "#b5485d", "#7b5ea7", "#8c8c8c", "#2a9fb0")
_FONT = 'font-family="system-ui, sans-serif"'


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0, 1.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0)
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        ticks.append(round(t, 10))
        t += step
    if ticks[-1] < hi:
        ticks.append(round(t, 10))
    return ticks


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1000 or a < 0.01:
        return f"{v:.2g}"
    return f"{v:.3g}"


def bar_chart(
    categories: list[str],
    series: list[tuple[str, list[float | None], list[tuple[float, float] | None]]],
    *,
    ymin: float = 1.0,
    ymax: float = 5.0,
    width: int = 640,
    height: int = 300,
    title: str = "",
) -> str:
    """Grouped bars: per category one bar per series (None = no bar, marked "n/a"),
    with optional (lo, hi) whiskers."""
    left, right, top, bottom = 44, 12, 28, 58
    pw, ph = width - left - right, height - top - bottom
    group_w = pw / max(len(categories), 1)
    bar_w = group_w * 0.8 / max(len(series), 1)

    def y(v):
        return top + ph * (1 - (v - ymin) / (ymax - ymin))

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" {_FONT}>{escape(title)}</text>',
    ]
    for t in _nice_ticks(ymin, ymax, 4):
        if ymin <= t <= ymax:
            out.append(
                f'<line x1="{left}" x2="{width - right}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                f'stroke="#e3e3e3"/><text x="{left - 6}" y="{y(t) + 4:.1f}" font-size="11" '
                f'text-anchor="end" {_FONT}>{_fmt(t)}</text>'
            )
    for c, cat in enumerate(categories):
        gx = left + c * group_w + group_w * 0.1
        for s, (_, values, cis) in enumerate(series):
            x = gx + s * bar_w
            v = values[c]
            color = PALETTE[s % len(PALETTE)]
            if v is None:
                out.append(
                    f'<text x="{x + bar_w / 2:.1f}" y="{y(ymin) - 4:.1f}" font-size="10" '
                    f'text-anchor="middle" fill="#999" {_FONT}>n/a</text>'
                )
                continue
            v_clip = min(max(v, ymin), ymax)
            out.append(
                f'<rect x="{x:.1f}" y="{y(v_clip):.1f}" width="{bar_w * 0.92:.1f}" '
                f'height="{y(ymin) - y(v_clip):.1f}" fill="{color}"><title>'
                f"{escape(series[s][0])}: {v:.3f}</title></rect>"
            )
            label_y = y(v_clip)
            ci = cis[c] if cis else None
            if ci is not None:
                cx = x + bar_w * 0.46
                lo, hi = (min(max(b, ymin), ymax) for b in ci)
                out.append(
                    f'<path d="M{cx:.1f} {y(lo):.1f}V{y(hi):.1f}M{cx - 4:.1f} {y(lo):.1f}'
                    f'h8M{cx - 4:.1f} {y(hi):.1f}h8" stroke="#222" fill="none"/>'
                )
                label_y = min(label_y, y(hi))  # above the whisker, not through it
            out.append(
                f'<text x="{x + bar_w * 0.46:.1f}" y="{label_y - 3:.1f}" font-size="10" '
                f'text-anchor="middle" {_FONT}>{v:.2f}</text>'
            )
        out.append(
            f'<text x="{left + (c + 0.5) * group_w:.1f}" y="{height - bottom + 16}" '
            f'font-size="12" text-anchor="middle" {_FONT}>{escape(cat)}</text>'
        )
    lx = left
    for s, (name, _, _) in enumerate(series):
        out.append(
            f'<rect x="{lx}" y="{height - 20}" width="12" height="12" '
            f'fill="{PALETTE[s % len(PALETTE)]}"/><text x="{lx + 16}" y="{height - 10}" '
            f'font-size="12" {_FONT}>{escape(name)}</text>'
        )
        lx += 24 + 7 * len(name)
    out.append("</svg>")
    return "".join(out)


def line_chart(
    series: list[tuple[str, list[tuple[int, float]]]],
    *,
    width: int = 360,
    height: int = 220,
    title: str = "",
    xlabel: str = "step",
) -> str:
    """One line per (name, [(step, value)]) on shared axes; a single point is a dot."""
    left, right, top, bottom = 48, 10, 26, 36 + 16 * len(series)
    height = max(height, top + bottom + 90)
    pw, ph = width - left - right, height - top - bottom
    pts = [p for _, s in series for p in s if math.isfinite(p[1])]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">',
        f'<text x="{left}" y="16" font-size="13" font-weight="600" {_FONT}>{escape(title)}</text>',
    ]
    if not pts:
        out.append(
            f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle" fill="#999" '
            f'font-size="12" {_FONT}>no data</text></svg>'
        )
        return "".join(out)
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    yt = _nice_ticks(min(p[1] for p in pts), max(p[1] for p in pts), 4)
    y0, y1 = yt[0], yt[-1]
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(v):
        return left + pw * (v - x0) / (x1 - x0)

    def sy(v):
        return top + ph * (1 - (v - y0) / ((y1 - y0) or 1))

    for t in yt:
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" '
            f'stroke="#e6e6e6"/><text x="{left - 5}" y="{sy(t) + 4:.1f}" font-size="10" '
            f'text-anchor="end" {_FONT}>{_fmt(t)}</text>'
        )
    for t in _nice_ticks(x0, x1, 4):
        if x0 <= t <= x1:
            out.append(
                f'<text x="{sx(t):.1f}" y="{top + ph + 14}" font-size="10" '
                f'text-anchor="middle" {_FONT}>{_fmt(t)}</text>'
            )
    out.append(
        f'<text x="{width - right}" y="{top + ph + 28}" font-size="10" text-anchor="end" '
        f'fill="#666" {_FONT}>{escape(xlabel)}</text>'
    )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbb"/>')
    for i, (name, s) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        good = [(a, b) for a, b in s if math.isfinite(b)]
        if len(good) == 1:
            out.append(
                f'<circle cx="{sx(good[0][0]):.1f}" cy="{sy(good[0][1]):.1f}" r="3" '
                f'fill="{color}"/>'
            )
        elif good:
            d = " ".join(f"{sx(a):.1f},{sy(b):.1f}" for a, b in good)
            out.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.6"/>')
        last = f" (last {_fmt(good[-1][1])})" if good else " (no finite values)"
        ly = top + ph + 34 + 16 * i
        out.append(
            f'<rect x="{left}" y="{ly - 9}" width="10" height="10" fill="{color}"/>'
            f'<text x="{left + 14}" y="{ly}" font-size="11" {_FONT}>{escape(name + last)}</text>'
        )
    out.append("</svg>")
    return "".join(out)

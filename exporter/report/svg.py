"""The inline SVG charts of ``report.html``: p50 bars per backend and batch, and int8 candidates as latency
vs cosine, with the escaping, coordinates, axes, ticks and colours they share with the page around them.

Coordinates are printed with one decimal and every string is escaped here, so a chart is a pure function of
its input and two renders diff cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from html import escape
from typing import Any

from exporter.report.markdown import latency_table
from exporter.runners.pytorch import EagerRunner

__all__ = ["SHIPPED_MARK", "esc", "int8_scatter", "latency_chart"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and dark enough on white.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7A6A00", "#004D40")
_EAGER = EagerRunner.name
_EAGER_COLOUR = "#8A8F98"
SHIPPED_MARK = "★"


def esc(value: object) -> str:
    """Escape anything from the report for text and for quoted attributes (it may hold ``<`` or quotes)."""
    return escape(str(value), quote=True)


def _f(value: float) -> str:
    """SVG coordinates with one decimal: short, and identical across runs and platforms."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _svg_text(x: float, y: float, content: str, *, anchor: str = "start", css: str = "") -> str:
    """One SVG <text>; ``content`` is escaped here, so callers pass raw strings."""
    style = f" {css}" if css else ""
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}"{style}>{esc(content)}</text>'


def _svg_open(width: int, height: int, title: str) -> str:
    """Inline SVG without ``xmlns`` (HTML parsing does not need it, and the page stays free of URLs)."""
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'font-size="12"><title>{esc(title)}</title>'
    )


# ---- latency bars -----------------------------------------------------------------------------------------


def _colours(backends: Iterable[str]) -> dict[str, str]:
    """A fixed colour per backend across every batch group; eager PyTorch (the baseline) is grey."""
    colours = {}
    others = [b for b in dict.fromkeys(backends) if b != _EAGER]
    for index, backend in enumerate(others):
        colours[backend] = _PALETTE[index % len(_PALETTE)]
    colours[_EAGER] = _EAGER_COLOUR
    return colours


def latency_chart(report: dict[str, Any]) -> str:
    """Horizontal bars of p50 per backend, one group per batch, each group on its own scale.

    A shared scale would shrink batch=1 bars to slivers next to batch=64; within a group every bar is
    comparable and the printed value carries the absolute number.
    """
    stats = report["latency"]
    rows = latency_table(report)[1]  # the table's own strings, so chart and table agree to the digit
    labels = list(dict.fromkeys(s["label"] for s in stats))
    colours = _colours(s["backend"] for s in stats)
    width, left, bar_max, row_h, group_gap = 860, 170, 470, 20, 14
    height = 10 + sum(22 + row_h * sum(s["label"] == label for s in stats) + group_gap for label in labels)
    parts = [_svg_open(width, height, "p50 latency per backend, grouped by batch")]
    y = 10.0
    for label in labels:
        group = [(s, row) for s, row in zip(stats, rows, strict=True) if s["label"] == label]
        scale_max = max(s["p50_ms"] for s, _ in group) or 1.0
        parts.append(_svg_text(0, y + 14, label, css='font-weight="700" font-size="13"'))
        parts.append(
            _svg_text(
                left + bar_max,
                y + 14,
                f"bars scaled to {scale_max:.3g} ms",
                anchor="end",
                css='fill="#5f6670" font-size="11"',
            )
        )
        y += 22
        parts.append(
            f'<line x1="{left}" y1="{_f(y)}" x2="{left}" y2="{_f(y + row_h * len(group))}" '
            'stroke="#9aa1ab" stroke-width="1"/>'
        )
        for s, row in group:
            length = max(bar_max * s["p50_ms"] / scale_max, 1.0)
            colour = colours[s["backend"]]
            speed = "baseline" if s["backend"] == _EAGER else f"{row[6]} vs eager"
            slow = s["speedup_vs_eager"] is not None and s["speedup_vs_eager"] < 1 and s["backend"] != _EAGER
            tip = f"{s['backend']} {label}: p50 {row[2]} ms, p90 {row[3]} ms, p99 {row[4]} ms, {speed}"
            parts.append(_svg_text(left - 8, y + 14, s["backend"], anchor="end"))
            parts.append(
                f'<rect x="{left}" y="{_f(y + 3)}" width="{_f(length)}" height="{row_h - 6}" '
                f'fill="{colour}" rx="2"><title>{esc(tip)}</title></rect>'
            )
            parts.append(
                _svg_text(
                    left + length + 6, y + 14, f"{row[2]} ms · {speed}", css='fill="#a8071a"' if slow else ""
                )
            )
            y += row_h
        y += group_gap
    parts.append("</svg>")
    return "".join(parts)


# ---- int8 scatter -----------------------------------------------------------------------------------------


_Box = tuple[float, float, float, float]  # left, top, width, height of a placed label


def _ticks_log(lo: float, hi: float) -> list[float]:
    """Ratio ticks for a log axis: powers of two, refined with in-between values when the range is narrow
    (candidates often sit within 0.8x-1.3x of float)."""
    powers = [2.0**k for k in range(-8, 11)]
    levels = [
        powers,
        sorted({*powers, 0.75, 1.5, 3, 6, 12, 24, 48}),
        sorted({*powers, 0.75, 1.5, 3, 6, 12, 24, 48, 0.6, 0.7, 0.8, 0.9, 1.1, 1.2, 1.3, 1.4}),
    ]
    ticks: list[float] = []
    for level in levels:
        ticks = [t for t in level if lo <= t <= hi]
        if len(ticks) >= 4:
            break
    while len(ticks) > 8:
        ticks = [t for i, t in enumerate(ticks) if i % 2 == 0 or t == 1]
    return ticks


def _ticks_linear(lo: float, hi: float) -> list[float]:
    raw = (hi - lo) / 5
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    count = int((hi - first) / step + 1e-9) + 1
    return [round(first + i * step, 10) for i in range(count)]


def _place_label(
    x: float, y: float, text: str, placed: list[_Box], right_edge: float
) -> tuple[float, float, str]:
    """Put a point's label beside it without covering another label (nearby points are common:
    PT2E static and QAT often land on the same spot)."""
    width = 7.0 * len(text) + 4
    anchor, x0 = ("start", x + 9) if x + 9 + width < right_edge else ("end", x - 9)
    left = x0 if anchor == "start" else x0 - width
    for offset in (0, 14, -14, 28, -28, 42, -42, 56, -56):
        top = y + offset - 10
        if all(left + width < a or a + w < left or top + 14 < b or b + h < top for a, b, w, h in placed):
            placed.append((left, top, width, 14))
            return x0, y + offset + 4, anchor
    placed.append((left, y - 10, width, 14))
    return x0, y + 4, anchor


@dataclass(frozen=True)
class _Plot:
    """The scatter's plot area in pixels and the data range it shows: log ratio on x, cosine on y."""

    x0: float
    x1: float
    y0: float
    y1: float
    lx_lo: float
    lx_hi: float
    y_lo: float
    y_hi: float

    @classmethod
    def around(cls, points: list[dict[str, Any]], budget: float | None) -> _Plot:
        """A range holding every point, the float model at (1x, 1.0) and the budget line, with a margin
        so no mark sits on the frame."""
        xs = [p["x"] for p in points] + [1.0]
        ys = [p["y"] for p in points] + [1.0] + ([budget] if budget is not None else [])
        lx_lo, lx_hi = math.log(min(xs)), math.log(max(xs))
        pad = max((lx_hi - lx_lo) * 0.12, 0.1)
        y_lo = min(ys)
        span = max(1.0 - y_lo, 1e-4)
        return cls(80.0, 700.0, 24.0, 370.0, lx_lo - pad, lx_hi + pad, y_lo - span * 0.12, 1.0 + span * 0.06)

    def sx(self, value: float) -> float:
        return self.x0 + (math.log(value) - self.lx_lo) / (self.lx_hi - self.lx_lo) * (self.x1 - self.x0)

    def sy(self, value: float) -> float:
        return self.y1 - (value - self.y_lo) / (self.y_hi - self.y_lo) * (self.y1 - self.y0)


def _scatter_grid(plot: _Plot, budget: float | None) -> list[str]:
    """Budget shading, gridlines with tick labels, the frame, the 1x line and the budget line."""
    px0, px1, py0, py1 = plot.x0, plot.x1, plot.y0, plot.y1
    parts = []
    if budget is not None:  # shade where the budget holds, so "inside the box" reads as acceptable
        parts.append(
            f'<rect x="{_f(px0)}" y="{_f(py0)}" width="{_f(px1 - px0)}" height="{_f(plot.sy(budget) - py0)}" '
            'fill="#e3f3e7"/>'
        )
    for tick in _ticks_log(math.exp(plot.lx_lo), math.exp(plot.lx_hi)):
        x = plot.sx(tick)
        parts.append(f'<line x1="{_f(x)}" y1="{_f(py0)}" x2="{_f(x)}" y2="{_f(py1)}" stroke="#e4e7ec"/>')
        parts.append(_svg_text(x, py1 + 16, f"{tick:g}x", anchor="middle", css='fill="#5f6670"'))
    for tick in _ticks_linear(plot.y_lo, min(plot.y_hi, 1.0)):  # a cosine above 1 is impossible
        y = plot.sy(tick)
        parts.append(f'<line x1="{_f(px0)}" y1="{_f(y)}" x2="{_f(px1)}" y2="{_f(y)}" stroke="#e4e7ec"/>')
        parts.append(_svg_text(px0 - 6, y + 4, f"{tick:.6g}", anchor="end", css='fill="#5f6670"'))
    parts.append(
        f'<rect x="{_f(px0)}" y="{_f(py0)}" width="{_f(px1 - px0)}" height="{_f(py1 - py0)}" '
        'fill="none" stroke="#9aa1ab"/>'
    )
    x1 = plot.sx(1.0)
    parts.append(
        f'<line x1="{_f(x1)}" y1="{_f(py0)}" x2="{_f(x1)}" y2="{_f(py1)}" stroke="#9aa1ab" '
        'stroke-dasharray="3 3"/>'
    )
    if budget is not None:
        yb = plot.sy(budget)
        parts.append(
            f'<line x1="{_f(px0)}" y1="{_f(yb)}" x2="{_f(px1)}" y2="{_f(yb)}" stroke="#a8071a" '
            'stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(
            _svg_text(px1 + 6, yb + 4, f"budget: cosine ≥ {budget:g}", css='fill="#a8071a" font-size="11"')
        )
    return parts


def _scatter_axis_titles(plot: _Plot, height: int) -> list[str]:
    middle = (plot.y0 + plot.y1) / 2
    return [
        _svg_text(
            (plot.x0 + plot.x1) / 2,
            height - 22,
            "p50 relative to float ONNX Runtime (log scale; left of 1x is faster)",
            anchor="middle",
        ),
        f'<text x="18" y="{_f(middle)}" text-anchor="middle" '
        f'transform="rotate(-90 18 {_f(middle)})">min cosine over outputs (higher is closer)</text>',
    ]


def _scatter_marks(plot: _Plot, points: list[dict[str, Any]], width: int) -> list[str]:
    """The float model as a grey diamond, then each candidate (the shipped one ringed), labels kept apart."""
    placed: list[_Box] = []
    fx, fy = plot.sx(1.0), plot.sy(1.0)
    parts = [
        f'<rect x="{_f(fx - 6)}" y="{_f(fy - 6)}" width="12" height="12" fill="#8A8F98" '
        'transform="rotate(45 ' + f'{_f(fx)} {_f(fy)})"><title>float model (reference)</title></rect>'
    ]
    lx, ly, anchor = _place_label(fx, fy, "float", placed, width)
    parts.append(_svg_text(lx, ly, "float", anchor=anchor, css='fill="#5f6670"'))
    for p in sorted(points, key=lambda q: (not q["chosen"], q["name"])):
        x, y = plot.sx(p["x"]), plot.sy(p["y"])
        colour = "#1e6b34" if p["passed"] else "#a8071a"
        tip = f"{p['name']}: p50 x{p['x']:.2f} of float at {p['label']}, min cosine {p['y']:.4f}"
        if p["chosen"]:
            parts.append(
                f'<circle cx="{_f(x)}" cy="{_f(y)}" r="11" fill="none" stroke="#0072B2" stroke-width="2.5"/>'
            )
        parts.append(
            f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{6 if p["chosen"] else 5}" fill="{colour}" '
            f'fill-opacity="0.85" stroke="#fff"><title>{esc(tip)}</title></circle>'
        )
        text = p["name"] + (f" {SHIPPED_MARK} shipped" if p["chosen"] else "")
        lx, ly, anchor = _place_label(x + (5 if p["chosen"] else 0), y, text, placed, width)
        weight = ' font-weight="700"' if p["chosen"] else ""
        parts.append(_svg_text(lx, ly, text, anchor=anchor, css=f'fill="{colour}"{weight}'))
    return parts


def int8_scatter(quant: dict[str, Any], points: list[dict[str, Any]]) -> str:
    """Latency vs parity: each candidate's p50 relative to float (log x) against its worst cosine.

    ``points`` hold ``name``, ``x`` (p50 / float p50), ``y`` (min cosine), ``label`` (the batch timed),
    ``passed`` (within the budget) and ``chosen`` (shipped).
    """
    width, height = 860, 430
    budget = quant["budget"].get("min_cosine")
    plot = _Plot.around(points, budget)
    parts = [_svg_open(width, height, "int8 candidates: latency relative to float vs min cosine")]
    parts += _scatter_grid(plot, budget)
    parts += _scatter_axis_titles(plot, height)
    parts += _scatter_marks(plot, points, width)
    parts.append("</svg>")
    return "".join(parts)

"""``report.html``: one self-contained page (inline CSS and SVG, no scripts, fonts or URLs) built from
``report.json``'s dict, so it opens offline, from a CI artifact store, or attached to a ticket.

Cell texts come from the table builders in ``exporter.report`` (the ones ``report.md`` and the terminal
summary use), so the numbers on the page never disagree with the other two. Every string taken from the
report is escaped: checkpoint paths, notes and error messages are whatever the model and its tools said.
The output is a pure function of the report (no clock, no randomness), so two renders diff cleanly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

from exporter.report import (
    Table,
    _num,
    latency_table,
    nonfinite_table,
    nonfinite_warning,
    parity_matrix,
    parity_table,
    quantization_table,
    stage_table,
)

__all__ = ["render_html"]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and dark enough on white.
_PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7A6A00", "#004D40")
_EAGER = "pytorch-eager"
_EAGER_COLOUR = "#8A8F98"
_SHIPPED_MARK = "★"

_CSS = """
:root { --pass:#1e6b34; --pass-bg:#e3f3e7; --fail:#a8071a; --fail-bg:#fde4e4; --arb:#7a5200;
  --arb-bg:#fff1c7; --muted:#5f6670; --line:#d9dde3; --head:#f3f5f8; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color:#1d2127;
  margin:0; background:#fff; -webkit-print-color-adjust: exact; print-color-adjust: exact; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 1.7em; margin: 0 0 6px; display:flex; gap:12px; align-items:center; flex-wrap:wrap; }
h2 { font-size: 1.25em; margin: 32px 0 8px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
h3 { font-size: 1.02em; margin: 18px 0 6px; }
p, ul { margin: 6px 0 10px; }
code { font: 0.92em ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background:#f1f3f6;
  padding: 1px 4px; border-radius: 3px; overflow-wrap: anywhere; }
.badge { display:inline-block; font-size:0.62em; letter-spacing:0.06em; padding:3px 10px;
  border-radius: 4px; color:#fff; font-weight:700; vertical-align: middle; }
.badge.passed { background: var(--pass); } .badge.failed { background: var(--fail); }
.muted, .legend { color: var(--muted); }
.legend { font-size: 0.9em; }
dl.facts { display:grid; grid-template-columns: max-content 1fr; gap: 3px 16px; margin: 10px 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
.table-wrap { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 0.92em; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--head); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.pass { background: var(--pass-bg); color: var(--pass); }
td.fail { background: var(--fail-bg); color: var(--fail); font-weight: 600; }
td.arb { background: var(--arb-bg); color: var(--arb); }
td.none { color: var(--muted); }
tr.shipped td:first-child, tr.shipped td:nth-child(2) { font-weight: 700; }
tr.shipped td:nth-child(2) { box-shadow: inset 4px 0 0 #0072B2; }
tr.candidate td { opacity: 0.72; font-size: 0.95em; }
tr.chosen td { font-weight: 600; background: #eef5fc; }
.swatch { display:inline-block; width: 0.9em; height: 0.9em; border-radius: 2px; vertical-align: -1px;
  margin-right: 3px; border: 1px solid rgba(0,0,0,0.15); }
.swatch.pass { background: var(--pass-bg); } .swatch.fail { background: var(--fail-bg); }
.swatch.arb { background: var(--arb-bg); }
.stagebar { display:block; height: 9px; background: #0072B2; border-radius: 2px; min-width: 1px; }
figure { margin: 10px 0 14px; }
figure svg { display:block; width: 100%; max-width: 880px; height: auto; }
figcaption { color: var(--muted); font-size: 0.9em; margin-top: 4px; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
details > summary { cursor: pointer; color: var(--muted); margin: 6px 0; }
ul.notes li { margin: 3px 0; overflow-wrap: anywhere; }
.warning { border-left: 5px solid var(--fail); background: var(--fail-bg); padding: 8px 14px;
  margin: 14px 0; }
.warning p { color: var(--fail); font-weight: 600; }
@media print {
  main { max-width: none; padding: 0; }
  h2 { break-after: avoid; } table, figure, tr { break-inside: avoid; }
  details { display: block; } .table-wrap { overflow: visible; }
}
"""


# ---- small helpers ----------------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Escape anything from the report for text and for quoted attributes (it may hold ``<`` or quotes)."""
    return escape(str(value), quote=True)


def _f(value: float) -> str:
    """SVG coordinates with one decimal: short, and identical across runs and platforms."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


def _table_html(
    table: Table,
    *,
    table_id: str | None = None,
    numeric: Iterable[int] = (),
    row_classes: Sequence[str] | None = None,
) -> str:
    """A report.Table as HTML; ``numeric`` columns are right-aligned so digits line up."""
    headers, rows = table
    right = set(numeric)
    ident = f' id="{table_id}"' if table_id else ""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(
            f'<td class="num">{_e(cell)}</td>' if column in right else f"<td>{_e(cell)}</td>"
            for column, cell in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return (
        f'<div class="table-wrap"><table{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


def _svg_text(x: float, y: float, content: str, *, anchor: str = "start", css: str = "") -> str:
    """One SVG <text>; ``content`` is escaped here, so callers pass raw strings."""
    style = f" {css}" if css else ""
    return f'<text x="{_f(x)}" y="{_f(y)}" text-anchor="{anchor}"{style}>{_e(content)}</text>'


def _svg_open(width: int, height: int, title: str) -> str:
    """Inline SVG without ``xmlns`` (HTML parsing does not need it, and the page stays free of URLs)."""
    return (
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        f'font-size="12"><title>{_e(title)}</title>'
    )


# ---- 1. header --------------------------------------------------------------------------------------------


def _header(report: dict[str, Any]) -> str:
    status = str(report.get("status", "unknown")).lower()
    source = report["source"]
    facts: list[tuple[str, str]] = [
        (
            "Checkpoint",
            f"<code>{_e(source['checkpoint'])}</code> ({_e(source['format'])}, "
            f"{source['parameter_count']:,} parameters, {_e(_size(source['file_size']))}, "
            f"sha256 <code>{_e(source['sha256'][:16])}…</code>)",
        )
    ]
    if source.get("model_class"):
        facts.append(("Model class", f"<code>{_e(source['model_class'])}</code>"))
    date = report.get("created_utc") or report.get("date")
    if date:
        facts.append(("Date", _e(date)))
    inputs = report.get("input_spec", {}).get("inputs", [])
    if inputs:
        specs = ", ".join(f"<code>{_e(i['spec'])}</code>" for i in inputs)
        facts.append(("Inputs", f"{specs} (seed {_e(report.get('seed'))})"))
    conversion = report.get("conversion")
    if conversion:
        facts.append(
            (
                "ONNX",
                f"opset {_e(conversion['opset'])}, {_e(conversion['exporter'])} exporter, "
                f"{_e(conversion['node_count'])} nodes as exported, "
                f"{_e(conversion['simplified_node_count'] or '-')} simplified",
            )
        )
    shipped = ", ".join(
        f"{_e(b['backend'])}: {_e(b['shipped'])} ({'verified' if b['passed'] else 'FAILED'})"
        for b in report["backends"]
    )
    facts.append(("Shipped", shipped))
    artifacts = report.get("artifacts") or {}
    if artifacts:
        listed = ", ".join(f"{_e(k)}: <code>{_e(v)}</code>" for k, v in artifacts.items())
        facts.append(("Artifacts", listed))
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return (
        f'<header id="summary"><h1>Export report: {_e(report["name"])} '
        f'<span class="badge {"passed" if status == "passed" else "failed"}" id="status">'
        f"{_e(status.upper())}</span></h1>"
        f'<dl class="facts">{rows}</dl></header>'
    )


def _nonfinite_section(report: dict[str, Any]) -> str:
    """A warning block right under the header: NaN/Inf in the reference makes a parity pass meaningless."""
    warning = nonfinite_warning(report)
    if warning is None:
        return ""
    table = _table_html(nonfinite_table(report), table_id="nonfinite-table", numeric=(2, 3, 4, 5))
    return f'<section class="warning" id="nonfinite"><p>{_e(warning)}</p>{table}</section>'


# ---- 2. parity matrix -------------------------------------------------------------------------------------


def _cell_class(text: str) -> str:
    if text.startswith("FAIL"):
        return "fail"
    if text.startswith("pass"):
        return "arb" if text.endswith("*") else "pass"
    return "none"


def _failures(parity: dict[str, Any]) -> list[str]:
    """Why a candidate failed, as the parity details table words it."""
    reasons = []
    for case in parity["cases"]:
        if case["error"]:
            reasons.append(f"{case['case']}: {case['error']}")
        reasons += [f"{case['case']}: {o['message']}" for o in case["outputs"] if not o["passed"]]
    return reasons


def _case_titles(parity: dict[str, Any]) -> dict[str, str]:
    """Hover text per case: every output's exact diffs, which the cell rounds to its worst max abs."""
    titles = {}
    for case in parity["cases"]:
        parts = [
            f"{o['name']}: max abs {o['max_abs_diff']}, max rel {o['max_rel_diff']}, cosine {o['cosine']}"
            for o in case["outputs"]
        ]
        if case["error"]:
            parts.append(str(case["error"]))
        titles[case["case"]] = "; ".join(parts)
    return titles


def _matrix_row(parity: dict[str, Any], names: list[str], cells: dict[str, str], *, shipped: bool) -> str:
    titles = _case_titles(parity)
    artifact = _e(parity["artifact"]) + (f" {_SHIPPED_MARK} shipped" if shipped else "")
    html = [f"<td>{_e(parity['backend'])}</td><td>{artifact}</td>"]
    if not shipped and all(cells.get(name, "-") == "-" for name in names):
        reasons = "; ".join(_failures(parity)) or "not run on these cases"
        html.append(f'<td class="fail" colspan="{len(names)}">{_e(reasons)}</td>')
    else:
        for name in names:
            text = cells.get(name, "-")
            title = f' title="{_e(titles[name])}"' if name in titles else ""
            html.append(f'<td class="{_cell_class(text)}"{title}>{_e(text)}</td>')
    if shipped:
        verdict = "verified" if parity["passed"] else "FAILED"
    else:
        verdict = "not shipped (" + ("passed)" if parity["passed"] else "failed)")
    cls = "pass" if parity["passed"] else "fail"
    if not shipped:
        cls = "none"
    html.append(f'<td class="{cls}">{_e(verdict)}</td>')
    return f'<tr class="{"shipped" if shipped else "candidate"}">{"".join(html)}</tr>'


def _parity_section(report: dict[str, Any]) -> str:
    """Shipped artifact of each backend x shape case, with the candidates that lost listed under it."""
    headers, rows = parity_matrix(report)
    names = headers[2:]
    body = []
    for backend, row in zip(report["backends"], rows, strict=True):
        candidates = [p for p in report["parity"] if p["backend"] == backend["backend"]]
        for parity in candidates:
            shipped = parity["artifact"] == backend["shipped"]
            if shipped:
                cells = dict(zip(names, row[2:], strict=True))
            else:  # the same builder, pointed at this candidate, so its cells read like the shipped row's
                alone = {**report, "backends": [{**backend, "shipped": parity["artifact"]}]}
                alone_headers, alone_rows = parity_matrix(alone)
                cells = dict(zip(alone_headers[2:], alone_rows[0][2:], strict=True))
            body.append(_matrix_row(parity, names, cells, shipped=shipped))
    head = "".join(f"<th>{_e(h)}</th>" for h in [*headers, "verdict"])
    tolerance = report["parity"][0]["tolerance"] if report["parity"] else {"atol": "-", "rtol": "-"}
    arbitrated = any(p.get("float64_arbitrated") for p in report["parity"])
    legend = (
        '<p class="legend"><span class="swatch pass"></span>pass <span class="swatch fail"></span>fail '
        '<span class="swatch arb"></span>pass by float64 arbitration (<code>*</code>) · cells show the '
        f"worst max abs diff over outputs · {_SHIPPED_MARK} marks the artifact each backend ships; the "
        "candidates it tried before are dimmed under it · hover a cell for every output's diffs</p>"
    )
    details = _table_html(parity_table(report), numeric=(4, 5, 6))
    return (
        '<section id="parity"><h2>Parity</h2>'
        "<p>Each element passes when |a - b| ≤ atol + rtol·|b| against PyTorch eager float32 "
        f"(atol={_e(tolerance['atol'])}, rtol={_e(tolerance['rtol'])})"
        + ("; some artifacts only passed after re-running the reference in float64." if arbitrated else ".")
        + "</p>"
        + legend
        + f'<div class="table-wrap"><table id="parity-matrix"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        "<details><summary>Parity details: every candidate, case and output</summary>"
        f"{details}</details></section>"
    )


# ---- 3. latency -------------------------------------------------------------------------------------------


def _colours(backends: Iterable[str]) -> dict[str, str]:
    """A fixed colour per backend across every batch group; eager PyTorch (the baseline) is grey."""
    colours = {}
    others = [b for b in dict.fromkeys(backends) if b != _EAGER]
    for index, backend in enumerate(others):
        colours[backend] = _PALETTE[index % len(_PALETTE)]
    colours[_EAGER] = _EAGER_COLOUR
    return colours


def _latency_chart(report: dict[str, Any]) -> str:
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
                f'fill="{colour}" rx="2"><title>{_e(tip)}</title></rect>'
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


def _latency_section(report: dict[str, Any]) -> str:
    if not report["latency"]:
        return '<section id="latency"><h2>Latency</h2><p id="latency-chart">Not measured.</p></section>'
    timing = report.get("timing") or {}
    threads = report["latency"][0].get("threads")
    how = (
        f"Same threads for every backend ({_e(threads)}); {_e(timing.get('warmup', '-'))} warm-up runs, "
        f"then at least {_e(timing.get('min_runs', '-'))} runs and {_e(timing.get('min_seconds', '-'))} s. "
        "Speedup is against eager PyTorch at the same batch; red text is slower than eager."
    )
    return (
        f'<section id="latency"><h2>Latency</h2><p>{how}</p>'
        f'<figure id="latency-chart">{_latency_chart(report)}'
        "<figcaption>p50 latency per backend (shorter is faster), grouped by batch.</figcaption></figure>"
        f"{_table_html(latency_table(report), table_id='latency-table', numeric=range(2, 8))}</section>"
    )


# ---- 4. int8 ----------------------------------------------------------------------------------------------


def _reference_stats(latency: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The batch=1 timing (latency matters most one request at a time), else the first one timed."""
    return next((s for s in latency if s.get("batch") == 1), latency[0] if latency else None)


def _int8_points(quant: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """(x = p50 / float p50, y = min cosine) per candidate that was built, timed and compared."""
    points, unplotted = [], []
    for c in quant["candidates"]:
        if c["error"]:
            continue
        stats = _reference_stats(c["latency"])
        speedup = stats.get("speedup_vs_float") if stats else None
        if not speedup or not c["outputs"]:
            unplotted.append(f"{c['name']}: {'not timed' if not speedup else 'no outputs compared'}")
            continue
        points.append(
            {
                "name": c["name"],
                "x": 1.0 / speedup,
                "y": min(o["min_cosine"] for o in c["outputs"]),
                "label": stats["label"] if stats else "",
                "passed": c["budget_passed"],
                "chosen": c["chosen"],
            }
        )
    return points, unplotted


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
    x: float, y: float, text: str, placed: list[tuple[float, float, float, float]], right_edge: float
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


def _int8_scatter(quant: dict[str, Any], points: list[dict[str, Any]]) -> str:
    """Latency vs parity: each candidate's p50 relative to float (log x) against its worst cosine."""
    width, height = 860, 430
    px0, px1, py0, py1 = 80.0, 700.0, 24.0, 370.0
    budget = quant["budget"].get("min_cosine")
    xs = [p["x"] for p in points] + [1.0]
    ys = [p["y"] for p in points] + [1.0] + ([budget] if budget is not None else [])
    lx_lo, lx_hi = math.log(min(xs)), math.log(max(xs))
    pad = max((lx_hi - lx_lo) * 0.12, 0.1)
    lx_lo, lx_hi = lx_lo - pad, lx_hi + pad
    y_lo, y_hi = min(ys), 1.0
    span = max(y_hi - y_lo, 1e-4)
    y_lo, y_hi = y_lo - span * 0.12, y_hi + span * 0.06

    def sx(value: float) -> float:
        return px0 + (math.log(value) - lx_lo) / (lx_hi - lx_lo) * (px1 - px0)

    def sy(value: float) -> float:
        return py1 - (value - y_lo) / (y_hi - y_lo) * (py1 - py0)

    parts = [_svg_open(width, height, "int8 candidates: latency relative to float vs min cosine")]
    if budget is not None:  # shade where the budget holds, so "inside the box" reads as acceptable
        parts.append(
            f'<rect x="{_f(px0)}" y="{_f(py0)}" width="{_f(px1 - px0)}" height="{_f(sy(budget) - py0)}" '
            'fill="#e3f3e7"/>'
        )
    for tick in _ticks_log(math.exp(lx_lo), math.exp(lx_hi)):
        x = sx(tick)
        parts.append(f'<line x1="{_f(x)}" y1="{_f(py0)}" x2="{_f(x)}" y2="{_f(py1)}" stroke="#e4e7ec"/>')
        parts.append(_svg_text(x, py1 + 16, f"{tick:g}x", anchor="middle", css='fill="#5f6670"'))
    for tick in _ticks_linear(y_lo, min(y_hi, 1.0)):  # a cosine above 1 is impossible
        y = sy(tick)
        parts.append(f'<line x1="{_f(px0)}" y1="{_f(y)}" x2="{_f(px1)}" y2="{_f(y)}" stroke="#e4e7ec"/>')
        parts.append(_svg_text(px0 - 6, y + 4, f"{tick:.6g}", anchor="end", css='fill="#5f6670"'))
    parts.append(
        f'<rect x="{_f(px0)}" y="{_f(py0)}" width="{_f(px1 - px0)}" height="{_f(py1 - py0)}" '
        'fill="none" stroke="#9aa1ab"/>'
    )
    x1 = sx(1.0)
    parts.append(
        f'<line x1="{_f(x1)}" y1="{_f(py0)}" x2="{_f(x1)}" y2="{_f(py1)}" stroke="#9aa1ab" '
        'stroke-dasharray="3 3"/>'
    )
    if budget is not None:
        yb = sy(budget)
        parts.append(
            f'<line x1="{_f(px0)}" y1="{_f(yb)}" x2="{_f(px1)}" y2="{_f(yb)}" stroke="#a8071a" '
            'stroke-width="1.5" stroke-dasharray="6 4"/>'
        )
        parts.append(
            _svg_text(px1 + 6, yb + 4, f"budget: cosine ≥ {budget:g}", css='fill="#a8071a" font-size="11"')
        )
    parts.append(
        _svg_text(
            (px0 + px1) / 2,
            height - 22,
            "p50 relative to float ONNX Runtime (log scale; left of 1x is faster)",
            anchor="middle",
        )
    )
    parts.append(
        f'<text x="18" y="{_f((py0 + py1) / 2)}" text-anchor="middle" '
        f'transform="rotate(-90 18 {_f((py0 + py1) / 2)})">min cosine over outputs (higher is closer)</text>'
    )
    placed: list[tuple[float, float, float, float]] = []
    fx, fy = sx(1.0), sy(1.0)
    parts.append(
        f'<rect x="{_f(fx - 6)}" y="{_f(fy - 6)}" width="12" height="12" fill="#8A8F98" '
        'transform="rotate(45 ' + f'{_f(fx)} {_f(fy)})"><title>float model (reference)</title></rect>'
    )
    lx, ly, anchor = _place_label(fx, fy, "float", placed, width)
    parts.append(_svg_text(lx, ly, "float", anchor=anchor, css='fill="#5f6670"'))
    for p in sorted(points, key=lambda q: (not q["chosen"], q["name"])):
        x, y = sx(p["x"]), sy(p["y"])
        colour = "#1e6b34" if p["passed"] else "#a8071a"
        tip = f"{p['name']}: p50 x{p['x']:.2f} of float at {p['label']}, min cosine {p['y']:.4f}"
        if p["chosen"]:
            parts.append(
                f'<circle cx="{_f(x)}" cy="{_f(y)}" r="11" fill="none" stroke="#0072B2" stroke-width="2.5"/>'
            )
        parts.append(
            f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{6 if p["chosen"] else 5}" fill="{colour}" '
            f'fill-opacity="0.85" stroke="#fff"><title>{_e(tip)}</title></circle>'
        )
        text = p["name"] + (f" {_SHIPPED_MARK} shipped" if p["chosen"] else "")
        lx, ly, anchor = _place_label(x + (5 if p["chosen"] else 0), y, text, placed, width)
        weight = ' font-weight="700"' if p["chosen"] else ""
        parts.append(_svg_text(lx, ly, text, anchor=anchor, css=f'fill="{colour}"{weight}'))
    parts.append("</svg>")
    return "".join(parts)


def _int8_section(report: dict[str, Any]) -> str:
    quant = report["quantization"]
    calibration, formats = quant["calibration"], quant["formats"]
    points, unplotted = _int8_points(quant)
    table = quantization_table(report)
    chosen_rows = ["chosen" if row[1].startswith("SHIPPED") else "" for row in table[1]]
    first = _reference_stats(next((c["latency"] for c in quant["candidates"] if c["latency"]), []))
    at = f" at {first['label']}" if first else ""
    html = [
        '<section id="int8"><h2>Int8</h2>',
        f"<p>Mode <code>{_e(quant['mode'])}</code>; budget: {_e(quant['budget']['text'])}. Calibration: "
        f"<code>{_e(calibration['source'])}</code> ({_e(calibration['samples'])} samples, "
        f"{_e(calibration['method'])}); parity judged on {_e(calibration['evaluation_samples'])} held-out "
        f"samples. Formats: activations {_e(formats['activation'])}, weights {_e(formats['weight'])} "
        f"({_e(formats['reason'])}).</p>",
    ]
    if points:
        html.append(
            f'<figure id="int8-scatter">{_int8_scatter(quant, points)}<figcaption>Each candidate\'s p50'
            f"{_e(at)} relative to the float ONNX model (x, log scale) against its worst cosine over "
            "outputs (y). Green: within the parity budget; red: outside it; ringed: shipped; grey diamond: "
            "the float model.</figcaption></figure>"
        )
    else:
        html.append('<p id="int8-scatter">No candidate was built and timed, so there is nothing to plot.</p>')
    failed = [c for c in quant["candidates"] if c["error"]]
    if failed or unplotted:
        items = [f"<li><b>{_e(c['name'])}</b> failed to build: {_e(c['error'])}</li>" for c in failed]
        items += [f"<li>not plotted: {_e(reason)}</li>" for reason in unplotted]
        html.append(f'<ul class="notes" id="int8-failed">{"".join(items)}</ul>')
    html.append(_table_html(table, table_id="int8-table", numeric=(2, 4, 5, 6, 7), row_classes=chosen_rows))
    html.append("</section>")
    return "".join(html)


# ---- 5. stages, notes, environment ------------------------------------------------------------------------


def _stages_section(report: dict[str, Any]) -> str:
    headers, rows = stage_table(report)
    longest = max((s["seconds"] for s in report["stages"]), default=0.0) or 1.0
    body = []
    for stage, row in zip(report["stages"], rows, strict=True):
        status = stage["status"]
        cls = "pass" if status == "passed" else "fail" if status == "failed" else "none"
        share = 100.0 * stage["seconds"] / longest
        body.append(
            f'<tr><td>{_e(row[0])}</td><td class="{cls}">{_e(row[1])}</td>'
            f'<td class="num">{_e(row[2])}</td>'
            f'<td style="width:22%"><span class="stagebar" style="width:{share:.1f}%"></span></td>'
            f"<td>{_e(row[3])}</td></tr>"
        )
    head = "".join(f"<th>{_e(h)}</th>" for h in [*headers[:3], "", *headers[3:]])
    total = sum(s["seconds"] for s in report["stages"])
    return (
        f'<section><h2>Stages</h2><p>{total:.1f} s in all.</p><div class="table-wrap"><table id="stages">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _notes_section(report: dict[str, Any]) -> str:
    notes = report.get("notes") or []
    if not notes:
        return ""
    items = "".join(f"<li>{_e(note)}</li>" for note in notes)
    return f'<section id="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>'


def _environment_section(report: dict[str, Any]) -> str:
    env = report["environment"]
    packages = ", ".join(f"{_e(k)} {_e(v)}" for k, v in env.get("packages", {}).items() if v)
    timing = report.get("timing") or {}
    facts = [
        ("Python", _e(env.get("python", "-"))),
        ("Packages", packages or "-"),
        ("exporter", _e(env.get("exporter", "-"))),
        ("Platform", _e(env.get("platform", "-"))),
        ("CPU", _e(env.get("cpu", "-"))),
        ("CPU flags", _e(", ".join(env.get("cpu_flags", [])) or "no SIMD flags read")),
        (
            "Threads",
            f"{_e(env.get('threads', '-'))} of {_e(env.get('logical_cpus', '-'))} logical CPUs "
            f"({_e(env.get('usable_cpus', '-'))} usable)",
        ),
        ("Timing", ", ".join(f"{_e(k)} {_e(v)}" for k, v in timing.items()) or "-"),
    ]
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return f'<section><h2>Environment</h2><dl class="facts" id="environment">{rows}</dl></section>'


# ---- 6. optional sections ---------------------------------------------------------------------------------


def _optimization_summary(summary: dict[str, Any]) -> str:
    """One sentence on what shipped against the unoptimized model, when the pipeline recorded it."""
    baseline = summary.get("baseline") or {}
    timed = ", ".join(f"{t['label']} {_num(t['p50_ms'])} ms" for t in baseline.get("latency", []))
    speedup = summary.get("speedup_vs_unoptimized")
    text = f"Steps: {', '.join(summary.get('steps') or []) or 'none'}."
    if baseline:
        text += f" Unoptimized {baseline.get('label', '-')}: {timed or 'not timed'}."
    if summary.get("shipped"):
        text += f" Shipped {summary['shipped']}" + (
            f" (p50 x{1 / speedup:.2f} of unoptimized)" if speedup else ""
        )
        text += "."
    if summary.get("quantization_source"):
        text += f" Int8 starts from {summary['quantization_source']}."
    return f"<p>{_e(text)} A step is kept only if it verifies and is not slower than its input.</p>"


def _optimization_section(steps: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
    """Graph-optimization steps tried: kept or dropped, why, and the p50 each measured.

    Needs only ``name``, ``kept``, ``reason`` and ``latency`` per step; the input/result/build-time/fused
    columns appear when any step records them.
    """
    labels = list(dict.fromkeys(t["label"] for step in steps for t in step.get("latency") or []))
    extra = [key for key in ("source", "result") if any(step.get(key) for step in steps)]
    timed = any(step.get("seconds") is not None for step in steps)
    fused = any(step.get("fused") for step in steps)
    headers = [
        "step",
        *("input" if key == "source" else key for key in extra),
        "kept",
        "reason",
        *(f"p50 ms {label}" for label in labels),
        *(["build s"] if timed else []),
        *(["graph"] if fused else []),
    ]
    body = []
    baseline = (summary or {}).get("baseline")
    if baseline and baseline.get("latency"):  # the row every step's p50 is read against
        p50 = {t["label"]: t["p50_ms"] for t in baseline["latency"]}
        cells = [f"<td>unoptimized: {_e(baseline.get('label', '-'))}</td>", *("<td></td>" for _ in extra)]
        cells += ['<td class="none">baseline</td>', "<td></td>"]
        cells += [f'<td class="num">{_e(_num(p50.get(label)))}</td>' for label in labels]
        cells += ["<td></td>"] * (timed + fused)
        body.append(f'<tr class="candidate">{"".join(cells)}</tr>')
    for step in steps:
        p50 = {t["label"]: t["p50_ms"] for t in step.get("latency") or []}
        kept = bool(step["kept"])
        cells = [f"<td>{_e(step['name'])}</td>", *(f"<td>{_e(step.get(key) or '-')}</td>" for key in extra)]
        cells.append(f'<td class="{"pass" if kept else "fail"}">{"kept" if kept else "dropped"}</td>')
        cells.append(f"<td>{_e(step.get('reason') or '')}</td>")
        cells += [f'<td class="num">{_e(_num(p50.get(label)))}</td>' for label in labels]
        if timed:
            seconds = step.get("seconds")
            cells.append(f'<td class="num">{"-" if seconds is None else _e(f"{seconds:.1f}")}</td>')
        if fused:
            graph = ", ".join(f"{k} {v}" for k, v in (step.get("fused") or {}).items())
            cells.append(f"<td>{_e(graph or '-')}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return (
        "<section><h2>Graph optimization</h2>"
        + (_optimization_summary(summary) if summary else "")
        + '<div class="table-wrap"><table id="optimization">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def _resources_section(resources: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    if resources.get("peak_rss_mb") is not None:
        rows.append(["peak RSS", f"{resources['peak_rss_mb']:.1f} MB"])
    rows += [
        [f"load {backend}", f"{seconds:.3f} s"]
        for backend, seconds in (resources.get("load_seconds") or {}).items()
    ]
    return (
        "<section><h2>Resources</h2>"
        f"{_table_html((['measure', 'value'], rows), table_id='resources', numeric=(1,))}</section>"
    )


# ---- the page ---------------------------------------------------------------------------------------------


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string; write it next to report.json as ``report.html``."""
    sections = [
        _header(report),
        _nonfinite_section(report),
        _parity_section(report),
        _latency_section(report),
    ]
    if report.get("optimization"):  # before int8, as in the pipeline: int8 starts from the optimized graph
        sections.append(_optimization_section(report["optimization"], report.get("optimization_summary")))
    if report.get("quantization"):
        sections.append(_int8_section(report))
    if report.get("resources"):
        sections.append(_resources_section(report["resources"]))
    sections += [_stages_section(report), _notes_section(report), _environment_section(report)]
    title = f"Export report: {report['name']} ({str(report.get('status', 'unknown')).upper()})"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(s for s in sections if s)
        + "\n</main>\n</body>\n</html>\n"
    )

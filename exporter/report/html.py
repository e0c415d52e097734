"""``report.html``: one self-contained page (inline CSS and SVG, no scripts, fonts or URLs) built from
``report.json``'s dict, so it opens offline, from a CI artifact store, or attached to a ticket.

Cell texts come from the table builders in ``report.markdown`` (the ones ``report.md`` and the terminal
summary use), so the numbers on the page never disagree with the other two. Every string taken from the
report is escaped: checkpoint paths, notes and error messages are whatever the model and its tools said.
The output is a pure function of the report (no clock, no randomness), so two renders diff cleanly.
The SVG charts are built in ``report.svg``, the chart-free sections in ``report.html_sections``.
"""

from __future__ import annotations

from typing import Any

from exporter.quantize.shipping import REFERENCE_RUNTIME, candidate_label
from exporter.report.decoder_html import decoder_sections
from exporter.report.html_sections import (
    environment_section,
    failed_targets_section,
    notes_section,
    optimization_section,
    resources_section,
    stages_section,
    table_html,
    timing_trust_html,
)
from exporter.report.lossy import top1_note
from exporter.report.markdown import (
    SYNTHETIC_WARNING,
    latency_table,
    nonfinite_table,
    nonfinite_warning,
    parity_matrix,
    parity_table,
    quantization_table,
)
from exporter.report.svg import SHIPPED_MARK, esc, int8_scatter, latency_chart

__all__ = ["render_html"]

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


def _size(num_bytes: int) -> str:
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.1f} {unit}"
    return f"{num_bytes} B"


# ---- 1. header --------------------------------------------------------------------------------------------


def _header(report: dict[str, Any]) -> str:
    status = str(report.get("status", "unknown")).lower()
    source = report["source"]
    facts: list[tuple[str, str]] = [
        (
            "Checkpoint",
            f"<code>{esc(source['checkpoint'])}</code> ({esc(source['format'])}, "
            f"{source['parameter_count']:,} parameters, {esc(_size(source['file_size']))}, "
            f"sha256 <code>{esc(source['sha256'][:16])}…</code>)",
        )
    ]
    if source.get("model_class"):
        facts.append(("Model class", f"<code>{esc(source['model_class'])}</code>"))
    date = report.get("created_utc") or report.get("date")
    if date:
        facts.append(("Date", esc(date)))
    inputs = report.get("input_spec", {}).get("inputs", [])
    if inputs:
        specs = ", ".join(f"<code>{esc(i['spec'])}</code>" for i in inputs)
        facts.append(("Inputs", f"{specs} (seed {esc(report.get('seed'))})"))
    conversion = report.get("conversion")
    if conversion:
        facts.append(
            (
                "ONNX",
                f"opset {esc(conversion['opset'])}, {esc(conversion['exporter'])} exporter, "
                f"{esc(conversion['node_count'])} nodes as exported, "
                f"{esc(conversion['simplified_node_count'] or '-')} simplified",
            )
        )
    shipped = ", ".join(
        f"{esc(b['backend'])}: {esc(b['shipped'])} ({'verified' if b['passed'] else 'FAILED'})"
        for b in report["backends"]
    )
    facts.append(("Shipped", shipped))
    artifacts = report.get("artifacts") or {}
    if artifacts:
        listed = ", ".join(f"{esc(k)}: <code>{esc(v)}</code>" for k, v in artifacts.items())
        facts.append(("Artifacts", listed))
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return (
        f'<header id="summary"><h1>Export report: {esc(report["name"])} '
        f'<span class="badge {"passed" if status == "passed" else "failed"}" id="status">'
        f"{esc(status.upper())}</span></h1>"
        f'<dl class="facts">{rows}</dl></header>'
    )


def _nonfinite_section(report: dict[str, Any]) -> str:
    """A warning block right under the header: NaN/Inf in the reference makes a parity pass meaningless."""
    warning = nonfinite_warning(report)
    if warning is None:
        return ""
    table = table_html(nonfinite_table(report), table_id="nonfinite-table", numeric=(2, 3, 4, 5))
    return f'<section class="warning" id="nonfinite"><p>{esc(warning)}</p>{table}</section>'


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
    artifact = esc(parity["artifact"]) + (f" {SHIPPED_MARK} shipped" if shipped else "")
    html = [f"<td>{esc(parity['backend'])}</td><td>{artifact}</td>"]
    if not shipped and all(cells.get(name, "-") == "-" for name in names):
        reasons = "; ".join(_failures(parity)) or "not run on these cases"
        html.append(f'<td class="fail" colspan="{len(names)}">{esc(reasons)}</td>')
    else:
        for name in names:
            text = cells.get(name, "-")
            title = f' title="{esc(titles[name])}"' if name in titles else ""
            html.append(f'<td class="{_cell_class(text)}"{title}>{esc(text)}</td>')
    if shipped:
        verdict = "verified" if parity["passed"] else "FAILED"
    else:
        verdict = "not shipped (" + ("passed)" if parity["passed"] else "failed)")
    cls = "pass" if parity["passed"] else "fail"
    if not shipped:
        cls = "none"
    html.append(f'<td class="{cls}">{esc(verdict)}</td>')
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
    head = "".join(f"<th>{esc(h)}</th>" for h in [*headers, "verdict"])
    tolerance = report["parity"][0]["tolerance"] if report["parity"] else {"atol": "-", "rtol": "-"}
    arbitrated = any(p.get("float64_arbitrated") for p in report["parity"])
    legend = (
        '<p class="legend"><span class="swatch pass"></span>pass <span class="swatch fail"></span>fail '
        '<span class="swatch arb"></span>pass by float64 arbitration (<code>*</code>) · cells show the '
        f"worst max abs diff over outputs · {SHIPPED_MARK} marks the artifact each backend ships; the "
        "candidates it tried before are dimmed under it · hover a cell for every output's diffs</p>"
    )
    details = table_html(parity_table(report), numeric=(4, 5, 6))
    return (
        '<section id="parity"><h2>Parity</h2>'
        "<p>Each element passes when |a - b| ≤ atol + rtol·|b| against PyTorch eager float32 "
        f"(atol={esc(tolerance['atol'])}, rtol={esc(tolerance['rtol'])})"
        + ("; some artifacts only passed after re-running the reference in float64." if arbitrated else ".")
        + "</p>"
        + legend
        + f'<div class="table-wrap"><table id="parity-matrix"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
        "<details><summary>Parity details: every candidate, case and output</summary>"
        f"{details}</details></section>"
    )


# ---- 3. latency -------------------------------------------------------------------------------------------


def _latency_section(report: dict[str, Any]) -> str:
    if not report["latency"]:
        return '<section id="latency"><h2>Latency</h2><p id="latency-chart">Not measured.</p></section>'
    timing = report.get("timing") or {}
    threads = report["latency"][0].get("threads")
    how = (
        f"Same threads for every backend ({esc(threads)}); {esc(timing.get('warmup', '-'))} warm-up runs, "
        f"then at least {esc(timing.get('min_runs', '-'))} runs and {esc(timing.get('min_seconds', '-'))} s. "
        "Speedup is against eager PyTorch at the same batch; red text is slower than eager."
    )
    return (
        f'<section id="latency"><h2>Latency</h2><p>{how}</p>{timing_trust_html(report)}'
        f'<figure id="latency-chart">{latency_chart(report)}'
        "<figcaption>p50 latency per backend (shorter is faster), grouped by batch.</figcaption></figure>"
        f"{table_html(latency_table(report), table_id='latency-table', numeric=range(2, 8))}</section>"
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
                "name": candidate_label(c["name"], c.get("runtime", REFERENCE_RUNTIME)),
                "x": 1.0 / speedup,
                "y": min(o["min_cosine"] for o in c["outputs"]),
                "label": stats["label"] if stats else "",
                "passed": c["budget_passed"],
                "chosen": c["chosen"],
            }
        )
    return points, unplotted


def _int8_section(report: dict[str, Any]) -> str:
    quant = report["quantization"]
    calibration, formats = quant["calibration"], quant["formats"]
    points, unplotted = _int8_points(quant)
    table = quantization_table(report)
    chosen_rows = ["chosen" if row[1].startswith("SHIPPED") else "" for row in table[1]]
    first = _reference_stats(next((c["latency"] for c in quant["candidates"] if c["latency"]), []))
    at = f" at {first['label']}" if first else ""
    html = [
        '<section id="int8"><h2>Lossy candidates (int8, int4, bf16)</h2>',
        f"<p>Mode <code>{esc(quant['mode'])}</code>; budget: {esc(quant['budget']['text'])}. Calibration: "
        f"<code>{esc(calibration['source'])}</code> ({esc(calibration['samples'])} samples, "
        f"{esc(calibration['method'])}); parity judged on {esc(calibration['evaluation_samples'])} held-out "
        f"samples. Formats: activations {esc(formats['activation'])}, weights {esc(formats['weight'])} "
        f"({esc(formats['reason'])}).</p>",
    ]
    if calibration.get("judged_on") == "synthetic":
        html.append(f'<div class="warning"><p>{esc(SYNTHETIC_WARNING)}</p></div>')
    if points:
        html.append(
            f'<figure id="int8-scatter">{int8_scatter(quant, points)}<figcaption>Each candidate\'s p50'
            f"{esc(at)} relative to the float model in its own runtime (x, log scale: ONNX Runtime, or "
            "OpenVINO at f32) against its worst cosine over outputs (y). Green: within the parity budget; "
            "red: outside it; ringed: shipped; grey diamond: the float model.</figcaption></figure>"
        )
    else:
        html.append('<p id="int8-scatter">No candidate was built and timed, so there is nothing to plot.</p>')
    failed = [c for c in quant["candidates"] if c["error"]]
    if failed or unplotted:
        items = [f"<li><b>{esc(c['name'])}</b> failed to build: {esc(c['error'])}</li>" for c in failed]
        items += [f"<li>not plotted: {esc(reason)}</li>" for reason in unplotted]
        html.append(f'<ul class="notes" id="int8-failed">{"".join(items)}</ul>')
    html.append(table_html(table, table_id="int8-table", numeric=(2, 4, 5, 6, 7), row_classes=chosen_rows))
    if note := top1_note(report):
        html.append(f'<p id="int8-top1">{esc(note)}</p>')
    html.append("</section>")
    return "".join(html)


# ---- the page ---------------------------------------------------------------------------------------------


def render_html(report: dict[str, Any]) -> str:
    """The whole page as one string; write it next to report.json as ``report.html``."""
    sections = [
        _header(report),
        _nonfinite_section(report),
        failed_targets_section(report),
        _parity_section(report),
        _latency_section(report),
        *decoder_sections(report),
    ]
    if report.get("optimization"):  # before int8, as in the pipeline: int8 starts from the optimized graph
        sections.append(optimization_section(report["optimization"], report.get("optimization_summary")))
    if report.get("quantization"):
        sections.append(_int8_section(report))
    if report.get("resources"):
        sections.append(resources_section(report["resources"]))
    sections += [stages_section(report), notes_section(report), environment_section(report)]
    title = f"Export report: {report['name']} ({str(report.get('status', 'unknown')).upper()})"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n<main>\n"
        + "\n".join(s for s in sections if s)
        + "\n</main>\n</body>\n</html>\n"
    )

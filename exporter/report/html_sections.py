"""The plainer parts of ``report.html``: the table renderer, and the sections that hold no chart (graph
optimization, resources, stages, notes, environment). Every string from the report goes through ``esc``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from exporter.benchmark.trust import UNTRUSTED_NOTE, probe_sentence, warning_sentences
from exporter.report.lossy import int8_source
from exporter.report.markdown import Table, _num, failed_targets_heading, stage_table
from exporter.report.svg import esc

__all__ = [
    "environment_section",
    "failed_targets_section",
    "notes_section",
    "optimization_section",
    "resources_section",
    "stages_section",
    "table_html",
    "timing_trust_html",
]


def table_html(
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
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for index, row in enumerate(rows):
        cls = f' class="{row_classes[index]}"' if row_classes and row_classes[index] else ""
        cells = "".join(
            f'<td class="num">{esc(cell)}</td>' if column in right else f"<td>{esc(cell)}</td>"
            for column, cell in enumerate(row)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return (
        f'<div class="table-wrap"><table{ident}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def timing_trust_html(report: dict[str, Any]) -> str:
    """Above the latency chart: the thread probe's finding, and why figures are not trustworthy."""
    probe = probe_sentence(report)
    html = f'<p id="thread-probe">{esc(probe)}</p>' if probe else ""
    warnings = warning_sentences(report)
    if warnings:
        items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
        html += (
            f'<div class="warning" id="timing-warnings"><p>{esc(UNTRUSTED_NOTE)}</p>'
            f'<ul class="notes">{items}</ul></div>'
        )
    return html


# ---- stages, notes, environment ---------------------------------------------------------------------------


def stages_section(report: dict[str, Any]) -> str:
    headers, rows = stage_table(report)
    longest = max((s["seconds"] for s in report["stages"]), default=0.0) or 1.0
    body = []
    for stage, row in zip(report["stages"], rows, strict=True):
        status = stage["status"]
        cls = "pass" if status == "passed" else "fail" if status == "failed" else "none"
        share = 100.0 * stage["seconds"] / longest
        body.append(
            f'<tr><td>{esc(row[0])}</td><td class="{cls}">{esc(row[1])}</td>'
            f'<td class="num">{esc(row[2])}</td>'
            f'<td style="width:22%"><span class="stagebar" style="width:{share:.1f}%"></span></td>'
            f'<td class="num">{esc(row[3])}</td><td>{esc(row[4])}</td></tr>'
        )
    head = "".join(f"<th>{esc(h)}</th>" for h in [*headers[:3], "", *headers[3:]])
    total = sum(s["seconds"] for s in report["stages"])
    return (
        f'<section><h2>Stages</h2><p>{total:.1f} s in all.</p><div class="table-wrap"><table id="stages">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def notes_section(report: dict[str, Any]) -> str:
    notes = report.get("notes") or []
    if not notes:
        return ""
    items = "".join(f"<li>{esc(note)}</li>" for note in notes)
    return f'<section id="notes"><h2>Notes</h2><ul class="notes">{items}</ul></section>'


def environment_section(report: dict[str, Any]) -> str:
    env = report["environment"]
    packages = ", ".join(f"{esc(k)} {esc(v)}" for k, v in env.get("packages", {}).items() if v)
    timing = report.get("timing") or {}
    facts = [
        ("Python", esc(env.get("python", "-"))),
        ("Packages", packages or "-"),
        ("exporter", esc(env.get("exporter", "-"))),
        ("Platform", esc(env.get("platform", "-"))),
        ("CPU", esc(env.get("cpu", "-"))),
        ("CPU flags", esc(", ".join(env.get("cpu_flags", [])) or "no SIMD flags read")),
        (
            "Threads",
            f"{esc(env.get('threads', '-'))} of {esc(env.get('logical_cpus', '-'))} logical CPUs "
            f"({esc(env.get('usable_cpus', '-'))} usable)",
        ),
        ("Timing", ", ".join(f"{esc(k)} {esc(v)}" for k, v in timing.items()) or "-"),
    ]
    rows = "".join(f"<dt>{label}</dt><dd>{value}</dd>" for label, value in facts)
    return f'<section><h2>Environment</h2><dl class="facts" id="environment">{rows}</dl></section>'


# ---- optional sections: graph optimization, resources -----------------------------------------------------


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
        source = int8_source(summary)
        text += f" {source[0].upper()}{source[1:]}."
    return f"<p>{esc(text)} A step is kept only if it verifies and is not slower than its input.</p>"


def optimization_section(steps: list[dict[str, Any]], summary: dict[str, Any] | None) -> str:
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
        cells = [f"<td>unoptimized: {esc(baseline.get('label', '-'))}</td>", *("<td></td>" for _ in extra)]
        cells += ['<td class="none">baseline</td>', "<td></td>"]
        cells += [f'<td class="num">{esc(_num(p50.get(label)))}</td>' for label in labels]
        cells += ["<td></td>"] * (timed + fused)
        body.append(f'<tr class="candidate">{"".join(cells)}</tr>')
    for step in steps:
        p50 = {t["label"]: t["p50_ms"] for t in step.get("latency") or []}
        kept = bool(step["kept"])
        cells = [f"<td>{esc(step['name'])}</td>", *(f"<td>{esc(step.get(key) or '-')}</td>" for key in extra)]
        cells.append(f'<td class="{"pass" if kept else "fail"}">{"kept" if kept else "dropped"}</td>')
        cells.append(f"<td>{esc(step.get('reason') or '')}</td>")
        cells += [f'<td class="num">{esc(_num(p50.get(label)))}</td>' for label in labels]
        if timed:
            seconds = step.get("seconds")
            cells.append(f'<td class="num">{"-" if seconds is None else esc(f"{seconds:.1f}")}</td>')
        if fused:
            graph = ", ".join(f"{k} {v}" for k, v in (step.get("fused") or {}).items())
            cells.append(f"<td>{esc(graph or '-')}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    return (
        "<section><h2>Graph optimization</h2>"
        + (_optimization_summary(summary) if summary else "")
        + '<div class="table-wrap"><table id="optimization">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table></div></section>"
    )


def resources_section(resources: dict[str, Any]) -> str:
    rows: list[list[str]] = []
    if resources.get("peak_rss_mb") is not None:
        rows.append(["peak RSS", f"{resources['peak_rss_mb']:.1f} MB"])
    if resources.get("estimated_peak_mb") is not None:
        rows.append(["estimated peak (load stage)", f"{resources['estimated_peak_mb']:.1f} MB"])
    rows += [
        [f"load {backend}", f"{seconds:.3f} s"]
        for backend, seconds in (resources.get("load_seconds") or {}).items()
    ]
    return (
        "<section><h2>Resources</h2>"
        f"{table_html((['measure', 'value'], rows), table_id='resources', numeric=(1,))}</section>"
    )


def failed_targets_section(report: dict[str, Any]) -> str:
    """A partial export's failed targets right under the header, each with the converter's own words."""
    heading = failed_targets_heading(report)
    if heading is None:
        return ""
    items = []
    for failure in report["failed_targets"]:
        explanation = failure.get("explanation")
        summary = "<summary>The converter's full explanation</summary>"
        details = f"<details>{summary}<pre>{esc(explanation)}</pre></details>" if explanation else ""
        items.append(
            f"<li><strong>{esc(failure['target'])}</strong> ({esc(failure['backend'])}): "
            f"{esc(failure['error'])}{details}</li>"
        )
    return (
        f'<section class="warning" id="failed-targets"><h2>Targets that failed to convert</h2>'
        f"<p>{esc(heading)}</p><ul>{''.join(items)}</ul></section>"
    )

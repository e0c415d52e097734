"""Report rendering: the tables people read, built once from ``report.json``'s dict.

The terminal summary (rich) and ``report.md`` both use these rows, so they never disagree.
"""

from __future__ import annotations

from typing import Any

from exporter.backends.registry import backends
from exporter.benchmark.trust import markdown_lines, matrix_speedup, speedup_cell, timing_cell
from exporter.report.decoder import markdown_decoder
from exporter.report.lossy import SYNTHETIC_WARNING, Table, int8_source, quantization_table, top1_note

__all__ = [
    "REPORT_SCHEMA_VERSION",
    "SYNTHETIC_WARNING",
    "Table",
    "failed_targets_heading",
    "latency_matrix",
    "latency_table",
    "nonfinite_table",
    "nonfinite_warning",
    "optimization_table",
    "parity_matrix",
    "parity_table",
    "quantization_table",
    "render_markdown",
    "stage_table",
]

REPORT_SCHEMA_VERSION = 1


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value == 0:
        return "0"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"


def stage_table(report: dict[str, Any]) -> Table:
    """Name, status, time, peak RSS (reports written before stages recorded it show "-"), detail."""
    rows = [
        [s["name"], s["status"], f"{s['seconds']:.2f} s", _peak(s.get("peak_rss_mb")), s["detail"]]
        for s in report["stages"]
    ]
    return ["stage", "status", "time", "peak RSS", "detail"], rows


def _peak(megabytes: float | None) -> str:
    return f"{megabytes / 1024:.2f} GiB" if megabytes else "-"


def nonfinite_table(report: dict[str, Any]) -> Table:
    """Reference outputs holding NaN/Inf, per shape case; no rows for a model whose outputs are finite."""
    headers = ["case", "output", "NaN", "+Inf", "-Inf", "elements"]
    rows = [
        [
            entry["case"],
            entry["output"],
            str(entry["nan"]),
            str(entry.get("posinf", entry["inf"])),
            str(entry.get("neginf", 0)),
            str(entry["elements"]),
        ]
        for entry in report.get("nonfinite") or []  # absent from reports written before it was recorded
    ]
    return headers, rows


def nonfinite_warning(report: dict[str, Any]) -> str | None:
    """The sentence above the non-finite table: why NaN/Inf in the reference matters to a parity pass."""
    if not report.get("nonfinite"):
        return None
    gated = report.get("settings", {}).get("fail_on_nonfinite", False)
    return (
        "Warning: the PyTorch model's own outputs contain NaN/Inf on the golden inputs. A backend passes "
        "parity on these elements by having NaN/Inf in the same places, which says nothing about the values "
        "the model was meant to compute. "
        + (
            "--fail-on-nonfinite is set, so the export fails."
            if gated
            else "Pass --fail-on-nonfinite to fail the export on it."
        )
    )


def parity_table(report: dict[str, Any]) -> Table:
    """Per candidate model, shape case and output: diffs, cosine and the verdict."""
    headers = ["model", "case", "input shapes", "output", "max abs", "max rel", "cosine", "result"]
    rows = []
    for parity in report["parity"]:
        for case in parity["cases"]:
            shapes = " ".join(f"{n}[{','.join(map(str, s))}]" for n, s in case["input_shapes"].items())
            if case["error"]:
                rows.append(
                    [parity["artifact"], case["case"], shapes, "-", "-", "-", "-", f"FAIL: {case['error']}"]
                )
            for output in case["outputs"]:
                verdict = "pass" if output["passed"] else f"FAIL: {output['message']}"
                cosine = None if output["cosine"] is None else output["cosine"]
                rows.append(
                    [
                        parity["artifact"],
                        case["case"],
                        shapes,
                        output["name"],
                        _num(output["max_abs_diff"]),
                        _num(output["max_rel_diff"]),
                        "-" if cosine is None else f"{cosine:.6f}",
                        verdict,
                    ]
                )
    return headers, rows


def latency_table(report: dict[str, Any]) -> Table:
    """Per backend and shape: percentiles, throughput, speedup vs eager, runs, and the timing warnings."""
    headers = ["backend", "shape", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "vs eager", "runs", "timing"]
    rows = [
        [
            s["backend"],
            s["label"],
            _num(s["p50_ms"]),
            _num(s["p90_ms"]),
            _num(s["p99_ms"]),
            f"{s['throughput_per_s']:.1f}",
            speedup_cell(report, s),
            str(s["runs"]),
            timing_cell(report, s),
        ]
        for s in report["latency"]
    ]
    return headers, rows


def parity_matrix(report: dict[str, Any]) -> Table:
    """Backend x shape case for every backend's shipped artifact: verdict and worst abs diff over outputs."""
    shipped = [
        next(p for p in report["parity"] if p["backend"] == b["backend"] and p["artifact"] == b["shipped"])
        for b in report["backends"]
    ]
    names = list(dict.fromkeys(c["case"] for p in shipped for c in p["cases"]))
    headers = ["backend", "artifact", *names]
    rows = []
    for parity in shipped:
        by_case = {c["case"]: c for c in parity["cases"]}
        cells = []
        for name in names:
            case = by_case.get(name)
            if case is None:
                cells.append("-")
                continue
            passed = case["passed"]
            diffs = [o["max_abs_diff"] for o in case["outputs"] if o["max_abs_diff"] is not None]
            worst = f" {_num(max(diffs), 2)}" if diffs else ""
            if case["error"]:
                cells.append("FAIL error")
            else:
                arbitrated = "*" if parity.get("float64_arbitrated") and passed else ""
                cells.append(("pass" if passed else "FAIL") + worst + arbitrated)
        artifact = parity["artifact"]
        rows.append([parity["backend"], artifact, *cells])
    return headers, rows


def latency_matrix(report: dict[str, Any]) -> Table:
    """Backend x batch: p50 in ms and speedup against eager PyTorch at the same batch."""
    labels = list(dict.fromkeys(s["label"] for s in report["latency"]))
    backends = list(dict.fromkeys(s["backend"] for s in report["latency"]))
    cells = {(s["backend"], s["label"]): s for s in report["latency"]}
    rows = []
    for backend in backends:
        row = [backend]
        for label in labels:
            stats = cells.get((backend, label))
            if stats is None:
                row.append("-")
                continue
            row.append(_num(stats["p50_ms"]) + matrix_speedup(report, stats))
        rows.append(row)
    return ["backend", *(f"p50 ms {label}" for label in labels)], rows


def optimization_table(report: dict[str, Any]) -> Table:
    """Each graph-optimization step: its input, kept or dropped and why, and the p50 it measured."""
    headers = ["step", "input", "result", "kept", "reason", "p50 ms (step decision)", "build s"]
    rows = [
        [
            r["name"],
            r["source"],
            r["result"],
            "yes" if r["kept"] else "no",
            r["reason"],
            ", ".join(f"{t['label']} {_num(t['p50_ms'])}" for t in r["latency"]) or "-",
            f"{r['seconds']:.1f}",
        ]
        for r in report.get("optimization") or []
    ]
    return headers, rows


def _markdown_table(table: Table) -> str:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _backend_lines(report: dict[str, Any]) -> list[str]:
    """Each backend's own lines (conversion, what shipped), by its registered description."""
    lines = []
    known = {spec.name: spec for spec in backends()}
    for entry in report["backends"]:
        spec = known.get(entry["backend"])  # a report from an exporter with other backends: skip
        if spec is not None:
            lines += spec.describe(entry)
    return lines


def _nonfinite_markdown(report: dict[str, Any]) -> list[str]:
    warning = nonfinite_warning(report)
    if warning is None:
        return []
    return [f"> **{warning}**", "", _markdown_table(nonfinite_table(report)), ""]


def render_markdown(report: dict[str, Any]) -> str:
    parts = [
        *_markdown_header(report),
        *_markdown_failed_targets(report),
        *_markdown_parity(report),
        *_markdown_latency(report),
        *markdown_decoder(report),
        *_markdown_optimization(report),
        *_markdown_int8(report),
    ]
    if report["notes"]:
        parts += ["", "## Notes", "", *(f"- {note}" for note in report["notes"])]
    return "\n".join(parts) + "\n"


def _markdown_header(report: dict[str, Any]) -> list[str]:
    env = report["environment"]
    packages = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    source = report["source"]
    return [
        f"# Export report: {report['name']}",
        "",
        f"**Status: {report['status'].upper()}**",
        "",
        *_nonfinite_markdown(report),
        f"- Source: `{source['checkpoint']}` ({source['format']}, {source['parameter_count']:,} parameters, "
        f"{source['file_size']:,} bytes, sha256 `{source['sha256'][:16]}...`)",
        *_backend_lines(report),
        f"- Environment: Python {env['python']}, {packages}",
        f"- Machine: {env['cpu']} ({', '.join(env['cpu_flags']) or 'no SIMD flags read'}), "
        f"{env['threads']} threads of {env['logical_cpus']} logical CPUs",
        f"- Inputs: {', '.join(i['spec'] for i in report['input_spec']['inputs'])} (seed {report['seed']})",
        "",
        "## Stages",
        "",
        _markdown_table(stage_table(report)),
        "",
    ]


def failed_targets_heading(report: dict[str, Any]) -> str | None:
    """The sentence above a partial export's failed targets (None when every target was built)."""
    failed = report.get("failed_targets") or []  # absent from reports written before partial exports
    if not failed:
        return None
    names = ", ".join(f"{f['target']} ({f['backend']})" for f in failed)
    verb = "is" if len(failed) == 1 else "are"
    return (
        f"Partial export (exit 6): {names} failed to convert and {verb} not in this folder; every other "
        "target was verified and written. Leave a target out with --skip TARGET (recipe [export] skip), "
        "or fix what the converter says below."
    )


def _markdown_failed_targets(report: dict[str, Any]) -> list[str]:
    heading = failed_targets_heading(report)
    if heading is None:
        return []
    lines = ["## Targets that failed to convert", "", heading, ""]
    for failure in report["failed_targets"]:
        lines.append(f"- **{failure['target']}** ({failure['backend']}): {failure['error']}")
        if failure.get("explanation"):
            lines += ["", "  The converter's full explanation:", "", *_fenced(failure["explanation"])]
        lines.append("")
    return lines


def _fenced(text: str) -> list[str]:
    """A long error as an indented ``~~~~`` block under a list item (a fence inside it is broken up)."""
    body = text.replace("~~~~", "~ ~ ~ ~").splitlines()
    return ["  ~~~~text", *(f"  {line}".rstrip() for line in body), "  ~~~~"]


def _markdown_parity(report: dict[str, Any]) -> list[str]:
    tolerance = report["parity"][0]["tolerance"]
    return [
        "## Parity matrix (shipped artifact of each backend x shape case)",
        "",
        "Element passes when |a - b| <= atol + rtol * |b| against PyTorch eager float32 "
        f"(atol={tolerance['atol']:g}, rtol={tolerance['rtol']:g}); cells show the worst max abs diff; "
        "`*` marks a pass by float64 arbitration.",
        "",
        _markdown_table(parity_matrix(report)),
        "",
        "## Parity details (every candidate, case and output)",
        "",
        _markdown_table(parity_table(report)),
        "",
    ]


def _markdown_latency(report: dict[str, Any]) -> list[str]:
    if not report["latency"]:
        return ["## Latency", "", "Not measured."]
    timing = report["timing"]
    return [
        "## Latency",
        "",
        f"Same threads for every backend; {timing['warmup']} warm-up runs, then every backend timed in "
        f"alternating blocks until each has at least {timing['min_runs']} runs and "
        f"{timing['min_seconds']} s. Speedup is against eager PyTorch.",
        "",
        *markdown_lines(report),
        _markdown_table(latency_matrix(report)),
        "",
        _markdown_table(latency_table(report)),
    ]


def _markdown_optimization(report: dict[str, Any]) -> list[str]:
    summary = report.get("optimization_summary")
    if not summary:
        return []
    baseline = ", ".join(f"{t['label']} {_num(t['p50_ms'])} ms" for t in summary["baseline"]["latency"])
    speedup = summary["speedup_vs_unoptimized"]
    return [
        "",
        "## Graph optimization",
        "",
        f"Steps: {', '.join(summary['steps']) or 'none'}. Unoptimized `{summary['baseline']['label']}`: "
        f"{baseline}. Shipped `{summary['shipped']}`"
        + (f" (p50 x{1 / speedup:.2f} of unoptimized)" if speedup else "")
        + f"; {int8_source(summary)}. "
        "A step is kept only if it verifies and is not slower than its input.",
        "",
        _markdown_table(optimization_table(report)),
    ]


def _markdown_int8(report: dict[str, Any]) -> list[str]:
    quant = report.get("quantization")
    if not quant:
        return []
    calibration = quant["calibration"]
    formats = quant["formats"]
    return [
        "",
        "## Lossy candidates (int8, int4, bf16)",
        "",
        f"Mode `{quant['mode']}`; budget: {quant['budget']['text']}. "
        f"Calibration: {calibration['source']} "
        f"({calibration['samples']} samples, {calibration['method']}); "
        f"parity judged on {calibration['evaluation_samples']} held-out samples from "
        f"{calibration['evaluation_source']}. Formats: activations {formats['activation']}, weights "
        f"{formats['weight']} ({formats['reason']}). "
        "Size and p50 are ratios to the float ONNX model in ONNX Runtime, timed side by side in alternating "
        "blocks.",
        *(["", f"**{SYNTHETIC_WARNING}**"] if calibration.get("judged_on") == "synthetic" else []),
        "",
        _markdown_table(quantization_table(report)),
        *(["", note] if (note := top1_note(report)) else []),
        *_markdown_candidate_failures(quant),
    ]


def _markdown_candidate_failures(quant: dict[str, Any]) -> list[str]:
    """Candidates that failed to build, each with the whole error its table row cuts to one line."""
    failed = [c for c in quant.get("candidates", []) if c.get("explanation")]
    lines = ["", "Candidates that failed to build, in full:"] if failed else []
    for candidate in failed:
        lines += ["", f"- `{candidate['name']}`:", "", *_fenced(candidate["explanation"])]
    return lines

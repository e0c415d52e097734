"""The lossy candidates' table and warnings, shared by report.md, report.html and the terminal."""

from __future__ import annotations

from typing import Any

__all__ = ["SYNTHETIC_WARNING", "quantization_table"]

Table = tuple[list[str], list[list[str]]]

SYNTHETIC_WARNING = (
    "Judged on synthetic inputs only: the lossy models' parity was measured on inputs drawn from the spec, "
    "which proves nothing about real data; re-export with --calibration FILE.npz of real inputs."
)


def quantization_table(report: dict[str, Any]) -> Table:
    """One row per lossy candidate (int8, bf16): verdict, size and speed against the float model of its own
    runtime, its p50, worst parity over outputs."""
    headers = [
        "candidate",
        "status",
        "size vs float",
        "p50 ms",
        "p50 vs its runtime's float",
        "min cosine",
        "SQNR dB",
        "top-1 agree",
        "accuracy",
        "float layers",
    ]
    quant = report["quantization"]
    rows = []
    if quant["float"]["accuracy"] is not None:
        accuracy = f"{quant['float']['accuracy']:.4f}"
        rows.append(["float (reference)", "-", "1.00x", "-", "1.00x", "-", "-", "-", accuracy, "-"])
    files = {"onnxruntime": "model.int8.onnx", "openvino": "model.lossy.xml"}
    for c in quant["candidates"]:
        runtime = c.get("runtime", "onnxruntime")
        outputs = c["outputs"]
        if c["error"]:
            status = f"FAILED to build: {c['error']}"
        elif not c["budget_passed"]:
            misses = [o["message"] for o in outputs if o["message"]] + c["shape_errors"]
            status = "FAIL budget: " + "; ".join(misses[:2])
        else:
            status = "within budget"
        if c["chosen"]:
            status = f"SHIPPED as {files.get(runtime, runtime)}, " + status
        if quant.get("fastest") == c["name"]:
            status += ", FASTEST within budget"
        elif c["budget_passed"] and not c["faster_than_float"]:
            status += ", SLOWER than float"
        per_batch = ", ".join(
            f"{s['label']} x{1 / s['speedup_vs_float']:.2f}" for s in c["latency"] if s["speedup_vs_float"]
        )
        top1 = [o["top1_agreement"] for o in outputs if o["top1_agreement"] is not None]
        rows.append(
            [
                c["name"] if runtime == "onnxruntime" else f"{c['name']} ({runtime})",
                status,
                "-" if c["size_ratio"] is None else f"{c['size_ratio']:.2f}x",
                ", ".join(f"{s['label']} {s['p50_ms']:.3g}" for s in c["latency"]) or "-",
                per_batch or "-",
                "-" if not outputs else f"{min(o['min_cosine'] for o in outputs):.4f}",
                "-" if not outputs else f"{min(o['sqnr_db'] for o in outputs):.1f}",
                "-" if not top1 else f"{min(top1):.3f}",
                "-" if c["accuracy"] is None else f"{c['accuracy']:.4f}",
                ", ".join(_float_layer(e) for e in c["float_layers"]) or "-",
            ]
        )
    rows += [[name, reason, *["-"] * 8] for name, reason in quant.get("skipped", {}).items()]
    return headers, rows


def _float_layer(entry: dict[str, Any]) -> str:
    """``node (caused 0.012; 3% of MACs, ~0.2 ms; bf16)``: why it is float, and what that costs."""
    parts = [f"caused {entry['caused']:.2g}"]
    if entry.get("cost_share") is not None:
        cost = f"{entry['cost_share']:.0%} of MACs"
        if entry.get("est_ms") is not None:
            cost += f", ~{entry['est_ms']:.2g} ms"
        parts.append(cost)
    if entry.get("precision"):
        parts.append(str(entry["precision"]))
    return f"{entry['node']} ({'; '.join(parts)})"

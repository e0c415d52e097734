"""The lossy candidates' table and warnings, shared by report.md, report.html and the terminal."""

from __future__ import annotations

from typing import Any

from exporter.quantize.shipping import (
    REFERENCE,
    REFERENCE_RUNTIME,
    candidate_label,
    float_backend,
    shipped_file,
)

__all__ = ["SYNTHETIC_WARNING", "int8_source", "quantization_table", "top1_note"]

Table = tuple[list[str], list[list[str]]]

SYNTHETIC_WARNING = (
    "Judged on synthetic inputs only: the lossy models' parity was measured on inputs drawn from the spec, "
    "which proves nothing about real data; re-export with --calibration FILE.npz of real inputs."
)


TOP1_OMITTED = (
    "Top-1 agreement is not shown: nothing declares the outputs class scores, and on a 2-D output that is an "
    "embedding it means nothing. --min-top1 (recipe [quantize] min_top1) declares them, measures it and "
    "gates on it."
)


def int8_source(summary: dict[str, Any]) -> str:
    """Which graph int8 starts from, named by what the artifacts folder holds: the graph optimization's
    working files (``model.simplified.onnx``, ``simplified+transformer.onnx``) are not shipped."""
    label = summary.get("quantization_source_label")
    if label is None:  # a report.json from before the label was recorded: only a working file's name
        return "int8 starts from a graph the optimize stage verified (not shipped)"
    if label == summary.get("portable"):
        source = float_backend(REFERENCE_RUNTIME) or REFERENCE
        return f"int8 starts from the {label} graph, shipped as {source.file}"
    return f"int8 starts from the verified {label} graph (not shipped)"


def _judges_top1(report: dict[str, Any]) -> bool:
    """Top-1 is shown only when the budget gates it: the threshold declares the outputs class scores."""
    return report["quantization"]["budget"].get("min_top1") is not None


def top1_note(report: dict[str, Any]) -> str | None:
    """Why the lossy table has no top-1 column, or None when it has one."""
    return None if _judges_top1(report) else TOP1_OMITTED


def _judges_generation(report: dict[str, Any]) -> bool:
    """A decoder's candidates were judged by greedy generation (the token-match column is shown)."""
    return any(c.get("generation") for c in report["quantization"]["candidates"])


def quantization_table(report: dict[str, Any]) -> Table:
    """One row per lossy candidate (int8, int4, bf16): verdict, size and speed against the float model of
    its own runtime (per token for a decoder), its p50, worst parity over outputs (top-1 only when the budget
    declares class scores; for a decoder the token-match share against its floor, and the block size)."""
    headers, rows = _full_table(report)
    dropped = set()
    if not _judges_top1(report):
        dropped.add("top-1 agree")
    if not _judges_generation(report):
        dropped |= {"token match", "block"}
    keep = [i for i, header in enumerate(headers) if header not in dropped]
    return [headers[i] for i in keep], [[row[i] for i in keep] for row in rows]


def _min_cosine(candidate: dict[str, Any]) -> str:
    """The worst cosine that gates the candidate: a decoder's on the golden prompts' logits (its outputs on
    synthetic samples are only recorded), any other model's over its outputs on the evaluation samples."""
    generation = candidate.get("generation")
    if generation:
        return f"{generation['min_logits_cosine']:.4f} (golden logits)"
    outputs = candidate["outputs"]
    return "-" if not outputs else f"{min(o['min_cosine'] for o in outputs):.4f}"


def _token_match(candidate: dict[str, Any]) -> str:
    """``0.42 (floor 0.5; 1.00, 0.08, 0.17)``: the mean share, its floor and each prompt's."""
    generation = candidate.get("generation")
    if not generation:
        return "-"
    shares = ", ".join(f"{s:.2f}" for s in generation["shares"])
    return f"{generation['token_match']:.2f} (floor {generation['floor']:g}; {shares})"


def _full_table(report: dict[str, Any]) -> Table:
    headers = [
        "candidate",
        "status",
        "size vs float",
        "p50 ms",
        "p50 vs its runtime's float",
        "min cosine",
        "SQNR dB",
        "top-1 agree",
        "token match",
        "block",
        "accuracy",
        "float layers",
    ]
    quant = report["quantization"]
    rows = []
    if quant["float"]["accuracy"] is not None:
        accuracy = f"{quant['float']['accuracy']:.4f}"
        rows.append(["float (reference)", "-", "1.00x", "-", "1.00x", "-", "-", "-", "-", "-", accuracy, "-"])
    for c in quant["candidates"]:
        runtime = c.get("runtime", REFERENCE_RUNTIME)
        outputs = c["outputs"]
        if c["error"]:
            status = f"FAILED to build: {c['error']}"
        elif not c["budget_passed"]:
            generation = c.get("generation")
            if generation:  # a decoder: its generation gates it, the synthetic outputs are only recorded
                misses = [generation["message"]] if generation["message"] else []
            else:
                misses = [o["message"] for o in outputs if o["message"]]
            misses += c["shape_errors"]
            status = "FAIL budget: " + "; ".join(misses[:2])
        else:
            status = "within budget"
        if c["chosen"]:
            status = f"SHIPPED as {shipped_file(runtime) or runtime}, " + status
        if quant.get("fastest") == c["name"]:
            status += ", FASTEST within budget"
        if c["budget_passed"] and not c["faster_than_float"]:
            status += ", SLOWER than float"
        per_batch = ", ".join(
            f"{s['label']} x{1 / s['speedup_vs_float']:.2f}" for s in c["latency"] if s["speedup_vs_float"]
        )
        top1 = [o["top1_agreement"] for o in outputs if o["top1_agreement"] is not None]
        rows.append(
            [
                candidate_label(c["name"], runtime),
                status,
                "-" if c["size_ratio"] is None else f"{c['size_ratio']:.2f}x",
                ", ".join(f"{s['label']} {s['p50_ms']:.3g}" for s in c["latency"]) or "-",
                per_batch or "-",
                _min_cosine(c),
                "-" if not outputs else f"{min(o['sqnr_db'] for o in outputs):.1f}",
                "-" if not top1 else f"{min(top1):.3f}",
                _token_match(c),
                str((c.get("settings") or {}).get("block_size") or "-"),
                "-" if c["accuracy"] is None else f"{c['accuracy']:.4f}",
                ", ".join(_float_layer(e) for e in c["float_layers"]) or "-",
            ]
        )
    rows += [[name, reason, *["-"] * 10] for name, reason in quant.get("skipped", {}).items()]
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

"""The lossy candidates' table: top-1 agreement only where the outputs are declared class scores."""

from __future__ import annotations

from typing import Any

import numpy as np

from exporter.quantize.budget import ParityBudget, compare_int8
from exporter.report.lossy import quantization_table, top1_note


def _report(min_top1: float | None, top1: float | None) -> dict[str, Any]:
    """A report's quantization section with one shipped candidate and one output."""
    output = {"min_cosine": 0.995, "sqnr_db": 31.0, "top1_agreement": top1, "message": None}
    candidate = {
        "name": "dynamic",
        "runtime": "onnxruntime",
        "outputs": [output],
        "error": None,
        "budget_passed": True,
        "shape_errors": [],
        "chosen": True,
        "faster_than_float": True,
        "latency": [{"label": "batch=1", "p50_ms": 0.1, "speedup_vs_float": 1.5}],
        "size_ratio": 0.3,
        "accuracy": None,
        "float_layers": [],
    }
    budget = {"min_cosine": 0.99, "min_top1": min_top1, "min_sqnr_db": None, "max_abs": None}
    quantization = {"float": {"accuracy": None}, "candidates": [candidate], "budget": budget}
    return {"quantization": quantization}


def test_an_embedding_is_not_judged_by_top1() -> None:
    # 256-d embeddings, 2-D like logits: argmax agreement of two embeddings means nothing.
    rng = np.random.default_rng(0)
    expected = [rng.standard_normal((4, 256)).astype(np.float32) for _ in range(4)]
    actual = [e + 0.01 * rng.standard_normal(e.shape).astype(np.float32) for e in expected]
    assert compare_int8("embedding", actual, expected, ParityBudget()).top1_agreement is None
    logits = compare_int8("logits", actual, expected, ParityBudget(min_top1=0.9))
    assert logits.top1_agreement is not None and logits.passed


def test_the_table_leaves_out_top1_and_the_report_says_why_unless_declared() -> None:
    report = _report(min_top1=None, top1=None)
    headers, rows = quantization_table(report)
    assert "top-1 agree" not in headers and all(len(row) == len(headers) for row in rows)
    note = top1_note(report)
    assert note is not None and "--min-top1" in note and "embedding" in note


def test_min_top1_declares_class_scores_and_shows_the_column() -> None:
    report = _report(min_top1=0.98, top1=0.9375)
    headers, rows = quantization_table(report)
    assert rows[0][headers.index("top-1 agree")] == "0.938"
    assert top1_note(report) is None


def test_the_fastest_candidate_within_budget_still_says_it_is_slower_than_float() -> None:
    """Fastest among the candidates is not faster than the float model: the row says both."""
    report = _report(min_top1=None, top1=None)
    candidate = report["quantization"]["candidates"][0]
    candidate.update(chosen=False, faster_than_float=False)
    report["quantization"]["fastest"] = candidate["name"]
    headers, rows = quantization_table(report)
    status = rows[0][headers.index("status")]
    assert status == "within budget, FASTEST within budget, SLOWER than float"

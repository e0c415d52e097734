"""One type per document entry: the tolerance, the int8 parity budget, a latency row and a stage's record
are the types the code builds, and manifest.json / report.json read back into those same types, checked as
strictly as the documents' own models, with the same one-line messages."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, get_args

import pytest
from pydantic import ValidationError

from exporter.benchmark.latency import LatencyStats
from exporter.documents.fields import Typed
from exporter.documents.manifest import Int8Entry, Manifest, read_typed
from exporter.documents.report_model import ParityEntry, Report
from exporter.errors import UsageError
from exporter.quantize.budget import ParityBudget
from exporter.quantize.types import QuantizeOptions
from exporter.stages.records import StageRecord, StageStatus
from exporter.verify.comparison import Tolerance


class Holder(Typed):
    """The four entries as a document holds them."""

    stages: list[StageRecord]
    latency: list[LatencyStats]
    tolerance: Tolerance
    budget: ParityBudget


def _latency(**changes: Any) -> LatencyStats:
    fields: dict[str, Any] = {
        "backend": "onnxruntime",
        "label": "batch=8",
        "batch": 8,
        "input_shapes": {"x": [8, 16]},
        "threads": 2,
        "runs": 50,
        "p50_ms": 0.5,
        "p90_ms": 0.6,
        "p99_ms": 0.9,
        "mean_ms": 0.55,
        "min_ms": 0.4,
        "throughput_per_s": 16000.0,
        "speedup_vs_eager": 2.5,
    }
    return LatencyStats(**(fields | changes))


def _document() -> dict[str, Any]:
    record = StageRecord("convert", StageStatus.FAILED, 1.23456, "onnx: unsupported op")
    record.raised = True
    return json.loads(
        json.dumps(
            {
                "stages": [record.to_json(), StageRecord("write").to_json()],
                "latency": [_latency().to_json()],
                "tolerance": {"atol": 0, "rtol": 1e-3},
                "budget": {"min_cosine": 0.98, "min_top1": None, "min_sqnr_db": 30, "max_abs": None},
            }
        )
    )


def _read(document: dict[str, Any]) -> Holder:
    return read_typed(Holder, document, "report.json of 'DIR'", "report")


def test_the_documents_hold_the_types_the_code_uses() -> None:
    assert Manifest.model_fields["tolerance"].annotation is Tolerance
    assert Int8Entry.model_fields["budget"].annotation is ParityBudget
    assert ParityEntry.model_fields["tolerance"].annotation is Tolerance
    assert get_args(Report.model_fields["stages"].annotation) == (StageRecord,)
    assert get_args(Report.model_fields["latency"].annotation) == (LatencyStats,)
    assert QuantizeOptions(min_cosine=0.95, min_sqnr_db=20.0).budget == ParityBudget(0.95, None, 20.0, None)


def test_entries_read_back_as_the_code_wrote_them() -> None:
    document = _document()
    held = _read(document)
    assert held.stages[0] == StageRecord("convert", StageStatus.FAILED, 1.235, "onnx: unsupported op")
    assert held.stages[0].status is StageStatus.FAILED and not held.stages[0].raised
    assert held.stages[1].status is StageStatus.NOT_RUN
    assert held.latency == [_latency()]
    assert isinstance(held.tolerance, Tolerance) and isinstance(held.budget, ParityBudget)
    dumped = held.model_dump(mode="json")
    assert dumped == document
    # numbers stay as written: an integer atol is not rewritten as 0.0
    assert json.dumps(dumped["tolerance"]) == '{"atol": 0, "rtol": 0.001}'
    assert [s.to_json() for s in held.stages] == document["stages"]


def test_an_older_latency_row_without_the_speedups_still_reads() -> None:
    document = _document()
    for key in ("speedup_vs_eager", "speedup_vs_float"):
        del document["latency"][0][key]
    row = _read(document).latency[0]
    assert row.speedup_vs_eager is None and row.speedup_vs_float is None


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["stages"][0].__setitem__("raised", True), "has the unknown key 'stages[0].raised'"),
        (lambda d: d["stages"][1].__setitem__("status", "done"), "has 'stages[1].status' = \"done\", not "),
        (lambda d: d["stages"][0].pop("name"), "is missing 'stages[0].name'"),
        (lambda d: d["latency"][0].pop("p50_ms"), "is missing 'latency[0].p50_ms'"),
        (lambda d: d["latency"][0].__setitem__("threads", True), "has 'latency[0].threads' = true, not an"),
        (lambda d: d["latency"][0]["input_shapes"]["x"].append("8"), "'latency[0].input_shapes[\"x\"][2]'"),
        (
            lambda d: d["tolerance"].__setitem__("atol", "1e-4"),
            "has 'tolerance.atol' = \"1e-4\", not a number",
        ),
        (lambda d: d.__setitem__("tolerance", 5), "has 'tolerance' = 5, not an object"),
        (lambda d: d["budget"].__setitem__("min_cos", 0.9), "has the unknown key 'budget.min_cos'"),
    ],
    ids=[
        "stage-raised",
        "stage-status",
        "stage-name",
        "latency-p50",
        "latency-threads",
        "shape",
        "atol",
        "tolerance",
        "budget-key",
    ],
)
def test_a_bad_entry_is_one_line_naming_it(edit: Any, message: str) -> None:
    document = _document()
    edit(document)
    with pytest.raises(UsageError) as caught:
        _read(document)
    assert message in str(caught.value)
    assert str(caught.value).startswith("report.json of 'DIR' ")
    assert str(caught.value).endswith("(not a report written by this exporter, or damaged)")


def test_the_code_builds_them_checked_with_the_old_calls() -> None:
    assert Tolerance() == Tolerance(1e-4, 1e-3) and Tolerance.atol == 1e-4
    assert ParityBudget().describe() == "cosine >= 0.99"
    stats = _latency()
    stats.speedup_vs_float = 1.5  # filled in after timing, as the benchmark and quantize stages do
    assert stats.to_json()["speedup_vs_float"] == 1.5
    with pytest.raises(ValidationError):
        _latency(threads="2")
    with pytest.raises(ValidationError):
        Tolerance(atol="1e-4")  # type: ignore[arg-type]


def test_the_document_modules_import_no_torch() -> None:
    code = (
        "import sys, exporter.documents.manifest, exporter.documents.report_model; "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr

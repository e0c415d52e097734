"""A partial export (issue 23): with several targets, one that fails to convert is reported with the
converter's full explanation while the others are verified and shipped (exit 6); with one target, or
when all fail, nothing is written (exit 3). And torch.export's "Suggested fixes" in the spec's syntax."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from exporter.convert._export_errors import export_reason, suggested_fixes
from exporter.documents.report_model import read_report
from exporter.errors import ConversionError, ExitCode, explain
from exporter.gate.runs import merge_exit_codes, write_junit
from exporter.pipeline import ExportOptions, export
from tests.models import MODELS

_TORCH_SUGGESTION = """Constraints violated (h, w)! For more information, run with TORCH_LOGS="+dynamic".
  - Not all values of h = L['x'].size()[2] in the specified range satisfy the generated guard ...
Suggested fixes:
  _h = Dim('_h', min=1, max=oo)
  _w = Dim('_w', min=16, max=128)
  h = 4*_h
  w = 4*_w
  seq = Dim('seq', min=2, max=64)
  batch = 1
  b2 = batch0

The error above occurred when calling torch.export.export."""


def test_suggested_fixes_are_said_in_the_input_spec_syntax() -> None:
    fixes = {fix.dim: fix for fix in suggested_fixes(_TORCH_SUGGESTION)}
    assert set(fixes) == {"h", "w", "seq", "batch", "b2"}  # torch's helper dims (_h) are not the user's
    assert "h=LOW..HIGH%4" in fixes["h"].advice() and "multiple_of = 4" in fixes["h"].advice()
    assert "w=64..512%4" in fixes["w"].advice()  # torch's bounded helper dim, scaled back
    assert "seq=2..64" in fixes["seq"].advice()
    assert fixes["batch"].kind == "static" and "1" in fixes["batch"].advice()
    assert fixes["b2"].kind == "equal" and "batch0" in fixes["b2"].advice()


def test_torch_export_of_ceil_mode_pooling_names_the_multiple() -> None:
    """torch's real error for H and W that ceil-mode pooling needs in multiples of 4."""
    module = MODELS["ceil_pool"].build()
    h, w = torch.export.Dim("h"), torch.export.Dim("w")
    with pytest.raises(Exception) as caught:  # torch's own UserError type is private
        torch.export.export(module, (torch.randn(1, 3, 16, 16),), dynamic_shapes={"image": {2: h, 3: w}})
    reason = export_reason(caught.value)
    assert "'h' must be a multiple of 4" in reason and "'w' must be a multiple of 4" in reason
    assert "h=LOW..HIGH%4" in reason


def test_explain_keeps_the_whole_cause_that_the_line_cuts() -> None:
    try:
        try:
            raise RuntimeError(_TORCH_SUGGESTION)
        except RuntimeError as cause:
            raise ConversionError("AOTInductor: torch.export failed: Constraints violated (h, w)!") from cause
    except ConversionError as error:
        explanation = explain(error)
    assert explanation is not None and "h = 4*_h" in explanation and explanation.startswith("RuntimeError")
    assert explain(ConversionError("short", details="the whole story")) == "the whole story"
    assert explain(ConversionError("no cause at all")) is None


def test_a_partial_export_outranks_latency_but_not_parity() -> None:
    assert merge_exit_codes([0, 6, 4]) is ExitCode.PARTIAL_EXPORT
    assert merge_exit_codes([6, 1]) is ExitCode.VERIFICATION_FAILED
    assert merge_exit_codes([3, 6]) is ExitCode.CONVERSION_FAILED


def test_junit_carries_a_failed_target_with_its_full_explanation(tmp_path: Path) -> None:
    result = {
        "recipe": "r.toml",
        "name": "face",
        "seconds": 1.0,
        "checks": [
            {"name": "export parity onnxruntime", "kind": "parity", "passed": True, "detail": "ok"},
            {
                "name": "export convert aotinductor",
                "kind": "convert",
                "passed": False,
                "detail": "AOTInductor: torch.export failed\n\nSuggested fixes:\n  h = 4*_h",
            },
        ],
    }
    write_junit(tmp_path / "junit.xml", [result])
    failure = ET.parse(tmp_path / "junit.xml").getroot().find(".//failure")
    assert failure is not None
    assert failure.get("message") == "AOTInductor: torch.export failed"
    assert "h = 4*_h" in (failure.text or "")


@pytest.mark.slow
def test_a_failing_target_does_not_stop_the_others(options_for: Callable[..., ExportOptions]) -> None:
    """AOTInductor refuses the data-dependent branch; ONNX and torch.compile still ship (exit 6)."""
    result = export(options_for("gate", targets=("onnx", "compile"), benchmark=False))
    assert result.exit_code is ExitCode.PARTIAL_EXPORT
    assert [(f.target, f.backend) for f in result.failed_targets] == [("compile", "aotinductor")]
    assert {b.backend for b in result.backends} == {"onnxruntime", "torch-compile"}
    assert all(b.passed for b in result.backends)
    out = result.out_dir
    assert (out / "model.onnx").is_file() and not (out / "model.pt2").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "partial"
    [failed] = report["failed_targets"]
    assert failed["backend"] == "aotinductor" and "torch.export failed" in failed["error"]
    assert failed["explanation"] and len(failed["explanation"]) > len(failed["error"])
    assert read_report(out).failed_targets == result.failed_targets  # the document holds the stage's own type
    markdown = (out / "report.md").read_text()
    assert "## Targets that failed to convert" in markdown and "Partial export (exit 6)" in markdown
    assert 'id="failed-targets"' in (out / "report.html").read_text()
    convert = next(s for s in report["stages"] if s["name"] == "convert")
    assert convert["status"] == "failed" and "compile FAILED" in convert["detail"]


@pytest.mark.slow
def test_one_failing_target_alone_still_fails_the_export(options_for: Callable[..., ExportOptions]) -> None:
    options = options_for("gate", targets=("compile",), skip=("onnx",), benchmark=False)
    with pytest.raises(ConversionError) as caught:
        export(options)
    assert caught.value.exit_code is ExitCode.CONVERSION_FAILED
    assert not options.out_dir.exists()


def test_explain_says_a_cause_repeated_whole_by_its_wrapper_once() -> None:
    inner = RuntimeError("Constraints violated (w)!\nSuggested fixes:\n  w = 4*_w")
    outer = ValueError(str(inner))
    outer.__cause__ = inner
    error = ConversionError("AOTInductor: torch.export failed")
    error.__cause__ = outer
    explanation = explain(error)
    assert explanation is not None and explanation.count("Suggested fixes") == 1

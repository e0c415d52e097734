"""End to end through ``exporter.export``: real torch.onnx, onnxsim and ONNX Runtime on tiny models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import save_file

from exporter.errors import ConversionError, ExitCode, UsageError
from exporter.pipeline import ExportOptions, StageRecord, StageStatus, export
from tests.models import MODELS


@pytest.mark.parametrize("name", ["mlp", "conv", "attention", "two_inputs"])
def test_tiny_models_export_and_verify_at_several_shapes(
    name: str, options_for: Callable[..., ExportOptions]
) -> None:
    options = options_for(name)
    result = export(options)
    assert result.exit_code is ExitCode.OK, result.report["parity"]
    shipped = next(p for p in result.parity if p.artifact == result.shipped)
    assert len(shipped.cases) >= 3
    statuses = {s.name: s.status for s in result.stages}
    assert statuses.pop("quantize") is StageStatus.SKIPPED  # not requested
    assert all(status is StageStatus.PASSED for status in statuses.values())
    assert (options.out_dir / "model.onnx").is_file()


def test_dynamic_sequence_dim_is_symbolic_in_the_onnx_graph(
    options_for: Callable[..., ExportOptions],
) -> None:
    result = export(options_for("attention"))
    model = onnx.load(str(result.out_dir / "model.onnx"))
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[0] == "batch" and dims[1] == "seq" and dims[2] == 32
    cases = {c.case: c.sizes for c in result.parity[-1].cases}
    assert cases["seq-min"]["seq"] == 1 and cases["seq-large"]["seq"] > 7


def test_two_inputs_dict_output_names_every_leaf(options_for: Callable[..., ExportOptions]) -> None:
    result = export(options_for("two_inputs"))
    assert result.conversion.output_names == ["logits", "extras.0", "extras.1"]
    assert result.conversion.input_names == ["features", "mask"]
    golden = np.load(result.out_dir / "golden" / "export.outputs.npz")
    assert sorted(golden.files) == ["extras.0", "extras.1", "logits"]


def test_frozen_dim_fails_verification_and_still_writes_the_report(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = options_for("frozen", onnx_exporter="torchscript")
    result = export(options)
    assert result.exit_code is ExitCode.VERIFICATION_FAILED
    shipped = next(p for p in result.parity if p.artifact == result.shipped)
    by_case = {c.case: c.passed for c in shipped.cases}
    assert by_case["export"] is True
    assert by_case["seq-large"] is False and by_case["seq-min"] is False
    report = json.loads((options.out_dir / "report.json").read_text())
    assert report["status"] == "failed"
    assert any("frozen" in note and "seq" in note for note in report["notes"])
    assert "FAIL" in (options.out_dir / "report.md").read_text()


def test_dynamo_failure_falls_back_to_torchscript_exporter_and_says_why(
    options_for: Callable[..., ExportOptions],
) -> None:
    result = export(options_for("gate"))
    assert [a.exporter for a in result.conversion.attempts] == ["dynamo", "torchscript"]
    assert not result.conversion.attempts[0].succeeded
    assert "data-dependent" in (result.conversion.attempts[0].error or "")
    assert result.conversion.exporter == "torchscript"
    assert result.exit_code is ExitCode.OK
    assert any("fell back to torchscript" in note for note in result.report["notes"])


def test_dynamo_only_reports_the_dynamo_failure(options_for: Callable[..., ExportOptions]) -> None:
    options = options_for("gate", onnx_exporter="dynamo")
    with pytest.raises(ConversionError, match="dynamo exporter"):
        export(options)
    assert not options.out_dir.exists()


def test_unconvertible_operator_is_named_and_leaves_no_folder(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = options_for("opaque")
    with pytest.raises(ConversionError, match=r"exporter_tests(\.|::)opaque") as caught:
        export(options)
    assert caught.value.exit_code is ExitCode.CONVERSION_FAILED
    assert not options.out_dir.exists()
    assert not any(p.name.startswith(".") for p in options.out_dir.parent.iterdir())


def test_simplified_model_ships_when_it_verifies(options_for: Callable[..., ExportOptions]) -> None:
    result = export(options_for("conv"))
    assert result.conversion.simplified_path is not None
    assert result.shipped is not None and result.shipped.split("+")[0] == "simplified"
    assert result.report["conversion"]["shipped"] == result.shipped


def test_no_simplify_ships_the_exported_model(options_for: Callable[..., ExportOptions]) -> None:
    result = export(options_for("mlp", simplify=False))
    assert result.shipped is not None and result.shipped.split("+")[0] == "exported"
    assert result.conversion.simplify_error == "skipped: --no-simplify"


def test_opset_is_selectable_and_recorded(options_for: Callable[..., ExportOptions]) -> None:
    result = export(options_for("mlp", opset=18))
    model = onnx.load(str(result.out_dir / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 18
    assert json.loads((result.out_dir / "manifest.json").read_text())["onnx"]["opset"] == 18


def test_latency_is_measured_for_eager_and_onnxruntime_per_batch_size(
    options_for: Callable[..., ExportOptions],
) -> None:
    result = export(options_for("mlp", threads=1))
    rows = {(s.backend, s.batch) for s in result.latency}
    assert rows == {(b, n) for b in ("pytorch-eager", *(r.backend for r in result.backends)) for n in (1, 2)}
    assert {r.backend for r in result.backends} <= {"onnxruntime", "onnxruntime-optimized"}
    assert all(s.threads == 1 and s.runs >= 3 and s.p50_ms <= s.p99_ms for s in result.latency)
    eager = [s for s in result.latency if s.backend == "pytorch-eager"]
    assert all(s.speedup_vs_eager == 1.0 for s in eager)


def test_existing_output_folder_is_refused_without_force(options_for: Callable[..., ExportOptions]) -> None:
    options = options_for("mlp")
    options.out_dir.mkdir(parents=True)
    (options.out_dir / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="--force"):
        export(options)
    assert (options.out_dir / "keep.txt").read_text() == "user data"


def test_force_replaces_the_folder_only_when_the_new_one_is_complete(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = options_for("opaque", force=True)
    options.out_dir.mkdir(parents=True)
    (options.out_dir / "old.txt").write_text("previous run")
    with pytest.raises(ConversionError):
        export(options)
    assert (options.out_dir / "old.txt").exists(), "a failed run must not destroy the previous artifacts"
    good = options_for("mlp", force=True, out=options.out_dir)
    export(good)
    assert not (options.out_dir / "old.txt").exists()
    assert (options.out_dir / "model.onnx").exists()


def _save_in_format(fmt: str, path: Path) -> tuple[Path, dict[str, object]]:
    model = MODELS["mlp"].build()
    if fmt == "torchscript":
        torch.jit.script(model).save(str(path.with_suffix(".ts")))
        return path.with_suffix(".ts"), {"model_ref": None}
    if fmt == "exported_program":
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(model, (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
        torch.export.save(program, path.with_suffix(".pt2"))
        return path.with_suffix(".pt2"), {"model_ref": None}
    if fmt == "safetensors":
        save_file(
            {k: v.contiguous() for k, v in model.state_dict().items()}, str(path.with_suffix(".safetensors"))
        )
        return path.with_suffix(".safetensors"), {}
    torch.save(model, path)
    return path, {"model_ref": None, "trust_checkpoint": True}


@pytest.mark.parametrize("fmt", ["torchscript", "exported_program", "safetensors", "pickled_module"])
def test_every_checkpoint_format_exports_end_to_end(
    fmt: str, tmp_path: Path, options_for: Callable[..., ExportOptions]
) -> None:
    checkpoint, overrides = _save_in_format(fmt, tmp_path / "model.pt")
    result = export(options_for("mlp", checkpoint=checkpoint, **overrides))
    assert result.loaded.format.value == fmt
    assert result.exit_code is ExitCode.OK, result.parity[-1].failures()
    expected = ["torchscript"] if fmt == "torchscript" else ["dynamo"]
    assert [a.exporter for a in result.conversion.attempts if a.succeeded] == expected


class _Recorder:
    def __init__(self) -> None:
        self.events: list[str] = []

    def stage_started(self, stage: str) -> None:
        self.events.append(f"start {stage}")

    def stage_finished(self, record: StageRecord) -> None:
        self.events.append(f"{record.status.value} {record.name}")

    def step(self, message: str, done: int, total: int) -> None:
        self.events.append(f"step {message}")


def test_progress_listener_sees_every_stage_and_steps(options_for: Callable[..., ExportOptions]) -> None:
    recorder = _Recorder()
    export(options_for("mlp"), recorder)
    finished = [e for e in recorder.events if e.startswith("passed")]
    assert finished == [
        "passed load",
        "passed convert",
        "passed verify",
        "passed optimize",
        "passed benchmark",
        "passed write",
    ]
    assert "step dynamo exporter" in recorder.events and "step onnxsim" in recorder.events
    assert any(e.startswith("step timing onnxruntime") for e in recorder.events)


def test_reference_nan_is_reported_and_passes_by_default(options_for: Callable[..., ExportOptions]) -> None:
    options = options_for("nan_log", benchmark=False)
    result = export(options)
    assert result.exit_code is ExitCode.OK  # ONNX Runtime agrees with the reference, NaN for NaN
    report = json.loads((options.out_dir / "report.json").read_text())
    export_row = next(e for e in report["nonfinite"] if e["case"] == "export")
    assert export_row["output"] == "output" and 0 < export_row["nan"] <= export_row["elements"] == 8
    assert export_row["inf"] == 0
    note = next(n for n in report["notes"] if "NaN/Inf" in n)
    assert f"output 'output': {export_row['nan']} NaN at case export" in note
    assert "pass --fail-on-nonfinite to fail the export" in note
    assert (
        "> **Warning: the PyTorch model's own outputs contain NaN/Inf"
        in (options.out_dir / "report.md").read_text()
    )
    assert 'id="nonfinite"' in (options.out_dir / "report.html").read_text()
    manifest = json.loads((options.out_dir / "manifest.json").read_text())
    assert manifest["reference_nonfinite"] == report["nonfinite"]


def test_fail_on_nonfinite_fails_the_export_and_still_writes_the_folder(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = options_for("nan_log", benchmark=False, fail_on_nonfinite=True)
    result = export(options)
    assert result.exit_code is ExitCode.VERIFICATION_FAILED and not result.passed
    assert all(b.passed for b in result.backends)  # the artifact matches; the reference is the problem
    verify = next(s for s in result.stages if s.name == "verify")
    assert verify.status is StageStatus.FAILED and "NaN/Inf" in verify.detail
    for name in ("model.onnx", "report.json", "report.md", "report.html", "manifest.json"):
        assert (options.out_dir / name).is_file(), name
    report = json.loads((options.out_dir / "report.json").read_text())
    assert report["status"] == "failed" and report["settings"]["fail_on_nonfinite"] is True
    assert any("--fail-on-nonfinite is set, so the export fails" in n for n in report["notes"])


def test_finite_model_has_no_nonfinite_entries_or_note(options_for: Callable[..., ExportOptions]) -> None:
    options = options_for("mlp", benchmark=False, fail_on_nonfinite=True)
    result = export(options)
    assert result.exit_code is ExitCode.OK
    assert result.report["nonfinite"] == []
    assert not any("NaN/Inf" in note for note in result.report["notes"])
    assert "Warning" not in (options.out_dir / "report.md").read_text()
    assert 'id="nonfinite"' not in (options.out_dir / "report.html").read_text()

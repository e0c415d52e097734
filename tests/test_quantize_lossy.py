"""Lossy candidates beyond ONNX Runtime: bf16 execution in OpenVINO and NNCF int8, judged by the same parity
budget as every int8 candidate, each runtime shipping its own choice, and bf16 skipped (with the reason
recorded) on a CPU without native bf16."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.environment import DISABLE_FEATURES_ENV, bf16_support
from exporter.errors import UsageError
from exporter.options import ExportOptions
from exporter.pipeline import export
from exporter.quantize.types import QuantizeOptions, QuantMode
from tests.conftest import write_calibration
from tests.models import MODELS

NATIVE_BF16 = bf16_support()[0]


def lossy_options(
    options_for: Callable[..., ExportOptions], name: str, mode: QuantMode, **budget: float
) -> ExportOptions:
    calibration = None
    if mode is not QuantMode.BF16:
        folder = options_for(name).out_dir.parent.parent
        calibration = str(write_calibration(options_for(name).spec, folder))
    quantization = QuantizeOptions(mode=mode, samples=16, calibration=calibration, **budget)  # type: ignore[arg-type]
    return options_for(name, targets=("onnx", "openvino"), quantization=quantization, benchmark=False)


def test_bf16_is_off_when_forced_off_and_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DISABLE_FEATURES_ENV, "bf16")
    native, why = bf16_support()
    assert not native and DISABLE_FEATURES_ENV in why


def test_quantize_bf16_on_a_cpu_without_bf16_is_refused_before_any_work(
    monkeypatch: pytest.MonkeyPatch, options_for: Callable[..., ExportOptions]
) -> None:
    monkeypatch.setenv(DISABLE_FEATURES_ENV, "bf16")
    options = lossy_options(options_for, "mlp", QuantMode.BF16)
    with pytest.raises(UsageError, match="bf16 turned off"):
        export(options)
    assert not options.out_dir.exists()


def test_quantize_bf16_needs_the_openvino_target(tmp_path: Path) -> None:
    checkpoint = tmp_path / "mlp.pt"
    import torch

    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    result = CliRunner().invoke(
        app,
        [
            "export",
            str(checkpoint),
            "--model",
            MODELS["mlp"].ref,
            "--input",
            MODELS["mlp"].inputs[0],
            "--to",
            "onnx",
            "--quantize",
            "bf16",
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 2, result.output
    assert "add --to openvino" in result.output


@pytest.mark.slow
def test_int8_search_records_bf16_as_skipped_on_a_cpu_without_it(
    monkeypatch: pytest.MonkeyPatch, options_for: Callable[..., ExportOptions]
) -> None:
    monkeypatch.setenv(DISABLE_FEATURES_ENV, "bf16")
    options = lossy_options(options_for, "conv", QuantMode.INT8)
    result = export(options)
    report = json.loads((options.out_dir / "report.json").read_text())
    skipped = report["quantization"]["skipped"]
    assert "bf16-openvino" in skipped and "turned off" in skipped["bf16-openvino"]
    names = {c["name"] for c in report["quantization"]["candidates"]}
    assert {"nncf-ort", "nncf-openvino"} <= names and "bf16-openvino" not in names
    # every candidate was judged and timed; each runtime shipped at most one, against its own float
    candidates = report["quantization"]["candidates"]
    assert all(c["outputs"] and c["latency"] and c["error"] is None for c in candidates)
    nncf_openvino = next(c for c in candidates if c["name"] == "nncf-openvino")
    assert nncf_openvino["config"]["INFERENCE_PRECISION_HINT"] == "f32"  # no native bf16: the IR runs f32
    shipped = report["quantization"]["shipped"]
    assert set(shipped) <= {"onnxruntime", "openvino"}
    manifest = json.loads((options.out_dir / "manifest.json").read_text())
    # Whether int8 beats float on a model this small depends on the CPU (on ours neither runtime's does), so
    # both outcomes are checked per runtime: its fastest candidate within budget and faster ships, else none.
    for runtime, shipped_file in [("onnxruntime", "model.int8.onnx"), ("openvino", "model.lossy.xml")]:
        eligible = [
            c for c in candidates if c["runtime"] == runtime and c["budget_passed"] and c["faster_than_float"]
        ]
        chosen = [c["name"] for c in candidates if c["runtime"] == runtime and c["chosen"]]
        assert (options.out_dir / shipped_file).is_file() is bool(eligible), runtime
        if eligible:
            fastest = min(eligible, key=lambda c: c["p50_ratio_vs_float"])["name"]
            assert shipped[runtime] == fastest and chosen == [fastest]
        else:
            assert runtime not in shipped and chosen == []
    lossy = [e for e in manifest.get("lossy") or [] if e["backend"] == "openvino-lossy"]
    assert [e["candidate"] for e in lossy] == ([shipped["openvino"]] if "openvino" in shipped else [])
    assert all(e["config"]["INFERENCE_PRECISION_HINT"] == "f32" for e in lossy)
    assert result.exit_code == 0
    verified = CliRunner().invoke(app, ["verify", str(options.out_dir)])
    assert verified.exit_code == 0, verified.output


@pytest.mark.slow
def test_a_budget_too_tight_for_nncf_refuses_it_with_the_reason(
    options_for: Callable[..., ExportOptions],
) -> None:
    """NNCF int8 of a tiny MLP cannot reach cosine 0.999999; it is refused with the reason, and nothing
    outside the budget ships."""
    options = lossy_options(options_for, "mlp", QuantMode.STATIC, min_cosine=0.999999)
    result = export(options)
    report = json.loads((options.out_dir / "report.json").read_text())
    nncf = next(c for c in report["quantization"]["candidates"] if c["name"] == "nncf-ort")
    assert not nncf["budget_passed"] and not nncf["chosen"]
    assert any("min cosine" in (o["message"] or "") for o in nncf["outputs"])
    assert "nncf-ort" in (options.out_dir / "report.md").read_text()
    assert all(c["budget_passed"] for c in report["quantization"]["candidates"] if c["chosen"])
    assert result.exit_code == (0 if any(c["chosen"] for c in report["quantization"]["candidates"]) else 1)


@pytest.mark.slow
@pytest.mark.skipif(not NATIVE_BF16, reason=f"bf16 candidates need native bf16: {bf16_support()[1]}")
def test_bf16_is_judged_by_the_budget_not_the_float_tolerance(
    options_for: Callable[..., ExportOptions],
) -> None:
    """bf16 passes a loose budget and is refused by one tighter than its precision (8 mantissa bits)."""
    loose = lossy_options(options_for, "conv", QuantMode.BF16, min_cosine=0.99)
    export(loose)
    report = json.loads((loose.out_dir / "report.json").read_text())
    bf16 = report["quantization"]["candidates"][0]
    assert bf16["name"] == "bf16-openvino" and bf16["budget_passed"]
    assert bf16["config"]["INFERENCE_PRECISION_HINT"] == "bf16"
    assert min(o["min_cosine"] for o in bf16["outputs"]) < 1.0  # it is lossy: that is why a budget judges it

    tight = lossy_options(options_for, "attention", QuantMode.BF16, min_cosine=0.9999999)
    export(tight)
    report = json.loads((tight.out_dir / "report.json").read_text())
    bf16 = report["quantization"]["candidates"][0]
    assert not bf16["budget_passed"]
    assert "min cosine" in " ".join(o["message"] or "" for o in bf16["outputs"])
    assert "FAIL budget" in (tight.out_dir / "report.md").read_text()

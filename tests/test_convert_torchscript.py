"""TorchScript target: script keeps control flow, trace freezes it and verification says so."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.convert.torchscript import (
    TorchScriptMode,
    TorchScriptRequest,
    convert_to_torchscript,
    trace_failure_message,
)
from exporter.errors import ConversionError, ExitCode
from exporter.pipeline import ExportOptions, export
from exporter.runners.pytorch import EagerRunner, TorchScriptRunner
from exporter.specs.inputs import InputSpec, make_inputs, parse_tensor_spec
from tests.models import MODELS


def _request(name: str, mode: TorchScriptMode, work_dir: Path) -> TorchScriptRequest:
    model = MODELS[name]
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in model.inputs))
    inputs = make_inputs(spec, spec.example_sizes, 0)
    return TorchScriptRequest(
        model.build(), spec, {n: torch.from_numpy(a) for n, a in inputs.items()}, work_dir, mode
    )


def test_script_saves_archives_that_load_back_and_match_eager(tmp_path: Path) -> None:
    request = _request("cell_stack", TorchScriptMode.SCRIPT, tmp_path)
    conversion = convert_to_torchscript(request)
    assert conversion.method == "script"
    labels = [label for label, _ in conversion.candidates()]
    assert labels[-1] == "scripted" and "frozen" in labels
    eager = EagerRunner(request.module, request.spec.names)
    for seq in (1, 3, 9):  # the loop runs as many steps as the sequence has
        inputs = make_inputs(request.spec, {"batch": 2, "seq": seq}, seq)
        for _, path in conversion.candidates():
            loaded = TorchScriptRunner(path, request.spec.names)
            np.testing.assert_allclose(loaded.run(inputs)[0], eager.run(inputs)[0], rtol=1e-5, atol=1e-6)


def test_every_saved_archive_of_a_conv_model_loads_back(tmp_path: Path) -> None:
    # optimize_for_inference's MKLDNN conv constants are saved without their value: torch.jit.load refused
    # that archive ("required keyword attribute 'value' is undefined") on every conv model.
    conversion = convert_to_torchscript(_request("conv", TorchScriptMode.SCRIPT, tmp_path))
    assert [label for label, _ in conversion.candidates()] == ["frozen", "scripted"]
    assert sorted(p.name for p in tmp_path.glob("*.ts")) == ["model.frozen.ts", "model.plain.ts"]
    for _, path in conversion.candidates():
        torch.jit.load(str(path))


def test_a_conv_export_ships_frozen_without_a_failed_archive_note(
    options_for: Callable[..., ExportOptions],
) -> None:
    result = export(options_for("conv", targets=("torchscript",), benchmark=False))
    assert result.exit_code is ExitCode.OK
    backend = result.backend("torchscript")
    assert backend.shipped == "frozen"
    assert [p.artifact for p in backend.parity] == ["frozen"]
    assert not [n for n in result.report["notes"] if "failed verification" in n or "not made" in n]


def test_trace_records_tracer_warnings_for_value_dependent_code(tmp_path: Path) -> None:
    conversion = convert_to_torchscript(_request("depth_gate", TorchScriptMode.TRACE, tmp_path))
    assert conversion.method == "trace"
    assert any("Python" in w or "trace" in w for w in conversion.tracer_warnings), conversion.tracer_warnings


def test_auto_falls_back_to_trace_when_script_fails_and_says_why(tmp_path: Path) -> None:
    class Unscriptable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * len({id(x): 1})  # a dict comprehension over id(): not TorchScript

    spec = InputSpec((parse_tensor_spec("x:float32:batch=2,3"),))
    request = TorchScriptRequest(Unscriptable(), spec, {"x": torch.ones(2, 3)}, tmp_path)
    conversion = convert_to_torchscript(request)
    assert [a.exporter for a in conversion.attempts] == ["script", "trace"]
    assert not conversion.attempts[0].succeeded and conversion.attempts[0].error
    assert conversion.method == "trace"


def test_script_only_mode_reports_a_script_failure_as_a_conversion_error(tmp_path: Path) -> None:
    class Unscriptable(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * len({id(x): 1})

    spec = InputSpec((parse_tensor_spec("x:float32:batch=2,3"),))
    request = TorchScriptRequest(
        Unscriptable(), spec, {"x": torch.ones(2, 3)}, tmp_path, TorchScriptMode.SCRIPT
    )
    with pytest.raises(ConversionError, match=r"torch\.jit\.script: .*--torchscript-mode trace"):
        convert_to_torchscript(request)


def test_a_torchscript_checkpoint_is_used_as_it_is(tmp_path: Path) -> None:
    scripted = torch.jit.script(MODELS["mlp"].build())
    spec = InputSpec((parse_tensor_spec("x:float32:batch=4,16"),))
    request = TorchScriptRequest(scripted, spec, {"x": torch.ones(4, 16)}, tmp_path, TorchScriptMode.TRACE)
    conversion = convert_to_torchscript(request)
    assert conversion.method == "script"
    assert "already TorchScript" in conversion.attempts[0].warnings[0]


def test_trace_failure_message_names_cases_and_suggests_script() -> None:
    message = trace_failure_message(["min", "large"], ["Converting a tensor to a Python boolean"])
    assert message.startswith("tracing froze control flow")
    assert "min, large" in message and "--torchscript-mode script" in message


def test_script_mode_exports_and_verifies_the_time_loop(
    options_for: Callable[..., ExportOptions],
) -> None:
    result = export(options_for("cell_stack", targets=("torchscript",), torchscript_mode="script"))
    assert result.exit_code is ExitCode.OK, result.backend("torchscript").shipped_parity.failures()
    backend = result.backend("torchscript")
    assert backend.conversion["method"] == "script"
    assert {c.sizes["seq"] for c in backend.shipped_parity.cases} >= {1, 5, 6}
    assert (result.out_dir / "model.ts").is_file()
    assert not (result.out_dir / "model.onnx").exists()


@pytest.mark.parametrize("name", ["cell_stack", "depth_gate"])
def test_trace_mode_fails_verification_with_the_frozen_control_flow_message(
    name: str, options_for: Callable[..., ExportOptions]
) -> None:
    result = export(options_for(name, targets=("torchscript",), torchscript_mode="trace"))
    assert result.exit_code is ExitCode.VERIFICATION_FAILED
    backend = result.backend("torchscript")
    failed = [c.case for c in backend.shipped_parity.cases if not c.passed]
    assert "export" not in failed  # the traced inputs themselves still match
    assert failed
    assert any(n.startswith("tracing froze control flow") for n in backend.notes)
    assert any("--torchscript-mode script" in n for n in result.report["notes"])
    verify_stage = next(s for s in result.stages if s.name == "verify")
    assert "tracing froze control flow" in verify_stage.detail
    if name == "depth_gate":  # same shape, other values: only a value-dependent branch explains it
        assert "values" in failed

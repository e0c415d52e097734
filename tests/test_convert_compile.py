"""torch.compile and AOTInductor targets, and every backend through one verification (slow: inductor
compiles C++)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exporter.convert.compile import CompileRequest, compile_model, cpp_compiler, package_aot_inductor
from exporter.errors import ConversionError, ExitCode
from exporter.pipeline import ExportOptions, export
from exporter.runners.pytorch import AotInductorRunner, EagerRunner
from exporter.specs.inputs import InputSpec, make_inputs, parse_tensor_spec
from tests.models import MODELS


def _request(name: str, work_dir: Path) -> CompileRequest:
    model = MODELS[name]
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in model.inputs))
    inputs = make_inputs(spec, spec.example_sizes, 0)
    return CompileRequest(model.build(), spec, {n: torch.from_numpy(a) for n, a in inputs.items()}, work_dir)


def _no_compiler() -> Any:
    import torch._inductor.config as inductor_config

    return inductor_config.patch({"cpp.cxx": (None, "/nonexistent/g++")})


def test_missing_cpp_compiler_is_a_clear_conversion_error() -> None:
    with (
        _no_compiler(),
        pytest.raises(ConversionError, match=r"needs a C\+\+ compiler.*apt-get install g\+\+"),
    ):
        cpp_compiler()


def test_missing_cpp_compiler_fails_export_before_writing(options_for: Callable[..., ExportOptions]) -> None:
    options = options_for("mlp", targets=("compile",))
    with _no_compiler(), pytest.raises(ConversionError) as raised:
        export(options)
    assert raised.value.exit_code is ExitCode.CONVERSION_FAILED
    assert not options.out_dir.exists()


@pytest.mark.slow
def test_compiled_runner_counts_compiles_and_matches_eager(tmp_path: Path) -> None:
    request = _request("mlp", tmp_path)
    compiled = compile_model(request, threads=2)
    assert compiled.runner.graphs >= 1 and compiled.first_compile_seconds > 0
    eager = EagerRunner(request.module, request.spec.names)
    graphs = compiled.runner.graphs
    for batch in (3, 5, 7):  # dynamic batch: no compile per new size once the dynamic graph exists
        inputs = make_inputs(request.spec, {"batch": batch}, batch)
        np.testing.assert_allclose(compiled.runner.run(inputs)[0], eager.run(inputs)[0], rtol=1e-4, atol=1e-5)
    assert compiled.runner.graphs - graphs <= 1
    report = compiled.to_json()
    assert report["graphs"] == compiled.runner.graphs and report["recompiles"] == compiled.runner.recompiles


@pytest.mark.slow
def test_aot_package_keeps_the_dynamic_batch(tmp_path: Path) -> None:
    request = _request("conv", tmp_path)
    package = package_aot_inductor(request)
    assert package.path.is_file() and package.path.name == "model.pt2"
    runner = AotInductorRunner(package.path, package.convention, request.spec.names)
    eager = EagerRunner(request.module, request.spec.names)
    for batch in (1, 2, 9):
        inputs = make_inputs(request.spec, {"batch": batch}, batch)
        np.testing.assert_allclose(runner.run(inputs)[0], eager.run(inputs)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["conv", "attention"])
def test_every_backend_verifies_at_three_or_more_shapes(
    name: str, options_for: Callable[..., ExportOptions]
) -> None:
    result = export(options_for(name, targets=("all",)))
    assert result.exit_code is ExitCode.OK, [b.shipped_parity.failures() for b in result.backends]
    assert [b.backend for b in result.backends if b.backend != "onnxruntime-optimized"] == [
        "onnxruntime",
        "torchscript",
        "torch-compile",
        "aotinductor",
        "openvino",
    ]
    for backend in result.backends:
        assert len(backend.shipped_parity.cases) >= 3
        assert len({tuple(c.sizes.items()) for c in backend.shipped_parity.cases}) >= 3
    files = {p.name for p in result.out_dir.iterdir()}
    assert {"model.onnx", "model.ts", "model.pt2", "manifest.json", "report.json"} <= files
    timed = {(s.backend, s.label) for s in result.latency}
    for backend in ["pytorch-eager", *(b.backend for b in result.backends)]:
        assert {(backend, "batch=1"), (backend, "batch=2")} <= timed
    compile_info = result.backend("torch-compile").conversion
    assert compile_info["first_compile_seconds"] > 0 and compile_info["graphs"] >= 1
    markdown = (result.out_dir / "report.md").read_text()
    assert "## Parity matrix" in markdown and "aotinductor" in markdown


@pytest.mark.slow
def test_aot_package_runs_from_a_fresh_process(options_for: Callable[..., ExportOptions]) -> None:
    result = export(options_for("conv", targets=("compile",), benchmark=False))
    assert result.exit_code is ExitCode.OK
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    entry = next(a for a in manifest["artifacts"] if a["backend"] == "aotinductor")
    assert entry["loader"] == "torch._inductor.aoti_load_package" and entry["call"]["positional"] == ["image"]
    script = """
import sys, numpy as np, torch
from torch._inductor import aoti_load_package
folder = sys.argv[1]
model = aoti_load_package(folder + "/model.pt2")
for case in ("export", "large"):
    inputs = np.load(f"{folder}/golden/{case}.inputs.npz")
    outputs = np.load(f"{folder}/golden/{case}.outputs.npz")
    got = model(torch.from_numpy(inputs["image"])).numpy()
    np.testing.assert_allclose(got, outputs[outputs.files[0]], rtol=1e-3, atol=1e-4)
    print(case, got.shape)
"""
    completed = subprocess.run(
        [sys.executable, "-c", script, str(result.out_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "export" in completed.stdout and "large" in completed.stdout


def test_a_dim_the_model_pins_fails_aot_packaging_naming_the_dim(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = options_for("lstm", targets=("compile",))  # nn.LSTM turns the sequence length into a constant
    with pytest.raises(ConversionError, match=r"pins dynamic dim 'seq' to 6.*leave compile out of --to"):
        export(options)
    assert not options.out_dir.exists()


def test_a_torchscript_checkpoint_cannot_be_compiled(tmp_path: Path) -> None:
    scripted = torch.jit.script(MODELS["mlp"].build())
    spec = InputSpec((parse_tensor_spec("x:float32:batch=4,16"),))
    request = CompileRequest(scripted, spec, {"x": torch.ones(4, 16)}, tmp_path)
    with pytest.raises(ConversionError, match="needs the Python model"):
        compile_model(request, threads=1)

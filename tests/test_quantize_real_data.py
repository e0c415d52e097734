"""Lossy models and real data: no calibrated candidate from noise, a synthetic-only judgement said
everywhere (status line, report, manifest, verify), ``--require-real-data`` for CI, ``--golden-inputs``, and
no shipped lossy model slower than its float source at any batch size."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from exporter.benchmark.latency import LatencyStats
from exporter.cli import app
from exporter.errors import ExitCode, UsageError
from exporter.pipeline import ExportOptions, export
from exporter.quantize.search import NEEDS_REAL_DATA
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.stages.benchmark import drop_slower_lossy
from tests.models import MODELS

CALIBRATED = ("static-ort", "static-pt2e", "qat-pt2e", "nncf-ort")


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def _mlp_args(checkpoint: Path, out: Path) -> list[str]:
    return [
        "export",
        str(checkpoint),
        "--model",
        MODELS["mlp"].ref,
        *(arg for spec in MODELS["mlp"].inputs for arg in ("--input", spec)),
        "--out",
        str(out),
        "--no-benchmark",
    ]


def _synthetic_export(root: Path, mode: str) -> tuple[Path, str, int]:
    import torch

    checkpoint = root / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    out = root / "out"
    code, output = _cli(*_mlp_args(checkpoint, out), "--quantize", mode, "--calibration-samples", "8")
    return out, output, code


@pytest.fixture(scope="module")
def synthetic_int8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """``--quantize int8`` with no data, as users start."""
    return _synthetic_export(tmp_path_factory.mktemp("synthetic"), "int8")


@pytest.fixture(scope="module")
def synthetic_dynamic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """``--quantize dynamic`` with no data: an explicit mode ships its model within budget even when it is
    not faster than float, so a lossy model ships whatever this machine's timings are."""
    return _synthetic_export(tmp_path_factory.mktemp("dynamic"), "dynamic")


@pytest.mark.slow
def test_int8_without_data_builds_no_calibrated_candidate(synthetic_int8: tuple[Path, str, int]) -> None:
    out, output, code = synthetic_int8
    assert code == 0, output
    report = json.loads((out / "report.json").read_text())
    quant = report["quantization"]
    built = {c["name"] for c in quant["candidates"]}
    assert built == {"dynamic-ort"}
    for name in CALIBRATED:
        assert quant["skipped"][name] == NEEDS_REAL_DATA
    assert quant["calibration"]["judged_on"] == "synthetic"


@pytest.mark.slow
def test_a_synthetic_only_judgement_is_said_everywhere(synthetic_dynamic: tuple[Path, str, int]) -> None:
    out, output, code = synthetic_dynamic
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["int8"]["judged_on"] == "synthetic"
    status = [line for line in output.splitlines() if "PASSED" in line][-1]
    assert "judged on synthetic inputs only" in status
    assert "Judged on synthetic inputs only" in (out / "report.md").read_text()
    assert "Judged on synthetic inputs only" in (out / "report.html").read_text()
    code, verified = _cli("verify", str(out))
    assert code == 0 and "judged on synthetic inputs only" in verified.replace("\n", " ").replace("│", "")
    code, required = _cli("verify", str(out), "--require-real-data")
    assert code == ExitCode.BAD_INPUT, required


def test_static_without_data_is_refused_before_any_work(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = options_for("mlp", quantization=QuantizeOptions(mode=QuantMode.STATIC), benchmark=False)
    with pytest.raises(
        UsageError, match="ranges drawn from noise would be those of the noise: pass --calibration"
    ):
        export(options)
    assert not options.out_dir.exists()


def test_require_real_data_makes_missing_data_exit_2(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    code, output = _cli(
        *_mlp_args(state_dict_checkpoint("mlp"), tmp_path / "out"),
        "--quantize",
        "int8",
        "--require-real-data",
    )
    assert code == ExitCode.BAD_INPUT
    assert "--require-real-data is set: pass --calibration" in output
    assert not (tmp_path / "out").exists()


def test_require_real_data_from_a_recipe_is_checked(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    from exporter.recipe.document import load_recipe

    recipe = tmp_path / "r.toml"
    recipe.write_text('[quantize]\nmode = "int8"\nrequire_real_data = true\n')
    assert load_recipe(recipe).settings["quantization"]["require_real_data"] is True
    recipe.write_text('[quantize]\nrequire_real_data = "yes"\n')
    with pytest.raises(Exception, match="require_real_data"):
        load_recipe(recipe)


def test_golden_inputs_are_verified_on_every_backend_and_kept(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    spec = MODELS["mlp"].inputs[0]
    name, dtype, dims = spec.split(":")[:3]
    width = int(dims.split(",")[-1])
    real = np.random.default_rng(3).standard_normal((5, width)).astype(dtype)
    np.savez(tmp_path / "real.npz", **{name: real})
    out = tmp_path / "out"
    code, output = _cli(
        *_mlp_args(state_dict_checkpoint("mlp"), out), "--golden-inputs", str(tmp_path / "real.npz")
    )
    assert code == 0, output
    manifest = json.loads((out / "manifest.json").read_text())
    case = next(g for g in manifest["golden"] if g["case"] == "golden-inputs")
    assert case["sizes"] == {"batch": 5}
    kept = np.load(out / case["inputs"])
    assert np.array_equal(kept[name], real)
    report = json.loads((out / "report.json").read_text())
    cases = {c["case"] for p in report["parity"] for c in p["cases"]}
    assert "golden-inputs" in cases
    code, verified = _cli("verify", str(out))
    assert code == 0, verified


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"wrong": np.zeros((2, 4), np.float32)}, "has no array"),
        (None, "rank"),
    ],
)
def test_bad_golden_inputs_exit_2_naming_the_problem(
    tmp_path: Path,
    state_dict_checkpoint: Callable[[str], Path],
    arrays: dict[str, np.ndarray] | None,
    message: str,
) -> None:
    name = MODELS["mlp"].inputs[0].split(":")[0]
    np.savez(tmp_path / "bad.npz", **(arrays or {name: np.zeros((2, 3, 4), np.float32)}))
    out = tmp_path / "out"
    code, output = _cli(
        *_mlp_args(state_dict_checkpoint("mlp"), out), "--golden-inputs", str(tmp_path / "bad.npz")
    )
    assert code == ExitCode.BAD_INPUT and message in output
    assert "Traceback" not in output and not out.exists()


def _stats(backend: str, label: str, p50: float) -> LatencyStats:
    return LatencyStats(backend, label, 1, {}, 2, 10, p50, p50, p50, p50, p50, 1000 / p50)


def test_the_benchmark_unships_a_lossy_model_slower_than_its_float_source() -> None:
    from exporter.quantize.search import QuantizationResult
    from exporter.quantize.types import Candidate

    chosen = Candidate("dynamic-ort", "test", path=Path("model.int8.onnx"), chosen=True)
    quantization = QuantizationResult(
        QuantizeOptions(mode=QuantMode.INT8),
        None,
        None,
        None,
        1,
        [],
        None,
        [chosen],
        [],  # type: ignore[arg-type]
    )
    latency = [
        _stats("pytorch-eager", "batch=1", 3.0),
        _stats("onnxruntime", "batch=1", 1.0),
        _stats("onnxruntime-int8", "batch=1", 0.6),
        _stats("onnxruntime", "batch=8", 4.0),
        _stats("onnxruntime-int8", "batch=8", 4.4),
    ]
    notes: list[str] = []
    kept = drop_slower_lossy(latency, quantization, notes)
    assert not chosen.chosen and {s.backend for s in kept} == {"pytorch-eager", "onnxruntime"}
    assert notes and "model.int8.onnx not shipped" in notes[0] and "batch=8" in notes[0]
    chosen.chosen = True
    faster = [s for s in latency if s.label == "batch=1"]
    assert drop_slower_lossy(faster, quantization, notes) == faster and chosen.chosen


def test_an_explicit_mode_keeps_its_choice_even_when_the_benchmark_finds_it_slower() -> None:
    from exporter.quantize.search import QuantizationResult
    from exporter.quantize.types import Candidate

    chosen = Candidate("dynamic-ort", "test", path=Path("model.int8.onnx"), chosen=True)
    quantization = QuantizationResult(
        QuantizeOptions(mode=QuantMode.DYNAMIC),
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        1,
        [],
        None,
        [chosen],
        [],
    )
    latency = [_stats("onnxruntime", "batch=1", 1.0), _stats("onnxruntime-int8", "batch=1", 1.5)]
    assert drop_slower_lossy(latency, quantization, []) == latency and chosen.chosen


def test_missing_golden_inputs_say_so(tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]) -> None:
    out = tmp_path / "out"
    code, output = _cli(
        *_mlp_args(state_dict_checkpoint("mlp"), out), "--golden-inputs", str(tmp_path / "nope.npz")
    )
    assert code == ExitCode.BAD_INPUT and "does not exist" in output and not out.exists()

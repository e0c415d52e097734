from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.benchmark.latency import TimingConfig
from exporter.pipeline import ExportOptions
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.models import MODELS

FAST_TIMING = TimingConfig(warmup=1, min_runs=3, min_seconds=0.0, max_runs=5, max_seconds=1.0)


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


@pytest.fixture
def state_dict_checkpoint(tmp_path: Path) -> Callable[[str], Path]:
    """Save the named tiny model's weights as a training-style checkpoint and return its path."""

    def save(name: str) -> Path:
        path = tmp_path / f"{name}.pt"
        torch.save({"model_state_dict": MODELS[name].build().state_dict(), "epoch": 3}, path)
        return path

    return save


@pytest.fixture
def options_for(tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]) -> Callable[..., ExportOptions]:
    """ExportOptions for a tiny model from ``tests/models.py``, fast timing, output under tmp_path."""

    def build(name: str, **overrides: object) -> ExportOptions:
        model = MODELS[name]
        settings: dict[str, object] = {
            "checkpoint": state_dict_checkpoint(name),
            "model_ref": model.ref,
            "spec": InputSpec(tuple(parse_tensor_spec(s) for s in model.inputs)),
            "out": tmp_path / "out" / name,
            "timing": FAST_TIMING,
            "batch_sizes": (1, 2),
        }
        settings.update(overrides)
        return ExportOptions.from_settings(settings)

    return build


def export_tiny_mlp(root: Path, **overrides: object) -> Path:
    """Export the tiny MLP into ``root/artifacts`` (ONNX, fast timing, no benchmark unless overridden) and
    return the folder: the shared setup of the modules that gate or edit a real artifacts folder."""
    from exporter.errors import ExitCode
    from exporter.pipeline import export

    checkpoint = root / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    settings: dict[str, object] = {
        "checkpoint": checkpoint,
        "name": "mlp",  # served as /v2/models/mlp (without it the folder would name the model "artifacts")
        "model_ref": MODELS["mlp"].ref,
        "spec": InputSpec(tuple(parse_tensor_spec(s) for s in MODELS["mlp"].inputs)),
        "out": root / "artifacts",
        "timing": FAST_TIMING,
        "benchmark": False,
        "batch_sizes": (1,),
    }
    settings.update(overrides)
    result = export(ExportOptions.from_settings(settings))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    return result.out_dir


def write_calibration(spec: InputSpec, folder: Path, count: int = 24) -> Path:
    """Calibration data as a file, the way a user passes real data (``--calibration FILE.npz``): calibrated
    int8 candidates are built only from data given, never from inputs drawn from the spec. For random-weight
    mechanics tests the file holds seeded draws from the spec."""
    from exporter.quantize.calibration import load_samples

    samples = load_samples(None, spec, count, seed=7).samples
    path = folder / f"calibration-{'-'.join(spec.names)}-{abs(hash(spec)) % 100_000}.npz"
    np.savez(path, **{name: np.concatenate([s[name] for s in samples]) for name in spec.names})
    return path

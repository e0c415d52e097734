from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from exporter.benchmark import TimingConfig
from exporter.pipeline import ExportOptions
from exporter.specs import InputSpec, parse_tensor_spec
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

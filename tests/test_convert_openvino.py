"""``exporter.convert.openvino``: OpenVINO's converter without its telemetry, whose every event forks the
whole process (a multi-GB one, during a big model's conversion)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.convert.openvino import convert_model, without_telemetry

telemetry = pytest.importorskip("openvino_telemetry.backend.backend_ga4")


def test_converting_forks_no_process(tmp_path: Path) -> None:
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(torch.nn.Linear(4, 3), (torch.ones(1, 4),), str(path), dynamo=False)
    forks: list[int] = []
    os.register_at_fork(before=lambda: forks.append(1))
    model = convert_model(str(path))
    import openvino as ov

    compiled = ov.Core().compile_model(model, "CPU")
    assert np.asarray(compiled(np.ones((1, 4), np.float32))[0]).shape == (1, 3)
    assert forks == []


def test_the_sender_is_restored_after_the_block() -> None:
    original = telemetry.GA4Backend.send
    with without_telemetry():
        assert telemetry.GA4Backend.send is not original
    assert telemetry.GA4Backend.send is original

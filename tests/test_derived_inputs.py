"""Real inputs against a derived dim (``mask:int64:batch=1..4,total=past+seq``): a ``--golden-inputs`` file or
a calibration sample whose mask is not past + seq long is refused in one line naming the sizes, before the
model runs on shapes no decoder takes; consistent arrays are accepted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from exporter.errors import CalibrationError, InputSpecError
from exporter.quantize.calibration import load_samples
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from exporter.verify.parity import golden_from_file
from tests.test_spec_derived import IDS, MASK, PAST, make_decoder_step

SPEC = InputSpec(tuple(parse_tensor_spec(t) for t in (IDS, MASK, PAST)))


def _arrays(batch: int, seq: int, past: int, total: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.integers(0, 50, (batch, seq)).astype(np.int64),
        "mask": np.ones((batch, total), np.int64),
        "past": rng.standard_normal((batch, past)).astype(np.float32),
    }


def _save(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def test_golden_inputs_must_honour_a_derived_dim(tmp_path: Path) -> None:
    reference = EagerRunner(make_decoder_step(), SPEC.names)
    good = golden_from_file(reference, SPEC, _save(tmp_path / "good.npz", _arrays(2, 5, 3, 8)))
    assert good.case.sizes == {"batch": 2, "seq": 5, "total": 8, "past": 3}
    assert good.outputs[0].shape == (2, 8)
    bad = _save(tmp_path / "bad.npz", _arrays(2, 5, 3, 7))
    with pytest.raises(InputSpecError) as raised:
        golden_from_file(reference, SPEC, bad)
    assert str(raised.value) == (
        f"--golden-inputs '{bad}': dim 'total' is 7 but past + seq is 3 + 5 = 8, as the input spec says; "
        "fix the arrays' shapes"
    )


def test_calibration_samples_must_honour_a_derived_dim(tmp_path: Path) -> None:
    good = load_samples(_save(tmp_path / "good.npz", _arrays(3, 4, 0, 4)), SPEC, 8, 0)
    assert len(good.samples) == 3 and good.samples[0]["mask"].shape == (1, 4)
    bad = _save(tmp_path / "bad.npz", _arrays(3, 4, 2, 4))
    with pytest.raises(CalibrationError) as raised:
        load_samples(bad, SPEC, 8, 0)
    assert str(raised.value) == (
        f"'{bad}' sample 0: dim 'total' is 4 but past + seq is 2 + 4 = 6, as the input spec says; "
        "fix the arrays' shapes"
    )

"""One verification for every backend, and float64 arbitration when float backends disagree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from exporter.backends._verify import arbitrate_float_backends, verify_backend
from exporter.backends.registry import ArtifactCandidate
from exporter.runners.base import Runner
from exporter.runners.pytorch import EagerRunner, Float64EagerRunner
from exporter.specs.inputs import InputSpec, parse_tensor_spec, shape_cases
from exporter.verify.parity import Tolerance, make_golden

TIGHT = Tolerance(atol=0.0, rtol=1e-7)


class RunningSum(nn.Module):
    """A long cumulative sum of large values: float32 eager drifts far from the exact result."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.cumsum(x * 1000.0, dim=1)


class MoreAccurate(Runner):
    """Computes in float64 and rounds once to float32: closer to the truth than eager float32."""

    name = "accurate"

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__(names)
        self.inner = Float64EagerRunner(module, names)

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [o.astype(np.float32) for o in self.inner.run(inputs)]


class Noisy(Runner):
    """Eager float32 plus noise far larger than float32 rounding."""

    name = "noisy"

    def __init__(self, module: nn.Module, names: Sequence[str]) -> None:
        super().__init__(names)
        self.inner = EagerRunner(module, names)

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        return [o + rng.normal(0, 1.0, o.shape).astype(np.float32) for o in self.inner.run(inputs)]


def _setup() -> tuple[nn.Module, InputSpec, list]:
    module = RunningSum()
    spec = InputSpec((parse_tensor_spec("x:float32:batch=2,4096"),))
    golden = make_golden(EagerRunner(module, spec.names), spec, shape_cases(spec), 0)
    return module, spec, golden


def test_a_backend_closer_to_float64_than_eager_is_accepted_by_arbitration() -> None:
    module, spec, golden = _setup()
    accurate = verify_backend(
        backend="accurate",
        target="test",
        file=None,
        candidates=[ArtifactCandidate("only", None, lambda: MoreAccurate(module, spec.names))],
        golden=golden,
        tolerance=TIGHT,
    )
    assert not accurate.passed and accurate.shipped_parity.numeric_failure
    note = arbitrate_float_backends([accurate], module, golden, spec.names)
    assert accurate.passed and accurate.shipped_parity.arbitrated
    assert note is not None and "accurate accepted" in note
    message = accurate.shipped_parity.cases[0].outputs[0].message or ""
    assert "accepted by float64 arbitration" in message
    assert accurate.shipped_parity.to_json()["float64_arbitrated"] is True


def test_a_noisy_backend_still_fails_against_float64() -> None:
    module, spec, golden = _setup()
    noisy = verify_backend(
        backend="noisy",
        target="test",
        file=None,
        candidates=[ArtifactCandidate("only", None, lambda: Noisy(module, spec.names))],
        golden=golden,
        tolerance=Tolerance(),
    )
    assert not noisy.passed
    note = arbitrate_float_backends([noisy], module, golden, spec.names)
    assert not noisy.passed
    assert note is not None and "noisy still failing" in note
    assert "float64 arbitration: RMSE" in (noisy.shipped_parity.failures()[0])


def test_no_arbitration_when_every_backend_passes() -> None:
    module, spec, golden = _setup()
    eager_again = verify_backend(
        backend="eager",
        target="test",
        file=None,
        candidates=[ArtifactCandidate("only", None, lambda: EagerRunner(module, spec.names))],
        golden=golden,
        tolerance=TIGHT,
    )
    assert eager_again.passed
    assert arbitrate_float_backends([eager_again], module, golden, spec.names) is None


def test_candidates_are_tried_best_first_and_an_unloadable_one_is_recorded(tmp_path: Path) -> None:
    module, spec, golden = _setup()

    def broken() -> Runner:
        raise RuntimeError("required keyword attribute 'value' is undefined")

    result = verify_backend(
        backend="eager",
        target="test",
        file="model.bin",
        candidates=[
            ArtifactCandidate("best", tmp_path / "best", broken),
            ArtifactCandidate("plain", tmp_path / "plain", lambda: EagerRunner(module, spec.names)),
        ],
        golden=golden,
        tolerance=Tolerance(),
    )
    assert [p.artifact for p in result.parity] == ["best", "plain"]
    assert result.shipped == "plain" and result.path == tmp_path / "plain" and result.passed
    assert "cannot load it" in result.parity[0].failures()[0]


def test_a_failing_backend_reports_the_candidate_that_ran_not_a_fallback_that_never_loaded(
    tmp_path: Path,
) -> None:
    """OpenVINO's IR from ONNX missed parity and its fallback (ov.convert_model of the module) could not
    even be built: the result names the IR's failure and ships its file (exit 1 with a report), rather than
    a file that was never written (an internal error in the write stage)."""
    module, spec, golden = _setup()
    ran = tmp_path / "ran.onnx"
    ran.write_bytes(b"artifact")

    def unbuildable() -> Runner:
        raise RuntimeError("Check 'false' failed at unconverted_ops_report.cpp:151")

    result = verify_backend(
        backend="noisy",
        target="test",
        file="model.test",
        candidates=[
            ArtifactCandidate("from-onnx", ran, lambda: Noisy(module, spec.names)),
            ArtifactCandidate("from-module", tmp_path / "never-written", unbuildable),
        ],
        golden=golden,
        tolerance=Tolerance(),
    )
    assert not result.passed
    assert result.shipped == "from-onnx" and result.path == ran
    assert [p.artifact for p in result.parity] == ["from-onnx", "from-module"]

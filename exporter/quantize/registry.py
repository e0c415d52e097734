"""What a lossy candidate is, as the registry in ``candidates.py`` holds it: its spec (builder, modes,
needs, repairs, runtime, the models it is built for). Apart from the registry so that modules defining
candidates (``weight_only.py``) need not import the registry that lists them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from exporter.quantize.repairs import Repair
from exporter.quantize.shipping import REFERENCE_RUNTIME
from exporter.quantize.types import Builder, Candidate, QuantizeContext, QuantMode

__all__ = ["CandidateSpec", "Requirement", "SkipRule"]


class Requirement(StrEnum):
    """What a candidate needs beyond the float ONNX model."""

    CALIBRATION_DATA = "calibration data"
    EXPORTABLE_MODULE = "a torch.export-able module"
    TRAINING = "training steps (a qat_train hook, or distillation on the calibration inputs)"


SkipRule = Callable[[QuantMode, Sequence[Candidate]], str | None]
"""Given the mode and the candidates built so far, why this one need not be built, or None."""


@dataclass(frozen=True)
class CandidateSpec:
    """One int8 candidate.

    Attributes:
        name: the candidate's name in reports and manifests (``static-ort``).
        engine: what makes it, as the report says it.
        build: writes the model; repairs call it again with other settings or layers kept in float.
        modes: the ``--quantize`` modes that build it.
        needs: what it needs beyond the float ONNX model (documentation and tests; the builder checks).
        repairs: tried in order after the first judgement; each returns at once when it does not apply.
        skip: when the candidate need not be built given those built before it.
        runtime: what runs the model it writes (``onnxruntime``, or ``openvino`` for an IR, ``.xml``).
        suffix: the file it writes.
        unavailable: why it cannot be built in this run (no bf16 on this CPU, its runtime not a target).
        config: the runtime settings it is judged, timed and shipped with (OpenVINO's plugin config).
        float_model: how the float model it must beat is made from the float ONNX model when its runtime
            times another format (OpenVINO: an IR); None: the float ONNX model itself.
        decoder: which models it is built for: False (the default) all but decoders with a KV cache, True
            decoders only (the weight-only candidates of ``weight_only.py``), None both.
    """

    name: str
    engine: str
    build: Builder
    modes: frozenset[QuantMode]
    needs: frozenset[Requirement] = frozenset()
    repairs: tuple[Repair, ...] = ()
    skip: SkipRule | None = None
    runtime: str = REFERENCE_RUNTIME
    suffix: str = ".onnx"
    unavailable: Callable[[QuantizeContext], str | None] | None = None
    config: Callable[[QuantizeContext], dict[str, str]] | None = None
    float_model: Callable[[Path, Path], Path] | None = None
    decoder: bool | None = False

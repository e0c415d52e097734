"""Types every part of the int8 stage shares: the modes, the stage's options, one candidate's record, and
the context a candidate's builder and repairs receive.

They live apart from ``search.py`` so the candidate registry, the repairs and the selection can use them
without importing the orchestration that uses all three.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from exporter.backends.registry import BackendSpec
from exporter.benchmark.latency import BatchPlan, LatencyStats
from exporter.errors import UsageError
from exporter.quantize.budget import Int8Comparison, ParityBudget
from exporter.quantize.calibration import SampleSet
from exporter.quantize.decoder import DecoderJudging, GenerationJudgement
from exporter.quantize.onnx_ort import CALIBRATION_METHODS, Int8Formats
from exporter.quantize.sensitivity import LayerError
from exporter.quantize.shipping import REFERENCE_RUNTIME, lossy_backend, shipped_file
from exporter.specs.inputs import InputSpec
from exporter.verify.parity import GoldenCase

__all__ = ["Builder", "Candidate", "QuantMode", "QuantizeContext", "QuantizeOptions", "cosine_error"]


class QuantMode(StrEnum):
    NONE = "none"
    DYNAMIC = "dynamic"
    STATIC = "static"
    QAT = "qat"
    INT8 = "int8"
    INT4 = "int4"
    BF16 = "bf16"


WEIGHT_ONLY_MODES = frozenset({QuantMode.INT8, QuantMode.INT4})
"""The modes a decoder's weight-only candidates belong to, and where a lossy model slower than float (per
token, for a decoder) never ships."""

DEFAULT_BLOCK_SIZE = 32
"""Weights per scale in block-wise int4 (``--block-size``): ONNX Runtime GenAI's model builder uses 32, NNCF
defaults to 128. 32 costs about 0.8 bit per weight more than 128 (a float32 scale and a 4-bit zero point per
block) and is the more accurate; and a block must divide the hidden sizes of small decoders too (64 in the
test decoders)."""


DEFAULT_TOKEN_MATCH = {QuantMode.INT8: 0.75, QuantMode.INT4: 0.5}
"""The token-match floor per mode when ``--min-token-match`` is not given: the share of the float model's
greedy tokens a decoder candidate reproduces before its first divergence, averaged over the golden prompts.
A judgement, not a fit: greedy decoding flips wherever two tokens nearly tie, and after a flip every token
differs, so even a good lossy model scores below 1. int8 weights barely move the logits (teacher-forced
logits cosine 0.99-0.998 on the test decoders, against 0.45-0.79 for int4), so three quarters of the way on
average is the least a user of an int8 decoder should get; int4 is accepted to drift sooner (ONNX Runtime
GenAI and OpenVINO ship it knowing so), but a model that leaves the float model's path before half of it, on
average, is a different model. Random-weight test decoders have no margins between tokens and miss both."""


@dataclass(frozen=True)
class QuantizeOptions:
    """Settings of the quantize stage (``--quantize`` and friends, or a recipe's ``[quantize]``).

    ``min_cosine``, ``min_top1``, ``min_sqnr_db`` and ``max_abs`` are ``ParityBudget``'s fields as flags
    (flat, as report.json's ``settings.quantization`` has them); ``budget`` is them as one ``ParityBudget``.
    """

    mode: QuantMode = QuantMode.NONE
    calibration: str | None = None
    samples: int = 64
    method: str = "auto"
    min_cosine: float = ParityBudget.min_cosine
    min_top1: float | None = ParityBudget.min_top1
    min_sqnr_db: float | None = ParityBudget.min_sqnr_db
    max_abs: float | None = ParityBudget.max_abs
    max_float_layers: int = 8
    qat_steps: int = 100
    qat_lr: float = 1e-4
    qat_train: str | None = None
    eval_data: str | None = None
    metric: str | None = None
    block_size: int = DEFAULT_BLOCK_SIZE
    """``--block-size``: weights per scale in int4 (and the ONNX Runtime int8 MatMulNBits) candidates."""
    min_token_match: float | None = None
    """``--min-token-match``: a decoder candidate's floor on the mean token-match share (None: the mode's
    default in ``DEFAULT_TOKEN_MATCH``)."""
    require_real_data: bool = False
    """``--require-real-data``: no real calibration data is a usage error (exit 2), not a synthetic-only
    judgement; for CI, where a lossy artifact proven only on noise must not land."""

    def __post_init__(self) -> None:
        """Check the budget here, so a bad flag or recipe value fails before minutes of conversion."""
        try:
            object.__setattr__(self, "mode", QuantMode(self.mode))
        except ValueError:
            modes = ", ".join(m.value for m in QuantMode)
            raise UsageError(f"--quantize {self.mode!r} is not a mode: use one of {modes}") from None
        if self.method != "auto" and self.method not in CALIBRATION_METHODS:
            raise UsageError(f"--calibration-method must be auto or one of {', '.join(CALIBRATION_METHODS)}")
        for flag, count, least in (
            ("--calibration-samples", self.samples, 1),
            ("[quantize].max_float_layers", self.max_float_layers, 0),
            ("[quantize].qat_steps", self.qat_steps, 0),
            ("--block-size", self.block_size, 16),
        ):
            if not isinstance(count, int) or isinstance(count, bool) or count < least:
                raise UsageError(f"{flag} {count!r} must be an integer >= {least}")
        if self.block_size & (self.block_size - 1):
            raise UsageError(f"--block-size {self.block_size} must be a power of two (16, 32, 64, 128, ...)")
        bounds: tuple[tuple[str, float | None, bool, float, float, str], ...] = (
            ("--min-cosine", self.min_cosine, False, -1.0, 1.0, "is outside [-1, 1]"),
            ("--min-top1", self.min_top1, True, 0.0, 1.0, "is outside [0, 1]"),
            ("--min-token-match", self.min_token_match, True, 0.0, 1.0, "is outside [0, 1]"),
            ("--min-sqnr", self.min_sqnr_db, True, -math.inf, math.inf, "must be a finite number of dB"),
            ("[quantize].max_abs", self.max_abs, True, 0.0, math.inf, "must be a finite number >= 0"),
            ("[quantize].qat_lr", self.qat_lr, False, math.ulp(0.0), math.inf, "must be a finite number > 0"),
        )
        for flag, value, optional, low, high, expected in bounds:
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise UsageError(f"{flag} {value!r} {expected}")
            if not (math.isfinite(value) and low <= value <= high):
                raise UsageError(f"{flag} {value:g} {expected}")

    @property
    def token_match_floor(self) -> float:
        """The floor a decoder candidate's mean token-match share must reach."""
        if self.min_token_match is not None:
            return self.min_token_match
        return DEFAULT_TOKEN_MATCH.get(self.mode, DEFAULT_TOKEN_MATCH[QuantMode.INT8])

    @property
    def budget(self) -> ParityBudget:
        return ParityBudget(
            min_cosine=self.min_cosine,
            min_top1=self.min_top1,
            min_sqnr_db=self.min_sqnr_db,
            max_abs=self.max_abs,
        )


def cosine_error(outputs: Sequence[Int8Comparison]) -> float:
    """1 - the worst per-sample cosine over outputs: the quantity the default budget gates."""
    return max((1.0 - o.min_cosine for o in outputs), default=1.0)


@dataclass
class Candidate:
    """One lossy model (int8, or bf16 execution): how it was made, how far it moved, how big and fast it is
    next to the float model in the same runtime."""

    name: str
    engine: str
    settings: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    runtime: str = REFERENCE_RUNTIME
    """What runs it (a registered backend's ``runtime``): ``onnxruntime`` (an ONNX file) or ``openvino``
    (an IR compiled with ``config``). The backend it ships in and the file follow from it."""
    config: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    explanation: str | None = None
    """The failure's whole text (torch's explanation and suggested fix) when ``error``'s one line cuts it."""
    build_seconds: float = 0.0
    size_bytes: int = 0
    outputs: list[Int8Comparison] = field(default_factory=list)
    shape_errors: list[str] = field(default_factory=list)
    float_layers: list[LayerError] = field(default_factory=list)
    latency: list[LatencyStats] = field(default_factory=list)
    p50_ratio: float | None = None
    accuracy: float | None = None
    chosen: bool = False
    generation: GenerationJudgement | None = None
    """A decoder candidate's greedy generation against the float model's (``decoder.judge_generation``)."""
    decoder: bool = False
    """Judged as a decoder: its generation gates it, and without one (it failed to generate) it fails the
    budget, so cosine on synthetic inputs alone never ships it."""
    timed_in_full: bool = True
    """Timed at every batch plan; False when its first plan already ruled it out (``time_candidates``)."""

    @property
    def backend(self) -> BackendSpec | None:
        """The registered lossy backend this candidate ships in when chosen (None: it can never ship)."""
        return lossy_backend(self.runtime)

    @property
    def shipped_as(self) -> str | None:
        """The file it ships as when chosen (``model.int8.onnx``)."""
        return shipped_file(self.runtime)

    @property
    def budget_passed(self) -> bool:
        """Within the parity budget at every output and shape. A decoder is judged by its generation (token
        match and logits cosine on the golden prompts' real token sequences) instead of the synthetic
        samples, whose random past tensors no real cache holds; those are recorded, not gated."""
        if self.error is not None or self.shape_errors or not self.outputs:
            return False
        if self.decoder:
            return self.generation is not None and self.generation.passed
        return all(o.passed for o in self.outputs)

    @property
    def faster_than_float(self) -> bool:
        """Faster than its runtime's float model at every batch size timed, not only on average: a lossy
        artifact slower at some batch size than the float one it replaces is no win there."""
        if self.p50_ratio is None or not self.latency or not self.timed_in_full:
            return False
        return all(s.speedup_vs_float is not None and s.speedup_vs_float > 1.0 for s in self.latency)

    @property
    def slower_at(self) -> list[str]:
        """The batch plans (labels) at which it was not faster than its float model."""
        return [s.label for s in self.latency if not (s.speedup_vs_float and s.speedup_vs_float > 1.0)]

    @property
    def cosine_error(self) -> float:
        return cosine_error(self.outputs)

    def to_json(self, float_size: int) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine,
            "runtime": self.runtime,
            "config": self.config,
            "settings": self.settings,
            "error": self.error,
            "explanation": self.explanation,
            "build_seconds": round(self.build_seconds, 2),
            "size_bytes": self.size_bytes,
            "size_ratio": self.size_bytes / float_size if self.size_bytes and float_size else None,
            "outputs": [asdict(o) for o in self.outputs],
            "shape_errors": self.shape_errors,
            "float_layers": [e.to_json() for e in self.float_layers],
            "latency": [s.to_json() for s in self.latency],
            "p50_ratio_vs_float": self.p50_ratio,
            "accuracy": self.accuracy,
            "generation": None if self.generation is None else self.generation.to_json(),
            "budget_passed": self.budget_passed,
            "faster_than_float": self.faster_than_float,
            "timed_in_full": self.timed_in_full,
            "chosen": self.chosen,
        }


@dataclass
class QuantizeContext:
    """What every candidate builder and repair needs; built once by ``run_quantization``.

    ``reduce_range`` and ``calibration_method`` are decisions a builder or a repair makes once and later
    rebuilds (float-layer trials) reuse; None until made.
    """

    options: QuantizeOptions
    module: torch.nn.Module
    spec: InputSpec
    float_onnx: Path
    preprocessed: Path
    work_dir: Path
    formats: Int8Formats
    calibration: SampleSet
    evaluation: SampleSet
    reference: list[list[np.ndarray]]
    golden: Sequence[GoldenCase]
    threads: int
    step: Callable[[str], None]
    targets: tuple[str, ...] = ("onnx",)
    """The run's ``--to`` targets: a candidate for a runtime that will not ship is not built."""
    external_data: bool = False
    """Whether the float model keeps external data (or is near 2 GB): every ONNX candidate then does too,
    in one ``<file>.data`` (``preprocess.external_output``, read once)."""
    reduce_range: bool | None = None
    calibration_method: str | None = None
    decoder: DecoderJudging | None = None
    """Set for a decoder: every candidate is also judged by generation (``decoder.judge_generation``)."""
    rank_plan: BatchPlan | None = None
    """The first batch plan, on which a candidate that missed the budget is raced against those that met it
    before any repair (``search.build_candidate``); None: no race."""
    built: list[Candidate] = field(default_factory=list)
    """The candidates judged so far, in build order."""
    cache: dict[Any, Any] = field(default_factory=dict)
    """What candidates share within one run so none redoes another's work (NNCF statistics, variants
    already judged); keys are the owning module's business."""


Builder = Callable[[QuantizeContext, Path, Sequence[str]], dict[str, Any]]
"""Writes one int8 ONNX model to the path, keeping the named ONNX nodes in float where the builder can, and
returns the settings the report records."""

"""The lossy candidate registry: one spec per way of making an int8 (or bf16) model, in the spirit of
torchao's config-to-handler registry (``torchao/core/config.py``). A spec names its builder, the modes it
belongs to, what it needs, the repairs tried when it misses the budget, and when it need not be built; the
search iterates the registry and never names a candidate. Adding a candidate is one ``register`` call.

Registration order is the order candidates are built, listed and (for ``int8``) considered.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from exporter._registries import Registry
from exporter.convert.onnx_files import model_files
from exporter.quantize.judge import judge
from exporter.quantize.onnx_ort import quantize_dynamic_ort, quantize_static_ort
from exporter.quantize.openvino_candidates import (
    NNCF_OPENVINO_NAME,
    OPENVINO_RUNTIME,
    bf16_config,
    build_bf16_openvino,
    build_nncf_openvino,
    build_nncf_openvino_ac,
    build_nncf_openvino_sq,
    float_openvino_ir,
    int8_openvino_config,
    needs_bf16,
    needs_openvino_target,
    remember_judgement,
    skip_accuracy_control,
    skip_smooth_quant,
    smooth_quant_unavailable,
    transformer,
)
from exporter.quantize.openvino_mixed import keep_openvino_layers_in_float
from exporter.quantize.pt2e import build_pt2e
from exporter.quantize.registry import CandidateSpec, Requirement, SkipRule
from exporter.quantize.repairs import (
    AUTO_CALIBRATION,
    keep_sensitive_layers_in_float,
    search_calibration_method,
)
from exporter.quantize.shipping import REFERENCE_RUNTIME, runtime_title
from exporter.quantize.types import Candidate, QuantizeContext, QuantMode
from exporter.quantize.weight_only import WEIGHT_ONLY_SPECS

__all__ = [
    "BF16_OPENVINO",
    "DYNAMIC_ORT",
    "NNCF_OPENVINO",
    "NNCF_OPENVINO_AC",
    "NNCF_OPENVINO_SQ",
    "NNCF_ORT",
    "QAT_PT2E",
    "STATIC_ORT",
    "STATIC_PT2E",
    "CandidateSpec",
    "Requirement",
    "SkipRule",
    "candidate_specs",
    "candidates_for",
    "register",
    "unregister",
]


_REGISTRY = Registry[CandidateSpec]("int8 candidate")
register = _REGISTRY.register
unregister = _REGISTRY.unregister
candidate_specs = _REGISTRY.entries


def candidates_for(mode: QuantMode, decoder: bool = False) -> list[CandidateSpec]:
    """The candidates ``mode`` builds for a decoder with a KV cache or another model, in registration
    order."""
    return [
        spec
        for spec in candidate_specs()
        if mode in spec.modes and (spec.decoder is None or spec.decoder == decoder)
    ]


# ---- ONNX Runtime ----------------------------------------------------------------------------------------


def _build_dynamic(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """Full-range int8 weights; without VNNI also 7-bit (``reduce_range``), measured once, better kept."""
    if context.reduce_range is None:
        context.reduce_range = False
        if not context.formats.vnni:
            errors = {}
            for reduce_range in (False, True):
                trial = Candidate(DYNAMIC_ORT.name, DYNAMIC_ORT.engine, path=target)
                quantize_dynamic_ort(
                    context.preprocessed,
                    target,
                    context.formats,
                    exclude,
                    reduce_range=reduce_range,
                    external=context.external_data,
                )
                judge(trial, context)
                errors[reduce_range] = trial.cosine_error
            context.reduce_range = errors[True] < errors[False]
    reduce_range = context.reduce_range
    quantize_dynamic_ort(
        context.preprocessed,
        target,
        context.formats,
        exclude,
        reduce_range=reduce_range,
        external=context.external_data,
    )
    return {"per_channel": True, "weight_type": context.formats.weight, "reduce_range": reduce_range}


def _build_static_ort(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """Static QDQ with the calibration method asked for, or the one the method search settled on."""
    method = context.calibration_method or AUTO_CALIBRATION[0]
    if context.options.method != "auto":
        method = context.options.method
    quantize_static_ort(
        context.preprocessed,
        target,
        context.calibration.samples,
        context.formats,
        method=method,
        exclude=exclude,
        cache=context.work_dir / f"calibration-{method}.cache",
        external=context.external_data,
    )
    return {
        "format": "QDQ",
        "per_channel": True,
        "activation_type": context.formats.activation,
        "weight_type": context.formats.weight,
        "reduce_range": context.formats.reduce_range_static,
        "calibration_method": method,
    }


DYNAMIC_ORT = register(
    CandidateSpec(
        "dynamic-ort",
        "onnxruntime.quantization (dynamic)",
        _build_dynamic,
        frozenset({QuantMode.DYNAMIC, QuantMode.INT8}),
        repairs=(keep_sensitive_layers_in_float,),
        decoder=None,
    )
)
STATIC_ORT = register(
    CandidateSpec(
        "static-ort",
        "onnxruntime.quantization (static QDQ)",
        _build_static_ort,
        frozenset({QuantMode.STATIC, QuantMode.INT8}),
        needs=frozenset({Requirement.CALIBRATION_DATA}),
        repairs=(search_calibration_method, keep_sensitive_layers_in_float),
    )
)


# ---- torchao PT2E ----------------------------------------------------------------------------------------


def _build_static_pt2e(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """PT2E quantizes the eager module, so ONNX node names to keep in float do not apply (no such repair)."""
    return build_pt2e(context, target, qat=False)


def _build_qat_pt2e(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    return build_pt2e(context, target, qat=True)


def _skip_qat(mode: QuantMode, built: Sequence[Candidate]) -> str | None:
    """Why ``--quantize int8`` need not run QAT, or None.

    QAT ends in the same int8 graph as static PT2E (same quantizer, same converted ops), so it cannot be
    faster; it only buys accuracy, at the cost of training: 534 of the 1088 s the quantize stage took on
    the trained MiniLM, ending at min cosine 0.919, never chosen. So ``int8`` runs it only as a last resort
    for ONNX Runtime: not when static PT2E could not be built (QAT builds the same graph), nor when any
    ONNX Runtime candidate already meets the budget. ``--quantize qat`` always runs it.
    """
    if mode is not QuantMode.INT8:
        return None
    static = next((c for c in built if c.name == STATIC_PT2E.name), None)
    if static is not None and static.budget_passed:
        return (
            f"not run: {STATIC_PT2E.name} already meets the budget, and QAT ends in the same int8 graph, "
            "so it could only add accuracy, not speed (--quantize qat runs it)"
        )
    if static is not None and static.error is not None:
        return (
            f"not run: {STATIC_PT2E.name} could not be built, and QAT builds the same graph "
            "(--quantize qat runs it)"
        )
    passing = [c.name for c in built if c.runtime == REFERENCE_RUNTIME and c.budget_passed]
    if passing:
        return (
            f"not run: {', '.join(passing)} already meets the budget in {runtime_title(REFERENCE_RUNTIME)}; "
            "QAT only buys accuracy "
            f"at {STATIC_PT2E.name}'s speed and costs minutes of training (--quantize qat runs it)"
        )
    return None


_PT2E_NEEDS = frozenset({Requirement.CALIBRATION_DATA, Requirement.EXPORTABLE_MODULE})
STATIC_PT2E = register(
    CandidateSpec(
        "static-pt2e",
        "torchao PT2E (static)",
        _build_static_pt2e,
        frozenset({QuantMode.STATIC, QuantMode.INT8}),
        needs=_PT2E_NEEDS,
    )
)
QAT_PT2E = register(
    CandidateSpec(
        "qat-pt2e",
        "torchao PT2E (QAT)",
        _build_qat_pt2e,
        frozenset({QuantMode.QAT, QuantMode.INT8}),
        needs=_PT2E_NEEDS | {Requirement.TRAINING},
        skip=_skip_qat,
    )
)


# ---- NNCF and OpenVINO (builders in openvino_candidates.py) ----------------------------------------------


def _build_nncf_ort(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """NNCF's ONNX backend: a QDQ model for ONNX Runtime, NNCF's defaults (transformer type if it is one)."""
    from exporter.quantize.nncf_int8 import nncf_quantize_onnx

    return nncf_quantize_onnx(
        context.float_onnx, target, context.calibration.samples, transformer=transformer(context)
    )


NNCF_ORT_MEMORY = 8.0
"""NNCF's ONNX backend's peak over the float model's weights: measured 7.6x on a 255 M-parameter encoder
with external data, 11.4x without (0.94 GiB of weights: 7.1 and 10.7 GiB), against 3.5x for static-ort."""


def _nncf_ort_memory(context: QuantizeContext) -> str | None:
    """Why nncf-ort is not built: what it would need is more than the memory left (MemAvailable, or the
    cgroup's limit), so it would take the run down with it instead of failing alone."""
    from exporter.stages.memory import available_memory

    weights = sum(f.stat().st_size for f in model_files(context.float_onnx))
    need = NNCF_ORT_MEMORY * weights
    available, source = available_memory()
    if need <= available:
        return None
    gib = 2**30
    return (
        f"not built: NNCF's ONNX backend needs about {NNCF_ORT_MEMORY:g}x the float weights "
        f"({need / gib:.1f} GiB) and {available / gib:.1f} GiB is available ({source})"
    )


NNCF_ORT = register(
    CandidateSpec(
        "nncf-ort",
        "NNCF (ONNX backend, QDQ) in ONNX Runtime",
        _build_nncf_ort,
        frozenset({QuantMode.STATIC, QuantMode.INT8}),
        needs=frozenset({Requirement.CALIBRATION_DATA}),
        unavailable=_nncf_ort_memory,
    )
)
_openvino_candidate = partial(
    CandidateSpec,
    runtime=OPENVINO_RUNTIME,
    suffix=".xml",
    float_model=float_openvino_ir,
    config=int8_openvino_config,
)
"""An OpenVINO IR candidate: judged and timed beside the float IR, int8 plugin settings unless it says."""

BF16_OPENVINO = register(
    _openvino_candidate(
        "bf16-openvino",
        "OpenVINO CPU plugin, bf16 inference precision",
        build_bf16_openvino,
        frozenset({QuantMode.BF16, QuantMode.INT8}),
        unavailable=needs_bf16,
        config=bf16_config,
        decoder=None,
    )
)
NNCF_OPENVINO = register(
    _openvino_candidate(
        NNCF_OPENVINO_NAME,
        "NNCF (OpenVINO backend)",
        build_nncf_openvino,
        frozenset({QuantMode.STATIC, QuantMode.INT8}),
        needs=frozenset({Requirement.CALIBRATION_DATA}),
        repairs=(remember_judgement,),
        unavailable=needs_openvino_target,
    )
)
NNCF_OPENVINO_SQ = register(
    _openvino_candidate(
        "nncf-openvino-sq",
        "NNCF (OpenVINO backend), smooth-quant alpha sweep, then layers in float by measured search",
        build_nncf_openvino_sq,
        frozenset({QuantMode.STATIC, QuantMode.INT8}),
        needs=frozenset({Requirement.CALIBRATION_DATA}),
        repairs=(keep_openvino_layers_in_float,),
        skip=skip_smooth_quant,
        unavailable=smooth_quant_unavailable,
    )
)
NNCF_OPENVINO_AC = register(
    _openvino_candidate(
        "nncf-openvino-ac",
        "NNCF (OpenVINO backend) accuracy control, smooth quant off",
        build_nncf_openvino_ac,
        frozenset({QuantMode.STATIC, QuantMode.INT8}),
        needs=frozenset({Requirement.CALIBRATION_DATA}),
        skip=skip_accuracy_control,
        unavailable=needs_openvino_target,
    )
)

for _spec in WEIGHT_ONLY_SPECS:  # the decoders' weight-only candidates, after the others
    register(_spec)

"""Builders, repairs and skip rules of the OpenVINO lossy candidates (``candidates.py`` registers them):
bf16 execution, NNCF int8 with its defaults, NNCF with a smooth-quant alpha sweep (and, when no alpha meets
the budget, the fastest set of layers kept in float through an ``IgnoredScope``), and NNCF's accuracy
control.

Outliers: trained transformers have a few activation channels far larger than the rest, and a per-tensor
int8 range sized for them leaves the others a handful of levels. SmoothQuant moves that scale into the
next MatMul's weights (alpha sets how much); on a trained MiniLM-like encoder NNCF's default (alpha 0.95)
gave min cosine 0.982, smooth quant off 0.9905, both 6.6 ms. Weights are per output channel everywhere:
ONNX Runtime's builders pass ``per_channel=True``, NNCF quantizes weights per channel by default (both
recorded in settings). ONNX Runtime's own SmoothQuant (``extra_options={"SmoothQuant": True}``) needs Intel
Neural Compressor, which is not installed, so outliers are handled by NNCF only.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from exporter.backends.openvino import OPENVINO, OPENVINO_LOSSY
from exporter.quantize.judge import describe_error, judge
from exporter.quantize.shipping import runtime_of
from exporter.quantize.types import Candidate, QuantizeContext, QuantMode

__all__ = [
    "NNCF_OPENVINO_NAME",
    "OPENVINO_RUNTIME",
    "SQ_ALPHAS",
    "bf16_config",
    "build_bf16_openvino",
    "build_nncf_openvino",
    "build_nncf_openvino_ac",
    "build_nncf_openvino_sq",
    "float_openvino_ir",
    "int8_openvino_config",
    "needs_bf16",
    "needs_openvino_target",
    "remember_judgement",
    "skip_accuracy_control",
    "skip_smooth_quant",
    "smooth_quant_unavailable",
    "transformer",
]

NNCF_OPENVINO_NAME = "nncf-openvino"
OPENVINO_RUNTIME = runtime_of(OPENVINO_LOSSY)
"""What runs these candidates: the runtime of the backend they ship in (``model.lossy.xml``)."""
SQ_ALPHAS = (-1.0, 0.5, None)
"""The smooth-quant sweep, in order: off, 0.5, then NNCF's default (None); it stops at the first that
meets the budget (off and 0.5 both did on the trained encoder; the default did not)."""


def transformer(context: QuantizeContext) -> bool:
    from exporter.optimize.optimizer import looks_like_transformer

    return looks_like_transformer(context.float_onnx)


def needs_openvino_target(context: QuantizeContext) -> str | None:
    if OPENVINO.target not in context.targets:
        return f"not run: its runtime is OpenVINO and --to {OPENVINO.target} was not asked for"
    return None


def float_openvino_ir(float_onnx: Path, work_dir: Path) -> Path:
    """The float ONNX model as an IR with float32 weights: what the OpenVINO candidates must beat."""
    from exporter.backends.openvino import save_ir

    return save_ir(convert_onnx(float_onnx), work_dir / "float-openvino.xml")


def convert_onnx(float_onnx: Path) -> Any:
    """``ov.convert_model`` of the ONNX model, each input named by its ONNX name alone.

    The converter can give an input a second name, an inner tensor's (a decoder's ``past_key_values.0.key``
    also became ``/Concat_output_0``), and ``get_any_name`` may then return that one, which no feed uses."""
    import onnx
    import openvino as ov

    model = ov.convert_model(str(float_onnx))
    graph_inputs = {i.name for i in onnx.load(str(float_onnx), load_external_data=False).graph.input}
    for port in model.inputs:
        names = port.get_names() & graph_inputs
        if len(names) == 1 and len(port.get_names()) > 1:
            port.get_tensor().set_names(names)
    return model


def needs_bf16(context: QuantizeContext) -> str | None:
    from exporter.environment import bf16_support

    target = needs_openvino_target(context)
    if target is not None:
        return target
    native, why = bf16_support()
    return None if native else f"not run: {why}"


def smooth_quant_unavailable(context: QuantizeContext) -> str | None:
    """OpenVINO is a target and the graph has a MatMul (SmoothQuant scales only MatMul inputs here)."""
    import onnx

    target = needs_openvino_target(context)
    if target is not None:
        return target
    ops = {n.op_type for n in onnx.load(str(context.float_onnx), load_external_data=False).graph.node}
    if not ops & {"MatMul", "Gemm"}:
        return "not run: smooth quant moves activation outliers into MatMul weights, and this graph has none"
    return None


def openvino_precision() -> str:
    """The plugin's own choice for the float parts of an int8 IR: bf16 where it is native, else f32."""
    from exporter.environment import bf16_support

    return "bf16" if bf16_support()[0] else "f32"


def bf16_config(context: QuantizeContext) -> dict[str, str]:
    return {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"}


def int8_openvino_config(context: QuantizeContext) -> dict[str, str]:
    return {"INFERENCE_PRECISION_HINT": openvino_precision(), "PERFORMANCE_HINT": "LATENCY"}


def build_bf16_openvino(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """The float IR, run with bf16 inference precision: weights stay float32 on disk, the CPU plugin
    computes matmuls and convolutions in bf16 (AMX or AVX512-BF16)."""
    from exporter.backends.openvino import save_ir

    save_ir(convert_onnx(context.float_onnx), target)
    return {"precision": "bf16", "weights": "float32 on disk"}


# ---- NNCF ------------------------------------------------------------------------------------------------


def _quantizer(context: QuantizeContext) -> Any:
    """One ``VariantQuantizer`` per run, shared by every NNCF OpenVINO candidate and repair."""
    from exporter.quantize.nncf_variants import VariantQuantizer

    key = "nncf-openvino quantizer"
    if key not in context.cache:
        context.cache[key] = VariantQuantizer(context.float_onnx, context.calibration.samples)
    return context.cache[key]


def build_variant(context: QuantizeContext, target: Path, variant: Any) -> dict[str, Any]:
    """Quantize one variant (shared statistics) and save it; the settings the report records."""
    import nncf
    import openvino as ov

    from exporter.quantize.nncf_variants import DEFAULT_ALPHA

    quantizer = _quantizer(context)
    quantized, how = quantizer.quantize(variant)
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(target), compress_to_fp16=False)
    return {
        "engine": f"nncf {nncf.__version__}",
        "backend": OPENVINO.name,
        "openvino": ov.__version__,
        "preset": "mixed" if variant.transformer else "performance",
        "model_type": "transformer" if variant.transformer else None,
        "subset_size": quantizer.subset_size,
        "target_device": "ANY",
        "per_channel_weights": True,
        "smooth_quant_alpha": (
            None if not variant.transformer else "off" if variant.alpha < 0 else variant.alpha
        ),
        "smooth_quant_default": variant.alpha == DEFAULT_ALPHA,
        "statistics": how,
        "fake_quantize_ops": sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops()),
    }


def build_nncf_openvino(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """NNCF's defaults (transformer type, so smooth quant at 0.95, when the graph has attention)."""
    from exporter.quantize.nncf_variants import DEFAULT_ALPHA, Variant

    return build_variant(context, target, Variant(transformer(context), DEFAULT_ALPHA))


def remember_judgement(candidate: Candidate, build: object, context: QuantizeContext) -> None:
    """Not a repair: records how NNCF's defaults were judged, so the smooth-quant sweep does not rebuild
    the same model (on a transformer it is the sweep's default alpha)."""
    from exporter.quantize.nncf_variants import DEFAULT_ALPHA, Variant

    if candidate.path is not None:
        variant = Variant(transformer(context), DEFAULT_ALPHA)
        context.cache[("judged", variant)] = (candidate.cosine_error, candidate.budget_passed, candidate.path)


def build_nncf_openvino_sq(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """NNCF with SmoothQuant at each alpha of ``SQ_ALPHAS`` (transformer model type: NNCF runs SmoothQuant
    for no other), stopping at the first that meets the budget; the best judged is kept. A variant already
    judged (NNCF's defaults on a transformer, as ``nncf-openvino``) is not rebuilt."""
    from exporter.quantize.nncf_variants import DEFAULT_ALPHA, Variant

    tried: list[tuple[float, float, bool, Path, dict[str, Any]]] = []
    for alpha in SQ_ALPHAS:
        variant = Variant(True, DEFAULT_ALPHA if alpha is None else alpha)
        known = context.cache.get(("judged", variant))
        if known is not None:
            tried.append((variant.alpha, known[0], known[1], known[2], {"reused": NNCF_OPENVINO_NAME}))
            continue
        label = "off" if variant.alpha < 0 else f"{variant.alpha:g}"
        context.step(f"nncf-openvino-sq: smooth quant alpha {label}")
        path = target.with_name(f"{target.stem}.alpha-{label}.xml")
        settings = build_variant(context, path, variant)
        config = int8_openvino_config(context)
        trial = Candidate("sq", "nncf", path=path, runtime=OPENVINO_RUNTIME, config=config)
        judge(trial, context)
        context.cache[("judged", variant)] = (trial.cosine_error, trial.budget_passed, path)
        tried.append((variant.alpha, trial.cosine_error, trial.budget_passed, path, settings))
        if trial.budget_passed:
            break
    alpha, error, _, source, settings = min(tried, key=lambda t: (not t[2], t[1]))
    if not settings or "reused" in settings:
        settings = build_variant(context, target, Variant(True, alpha))
    else:
        for suffix in (".xml", ".bin"):
            shutil.copyfile(source.with_suffix(suffix), target.with_suffix(suffix))
    context.cache["smooth quant alpha"] = alpha
    return settings | {
        "smooth_quant_tried": {("off" if a < 0 else f"{a:g}"): round(1.0 - e, 5) for a, e, *_ in tried},
        "smooth_quant_kept": f"{'off' if alpha < 0 else f'{alpha:g}'} {describe_error(error)}",
    }


def build_nncf_openvino_ac(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    """``nncf.quantize_with_accuracy_control`` with smooth quant off (the better start on the trained
    encoder: 0.9951 at 7.4 ms, in 80 s): it reverts the quantized operations that cost most back to float
    until the worst cosine on the calibration samples (against eager) drops by at most 1 - min cosine from
    float; judged again on the held-out samples like every candidate."""
    from exporter.quantize.nncf_accuracy import nncf_quantize_openvino_with_accuracy_control
    from exporter.runners.pytorch import EagerRunner

    eager = EagerRunner(context.module, context.spec.names)
    calibration = context.calibration.samples
    return nncf_quantize_openvino_with_accuracy_control(
        context.float_onnx,
        target,
        calibration,
        calibration,
        [eager.run(sample) for sample in calibration],
        min_cosine=context.options.min_cosine,
        transformer=transformer(context),
        threads=context.threads,
        smooth_quant_alpha=-1.0,
    )


def _passed_openvino_int8(built: Sequence[Candidate]) -> Candidate | None:
    return next(
        (c for c in built if c.name.startswith(NNCF_OPENVINO_NAME) and c.budget_passed),
        None,
    )


def skip_smooth_quant(mode: QuantMode, built: Sequence[Candidate]) -> str | None:
    """Why the smooth-quant sweep need not run: ``nncf-openvino`` already meets the budget, and another
    alpha only rescales the same int8 layers, so it could add accuracy but not speed."""
    plain = next((c for c in built if c.name == NNCF_OPENVINO_NAME), None)
    if plain is not None and plain.budget_passed:
        return (
            f"not run: {NNCF_OPENVINO_NAME} already meets the budget, and another smooth-quant alpha "
            "quantizes the same layers, so it could only add accuracy, not speed"
        )
    return None


def skip_accuracy_control(mode: QuantMode, built: Sequence[Candidate]) -> str | None:
    """Why NNCF's accuracy control need not run: an earlier NNCF OpenVINO candidate meets the budget.
    Accuracy control only reverts layers of an int8 model to float, so it cannot beat an all-int8 model
    within budget; against one that met it with layers in float, it would redo that search by NNCF's own
    ranking, the slowest step of all (80 s on a 6-layer encoder)."""
    passed = _passed_openvino_int8(built)
    if passed is None:
        return None
    if not passed.float_layers:
        return (
            f"not run: {passed.name} already meets the budget with every layer int8, and accuracy control "
            "only reverts layers to float, so it cannot be faster"
        )
    return (
        f"not run: {passed.name} already meets the budget with {len(passed.float_layers)} layer(s) kept in "
        "float by measured search; accuracy control would repeat that search by NNCF's ranking, slower"
    )

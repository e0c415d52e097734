"""NNCF's accuracy-control loop (``nncf.quantize_with_accuracy_control``) driven by our parity budget: it
reverts the layers that cost most accuracy back to float until the worst cosine holds. Apart from
``nncf_int8.py``, which makes the plain NNCF models, because it brings its own metric and log reading."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.errors import first_line
from exporter.quantize.budget import ParityBudget, compare_int8
from exporter.quantize.nncf_int8 import (
    _count_fake_quantize,
    _dataset,
    _import_nncf,
    _inputs,
    _model_type,
    _nncf_session,
    _openvino_input_names,
    _read_openvino,
    _settings,
    _smooth_quant,
    _subset_size,
)

__all__ = ["nncf_quantize_openvino_with_accuracy_control"]

_VALIDATION_CONFIG = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
_REVERTED = re.compile(r"(\d+) out of (\d+) were reverted back to the floating-point precision")
_QUANTIZED_OPS = re.compile(r"Total number of quantized operations in the model: (\d+)")


def nncf_quantize_openvino_with_accuracy_control(
    float_onnx: Path,
    target_xml: Path,
    calibration: Sequence[Mapping[str, np.ndarray]],
    validation: Sequence[Mapping[str, np.ndarray]],
    reference: Sequence[Sequence[np.ndarray]],
    *,
    min_cosine: float,
    transformer: bool,
    threads: int,
    max_drop: float | None = None,
    smooth_quant_alpha: float | None = None,
) -> dict[str, Any]:
    """``nncf.quantize_with_accuracy_control`` driven by our budget, on the OpenVINO backend.

    The metric is the worst per-sample cosine of the model's outputs against ``reference`` (eager float
    outputs for each validation sample, in order), measured as the judge measures it; the allowed absolute
    drop is ``1 - min_cosine`` unless ``max_drop`` is given. NNCF compiles the models it validates itself
    (CPU, f32 inference precision, so the loop sees int8 error and not bf16's); the metric recorded as
    reached is measured again on the saved model compiled with ``threads`` threads and an f32 hint.
    ``smooth_quant_alpha`` sets SmoothQuant's MatMul alpha (-1 turns it off; transformers only), else
    NNCF's default.

    NNCF exposes the layers it reverted only in its log, so they are read from there; ``reverted_ops`` is
    None when the log did not say.

    Raises:
        ValueError: ``validation`` and ``reference`` differ in length.
        RuntimeError: OpenVINO could not read the model or NNCF could not quantize it.
    """
    if len(validation) != len(reference):
        raise ValueError(f"{len(validation)} validation samples but {len(reference)} reference outputs")
    if not validation:
        raise ValueError("accuracy control needs at least one validation sample")
    nncf = _import_nncf()
    drop = 1.0 - min_cosine if max_drop is None else max_drop
    budget = ParityBudget(min_cosine=min_cosine)
    model = _read_openvino(float_onnx)
    names = _openvino_input_names(model)
    size = _subset_size(calibration, None)
    indexed = [(index, _inputs(sample, names)) for index, sample in enumerate(validation)]

    def worst_cosine(
        compiled: Any, items: Iterable[tuple[int, dict[str, np.ndarray]]]
    ) -> tuple[float, list[float]]:
        """NNCF's validation function: the metric and, for its ranking of layers, each item's value."""
        per_item = [_sample_cosine(compiled, inputs, reference[index], budget) for index, inputs in items]
        return min(per_item), per_item

    with _nncf_session() as log:
        try:
            quantized = nncf.quantize_with_accuracy_control(
                model,
                _dataset(calibration, names),
                nncf.Dataset(indexed, _second),
                worst_cosine,
                max_drop=drop,
                drop_type=nncf.DropType.ABSOLUTE,
                subset_size=size,
                model_type=_model_type(transformer),
                advanced_quantization_parameters=_smooth_quant(smooth_quant_alpha),
            )
        except Exception as error:
            raise RuntimeError(f"nncf.quantize_with_accuracy_control failed: {first_line(error)}") from error
    reached, _ = worst_cosine(_save_and_compile(quantized, target_xml, threads), indexed)
    settings = _settings("openvino", transformer, size, log)
    settings.update(
        {
            "accuracy_control": True,
            "metric": "min cosine vs eager float",
            "max_drop": drop,
            "drop_type": "absolute",
            "metric_reached": reached,
            "smooth_quant_alpha": smooth_quant_alpha,
            "fake_quantize_ops": _count_fake_quantize(quantized),
            **_restorer_outcome(log),
        }
    )
    return settings


def _save_and_compile(quantized: Any, target_xml: Path, threads: int) -> Any:
    """Save the quantized model (weights kept as they are, not compressed to fp16) and compile it as the
    metric is measured: CPU, f32 inference precision, ``threads`` threads."""
    import openvino as ov

    target_xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(quantized, str(target_xml), compress_to_fp16=False)
    return ov.Core().compile_model(quantized, "CPU", {**_VALIDATION_CONFIG, "INFERENCE_NUM_THREADS": threads})


def _second(item: tuple[int, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The model input of an (index, inputs) validation item; the index finds the item's reference."""
    return item[1]


def _restorer_outcome(log: Sequence[logging.LogRecord]) -> dict[str, Any]:
    """The accuracy-control loop's result as its log states it: how many quantized operations it reverted
    to float, and which. NNCF logs the final tally only when it reverted some and kept others; no loop at
    all (no count of quantized operations logged) means the first quantized model met the drop; 'all
    layers have been checked' means it reverted every one."""
    messages = [r.getMessage() for r in log]
    quantized_ops = next((int(m[1]) for m in map(_QUANTIZED_OPS.search, messages) if m), None)
    for message in reversed(messages):
        tally = _REVERTED.search(message)
        if tally:
            names = [line.strip() for line in message.splitlines()[1:] if line.strip()]
            return {"reverted_ops": int(tally[1]), "quantized_ops": int(tally[2]), "reverted_names": names}
    if any("All layers have been checked" in m for m in messages):
        return {"reverted_ops": quantized_ops, "quantized_ops": quantized_ops, "reverted_names": None}
    if quantized_ops is None:
        return {"reverted_ops": 0, "quantized_ops": None, "reverted_names": []}
    return {"reverted_ops": None, "quantized_ops": quantized_ops, "reverted_names": None}


def _sample_cosine(
    compiled: Any, inputs: Mapping[str, np.ndarray], expected: Sequence[np.ndarray], budget: ParityBudget
) -> float:
    """The worst cosine over one sample's outputs (each row of each), as ``compare_int8`` gates it."""
    results = compiled(dict(inputs))
    actual = [np.asarray(results[port]) for port in compiled.outputs]
    if len(actual) != len(expected):
        return 0.0
    return min(
        compare_int8(str(index), [a], [e], budget).min_cosine
        for index, (a, e) in enumerate(zip(actual, expected, strict=True))
    )

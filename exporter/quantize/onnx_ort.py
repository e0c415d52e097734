"""Int8 with ONNX Runtime's quantization tools: pre-processing, dynamic, and static QDQ with calibration.

Formats are chosen per CPU and recorded: activations uint8 and weights int8 (u8s8, the fast x86 pair); on
CPUs without VNNI the static path uses 7-bit weights (``reduce_range``) because AVX2's u8s8 multiply-add
saturates. Dynamic quantization measures both there: reduce_range made an encoder's cosine worse in our
field measurements, but rescued a small MLP whose full-range weights saturated (cosine 0.96 -> 0.9998).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporter._quiet import quiet
from exporter.convert.onnx_files import data_file_name
from exporter.environment import cpu_flags
from exporter.quantize.calibration import CalibrationMethod
from exporter.quantize.preprocess import clear_output, external_output, preprocess

__all__ = [
    "CALIBRATION_METHODS",
    "Int8Formats",
    "choose_formats",
    "clear_output",
    "external_output",
    "preprocess",
    "quantize_dynamic_ort",
    "quantize_static_ort",
    "readable_like_model",
]

CALIBRATION_METHODS = tuple(m.value for m in CalibrationMethod if m is not CalibrationMethod.AUTO)
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Int8Formats:
    """Weight and activation types for this CPU, and why."""

    activation: str
    weight: str
    reduce_range_static: bool
    vnni: bool
    reason: str


def choose_formats(flags: Sequence[str] | None = None) -> Int8Formats:
    present = cpu_flags() if flags is None else list(flags)
    vnni = any(flag in present for flag in _VNNI_FLAGS)
    if vnni:
        reason = "VNNI present: u8s8 runs without saturation, full 8-bit weights"
    else:
        reason = "no VNNI: u8s8 on AVX2 saturates, so static int8 uses 7-bit weights (reduce_range)"
    return Int8Formats("uint8", "int8", reduce_range_static=not vnni, vnni=vnni, reason=reason)


def quantize_dynamic_ort(
    source: Path,
    target: Path,
    formats: Int8Formats,
    exclude: Sequence[str] = (),
    *,
    reduce_range: bool = False,
    external: bool | None = None,
) -> None:
    """Dynamic int8 from ``source`` by path; with ``external`` (default: ``external_output(source)``; the
    stage passes the float model's) it is written with one ``<target>.data``, which ORT names so."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    external = external_output(source) if external is None else external
    clear_output(target)
    with quiet(), _reload_without_copy():
        quantize_dynamic(
            str(source),
            str(target),
            per_channel=True,
            reduce_range=reduce_range,
            weight_type=QuantType.QInt8 if formats.weight == "int8" else QuantType.QUInt8,
            nodes_to_exclude=list(exclude),
            extra_options={"MatMulConstBOnly": True},
            use_external_data_format=external,
        )
    readable_like_model(target)


def readable_like_model(target: Path) -> None:
    """Give ``target``'s data file the model file's permissions: onnx's writer, which ORT's quantizers
    use, creates it 0600, so a shipped ``model.int8.onnx.data`` would be unreadable to the model's readers."""
    data = target.with_name(data_file_name(target))
    if data.exists():
        data.chmod(target.stat().st_mode & 0o777)


@contextlib.contextmanager
def _reload_without_copy() -> Iterator[None]:
    """While ORT's dynamic quantizer runs, its shape-inference reload (after it rewrites Gemm as MatMul)
    moves the weights out of the model it replaces instead of deep-copying it first: the model is dropped
    right after, and the copy held a third set of weights at the peak (255 M params: 3.2 -> 2.3 GiB).
    Patched on ORT's module for the call only; an ORT without that function is left alone."""
    import onnxruntime.quantization.onnx_quantizer as quantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    original = getattr(quantizer, "save_and_reload_model_with_shape_infer", None)
    if original is None:
        yield
        return

    def reload(model: onnx.ModelProto) -> onnx.ModelProto:
        with tempfile.TemporaryDirectory(prefix="ort.quant.") as scratch:
            path = Path(scratch) / "model.onnx"
            onnx.save_model(model, str(path), save_as_external_data=True, location="model.onnx.data")
            return load_model_with_shape_infer(path)

    quantizer.save_and_reload_model_with_shape_infer = reload
    try:
        yield
    finally:
        quantizer.save_and_reload_model_with_shape_infer = original


def _reader(samples: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]) -> Any:
    """An ORT ``CalibrationDataReader`` over our samples (only the inputs the graph still has)."""
    from onnxruntime.quantization import CalibrationDataReader

    items = [{n: s[n] for n in input_names if n in s} for s in samples]

    class SampleReader(CalibrationDataReader):
        def __init__(self) -> None:
            self.index = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self.index >= len(items):
                return None
            self.index += 1
            return items[self.index - 1]

        def rewind(self) -> None:
            self.index = 0

        def __len__(self) -> int:
            return len(items)

    return SampleReader()


def quantize_static_ort(
    source: Path,
    target: Path,
    samples: Sequence[dict[str, np.ndarray]],
    formats: Int8Formats,
    *,
    method: str = "minmax",
    exclude: Sequence[str] = (),
    cache: Path | None = None,
    external: bool | None = None,
) -> None:
    """Static QDQ with per-channel weights; ``cache`` keeps calibration ranges across re-quantizations;
    ``external`` as for ``quantize_dynamic_ort``."""
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    names = [i.name for i in onnx.load(str(source), load_external_data=False).graph.input]
    reader = _reader(samples, names)
    external = external_output(source) if external is None else external
    clear_output(target)
    with quiet():
        quantize_static(
            str(source),
            str(target),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=formats.reduce_range_static,
            activation_type=QuantType.QUInt8 if formats.activation == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8 if formats.weight == "int8" else QuantType.QUInt8,
            nodes_to_exclude=list(exclude),
            calibrate_method=methods[method],
            calibration_cache_path=str(cache) if cache else None,
            use_external_data_format=external,
        )
    readable_like_model(target)

"""NNCF OpenVINO int8 variants of one model: a smooth-quant alpha, layers kept in float through an
``IgnoredScope``, each made by ``nncf.quantize`` (the documented API; see ``VariantQuantizer.quantize`` for
why statistics are not shared between variants).

Layer names are OpenVINO op names as NNCF sees them: ``ov.convert_model`` names an ONNX node's op after
the node (a Gemm becomes ``<node>/WithoutBiases`` plus a bias Add), or after its output when that output is
a graph output; ``openvino_names`` maps ONNX node names to them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporter.quantize.nncf_int8 import (
    NNCF_DEFAULT_SUBSET_SIZE,
    _dataset,
    _import_nncf,
    _nncf_session,
    _openvino_input_names,
    _read_openvino,
)
from exporter.quantize.sensitivity import QUANTIZABLE, SqnrSums

__all__ = [
    "DEFAULT_ALPHA",
    "OPENVINO_QUANTIZABLE",
    "VariantQuantizer",
    "openvino_names",
    "openvino_shortlist",
]

DEFAULT_ALPHA = 0.95
"""NNCF's default SmoothQuant alpha for MatMuls (``AdvancedSmoothQuantParameters().matmul``)."""
OPENVINO_QUANTIZABLE = {"MatMul", "Convolution", "GroupConvolution", "ConvolutionBackpropData"}
_CAP_DB = 60.0
_WEIGHT_PATH = {"Constant", "Convert", "FakeQuantize", "Multiply", "Subtract", "Reshape", "Transpose"}


@dataclass(frozen=True)
class Variant:
    """One way to quantize: the model type, SmoothQuant's MatMul alpha (-1 is off), layers left float."""

    transformer: bool
    alpha: float
    ignored: tuple[str, ...] = ()


@dataclass
class VariantQuantizer:
    """Quantizes variants of one float ONNX model with the same calibration samples."""

    float_onnx: Path
    samples: Sequence[Mapping[str, np.ndarray]]

    def quantize(self, variant: Variant) -> tuple[Any, str]:
        """The int8 ``ov.Model``, made by ``nncf.quantize`` with the variant's alpha and ignored scope.

        Statistics are not shared between variants: a step-by-step run of NNCF's internal pipeline that
        shared them (NNCF 3.4 internals) failed outright on one export of the trained MiniLM ("Could not
        find a node Gather_... in NNCFGraph"); the documented call costs a few seconds more per variant."""
        nncf = _import_nncf()
        model = _read_openvino(self.float_onnx)
        dataset = _dataset(self.samples, _openvino_input_names(model))
        with _nncf_session():
            try:
                quantized = nncf.quantize(
                    model,
                    dataset,
                    subset_size=self.subset_size,
                    model_type=nncf.ModelType.TRANSFORMER if variant.transformer else None,
                    ignored_scope=_ignored(variant),
                    advanced_parameters=_advanced(variant),
                )
            except Exception as error:
                raise RuntimeError(f"nncf.quantize (OpenVINO backend) failed: {error}") from error
        return quantized, "nncf.quantize"

    @property
    def subset_size(self) -> int:
        return min(len(self.samples), NNCF_DEFAULT_SUBSET_SIZE)


def _ignored(variant: Variant) -> Any:
    import nncf

    return nncf.IgnoredScope(names=list(variant.ignored), validate=False) if variant.ignored else None


def _advanced(variant: Variant) -> Any:
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    return AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=variant.alpha)
    )


def openvino_names(float_onnx: Path, model: Any) -> dict[str, str]:
    """ONNX node name -> the OpenVINO op NNCF quantizes for it, for every quantizable node it can find."""
    ops = {op.get_friendly_name() for op in model.get_ops() if op.get_type_name() in OPENVINO_QUANTIZABLE}
    graph = onnx.load(str(float_onnx), load_external_data=False).graph
    found: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE or not node.name:
            continue
        names = [node.name, *node.output[:1]]
        match = next((n for base in names for n in (base, f"{base}/WithoutBiases") if n in ops), None)
        if match is not None:
            found[node.name] = match
    return found


def openvino_shortlist(
    float_onnx: Path,
    quantized: Any,
    names: Sequence[str],
    samples: Sequence[Mapping[str, np.ndarray]],
    *,
    threads: int,
    size: int,
) -> list[str]:
    """Up to ``size`` of the OpenVINO ops ``names``, those whose output SQNR (int8 IR against float) dropped
    most below their activation inputs' first: the proxy that picks which layers to probe, as
    ``sensitivity.shortlist`` does for ONNX Runtime. Both models expose the watched tensors as outputs."""

    reference = _read_openvino(float_onnx)
    copy = quantized.clone()
    float_ops = {op.get_friendly_name(): op for op in reference.get_ops()}
    int8_ops = {op.get_friendly_name(): op for op in copy.get_ops()}
    sources: dict[str, list[tuple[str, int]]] = {}
    for name in names:
        op = float_ops.get(name)
        if op is None:
            continue
        sources[name] = [
            (port.get_source_output().get_node().get_friendly_name(), port.get_source_output().get_index())
            for port in op.inputs()
            if not _weight_path(port.get_source_output().get_node())
        ]
    watched = list(dict.fromkeys([(n, 0) for n in sources] + [s for v in sources.values() for s in v]))
    watched = [(n, i) for n, i in watched if n in int8_ops and int8_ops[n].get_type_name() != "Parameter"]
    float_values = list(_watched_outputs(reference, float_ops, watched, samples, threads))
    del reference, float_ops
    sums = {w: SqnrSums() for w in watched}
    int8_values = _watched_outputs(copy, int8_ops, watched, samples, threads)
    for expected, actual in zip(float_values, int8_values, strict=True):
        for k, w in enumerate(watched):
            sums[w].add(expected[k], actual[k])
    sqnr = {w: total.db for w, total in sums.items()}
    drops = {}
    for name, feeding in sources.items():
        before = min([min(sqnr.get(s, math.inf), _CAP_DB) for s in feeding], default=_CAP_DB)
        after = sqnr.get((name, 0))
        drops[name] = 0.0 if after is None else before - min(after, _CAP_DB)
    return sorted(drops, key=lambda n: -drops[n])[:size]


def _weight_path(node: Any, depth: int = 0) -> bool:
    """Whether a tensor comes from constants only (a weight and its decompression), not an activation."""
    if node.get_type_name() == "Constant":
        return True
    if node.get_type_name() not in _WEIGHT_PATH or depth > 6:
        return False
    return all(_weight_path(port.get_source_output().get_node(), depth + 1) for port in node.inputs())


def _watched_outputs(
    model: Any,
    ops: Mapping[str, Any],
    watched: Sequence[tuple[str, int]],
    samples: Sequence[Mapping[str, np.ndarray]],
    threads: int,
) -> Iterator[list[np.ndarray]]:
    """Per sample, the ``watched`` op outputs of ``model`` (exposed as extra outputs), one sample at a time:
    the infer results are not kept, and the compiled model is released when the samples are done."""
    import openvino as ov

    first = len(model.outputs)
    model.add_outputs([ops[n].output(i) for n, i in watched])
    compiled = ov.Core().compile_model(
        model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    )
    inputs = _openvino_input_names(model)
    for sample in samples:
        result = compiled({k: sample[k] for k in inputs if k in sample})
        yield [np.array(result[compiled.outputs[first + k]]) for k in range(len(watched))]
        del result
    del compiled

"""Which layers an int8 model cannot afford to quantize: the error each node *adds*, measured by running
the float and the quantized ONNX models side by side with every intermediate tensor exposed.

For each float node, the SQNR of its output (float vs int8 model) is compared with the worst SQNR of its
inputs; the drop is the error that node's quantization introduced. Tensor names survive ONNX Runtime's
quantizers (QDQ and dynamic alike), so the same names are looked up in both models.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporter.runners import OnnxRuntimeRunner

__all__ = ["LayerError", "layer_errors"]

QUANTIZABLE = {
    "Conv",
    "ConvTranspose",
    "Gemm",
    "MatMul",
    "LSTM",
    "GRU",
    "Attention",
    "EmbedLayerNormalization",
}


@dataclass
class LayerError:
    node: str
    op_type: str
    input_sqnr_db: float
    output_sqnr_db: float

    @property
    def introduced_db(self) -> float:
        """How many dB of SQNR this node lost (larger is worse)."""
        if math.isinf(self.input_sqnr_db) and math.isinf(self.output_sqnr_db):
            return 0.0
        if math.isinf(self.input_sqnr_db):
            return 200.0 - self.output_sqnr_db
        return self.input_sqnr_db - self.output_sqnr_db

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "introduced_db": round(self.introduced_db, 2)}


def _sqnr(reference: np.ndarray, actual: np.ndarray) -> float:
    noise = float(np.sum((reference.astype(np.float64) - actual.astype(np.float64)) ** 2))
    signal = float(np.sum(reference.astype(np.float64) ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def _expose(model_path: Path, names: Sequence[str], target: Path) -> list[str]:
    model = onnx.load(str(model_path))
    present = {o for node in model.graph.node for o in node.output if o}
    already = {o.name for o in model.graph.output}
    chosen = [n for n in names if n in present and n not in already]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in chosen)
    onnx.save(model, str(target))
    return [o.name for o in model.graph.output]


def layer_errors(
    float_path: Path, quant_path: Path, samples: Sequence[dict[str, np.ndarray]], threads: int
) -> list[LayerError]:
    """Per quantizable node of the float model, the SQNR its int8 counterpart lost; worst first."""
    graph = onnx.load(str(float_path), load_external_data=False).graph
    floats = [t.name for t in graph.input if t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    tensors = [o for node in graph.node for o in node.output if o]
    with tempfile.TemporaryDirectory() as scratch:
        float_names = _expose(float_path, tensors, Path(scratch) / "float.onnx")
        quant_names = _expose(quant_path, tensors, Path(scratch) / "quant.onnx")
        shared = [n for n in float_names if n in set(quant_names)]
        float_runner = OnnxRuntimeRunner(Path(scratch) / "float.onnx", threads)
        quant_runner = OnnxRuntimeRunner(Path(scratch) / "quant.onnx", threads)
        sums: dict[str, list[np.ndarray]] = {n: [] for n in shared}
        quant_values: dict[str, list[np.ndarray]] = {n: [] for n in shared}
        for sample in samples:
            float_out = dict(zip(float_names, float_runner.run(sample), strict=True))
            quant_out = dict(zip(quant_names, quant_runner.run(sample), strict=True))
            for name in shared:
                if float_out[name].dtype.kind == "f" and float_out[name].shape == quant_out[name].shape:
                    sums[name].append(float_out[name].ravel())
                    quant_values[name].append(quant_out[name].ravel())
    sqnr = {
        name: _sqnr(np.concatenate(sums[name]), np.concatenate(quant_values[name]))
        for name in shared
        if sums[name]
    }
    sqnr.update(dict.fromkeys(floats, math.inf))
    errors = []
    for node in graph.node:
        if node.op_type not in QUANTIZABLE or not node.output or node.output[0] not in sqnr:
            continue
        inputs = [sqnr[i] for i in node.input if i in sqnr]
        errors.append(
            LayerError(node.name, node.op_type, min(inputs, default=math.inf), sqnr[node.output[0]])
        )
    return sorted(errors, key=lambda e: (-e.introduced_db, e.output_sqnr_db))

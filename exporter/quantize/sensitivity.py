"""Which layers an int8 model cannot afford to quantize.

The measure that decides is direct: re-quantize with one layer kept in float and see how much the model's
output error shrinks (``LayerError``, computed by the search). With many layers that is too slow, so a cheap
proxy picks the layers worth trying: run the float and the int8 ONNX models side by side with every
intermediate tensor exposed, and rank nodes by the SQNR their output lost relative to their inputs. The
proxy is only a shortlist: ONNX Runtime's QDQ quantizer drops Relu nodes and renames tensors, so some
names do not line up.
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

from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.verify.comparison import sqnr_db

__all__ = ["LayerError", "producers", "quantizable_nodes", "shortlist"]

_FUSED_ACTIVATIONS = {"Relu", "Clip"}
_CAP_DB = 60.0
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
    """The output error (1 - worst min-cosine over outputs) with every layer quantized, and with this one
    kept in float: their difference is the error this layer's quantization causes.

    The mixed-precision search also records what keeping it in float costs: ``cost_share``, its share of
    the model's quantizable MACs, and ``est_ms``, that share of the time int8 saved on the whole model
    (measured), i.e. the time this layer gives back; ``precision`` is what the float layer runs at (fp32
    in ONNX Runtime, the plugin's hint in OpenVINO: bf16 where the CPU has it).
    """

    node: str
    op_type: str
    error_all_int8: float
    error_kept_float: float
    cost_share: float | None = None
    est_ms: float | None = None
    precision: str | None = None

    @property
    def caused(self) -> float:
        return self.error_all_int8 - self.error_kept_float

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "caused": self.caused}


def quantizable_nodes(model_path: Path) -> list[tuple[str, str]]:
    """(name, op type) of every node an int8 quantizer would touch, in graph order."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [(n.name, n.op_type) for n in graph.node if n.op_type in QUANTIZABLE and n.name]


def producers(model_path: Path) -> dict[str, list[str]]:
    """For each quantizable node, the quantizable nodes that produce its activation inputs (looking
    through Relu/Clip): the other end of the tensor whose int8 range may be the problem."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    made_by = {output: node for node in graph.node for output in node.output}
    result: dict[str, list[str]] = {}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE or not node.name:
            continue
        found = []
        for name in node.input:
            producer = made_by.get(name)
            while producer is not None and producer.op_type in _FUSED_ACTIVATIONS:
                producer = made_by.get(producer.input[0])
            if producer is not None and producer.op_type in QUANTIZABLE and producer.name:
                found.append(producer.name)
        result[node.name] = found
    return result


def _expose(model_path: Path, names: Sequence[str], target: Path) -> list[str]:
    model = onnx.load(str(model_path))
    present = {o for node in model.graph.node for o in node.output if o}
    already = {o.name for o in model.graph.output}
    chosen = [n for n in names if n in present and n not in already]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in chosen)
    onnx.save(model, str(target))
    return [o.name for o in model.graph.output]


def shortlist(
    float_path: Path, quant_path: Path, samples: Sequence[dict[str, np.ndarray]], threads: int, size: int
) -> list[str]:
    """Up to ``size`` quantizable node names, those whose output SQNR dropped most first (the proxy)."""
    graph = onnx.load(str(float_path), load_external_data=False).graph
    floats = [t.name for t in graph.input if t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    tensors = [o for node in graph.node for o in node.output if o]
    with tempfile.TemporaryDirectory() as scratch:
        float_names = _expose(float_path, tensors, Path(scratch) / "float.onnx")
        quant_names = _expose(quant_path, tensors, Path(scratch) / "quant.onnx")
        shared = [n for n in float_names if n in set(quant_names)]
        sums: dict[str, list[np.ndarray]] = {n: [] for n in shared}
        quant_values: dict[str, list[np.ndarray]] = {n: [] for n in shared}
        with (
            OnnxRuntimeRunner(Path(scratch) / "float.onnx", threads) as float_runner,
            OnnxRuntimeRunner(Path(scratch) / "quant.onnx", threads) as quant_runner,
        ):
            for sample in samples:
                float_out = dict(zip(float_names, float_runner.run(sample), strict=True))
                quant_out = dict(zip(quant_names, quant_runner.run(sample), strict=True))
                for name in shared:
                    if float_out[name].dtype.kind == "f" and float_out[name].shape == quant_out[name].shape:
                        sums[name].append(float_out[name].ravel())
                        quant_values[name].append(quant_out[name].ravel())
    sqnr = {
        name: sqnr_db(np.concatenate(sums[name]), np.concatenate(quant_values[name]))
        for name in shared
        if sums[name]
    }
    sqnr.update(dict.fromkeys(floats, math.inf))
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def effective_output(name: str) -> str:
        """QDQ fuses a following Relu/Clip into the quantized op, which then produces the Relu's output."""
        following = consumers.get(name, [])
        if name not in sqnr and len(following) == 1 and following[0].op_type in _FUSED_ACTIVATIONS:
            return following[0].output[0]
        return name

    drops: dict[str, float] = {}
    for node in graph.node:
        if node.op_type not in QUANTIZABLE or not node.name:
            continue
        output = sqnr.get(effective_output(node.output[0])) if node.output else None
        inputs = [sqnr[i] for i in node.input if i in sqnr]
        if output is None:
            drops[node.name] = 0.0  # unmatched names: tried after the ranked ones
        else:
            # Cap at about int8's best SQNR, so an exactly known graph input does not outrank everything.
            before = min(min(inputs, default=math.inf), _CAP_DB)
            drops[node.name] = before - min(output, _CAP_DB)
    return sorted(drops, key=lambda name: -drops[name])[:size]

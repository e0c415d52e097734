"""The optimization steps' builders: each writes ``target`` from ``source`` and returns what it changed.

:mod:`exporter.optimize.optimizer` verifies and times what they write, and keeps or drops each step.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

if TYPE_CHECKING:
    from exporter.optimize.optimizer import OptimizeRequest

__all__ = ["BUILDERS", "NOTHING_DONE", "split_skip_layer_norm"]


def _transformer(source: Path, target: Path, request: OptimizeRequest) -> dict[str, int]:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    model = optimize_model(
        str(source),
        model_type="bert",
        num_heads=request.options.num_heads,
        hidden_size=request.options.hidden_size,
        optimization_options=options,
    )
    model.save_model_to_file(str(target))
    return {
        k: int(v) for k, v in model.get_fused_operator_statistics().items() if v and k != "LayerNormalization"
    }


def _ort_offline(source: Path, target: Path, request: OptimizeRequest) -> dict[str, int]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(target)
    options.intra_op_num_threads = request.threads
    options.log_severity_level = 4
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
    before = len(onnx.load(str(source), load_external_data=False).graph.node)
    after = len(onnx.load(str(target), load_external_data=False).graph.node)
    return {"nodes_before": before, "nodes_after": after}


def _fp16(source: Path, target: Path, request: OptimizeRequest) -> dict[str, int]:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(source)), keep_io_types=True)
    onnx.save(model, str(target))
    return {
        "float16_initializers": sum(
            1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16
        )
    }


def _split_skip_norm(source: Path, target: Path, request: OptimizeRequest) -> dict[str, int]:
    return {"SkipLayerNormalization_split": split_skip_layer_norm(source, target)}


def split_skip_layer_norm(source: Path, target: Path) -> int:
    """SkipLayerNormalization(x, skip, gamma[, beta[, bias]]) -> LayerNormalization(Sum(x, skip[, bias])),
    written to ``target``; returns how many nodes were split.

    Nodes whose mean / inverse-std outputs are used stay fused (LayerNormalization's optional outputs are
    not the same tensors' shapes in every opset); its fourth output, the pre-norm sum, is the Sum's output.
    """
    model = onnx.load(str(source))
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    nodes: list[onnx.NodeProto] = []
    split = 0
    for node in model.graph.node:
        outputs = list(node.output) + [""] * (4 - len(node.output))
        if (
            node.op_type != "SkipLayerNormalization"
            or node.domain != "com.microsoft"
            or any(o and o in used for o in outputs[1:3])
        ):
            nodes.append(node)
            continue
        inputs = list(node.input) + [""] * (5 - len(node.input))
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        total = outputs[3] or f"{node.name or outputs[0]}_skip_sum"
        addends = [inputs[0], inputs[1]] + ([inputs[4]] if inputs[4] else [])
        nodes.append(onnx.helper.make_node("Sum", addends, [total], name=f"{node.name}_sum"))
        norm_inputs = [total, inputs[2]] + ([inputs[3]] if inputs[3] else [])
        nodes.append(
            onnx.helper.make_node(
                "LayerNormalization",
                norm_inputs,
                [outputs[0]],
                name=f"{node.name}_norm",
                axis=-1,
                epsilon=epsilon,
            )
        )
        split += 1
    if split:
        if _onnx_opset(model) < 17:
            raise ValueError("LayerNormalization needs opset 17; the model's default domain is older")
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    onnx.save(model, str(target))
    return split


def _onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


NOTHING_DONE = {
    "transformer": "nothing fused (no attention, layer-norm or GELU pattern matched)",
    "splitnorm": "nothing to split (no SkipLayerNormalization node)",
}

BUILDERS: dict[str, Callable[[Path, Path, OptimizeRequest], dict[str, int]]] = {
    "transformer": _transformer,
    "splitnorm": _split_skip_norm,
    "ort": _ort_offline,
    "fp16": _fp16,
}

"""Weight-only candidates for decoders with a KV cache (``--quantize int4``, and ``int8`` for a decoder):
ONNX Runtime's own block-wise quantizer (``MatMulNBitsQuantizer``: each MatMul with a constant weight becomes
a ``MatMulNBits`` node holding 4- or 8-bit weights, one scale and zero point per ``block_size`` weights along
the input dim) and NNCF's ``compress_weights`` on the float OpenVINO IR.

A decoder's decode step reads every weight once per token, so it is bound by memory traffic: fewer bytes per
weight is the speed-up, and activations can stay float. Every candidate is judged by greedy generation
(``decoder.py``) and timed per token; none needs calibration data.

Tied embeddings: the exported graph holds the embedding as a ``Gather`` on its weight and the head as a
``MatMul``. ONNX Runtime's quantizer rewrites only MatMuls, so the embedding Gather stays float and the head
is quantized (the TorchScript exporter writes the head's weight as its own transposed copy; where one
initializer feeds both, the quantizer leaves a weight it cannot own in float). NNCF compresses the embedding
and the head too, in its backup precision (int8 asymmetric per channel) unless ``all_layers``, as recorded.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from exporter._quiet import quiet
from exporter.quantize.nncf_int8 import _nncf_session
from exporter.quantize.openvino_candidates import (
    OPENVINO_RUNTIME,
    float_openvino_ir,
    int8_openvino_config,
    needs_openvino_target,
)
from exporter.quantize.registry import CandidateSpec
from exporter.quantize.types import QuantizeContext, QuantMode

__all__ = [
    "INT4_OPENVINO",
    "INT4_ORT",
    "INT4_ORT_ACC4",
    "INT8_OPENVINO",
    "INT8_ORT_NBITS",
    "WEIGHT_ONLY_SPECS",
    "build_matmul_nbits",
    "build_nncf_weights",
    "gemm_to_matmul",
]

ACCURACY_INT8 = 4
"""``MatMulNBits``' ``accuracy_level`` 4: activations quantized to int8 per block inside the kernel (an
int8 dot product), faster on CPUs with VNNI, less exact; 0 (unset) computes in float32."""


def build_matmul_nbits(
    context: QuantizeContext, target: Path, exclude: Sequence[str], *, bits: int, accuracy_level: int | None
) -> dict[str, Any]:
    """ONNX Runtime's ``MatMulNBitsQuantizer`` (asymmetric blocks, round to nearest) on the float model."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    block = context.options.block_size
    config = DefaultWeightOnlyQuantConfig(
        block_size=block, is_symmetric=False, accuracy_level=accuracy_level, bits=bits
    )
    model = onnx.load(str(context.float_onnx))
    gemms = gemm_to_matmul(model)
    quantizer = MatMulNBitsQuantizer(
        model,
        bits=bits,
        block_size=block,
        is_symmetric=False,
        accuracy_level=accuracy_level,
        nodes_to_exclude=list(exclude),
        algo_config=config,
    )
    with quiet():
        quantizer.process()
    target.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=context.external_data)
    graph = onnx.load(str(target), load_external_data=False).graph
    ops = Counter(node.op_type for node in graph.node)
    if not ops["MatMulNBits"]:
        raise ValueError("ONNX Runtime's quantizer found no MatMul with a constant weight to quantize")
    return {
        "bits": bits,
        "block_size": block,
        "symmetric": False,
        "accuracy_level": accuracy_level or 0,
        "matmul_nbits": ops["MatMulNBits"],
        "gemms_rewritten": gemms,
        "float_matmuls": ops["MatMul"],
        "embedding": _embedding_note(graph),
    }


def gemm_to_matmul(model: Any) -> int:
    """Rewrite each ``Gemm`` with a constant weight (alpha and beta 1, A not transposed) as ``MatMul`` then
    ``Add``, in place; the count. ONNX Runtime's quantizer rewrites MatMuls only, and GPT-2's ``Conv1D``
    layers export as Gemm: without this only its head would be quantized."""
    from onnx import helper, numpy_helper

    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        )
        if node.op_type != "Gemm" or not plain or node.input[1] not in weights:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attrs.get("transB", 0):
            array = numpy_helper.to_array(weights[weight]).T.copy()
            weight = f"{weight}_transposed_{count}"
            graph.initializer.append(numpy_helper.from_array(array, weight))
        biased = len(node.input) > 2 and node.input[2] != ""
        product = f"{node.output[0]}_matmul" if biased else node.output[0]
        nodes.append(
            helper.make_node("MatMul", [node.input[0], weight], [product], name=f"{node.name}_matmul")
        )
        if biased:
            nodes.append(
                helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_add")
            )
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    return count


def _embedding_note(graph: Any) -> str:
    """What became of the token embedding (a ``Gather`` on a 2-D initializer) and whether the head shares
    its weight."""
    initializers = {i.name for i in graph.initializer if len(i.dims) == 2}
    gathers = [n.input[0] for n in graph.node if n.op_type == "Gather" and n.input[0] in initializers]
    if not gathers:
        return "no embedding Gather on a constant weight"
    shared = any(n.op_type != "Gather" and gathers[0] in n.input for n in graph.node)
    head = "shares its weight with another node, kept float" if shared else "the head has its own weight"
    return f"float (Gather on {gathers[0]}); {head}"


def build_nncf_weights(
    context: QuantizeContext, target: Path, exclude: Sequence[str], *, mode: str
) -> dict[str, Any]:
    """``nncf.compress_weights`` on the float IR, data-free: ``int4_asym`` with ``group_size`` the block size
    and every eligible layer in int4 (``ratio`` 1.0; the embedding and the head in NNCF's int8 backup), or
    ``int8_asym`` per output channel."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedCompressionParameters

    from exporter.backends.openvino import save_ir

    model = ov.Core().read_model(str(float_openvino_ir(context.float_onnx, context.work_dir)))
    int4 = mode.startswith("int4")
    # A layer whose width the block size does not divide (an MLP of 688 with blocks of 32) gets the nearest
    # group size that does, instead of failing the whole candidate.
    adjust = AdvancedCompressionParameters(group_size_fallback_mode=nncf.GroupSizeFallbackMode.ADJUST)
    with _nncf_session():
        compressed = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode(mode),
            group_size=context.options.block_size if int4 else None,
            ratio=1.0 if int4 else None,
            advanced_parameters=adjust if int4 else None,
        )
    save_ir(compressed, target)
    types = Counter(
        op.get_element_type().get_type_name()
        for op in compressed.get_ops()
        if op.get_type_name() == "Constant"
    )
    low = {name: count for name, count in types.items() if name in {"u4", "i4", "u8", "i8"}}
    if not low:
        raise ValueError(f"NNCF compressed no weight to {mode}")
    return {
        "engine": f"nncf {nncf.__version__}",
        "openvino": ov.__version__,
        "mode": mode,
        "block_size": context.options.block_size if int4 else None,
        "ratio": 1.0 if int4 else None,
        "backup_mode": "int8_asym (embedding and head)" if int4 else None,
        "group_size_fallback": "adjust (a layer the block size does not divide gets a group size that does)"
        if int4
        else None,
        "compressed_constants": low,
    }


def _int4_ort(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    return build_matmul_nbits(context, target, exclude, bits=4, accuracy_level=None)


def _int4_ort_acc4(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    return build_matmul_nbits(context, target, exclude, bits=4, accuracy_level=ACCURACY_INT8)


def _int8_ort_nbits(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    return build_matmul_nbits(context, target, exclude, bits=8, accuracy_level=None)


def _int4_openvino(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    return build_nncf_weights(context, target, exclude, mode="int4_asym")


def _int8_openvino(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, Any]:
    return build_nncf_weights(context, target, exclude, mode="int8_asym")


_INT4 = frozenset({QuantMode.INT4})
_INT8 = frozenset({QuantMode.INT8})
_NBITS = "onnxruntime MatMulNBitsQuantizer"

INT4_ORT = CandidateSpec(
    "int4-ort", f"{_NBITS} (4-bit blocks, float32 compute)", _int4_ort, _INT4, decoder=True
)
INT4_ORT_ACC4 = CandidateSpec(
    "int4-ort-acc4", f"{_NBITS} (4-bit blocks, int8 compute)", _int4_ort_acc4, _INT4, decoder=True
)
INT8_ORT_NBITS = CandidateSpec(
    "int8-ort-nbits", f"{_NBITS} (8-bit blocks)", _int8_ort_nbits, _INT8, decoder=True
)
_openvino = partial(
    CandidateSpec,
    runtime=OPENVINO_RUNTIME,
    suffix=".xml",
    float_model=float_openvino_ir,
    config=int8_openvino_config,
    unavailable=needs_openvino_target,
    decoder=True,
)
INT4_OPENVINO = _openvino(
    "int4-openvino", "NNCF compress_weights (int4_asym, OpenVINO)", _int4_openvino, _INT4
)
INT8_OPENVINO = _openvino(
    "int8-openvino", "NNCF compress_weights (int8_asym, OpenVINO)", _int8_openvino, _INT8
)
WEIGHT_ONLY_SPECS = (INT4_ORT, INT4_ORT_ACC4, INT8_ORT_NBITS, INT4_OPENVINO, INT8_OPENVINO)
"""Registered by ``candidates.py`` after every other candidate, in this order."""

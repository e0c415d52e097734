"""Which layers an int8 model cannot afford to quantize.

The measure that decides is direct: re-quantize with one layer kept in float and see how much the model's
output error shrinks (``LayerError``, computed by the search). With many layers that is too slow, so a cheap
proxy picks the layers worth trying: run the float and the int8 ONNX models side by side with every
intermediate tensor exposed, and rank nodes by the SQNR their output lost relative to their inputs. The
proxy is only a shortlist: ONNX Runtime's QDQ quantizer drops Relu nodes and renames tensors, so some
names do not line up.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from exporter.runners.onnxruntime import OnnxRuntimeRunner

__all__ = ["LayerError", "SqnrSums", "exposed", "producers", "quantizable_nodes", "shortlist"]

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


@contextlib.contextmanager
def exposed(model_path: Path, names: Sequence[str], tag: str) -> Iterator[tuple[Path, list[str]]]:
    """``model_path`` with ``names`` (those it computes) added as graph outputs, and its output names.

    Only the graph is read and written (no weights in memory): the copy sits beside the model, so its
    external data, if any, is the model's own one file, read in place; it is removed afterwards.
    """
    model = onnx.load(str(model_path), load_external_data=False)
    present = {o for node in model.graph.node for o in node.output if o}
    already = {o.name for o in model.graph.output}
    chosen = [n for n in names if n in present and n not in already]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in chosen)
    outputs = [o.name for o in model.graph.output]
    target = model_path.with_name(f".{model_path.stem}.{tag}.exposed.onnx")
    try:
        onnx.save_model(model, str(target))
        del model
        yield target, outputs
    finally:
        target.unlink(missing_ok=True)


OUTPUT_BYTES_PER_RUN = 256 * 2**20
"""At most this many bytes of exposed tensors are fetched per run: an encoder's intermediate tensors on
one sample add up to several times its weights, so the shortlist asks for them in groups."""


class SqnrSums:
    """Running sums of one tensor's signal and noise energy over the samples: its SQNR without keeping the
    tensors (``sqnr_db`` of the concatenation, computed as it streams)."""

    def __init__(self) -> None:
        self.signal = 0.0
        self.noise = 0.0
        self.seen = False
        self.mismatched = False

    def add(self, reference: np.ndarray, actual: np.ndarray) -> None:
        """Fold one sample in; shapes that differ make the tensor unrankable (+Inf, as no signal lost)."""
        if reference.shape != actual.shape:
            self.mismatched = True
            return
        ref, act = reference.astype(np.float64, copy=False), actual.astype(np.float64, copy=False)
        self.signal += float(np.sum(ref**2))
        self.noise += float(np.sum((ref - act) ** 2))
        self.seen = True

    @property
    def db(self) -> float:
        if self.noise == 0 or self.mismatched:
            return math.inf
        return 10 * math.log10(self.signal / self.noise) if self.signal > 0 else -math.inf


def _groups(names: Sequence[str], sizes: dict[str, int]) -> list[list[str]]:
    """``names`` split into runs whose tensors fit ``OUTPUT_BYTES_PER_RUN``: sized as the first sample
    found them, and a tensor not yet seen counted as a 32nd of the limit."""
    groups: list[list[str]] = [[]]
    used = 0
    for name in names:
        size = sizes.get(name, OUTPUT_BYTES_PER_RUN // 32)
        if groups[-1] and used + size > OUTPUT_BYTES_PER_RUN:
            groups.append([])
            used = 0
        groups[-1].append(name)
        used += size
    return [group for group in groups if group]


def _stream_sqnr(
    float_path: Path,
    quant_path: Path,
    tensors: Sequence[str],
    samples: Sequence[dict[str, np.ndarray]],
    threads: int,
) -> dict[str, float]:
    """The SQNR of every tensor both models compute, float against int8, over ``samples``; tensors are
    fetched in groups (``OUTPUT_BYTES_PER_RUN``) and folded into running sums, never all held at once."""
    with (
        exposed(float_path, tensors, "float") as (float_file, float_names),
        exposed(quant_path, tensors, "int8") as (quant_file, quant_names),
        OnnxRuntimeRunner(float_file, threads) as float_runner,
        OnnxRuntimeRunner(quant_file, threads) as quant_runner,
    ):
        quant_set = set(quant_names)
        shared = [n for n in float_names if n in quant_set]
        noise = {name: SqnrSums() for name in shared}
        sizes: dict[str, int] = {}
        for sample in samples:
            feed = {n: sample[n] for n in float_runner.input_names if n in sample}
            quant_feed = {n: sample[n] for n in quant_runner.input_names if n in sample}
            for group in _groups(shared, sizes):
                float_out = _fetch(float_runner, group, feed)
                quant_out = _fetch(quant_runner, group, quant_feed)
                for name, reference, actual in zip(group, float_out, quant_out, strict=True):
                    sizes.setdefault(name, reference.nbytes)
                    if reference.dtype.kind == "f" and reference.shape == actual.shape:
                        noise[name].add(reference, actual)
                del float_out, quant_out
    return {name: n.db for name, n in noise.items() if n.seen}


def _fetch(runner: OnnxRuntimeRunner, names: Sequence[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Only ``names`` of the runner's outputs on ``feed`` (ONNX Runtime returns what is asked for)."""
    assert runner.session is not None
    return list(runner.session.run(list(names), feed))


def shortlist(
    float_path: Path, quant_path: Path, samples: Sequence[dict[str, np.ndarray]], threads: int, size: int
) -> list[str]:
    """Up to ``size`` quantizable node names, those whose output SQNR dropped most first (the proxy)."""
    graph = onnx.load(str(float_path), load_external_data=False).graph
    floats = [t.name for t in graph.input if t.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    tensors = [o for node in graph.node for o in node.output if o]
    sqnr = _stream_sqnr(float_path, quant_path, tensors, samples, threads)
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

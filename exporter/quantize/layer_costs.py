"""What each quantizable layer costs: its multiply-accumulates (MACs) at the shapes one real sample gives,
and from them an estimate of the time int8 saves on it.

MACs come from the shapes the float ONNX model actually produces (every quantizable node's inputs and
outputs exposed and the model run once on a calibration sample), not from static shape inference: exported
encoders carry symbolic dims that inference leaves unknown. A layer's share of the time int8 saves is its
share of the quantizable MACs; the whole model's saving is measured once (float against all-int8, in the
runtime that ships it). The search needs only the shares (the ranking does not change with the scale); the
milliseconds are what the report shows, so a reader sees what each float layer gives up.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from exporter.quantize.judge import open_candidate, open_model
from exporter.quantize.sensitivity import QUANTIZABLE, LayerError, exposed
from exporter.quantize.types import Candidate, QuantizeContext
from exporter.runners.base import Runner
from exporter.runners.onnxruntime import OnnxRuntimeRunner

__all__ = ["LayerCosts", "latency_ms", "layer_costs_ms", "layer_macs", "macs_of"]

_TIMING_SECONDS = 0.5
_TIMING_RUNS = 40


def layer_macs(model_path: Path, sample: Mapping[str, np.ndarray], threads: int) -> dict[str, int]:
    """MACs of every quantizable node (by name) at ``sample``'s shapes; 0 where a shape is not known.

    Reads the graph only (initializer shapes need no weights); the run keeps one output at a time."""
    model = onnx.load(str(model_path), load_external_data=False)
    nodes = [n for n in model.graph.node if n.op_type in QUANTIZABLE and n.name]
    initial = {t.name: tuple(t.dims) for t in model.graph.initializer}
    del model
    wanted = {name for n in nodes for name in (*n.input, *n.output) if name and name not in initial}
    shapes: dict[str, tuple[int, ...]] = dict(initial)
    with exposed(model_path, sorted(wanted), "macs") as (path, _), OnnxRuntimeRunner(path, threads) as runner:
        names = [n for n in runner.input_names if n in sample]
        values = runner.run({n: sample[n] for n in names})
        shapes.update({n: tuple(v.shape) for n, v in zip(runner.output_names, values, strict=True)})
        del values
    return {n.name: macs_of(n, shapes) for n in nodes}


def macs_of(node: onnx.NodeProto, shapes: Mapping[str, tuple[int, ...]]) -> int:
    """Multiply-accumulates of one node: output elements x the reduction length (MatMul/Gemm: the inner
    dim; Conv: input channels per group x kernel size); 0 for an op or shape it cannot read."""
    out = shapes.get(node.output[0]) if node.output else None
    if out is None:
        return 0
    elements = math.prod(out)
    if node.op_type in ("MatMul", "Gemm") and node.input:
        first = shapes.get(node.input[0])
        if not first:
            return 0
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        inner = first[0] if node.op_type == "Gemm" and trans_a else first[-1]
        return int(elements * inner)
    if node.op_type in ("Conv", "ConvTranspose") and len(node.input) > 1:
        weight = shapes.get(node.input[1])
        if not weight:
            return 0
        if node.op_type == "ConvTranspose":  # weight (C_in, C_out/g, k...): each input feeds C_out/g x k
            inputs = shapes.get(node.input[0])
            return int(math.prod(inputs) * math.prod(weight[1:])) if inputs else 0
        return int(elements * math.prod(weight[1:]))
    return 0


def latency_ms(open_runner: Callable[[], Runner], sample: Mapping[str, np.ndarray]) -> float:
    """A quick median latency (a few warm-up runs, then up to half a second): enough to scale MAC shares
    into milliseconds for the report, not a benchmark (the stage times candidates properly later)."""
    with open_runner() as runner:
        inputs = {n: sample[n] for n in runner.input_names if n in sample}
        for _ in range(3):
            runner.run(inputs)
        times: list[float] = []
        deadline = time.perf_counter() + _TIMING_SECONDS
        while len(times) < _TIMING_RUNS and (not times or time.perf_counter() < deadline):
            started = time.perf_counter()
            runner.run(inputs)
            times.append((time.perf_counter() - started) * 1000)
    return float(np.median(times))


@dataclass(frozen=True)
class LayerCosts:
    """Each layer's MACs and share of the quantizable MACs, and the time int8 saved on the whole model."""

    macs: Mapping[str, int]
    float_ms: float
    int8_ms: float

    @property
    def saved_ms(self) -> float:
        return max(self.float_ms - self.int8_ms, 0.0)

    @property
    def shares(self) -> dict[str, float]:
        total = sum(self.macs.values())
        return {name: (m / total if total else 0.0) for name, m in self.macs.items()}

    def renamed(self, names: Mapping[str, str]) -> LayerCosts:
        """The same costs under other layer names (ONNX node -> OpenVINO op); unmapped layers dropped."""
        macs = {names[n]: m for n, m in self.macs.items() if n in names}
        return LayerCosts(macs, self.float_ms, self.int8_ms)

    def describe(self, layers: Sequence[LayerError], precision: str) -> list[LayerError]:
        """The layers with their estimated milliseconds given back and the precision they run at."""
        shares = self.shares
        return [
            dataclasses.replace(
                e,
                cost_share=shares.get(e.node, e.cost_share),
                est_ms=round(shares.get(e.node, 0.0) * self.saved_ms, 4),
                precision=precision,
            )
            for e in layers
        ]

    def summary(self) -> dict[str, object]:
        return {
            "float_ms_quick": round(self.float_ms, 3),
            "int8_ms_quick": round(self.int8_ms, 3),
            "cost_model": "MACs share x (float - all-int8 latency), both timed briefly",
        }


def layer_costs_ms(
    context: QuantizeContext, onnx_model: Path, candidate: Candidate, float_model: Path | None = None
) -> LayerCosts:
    """MACs per quantizable node of ``onnx_model`` and the candidate's quick latency against its runtime's
    float model (``float_model``, default the float ONNX model, opened by that runtime's float backend)."""
    sample = context.calibration.samples[0]
    macs = layer_macs(onnx_model, sample, context.threads)
    reference = float_model or context.float_onnx
    threads = context.threads
    float_ms = latency_ms(lambda: open_model(reference, candidate.runtime, threads, {}, "float"), sample)
    int8_ms = latency_ms(lambda: open_candidate(candidate, context.threads), sample)
    return LayerCosts(macs, float_ms, int8_ms)

"""Repairs for an int8 candidate that misses the parity budget, tried in the order its spec lists them.

A repair gets the judged candidate, the builder that made it (so it can rebuild with other settings) and
the stage's context; it leaves the candidate rebuilt and judged, or untouched when it does not apply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.quantize.budget import Int8Comparison
from exporter.quantize.judge import describe_error, judge
from exporter.quantize.sensitivity import LayerError, producers, quantizable_nodes, shortlist
from exporter.quantize.types import Builder, Candidate, QuantizeContext, cosine_error

__all__ = [
    "AUTO_CALIBRATION",
    "CalibrationTrial",
    "Repair",
    "choose_calibration",
    "keep_sensitive_layers_in_float",
    "search_calibration_method",
]

Repair = Callable[[Candidate, Builder, QuantizeContext], None]

AUTO_CALIBRATION = ("minmax", "percentile", "entropy")  # --calibration-method auto, in the order tried
PROBE_LIMIT = 24  # layers measured one by one when a mode misses the budget
STEP_WIDTH = 6  # layers tried at each later step of the greedy search


@dataclass(frozen=True)
class CalibrationTrial:
    """One calibration method's model as judged: what choosing between methods needs."""

    method: str
    outputs: tuple[Int8Comparison, ...]
    shape_errors: tuple[str, ...] = ()
    settings: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, method: str, candidate: Candidate, settings: Mapping[str, Any]) -> CalibrationTrial:
        return cls(method, tuple(candidate.outputs), tuple(candidate.shape_errors), dict(settings))

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs) and not self.shape_errors

    @property
    def error(self) -> float:
        return cosine_error(self.outputs)


def choose_calibration(trials: Sequence[CalibrationTrial]) -> CalibrationTrial:
    """The method to keep: one whose model meets the whole budget (cosine, top-1, SQNR, max abs) beats one
    that does not, whatever their cosine errors, since the budget is what ships; among methods that all
    pass or all fail, the lowest cosine error, then the earliest tried."""
    return min(trials, key=lambda trial: (not trial.passed, trial.error))


def search_calibration_method(candidate: Candidate, build: Builder, context: QuantizeContext) -> None:
    """``--calibration-method auto``: when min-max ranges miss the budget, percentile and entropy ranges are
    tried (in that order, stopping at the first within budget) and the best kept, before any layer is kept
    in float: a float layer inside an int8 chain costs a dequantize/quantize pair and its float kernel (on a
    ResNet-18 with an over-fitted head, percentile ranges lifted top-1 agreement over 64 images from 95.3 %
    to 98.4 % at the same min cosine). The builder reads ``context.calibration_method``."""
    if context.options.method != "auto":
        return
    assert candidate.path is not None
    context.calibration_method = AUTO_CALIBRATION[0]
    if candidate.budget_passed or candidate.shape_errors:
        return
    trials = [CalibrationTrial.of(AUTO_CALIBRATION[0], candidate, candidate.settings)]
    for method in AUTO_CALIBRATION[1:]:
        context.step(f"{candidate.name}: {method} calibration")
        context.calibration_method = method
        settings = build(context, candidate.path, ())
        judge(candidate, context)
        trials.append(CalibrationTrial.of(method, candidate, settings))
        if candidate.budget_passed:
            break
    best = choose_calibration(trials)
    context.calibration_method = best.method
    if best is not trials[-1]:
        build(context, candidate.path, ())
        judge(candidate, context)
    tried = "; ".join(f"{t.method} {describe_error(t.error)}" for t in trials)
    candidate.settings = dict(best.settings) | {"calibration_tried": tried}


def keep_sensitive_layers_in_float(candidate: Candidate, build: Builder, context: QuantizeContext) -> None:
    """Greedy forward selection of layers to keep in float, each step measured by re-quantizing.

    A move keeps one layer in float, or a layer together with the layer producing its input: an outlier
    tensor's int8 range is set at both ends, so often only the pair helps. Step one tries every
    shortlisted layer (a proxy picks ``PROBE_LIMIT`` when there are more); later steps the ``STEP_WIDTH``
    best remaining. Stops when the budget holds, when nothing helps, or at ``max_float_layers`` / half the
    layers (beyond that little int8 is left to ship). Only for builders that honour their exclude list.
    """
    if candidate.budget_passed or candidate.shape_errors:
        return
    assert candidate.path is not None
    nodes = dict(quantizable_nodes(context.preprocessed))
    context.step(f"{candidate.name}: shortlisting sensitive layers")
    pool = shortlist(
        context.preprocessed, candidate.path, context.evaluation.samples[:8], context.threads, PROBE_LIMIT
    )
    pool += [n for n in nodes if n not in pool][: max(0, PROBE_LIMIT - len(pool))]
    limit = min(context.options.max_float_layers, max(1, len(nodes) // 2))
    trial = Candidate(
        candidate.name, candidate.engine, path=context.work_dir / f"{candidate.name}.trial.onnx"
    )
    upstream = producers(context.preprocessed)
    kept: list[LayerError] = []
    baseline = error = candidate.cosine_error
    while len(kept) < limit and pool:
        names = [e.node for e in kept]
        moves = _moves(pool[: len(pool) if not kept else STEP_WIDTH], upstream, names)
        tried: list[tuple[float, tuple[str, ...]]] = []
        for move in moves:
            if len(kept) + len(move) > limit:
                continue
            context.step(f"{candidate.name}: trying {', '.join(move)} in float")
            assert trial.path is not None
            build(context, trial.path, names + list(move))
            judge(trial, context)
            tried.append((trial.cosine_error, move))
        if not tried:
            break
        tried.sort(key=lambda item: item[0])  # stable: ties keep the proxy's order
        best_error, best = tried[0]
        if best_error >= error:
            break  # nothing left helps
        kept += [LayerError(node, nodes[node], error, best_error) for node in best]
        pool = [node for node in pool if node not in best]
        error = best_error
        build(context, candidate.path, [e.node for e in kept])
        candidate.float_layers = list(kept)
        judge(candidate, context)
        if candidate.budget_passed:
            return
    if kept and error >= baseline:  # nothing helped: ship no float layers for nothing
        build(context, candidate.path, [])
        candidate.float_layers = []
        judge(candidate, context)


def _moves(
    nodes: Sequence[str], upstream: Mapping[str, Sequence[str]], kept: Sequence[str]
) -> list[tuple[str, ...]]:
    """Each node alone, then with each of its producers not already in float."""
    moves: list[tuple[str, ...]] = []
    for node in nodes:
        moves.append((node,))
        moves.extend((p, node) for p in upstream.get(node, []) if p not in kept and p != node)
    return moves

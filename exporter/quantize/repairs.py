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
from exporter.quantize.layer_costs import layer_costs_ms
from exporter.quantize.mixed_precision import moves_for, search_float_layers
from exporter.quantize.sensitivity import producers, quantizable_nodes, shortlist
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
PROBE_LIMIT = 16  # layers measured one by one when a candidate misses the budget
PAIR_PROBES = 4  # of those, the likeliest also probed together with the layers producing their input


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
    """The fastest mix of int8 and float layers that meets the budget (``mixed_precision``), each step
    measured by re-quantizing with the layers kept in float left out of the builder's QDQ.

    The proxy (``sensitivity.shortlist``) picks the ``PROBE_LIMIT`` layers worth probing, the likeliest
    ``PAIR_PROBES`` also with their producers; each layer's cost is its share of the quantizable MACs at a
    calibration sample's shapes, in milliseconds its share of the time this int8 model saves over float
    (both timed briefly here). At most ``max_float_layers`` (default 8) and half the layers are kept in
    float: beyond that little int8 is left to ship. Only for builders that honour their exclude list.
    """
    if candidate.budget_passed or candidate.shape_errors:
        return
    assert candidate.path is not None
    nodes = dict(quantizable_nodes(context.preprocessed))
    limit = min(context.options.max_float_layers, max(1, len(nodes) // 2))
    if limit < 1 or not nodes:
        return
    context.step(f"{candidate.name}: shortlisting sensitive layers")
    pool = shortlist(
        context.preprocessed, candidate.path, context.evaluation.samples[:8], context.threads, PROBE_LIMIT
    )
    pool += [n for n in nodes if n not in pool][: max(0, PROBE_LIMIT - len(pool))]
    costs = layer_costs_ms(context, context.preprocessed, candidate)
    trial = Candidate(
        candidate.name, candidate.engine, path=context.work_dir / f"{candidate.name}.trial.onnx"
    )

    def measure(kept: Sequence[str]) -> tuple[float, bool]:
        assert trial.path is not None
        build(context, trial.path, kept)
        judge(trial, context)
        return trial.cosine_error, trial.budget_passed

    found = search_float_layers(
        moves_for(pool, producers(context.preprocessed), PAIR_PROBES),
        costs.shares,
        nodes,
        measure,
        baseline=candidate.cosine_error,
        limit=limit,
        step=lambda message: context.step(f"{candidate.name}: {message}"),
    )
    if not found.layers:
        candidate.settings = {**candidate.settings, "mixed_precision": found.summary()}
        return
    settings = build(context, candidate.path, found.nodes)
    judge(candidate, context)
    candidate.float_layers = costs.describe(found.layers, "fp32")
    candidate.settings = {
        **settings,
        **{k: v for k, v in candidate.settings.items() if k not in settings},
        "mixed_precision": found.summary() | costs.summary(),
        "float_layer_precision": "fp32",
    }

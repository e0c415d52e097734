"""Mixed precision per layer: the fastest assignment of int8 or float to each quantizable layer that meets
the parity budget, searched by measurement rather than guessed.

The search is runtime-agnostic: it gets a ``trial`` that rebuilds the model with some layers kept in float
and judges it (ONNX Runtime QDQ with an exclude list, or NNCF with an ``IgnoredScope``), the candidate
moves (a layer alone, or a layer with the layer producing its input: an outlier tensor's int8 range is set
at both ends), and each layer's cost. It runs in three measured phases:

1. **Probe** each shortlisted move alone (the proxy's order): ``gain`` = how much keeping it in float cut
   the error, the ``LayerError`` the report shows.
2. **Walk** the moves by gain per unit of cost, best first, keeping each in float when it lowers the error,
   until the budget holds. Cost is the layer's share of the model's quantizable MACs (see
   ``layer_costs``): the time int8 saves on a layer scales with its MACs, so a small layer that removes
   most of the error is kept in float before a large one that removes a little more.
3. **Prune**: with the budget met, drop again each kept move, costliest first, whose removal still meets
   it (errors do not add up, so an early pick may be redundant once later ones are in).

When a probed move meets the budget alone, the cheapest such move is kept and the walk is not run: a set
of several cheaper moves that each miss the budget might cost less, but finding it costs more trials than
it is likely to save. Probing stops early when a move meets the budget and no remaining move is cheaper.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from exporter.quantize.sensitivity import LayerError

__all__ = ["Assignment", "Trial", "moves_for", "search_float_layers"]

Trial = Callable[[Sequence[str]], tuple[float, bool]]
"""Rebuilds the model with the named layers kept in float and judges it: (cosine error, budget met)."""

_TINY = 1e-9


@dataclass
class Assignment:
    """The layers the search keeps in float, and what it measured on the way."""

    layers: list[LayerError] = field(default_factory=list)
    error: float = 1.0
    passed: bool = False
    trials: int = 0
    probed: dict[tuple[str, ...], float] = field(default_factory=dict)
    """Each probed move's error with it alone in float."""

    @property
    def nodes(self) -> list[str]:
        return [e.node for e in self.layers]

    def summary(self) -> dict[str, object]:
        """What the report records about the search itself."""
        return {
            "trials": self.trials,
            "cost_share_in_float": round(sum(e.cost_share or 0.0 for e in self.layers), 4),
            "probed": {", ".join(m): round(1.0 - e, 5) for m, e in self.probed.items()},
        }


def moves_for(
    shortlist: Sequence[str], upstream: Mapping[str, Sequence[str]], pairs_for: int
) -> list[tuple[str, ...]]:
    """Each shortlisted layer alone, then for the first ``pairs_for`` the layer with each quantizable
    producer of its input: the pairs double the probes, so only the likeliest culprits get them."""
    moves: list[tuple[str, ...]] = [(node,) for node in shortlist]
    for node in shortlist[:pairs_for]:
        moves += [(p, node) for p in upstream.get(node, []) if p != node and (p,) != (node,)]
    return list(dict.fromkeys(moves))


def search_float_layers(
    moves: Sequence[tuple[str, ...]],
    cost: Mapping[str, float],
    op_types: Mapping[str, str],
    trial: Trial,
    *,
    baseline: float,
    limit: int,
    step: Callable[[str], None] = lambda message: None,
) -> Assignment:
    """The cheapest set of layers to keep in float found by probe, walk and prune (see the module).

    ``cost`` is each layer's share of what int8 saves (0..1; unknown layers cost as the mean), ``limit`` the
    most layers kept in float. The returned assignment has not been built: the caller builds it (and,
    when it is empty, builds nothing).
    """
    result = Assignment(error=baseline)
    mean = sum(cost.values()) / len(cost) if cost else 1.0

    def cost_of(nodes: Sequence[str]) -> float:
        return sum(cost.get(n, mean) for n in set(nodes))

    def run(nodes: Sequence[str]) -> tuple[float, bool]:
        result.trials += 1
        step(f"trying {', '.join(nodes)} in float")
        return trial(list(nodes))

    usable = [m for m in moves if len(m) <= limit]
    best_single: tuple[str, ...] | None = None
    for index, move in enumerate(usable):
        error, passed = run(move)
        result.probed[move] = error
        if passed and (best_single is None or cost_of(move) < cost_of(best_single)):
            best_single = move
            rest = usable[index + 1 :]
            if all(cost_of(m) >= cost_of(move) for m in rest):
                break  # nothing left to probe can be cheaper than this move, which meets the budget
    gains = {m: baseline - e for m, e in result.probed.items() if baseline - e > _TINY}
    ranked = sorted(gains, key=lambda m: -gains[m] / max(cost_of(m), _TINY))

    kept: list[tuple[str, ...]] = []
    error, passed = baseline, False
    if best_single is None:
        for move in ranked:
            nodes = _union([*kept, move])
            if len(nodes) > limit or set(move) <= set(_union(kept)):
                continue
            trial_error, trial_passed = run(nodes)
            if trial_error < error:
                kept.append(move)
                error, passed = trial_error, trial_passed
                if passed:
                    break
        if passed and len(kept) > 1:
            for move in sorted(kept, key=lambda m: -cost_of(m)):
                others = [m for m in kept if m != move]
                trial_error, trial_passed = run(_union(others))
                if trial_passed:
                    kept, error = others, trial_error
    if best_single is not None:
        kept, error, passed = [best_single], result.probed[best_single], True
    if not passed and error >= baseline:
        kept, error = [], baseline  # nothing helped: ship no float layers for nothing
    result.error, result.passed = error, passed
    for move in kept:
        for node in move:
            if node not in result.nodes:
                result.layers.append(
                    LayerError(
                        node,
                        op_types.get(node, "?"),
                        baseline,
                        result.probed[move],
                        cost_share=cost.get(node),
                    )
                )
    return result


def _union(moves: Sequence[tuple[str, ...]]) -> list[str]:
    return list(dict.fromkeys(node for move in moves for node in move))

"""Mixed precision per layer and outlier handling: the search keeps a planted sensitive layer in float and
no more than the budget needs, cheapest first; the smooth-quant and accuracy-control candidates are shipped
or refused with the reason recorded. Calibration is real-looking data from an ``.npz``, not synthetic."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import Tensor, nn

from exporter.pipeline import ExportOptions, export
from exporter.quantize.layer_costs import macs_of
from exporter.quantize.mixed_precision import moves_for, search_float_layers
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import FAST_TIMING

FEATURES = 16
SPEC = "x:float32:batch=2,16"


class OutlierMLP(nn.Module):
    """``wide``'s input has one channel ~300x the rest (as a trained transformer's outlier channel): a
    per-tensor int8 range sized for it leaves the other 63 channels a level or two, so int8 meets a 0.99
    cosine budget only with ``wide`` in float (in ONNX Runtime with ``first`` too: QDQ sets that tensor's
    range where ``first`` writes it). ``wide`` (ONNX ``node_linear_1``) is the planted layer."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(FEATURES, 64)
        self.wide = nn.Linear(64, 64)
        self.third = nn.Linear(64, 64)
        self.head = nn.Linear(64, 8)
        with torch.no_grad():
            self.first.weight[0] = 0.0
            self.first.bias[0] = 300.0  # channel 0 of wide's input: a constant 300, the rest ~1
            self.wide.weight[:, 0] = 0.001

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.first(x))  # (B, 64), channel 0 = 300
        h = torch.relu(self.wide(h))  # (B, 64)
        return self.head(torch.relu(self.third(h)))  # (B, 8)


def make_outlier_mlp() -> OutlierMLP:
    torch.manual_seed(0)
    return OutlierMLP().eval()


def _calibration(path: Path, count: int = 32) -> Path:
    """Correlated features with a per-feature scale, as measured data would be (not the spec's draw)."""
    rng = np.random.default_rng(7)
    mixing = rng.normal(size=(FEATURES, FEATURES)) / 4
    x = (rng.normal(size=(count, FEATURES)) @ mixing + rng.uniform(-1, 1, FEATURES)).astype(np.float32)
    np.savez(path, x=x)
    return path


def _options(tmp_path: Path, mode: QuantMode, **settings: object) -> ExportOptions:
    checkpoint = tmp_path / "outlier.pt"
    torch.save(make_outlier_mlp().state_dict(), checkpoint)
    quantization = QuantizeOptions(
        mode=mode,
        samples=32,
        calibration=str(_calibration(tmp_path / "calibration.npz")),
        **settings,  # type: ignore[arg-type]
    )
    return ExportOptions.from_settings(
        {
            "checkpoint": checkpoint,
            "model_ref": f"{Path(__file__).resolve()}:make_outlier_mlp",
            "spec": InputSpec((parse_tensor_spec(SPEC),)),
            "out": tmp_path / "out",
            "timing": FAST_TIMING,
            "batch_sizes": (1, 2),
            "targets": ("onnx", "openvino"),
            "quantization": quantization,
            "benchmark": False,
        }
    )


# ---- the search, with a scripted trial --------------------------------------------------------------------


def _scripted(errors: dict[frozenset[str], float], budget: float) -> tuple[list[list[str]], object]:
    """A trial whose error is looked up by the set kept in float (the sum of removals when not listed)."""
    calls: list[list[str]] = []
    single = {next(iter(k)): 0.05 - v for k, v in errors.items() if len(k) == 1}

    def trial(kept: Sequence[str]) -> tuple[float, bool]:
        calls.append(list(kept))
        error = errors.get(frozenset(kept), 0.05 - sum(single.get(n, 0.0) for n in kept))
        return error, error <= budget

    return calls, trial


def test_the_search_keeps_the_cheapest_layers_that_meet_the_budget_not_the_most_sensitive() -> None:
    """``big`` removes the most error but costs 70 % of the MACs; ``small`` and ``tiny`` together remove
    enough for a tenth of the cost: the search keeps those two, and prunes nothing they both need."""
    errors = {frozenset({"big"}): 0.02, frozenset({"small"}): 0.03, frozenset({"tiny"}): 0.035}
    calls, trial = _scripted(errors, budget=0.016)
    cost = {"big": 0.7, "small": 0.08, "tiny": 0.02, "other": 0.2}
    found = search_float_layers(
        moves_for(["big", "small", "tiny"], {}, 0),
        cost,
        dict.fromkeys(cost, "MatMul"),
        trial,  # type: ignore[arg-type]
        baseline=0.05,
        limit=3,
    )
    assert found.passed and sorted(found.nodes) == ["small", "tiny"]
    assert found.error == pytest.approx(0.015)
    assert {e.node: e.caused for e in found.layers} == pytest.approx({"small": 0.02, "tiny": 0.015})
    assert ["big"] in calls and ["small", "big"] not in calls  # probed, never kept
    assert found.summary()["cost_share_in_float"] == pytest.approx(0.1)


def test_a_layer_that_meets_the_budget_alone_and_is_cheapest_stops_the_probes() -> None:
    errors = {frozenset({"tiny"}): 0.001, frozenset({"big"}): 0.001}
    calls, trial = _scripted(errors, budget=0.01)
    found = search_float_layers(
        [("tiny",), ("big",)],
        {"tiny": 0.01, "big": 0.9},
        {},
        trial,
        baseline=0.05,
        limit=2,  # type: ignore[arg-type]
    )
    assert found.nodes == ["tiny"] and found.passed and calls == [["tiny"]]


def test_nothing_that_helps_keeps_nothing_in_float() -> None:
    _calls, trial = _scripted({frozenset({"a"}): 0.06, frozenset({"b"}): 0.05}, budget=0.01)
    found = search_float_layers([("a",), ("b",)], {"a": 0.5, "b": 0.5}, {}, trial, baseline=0.05, limit=2)  # type: ignore[arg-type]
    assert found.layers == [] and not found.passed and found.error == 0.05


def test_macs_come_from_the_shapes_a_sample_produces() -> None:
    shapes = {"a": (2, 7, 32), "w": (32, 64), "y": (2, 7, 64), "img": (1, 3, 8, 8), "k": (16, 3, 3, 3)}
    shapes["c"] = (1, 16, 8, 8)
    matmul = helper.make_node("MatMul", ["a", "w"], ["y"], name="mm")
    conv = helper.make_node("Conv", ["img", "k"], ["c"], name="conv")
    assert macs_of(matmul, shapes) == 2 * 7 * 64 * 32
    assert macs_of(conv, shapes) == 16 * 8 * 8 * 3 * 3 * 3
    assert macs_of(helper.make_node("MatMul", ["?", "w"], ["y"]), shapes) == 0


def test_openvino_op_names_map_back_to_onnx_nodes() -> None:
    import openvino as ov

    from exporter.quantize.nncf_variants import openvino_names

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n)
        for n, s in (("w1", (8, 8)), ("b1", (8,)), ("w2", (8, 4)))
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="gemm_node"),
            helper.make_node("MatMul", ["h", "w2"], ["y"], name="last_matmul"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        weights,
    )
    path = Path(__file__).parent / ".mixed-names.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    try:
        names = openvino_names(path, ov.convert_model(str(path)))
    finally:
        path.unlink()
    assert names["gemm_node"] == "gemm_node/WithoutBiases"
    assert names["last_matmul"] in {"last_matmul", "y"}


# ---- end to end -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_the_planted_layer_is_kept_in_float_in_both_runtimes_and_named(tmp_path: Path) -> None:
    """Static int8 misses the budget until ``wide`` is in float; the search keeps it (and at most one
    more) in ONNX Runtime, the smooth-quant candidate is shipped or refused with its alphas recorded, and
    accuracy control is built or skipped with the reason."""
    options = _options(tmp_path, QuantMode.STATIC, method="minmax")
    export(options)
    report = json.loads((options.out_dir / "report.json").read_text())["quantization"]
    assert not report["calibration"]["synthetic"]
    listed = {c["name"]: c for c in report["candidates"]}

    static = listed["static-ort"]
    kept = [e["node"] for e in static["float_layers"]]
    assert static["budget_passed"] and "node_linear_1" in kept and len(kept) <= 2, static
    planted = next(e for e in static["float_layers"] if e["node"] == "node_linear_1")
    assert planted["caused"] > 0 and 0 < planted["cost_share"] < 1 and planted["precision"] == "fp32"
    assert static["settings"]["mixed_precision"]["trials"] >= 1
    assert "node_linear_1" in (options.out_dir / "report.md").read_text()

    plain = listed["nncf-openvino"]
    assert plain["outputs"] and not plain["budget_passed"], "the outlier must break NNCF's defaults"
    sq = listed.get("nncf-openvino-sq")
    assert sq is not None, report["skipped"]
    tried = sq["settings"]["smooth_quant_tried"]
    assert next(iter(tried)) == "off" and all(-1 <= v <= 1 for v in tried.values())
    if sq["budget_passed"]:
        assert sq["float_layers"] or any(v >= 0.99 for v in tried.values())
    for float_layer in sq["float_layers"]:
        assert float_layer["precision"] in {"bf16", "f32"} and float_layer["node"].startswith("node_")
    if sq["float_layers"]:  # the cheapest that meets it: never more MACs than the planted layer's
        assert sq["settings"]["ignored_scope"]
        assert sq["settings"]["mixed_precision"]["cost_share_in_float"] <= planted["cost_share"]
    if sq["budget_passed"]:
        assert "accuracy control" in report["skipped"]["nncf-openvino-ac"]
    else:
        ac = listed["nncf-openvino-ac"]
        assert ac["settings"]["smooth_quant_alpha"] == -1.0 and ac["outputs"]
    assert all(c["budget_passed"] for c in report["candidates"] if c["chosen"])


@pytest.mark.slow
def test_a_budget_no_alpha_meets_keeps_layers_in_float_through_nncf_ignored_scope(tmp_path: Path) -> None:
    """At cosine 0.999 no smooth-quant alpha suffices: the OpenVINO search keeps the fewest layers in
    float through an IgnoredScope, named by ONNX node in the report with the precision they run at; then
    accuracy control is skipped with the reason, or built and judged."""
    options = _options(tmp_path, QuantMode.STATIC, method="minmax", min_cosine=0.999)
    export(options)
    report = json.loads((options.out_dir / "report.json").read_text())["quantization"]
    listed = {c["name"]: c for c in report["candidates"]}
    sq = listed["nncf-openvino-sq"]
    tried = sq["settings"]["smooth_quant_tried"]
    assert set(tried) == {"off", "0.5", "0.95"} and max(tried.values()) < 0.999, tried
    assert sq["float_layers"], sq["settings"].get("mixed_precision")
    nodes = [e["node"] for e in sq["float_layers"]]
    assert sq["settings"]["ignored_scope"] and len(sq["settings"]["ignored_scope"]) == len(nodes)
    assert all(e["precision"] in {"bf16", "f32"} and e["caused"] > 0 for e in sq["float_layers"])
    assert sq["settings"]["statistics"] == "nncf.quantize"
    cosine = min(o["min_cosine"] for o in sq["outputs"])
    assert sq["budget_passed"] == (cosine >= 0.999)
    if sq["budget_passed"]:
        assert "nncf-openvino-sq already meets the budget" in report["skipped"]["nncf-openvino-ac"]
    else:
        assert listed["nncf-openvino-ac"]["outputs"]
    assert all(node in (options.out_dir / "report.md").read_text() for node in nodes)

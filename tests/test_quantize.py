"""Int8: the parity budget, calibration data, format choice, candidate selection, and every mode end to end
on tiny real models (ONNX Runtime quantization and torchao PT2E, no mocks)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from exporter.benchmark.latency import LatencyStats
from exporter.cli import app
from exporter.errors import CalibrationError, ConversionError, ExitCode
from exporter.pipeline import ExportOptions, export
from exporter.quantize.budget import Int8Comparison, ParityBudget, compare_int8
from exporter.quantize.calibration import load_samples
from exporter.quantize.candidates import (
    QAT_PT2E,
    STATIC_ORT,
    STATIC_PT2E,
    CandidateSpec,
    Requirement,
    candidates_for,
    register,
    unregister,
)
from exporter.quantize.onnx_ort import choose_formats
from exporter.quantize.repairs import (
    CalibrationTrial,
    choose_calibration,
    keep_sensitive_layers_in_float,
    search_calibration_method,
)
from exporter.quantize.selection import choose_candidate
from exporter.quantize.types import Candidate, QuantizeContext, QuantizeOptions, QuantMode
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import FAST_TIMING, write_calibration
from tests.models import MODELS

IMAGE_SPEC = InputSpec((parse_tensor_spec("image:float32:batch=1,3,8,8"),))
TWO_SPEC = InputSpec(
    (parse_tensor_spec("features:float32:batch=2,seq=5,8"), parse_tensor_spec("mask:bool:batch=2,seq=5"))
)


# ---- the budget -------------------------------------------------------------------------------------------


def test_identical_outputs_pass_with_infinite_sqnr() -> None:
    outputs = [np.arange(10, dtype=np.float32).reshape(1, 10) + 1]
    result = compare_int8("logits", outputs, outputs, ParityBudget())
    assert result.passed and result.min_cosine == pytest.approx(1.0) and math.isinf(result.sqnr_db)


def test_min_cosine_is_the_worst_sample() -> None:
    rng = np.random.default_rng(0)
    expected = [rng.standard_normal((1, 16)).astype(np.float32) for _ in range(4)]
    actual = [e.copy() for e in expected]
    actual[2] = -actual[2]
    result = compare_int8("y", actual, expected, ParityBudget(min_cosine=0.99))
    assert result.min_cosine == pytest.approx(-1.0)
    assert not result.passed and "min cosine" in (result.message or "")


def test_top1_is_measured_and_gated_only_when_asked() -> None:
    # A (B, 2) output may be an embedding as well as class scores: only --min-top1 says which.
    expected = [np.array([[1.0, 0.9]], dtype=np.float32)]
    actual = [np.array([[0.9, 1.0]], dtype=np.float32)]
    loose = compare_int8("logits", actual, expected, ParityBudget(min_cosine=0.9))
    assert loose.top1_agreement is None and loose.passed
    strict = compare_int8("logits", actual, expected, ParityBudget(min_cosine=0.9, min_top1=0.5))
    assert strict.top1_agreement == 0.0
    assert not strict.passed and "top-1" in (strict.message or "")


def test_sqnr_and_max_abs_gates() -> None:
    expected = [np.ones((1, 100), dtype=np.float32)]
    actual = [expected[0] + 0.1]
    result = compare_int8("y", actual, expected, ParityBudget(min_cosine=0.9, min_sqnr_db=30.0, max_abs=0.05))
    assert result.sqnr_db == pytest.approx(20.0, abs=0.01)
    assert not result.passed and "SQNR" in (result.message or "") and "max abs" in (result.message or "")


def test_nan_and_shape_mismatch_fail() -> None:
    expected = [np.ones((1, 4), dtype=np.float32)]
    assert not compare_int8("y", [np.full((1, 4), np.nan, np.float32)], expected, ParityBudget()).passed
    assert not compare_int8("y", [np.ones((1, 5), np.float32)], expected, ParityBudget()).passed


# ---- calibration data -------------------------------------------------------------------------------------


def test_npz_samples_along_the_batch_axis(tmp_path: Path) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, image=np.random.default_rng(0).random((10, 3, 8, 8)).astype(np.float64))
    samples = load_samples(path, IMAGE_SPEC, limit=6, seed=0)
    assert len(samples.samples) == 6 and not samples.synthetic
    assert samples.samples[0]["image"].shape == (1, 3, 8, 8)
    assert samples.samples[0]["image"].dtype == np.float32


def test_npz_with_one_whole_input_per_sample(tmp_path: Path) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, image=np.zeros((4, 2, 3, 8, 8), np.float32))
    samples = load_samples(path, IMAGE_SPEC, limit=10, seed=0)
    assert [s["image"].shape for s in samples.samples] == [(2, 3, 8, 8)] * 4


def test_directory_of_npy_and_pt_samples(tmp_path: Path) -> None:
    single = tmp_path / "single"
    single.mkdir()
    for i in range(3):
        np.save(single / f"{i}.npy", np.zeros((1, 3, 8, 8), np.float32))
    assert len(load_samples(single, IMAGE_SPEC, limit=10, seed=0).samples) == 3
    double = tmp_path / "double"
    double.mkdir()
    torch.save(
        {"features": torch.zeros(1, 4, 8), "mask": torch.ones(1, 4, dtype=torch.bool)}, double / "a.pt"
    )
    samples = load_samples(double, TWO_SPEC, limit=10, seed=0)
    assert samples.samples[0]["mask"].dtype == np.bool_


def test_callable_with_labels(tmp_path: Path) -> None:
    module = tmp_path / "data.py"
    module.write_text(
        "import numpy as np\n"
        "def pairs():\n"
        "    for i in range(5):\n"
        "        yield {'image': np.full((1, 3, 8, 8), i, np.float32)}, i % 2\n"
    )
    samples = load_samples(f"{module}:pairs", IMAGE_SPEC, limit=4, seed=0)
    assert samples.labels == [0, 1, 0, 1]
    calibration, held_out = samples.split(0.25)
    assert len(calibration.samples) == 3 and len(held_out.samples) == 1 and held_out.labels == [1]


def test_no_source_draws_synthetic_samples() -> None:
    samples = load_samples(None, IMAGE_SPEC, limit=5, seed=0)
    assert samples.synthetic and len(samples.samples) == 5
    assert samples.samples[0]["image"].shape == (1, 3, 8, 8)


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"img": np.zeros((2, 3, 8, 8), np.float32)}, "no array for input 'image'"),
        ({"image": np.zeros((2, 3, 9, 8), np.float32)}, "size 9 at axis 2"),
        ({"image": np.zeros((2, 8, 8), np.float32)}, "rank 3"),
        ({"image": np.zeros((2, 3, 8, 8), np.int64)}, "int64"),
    ],
)
def test_mismatched_npz_names_the_input(tmp_path: Path, arrays: dict[str, np.ndarray], expected: str) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(CalibrationError, match=expected) as caught:
        load_samples(path, IMAGE_SPEC, limit=4, seed=0)
    assert caught.value.exit_code is ExitCode.BAD_INPUT


def test_missing_source_and_npy_for_two_inputs(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="not found"):
        load_samples(tmp_path / "nope.npz", IMAGE_SPEC, limit=4, seed=0)
    folder = tmp_path / "npy"
    folder.mkdir()
    np.save(folder / "0.npy", np.zeros((1, 5, 8), np.float32))
    with pytest.raises(CalibrationError, match=r"single-input models"):
        load_samples(folder, TWO_SPEC, limit=4, seed=0)


# ---- formats and selection ---------------------------------------------------------------------------------


def test_formats_follow_the_cpu() -> None:
    vnni = choose_formats(["avx2", "avx512f", "avx512_vnni"])
    assert vnni.vnni and not vnni.reduce_range_static and (vnni.activation, vnni.weight) == ("uint8", "int8")
    avx2 = choose_formats(["avx2", "fma"])
    assert not avx2.vnni and avx2.reduce_range_static and "saturates" in avx2.reason


def _candidate(
    name: str, ratio: float, passed: bool = True, per_batch: Sequence[float] | None = None
) -> Candidate:
    """A judged, timed candidate: p50 ``ratio`` of float overall, or ``per_batch`` ratios at batch 1, 8."""
    output = Int8Comparison("y", 4, 0.999 if passed else 0.5, 40.0, 0.01, None, passed)
    ratios = per_batch or (ratio, ratio)
    latency = [
        LatencyStats(name, f"batch={b}", b, {}, 1, 10, r, r, r, r, r, 1 / r, speedup_vs_float=1 / r)
        for b, r in zip((1, 8), ratios, strict=False)
    ]
    return Candidate(name, "test", outputs=[output], p50_ratio=ratio, latency=latency)


def test_int8_ships_the_fastest_within_budget_and_never_a_slower_one() -> None:
    notes: list[str] = []
    candidates = [
        _candidate("a", 0.6),
        _candidate("b", 0.4, passed=False),
        _candidate("c", 0.5),
        _candidate("d", 1.3),
    ]
    choose_candidate(QuantMode.INT8, candidates, notes)
    assert [c.name for c in candidates if c.chosen] == ["c"]
    assert any("d is SLOWER" in n for n in notes)
    slow = [_candidate("d", 1.3)]
    choose_candidate(QuantMode.INT8, slow, notes)
    assert not slow[0].chosen and any("none shipped for ONNX Runtime" in n for n in notes)


def test_int8_never_ships_a_candidate_slower_at_any_batch_size() -> None:
    """A geometric mean of x0.5 at batch 1 and x1.2 at batch 8 is x0.77, 'faster'; it is slower at batch 8,
    so ``int8`` does not ship it, and the note names the batch size."""
    notes: list[str] = []
    mixed = _candidate("mixed", math.sqrt(0.5 * 1.2), per_batch=(0.5, 1.2))
    steady = _candidate("steady", 0.9)
    choose_candidate(QuantMode.INT8, [mixed, steady], notes)
    assert not mixed.chosen and steady.chosen
    assert mixed.slower_at == ["batch=8"]
    assert any("mixed is SLOWER than float ONNX Runtime at batch=8" in n for n in notes)


def test_each_runtime_ships_its_own_fastest_candidate_against_its_own_float() -> None:
    """model.int8.onnx is the ONNX Runtime choice and model.lossy.xml the OpenVINO one; a candidate's
    ratio is against its own runtime's float model, so the slower-than-float rule holds per runtime."""
    notes: list[str] = []
    openvino_fast, openvino_slow = _candidate("nncf-openvino", 0.3), _candidate("bf16-openvino", 1.1)
    for candidate in (openvino_fast, openvino_slow):
        candidate.runtime = "openvino"
    candidates = [_candidate("static-ort", 0.5), _candidate("dynamic-ort", 0.7), openvino_fast, openvino_slow]
    choose_candidate(QuantMode.INT8, candidates, notes)
    assert [(c.name, c.runtime) for c in candidates if c.chosen] == [
        ("static-ort", "onnxruntime"),
        ("nncf-openvino", "openvino"),
    ]
    assert any(
        "bf16-openvino is SLOWER than float openvino at batch=1, batch=8 (p50 x1.10" in n for n in notes
    )


def test_an_explicit_mode_ships_within_budget_even_when_slower_flagged() -> None:
    notes: list[str] = []
    candidates = [_candidate("static-ort", 1.2), _candidate("static-pt2e", 1.1)]
    choose_candidate(QuantMode.STATIC, candidates, notes)
    assert [c.name for c in candidates if c.chosen] == ["static-pt2e"]
    assert sum("SLOWER" in n for n in notes) == 2


def _trial(method: str, cosine: float, passed: bool) -> CalibrationTrial:
    output = Int8Comparison("logits", 16, cosine, 30.0, 0.1, 0.9, passed, None if passed else "top-1 0.900")
    return CalibrationTrial(method, (output,), settings={"calibration_method": method})


def test_calibration_choice_prefers_the_method_within_the_whole_budget() -> None:
    """Min-max has the lower cosine error but misses top-1; percentile meets the whole budget: it ships."""
    trials = [_trial("minmax", 0.9995, passed=False), _trial("percentile", 0.995, passed=True)]
    assert trials[0].error < trials[1].error
    assert choose_calibration(trials).method == "percentile"
    failing = [
        _trial("minmax", 0.95, False),
        _trial("percentile", 0.97, False),
        _trial("entropy", 0.97, False),
    ]
    assert choose_calibration(failing).method == "percentile"  # all fail: lowest error, earliest on ties
    passing = [_trial("minmax", 0.991, True), _trial("entropy", 0.999, True)]
    assert choose_calibration(passing).method == "entropy"


INT8_CANDIDATES = [
    "dynamic-ort",
    "static-ort",
    "static-pt2e",
    "qat-pt2e",
    "nncf-ort",
    "bf16-openvino",
    "nncf-openvino",
    "nncf-openvino-sq",
    "nncf-openvino-ac",
]
"""Every registered candidate, in registry order: what ``--quantize int8`` builds or skips with a reason."""


def test_each_mode_selects_its_candidates_through_the_registry() -> None:
    names = {mode: [spec.name for spec in candidates_for(mode)] for mode in QuantMode}
    assert names == {
        QuantMode.NONE: [],
        QuantMode.DYNAMIC: ["dynamic-ort"],
        QuantMode.STATIC: [
            "static-ort",
            "static-pt2e",
            "nncf-ort",
            "nncf-openvino",
            "nncf-openvino-sq",
            "nncf-openvino-ac",
        ],
        QuantMode.QAT: ["qat-pt2e"],
        QuantMode.INT8: INT8_CANDIDATES,
        QuantMode.BF16: ["bf16-openvino"],
        QuantMode.INT4: [],
    }
    assert STATIC_ORT.repairs == (search_calibration_method, keep_sensitive_layers_in_float)
    assert STATIC_PT2E.repairs == () and Requirement.EXPORTABLE_MODULE in QAT_PT2E.needs


def test_qat_runs_in_int8_mode_only_as_a_last_resort() -> None:
    assert QAT_PT2E.skip is not None
    passing, failing = _candidate("static-pt2e", 0.5), _candidate("static-pt2e", 0.5, passed=False)
    reason = QAT_PT2E.skip(QuantMode.INT8, [passing])
    assert reason is not None and "static-pt2e already meets the budget" in reason
    assert QAT_PT2E.skip(QuantMode.INT8, [failing]) is None
    assert QAT_PT2E.skip(QuantMode.QAT, [passing]) is None
    broken = _candidate("static-pt2e", 0.5, passed=False)
    broken.error = "UserError: Constraints violated (seq)!"
    assert "could not be built" in (QAT_PT2E.skip(QuantMode.INT8, [broken]) or "")
    dynamic = _candidate("dynamic-ort", 0.6)
    reason = QAT_PT2E.skip(QuantMode.INT8, [dynamic, failing])
    assert reason is not None and "dynamic-ort already meets the budget in ONNX Runtime" in reason
    openvino = _candidate("bf16-openvino", 0.6)
    openvino.runtime = "openvino"
    assert QAT_PT2E.skip(QuantMode.INT8, [openvino, failing]) is None  # another runtime's pass is no reason
    assert QAT_PT2E.skip(QuantMode.QAT, [dynamic, failing]) is None


# ---- end to end --------------------------------------------------------------------------------------------


def _quantized(
    options_for: Callable[..., ExportOptions],
    name: str,
    mode: str,
    out: Path | None = None,
    **settings: object,
) -> ExportOptions:
    spec = options_for(name).spec
    if mode != "dynamic" and "calibration" not in settings:
        settings["calibration"] = str(write_calibration(spec, options_for(name).out_dir.parent.parent))
    quantization = QuantizeOptions(mode=QuantMode(mode), samples=16, qat_steps=5, **settings)  # type: ignore[arg-type]
    extra = {"out": out} if out else {}
    return options_for(name, quantization=quantization, benchmark=False, **extra)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("conv", "dynamic"),
        ("conv", "static"),
        ("conv", "qat"),
        ("mlp", "dynamic"),
        ("mlp", "static"),
        ("mlp", "qat"),
        ("attention", "dynamic"),
        ("attention", "static"),
        ("attention", "qat"),
        ("lstm", "dynamic"),
        ("lstm", "static"),
    ],
)
def test_every_mode_writes_an_int8_model_within_budget(
    name: str, mode: str, options_for: Callable[..., ExportOptions]
) -> None:
    options = _quantized(options_for, name, mode)
    result = export(options)
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    assert result.quantization is not None
    chosen = result.quantization.chosen
    assert chosen is not None and chosen.budget_passed
    made_by = {"dynamic": ("dynamic",), "static": ("static", "nncf"), "qat": ("qat",)}[mode]
    assert chosen.name.startswith(made_by)
    int8_path = options.out_dir / "model.int8.onnx"
    session = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    inputs = dict(np.load(options.out_dir / "golden" / "export.inputs.npz"))
    expected = np.load(options.out_dir / "golden" / "export.outputs.npz")
    output = session.run(None, {i.name: inputs[i.name] for i in session.get_inputs()})[0]
    assert output.shape == expected[expected.files[0]].shape
    manifest = json.loads((options.out_dir / "manifest.json").read_text())
    assert manifest["int8"]["file"] == "model.int8.onnx" and manifest["int8"]["candidate"] == chosen.name
    assert manifest["int8"]["judged_on"] == ("synthetic" if mode == "dynamic" else "real")
    assert "model.int8.onnx" in manifest["files"]
    report = json.loads((options.out_dir / "report.json").read_text())
    listed = {c["name"]: c for c in report["quantization"]["candidates"]}
    assert listed[chosen.name]["chosen"] and listed[chosen.name]["size_ratio"] is not None
    assert all(c["latency"] for c in listed.values() if c["error"] is None)
    assert "## Lossy candidates" in (options.out_dir / "report.md").read_text()


@pytest.mark.slow
def test_fragile_layer_is_kept_in_float_until_the_budget_holds(
    options_for: Callable[..., ExportOptions],
) -> None:
    options = _quantized(options_for, "fragile", "static")
    result = export(options)
    assert result.quantization is not None
    static_ort = next(c for c in result.quantization.candidates if c.name == "static-ort")
    kept = [e.node for e in static_ort.float_layers]
    assert static_ort.budget_passed and 1 <= len(kept) <= 2
    assert "node_linear_1" in kept  # the layer whose output holds the outlier unit
    assert all(e.caused > 0 for e in static_ort.float_layers[-1:])
    tried = static_ort.settings["calibration_tried"].split("; ")
    assert [t.split()[0] for t in tried] == ["minmax", "percentile", "entropy"]  # none fixed the outlier
    assert static_ort.settings["calibration_method"] in {"minmax", "percentile", "entropy"}
    report = (options.out_dir / "report.md").read_text()
    assert all(node in report for node in kept)
    plain = options.out_dir.parent / "fragile-plain"
    without = export(
        _quantized(options_for, "fragile", "static", max_float_layers=0, method="minmax", out=plain)
    )
    ort_only = next(c for c in without.quantization.candidates if c.name == "static-ort")  # type: ignore[union-attr]
    assert ort_only.settings["calibration_method"] == "minmax"
    assert "calibration_tried" not in ort_only.settings  # an explicit method is not searched
    assert not ort_only.budget_passed, (
        "the fragile layer must break plain static int8, or this test proves nothing"
    )


@pytest.mark.slow
def test_int8_mode_lists_every_candidate(options_for: Callable[..., ExportOptions]) -> None:
    result = export(_quantized(options_for, "conv", "int8"))
    assert result.quantization is not None
    names = [c.name for c in result.quantization.candidates]
    skipped = result.quantization.skipped
    every = INT8_CANDIDATES
    assert sorted(names + list(skipped), key=every.index) == every and not set(names) & set(skipped)
    assert "--to openvino was not asked for" in skipped["nncf-openvino"]  # OpenVINO candidates need it
    static_pt2e = next(c for c in result.quantization.candidates if c.name == "static-pt2e")
    earlier = result.quantization.candidates[: names.index("static-pt2e") + 1]
    ort_passed = any(c.runtime == "onnxruntime" and c.budget_passed for c in earlier)
    assert ("qat-pt2e" in skipped) == (ort_passed or static_pt2e.error is not None)
    markdown = (result.out_dir / "report.md").read_text()
    assert all(f"| {name} | {reason} |" in markdown for name, reason in skipped.items())
    # Whether int8 beats float on a model this small depends on the CPU, so both outcomes are checked: the
    # fastest candidate within budget and faster than float ships, and without one nothing does.
    chosen = result.quantization.chosen
    eligible = [c for c in result.quantization.candidates if c.budget_passed and c.faster_than_float]
    manifest = json.loads((result.out_dir / "manifest.json").read_text())
    if eligible:
        assert chosen is not None and chosen.p50_ratio == min(c.p50_ratio for c in eligible)  # type: ignore[type-var]
        assert manifest["int8"]["candidate"] == chosen.name
        assert (result.out_dir / "model.int8.onnx").is_file()
    else:
        assert chosen is None and manifest["int8"] is None
        assert not (result.out_dir / "model.int8.onnx").exists()
        assert "none shipped for ONNX Runtime" in markdown
    report = json.loads((result.out_dir / "report.json").read_text())
    shipped = [c["name"] for c in report["quantization"]["candidates"] if c["chosen"]]
    assert shipped == ([] if chosen is None else [chosen.name])


@pytest.mark.slow
def test_qat_on_an_lstm_is_a_conversion_failure_naming_why(options_for: Callable[..., ExportOptions]) -> None:
    options = _quantized(options_for, "lstm", "qat")
    with pytest.raises(ConversionError, match="qat-pt2e") as caught:
        export(options)
    assert caught.value.exit_code is ExitCode.CONVERSION_FAILED
    assert not options.out_dir.exists()


def test_bad_calibration_data_exits_2(tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]) -> None:
    bad = tmp_path / "cal.npz"
    np.savez(bad, wrong_name=np.zeros((4, 3, 16, 16), np.float32))
    args = ["export", str(state_dict_checkpoint("conv")), "--model", MODELS["conv"].ref]
    args += ["--input", MODELS["conv"].inputs[0], "--quantize", "static", "--calibration", str(bad)]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out"), "--no-benchmark"])
    assert result.exit_code == 2, result.output
    assert "no array for input 'image'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_recipe_quantize_section_resolves_paths(tmp_path: Path) -> None:
    from exporter.errors import RecipeError
    from exporter.recipe.document import load_recipe

    (tmp_path / "cal.npz").write_bytes(b"")
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[quantize]\nmode = "static"\ncalibration = "cal.npz"\nmetric = "data.py:accuracy"\n'
        'eval_data = "pkg.mod:pairs"\nmin_top1 = 0.98\n'
    )
    settings = load_recipe(recipe, ["pkg"]).settings["quantization"]
    assert settings["calibration"] == str(tmp_path / "cal.npz")
    assert settings["metric"] == f"{tmp_path / 'data.py'}:accuracy"
    assert settings["eval_data"] == "pkg.mod:pairs"
    assert QuantizeOptions(**settings).budget.min_top1 == 0.98
    recipe.write_text('[quantize]\nmode = "int3"\n')
    with pytest.raises(RecipeError, match=r"\[quantize\]\.mode"):
        load_recipe(recipe)


class _SharedReluBlock(torch.nn.Module):
    """One ReLU module applied twice, as torchvision's ResNet BasicBlock does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.relu = torch.nn.ReLU(inplace=True)
        self.head = torch.nn.Linear(8, 4)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(image))  # (B, 8, H, W)
        x = self.relu(self.conv2(x) + x)
        return self.head(x.mean(dim=(2, 3)))


def test_pt2e_quantizes_a_module_called_twice() -> None:
    """The x86 quantizer made one partition of both calls ('Input partition has more than one output
    node'); each call now gets its own name, and the int8 graph stays close to float."""
    from exporter.quantize.pt2e import quantize_pt2e

    torch.manual_seed(0)
    model = _SharedReluBlock().eval()
    spec = InputSpec((parse_tensor_spec("image:float32:batch=1,3,16,16"),))
    rng = np.random.default_rng(0)
    samples = [{"image": rng.normal(size=(1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]
    converted = quantize_pt2e(model, spec, samples)
    ops = {str(n.target) for n in converted.graph.nodes if n.op == "call_function"}
    assert any("quantize_per_tensor" in op for op in ops), ops
    image = torch.from_numpy(samples[0]["image"])
    with torch.no_grad():
        expected, produced = model(image).flatten(), converted(image).flatten()
    assert torch.nn.functional.cosine_similarity(expected, produced, dim=0) > 0.99


def _copy_float(context: QuantizeContext, target: Path, exclude: Sequence[str]) -> dict[str, object]:
    shutil.copyfile(context.preprocessed, target)
    return {"copied": str(context.preprocessed.name)}


def _mark_repaired(candidate: Candidate, build: object, context: QuantizeContext) -> None:
    candidate.settings["repair_saw_outputs"] = len(candidate.outputs)


@pytest.mark.slow
def test_a_registered_toy_candidate_is_built_judged_and_timed(
    options_for: Callable[..., ExportOptions],
) -> None:
    """A candidate is one registry entry: the search builds, repairs, judges and times it unchanged."""
    toy = CandidateSpec(
        "toy-copy",
        "test (float copy)",
        _copy_float,
        frozenset({QuantMode.DYNAMIC}),
        repairs=(_mark_repaired,),
    )
    register(toy)
    try:
        result = export(_quantized(options_for, "mlp", "dynamic"))
    finally:
        unregister(toy.name)
    assert result.quantization is not None
    assert [c.name for c in result.quantization.candidates] == ["dynamic-ort", "toy-copy"]
    built = result.quantization.candidates[1]
    assert built.engine == "test (float copy)" and built.settings["repair_saw_outputs"] == 1
    assert built.budget_passed and built.outputs[0].min_cosine == pytest.approx(1.0)
    assert built.latency and built.p50_ratio is not None
    assert "toy-copy" not in [spec.name for spec in candidates_for(QuantMode.DYNAMIC)]


def _timed(name: str, label: str, p50: float) -> LatencyStats:
    return LatencyStats(name, label, 1, {}, 1, 10, p50, p50, p50, p50, p50, 1000 / p50)


def test_only_contenders_are_timed_beyond_the_first_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every candidate runs at batch 1; at batch 8 only the two fastest at batch 1 that met the budget and
    beat float there. A candidate timed at batch 1 alone cannot ship in ``int8``. Timings are injected by
    name, so the selection, not the machine, is tested."""
    import contextlib

    from exporter.benchmark.latency import BatchPlan
    from exporter.quantize import selection

    p50 = {"float": 10.0, "fast": 4.0, "faster": 3.0, "fastest-but-fails": 2.0, "third": 5.0, "slow": 12.0}
    seen: dict[str, list[str]] = {}

    def fake_group(models, configs, group, *, plan, timing, threads):  # type: ignore[no-untyped-def]
        seen[plan.label] = [c.name for c in group]
        names = [selection.FLOAT_LABEL, *(c.name for c in group)]
        return [_timed(n, plan.label, p50[n if n != selection.FLOAT_LABEL else "float"]) for n in names]

    monkeypatch.setattr(selection, "_time_group", fake_group)
    monkeypatch.setattr(selection, "open_model", lambda *args: contextlib.nullcontext(args[-1]))
    monkeypatch.setattr(selection, "open_candidate", lambda c, threads, name: contextlib.nullcontext(c))
    candidates = [
        _candidate(name, 1.0, passed=name != "fastest-but-fails") for name in p50 if name != "float"
    ]
    for candidate in candidates:
        candidate.path, candidate.latency = Path(f"{candidate.name}.onnx"), []
    plans = [BatchPlan("batch=1", 1, {}), BatchPlan("batch=8", 8, {})]
    floats = selection.time_candidates({"onnxruntime": Path("f.onnx")}, candidates, plans, FAST_TIMING, 1)
    assert seen["batch=1"] == [c.name for c in candidates]
    assert seen["batch=8"] == ["faster", "fast"]
    assert [s.label for s in floats["onnxruntime"]] == ["batch=1", "batch=8"]
    by_name = {c.name: c for c in candidates}
    assert by_name["faster"].timed_in_full and not by_name["third"].timed_in_full
    notes: list[str] = []
    choose_candidate(QuantMode.INT8, candidates, notes)
    assert [c.name for c in candidates if c.chosen] == ["faster"]
    assert any("third was timed at batch=1 only" in n for n in notes)


def test_a_candidate_slower_than_one_within_budget_is_not_repaired(monkeypatch: pytest.MonkeyPatch) -> None:
    """Repairs keep or cut an int8 model's speed; one already no faster than a candidate that meets the
    budget is not repaired (the reason is recorded), one faster is."""
    import contextlib

    from exporter.benchmark.latency import BatchPlan
    from exporter.quantize import search

    speeds = {"rival": 5.0, "slow": 6.0, "quick": 4.0}
    monkeypatch.setattr(search, "open_candidate", lambda c, threads: contextlib.nullcontext(c))
    monkeypatch.setattr(
        search,
        "compare_latency",
        lambda runners, plan, config, threads: [_timed(r.name, plan.label, speeds[r.name]) for r in runners],
    )
    rival = _candidate("rival", 1.0)
    rival.path = Path("rival.onnx")
    context = QuantizeContext.__new__(QuantizeContext)
    context.built, context.rank_plan, context.threads = [rival], BatchPlan("batch=1", 1, {}), 1
    context.step = lambda message: None
    slow, quick = _candidate("slow", 1.0, passed=False), _candidate("quick", 1.0, passed=False)
    slow.path, quick.path = Path("slow.onnx"), Path("quick.onnx")
    reason = search._cannot_win(slow, context)
    assert reason is not None and "no faster than rival" in reason and "6 vs 5 ms" in reason
    assert search._cannot_win(quick, context) is None
    context.built = []
    assert search._cannot_win(slow, context) is None  # nothing within budget to race

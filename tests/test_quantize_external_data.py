"""Int8 on a float ONNX model that keeps its weights in one external ``.data`` file: every candidate is built
from it and written with exactly one ``<file>.data`` (never inline, never loose per-tensor files), or skipped
with its reason; pre-processing and the sensitivity proxy read models by path. Small real models, forced
external data (the mechanics past protobuf's 2 GB limit are the same, and measured in benchmarks/scale.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.benchmark.latency import batch_plans
from exporter.convert.onnx import OnnxConversionRequest, OnnxExporterChoice, convert_to_onnx
from exporter.convert.onnx_files import data_file_name, external_locations, save_onnx, uses_external_data
from exporter.errors import ExitCode
from exporter.options import ExportOptions
from exporter.quantize import sensitivity
from exporter.quantize.calibration import SampleSet
from exporter.quantize.layer_costs import layer_macs
from exporter.quantize.onnx_ort import choose_formats, quantize_dynamic_ort
from exporter.quantize.preprocess import preprocess
from exporter.quantize.search import QuantizationResult, run_quantization
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, make_inputs, parse_tensor_spec, trace_sizes
from exporter.specs.shape_cases import shape_cases
from exporter.verify.parity import make_golden
from tests.conftest import FAST_TIMING
from tests.models import MODELS

NAME = "attention"


@dataclass
class Float:
    module: torch.nn.Module
    spec: InputSpec
    inline: Path
    external: Path
    samples: list[dict[str, np.ndarray]]


@pytest.fixture(scope="module")
def float_model(tmp_path_factory: pytest.TempPathFactory) -> Float:
    """The attention block exported once, and a copy with every tensor of 1 KB or more in one .data file."""
    model = MODELS[NAME]
    spec = InputSpec(tuple(parse_tensor_spec(s) for s in model.inputs))
    module = model.build()
    example = {k: torch.from_numpy(v) for k, v in make_inputs(spec, trace_sizes(spec), 0).items()}
    conversion = convert_to_onnx(
        OnnxConversionRequest(
            module=module,
            spec=spec,
            example_inputs=example,
            probe_inputs=None,
            output_names=["output"],
            work_dir=tmp_path_factory.mktemp("convert"),
            exporter=OnnxExporterChoice.DYNAMO,
            simplify=False,
        )
    )
    external = tmp_path_factory.mktemp("external") / "model.onnx"
    save_onnx(onnx.load(str(conversion.model_path)), external, external=True)
    samples = [make_inputs(spec, trace_sizes(spec), seed) for seed in range(12)]
    return Float(module, spec, conversion.model_path, external, samples)


def _run(path: Path, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [session.run(None, {n: s[n] for n in names})[0] for s in samples]


def _names(folder: Path) -> list[str]:
    return sorted(f.name for f in folder.iterdir())


def _one_data_file(path: Path) -> None:
    """``path`` keeps its weights in exactly ``<path>.data`` beside it."""
    assert external_locations(path) == {data_file_name(path)}, external_locations(path)


def test_float_fixture_really_keeps_external_data(float_model: Float) -> None:
    _one_data_file(float_model.external)
    assert not uses_external_data(float_model.inline)


def test_preprocess_reads_by_path_and_writes_one_data_file(float_model: Float, tmp_path: Path) -> None:
    target = tmp_path / "preprocessed.onnx"

    note = preprocess(float_model.external, target)

    _one_data_file(target)
    assert _names(tmp_path) == ["preprocessed.onnx", "preprocessed.onnx.data"]
    assert _names(float_model.external.parent) == [
        "model.onnx",
        "model.onnx.data",
    ]  # nothing left
    meta = {p.key: p.value for p in onnx.load(str(target), load_external_data=False).metadata_props}
    assert note is None and meta.get("onnx.quant.pre_process") == "onnxruntime.quant"
    expected = _run(float_model.inline, float_model.samples)
    for got, want in zip(_run(target, float_model.samples), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_symbolic_shape_inference_reads_the_small_external_tensors_it_needs(
    float_model: Float, tmp_path: Path
) -> None:
    """With every tensor external (biases and shape constants too), symbolic shape inference needs some of
    their values: pre-processing brings the small ones inline instead of giving up on it."""
    source = tmp_path / "float" / "model.onnx"
    source.parent.mkdir()
    onnx.save_model(
        onnx.load(str(float_model.inline)),
        str(source),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    target = tmp_path / "preprocessed.onnx"

    assert preprocess(source, target) is None
    _one_data_file(target)
    expected = _run(float_model.inline, float_model.samples[:2])
    for got, want in zip(_run(target, float_model.samples[:2]), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_rebuild_replaces_the_data_file_instead_of_growing_it(float_model: Float, tmp_path: Path) -> None:
    """onnx's writer appends to an existing data file: a repair's rebuild must start it afresh."""
    target = tmp_path / "dynamic-ort.onnx"
    quantize_dynamic_ort(float_model.external, target, choose_formats())
    size = target.with_name(data_file_name(target)).stat().st_size

    quantize_dynamic_ort(float_model.external, target, choose_formats())

    _one_data_file(target)
    assert target.with_name(data_file_name(target)).stat().st_size == size
    assert _names(tmp_path) == ["dynamic-ort.onnx", "dynamic-ort.onnx.data"]


def test_an_inline_float_model_gives_an_inline_int8_model(float_model: Float, tmp_path: Path) -> None:
    target = tmp_path / "dynamic-ort.onnx"
    quantize_dynamic_ort(float_model.inline, target, choose_formats(), external=False)
    assert not uses_external_data(target) and _names(tmp_path) == ["dynamic-ort.onnx"]


def test_the_sensitivity_proxy_streams_in_groups_with_the_same_ranking(
    float_model: Float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The proxy fetches intermediate tensors a group at a time (bounded memory) and folds them into running
    sums: a limit small enough to fetch one tensor per run ranks exactly as one run with all of them."""
    quant = tmp_path / "int8" / "dynamic-ort.onnx"
    quant.parent.mkdir()
    quantize_dynamic_ort(float_model.external, quant, choose_formats())
    samples = float_model.samples[:4]
    whole = sensitivity.shortlist(float_model.external, quant, samples, 1, 16)
    monkeypatch.setattr(sensitivity, "OUTPUT_BYTES_PER_RUN", 1)

    grouped = sensitivity.shortlist(float_model.external, quant, samples, 1, 16)

    assert grouped == whole and whole
    assert _names(quant.parent) == ["dynamic-ort.onnx", "dynamic-ort.onnx.data"]
    assert _names(float_model.external.parent) == ["model.onnx", "model.onnx.data"]


def test_layer_macs_read_an_external_data_model_like_an_inline_one(float_model: Float) -> None:
    sample = float_model.samples[0]
    macs = layer_macs(float_model.external, sample, 1)
    assert macs == layer_macs(float_model.inline, sample, 1) and sum(macs.values()) > 0


def _quantize(
    float_model: Float, work_dir: Path, mode: QuantMode, targets: tuple[str, ...]
) -> QuantizationResult:
    spec, module = float_model.spec, float_model.module
    golden = make_golden(EagerRunner(module, spec.names, ["output"]), spec, shape_cases(spec), 0)
    return run_quantization(
        QuantizeOptions(mode=mode, min_cosine=0.9),
        module=module,
        spec=spec,
        float_onnx=float_model.external,
        golden=golden,
        calibration=SampleSet(float_model.samples[:8], "test", synthetic=False),
        evaluation=SampleSet(float_model.samples[8:], "test", synthetic=False),
        formats=choose_formats(),
        plans=batch_plans(spec, "batch", (1, 2), 0),
        timing=FAST_TIMING,
        threads=1,
        work_dir=work_dir,
        step=lambda message: None,
        targets=targets,
    )


_WORK_FILES = (".onnx", ".onnx.data", ".xml", ".bin", ".cache")


@pytest.mark.slow
def test_every_int8_candidate_writes_one_data_file_or_says_why_not(
    float_model: Float, tmp_path: Path
) -> None:
    work = tmp_path / "int8"

    result = _quantize(float_model, work, QuantMode.INT8, ("onnx", "openvino"))

    onnx_candidates = [c for c in result.candidates if c.path is not None and c.path.suffix == ".onnx"]
    assert {c.name for c in onnx_candidates} >= {"dynamic-ort", "static-ort", "nncf-ort"}
    for candidate in result.candidates:
        assert candidate.path is not None or candidate.error, candidate.name
    for candidate in onnx_candidates:
        assert candidate.path is not None
        _one_data_file(candidate.path)
        data = candidate.path.with_name(data_file_name(candidate.path))
        assert candidate.size_bytes == candidate.path.stat().st_size + data.stat().st_size
    assert all(reason for reason in result.skipped.values())
    stray = [
        f.name for f in work.iterdir() if not f.name.endswith(_WORK_FILES) and f.name != "static-pt2e.onnx"
    ]
    assert stray == []  # no loose per-tensor files, no build folders, no exposed copies
    loose = [f.name for f in work.glob("*.onnx") if not f.name.startswith(".")]
    assert all(f"{name}.data" in _names(work) for name in loose), loose


def test_the_shipped_int8_model_has_its_file_and_one_data_file(
    options_for: Callable[..., ExportOptions],
) -> None:
    """End to end with ``--external-data``: the artifacts folder holds model.int8.onnx + model.int8.onnx.data
    and no other weights file for it."""
    from exporter.pipeline import export

    quantization = QuantizeOptions(mode=QuantMode.DYNAMIC, samples=16, min_cosine=0.9)
    result = export(options_for(NAME, quantization=quantization, external_data=True, benchmark=False))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    folder = result.out_dir
    if not uses_external_data(folder / "model.onnx"):
        pytest.skip("the convert stage does not write --external-data models yet")
    _one_data_file(folder / "model.int8.onnx")
    mode = (folder / "model.int8.onnx").stat().st_mode & 0o777
    assert (folder / "model.int8.onnx.data").stat().st_mode & 0o777 == mode  # onnx's writer makes it 0600
    int8_files = sorted(f.name for f in folder.iterdir() if f.name.startswith("model.int8"))
    assert int8_files == ["model.int8.onnx", "model.int8.onnx.data"]


def test_the_openvino_shortlist_reads_an_external_data_model_and_ranks_its_layers(
    float_model: Float, tmp_path: Path
) -> None:
    """The OpenVINO proxy streams its SQNR sums per sample; on the external-data float model and its NNCF
    int8 IR it ranks real op names, the same on a second run (nothing carried over between runs)."""
    import openvino as ov

    from exporter.quantize.nncf_int8 import nncf_quantize_openvino
    from exporter.quantize.nncf_variants import openvino_names, openvino_shortlist

    target = tmp_path / "nncf-openvino.xml"
    nncf_quantize_openvino(float_model.external, target, float_model.samples[:8], transformer=True)
    names = list(openvino_names(float_model.external, ov.convert_model(str(float_model.external))).values())
    samples = float_model.samples[8:]

    def ranked() -> list[str]:
        quantized = ov.Core().read_model(str(target))
        return openvino_shortlist(float_model.external, quantized, names, samples, threads=1, size=4)

    first = ranked()
    assert first and set(first) <= set(names) and len(first) == min(4, len(names))
    assert ranked() == first


def test_nncf_ort_is_not_built_when_its_memory_would_not_fit(
    float_model: Float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NNCF's ONNX backend peaks near 8x the weights: with less memory left than that it is skipped with
    the figures, instead of taking the run down; with enough it is built."""
    from exporter.quantize.candidates import NNCF_ORT
    from exporter.quantize.types import QuantizeContext
    from exporter.stages import memory

    context = QuantizeContext.__new__(QuantizeContext)
    context.float_onnx = float_model.external
    assert NNCF_ORT.unavailable is not None
    monkeypatch.setattr(memory, "available_memory", lambda: (1024, "MemAvailable"))
    reason = NNCF_ORT.unavailable(context)
    assert reason is not None and reason.startswith("not built: NNCF's ONNX backend needs about 8x")
    assert "\n" not in reason and "(MemAvailable)" in reason
    monkeypatch.setattr(memory, "available_memory", lambda: (2**40, "MemAvailable"))
    assert NNCF_ORT.unavailable(context) is None

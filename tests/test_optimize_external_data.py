"""The optimize stage on models that keep their weights outside the ``.onnx`` file (as every model past 2 GB
must): each pass reads its source by path and writes one ``<target>.data`` beside its output, never loose
per-tensor files; the graph facts never read the weights; what ships keeps its one ``.data`` file. Checked on
the tiny attention block saved with forced external data, which exercises the same code paths as a 2 GB
model without its cost."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from exporter.convert.onnx_files import data_file_name, external_locations, save_onnx
from exporter.errors import ExitCode
from exporter.optimize import passes
from exporter.optimize.graph_facts import looks_like_transformer, nonstandard_domains
from exporter.optimize.passes import (
    Float16,
    PassConditionError,
    PassResult,
    PassSettings,
    pass_named,
)
from exporter.optimize.results import OptimizeOptions
from exporter.pipeline import ExportOptions, export
from tests.models import MODELS


class _Settings:
    options = OptimizeOptions(num_heads=4, hidden_size=32)
    threads = 1


TOKENS = np.random.default_rng(0).standard_normal((2, 7, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def external_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attention block exported by the dynamo exporter, saved with its weights in one model.onnx.data."""
    folder = tmp_path_factory.mktemp("external")
    torch.manual_seed(0)
    module = MODELS["attention"].build().eval()
    exported = folder / "exported.onnx"
    dims = ({0: torch.export.Dim("batch"), 1: torch.export.Dim("seq")},)
    torch.onnx.export(module, (torch.from_numpy(TOKENS),), str(exported), dynamo=True, dynamic_shapes=dims)
    source = folder / "source" / "model.onnx"
    source.parent.mkdir()
    save_onnx(onnx.load(str(exported)), source, external=True)
    return source


def _outputs(path: Path) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: TOKENS})[0])


def _one_data_file(target: Path) -> None:
    """``target`` names exactly its own ``<target>.data`` and nothing else lies beside it."""
    assert external_locations(target) == {data_file_name(target)}
    assert sorted(p.name for p in target.parent.iterdir()) == sorted([target.name, data_file_name(target)])


def _copy(source: Path, folder: Path) -> Path:
    """``source`` and its data file in a fresh ``folder`` (each pass writes beside its own input here)."""
    folder.mkdir()
    for name in (source.name, data_file_name(source)):
        shutil.copyfile(source.parent / name, folder / name)
    return folder / source.name


def _fused(external_model: Path, folder: Path) -> Path:
    """The transformer fusions' output (with SkipLayerNormalization nodes to split) in ``folder``."""
    folder.mkdir()
    return pass_named("transformer")(external_model, folder / "fused.onnx", _Settings()).model


def test_the_source_keeps_its_weights_outside(external_model: Path) -> None:
    assert external_locations(external_model) == {"model.onnx.data"}
    assert all(
        i.data_location == onnx.TensorProto.EXTERNAL
        for i in onnx.load(str(external_model), load_external_data=False).graph.initializer
        if i.dims and int(np.prod(i.dims)) >= 256  # the 1 KB threshold, in float32s
    )


@pytest.mark.parametrize("name", ["transformer", "ort"])
def test_a_pass_writes_its_output_with_one_data_file_and_the_same_outputs(
    name: str, external_model: Path, tmp_path: Path
) -> None:
    (tmp_path / "out").mkdir()
    result = pass_named(name)(external_model, tmp_path / "out" / "variant.onnx", _Settings())
    assert result.modified
    _one_data_file(result.model)
    np.testing.assert_allclose(_outputs(result.model), _outputs(external_model), atol=1e-4)


def test_splitnorm_rewrites_nodes_beside_a_copy_of_the_weights(external_model: Path, tmp_path: Path) -> None:
    fused = _fused(external_model, tmp_path / "fused")
    (tmp_path / "out").mkdir()
    result = pass_named("splitnorm")(fused, tmp_path / "out" / "split.onnx", _Settings())
    assert result.modified and result.counts["SkipLayerNormalization_split"] > 0
    _one_data_file(result.model)
    assert (tmp_path / "out" / "split.onnx.data").read_bytes() == (
        tmp_path / "fused" / "fused.onnx.data"
    ).read_bytes()
    np.testing.assert_allclose(_outputs(result.model), _outputs(external_model), atol=1e-4)


def test_fp16_writes_float16_weights_to_one_data_file(external_model: Path, tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "half.onnx"
    result = Float16().build(external_model, target, _Settings())
    assert result.counts["float16_initializers"] > 0
    _one_data_file(target)
    halves = [
        i
        for i in onnx.load(str(target), load_external_data=False).graph.initializer
        if i.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert halves and all(i.data_type == onnx.TensorProto.FLOAT16 for i in halves)
    # Half the float32 source's external bytes, give or take the alignment padding.
    assert (tmp_path / "out" / "half.onnx.data").stat().st_size < 0.75 * (
        external_model.with_name("model.onnx.data").stat().st_size
    )


def test_a_float16_graph_that_crashes_onnx_runtime_fails_its_step_instead_of_the_export(
    external_model: Path, tmp_path: Path
) -> None:
    """ONNX Runtime 1.32 dies of SIGSEGV opening this float16 graph at ORT_ENABLE_ALL (its layout optimizer);
    the pass's postcondition opens it in a child process, so the optimizer records a failed step. Should a
    later ONNX Runtime open it, the pass simply succeeds."""
    try:
        result = pass_named("fp16")(external_model, tmp_path / "half.onnx", _Settings())
    except PassConditionError as error:
        assert "ONNX Runtime crashes opening the float16 graph (SIGSEGV)" in str(error)
    else:
        assert result.modified and _outputs(result.model).shape == (2, 7, 32)


def test_graph_facts_and_conditions_never_read_the_weights(external_model: Path, tmp_path: Path) -> None:
    """With the data file gone, everything that only reads the graph still works: it never loads weights."""
    fused = _fused(external_model, tmp_path / "fused")
    source = _copy(external_model, tmp_path / "source")
    result = PassResult(fused, True)
    for path in (source, fused):
        path.with_name(data_file_name(path)).unlink()
    assert looks_like_transformer(source) and looks_like_transformer(fused)
    assert nonstandard_domains(source) == set() and nonstandard_domains(fused) == {"com.microsoft"}
    pass_named("splitnorm").requires(fused)
    pass_named("transformer").ensures(source, result)


def _recording(
    build: Callable[[Path, Path, PassSettings], PassResult], seen: dict[str, list[str]]
) -> Callable[[Path, Path, PassSettings], PassResult]:
    """The real pass's build, with the files it added to the work folder recorded."""

    def recorded(source: Path, target: Path, settings: PassSettings) -> PassResult:
        before = set(target.parent.iterdir())
        result = build(source, target, settings)
        seen[target.name] = sorted(p.name for p in set(target.parent.iterdir()) - before)
        return result

    return recorded


@pytest.mark.slow
def test_an_export_with_external_data_optimizes_every_step_and_ships_one_data_file(
    options_for: Callable[..., ExportOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, list[str]] = {}
    for step in passes.PASSES:
        monkeypatch.setattr(step, "build", _recording(step.build, seen))
    steps = ("transformer", "splitnorm", "fp16", "ort")
    result = export(options_for("attention", external_data=True, optimization=OptimizeOptions(steps=steps)))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    records = [r for r in result.report["optimization"] if r["name"] in steps]
    # Every step built its output with exactly one data file named after it, and no other file.
    # (splitnorm on a graph with nothing to split writes nothing.)
    written = {name: files for name, files in seen.items() if files}
    assert all(files == sorted([name, f"{name}.data"]) for name, files in written.items()), seen
    built = {name.removesuffix(".onnx").split("+")[-1] for name in written}
    assert built == set(steps)
    # Kept, or dropped for what the graph is (timing-dependent: slower, nothing to split on an unfused
    # graph; ONNX Runtime's float16 crash), never for failing to build or verify.
    for record in records:
        reason = record["reason"]
        assert record["kept"] or not reason.startswith("failed") or "crashes" in reason, record
    # What ships holds its weights in its own one data file, beside it in the artifacts folder.
    out = result.out_dir
    shipped = [out / "model.onnx", *([out / "model.ort.onnx"] if (out / "model.ort.onnx").exists() else [])]
    for model in shipped:
        assert external_locations(model) == {data_file_name(model)}
    assert sorted(p.name for p in out.iterdir() if ".onnx" in p.name) == sorted(
        name for model in shipped for name in (model.name, data_file_name(model))
    )
    assert result.backend("onnxruntime").shipped_parity.passed


@pytest.mark.slow
def test_a_self_contained_model_is_optimized_on_external_data_and_ships_self_contained(
    options_for: Callable[..., ExportOptions], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The passes work on a working copy with external data (lean past 2 GB and below it); what ships is made
    self-contained again, as it arrived."""
    seen: dict[str, list[str]] = {}
    for step in passes.PASSES:
        monkeypatch.setattr(step, "build", _recording(step.build, seen))
    steps = ("transformer", "splitnorm")
    result = export(options_for("attention", optimization=OptimizeOptions(steps=steps)))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    written = {name: files for name, files in seen.items() if files}
    assert written and all(files == sorted([name, f"{name}.data"]) for name, files in written.items())
    out = result.out_dir
    assert external_locations(out / "model.onnx") == set()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".data")]
    summary = result.report["optimization_summary"]
    assert result.backend("onnxruntime").shipped == summary["shipped"]
    assert result.backend("onnxruntime").shipped_parity.passed

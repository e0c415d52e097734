"""report.md names only files a reader can open: every artifact it mentions is in the artifacts folder."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.errors import ExitCode
from exporter.pipeline import ExportOptions, export
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.report.lossy import int8_source

# Names ending in an artifact extension, as a report writes them: `model.int8.onnx`, golden/x.inputs.npz.
_ARTIFACT = re.compile(r"[\w./+-]+\.(?:onnx|ts|pt2|xml|bin|npz)\b")


def named_artifacts(markdown: str) -> set[str]:
    """Every file name with an artifact extension the markdown mentions (not a placeholder: FILE.npz)."""
    names = {m.group(0).lstrip("./") for m in _ARTIFACT.finditer(markdown)}
    return {name for name in names if not Path(name).stem.isupper()}


def _missing(out: Path) -> list[str]:
    named = named_artifacts((out / "report.md").read_text())
    assert named, "the report names no artifact at all"
    return sorted(name for name in named if not (out / name).exists())


def test_named_artifacts_finds_file_names_in_prose_and_code() -> None:
    text = (
        "shipped `model.onnx`; int8 (model.int8.onnx) from golden/export.inputs.npz, not report.json; "
        "re-export with --calibration FILE.npz"
    )
    assert named_artifacts(text) == {"model.onnx", "model.int8.onnx", "golden/export.inputs.npz"}


def test_every_file_a_float_export_report_names_exists(options_for: Callable[..., ExportOptions]) -> None:
    # The graph optimization's line named its working file, model.simplified.onnx, which is never shipped.
    result = export(options_for("conv", targets=("onnx", "torchscript"), benchmark=False))
    assert result.exit_code is ExitCode.OK
    assert _missing(result.out_dir) == []
    summary = result.report["optimization_summary"]
    assert summary["quantization_source_label"] == summary["portable"]  # int8 starts from model.onnx
    assert "shipped as model.onnx" in (result.out_dir / "report.md").read_text()


@pytest.mark.slow
def test_an_int8_export_report_names_existing_files_and_no_unasked_top1(
    options_for: Callable[..., ExportOptions],
) -> None:
    quantization = QuantizeOptions(mode=QuantMode.DYNAMIC, samples=16)
    result = export(options_for("mlp", targets=("onnx",), quantization=quantization))
    assert result.exit_code is ExitCode.OK
    assert _missing(result.out_dir) == []
    # Its (B, 8) output could be an embedding: without --min-top1 no top-1 column, and the report says why.
    markdown = (result.out_dir / "report.md").read_text()
    assert "top-1 agree" not in markdown and "Top-1 agreement is not shown" in markdown
    assert "Top-1 agreement is not shown" in (result.out_dir / "report.html").read_text()


def test_int8_source_names_the_shipped_file_or_says_it_is_not_shipped() -> None:
    shipped = {"portable": "simplified", "quantization_source_label": "simplified"}
    assert int8_source(shipped) == "int8 starts from the simplified graph, shipped as model.onnx"
    other = {"portable": "simplified+transformer", "quantization_source_label": "simplified"}
    assert "not shipped" in int8_source(other) and ".onnx" not in int8_source(other)
    old = {"portable": "simplified", "quantization_source": "model.simplified.onnx"}
    assert "model.simplified.onnx" not in int8_source(old)

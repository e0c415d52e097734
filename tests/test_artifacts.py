"""The artifacts folder: its contents, manifest hashes, golden files that reproduce, and atomic writes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from exporter.documents.build import RENDERED
from exporter.pipeline import ExportOptions, export
from exporter.stages.staging import staging_dir


@pytest.fixture
def exported(options_for: Callable[..., ExportOptions]) -> Path:
    return export(options_for("two_inputs")).out_dir


def test_folder_holds_model_golden_manifest_and_reports(exported: Path) -> None:
    names = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert {"model.onnx", "manifest.json", "report.json", "report.md"} <= names
    assert any(n.startswith("golden/") and n.endswith(".inputs.npz") for n in names)
    assert not any("_build" in n or "simplified" in n for n in names)


def test_manifest_hashes_every_file_and_the_source(
    exported: Path, options_for: Callable[..., ExportOptions]
) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    files = {p.relative_to(exported).as_posix() for p in exported.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == files - set(RENDERED)  # rendered reports are re-renderable
    for name, entry in manifest["files"].items():
        data = (exported / name).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["bytes"] == len(data)
    source = Path(manifest["source"]["checkpoint"])
    assert manifest["source"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()


def test_manifest_records_versions_spec_and_settings(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["schema_version"] == 1
    assert {"torch", "onnx", "onnxruntime", "onnxsim", "python"} <= set(manifest["versions"])
    assert manifest["onnx"]["exporter"] == "dynamo" and manifest["onnx"]["opset"] >= 18
    assert manifest["input_spec"]["dynamic_dims"].keys() == {"batch", "seq"}
    assert manifest["tolerance"] == {"atol": 1e-4, "rtol": 1e-3}
    assert manifest["threads"] >= 1 and "cpu_flags" in manifest["machine"]


def test_golden_outputs_reproduce_with_onnxruntime(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    assert len(manifest["golden"]) >= 3
    for case in manifest["golden"]:
        inputs = dict(np.load(exported / case["inputs"]))
        expected = np.load(exported / case["outputs"])
        outputs = session.run(case["output_names"], inputs)
        for name, actual in zip(case["output_names"], outputs, strict=True):
            np.testing.assert_allclose(actual, expected[name], atol=1e-4, rtol=1e-3)


def test_report_json_and_markdown_agree_on_status(exported: Path) -> None:
    report = json.loads((exported / "report.json").read_text())
    assert report["status"] == "passed" and report["schema_version"] == 1
    assert [s["name"] for s in report["stages"]] == [
        "load",
        "convert",
        "verify",
        "optimize",
        "quantize",
        "benchmark",
        "write",
    ]
    markdown = (exported / "report.md").read_text()
    assert "**Status: PASSED**" in markdown
    passes = sum(o["passed"] for p in report["parity"] for c in p["cases"] for o in c["outputs"])
    assert markdown.count("| pass |") == passes


def test_staging_folder_vanishes_when_the_stage_fails(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staging_dir(out, force=False) as staging:
        (staging / "half.onnx").write_bytes(b"partial")
        raise RuntimeError("interrupted")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []

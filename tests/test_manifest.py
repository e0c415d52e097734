"""manifest.json and report.json as typed, versioned models: what is written reads back unchanged, a
damaged, foreign or other-version document is one line of bad input (exit 2), and the published JSON
Schema is current and validates a real folder without exporter."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import jsonschema
import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.documents.manifest import (
    GoldenCaseEntry,
    GoldenSamplesEntry,
    Int8Entry,
    Manifest,
    read_manifest,
    schema_text,
    write_manifest,
)
from exporter.documents.report_model import read_report
from exporter.errors import ExitCode, UsageError
from exporter.stages.staging import MANIFEST_SCHEMA_VERSION
from tests.conftest import export_tiny_mlp

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "docs" / "manifest.schema.json"
DAMAGED = "(not a manifest written by this exporter, or damaged)"
# The keys build_manifest wrote before the manifest was a model: existing folders must keep them.
MANIFEST_KEYS = [
    "schema_version",
    "name",
    "created_utc",
    "tool",
    "versions",
    "machine",
    "threads",
    "source",
    "onnx",
    "artifacts",
    "output_names",
    "input_spec",
    "tolerance",
    "benchmark",
    "int8",
    "seed",
    "golden",
    "reference_nonfinite",
    "files",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX export of the tiny MLP with a dynamic int8 model (no benchmark), copied before edits."""
    quantization = {"mode": "dynamic", "samples": 16}
    return export_tiny_mlp(tmp_path_factory.mktemp("manifest"), quantization=quantization)


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def _load(folder: Path, name: str = "manifest.json") -> dict[str, Any]:
    document: dict[str, Any] = json.loads((folder / name).read_text())
    return document


def _edit(folder: Path, edit: Callable[[dict[str, Any]], None], name: str = "manifest.json") -> None:
    document = _load(folder, name)
    edit(document)
    (folder / name).write_text(json.dumps(document))


def _cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def test_a_real_manifest_and_report_read_back_unchanged(exported: Path, tmp_path: Path) -> None:
    written = _load(exported)
    assert list(written) == MANIFEST_KEYS
    manifest = read_manifest(exported)
    assert manifest.model_dump(mode="json") == written
    assert isinstance(manifest.int8, Int8Entry) and manifest.int8.file == "model.int8.onnx"
    assert manifest.int8.budget.min_cosine == written["int8"]["budget"]["min_cosine"]
    assert isinstance(manifest.golden[0], GoldenCaseEntry)
    assert isinstance(manifest.golden[-1], GoldenSamplesEntry) and manifest.golden[-1].case == "int8-eval"
    assert manifest.artifacts is not None and manifest.artifacts[0].backend == "onnxruntime"
    rewritten = tmp_path / "manifest.json"
    write_manifest(rewritten, manifest)
    assert rewritten.read_bytes() == (exported / "manifest.json").read_bytes()
    report = read_report(exported)
    assert report.model_dump(exclude_unset=True) == _load(exported, "report.json")
    assert report.status == "passed" and report.stages[0].name == "load"
    assert {"onnxruntime"} <= {p.backend for p in report.parity} <= {"onnxruntime", "onnxruntime-optimized"}


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda m: m.__setitem__("served_by", "triton"), "has the unknown key 'served_by'"),
        (lambda m: m["golden"][0].__setitem__("note", 1), "has the unknown key 'golden[0].note'"),
        (lambda m: m["int8"]["budget"].__setitem__("min_cosine", "high"), "has 'int8.budget.min_cosine'"),
        (
            lambda m: m["input_spec"]["inputs"][0].__setitem__("dtype", 3),
            "has 'input_spec.inputs[0].dtype' = 3",
        ),
        (lambda m: m["source"].pop("sha256"), "is missing 'source.sha256'"),
        (lambda m: m["golden"][-1].__setitem__("samples", "16"), """].samples' = "16", not an integer"""),
    ],
    ids=["top-level", "golden", "int8-budget", "input-dtype", "source-sha256", "int8-samples"],
)
def test_an_unknown_or_mistyped_field_exits_2_in_one_line(
    folder: Path, edit: Callable[[dict[str, Any]], None], problem: str
) -> None:
    """Fields the old hand-written table ignored are checked too: unknown keys and every field's type."""
    _edit(folder, edit)
    code, output = _cli("verify", folder)
    assert code == ExitCode.BAD_INPUT, output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert problem in output and DAMAGED in output


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (
            0,
            "has schema_version 0, written by an older exporter; this exporter reads 1: re-export it, or "
            "verify it with the exporter that wrote it",
        ),
        (2, "has schema_version 2, written by a newer exporter; this exporter reads 1: upgrade exporter"),
        ("1", f'has schema_version "1", not an integer {DAMAGED}'),
        (None, f"has schema_version null, not an integer {DAMAGED}"),
    ],
)
def test_another_schema_version_is_refused_with_a_clear_message(
    folder: Path, version: object, message: str
) -> None:
    _edit(folder, lambda m: m.__setitem__("schema_version", version))
    with pytest.raises(UsageError) as caught:
        read_manifest(folder)
    assert str(caught.value).startswith(f"manifest.json of '{folder}' {message}")
    code, output = _cli("verify", folder)
    assert code == ExitCode.BAD_INPUT and len(output.strip().splitlines()) == 1, output


def test_a_manifest_without_schema_version_or_not_an_object_is_refused(folder: Path) -> None:
    _edit(folder, lambda m: m.pop("schema_version"))
    with pytest.raises(UsageError, match=r"has no schema_version \(not a manifest written by this"):
        read_manifest(folder)
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(UsageError, match=r"is not a JSON object \(not a manifest written by this"):
        read_manifest(folder)


def test_a_damaged_report_is_refused_by_exporter_report_in_one_line(folder: Path) -> None:
    _edit(folder, lambda r: r["stages"][0].__setitem__("seconds", "fast"), "report.json")
    code, output = _cli("report", folder)
    assert code == ExitCode.BAD_INPUT, output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert (
        f"""report.json of '{folder}' has 'stages[0].seconds' = "fast", not a number """
        "(not a report written by this exporter, or damaged)"
    ) in output


def test_a_baseline_that_is_not_a_report_is_bad_input(exported: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps(_load(exported, "report.json") | {"latency": {}}))
    code, output = _cli("verify", exported, "--baseline", baseline, "--max-latency-regression", "10%")
    assert code == ExitCode.BAD_INPUT, output
    assert (
        f"--baseline '{baseline}' cannot be used: baseline.json of '{tmp_path}' has 'latency' = {{}}, not a "
        "list (not a report written by this exporter, or damaged)"
    ) in output


def test_the_published_schema_is_the_models_schema() -> None:
    """``python -m exporter.documents.manifest --schema`` writes the schema file exactly, nothing else."""
    done = subprocess.run(
        [sys.executable, "-m", "exporter.documents.manifest", "--schema"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert done.stderr == ""
    assert done.stdout == schema_text() == SCHEMA.read_text(), (
        "docs/manifest.schema.json is stale: "
        "python -m exporter.documents.manifest --schema > docs/manifest.schema.json"
    )
    assert get_args(Manifest.model_fields["schema_version"].annotation) == (MANIFEST_SCHEMA_VERSION,)


def test_a_real_folder_validates_against_the_published_schema(exported: Path) -> None:
    """What a CI job without exporter does: jsonschema alone accepts a real manifest, refuses a bad one."""
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    validator.check_schema(schema)
    manifest = _load(exported)
    validator.validate(manifest)
    manifest["golden"][0]["note"] = "unknown keys are refused"
    manifest["tolerance"]["atol"] = "1e-4"
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    assert [list(e.absolute_path) for e in errors] == [["golden", 0], ["tolerance", "atol"]]

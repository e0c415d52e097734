"""The CI gate: ``exporter verify`` on artifacts, ``exporter run`` over recipes, JUnit/JSON, exit codes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.loading.checkpoint import sha256_file
from tests.conftest import export_tiny_mlp
from tests.models import MODELS, MODELS_FILE

runner = CliRunner()


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [*map(str, args)])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX + TorchScript export (with int8) of the tiny MLP, shared read-only by this module's tests."""
    return export_tiny_mlp(
        tmp_path_factory.mktemp("gate"),
        targets=("onnx", "torchscript"),
        benchmark=True,
        batch_sizes=(1, 2),
        quantization={"mode": "dynamic", "samples": 16},
    )


@pytest.fixture
def copy_of(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def _rehash(folder: Path, name: str) -> None:
    """Update the manifest's hash of ``name`` so only the content check (not the hash) can catch the edit."""
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name]["sha256"] = sha256_file(folder / name)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_verify_passes_on_a_fresh_export_and_writes_json(exported: Path, tmp_path: Path) -> None:
    code, output = _invoke("verify", exported, "--json", tmp_path / "v.json")
    assert code == 0, output
    result = json.loads((tmp_path / "v.json").read_text())
    names = {c["name"] for c in result["checks"]}
    assert {"files", "parity onnxruntime", "parity torchscript", "int8 budget"} <= names
    assert all(c["passed"] for c in result["checks"]) and result["exit_code"] == 0


def test_a_tampered_model_file_fails_with_exit_1_naming_it(copy_of: Path) -> None:
    with (copy_of / "model.ts").open("ab") as handle:
        handle.write(b"\0tampered")
    code, output = _invoke("verify", copy_of)
    assert code == 1, output
    assert "model.ts was modified after export" in output


def test_a_missing_file_fails_with_exit_1_naming_it(copy_of: Path) -> None:
    (copy_of / "model.onnx").unlink()
    code, output = _invoke("verify", copy_of)
    assert code == 1, output
    assert "model.onnx is missing" in output


def test_a_golden_output_nudged_past_tolerance_fails_parity(copy_of: Path, tmp_path: Path) -> None:
    path = copy_of / "golden" / "large.outputs.npz"
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    first = next(iter(arrays))
    arrays[first] = arrays[first] + 1e-2  # atol is 1e-4
    np.savez(path, **arrays)  # type: ignore[arg-type]
    _rehash(copy_of, "golden/large.outputs.npz")
    code, output = _invoke("verify", copy_of, "--json", tmp_path / "v.json")
    assert code == 1, output
    checks = {c["name"]: c for c in json.loads((tmp_path / "v.json").read_text())["checks"]}
    assert checks["files"]["passed"]  # hashes agree: only the values are wrong
    assert not checks["parity onnxruntime"]["passed"] and not checks["parity torchscript"]["passed"]
    assert "large" in checks["parity onnxruntime"]["detail"]


def test_an_impossible_latency_budget_exits_4_with_parity_held(exported: Path, tmp_path: Path) -> None:
    code, output = _invoke(
        "verify",
        exported,
        "--baseline",
        exported / "report.json",
        "--max-latency-regression",
        "-100%",  # allowed p50 = 0 ms: impossible on any machine
        "--json",
        tmp_path / "v.json",
    )
    assert code == 4, output
    result = json.loads((tmp_path / "v.json").read_text())
    latency = [c for c in result["checks"] if c["kind"] == "latency"]
    assert latency and not any(c["passed"] for c in latency)
    assert all(c["passed"] for c in result["checks"] if c["kind"] != "latency")
    assert {row["backend"] for row in result["latency"]} >= {"onnxruntime", "torchscript", "onnxruntime-int8"}


def test_a_generous_latency_budget_passes(exported: Path) -> None:
    code, output = _invoke(
        "verify", exported, "--baseline", exported / "report.json", "--max-latency-regression", "1000%"
    )
    assert code == 0, output
    assert "latency onnxruntime batch=1" in output


def test_checkpoint_rederives_the_reference(exported: Path, tmp_path: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    checkpoint = Path(manifest["source"]["checkpoint"])
    code, output = _invoke("verify", exported, "--checkpoint", checkpoint)
    assert code == 0, output
    other = MODELS["mlp"].build()
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(0.5)
    changed = tmp_path / "changed.pt"
    torch.save(other.state_dict(), changed)
    code, output = _invoke("verify", exported, "--checkpoint", changed)
    assert code == 1, output


def test_checkpoint_verify_says_pytorch_was_the_reference_and_on_which_cases(
    exported: Path, tmp_path: Path
) -> None:
    checkpoint = Path(json.loads((exported / "manifest.json").read_text())["source"]["checkpoint"])
    plain, with_checkpoint = tmp_path / "plain.json", tmp_path / "checkpoint.json"
    code, output = _invoke("verify", exported, "--json", plain)
    assert code == 0, output
    code, output = _invoke("verify", exported, "--checkpoint", checkpoint, "--json", with_checkpoint)
    assert code == 0, output
    verdict = " ".join(output.split()[output.split().index("PASSED") :])
    assert "parity against PyTorch eager from the checkpoint" in verdict and checkpoint.name in verdict
    cases = [c["case"] for c in json.loads(plain.read_text())["parity"][0]["cases"]]
    assert f"(cases {', '.join(cases)})" in verdict
    reference = json.loads(with_checkpoint.read_text())["reference"]
    assert reference.startswith("PyTorch eager") and reference != json.loads(plain.read_text())["reference"]
    parity = [c for c in json.loads(with_checkpoint.read_text())["checks"] if c["kind"] == "parity"]
    assert parity and all(c["detail"].endswith("of PyTorch from --checkpoint") for c in parity)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["verify", "/nonexistent/folder"], "is not a folder"),
        (["verify", "."], "no manifest.json"),
        (["verify", ".", "--max-latency-regression", "10%"], "needs --baseline"),
        (["run", "/nonexistent/recipes"], "neither a recipe file nor a folder"),
        (["inspect", "/nonexistent/model.pt"], "does not exist"),
        (["report", "/nonexistent/folder"], "is not a folder"),
        (["report", "."], "no report.json"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str) -> None:
    code, output = _invoke(*args)
    assert code == 2, output
    assert message in output and "Traceback" not in output


def test_report_rerenders_markdown_and_html_and_refuses_another_schema(copy_of: Path) -> None:
    (copy_of / "report.md").unlink()
    (copy_of / "report.html").write_text("stale")
    code, output = _invoke("report", copy_of)
    assert code == 0, output
    assert "## " in (copy_of / "report.md").read_text()
    assert (copy_of / "report.html").read_text().startswith("<!DOCTYPE html>")
    report = json.loads((copy_of / "report.json").read_text())
    (copy_of / "report.json").write_text(json.dumps(report | {"schema_version": 999}))
    code, output = _invoke("report", copy_of)
    assert code == 2 and "schema_version 999" in output and "Traceback" not in output


def _recipe(folder: Path, name: str, model: str, extra: str = "") -> Path:
    checkpoint = folder / f"{name}.pt"
    torch.save(MODELS[model].build().state_dict(), checkpoint)
    specs = ", ".join(f'"{s}"' for s in MODELS[model].inputs)
    path = folder / f"{name}.toml"
    (folder / "models.py").write_bytes(MODELS_FILE.read_bytes())  # a recipe names code in its own project
    path.write_text(
        f'schema_version = 1\nname = "{name}"\n\n[model]\ncheckpoint = "{checkpoint.name}"\n'
        f'factory = "models.py:{MODELS[model].factory}"\n\n[inputs]\nspecs = [{specs}]\n\n{extra}'
    )
    return path


@pytest.mark.slow
def test_run_gates_a_folder_of_recipes_with_junit_and_json(tmp_path: Path) -> None:
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    _recipe(
        recipes,
        "good_mlp",
        "mlp",
        '[export]\ntargets = ["onnx", "torchscript"]\n'
        'not_applicable = { compile = "kept short for the test" }\n',
    )
    _recipe(recipes, "frozen_dim", "frozen", '[export]\nonnx_exporter = "torchscript"\n')
    (recipes / "broken.toml").write_text("schema_version = 1\n[model]\nfactory = 3\n")
    junit, report = tmp_path / "junit.xml", tmp_path / "run.json"
    code, output = _invoke(
        "run",
        recipes,
        "--out",
        tmp_path / "out",
        "--jobs",
        "2",
        "--no-benchmark",
        "--junit",
        junit,
        "--json",
        report,
    )
    assert code == 2, output  # bad input (the broken recipe) outranks the parity failure
    results = {r["name"]: r for r in json.loads(report.read_text())["recipes"]}
    assert results["good_mlp"]["exit_code"] == 0
    assert results["frozen_dim"]["exit_code"] == 1
    assert results["broken"]["exit_code"] == 2
    root = ET.parse(junit).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"good_mlp", "frozen_dim", "broken"}
    good = suites["good_mlp"]
    assert good.get("failures") == "0" and good.get("errors") == "0" and good.get("skipped") == "1"
    assert int(good.get("tests") or 0) == len(results["good_mlp"]["checks"]) + 1
    assert int(suites["frozen_dim"].get("failures") or 0) >= 1
    assert suites["broken"].get("errors") == "1"
    total = sum(int(s.get("tests") or 0) for s in suites.values())
    assert root.get("tests") == str(total)
    assert (tmp_path / "out" / "good_mlp" / "model.ts").is_file()


def test_recipes_lists_the_zoo() -> None:
    code, output = _invoke("recipes", Path(__file__).resolve().parents[1] / "recipes")
    assert code == 0, output
    assert "digits_cnn" in output and "not applicable" in output


def test_inspect_an_onnx_model_and_a_checkpoint(exported: Path, tmp_path: Path) -> None:
    code, output = _invoke("inspect", exported / "model.onnx", "--json", tmp_path / "onnx.json")
    assert code == 0, output
    onnx_summary = json.loads((tmp_path / "onnx.json").read_text())
    assert onnx_summary["opsets"]["ai.onnx"] >= 17 and "Gemm" in onnx_summary["operators"]
    assert onnx_summary["inputs"][0]["shape"][0] == "batch"
    manifest = json.loads((exported / "manifest.json").read_text())
    code, output = _invoke(
        "inspect",
        manifest["source"]["checkpoint"],
        "--model",
        MODELS["mlp"].ref,
        "--input",
        "x:float32:batch=3,16",
        "--json",
        tmp_path / "ckpt.json",
    )
    assert code == 0, output
    summary = json.loads((tmp_path / "ckpt.json").read_text())
    assert summary["parameters"] == sum(p.numel() for p in MODELS["mlp"].build().parameters())
    assert any(layer["type"] == "BatchNorm1d" for layer in summary["layers"])
    assert summary["outputs"] == [{"name": "output", "dtype": "float32", "shape": [3, 4]}]


def test_inspect_takes_checkpoint_factory_and_inputs_from_a_recipe() -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "zoo_moe.toml"
    code, output = _invoke("inspect", "--recipe", recipe)
    assert code == 0, output
    assert "TopKMixtureOfExperts" in output and "experts.3.fc2" in output and "[2, 8, 32]" in output

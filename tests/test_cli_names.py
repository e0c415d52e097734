"""``exporter export`` names: --out names the model everywhere it is served, --output-names names the
outputs, --state-dict-key picks the weights; ``verify --checkpoint`` reads the entry the export read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.documents.manifest import read_manifest
from exporter.packaging.triton import triton_repository
from exporter.serving.artifact import choose_artifact
from exporter.serving.signature import signature_of
from tests.models import MODELS

runner = CliRunner()
MODEL = MODELS["tuple_encoder"]
NAMES = ("embedding", "energy", "scores")


def _export(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(
        app, ["export", *map(str, args), "--model", MODEL.ref, "--input", MODEL.inputs[0], "--no-benchmark"]
    )
    return result.exit_code, " ".join(result.output.split())


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return MODEL.build().state_dict()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A published encoder's own checkpoint ({"model_state": ..., "optimizer_state": ..., "step": 3})
    exported into ``artifacts/encoder``; the folder and the command's output."""
    root = tmp_path_factory.mktemp("names")
    checkpoint = root / "encoder_state.pt"
    torch.save({"model_state": _weights(1), "optimizer_state": {"state": {}}, "step": 3}, checkpoint)
    folder = root / "artifacts" / "encoder"
    code, output = _export(checkpoint, "--out", folder)
    assert code == 0, output
    return folder, output


@pytest.mark.slow
def test_the_out_folder_names_the_model_in_manifest_report_serving_and_triton(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    folder, output = exported
    manifest = read_manifest(folder)
    assert manifest.name == "encoder"
    assert json.loads((folder / "report.json").read_text())["name"] == "encoder"
    assert signature_of(folder, manifest).name == "encoder"
    artifact = choose_artifact(folder, manifest, None)
    assert triton_repository(folder, manifest, artifact, tmp_path / "repo").model == "encoder"
    assert 'name: "encoder"' in (tmp_path / "repo" / "encoder" / "config.pbtxt").read_text()
    assert "weights taken from the checkpoint's 'model_state' entry" in output


@pytest.mark.slow
def test_verify_checkpoint_reads_the_entry_the_export_read(
    exported: tuple[Path, str], tmp_path: Path
) -> None:
    folder, _ = exported
    assert read_manifest(folder).source.state_dict_key == "model_state"
    checkpoint = tmp_path / "with_ema.pt"  # two common keys: ambiguous, unless told which
    torch.save({"model_state": _weights(1), "ema": _weights(2)}, checkpoint)
    same = runner.invoke(app, ["verify", str(folder), "--checkpoint", str(checkpoint), "--threads", "1"])
    assert same.exit_code == 0, same.output
    ema = runner.invoke(
        app,
        ["verify", str(folder), "--checkpoint", str(checkpoint), "--state-dict-key", "ema", "--threads", "1"],
    )
    assert ema.exit_code == 1, ema.output  # other weights: the golden outputs no longer match


def test_output_names_that_are_not_identifiers_exit_2_before_anything_is_written(tmp_path: Path) -> None:
    checkpoint = tmp_path / "encoder_state.pt"
    torch.save(_weights(1), checkpoint)
    code, output = _export(checkpoint, "--output-names", "embedding,embedding", "--out", tmp_path / "o")
    assert code == 2, output
    assert "--output-names 'embedding,embedding': embedding given twice" in output
    assert not (tmp_path / "o").exists()


def test_help_says_what_name_names_and_shows_the_new_flags() -> None:
    result = runner.invoke(app, ["export", "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    text = " ".join(result.output.replace("│", " ").split())
    assert "Model name used in the manifest, reports, served URL and Triton repository" in text
    assert "the recipe's name, else the --out folder's name, else the checkpoint's stem" in text
    assert "--state-dict-key" in text and "--output-names" in text


@pytest.mark.slow
def test_output_names_name_the_graph_golden_files_manifest_signature_and_triton(tmp_path: Path) -> None:
    checkpoint = tmp_path / "encoder_state.pt"
    torch.save(_weights(1), checkpoint)
    folder = tmp_path / "encoder"
    code, output = _export(checkpoint, "--output-names", ",".join(NAMES), "--out", folder)
    assert code == 0, output
    manifest = read_manifest(folder)
    assert manifest.output_names == list(NAMES)
    assert [o.name for o in onnx.load(folder / "model.onnx").graph.output] == list(NAMES)
    assert list(np.load(folder / "golden" / "export.outputs.npz")) == list(NAMES)
    assert [o.name for o in signature_of(folder, manifest).outputs] == list(NAMES)
    report = json.loads((folder / "report.json").read_text())
    assert report["settings"]["output_names"] == list(NAMES)
    artifact = choose_artifact(folder, manifest, None)
    triton_repository(folder, manifest, artifact, tmp_path / "repo")
    config = (tmp_path / "repo" / "encoder" / "config.pbtxt").read_text()
    assert all(f'name: "{name}"' in config for name in NAMES)


def test_output_names_of_the_wrong_count_exit_2_giving_the_models_count(tmp_path: Path) -> None:
    checkpoint = tmp_path / "encoder_state.pt"
    torch.save(_weights(1), checkpoint)
    code, output = _export(checkpoint, "--output-names", "embedding,scores", "--out", tmp_path / "o")
    assert code == 2, output
    assert "the model returns 3 outputs" in output


def test_state_dict_key_picks_the_weights_the_export_ships(tmp_path: Path) -> None:
    checkpoint = tmp_path / "timm_style.pt"
    torch.save({"state_dict": _weights(1), "state_dict_ema": _weights(2), "epoch": 9}, checkpoint)
    code, output = _export(
        checkpoint, "--state-dict-key", "state_dict_ema", "--out", tmp_path / "o", "--to", "onnx"
    )
    assert code == 0, output
    assert read_manifest(tmp_path / "o").source.state_dict_key == "state_dict_ema"

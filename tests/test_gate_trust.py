"""``exporter verify`` on hostile or damaged folders: a manifest may only name regular files inside its
folder, a damaged golden file is a failed integrity check (exit 1), a damaged manifest is bad input (exit 2).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

import exporter.gate.reverify
from exporter.cli import app
from exporter.errors import ExitCode, UsageError
from exporter.gate.reverify import VerifyRequest, verify_artifacts
from exporter.loading.checkpoint import sha256_file
from tests.conftest import export_tiny_mlp

OUTSIDE = "outside the artifacts folder; refusing to read it"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One ONNX-only export of the tiny MLP (no int8, no benchmark), copied by each test that edits it."""
    return export_tiny_mlp(tmp_path_factory.mktemp("gate_trust"))


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the gate hashes (we run as root, so an unreadable outside file would not prove it)."""
    seen: list[Path] = []

    def spy(path: Path) -> str:
        seen.append(Path(path))
        return sha256_file(path)

    monkeypatch.setattr(exporter.gate.reverify, "sha256_file", spy)
    return seen


def _edit_manifest(folder: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    edit(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _verify(folder: Path) -> exporter.gate.reverify.VerifyResult:
    return verify_artifacts(VerifyRequest(folder, threads=1))


def _cli(folder: Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["verify", str(folder)])
    return result.exit_code, result.output


def _outside_copy(folder: Path, name: str) -> Path:
    """A byte-identical copy of ``folder/name`` beside the folder, so its manifest sha256 still matches."""
    target = folder.parent / f"outside-{Path(name).name}"
    shutil.copyfile(folder / name, target)
    return target


def test_a_symlinked_model_is_refused_through_the_cli(folder: Path) -> None:
    real = _outside_copy(folder, "model.onnx")
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(real)
    with pytest.raises(UsageError, match=r"names 'model\.onnx', which is a symlink; refusing to follow it"):
        _verify(folder)
    code, output = _cli(folder)
    assert code == ExitCode.BAD_INPUT, output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert "'model.onnx', which is a symlink" in output


def test_a_symlinked_golden_folder_is_refused(folder: Path) -> None:
    real = folder.parent / "real-golden"
    (folder / "golden").rename(real)
    (folder / "golden").symlink_to(real)
    with pytest.raises(UsageError, match="passes through the symlink 'golden'"):
        _verify(folder)


@pytest.mark.parametrize("spelling", ["absolute", "dotdot"])
def test_a_files_entry_outside_the_folder_is_refused_before_hashing(
    folder: Path, hashed: list[Path], spelling: str
) -> None:
    outside = folder.parent / "outside.txt"
    outside.write_text("a secret the gate must not read\n")
    name = str(outside) if spelling == "absolute" else "../outside.txt"
    _edit_manifest(folder, lambda m: m["files"].__setitem__(name, {"sha256": sha256_file(outside)}))
    with pytest.raises(UsageError) as caught:
        _verify(folder)
    assert str(caught.value) == (
        f"manifest.json of '{folder}' names '{name}', which is {OUTSIDE} "
        "(a manifest may only name files inside its folder)"
    )
    assert hashed == []  # refused before any file was hashed, the outside one included


def test_an_absolute_artifact_file_is_refused_through_the_cli(folder: Path) -> None:
    real = _outside_copy(folder, "model.onnx")
    _edit_manifest(folder, lambda m: m["artifacts"][0].__setitem__("file", str(real)))
    with pytest.raises(UsageError, match=OUTSIDE):
        _verify(folder)
    code, output = _cli(folder)
    assert code == ExitCode.BAD_INPUT, output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert f"names '{real}', which is {OUTSIDE}" in output


def test_a_golden_path_with_dotdot_is_refused(folder: Path) -> None:
    _outside_copy(folder, "golden/large.inputs.npz")
    _edit_manifest(folder, lambda m: m["golden"][-1].__setitem__("inputs", "../outside-large.inputs.npz"))
    with pytest.raises(UsageError, match=r"names '\.\./outside-large\.inputs\.npz', which is outside"):
        _verify(folder)


def test_an_absolute_int8_file_is_refused(folder: Path) -> None:
    real = _outside_copy(folder, "model.onnx")
    _edit_manifest(folder, lambda m: m.__setitem__("int8", {"file": str(real), "budget": {}}))
    with pytest.raises(UsageError, match=OUTSIDE):
        _verify(folder)


def test_an_older_manifest_confines_onnx_file_and_still_verifies(folder: Path) -> None:
    """Manifests from before ``artifacts`` name the model in ``onnx.file`` only."""
    _edit_manifest(folder, lambda m: m.pop("artifacts"))
    assert _verify(folder).exit_code is ExitCode.OK
    real = _outside_copy(folder, "model.onnx")
    _edit_manifest(folder, lambda m: m["onnx"].__setitem__("file", str(real)))
    with pytest.raises(UsageError, match=OUTSIDE):
        _verify(folder)


def test_a_fifo_named_by_the_manifest_is_refused_not_read(folder: Path) -> None:
    """Reading a named pipe would hang the CI job."""
    os.mkfifo(folder / "pipe")
    _edit_manifest(folder, lambda m: m["files"].__setitem__("pipe", {"sha256": "0" * 64}))
    with pytest.raises(UsageError, match="names 'pipe', which is not a regular file"):
        _verify(folder)


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate], ids=["flipped-byte", "truncated"])
def test_a_damaged_golden_file_is_a_failed_integrity_check(
    folder: Path, damage: Callable[[Path], None]
) -> None:
    damage(folder / "golden" / "large.outputs.npz")
    result = _verify(folder)
    assert result.exit_code is ExitCode.VERIFICATION_FAILED
    failed = {c.name: c for c in result.checks if not c.passed}
    assert failed["file golden/large.outputs.npz"].detail.startswith(
        "golden/large.outputs.npz was modified after export (sha256 "
    )
    assert failed["golden large"].kind == "integrity"
    assert failed["golden large"].detail.startswith("golden/large.outputs.npz cannot be read: ")
    assert exporter.gate.reverify.describe_exit(result).count("golden/large.outputs.npz was modified") == 1


def test_a_flipped_byte_in_a_golden_file_exits_1_through_the_cli(folder: Path) -> None:
    _flip_a_byte(folder / "golden" / "export.inputs.npz")
    code, output = _cli(folder)
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert "golden/export.inputs.npz was modified after export" in output and "Traceback" not in output


def test_golden_outputs_that_cannot_be_compared_fail_parity(folder: Path) -> None:
    """A rehashed golden file of strings: the comparison raising is a failed parity check, not a crash."""
    path = folder / "golden" / "large.outputs.npz"
    with np.load(path) as data:
        shape = data["output"].shape
    np.savez(path, output=np.full(shape, "not a number"))
    _edit_manifest(
        folder, lambda m: m["files"]["golden/large.outputs.npz"].__setitem__("sha256", sha256_file(path))
    )
    result = _verify(folder)
    assert result.exit_code is ExitCode.VERIFICATION_FAILED
    parity = next(c for c in result.checks if c.name == "parity onnxruntime")
    assert not parity.passed and "cannot be compared with the golden outputs" in parity.detail


def _drop(*keys: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        parent: Any = manifest
        for key in keys[:-1]:
            parent = parent[key]
        del parent[keys[-1]]

    return edit


def _set(value: Any, *keys: str | int) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        parent: Any = manifest
        for key in keys[:-1]:
            parent = parent[key]
        parent[keys[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (_drop("tolerance"), "is missing 'tolerance'"),
        (_set(0.1, "tolerance"), "has 'tolerance' = 0.1, not an object"),
        (_set("1e-4", "tolerance", "atol"), """has 'tolerance.atol' = "1e-4", not a number"""),
        (_set(True, "tolerance", "rtol"), "has 'tolerance.rtol' = true, not a number"),
        (_drop("input_spec"), "is missing 'input_spec'"),
        (_drop("golden", 0, "seed"), "is missing 'golden[0].seed'"),
        (_set("x", "golden", 1, "output_names"), """has 'golden[1].output_names' = "x", not a list"""),
        (
            _set({"sha256": 3}, "files", "model.onnx"),
            """has 'files["model.onnx"].sha256' = 3, not a string""",
        ),
        (_drop("artifacts", 0, "backend"), "is missing 'artifacts[0].backend'"),
    ],
)
def test_a_damaged_manifest_is_bad_input_in_one_line(
    folder: Path, edit: Callable[[dict[str, Any]], None], problem: str
) -> None:
    _edit_manifest(folder, edit)
    with pytest.raises(UsageError) as caught:
        _verify(folder)
    assert str(caught.value) == (
        f"manifest.json of '{folder}' {problem} (not a manifest written by this exporter, or damaged)"
    )


def test_a_manifest_without_tolerance_exits_2_through_the_cli(folder: Path) -> None:
    _edit_manifest(folder, _drop("tolerance"))
    code, output = _cli(folder)
    assert code == ExitCode.BAD_INPUT, output
    assert len(output.strip().splitlines()) == 1 and "Traceback" not in output
    assert "is missing 'tolerance' (not a manifest written by this exporter, or damaged)" in output

"""Second attack round on artifacts folders (issue 21): links, FIFOs, devices, huge documents, bad names.

An artifacts folder may come from anywhere (a pull request, a download), and ``verify``, ``serve``,
``package`` and ``report`` all take one: each case below made one of them read, copy or overwrite a file
outside the folder, hang, or pass a folder it should refuse.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ExitCode, UsageError
from exporter.options import ExportOptions
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import export_tiny_mlp

runner = CliRunner()
SPEC = InputSpec((parse_tensor_spec("x:float32:batch=2,4"),))
SECRET = "the-secret-of-this-machine\n"


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(app, [*map(str, args)])
    return result.exit_code, result.output


def _run(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI in its own process, for the cases that hung it: a hang is a timeout, not a stuck suite."""
    command = [sys.executable, "-m", "exporter", *map(str, args)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_mlp(tmp_path_factory.mktemp("attacks_artifacts"))


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.txt"
    path.write_text(SECRET)
    return path


def _link(folder: Path, name: str, target: Path | str) -> None:
    (folder / name).unlink()
    (folder / name).symlink_to(target)


@pytest.mark.parametrize("name", ["report.md", "report.html", "report.json"])
def test_a_report_linked_to_a_secret_fails_verify(folder: Path, secret: Path, name: str) -> None:
    _link(folder, name, secret)
    code, output = _invoke("verify", folder)
    assert code != ExitCode.OK, output
    assert name in output and "symlink" in output


def test_a_rewritten_report_fails_verify_like_any_other_file(folder: Path) -> None:
    (folder / "report.md").write_text("# All good\n")
    code, output = _invoke("verify", folder)
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert "report.md was modified after export" in output


def test_package_refuses_a_linked_report_and_copies_no_secret(
    folder: Path, secret: Path, tmp_path: Path
) -> None:
    _link(folder, "report.md", secret)
    bundle = tmp_path / "bundle"
    code, output = _invoke("package", folder, "--out", bundle)
    assert code == ExitCode.BAD_INPUT, output
    assert "report.md" in output and "symlink" in output
    copied = [p for p in bundle.rglob("*") if p.is_file()] if bundle.exists() else []
    assert not any(SECRET in p.read_text(errors="replace") for p in copied)


def test_exporter_report_replaces_a_link_and_never_writes_through_it(folder: Path, secret: Path) -> None:
    _link(folder, "report.md", secret)
    _link(folder, "report.html", secret)
    code, output = _invoke("report", folder)
    assert code == ExitCode.OK, output
    assert secret.read_text() == SECRET
    for name in ("report.md", "report.html"):
        assert not (folder / name).is_symlink() and (folder / name).stat().st_size > 100
    code, output = _invoke("verify", folder)
    assert code == ExitCode.OK, output  # the re-rendered reports' hashes were updated in the manifest


def test_the_manifest_hashes_the_rendered_reports(folder: Path) -> None:
    files = json.loads((folder / "manifest.json").read_text())["files"]
    assert {"report.json", "report.md", "report.html"} <= set(files)


@pytest.mark.parametrize("command", ["verify", "serve", "package"])
def test_a_fifo_manifest_is_refused_at_once(folder: Path, tmp_path: Path, command: str) -> None:
    (folder / "manifest.json").unlink()
    os.mkfifo(folder / "manifest.json")
    extra = ["--out", str(tmp_path / "bundle")] if command == "package" else []
    extra += ["--port", "0"] if command == "serve" else []
    done = _run(command, folder, *extra, timeout=60)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "manifest.json" in done.stderr and "not a regular file" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["serve", "package"])
def test_a_fifo_report_is_refused_not_read(folder: Path, tmp_path: Path, command: str) -> None:
    """Both read report.json to rank the shipped artifacts before anything else."""
    (folder / "report.json").unlink()
    os.mkfifo(folder / "report.json")
    extra = ["--out", str(tmp_path / "bundle")] if command == "package" else ["--port", "0"]
    done = _run(command, folder, *extra, timeout=60)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "report.json" in done.stderr and "not a regular file" in done.stderr


def test_a_manifest_linked_to_dev_zero_is_refused(folder: Path) -> None:
    _link(folder, "manifest.json", "/dev/zero")
    done = _run("verify", folder, timeout=60)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "manifest.json" in done.stderr and "Traceback" not in done.stderr


def test_a_huge_manifest_is_refused_before_it_is_parsed(folder: Path) -> None:
    with (folder / "manifest.json").open("w") as handle:
        handle.write("[" + " " * (65 * 1024 * 1024) + "]")
    code, output = _invoke("verify", folder)
    assert code == ExitCode.BAD_INPUT, output
    assert "over the 67108864 a document of exporter may hold" in output


@pytest.mark.parametrize("name", ["../outside", "two\nlines", "a/b", ""])
def test_a_manifest_name_that_is_not_one_safe_component_is_refused(folder: Path, name: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps(manifest | {"name": name}))
    code, output = _invoke("verify", folder)
    assert code == ExitCode.BAD_INPUT, output
    assert "has 'name' = " in output and "not a safe name" in output
    assert len(output.strip().splitlines()) == 1


def test_an_unsafe_name_is_refused_even_with_out(tmp_path: Path) -> None:
    """``--out`` decides the folder, but the name still reaches the manifest, the server and log lines."""
    with pytest.raises(UsageError, match="is not a safe name"):
        export_tiny_mlp(tmp_path, name="two\nlines")


def test_a_checkpoint_name_with_spaces_becomes_a_safe_model_name(tmp_path: Path) -> None:
    settings = {"checkpoint": tmp_path / "my model (v2).pt", "spec": SPEC}
    assert ExportOptions.from_settings(settings).model_name == "my_model__v2_"


def test_a_bundle_carries_no_path_of_the_exporting_machine(exported: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    code, output = _invoke("package", exported, "--out", bundle)
    assert code == ExitCode.OK, output
    local = [str(exported.parent), str(Path.cwd())]
    for path in (p for p in bundle.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        assert not any(prefix in text for prefix in local), path.relative_to(bundle)

"""A full disk, a read-only folder and an ``--out`` under a file (issue 21, item 6): the user's environment,
so exit 2 with one line naming the path and the free space, the staging folder removed, an earlier export
intact. Before, TorchScript's C++ writer aborted the process (SIGABRT, exit 134, a staging folder left) and
ONNX ended as "a bug in exporter" (exit 5) or "conversion failed" (exit 3).

The disks are real: small tmpfs mounts (``mount`` needs root; without it these tests skip and say why).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from exporter.backends.registry import backend
from exporter.errors import ConversionError, ExitCode, LoadError, StorageError
from exporter.stages.storage import estimate_bytes, storage_errors
from tests.conftest import export_tiny_mlp
from tests.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
Mount = Callable[..., Path]

# The CLI with the up-front estimate switched off, so the writers themselves meet the full disk.
_WITHOUT_ESTIMATE = (
    "import sys, exporter.pipeline as p\n"
    "p.check_free_space = lambda *args, **kwargs: None\n"
    "from exporter._entry import main\n"
    "sys.argv = ['exporter', *sys.argv[1:]]\n"
    "main()\n"
)


@pytest.fixture
def mount_tmpfs(tmp_path: Path) -> Iterator[Mount]:
    """``mount_tmpfs(size="64k", read_only=False)``: a fresh tmpfs folder, unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str = "4m", *, read_only: bool = False) -> Path:
        target = tmp_path / f"disk{len(mounted)}"
        target.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        completed = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
            capture_output=True,
            text=True,
            check=False,
        )
        if completed.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({completed.stderr.strip() or 'not permitted'})")
        mounted.append(target)
        return target

    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _remount(target: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(target)], capture_output=True, check=True)


def _fill(disk: Path) -> None:
    """Leave no free byte on ``disk``'s filesystem."""
    stat = os.statvfs(disk)
    try:
        with (disk / "filler").open("wb") as handle:
            handle.write(b"\0" * (stat.f_bavail * stat.f_frsize))
            handle.flush()
    except OSError as error:
        assert error.errno == errno.ENOSPC
    assert os.statvfs(disk).f_bavail == 0


def _checkpoint(folder: Path) -> Path:
    path = folder / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), path)
    return path


def _export(
    checkpoint: Path, out: Path, *extra: str, script: str | None = None
) -> subprocess.CompletedProcess[str]:
    program = ["-c", script] if script else ["-m", "exporter"]
    command = [sys.executable, *program, "export", str(checkpoint), "--model", MODELS["mlp"].ref]
    command += ["--input", MODELS["mlp"].inputs[0], "--out", str(out), "--no-benchmark", *extra]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)


def _assert_one_line_exit_2(completed: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert completed.returncode == ExitCode.BAD_INPUT, (completed.returncode, completed.stderr[-3000:])
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr[-3000:]
    assert "Traceback" not in completed.stderr and "frame #" not in completed.stderr
    assert lines[0].startswith("error (write): "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _staging_left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def _digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.slow
def test_a_disk_too_small_is_refused_before_writing_naming_the_path_free_space_and_estimate(
    tmp_path: Path, mount_tmpfs: Mount
) -> None:
    disk = mount_tmpfs("64k")
    completed = _export(_checkpoint(tmp_path), disk / "out", "--to", "onnx")
    line = _assert_one_line_exit_2(completed, "not enough space", str(disk), "free", "needs about")
    assert "kB" in line
    assert sorted(p.name for p in disk.iterdir()) == []  # no staging folder, no lock, no --out


_MID_WRITE_TARGETS = ["torchscript", "onnx", "openvino"] + (
    ["compile"] if shutil.which(os.environ.get("CXX", "g++")) else []
)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["20k", "80k"])
@pytest.mark.parametrize("target", _MID_WRITE_TARGETS)
def test_a_disk_that_fills_while_a_writer_writes_is_exit_2_not_an_abort(
    tmp_path: Path, mount_tmpfs: Mount, target: str, size: str
) -> None:
    """TorchScript's writer used to abort here (exit 134, 50 C++ frames, the staging folder left)."""
    disk = mount_tmpfs(size)
    completed = _export(_checkpoint(tmp_path), disk / "out", "--to", target, script=_WITHOUT_ESTIMATE)
    _assert_one_line_exit_2(completed, str(disk), "free")
    assert _staging_left(disk) == [] and not (disk / "out").exists()


@pytest.mark.slow
def test_a_full_disk_leaves_the_earlier_export_intact_with_force(tmp_path: Path, mount_tmpfs: Mount) -> None:
    disk = mount_tmpfs("4m")
    earlier = export_tiny_mlp(disk)
    before = _digest(earlier)
    _fill(disk)
    for script in (None, _WITHOUT_ESTIMATE):  # refused up front; and when a writer meets the full disk
        completed = _export(disk / "mlp.pt", earlier, "--to", "onnx", "--force", script=script)
        _assert_one_line_exit_2(completed, str(disk), "free")
        assert _staging_left(disk) == []
        assert _digest(earlier) == before


@pytest.mark.slow
def test_a_read_only_out_is_exit_2_and_the_earlier_export_is_intact(
    tmp_path: Path, mount_tmpfs: Mount
) -> None:
    """``chmod 0o555`` does not stop root: the filesystem itself is read-only here."""
    disk = mount_tmpfs("4m")
    earlier = export_tiny_mlp(disk)
    before = _digest(earlier)
    _remount(disk, "ro")
    checkpoint = _checkpoint(tmp_path)
    for out in (earlier, disk / "new" / "out"):
        completed = _export(checkpoint, out, "--to", "onnx", "--force")
        _assert_one_line_exit_2(completed, "read-only", str(disk))
    assert _digest(earlier) == before
    assert _staging_left(disk) == []


@pytest.mark.slow
def test_a_read_only_mount_as_out_parent_is_exit_2(tmp_path: Path, mount_tmpfs: Mount) -> None:
    disk = mount_tmpfs("1m", read_only=True)
    completed = _export(_checkpoint(tmp_path), disk / "out", "--to", "torchscript")
    _assert_one_line_exit_2(completed, "read-only", str(disk / "out"))


@pytest.mark.slow
def test_an_out_whose_parent_is_a_file_is_exit_2(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a folder")
    completed = _export(_checkpoint(tmp_path), tmp_path / "a_file" / "out", "--to", "onnx")
    _assert_one_line_exit_2(completed, "is a file, not a folder", str(tmp_path / "a_file"))


@pytest.mark.slow
def test_a_one_megabyte_disk_takes_a_tiny_onnx_export(tmp_path: Path, mount_tmpfs: Mount) -> None:
    """The estimate is not so careful that it refuses what fits."""
    disk = mount_tmpfs("1m")
    completed = _export(_checkpoint(tmp_path), disk / "out", "--to", "onnx")
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert (disk / "out" / "model.onnx").is_file()


def test_storage_errnos_anywhere_in_the_chain_become_a_storage_error(tmp_path: Path) -> None:
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
        with pytest.raises(StorageError, match=os.strerror(code)) as info, storage_errors(tmp_path / "out"):
            raise OSError(code, os.strerror(code), str(tmp_path / "out" / "model.onnx"))
        assert info.value.exit_code is ExitCode.BAD_INPUT
        assert str(tmp_path / "out" / "model.onnx") in str(info.value)
    with pytest.raises(StorageError, match="No space left"), storage_errors(tmp_path / "out"):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as cause:
            raise ConversionError("ONNX conversion failed") from cause


def test_other_failures_on_a_roomy_disk_pass_through_unchanged(tmp_path: Path) -> None:
    for error in (ValueError("a bug"), ConversionError("no exporter"), LoadError("bad checkpoint")):
        with pytest.raises(type(error)) as info, storage_errors(tmp_path / "out"):
            raise error
        assert info.value is error
    with pytest.raises(LoadError), storage_errors(tmp_path / "out"):  # user errors keep their own stage
        try:
            raise OSError(errno.EACCES, "Permission denied", "model.pt")
        except OSError as cause:
            raise LoadError("checkpoint 'model.pt' cannot be read") from cause


def test_the_estimate_grows_with_the_weights_and_the_targets() -> None:
    small, large = MODELS["mlp"].build(), torch.nn.Linear(1000, 1000)
    weights = 1001 * 1000 * 4
    onnx, torchscript, aoti = backend("onnxruntime"), backend("torchscript"), backend("aotinductor")
    assert estimate_bytes(large, [], [onnx], False) > 2 * weights
    assert estimate_bytes(large, [], [onnx, torchscript], False) > 5 * weights
    assert estimate_bytes(small, [], [onnx], False) < estimate_bytes(small, [], [onnx, aoti], False)
    assert estimate_bytes(object(), [], [onnx], False, fallback=weights) > 2 * weights

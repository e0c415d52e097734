"""Signals, locks, output folders and bugs: a stopped or crashed run leaves nothing half-written behind,
and every way it ends is one line and a documented exit code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ExitCode, UsageError
from exporter.interrupts import Interrupted, blocked_signals, check_interrupted, signals_handled
from exporter.stages import stale_runs
from exporter.stages.records import SilentListener, StageStatus, StageTracker
from exporter.stages.staging import output_lock, remove_stale_staging, staging_dir, stale_run_notes
from tests.models import MODELS

ROOT = Path(__file__).resolve().parents[1]


def _export_command(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    command = [sys.executable, "-m", "exporter", "export", str(checkpoint), "--model", MODELS["mlp"].ref]
    for spec in MODELS["mlp"].inputs:
        command += ["--input", spec]
    return [*command, "--no-benchmark", "--out", str(out), *extra]


def _wait_for_staging(process: subprocess.Popen[str], out: Path, timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in out.parent.glob(f".{out.name}.partial-*") if p.is_dir()]
        if found:
            return found[0]
        assert process.poll() is None, "the export ended before its staging folder was seen"
        time.sleep(0.02)
    raise AssertionError("no staging folder appeared")


def _wait_for_a_recorded_stage(process: subprocess.Popen[str], staging: Path, timeout: float = 120.0) -> None:
    """Until the record beside ``staging`` names the stage running (the staging folder appears a moment
    before the convert stage starts and is noted)."""
    deadline = time.monotonic() + timeout
    record = stale_runs.record_path(staging)
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(record.read_text()).get("stage"):
                return
        assert process.poll() is None, "the export ended before its record named a stage"
        time.sleep(0.02)
    raise AssertionError("the record never named a stage")


def _debris(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_export_exits_128_plus_signal_and_leaves_nothing(
    signum: int, code: int, tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    out = tmp_path / "runs" / "mlp"
    process = subprocess.Popen(
        _export_command(state_dict_checkpoint("mlp"), out),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    staging = _wait_for_staging(process, out)
    assert str(os.getpid()) not in staging.name and str(process.pid) in staging.name
    process.send_signal(signum)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == code, stdout + stderr
    assert "nothing was written" in stderr and "Traceback" not in stderr
    assert not out.exists()
    assert _debris(out) == []


@pytest.mark.slow
def test_a_killed_exports_staging_folder_is_removed_by_the_next_run(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    checkpoint = state_dict_checkpoint("mlp")
    out = tmp_path / "runs" / "mlp"
    process = subprocess.Popen(
        _export_command(checkpoint, out), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    staging = _wait_for_staging(process, out)
    _wait_for_a_recorded_stage(process, staging)
    process.kill()
    process.wait(timeout=60)
    assert staging.is_dir(), "SIGKILL cannot clean up: the folder must still be there for this test"
    completed = subprocess.run(
        _export_command(checkpoint, out), cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert not staging.exists()
    assert (out / "manifest.json").is_file()
    assert _debris(out) == []
    said = " ".join(completed.stdout.split())
    assert f"the previous export into '{out}' (pid {process.pid}" in said
    assert "before it finished" in said and "its staging folder was removed" in said
    assert "stopped in its" in said  # it died after the load stage, and its record named the stage


def test_a_killed_run_is_called_an_out_of_memory_kill_when_the_kernel_counted_one(tmp_path: Path) -> None:
    """The record beside a staging folder keeps the kernel's out-of-memory kill counters at the start; a
    run that died while the counter grew is named an out-of-memory kill (here the counter is taken to
    have been lower then, as it is when the killer struck)."""
    counters = stale_runs._oom_kills()
    if "system" not in counters:
        pytest.skip("this kernel has no oom_kill counter in /proc/vmstat")
    out = tmp_path / "model"
    dead = _dead_pid()
    staging = tmp_path / f".model.partial-{dead}-abc"
    staging.mkdir()
    stale_runs.start_record(staging, dead)
    stale_runs.record_stage(staging, "optimize")
    record = stale_runs.record_path(staging)
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "oom": {"system": counters["system"] - 1}}))
    (note,) = stale_run_notes(out)
    assert f"(pid {dead}, started " in note and "stopped in its optimize stage" in note
    assert "out-of-memory killer" in note and "--max-memory" in note
    assert not staging.exists() and not record.exists()


def test_a_killed_run_without_an_out_of_memory_kill_is_not_called_one(tmp_path: Path) -> None:
    out = tmp_path / "model"
    dead = _dead_pid()
    staging = tmp_path / f".model.partial-{dead}-abc"
    staging.mkdir()
    stale_runs.start_record(staging, dead)
    (note,) = stale_run_notes(out)
    if "system" in stale_runs._oom_kills():
        assert "the kernel counted no out-of-memory kill meanwhile" in note
    assert "before it finished" in note and not staging.exists()


def test_stale_staging_of_a_live_process_is_kept(tmp_path: Path) -> None:
    out = tmp_path / "model"
    live = tmp_path / f".model.partial-{os.getpid()}-abc"
    dead_pid = _dead_pid()
    dead = tmp_path / f".model.partial-{dead_pid}-def"
    old = tmp_path / f".model.old-{dead_pid}-ghi"
    other = tmp_path / f".other.partial-{dead_pid}-jkl"
    for folder in (live, dead, old, other):
        folder.mkdir()
    removed = remove_stale_staging(out)
    assert sorted(removed) == sorted([dead, old])
    assert live.is_dir() and other.is_dir()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_second_export_into_a_locked_folder_fails_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from exporter.stages.staging import output_lock\n"
            f"with output_lock(Path({str(out)!r})):\n    print('locked', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=rf"another exporter \(pid {holder.pid}\)"), output_lock(out):
            pass
    finally:
        holder.kill()
        holder.communicate()
    with output_lock(out):  # the kernel dropped the dead holder's lock
        assert (tmp_path / ".model.lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".model.lock").exists()


def test_the_cli_refuses_a_locked_output_folder_with_exit_2(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    out = tmp_path / "model"
    with output_lock(out):
        result = CliRunner().invoke(app, _export_command(state_dict_checkpoint("mlp"), out)[3:])
    assert result.exit_code == 2, result.output
    assert f"(pid {os.getpid()})" in result.output
    assert not out.exists()


@pytest.mark.parametrize("where", ["cwd", "parent_of_cwd", "holds_checkpoint"])
def test_an_output_folder_whose_replacement_would_delete_what_matters_is_refused_up_front(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    checkpoint = state_dict_checkpoint("mlp")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = {"cwd": Path(), "parent_of_cwd": Path(".."), "holds_checkpoint": checkpoint.parent}[where]
    started = time.perf_counter()
    result = CliRunner().invoke(app, [*_export_command(checkpoint, out)[3:], "--force"])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and (
        "working directory" in result.output or "would delete" in result.output
    )
    assert checkpoint.is_file()
    assert time.perf_counter() - started < 30, "refused only after a run"


def _folder_contents(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_a_signal_before_the_swap_leaves_the_old_folder_whole(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with signals_handled(), pytest.raises(Interrupted) as caught, staging_dir(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
        with blocked_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            held = True
        pytest.fail("the held signal was not raised when the block ended")
    assert held and caught.value.exit_code is ExitCode.TERMINATED
    assert _folder_contents(out) == {"old.txt": "old"}  # the old folder, nothing of the new one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging or retired folder left


def _swap_with_a_signal_between_the_renames(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Replace ``model`` (holding old.txt) by a staged folder (holding new.txt), sending SIGTERM right after
    the old folder is moved aside and before the new one is moved in; return ``model``."""
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    rename = Path.rename
    out_during_the_swap: list[bool] = []

    def rename_then_signal(self: Path, target: str | Path) -> Path:
        moved = rename(self, target)
        if Path(target).name == "model" and Path(target).parent != tmp_path:  # the old folder, set aside
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            out_during_the_swap.append(out.exists())
        return moved

    monkeypatch.setattr(Path, "rename", rename_then_signal)
    with signals_handled(), pytest.raises(Interrupted) as caught, staging_dir(out, force=True) as staging:
        (staging / "new.txt").write_text("new")
    monkeypatch.undo()
    assert out_during_the_swap == [False], "the signal was not sent between the two renames"
    assert caught.value.exit_code is ExitCode.TERMINATED
    return out


def test_a_signal_during_the_swap_is_held_until_the_new_folder_is_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = _swap_with_a_signal_between_the_renames(tmp_path, monkeypatch)
    assert _folder_contents(out) == {"new.txt": "new"}  # the new folder, nothing of the old one
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".model.partial")] == []


def test_a_signal_during_the_swap_leaves_no_retired_folder_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _swap_with_a_signal_between_the_renames(tmp_path, monkeypatch)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_an_unexpected_exception_is_exit_5_with_a_traceback_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug in exporter")

    monkeypatch.setattr("exporter.cli.export", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    result = CliRunner().invoke(app, _export_command(state_dict_checkpoint("mlp"), tmp_path / "o")[3:])
    assert result.exit_code == ExitCode.INTERNAL_ERROR == 5, result.output
    line = next(line for line in result.output.splitlines() if "internal error" in line)
    log = Path(line.split("traceback written to ")[1].split(" (")[0])
    assert log.is_file() and log.parent == tmp_path
    text = log.read_text()
    assert "Traceback" in text and "ZeroDivisionError: a bug in exporter" in text
    assert "Traceback" not in result.output


def test_bracketed_text_in_messages_is_printed_as_is(tmp_path: Path) -> None:
    missing = tmp_path / "[/]weird[bold].pt"
    result = CliRunner().invoke(app, ["export", str(missing), "--input", "x:float32:1"])
    assert result.exit_code == 2, result.output
    assert "[/]weird[bold].pt" in result.output
    assert "MarkupError" not in result.output and "Traceback" not in result.output
    recipe = tmp_path / "r.toml"
    recipe.write_text('schema_version = 1\n[verify]\natol = "x"\n')
    result = CliRunner().invoke(app, ["export", "--recipe", str(recipe)])
    assert result.exit_code == 2, result.output
    assert "[verify].atol" in result.output.replace("\n", "")


_DANGLING_ALTSTACK_SCRIPT = """
import ctypes, gc, os, signal, sys, time
import numpy as np
import openvino as ov
import openvino.opset13 as ops
from exporter.interrupts import Interrupted, install_signal_handlers

class Stack(ctypes.Structure):
    _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

def model():
    x = ops.parameter([1, 4], np.float32, name="x")
    return ov.Model([ops.relu(x)], [x])

first_core = ov.Core()
first = first_core.compile_model(model(), "CPU")
second_core = ov.Core()
second = second_core.compile_model(model(), "CPU")
del first, first_core  # the first plugin instance dies first: its alternate stack is unmapped ...
gc.collect()
del second, second_core  # ... and the second restores it as the main thread's alternate stack
gc.collect()
stack = Stack()
ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack))
mapped = any(
    int(low, 16) <= (stack.sp or 0) < int(high, 16)
    for low, high in (line.split()[0].split("-") for line in open("/proc/self/maps"))
)
print("altstack", "disabled" if stack.flags & 2 else ("mapped" if mapped else "unmapped"), flush=True)
if sys.argv[1] == "exporter":
    install_signal_handlers()
else:
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
try:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(10)
except Interrupted as interrupt:
    sys.exit(int(interrupt.exit_code))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a Linux hazard")
def test_sigterm_after_openvino_left_a_dangling_alternate_stack_still_exits_143() -> None:
    """The fault-injection test's SIGSEGV, made deterministic: OpenVINO's CPU plugin leaves the main
    thread's alternate signal stack pointing at unmapped memory when two plugin instances die in creation
    order (NNCF and our runners each make their own ``ov.Core``). Python's own handlers would have the
    kernel write the signal frame there (a crash, or worse, a write over whatever is mapped there now);
    exporter's handlers keep the frame on the thread's stack."""

    def run(handlers: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _DANGLING_ALTSTACK_SCRIPT, handlers],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    plain = run("python")
    assert "altstack unmapped" in plain.stdout, (
        "OpenVINO no longer leaves a dangling alternate signal stack; frames_on_thread_stack may be "
        f"unneeded now: {plain.stdout}{plain.stderr[-500:]}"
    )
    assert plain.returncode == -signal.SIGSEGV, "the hazard this test guards against did not show"

    fixed = run("exporter")
    assert "altstack unmapped" in fixed.stdout
    assert fixed.returncode == 143, fixed.stdout + fixed.stderr[-2000:]
    assert "Traceback" not in fixed.stderr


class _SendsSigtermWhenCollected:
    """Its finalizer is where Python runs the handler, and Python drops what a finalizer raises."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(10_000):
            pass


def test_an_interrupt_a_finalizer_swallowed_is_raised_again_at_the_next_checkpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dropped: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: dropped.append(unraisable.exc_value))
    with signals_handled():
        _SendsSigtermWhenCollected()
        assert [type(error) for error in dropped] == [Interrupted], "the handler did not run in __del__"
        with pytest.raises(Interrupted) as caught:
            check_interrupted()
        assert caught.value.exit_code is ExitCode.TERMINATED
    check_interrupted()  # the block is over: nothing is pending any more


def test_a_stage_in_which_an_interrupt_was_swallowed_ends_failed_and_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: None)
    tracker = StageTracker(SilentListener())
    with signals_handled(), pytest.raises(Interrupted), tracker.run("convert"):
        _SendsSigtermWhenCollected()
    record = tracker.records["convert"]
    assert (record.status, record.detail) == (StageStatus.FAILED, "interrupted")


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (exporter's: Python installs none of its own)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize(
    ("signum", "code", "line"),
    [
        (signal.SIGINT, 130, "interrupted: nothing was written"),
        (signal.SIGTERM, 143, "terminated (SIGTERM): nothing was written"),
    ],
)
def test_a_signal_while_the_cli_still_imports_is_one_line_and_128_plus_signal(
    signum: int, code: int, line: str
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--help"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not _catches_sigterm(process.pid):
        assert process.poll() is None and time.monotonic() < deadline, "the handlers never came"
        time.sleep(0.002)
    process.send_signal(signum)  # the CLI's imports take about 2 s: this lands inside them
    stdout, stderr = process.communicate(timeout=60)
    assert "Usage" not in stdout, "the signal came after the CLI had started"
    assert process.returncode == code, stderr
    assert stderr.strip().splitlines() == [line]

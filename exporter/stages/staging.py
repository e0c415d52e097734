"""Artifacts stage: build the output folder beside its destination and move it into place only when
complete, so a failed or interrupted run never leaves a half-written folder behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from exporter.documents.files import MANIFEST_SCHEMA_VERSION, read_document
from exporter.errors import UsageError
from exporter.interrupts import blocked_signals
from exporter.loading.checkpoint import sha256_file
from exporter.quantize.calibration import SampleSet
from exporter.stages.stale_runs import describe_stale_run, end_record, start_record
from exporter.verify.parity import GoldenCase

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "check_output_dir",
    "file_inventory",
    "jsonable",
    "output_lock",
    "read_document",
    "remove_stale_staging",
    "staging_dir",
    "stale_run_notes",
    "write_golden",
    "write_json",
    "write_sample_golden",
]


def check_output_dir(out: Path, force: bool, keep: Sequence[Path] = ()) -> None:
    """Refuse an output folder that cannot or must not be replaced; checked before any work is done.

    Replacing ``out`` deletes what is in it, so it may not be the working directory, hold it, or hold any
    of ``keep`` (the checkpoint, say); an existing non-empty folder needs ``force``.
    """
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a folder")
    resolved = out.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise UsageError(
            f"--out '{out}' is the working directory or holds it, and exporter replaces its --out folder; "
            "pass a new folder such as artifacts/<name>"
        )
    for path in keep:
        if resolved == path.resolve() or resolved in path.resolve().parents:
            raise UsageError(
                f"--out '{out}' holds '{path}', which replacing the folder would delete; pass another --out"
            )
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"output folder '{out}' already exists and is not empty; pass --force to replace it")


_PID_TAG = re.compile(r"^\.(?P<name>.+)\.(?:partial|old)-(?P<pid>\d+)-")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: Path) -> list[Path]:
    """Remove staging folders of ``out`` left by a process that is gone (SIGKILL, power loss)."""
    return [staging for staging, _ in _remove_stale(out)]


def stale_run_notes(out: Path) -> list[str]:
    """Remove what runs into ``out`` that were killed left behind, and say of each what became of it
    (``stale_runs.describe_stale_run``: the stage it was in, whether the out-of-memory killer did it)."""
    return [describe_stale_run(staging, out, pid) for staging, pid in _remove_stale(out)]


def _remove_stale(out: Path) -> list[tuple[Path, int]]:
    removed: list[tuple[Path, int]] = []
    if not out.parent.is_dir():
        return removed
    for candidate in out.parent.glob(f".{glob.escape(out.name)}.*-*"):
        match = _PID_TAG.match(candidate.name)
        if not match or match["name"] != out.name or not candidate.is_dir() or candidate.is_symlink():
            continue
        if not _process_alive(int(match["pid"])):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append((candidate, int(match["pid"])))
    return removed


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside ``out`` so a second export into the same folder fails at once.

    The lock is an advisory ``flock``, which the kernel drops when its holder dies, so a killed run never
    blocks the next one; the file records the holder's pid for the message.

    Raises:
        UsageError: another process holds the lock (the message names its pid).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".{out.name}.lock"
    while True:
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise UsageError(
                f"output folder '{out}' is being written by another exporter (pid {holder}); wait for it "
                "to finish or pass another --out"
            ) from None
        # The holder before us may have removed the file after we opened it: lock the file on disk.
        if path.exists() and path.stat().st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        path.unlink(missing_ok=True)
        handle.close()


@contextlib.contextmanager
def staging_dir(
    out: Path, force: bool, keep: Sequence[Path] = (), on_stale: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out``, on failure it is removed.

    The old folder is only moved aside after the new one is complete, then deleted; the two renames run
    with SIGINT/SIGTERM held, so ``out`` is always either the old folder or the new one. Staging folders
    carry the owner's pid and a record beside them (``stale_runs``), so a later run removes those of a
    process that was killed and tells ``on_stale`` what became of it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    for note in stale_run_notes(out):
        if on_stale is not None:
            on_stale(note)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    staging.chmod(0o755)
    start_record(staging, os.getpid())
    retired: Path | None = None
    try:
        yield staging
        check_output_dir(out, force, keep)
        with blocked_signals():  # a signal held here is raised on leaving: the old folder goes in finally
            if out.exists():
                retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
                out.rename(retired / out.name)
            staging.rename(out)
    finally:
        if retired is not None and not out.exists() and (retired / out.name).exists():
            (retired / out.name).rename(out)  # the swap failed half way: the earlier export goes back
        for leftover in (staging, retired):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)
        end_record(staging)


def write_golden(folder: Path, golden: Sequence[GoldenCase]) -> list[dict[str, Any]]:
    """Write ``<case>.inputs.npz`` and ``<case>.outputs.npz`` per shape case; return the manifest's index."""
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for item in golden:
        inputs_file = folder / f"{item.file_stem}.inputs.npz"
        outputs_file = folder / f"{item.file_stem}.outputs.npz"
        np.savez(inputs_file, **item.inputs)  # type: ignore[arg-type]
        np.savez(outputs_file, **dict(zip(item.output_names, item.outputs, strict=True)))  # type: ignore[arg-type]
        index.append(
            {
                "case": item.case.name,
                "sizes": item.case.sizes,
                "seed": item.seed,
                "inputs": f"{folder.name}/{inputs_file.name}",
                "outputs": f"{folder.name}/{outputs_file.name}",
                "output_names": item.output_names,
            }
        )
    return index


def write_sample_golden(folder: Path, stem: str, samples: SampleSet, limit: int = 16) -> dict[str, Any]:
    """Keep (up to ``limit``) int8 evaluation inputs, keyed ``<input>.<index>``, for later re-checks."""
    folder.mkdir(parents=True, exist_ok=True)
    kept = samples.samples[:limit]
    arrays = {f"{name}.{index}": array for index, sample in enumerate(kept) for name, array in sample.items()}
    np.savez(folder / f"{stem}.inputs.npz", **arrays)  # type: ignore[arg-type]
    return {
        "case": stem,
        "samples": len(kept),
        "inputs": f"{folder.name}/{stem}.inputs.npz",
        "source": samples.source,
    }


def file_inventory(root: Path, exclude: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file under ``root`` (relative POSIX paths), for the manifest."""
    return {
        path.relative_to(root).as_posix(): {"sha256": sha256_file(path), "bytes": path.stat().st_size}
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).as_posix() not in exclude
    }


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False, default=_jsonable) + "\n")


def jsonable(payload: dict[str, Any]) -> dict[str, Any]:
    """``payload`` as a reader of ``write_json``'s file gets it back (paths as strings, tuples as lists)."""
    result: dict[str, Any] = json.loads(json.dumps(payload, default=_jsonable))
    return result


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")

"""What became of an export that never finished: each staging folder has a small record beside it (the
owner's pid, when it started, the stage it was in, the kernel's out-of-memory kill counters then), so the
next run into the same folder can say that the last one was killed, in which stage, and whether the
kernel's out-of-memory killer did it, instead of silently sweeping its leftovers away.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from pathlib import Path
from typing import Any

__all__ = ["describe_stale_run", "end_record", "record_stage", "start_record"]

_LIMIT = 64 * 1024


def record_path(staging: Path) -> Path:
    """``.<out>.partial-<pid>-<random>.run.json`` beside the staging folder (not in it: the folder becomes
    the artifacts folder, whose every file the manifest lists)."""
    return staging.with_name(f"{staging.name}.run.json")


def _oom_kills() -> dict[str, int]:
    """The kernel's out-of-memory kill counters: system-wide (``/proc/vmstat``) and this cgroup's."""
    counters: dict[str, int] = {}
    for name, path in (("system", "/proc/vmstat"), ("cgroup", "/sys/fs/cgroup/memory.events")):
        try:
            found = re.search(r"^oom_kill (\d+)$", Path(path).read_text(), re.MULTILINE)
        except OSError:
            continue
        if found:
            counters[name] = int(found[1])
    return counters


def start_record(staging: Path, pid: int) -> None:
    _write(record_path(staging), {"pid": pid, "started": time.time(), "stage": None, "oom": _oom_kills()})


def record_stage(staging: Path, stage: str) -> None:
    """Note the stage now running (read back only if this process dies before the end)."""
    path = record_path(staging)
    record = _read(path)
    if record is not None:
        _write(path, {**record, "stage": stage})


def end_record(staging: Path) -> None:
    record_path(staging).unlink(missing_ok=True)


def describe_stale_run(staging: Path, out: Path, pid: int) -> str:
    """One line on the run that left ``staging`` (its process ``pid`` is gone); its record is removed."""
    path = record_path(staging)
    record = _read(path) or {}
    path.unlink(missing_ok=True)
    started = record.get("started")
    when = f", started {time.strftime('%Y-%m-%d %H:%M', time.localtime(started))}" if started else ""
    stage = f" in its {record['stage']} stage" if isinstance(record.get("stage"), str) else ""
    cause = _cause(pid, record.get("oom"))
    return (
        f"the previous export into '{out}' (pid {pid}{when}) stopped{stage} before it finished, {cause}; "
        f"its staging folder was removed"
    )


def _cause(pid: int, before: Any) -> str:
    if _kernel_log_names(pid):
        return (
            "killed by the kernel's out-of-memory killer (kernel log): see the memory estimate in the load "
            "stage, and pass --max-memory below the machine's memory or drop the costliest stage"
        )
    if isinstance(before, dict):
        now = _oom_kills()
        grew = [
            name for name, count in now.items() if isinstance(before.get(name), int) and count > before[name]
        ]
        if grew:
            return (
                "most likely killed by the kernel's out-of-memory killer (it killed a process while that "
                "run was going): pass --max-memory below the machine's memory or drop the costliest stage"
            )
        if now:
            return "killed by a signal or a power loss (the kernel counted no out-of-memory kill meanwhile)"
    return "killed by a signal, the out-of-memory killer or a power loss"


def _kernel_log_names(pid: int) -> bool:
    """Whether the kernel log (readable by root, or where ``dmesg_restrict`` is 0) says it killed ``pid``
    for memory."""
    try:
        log = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return re.search(rf"(Out of memory|oom-kill|Memory cgroup out of memory).*\b{pid}\b", log) is not None


def _read(path: Path) -> dict[str, Any] | None:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > _LIMIT:
            return None
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write(path: Path, record: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # a courtesy to the next run; a full disk is reported elsewhere
        path.write_text(json.dumps(record))

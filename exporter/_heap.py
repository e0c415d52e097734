"""Memory a process freed, handed back to the system.

glibc keeps freed heap pages in the process: a quantizer's or an optimize pass's protobuf (the weights
included), an exporter's traced copies, a closed ONNX Runtime session's buffers (1.3 GiB still resident
after closing a session of a 0.94 GiB model, 0.26 GiB after ``malloc_trim``). The next stage's or
session's peak would then stack on them.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import mmap
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "COLLECT_ABOVE_BYTES",
    "collect_for",
    "current_rss",
    "page_out",
    "page_out_file",
    "peak_rss",
    "release_freed_memory",
    "reset_peak_rss",
    "trim_heap",
]


COLLECT_ABOVE_BYTES = 64 * 2**20
"""Models with fewer float32 weight bytes than this skip the full collection: on them it frees little and
costs a quarter second each time (5 of them took half of a tiny MLP's export)."""

_COLLECT = {"enabled": True}


def collect_for(weights: int) -> None:
    """Whether :func:`release_freed_memory` collects garbage in this run, from the model's weight bytes."""
    _COLLECT["enabled"] = weights >= COLLECT_ABOVE_BYTES


def release_freed_memory() -> None:
    """Collect garbage (cycles: an exported program's graph), then return freed heap pages to the system
    (:func:`trim_heap`). The collection is skipped for small models (:func:`collect_for`)."""
    if _COLLECT["enabled"]:
        gc.collect()
    trim_heap()


def trim_heap() -> None:
    """Return freed heap pages to the system (glibc's ``malloc_trim``; a no-op off glibc, where musl has no
    such call). Without the collection: for a runner whose session was just dropped, freed by its count."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).malloc_trim(0)


MADV_PAGEOUT = 21
"""``madvise`` advice (Linux 5.4+): reclaim these pages now. Clean file-backed pages are dropped (read back
from the file on the next touch); anonymous or modified ones go to swap, or stay without it: no data lost."""


def page_out(module: torch.nn.Module) -> int:
    """Hand back to the kernel the resident pages of ``module``'s weights, and return how many bytes were
    advised. The weights are the checkpoint's memory-mapped pages (``loading/assign.py``): the golden
    cases and the exporters touch them all, after which the eager model sits idle through conversion,
    verification, optimization and int8, holding a copy of the weights that each runtime also holds. The
    kernel would reclaim them under pressure anyway; paging them out at each stage boundary keeps the
    export's footprint what its current stage needs. Whole pages inside each storage only; a no-op where
    ``madvise`` or the advice is missing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    page = mmap.PAGESIZE
    advised = 0
    seen: set[int] = set()
    for tensor in [*module.parameters(), *module.buffers()]:
        storage = tensor.untyped_storage()
        pointer, size = storage.data_ptr(), storage.nbytes()
        if pointer in seen or tensor.device.type != "cpu":
            continue
        seen.add(pointer)
        start, end = -(-pointer // page) * page, (pointer + size) // page * page
        if (
            end > start
            and libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT) == 0
        ):
            advised += end - start
    return advised


def page_out_file(path: Path) -> int:
    """Advise ``MADV_PAGEOUT`` on every mapping of ``path`` in this process (read from
    ``/proc/self/maps``) and return the bytes advised. OpenVINO maps an IR's ``.bin`` and, on the first
    inference, repacks the weights into buffers of its own; the mapped originals then sit idle, a second
    resident copy of the weights. Pages read again are faulted back from the file, exact."""
    try:
        target = str(path.resolve())
        maps = Path("/proc/self/maps").read_text().splitlines()
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return 0
    advised = 0
    for line in maps:
        fields = line.split(maxsplit=5)
        if len(fields) < 6 or fields[5] != target:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        if libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_PAGEOUT) == 0:
            advised += end - start
    return advised


def current_rss() -> int:
    """This process's resident set now (``VmRSS``), in bytes."""
    return _status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Start a new peak: Linux resets the process's high-water mark (``VmHWM``) to its current RSS when
    ``5`` is written to ``/proc/self/clear_refs``. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident set since the last :func:`reset_peak_rss` (``VmHWM``), in bytes."""
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    try:
        lines: Iterable[str] = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(f"{field}:")), 0)

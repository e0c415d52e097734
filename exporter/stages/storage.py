"""The disk an export writes to: checked before writing, and its failures reported as the user's environment.

A full disk, a read-only folder or an ``--out`` whose parent is a file is the user's to fix (exit 2, one
line naming the path and the free space), not a bug in exporter (exit 5) nor a model that will not convert
(exit 3), which is how they used to end. Worse, TorchScript's and AOTInductor's C++ archive writer aborts
the process (SIGABRT, exit 134, a staging folder left) when a write fails: its destructor throws while
finishing the zip. Those archives are therefore written to memory first and then to disk by Python, whose
``OSError`` is caught like any other.

So: ``check_writable`` before the output lock is taken, ``check_free_space`` once the model is loaded (an
estimate from its weights, before the staging folder fills), and ``storage_errors`` around everything that
writes, which turns ``ENOSPC``/``EDQUOT``/``EROFS``/``EACCES``/``EPERM`` (or a C++ writer's vaguer failure
on a full or read-only filesystem) into a ``StorageError``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

from exporter.errors import ConversionError, ExporterError, StorageError, first_line

__all__ = [
    "check_free_space",
    "check_writable",
    "estimate_bytes",
    "storage_errors",
    "write_through_memory",
]

STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG})
_NEARLY_FULL = 1 << 20
"""Below this much free space, a C++ writer's unexplained failure is taken to be the disk's."""
_REPORTS = 256 << 10
"""report.json/.md/.html and manifest.json of a small model (about 70 kB for a 16-feature MLP)."""
_MARGIN = 1.1


def check_writable(out: Path) -> None:
    """``--out`` can be created: its nearest existing ancestor is a writable folder on a writable filesystem.

    Raises:
        StorageError: a file where a folder should be, a read-only filesystem, or no write permission.
    """
    where = _existing_ancestor(out.parent)
    if not where.is_dir():
        raise StorageError(f"--out '{out}' cannot be created: '{where}' is a file, not a folder")
    if _read_only(where):
        raise StorageError(
            f"--out '{out}' is on a read-only filesystem ('{where}', {_free_text(where)}); pass an --out on "
            "a writable disk"
        )
    if not os.access(where, os.W_OK | os.X_OK):
        raise StorageError(
            f"--out '{out}' cannot be written: this user may not write to '{where}'; pass another --out"
        )


class Staged(Protocol):
    """What a backend stages (``BackendSpec``'s fields)."""

    @property
    def staging_copies(self) -> int: ...
    @property
    def staging_extra_bytes(self) -> int: ...


def estimate_bytes(
    module: Any, golden: Sequence[Any], backends: Sequence[Staged], quantize: bool, fallback: int = 0
) -> int:
    """About what the staging folder will hold at once: the weights once per copy each backend keeps, the
    golden files, the reports, what a backend stages whatever the weights (AOTInductor's library);
    ``fallback`` (the checkpoint's size) when the module's tensors cannot be counted. A lower bound more
    than a promise: a write that still fails is reported by ``storage_errors``.
    """
    try:
        tensors = itertools.chain(module.parameters(), module.buffers())
        weights = sum(t.numel() * t.element_size() for t in tensors)
    except Exception:  # a module kind without parameters(): the checkpoint's size is the next best figure
        weights = fallback
    copies = sum(b.staging_copies for b in backends) + (1 if quantize else 0)
    golden_bytes = sum(
        getattr(array, "nbytes", 0)
        for case in golden
        for array in (*getattr(case, "inputs", {}).values(), *getattr(case, "outputs", ()))
    )
    fixed = _REPORTS + sum(b.staging_extra_bytes for b in backends)
    return int((weights * copies + golden_bytes + fixed) * _MARGIN)


def check_free_space(out: Path, needed: int) -> None:
    """Refuse to start writing what cannot fit (the staging folder is beside ``out``, on its filesystem).

    Raises:
        StorageError: less than ``needed`` bytes free; the message names the path, the free space and the
            estimate.
    """
    where = _existing_ancestor(out.parent)
    free = _free_bytes(where)
    if free is not None and free < needed:
        raise StorageError(
            f"not enough space for --out '{out}': {_size(free)} free on the filesystem of '{where}', and "
            f"this export needs about {_size(needed)} (the model's weights per artifact, golden files and "
            "reports); free some space or pass an --out on another disk"
        )


@contextlib.contextmanager
def storage_errors(out: Path) -> Iterator[None]:
    """Turn a failed write under ``out`` into one ``StorageError`` line (exit 2).

    Used inside the staging folder's context, so the free space it reports is the space while the folder
    still filled the disk. An ``OSError`` with a storage errno anywhere in the exception's chain (a
    ``ConversionError`` whose cause was a full disk, say) is the disk's; so is any other failure of an
    export or conversion while the filesystem is read-only or nearly full (OpenVINO's and ONNX Runtime's
    C++ writers say only "iostream error" or "Protobuf serialization failed").
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as error:
        if isinstance(error, ExporterError) and not isinstance(error, ConversionError):
            raise
        mapped = _as_storage_error(error, out)
        if mapped is None:
            raise
        raise mapped from error


DIRECT_WRITE_BYTES = 256 << 20
"""Archives expected past this size are written straight to disk when the disk has room for them twice
over: holding a multi-GB archive in memory as well costs another copy of the weights."""


def write_through_memory(path: Path, save: Callable[[IO[bytes]], object], expected: int = 0) -> None:
    """``save`` into memory, then write the bytes with Python, so a full disk is an ``OSError`` here and
    not an abort inside a C++ writer (``torch.jit.save``, ``aoti_compile_and_package``).

    An archive ``expected`` to be big is saved straight into ``path`` when the disk has twice its size free
    (the check that keeps the C++ writer from meeting a full disk); memory is the scarcer of the two then.
    """
    free = _free_bytes(_existing_ancestor(path.parent))
    if expected > DIRECT_WRITE_BYTES and free is not None and free > 2 * expected:
        with path.open("wb") as handle:
            save(handle)
        return
    buffer = io.BytesIO()
    save(buffer)
    path.write_bytes(buffer.getbuffer())


def _as_storage_error(error: BaseException, out: Path) -> StorageError | None:
    cause = _storage_oserror(error)
    if cause is not None:
        path = Path(os.fsdecode(cause.filename)) if isinstance(cause.filename, str | bytes) else out
        reason = cause.strerror or errno.errorcode.get(cause.errno or 0, "write failed")
        return StorageError(f"cannot write '{path}': {reason} ({_free_text(path)}); {_FIX}")
    where = _existing_ancestor(out.parent)
    text = str(error)
    said = next((m for m in _STORAGE_MESSAGES if m in text), None)
    if said is not None:  # an errno flattened into text (ONNX's exporters, OpenVINO), with its cause lost
        return StorageError(f"cannot write into '{out}': {said} ({_free_text(where)}); {_FIX}")
    free = _free_bytes(where)
    read_only = _read_only(where)
    if read_only or (free is not None and free < _NEARLY_FULL):
        state = "is read-only" if read_only else f"has {_size(free or 0)} free"
        return StorageError(
            f"writing into '{out}' failed ({type(error).__name__}: {first_line(error, 160)}) and its "
            f"filesystem ('{where}') {state}; {_FIX}"
        )
    return None


_FIX = "free some space or pass an --out on a writable disk"
_STORAGE_MESSAGES = tuple(os.strerror(code) for code in sorted(STORAGE_ERRNOS))


def _storage_oserror(error: BaseException) -> OSError | None:
    """The first ``OSError`` with a storage errno in ``error``'s cause/context chain."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _existing_ancestor(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a file there is the caller's to refuse)."""
    path = path.absolute()
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:
            continue
    return Path(path.anchor)


def _free_bytes(path: Path) -> int | None:
    try:
        stat = os.statvfs(_existing_ancestor(path))
    except OSError:
        return None
    return stat.f_bavail * stat.f_frsize


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(_existing_ancestor(path)).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _free_text(path: Path) -> str:
    free = _free_bytes(path)
    return "free space unknown" if free is None else f"{_size(free)} free on its filesystem"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"

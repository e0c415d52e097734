"""The external-data files an ONNX model names, and the check that they are files its manifest hashed.

A model saved with external data keeps its weights in one ``<file>.data`` beside it; ONNX Runtime opens
whatever file each tensor's ``location`` names. In a folder from elsewhere that name could leave the folder
(``../x``, an absolute path), follow a planted link, name a file the manifest never hashed, or be ONNX
Runtime's in-memory marker (``*/_ORT_MEM_ADDR_/*``, which reads process memory at the given offset). So
``verify``, ``serve`` and ``package`` read every location first and refuse the model, in one line, unless
each is a plain file name beside the model that the manifest lists with a sha256.

The locations are read from the protobuf wire format of a memory-mapped file, not with ``onnx``: a serving
bundle installs only onnxruntime, and a self-contained 2 GB model would cost 2 GB to parse while its
``raw_data`` fields are skipped here without being read (``exporter.onnx_wire`` reads the format). Every
place a tensor may sit is walked (initializers, sparse initializers, node attributes, subgraphs, functions,
training graphs), since ONNX Runtime loads external data for all of them.
"""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable, Collection
from pathlib import Path, PurePosixPath
from typing import TypeVar

from exporter.errors import UsageError
from exporter.loading.safe_paths import inside_folder
from exporter.onnx_wire import MAX_DEPTH, SCHEMA, Damaged, messages, string_entry, without_values

__all__ = ["SCHEMA", "UnreadableModel", "check_external_data", "external_locations", "graph_without_weights"]

_T = TypeVar("_T")

_ORT_MEMORY_MARKER = "_ORT_MEM_ADDR_"


class UnreadableModel(UsageError):
    """A model file that is not a well-formed ONNX protobuf: its external data cannot be vouched for, so it
    is not loaded (``verify`` reports it as a failed check; the hash check says whether it was modified)."""


def _walk(data: memoryview) -> set[str]:
    locations: set[str] = set()
    pending = [("ModelProto", 0, len(data), 0)]
    while pending:
        kind, start, end, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise Damaged(f"messages nest more than {MAX_DEPTH} deep")
        children = SCHEMA[kind]
        for number, a, b in messages(data, start, end):
            child = children.get(number)
            if child == "StringStringEntryProto":
                key, value = string_entry(data, a, b, errors="replace")
                if key == "location":
                    locations.add(value)
            elif child is not None:
                pending.append((child, a, b, depth + 1))
    return locations


def _read_mapped(path: Path, reader: Callable[[memoryview], _T]) -> _T:
    """``reader`` applied to ``path`` mapped read-only: only the pages it touches are read (a tensor's
    values are skipped, not loaded). ``path`` is opened without following a link or blocking."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)
    except OSError as error:
        raise UsageError(f"'{path}' cannot be opened: {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"'{path}' is not a regular file; refusing to read it")
        if info.st_size == 0:
            return reader(memoryview(b""))
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                return reader(view)
            except Damaged as error:
                message = f"'{path.name}' is not an ONNX model that can be read: {error}"
                raise UnreadableModel(message) from None
            finally:
                view.release()


def external_locations(path: Path) -> set[str]:
    """Every external-data location ``path``'s tensors name (as written: relative to the model's folder);
    empty for a self-contained model. The file is mapped, not read: its weights are never loaded.

    Raises:
        UsageError: ``path`` is a link or not a regular file, or is not an ONNX protobuf.
    """
    return _read_mapped(path, _walk)


def graph_without_weights(path: Path) -> bytes:
    """``path``'s ``ModelProto`` serialized without any tensor's values (dims, names, types, nodes and
    external-data entries kept): what reads a graph's inputs, outputs and operators of a self-contained
    2 GB model in the memory of its graph, where ``onnx.load(load_external_data=False)`` holds it all.

    Raises:
        UsageError: as ``external_locations``.
    """
    return _read_mapped(path, lambda view: without_values(view, 0, len(view), "ModelProto"))


def check_external_data(folder: Path, name: str, listed: Collection[str], named_by: str) -> list[str]:
    """The external-data files (folder-relative names) of the ONNX model ``folder/name``, once each is
    known to be safe to hand to ONNX Runtime: a plain file name beside the model (no folder part, no
    ``..``, not absolute, not ONNX Runtime's in-memory marker), not a link nor anything but a regular
    file, and one of ``listed`` (the files whose sha256 the caller checks). Whether each is present is
    the caller's to say (``verify`` counts a missing file as a failed check, ``serve`` refuses to start).

    Raises:
        UsageError: one line naming the model and the location it refuses.
    """
    model = inside_folder(folder, name, named_by)
    parent = PurePosixPath(name).parent
    names = []
    for location in sorted(external_locations(model)):
        shown = location if location.isprintable() else repr(location)[1:-1]
        refused = f"{named_by}: '{name}' keeps weights in '{shown}'"
        if _ORT_MEMORY_MARKER in location or "*" in location:
            raise UsageError(f"{refused}, ONNX Runtime's in-memory marker, not a file; refusing to load it")
        if PurePosixPath(location).name != location or location in (".", "..") or "\\" in location:
            raise UsageError(
                f"{refused}, which is not a file name beside the model (outside the folder or in another "
                "one); refusing to load it"
            )
        relative = (parent / location).as_posix()
        inside_folder(folder, relative, named_by)
        if relative not in listed:
            raise UsageError(
                f"{refused}, which the manifest does not list with a sha256; refusing to load unchecked "
                "weights"
            )
        names.append(relative)
    return names

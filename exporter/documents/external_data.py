"""The external-data files an ONNX model names, and the check that they are files its manifest hashed.

A model saved with external data keeps its weights in one ``<file>.data`` beside it; ONNX Runtime opens
whatever file each tensor's ``location`` names. In a folder from elsewhere that name could leave the folder
(``../x``, an absolute path), follow a planted link, name a file the manifest never hashed, or be ONNX
Runtime's in-memory marker (``*/_ORT_MEM_ADDR_/*``, which reads process memory at the given offset). So
``verify``, ``serve`` and ``package`` read every location first and refuse the model, in one line, unless
each is a plain file name beside the model that the manifest lists with a sha256.

The locations are read from the protobuf wire format of a memory-mapped file, not with ``onnx``: a serving
bundle installs only onnxruntime, and a self-contained 2 GB model would cost 2 GB to parse while its
``raw_data`` fields are skipped here without being read. Every place a tensor may sit is walked
(initializers, sparse initializers, node attributes, subgraphs, functions, training graphs), since ONNX
Runtime loads external data for all of them.
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

__all__ = ["SCHEMA", "UnreadableModel", "check_external_data", "external_locations", "graph_without_weights"]

_T = TypeVar("_T")

SCHEMA: dict[str, dict[int, str]] = {
    "ModelProto": {7: "GraphProto", 20: "TrainingInfoProto", 25: "FunctionProto"},
    "GraphProto": {1: "NodeProto", 5: "TensorProto", 15: "SparseTensorProto"},
    "NodeProto": {5: "AttributeProto"},
    "AttributeProto": {
        5: "TensorProto",
        6: "GraphProto",
        10: "TensorProto",
        11: "GraphProto",
        22: "SparseTensorProto",
        23: "SparseTensorProto",
    },
    "SparseTensorProto": {1: "TensorProto", 2: "TensorProto"},
    "FunctionProto": {7: "NodeProto", 11: "AttributeProto"},
    "TrainingInfoProto": {1: "GraphProto", 2: "GraphProto"},
    "TensorProto": {13: "StringStringEntryProto"},
}
"""Message -> {field number: message} for every field on a path from ``ModelProto`` to a
``TensorProto``'s ``external_data`` entries (onnx.proto's numbers; a test derives the same table from
onnx's own descriptors). Fields not listed are skipped unread."""

_MAX_DEPTH = 100
"""Nesting (subgraphs in subgraphs) past which a model is refused rather than walked."""
_ORT_MEMORY_MARKER = "_ORT_MEM_ADDR_"


class _Damaged(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


class UnreadableModel(UsageError):
    """A model file that is not a well-formed ONNX protobuf: its external data cannot be vouched for, so it
    is not loaded (``verify`` reports it as a failed check; the hash check says whether it was modified)."""


def _varint(data: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise _Damaged("a varint runs past its message")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def _spans(data: memoryview, start: int, end: int) -> list[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field of the message
    ``data[start:end]``, in order; a group is one field (its value ends after its end-group tag)."""
    found = []
    position = start
    while position < end:
        field_start = position
        key, position = _varint(data, position, end)
        number, wire = key >> 3, key & 7
        value_start = position
        if wire == 0:
            _, position = _varint(data, position, end)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, value_start = _varint(data, position, end)
            position = value_start + length
        elif wire == 3:
            position = _skip_group(data, position, end, number)
        else:
            raise _Damaged(f"wire type {wire} where a field starts")
        if position > end:
            raise _Damaged("a field runs past its message")
        found.append((number, wire, field_start, value_start, position))
    return found


def _fields(data: memoryview, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message ``data[start:end]``."""
    return [(number, a, b) for number, wire, _, a, b in _spans(data, start, end) if wire == 2]


def _skip_group(data: memoryview, position: int, end: int, number: int) -> int:
    """The position after the (deprecated, but legal for unknown fields) group ``number`` that starts at
    ``position``: its fields are skipped, nested groups included, up to its end-group tag."""
    open_groups = [number]
    while open_groups:
        key, position = _varint(data, position, end)
        wire = key & 7
        if wire == 0:
            _, position = _varint(data, position, end)
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        elif wire == 2:
            length, position = _varint(data, position, end)
            position += length
        elif wire == 3:
            open_groups.append(key >> 3)
        elif wire == 4 and key >> 3 == open_groups[-1]:
            open_groups.pop()
        else:
            raise _Damaged("a group is not closed where it should be")
        if position > end or len(open_groups) > _MAX_DEPTH:
            raise _Damaged("a group runs past its message")
    return position


def _entry(data: memoryview, start: int, end: int) -> tuple[str, str]:
    """The key and value of one ``StringStringEntryProto``."""
    fields = _fields(data, start, end)
    parts = {number: bytes(data[a:b]).decode("utf-8", "replace") for number, a, b in fields}
    return parts.get(1, ""), parts.get(2, "")


def _walk(data: memoryview) -> set[str]:
    locations: set[str] = set()
    pending = [("ModelProto", 0, len(data), 0)]
    while pending:
        kind, start, end, depth = pending.pop()
        if depth > _MAX_DEPTH:
            raise _Damaged(f"messages nest more than {_MAX_DEPTH} deep")
        children = SCHEMA[kind]
        for number, a, b in _fields(data, start, end):
            child = children.get(number)
            if child == "StringStringEntryProto":
                key, value = _entry(data, a, b)
                if key == "location":
                    locations.add(value)
            elif child is not None:
                pending.append((child, a, b, depth + 1))
    return locations


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_TENSOR_DATA = frozenset({4, 5, 6, 7, 9, 10, 11})
"""``TensorProto``'s value fields (float, int32, string, int64, raw, double and uint64 data)."""


def _strip(data: memoryview, start: int, end: int, kind: str, depth: int) -> bytes:
    """The message ``data[start:end]`` of type ``kind`` re-encoded without any tensor's values."""
    if depth > _MAX_DEPTH:
        raise _Damaged(f"messages nest more than {_MAX_DEPTH} deep")
    children = SCHEMA.get(kind, {})
    out = bytearray()
    for number, wire, field_start, value_start, value_end in _spans(data, start, end):
        if kind == "TensorProto" and number in _TENSOR_DATA:
            continue
        child = children.get(number) if wire == 2 else None
        if child is None or child not in SCHEMA:
            out += data[field_start:value_end]
            continue
        inner = _strip(data, value_start, value_end, child, depth + 1)
        out += _varint_bytes(number << 3 | 2) + _varint_bytes(len(inner)) + inner
    return bytes(out)


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
            except _Damaged as error:
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
    return _read_mapped(path, lambda view: _strip(view, 0, len(view), "ModelProto", 0))


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

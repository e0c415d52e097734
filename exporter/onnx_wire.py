"""The protobuf wire format of ONNX model files, read and written without ``onnx``: varints, the fields of a
message (every length and offset checked against the message's end), and a model re-encoded without its
tensors' values.

Two readers share these: ``documents.external_data`` (which files a model's weights live in, read by
``verify``, ``serve`` and ``package``: a serving bundle has onnxruntime but no onnx) and
``convert.onnx_stream`` (a model's structure and its weights moved out to one data file or back, streamed so
no weight is held in Python). Both map the file and skip a tensor's values without reading them, so a 1 GB
model costs the size of its graph. Imports neither onnx nor torch: the server imports this.

Bytes that are not a well-formed message raise ``Damaged`` (never an ``IndexError``, a silent truncation or
a recursion error): a varint or a field running past its message, a wire type no field has, an unclosed
group, or messages nested deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator

__all__ = [
    "DATA_LOCATION",
    "EXTERNAL",
    "EXTERNAL_DATA",
    "GRAPH",
    "INITIALIZER",
    "MAX_DEPTH",
    "RAW_DATA",
    "SCHEMA",
    "TENSOR_DATA",
    "Buffer",
    "Damaged",
    "encode_varint",
    "fields",
    "header",
    "messages",
    "read_varint",
    "string_entry",
    "tensor_without_values",
    "without_values",
]

Buffer = bytes | bytearray | memoryview | mmap.mmap
"""What the readers take: a mapped file (or a view of one), or bytes in tests."""

GRAPH, INITIALIZER = 7, 5
"""``ModelProto.graph`` and ``GraphProto.initializer``: where every exporter puts a model's weights."""
RAW_DATA, EXTERNAL_DATA, DATA_LOCATION = 9, 13, 14
"""``TensorProto``'s ``raw_data``, ``external_data`` (key/value entries) and ``data_location``."""
EXTERNAL = 1
"""``TensorProto.DataLocation.EXTERNAL``: the tensor's values are in the file its entries name."""
TENSOR_DATA = frozenset({4, 5, 6, 7, 9, 10, 11})
"""``TensorProto``'s value fields (float, int32, string, int64, raw, double and uint64 data)."""

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

MAX_DEPTH = 100
"""Nesting (subgraphs in subgraphs, groups in groups) past which bytes are refused rather than walked
(protobuf's own parser refuses 100)."""


class Damaged(ValueError):
    """The bytes are not a well-formed ONNX protobuf."""


def read_varint(data: Buffer, position: int, end: int) -> tuple[int, int]:
    """The varint at ``position`` and the position after it; it must end before ``end``."""
    value = shift = 0
    while True:
        if position >= end or shift > 63:
            raise Damaged("a varint runs past its message")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7


def encode_varint(value: int) -> bytes:
    """``value`` (not negative) as a varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def header(number: int, length: int) -> bytes:
    """The tag and length that start length-delimited field ``number`` with a ``length``-byte value."""
    return encode_varint(number << 3 | 2) + encode_varint(length)


def fields(data: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(field number, wire type, field start, value start, value end) of each field of the message
    ``data[start:end]``, in order; a group is one field (its value ends after its end-group tag). A
    length-delimited value is ``data[value start:value end]``; the whole field is ``data[field start:value
    end]``. Raises ``Damaged`` where a field does not fit its message."""
    position = start
    while position < end:
        field_start = position
        key, position = read_varint(data, position, end)
        number, wire = key >> 3, key & 7
        value_start = position
        if wire == 0:
            _, position = read_varint(data, position, end)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, value_start = read_varint(data, position, end)
            position = value_start + length
        elif wire == 3:
            position = _skip_group(data, position, end, number)
        else:
            raise Damaged(f"wire type {wire} where a field starts")
        if position > end:
            raise Damaged("a field runs past its message")
        yield number, wire, field_start, value_start, position


def messages(data: Buffer, start: int, end: int) -> list[tuple[int, int, int]]:
    """(field number, start, end) of each length-delimited field of the message ``data[start:end]``."""
    return [(number, a, b) for number, wire, _, a, b in fields(data, start, end) if wire == 2]


def _skip_group(data: Buffer, position: int, end: int, number: int) -> int:
    """The position after the (deprecated, but legal for unknown fields) group ``number`` that starts at
    ``position``: its fields are skipped, nested groups included, up to its end-group tag."""
    open_groups = [number]
    while open_groups:
        key, position = read_varint(data, position, end)
        wire = key & 7
        if wire == 0:
            _, position = read_varint(data, position, end)
        elif wire in (1, 5):
            position += 8 if wire == 1 else 4
        elif wire == 2:
            length, position = read_varint(data, position, end)
            position += length
        elif wire == 3:
            open_groups.append(key >> 3)
        elif wire == 4 and key >> 3 == open_groups[-1]:
            open_groups.pop()
        else:
            raise Damaged("a group is not closed where it should be")
        if position > end or len(open_groups) > MAX_DEPTH:
            raise Damaged("a group runs past its message")
    return position


def string_entry(data: Buffer, start: int, end: int, errors: str = "strict") -> tuple[str, str]:
    """The key and value of the ``StringStringEntryProto`` ``data[start:end]`` (an external-data entry),
    decoded from UTF-8 with ``errors`` (``"replace"`` to show a name that is not text rather than fail)."""
    parts = {number: bytes(data[a:b]).decode("utf-8", errors) for number, a, b in messages(data, start, end)}
    return parts.get(1, ""), parts.get(2, "")


def tensor_without_values(data: Buffer, start: int, end: int) -> bytes:
    """The ``TensorProto`` ``data[start:end]`` re-encoded without its values (``TENSOR_DATA``): name, type,
    dims and external-data entries kept, each field's bytes as they were."""
    return b"".join(
        data[field_start:value_end]
        for number, _, field_start, _, value_end in fields(data, start, end)
        if number not in TENSOR_DATA
    )


def without_values(data: Buffer, start: int, end: int, kind: str, depth: int = 0) -> bytes:
    """The message ``data[start:end]`` of type ``kind`` (a ``SCHEMA`` key) re-encoded without any tensor's
    values, wherever a tensor sits in it (initializers, node attributes, subgraphs, functions)."""
    if depth > MAX_DEPTH:
        raise Damaged(f"messages nest more than {MAX_DEPTH} deep")
    if kind == "TensorProto":
        return tensor_without_values(data, start, end)
    children = SCHEMA.get(kind, {})
    out = bytearray()
    for number, wire, field_start, value_start, value_end in fields(data, start, end):
        child = children.get(number) if wire == 2 else None
        if child is None or child not in SCHEMA:
            out += data[field_start:value_end]
            continue
        inner = without_values(data, value_start, value_end, child, depth + 1)
        out += header(number, len(inner)) + inner
    return bytes(out)

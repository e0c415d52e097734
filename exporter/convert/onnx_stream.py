"""ONNX model files rewritten by streaming their protobuf wire format, so no weight is ever held in Python:
the structure of a model without its tensor values, and a model's initializers moved out to one data file
or back in. ``exporter.convert.onnx_files`` is the interface; this is its engine.

Only the top-level graph's initializers are moved (where every exporter puts weights); a model with external
tensors elsewhere (node attributes, subgraphs) is left to onnx's own loader by the caller.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import onnx

__all__ = ["Piece", "externalize_stream", "internalize_stream", "structure_bytes"]

# Protobuf field numbers: ModelProto.graph, GraphProto.initializer, and in TensorProto its data fields
# (float/int32/string/int64 data, raw_data, double/uint64 data), external_data and data_location.
_GRAPH, _INITIALIZER, _RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION = 7, 5, 9, 13, 14
_TENSOR_DATA = frozenset({4, 5, 6, 7, 9, 10, 11})
_ALIGN = 4096
_CHUNK = 64 * 2**20

Buffer = mmap.mmap | bytes
Piece = bytes | tuple[Buffer, int, int]
"""Part of a file to write: literal bytes, or a slice (start, end) of a mapped file, copied in chunks."""


def _varint(buffer: Buffer, position: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buffer[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _fields(buffer: Buffer, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, start of the field's tag, start of its payload, end) of each field in a message."""
    position = start
    while position < end:
        tag, payload = _varint(buffer, position)
        kind = tag & 7
        if kind == 0:
            _, after = _varint(buffer, payload)
        elif kind == 1:
            after = payload + 8
        elif kind == 5:
            after = payload + 4
        elif kind == 2:
            length, payload = _varint(buffer, payload)
            after = payload + length
        else:
            raise onnx.checker.ValidationError(f"unsupported protobuf wire type {kind}")
        yield tag >> 3, position, payload, after
        position = after


def _size(pieces: list[Piece]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p[2] - p[1] for p in pieces)


def _wrap(number: int, pieces: list[Piece]) -> list[Piece]:
    return [_encode_varint(number << 3 | 2) + _encode_varint(_size(pieces)), *pieces]


def _string(number: int, text: str) -> bytes:
    raw = text.encode()
    return _encode_varint(number << 3 | 2) + _encode_varint(len(raw)) + raw


def _model(buffer: Buffer, tensor: object) -> list[Piece]:
    """The model's pieces with each top-level initializer's message replaced by ``tensor(buffer, start,
    end)`` (a callable returning the new message's pieces)."""
    out: list[Piece] = []
    for number, tag_start, payload, after in _fields(buffer, 0, len(buffer)):
        if number != _GRAPH:
            out.append((buffer, tag_start, after))
            continue
        graph: list[Piece] = []
        for inner, inner_tag, inner_payload, inner_after in _fields(buffer, payload, after):
            if inner == _INITIALIZER:
                graph += _wrap(_INITIALIZER, tensor(buffer, inner_payload, inner_after))  # type: ignore[operator]
            else:
                graph.append((buffer, inner_tag, inner_after))
        out += _wrap(_GRAPH, graph)
    return out


def structure_bytes(buffer: Buffer) -> bytes:
    """The serialized model without tensor values in its top-level initializers (see ``read_structure``)."""

    def bare(data: Buffer, start: int, end: int) -> list[Piece]:
        return [
            data[tag:after]
            for number, tag, _, after in _fields(data, start, end)
            if number not in _TENSOR_DATA
        ]

    return b"".join(_materialize(_model(buffer, bare)))


def _materialize(pieces: list[Piece]) -> Iterator[bytes]:
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            yield bytes(piece[0][piece[1] : piece[2]])


def _write(pieces: list[Piece], target: Path) -> None:
    """Write ``pieces`` to ``target`` through a temporary file beside it (replaced at the end)."""
    temporary = target.with_name(f".{target.name}.partial")
    with temporary.open("wb") as out:
        for piece in pieces:
            if isinstance(piece, bytes):
                out.write(piece)
                continue
            source, start, end = piece
            for chunk in range(start, end, _CHUNK):
                stop = min(end, chunk + _CHUNK)
                out.write(source[chunk:stop])
                if isinstance(source, mmap.mmap):  # mapped pages read count in RSS until dropped
                    page = chunk - chunk % mmap.PAGESIZE
                    source.madvise(mmap.MADV_DONTNEED, page, stop - page)
    temporary.replace(target)


def _mapped(stack: ExitStack, path: Path) -> Buffer:
    if path.stat().st_size == 0:
        return b""
    handle = stack.enter_context(path.open("rb"))
    return stack.enter_context(mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ))


def externalize_stream(path: Path, data_name: str, threshold: int) -> None:
    """Move every top-level initializer's ``raw_data`` of ``threshold`` bytes or more from self-contained
    ``path`` to ``data_name`` beside it (4 KB aligned, as onnx writes it), streaming."""
    with ExitStack() as stack:
        buffer = _mapped(stack, path)
        data: list[Piece] = []
        offset = 0

        def moved(source: Buffer, start: int, end: int) -> list[Piece]:
            nonlocal offset
            fields = list(_fields(source, start, end))
            raw = next(((p, a) for n, _, p, a in fields if n == _RAW_DATA), None)
            if raw is None or raw[1] - raw[0] < threshold:
                return [(source, start, end)]
            pad = -offset % _ALIGN
            data.extend([b"\0" * pad, (source, raw[0], raw[1])])
            offset += pad
            entries = {"location": data_name, "offset": str(offset), "length": str(raw[1] - raw[0])}
            offset += raw[1] - raw[0]
            kept: list[Piece] = [(source, t, a) for n, t, _, a in fields if n != _RAW_DATA]
            for key, value in entries.items():
                kept += _wrap(_EXTERNAL_DATA, [_string(1, key), _string(2, value)])
            return [*kept, _encode_varint(_DATA_LOCATION << 3) + _encode_varint(onnx.TensorProto.EXTERNAL)]

        model = _model(buffer, moved)
        _write(data, path.with_name(data_name))
        path.with_name(data_name).chmod(path.stat().st_mode & 0o777)
        _write(model, path)


def internalize_stream(path: Path, limit: int) -> bool:
    """Bring every top-level initializer kept in external data back into ``path`` as ``raw_data``,
    streaming, and delete the data files; False (nothing changed) when the result would pass ``limit``
    bytes (protobuf's 2 GB)."""
    folder = path.parent
    with ExitStack() as stack:
        buffer = _mapped(stack, path)
        files: dict[str, Buffer] = {}

        def inlined(source: Buffer, start: int, end: int) -> list[Piece]:
            fields = list(_fields(source, start, end))
            entries: dict[str, str] = {}
            external = False
            for number, _, payload, after in fields:
                if number == _EXTERNAL_DATA:
                    pair = {n: bytes(source[p:a]).decode() for n, _, p, a in _fields(source, payload, after)}
                    entries[pair.get(1, "")] = pair.get(2, "")
                elif number == _DATA_LOCATION:
                    external = _varint(source, payload)[0] == onnx.TensorProto.EXTERNAL
            if not external:
                return [(source, start, end)]
            location = entries["location"]
            if location not in files:
                files[location] = _mapped(stack, folder / location)
            mapped = files[location]
            begin = int(entries.get("offset", 0))
            finish = begin + int(entries["length"]) if "length" in entries else len(mapped)
            kept: list[Piece] = [
                (source, t, a) for n, t, _, a in fields if n not in (_EXTERNAL_DATA, _DATA_LOCATION)
            ]
            return [*kept, *_wrap(_RAW_DATA, [(mapped, begin, finish)])]

        model = _model(buffer, inlined)
        if _size(model) >= limit:
            return False
        _write(model, path)
        names = list(files)
    for location in names:
        (folder / location).unlink()
    return True

"""ONNX model files rewritten by streaming their protobuf wire format, so no weight is ever held in Python:
the structure of a model without its tensor values, and a model's initializers moved out to one data file
or back in. ``exporter.convert.onnx_files`` is the interface; this is its engine.

Only the top-level graph's initializers are moved (where every exporter puts weights); a model with external
tensors elsewhere (node attributes, subgraphs) is left to onnx's own loader by the caller.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import onnx

from exporter.onnx_wire import (
    DATA_LOCATION,
    EXTERNAL,
    EXTERNAL_DATA,
    GRAPH,
    INITIALIZER,
    RAW_DATA,
    Damaged,
    encode_varint,
    fields,
    header,
    read_varint,
    string_entry,
    tensor_without_values,
)

__all__ = ["Piece", "externalize_stream", "internalize_stream", "structure_bytes"]

_ALIGN = 4096
_CHUNK = 64 * 2**20

Buffer = mmap.mmap | bytes
Piece = bytes | tuple[Buffer, int, int]
"""Part of a file to write: literal bytes, or a slice (start, end) of a mapped file, copied in chunks."""
Rewrite = Callable[[Buffer, int, int], list[Piece]]
"""An initializer's message (buffer, start, end) -> the pieces of the message written in its place."""


@contextmanager
def _well_formed() -> Iterator[None]:
    """Bytes that are not a well-formed protobuf (``onnx_wire.Damaged``) raise onnx's ``ValidationError``,
    what onnx's own checker raises for a model that is not one."""
    try:
        yield
    except Damaged as error:
        raise onnx.checker.ValidationError(f"not a well-formed ONNX model: {error}") from None


def _size(pieces: list[Piece]) -> int:
    return sum(len(p) if isinstance(p, bytes) else p[2] - p[1] for p in pieces)


def _wrap(number: int, pieces: list[Piece]) -> list[Piece]:
    return [header(number, _size(pieces)), *pieces]


def _string(number: int, text: str) -> bytes:
    raw = text.encode()
    return header(number, len(raw)) + raw


def _model(buffer: Buffer, tensor: Rewrite) -> list[Piece]:
    """The model's pieces with each top-level initializer's message replaced by ``tensor(buffer, start,
    end)``."""
    out: list[Piece] = []
    for number, wire, tag_start, payload, after in fields(buffer, 0, len(buffer)):
        if number != GRAPH or wire != 2:
            out.append((buffer, tag_start, after))
            continue
        graph: list[Piece] = []
        for inner, inner_wire, inner_tag, inner_payload, inner_after in fields(buffer, payload, after):
            if inner == INITIALIZER and inner_wire == 2:
                graph += _wrap(INITIALIZER, tensor(buffer, inner_payload, inner_after))
            else:
                graph.append((buffer, inner_tag, inner_after))
        out += _wrap(GRAPH, graph)
    return out


def structure_bytes(buffer: Buffer) -> bytes:
    """The serialized model without tensor values in its top-level initializers (see ``read_structure``).

    Raises:
        onnx.checker.ValidationError: ``buffer`` is not a well-formed protobuf.
    """

    def bare(data: Buffer, start: int, end: int) -> list[Piece]:
        return [tensor_without_values(data, start, end)]

    with _well_formed():
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
    ``path`` to ``data_name`` beside it (4 KB aligned, as onnx writes it), streaming.

    Raises:
        onnx.checker.ValidationError: ``path`` is not a well-formed protobuf (nothing written).
    """
    with ExitStack() as stack:
        buffer = _mapped(stack, path)
        data: list[Piece] = []
        offset = 0

        def moved(source: Buffer, start: int, end: int) -> list[Piece]:
            nonlocal offset
            parts = list(fields(source, start, end))
            raw = next(((p, a) for n, w, _, p, a in parts if n == RAW_DATA and w == 2), None)
            if raw is None or raw[1] - raw[0] < threshold:
                return [(source, start, end)]
            pad = -offset % _ALIGN
            data.extend([b"\0" * pad, (source, raw[0], raw[1])])
            offset += pad
            entries = {"location": data_name, "offset": str(offset), "length": str(raw[1] - raw[0])}
            offset += raw[1] - raw[0]
            kept: list[Piece] = [(source, t, a) for n, _, t, _, a in parts if n != RAW_DATA]
            for key, value in entries.items():
                kept += _wrap(EXTERNAL_DATA, [_string(1, key), _string(2, value)])
            return [*kept, encode_varint(DATA_LOCATION << 3) + encode_varint(EXTERNAL)]

        with _well_formed():
            model = _model(buffer, moved)
        _write(data, path.with_name(data_name))
        path.with_name(data_name).chmod(path.stat().st_mode & 0o777)
        _write(model, path)


def internalize_stream(path: Path, limit: int) -> bool:
    """Bring every top-level initializer kept in external data back into ``path`` as ``raw_data``,
    streaming, and delete the data files; False (nothing changed) when the result would pass ``limit``
    bytes (protobuf's 2 GB).

    Raises:
        onnx.checker.ValidationError: ``path`` is not a well-formed protobuf, or a tensor's offset and
            length run past its data file (nothing changed).
    """
    folder = path.parent
    with ExitStack() as stack:
        buffer = _mapped(stack, path)
        files: dict[str, Buffer] = {}

        def inlined(source: Buffer, start: int, end: int) -> list[Piece]:
            parts = list(fields(source, start, end))
            entries: dict[str, str] = {}
            external = False
            for number, wire, _, payload, after in parts:
                if number == EXTERNAL_DATA and wire == 2:
                    key, value = string_entry(source, payload, after)
                    entries[key] = value
                elif number == DATA_LOCATION and wire == 0:
                    external = read_varint(source, payload, after)[0] == EXTERNAL
            if not external:
                return [(source, start, end)]
            location = entries["location"]
            if location not in files:
                files[location] = _mapped(stack, folder / location)
            mapped = files[location]
            begin = int(entries.get("offset", 0))
            finish = begin + int(entries["length"]) if "length" in entries else len(mapped)
            if not 0 <= begin <= finish <= len(mapped):  # else a short raw_data under a longer header
                raise Damaged(f"a tensor's bytes {begin}..{finish} run past {location} ({len(mapped)} bytes)")
            kept: list[Piece] = [
                (source, t, a) for n, _, t, _, a in parts if n not in (EXTERNAL_DATA, DATA_LOCATION)
            ]
            return [*kept, *_wrap(RAW_DATA, [(mapped, begin, finish)])]

        with _well_formed():
            model = _model(buffer, inlined)
        if _size(model) >= limit:
            return False
        _write(model, path)
        names = list(files)
    for location in names:
        (folder / location).unlink()
    return True

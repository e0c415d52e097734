"""ONNX models on disk, with or without external data: every stage reads and writes models through here, so
a model's weights live in its ``.onnx`` file or in exactly one ``<file>.data`` beside it, never in loose
per-tensor files, and a model past protobuf's 2 GB limit is never serialized whole.

Imports onnx only (no torch): the optimize and quantize stages and the faces use it too.
"""

from __future__ import annotations

import mmap
import shutil
from pathlib import Path
from typing import BinaryIO

import onnx

from exporter.convert.onnx_stream import externalize_stream, internalize_stream, structure_bytes

__all__ = [
    "PROTOBUF_LIMIT",
    "consolidate_external_data",
    "data_file_name",
    "external_locations",
    "externalize",
    "internalize",
    "model_files",
    "move_onnx_model",
    "needs_external_data",
    "read_structure",
    "remove_onnx_model",
    "save_graph_only",
    "save_onnx",
    "uses_external_data",
]

PROTOBUF_LIMIT = 2**31 - 1
"""protobuf's hard limit on one serialized message: a model past it must keep its weights outside."""

EXTERNAL_THRESHOLD = 1024
"""Tensors of at least this many bytes go to the ``.data`` file (onnx's default); smaller stay inline."""


def data_file_name(model: Path) -> str:
    """The one external-data file of ``model``: ``model.onnx`` -> ``model.onnx.data``."""
    return f"{model.name}.data"


def _external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [
        tensor
        for tensor in onnx.external_data_helper._get_all_tensors(model)
        if tensor.HasField("data_location") and tensor.data_location == onnx.TensorProto.EXTERNAL
    ]


def _location(tensor: onnx.TensorProto) -> str:
    return next((e.value for e in tensor.external_data if e.key == "location"), "")


def read_structure(path: Path) -> onnx.ModelProto:
    """``path``'s model without its weights: graph, inputs, outputs, opsets and every initializer's name,
    type, shape and external-data entries, but no tensor values (inline or external). The file is mapped
    and only the structure is copied, so a 1 GB model without external data costs its graph's size, where
    ``onnx.load(load_external_data=False)`` would read all of it twice (file bytes, then the parsed proto:
    1.9 GiB peak measured for a 0.94 GiB model). Not a model to run or save: its initializers are empty."""
    model = onnx.ModelProto()
    with path.open("rb") as handle:
        if path.stat().st_size == 0:
            return model
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            model.ParseFromString(structure_bytes(buffer))
    return model


def external_locations(path: Path) -> set[str]:
    """The external-data files ``path`` names (relative to its folder); empty for a self-contained model.
    Reads the structure only (``read_structure``): weights are never loaded."""
    return {_location(t) for t in _external_tensors(read_structure(path))}


def uses_external_data(path: Path) -> bool:
    """Whether ``path`` keeps any weights outside the ``.onnx`` file (read without loading them)."""
    return bool(external_locations(path))


def model_files(path: Path) -> list[Path]:
    """The model file and the external-data files it names, which travel together."""
    return [path, *(path.parent / location for location in sorted(external_locations(path)))]


def needs_external_data(model: onnx.ModelProto, forced: bool = False) -> bool:
    """Whether ``model`` must be saved with external data: asked for, or too big for one protobuf."""
    return forced or model.ByteSize() > PROTOBUF_LIMIT


def save_onnx(model: onnx.ModelProto, path: Path, *, external: bool) -> None:
    """Save ``model`` to ``path``; with ``external``, every tensor of 1 KB or more goes to the one
    ``<file>.data`` beside it (written afresh: a stale file of that name is removed first), and ``model``
    is left pointing at that file (onnx's writer moves the bytes out of the proto as it writes them).

    ``model``'s tensors must hold their data (loaded, or fresh from a rewrite); tensors that still point at
    another model's data file are loaded first by onnx's writer.
    """
    data = path.with_name(data_file_name(path))
    data.unlink(missing_ok=True)
    if not external:
        onnx.save_model(model, str(path))
        return
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=data.name,
        size_threshold=EXTERNAL_THRESHOLD,
        convert_attribute=False,
    )
    if data.exists():  # none when every tensor stayed under the threshold
        data.chmod(path.stat().st_mode & 0o777)  # onnx writes it 0600: readable like the model it belongs to


def externalize(path: Path) -> None:
    """Give ``path`` the one ``<file>.data`` layout, whatever it has now: loose or differently named files
    are consolidated, and a self-contained model's weights are moved out. Both stream: no weight is held
    in memory."""
    if uses_external_data(path):
        consolidate_external_data(path)
    else:
        data = path.with_name(data_file_name(path))
        data.unlink(missing_ok=True)
        externalize_stream(path, data.name, EXTERNAL_THRESHOLD)


def internalize(path: Path) -> bool:
    """Bring ``path``'s external data back into the ``.onnx`` file (and delete the data files) when the
    result fits one protobuf; streaming, so it costs no memory. Returns whether the model is now
    self-contained (False: past 2 GB, left as it was)."""
    structure = read_structure(path)
    external = _external_tensors(structure)
    if not external:
        return True
    if len(external) != sum(
        t.data_location == onnx.TensorProto.EXTERNAL for t in structure.graph.initializer
    ):  # external tensors outside the initializers (rare): onnx's loader, which costs the weights once
        if (
            sum(int(next((e.value for e in t.external_data if e.key == "length"), 0)) for t in external)
            >= PROTOBUF_LIMIT
        ):
            return False
        locations = external_locations(path)
        save_onnx(onnx.load(str(path)), path, external=False)
        for location in locations:
            (path.parent / location).unlink(missing_ok=True)
        return True
    return internalize_stream(path, PROTOBUF_LIMIT)


def remove_onnx_model(path: Path) -> None:
    """Delete ``path`` and the external-data files it names (a half-written model is just deleted)."""
    if path.exists():
        try:
            for location in external_locations(path):
                (path.parent / location).unlink(missing_ok=True)
        except Exception:  # unreadable: nothing more to find
            pass
    path.unlink(missing_ok=True)
    path.with_name(data_file_name(path)).unlink(missing_ok=True)


def consolidate_external_data(path: Path) -> None:
    """Rewrite a model whose weights are spread over several files (the TorchScript-based exporter writes one
    per tensor past 2 GB) so they live in its one ``<file>.data``, streaming one tensor at a time; the old
    files are removed. A model already in that shape is left alone."""
    model = onnx.load(str(path), load_external_data=False)
    tensors = _external_tensors(model)
    wanted = data_file_name(path)
    if not tensors or {_location(t) for t in tensors} == {wanted}:
        return
    folder = path.parent
    temporary = folder / f".{wanted}.partial"
    sources: set[Path] = set()
    with temporary.open("wb") as out:
        for tensor in tensors:
            entries = {e.key: e.value for e in tensor.external_data}
            source = folder / entries["location"]
            sources.add(source)
            offset, length = int(entries.get("offset", 0)), entries.get("length")
            _pad(out)
            start = out.tell()
            with source.open("rb") as handle:
                handle.seek(offset)
                remaining = int(length) if length is not None else source.stat().st_size - offset
                while remaining > 0:  # in chunks: one tensor may be hundreds of MB
                    chunk = handle.read(min(remaining, 64 * 2**20))
                    if not chunk:
                        raise ValueError(f"'{source}' ends before the tensor '{tensor.name}' does")
                    out.write(chunk)
                    remaining -= len(chunk)
            del tensor.external_data[:]
            size = out.tell() - start
            for key, value in (("location", wanted), ("offset", str(start)), ("length", str(size))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    temporary.replace(folder / wanted)
    onnx.save_model(model, str(path))
    for source in sources - {folder / wanted}:
        source.unlink(missing_ok=True)


def _pad(out: BinaryIO) -> None:
    """Align each tensor to 4 KB, as onnx's own writer does, so runtimes may map it in place."""
    position = out.tell()
    if position % 4096:
        out.write(b"\0" * (4096 - position % 4096))


def _retarget(model: onnx.ModelProto, location: str) -> None:
    for tensor in _external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location


def move_onnx_model(source: Path, target: Path) -> None:
    """Move an ONNX model and its external data; the data file is renamed after ``target``
    (``<target>.data``) and the model's references follow it."""
    locations = external_locations(source)
    if len(locations) > 1:
        consolidate_external_data(source)
        locations = external_locations(source)
    if not locations:
        source.replace(target)
        return
    (location,) = locations
    (source.parent / location).replace(target.with_name(data_file_name(target)))
    model = onnx.load(str(source), load_external_data=False)
    _retarget(model, data_file_name(target))
    onnx.save_model(model, str(target))
    if source != target:
        source.unlink()


def save_graph_only(model: onnx.ModelProto, source: Path, target: Path) -> None:
    """Save ``model`` (read from ``source`` without its external data, then rewritten without touching
    the weights: nodes only) to ``target``, with a copy of ``source``'s data file named after ``target``.
    Costs the graph's size in memory, not the weights'. (A copy, not a hard link: ``onnx.checker`` refuses
    a data file with several links as a possible hard-link attack.)"""
    locations = external_locations(source)
    if len(locations) > 1:
        raise ValueError(f"'{source}' keeps its weights in {len(locations)} files; consolidate it first")
    data = target.with_name(data_file_name(target))
    data.unlink(missing_ok=True)
    if locations:
        (location,) = locations
        shutil.copyfile(source.parent / location, data)
        _retarget(model, data.name)
    onnx.save_model(model, str(target))

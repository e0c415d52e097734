"""The files of a Hugging Face folder, read as data: regular files only (no links, no FIFOs), JSON
documents size-capped, safetensors headers checked against their files (never a tensor read), shard
indexes naming only plain files beside them, and pickled ``.bin`` weights audited opcode by opcode
(:mod:`exporter.loading.checkpoint_audit`) before anything unpickles them. :mod:`exporter.hf.folder`
checks the config with these."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TypeGuard

from exporter.errors import LoadError
from exporter.loading.checkpoint_audit import UnsafeCheckpointError, audit_torch_save

__all__ = [
    "DOCUMENT_LIMIT",
    "HEADER_LIMIT",
    "TRUST_FIX",
    "excerpt",
    "find_weights",
    "open_regular",
    "read_object",
    "regular_file",
]

DOCUMENT_LIMIT = 64 * 1024 * 1024
"""Bytes a shard index or tokenizer_config.json may hold."""
HEADER_LIMIT = 100 * 1024 * 1024
"""Bytes a safetensors header may claim (the safetensors library's own cap)."""

TRUST_FIX = "pass --trust-checkpoint if you trust this folder's author"
_DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16,
    "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64, "C64": 64, "F4": 4,
    "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


def find_weights(folder: Path, trust: bool) -> tuple[tuple[Path, ...], str, dict[str, tuple[int, ...]]]:
    """The weight files transformers would load, in its order of preference, with the tensors the
    safetensors headers declare (name -> shape)."""
    for single, index, weights_format in (
        ("model.safetensors", "model.safetensors.index.json", "safetensors"),
        ("pytorch_model.bin", "pytorch_model.bin.index.json", "pickle"),
    ):
        if (path := regular_file(folder, single)) is not None:
            files: tuple[Path, ...] = (path,)
        elif regular_file(folder, index) is not None:
            files = _shards(folder, index, ".safetensors" if weights_format == "safetensors" else "")
        else:
            continue
        tensors: dict[str, tuple[int, ...]] = {}
        for file in files:
            if weights_format == "safetensors":
                tensors.update(_safetensors_header(folder, file))
            elif not trust:
                _audit_pickle(folder, file)
        return files, weights_format, tensors
    raise LoadError(
        f"no model.safetensors or pytorch_model.bin in '{folder}' (nor a sharded index of them): "
        "save the model into it with save_pretrained"
    )


def _shards(folder: Path, index: str, suffix: str) -> tuple[Path, ...]:
    """The files a shard index's weight_map names: plain names of regular files in the folder."""
    document = read_object(folder, index, DOCUMENT_LIMIT)
    weight_map = document.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LoadError(f"{index} in '{folder}' has no weight_map: re-save the folder with save_pretrained")
    names: list[str] = []
    for value in weight_map.values():
        if value in names:
            continue
        plain = isinstance(value, str) and value not in ("", ".", "..") and not re.search(r"[/\\\0]", value)
        if not plain or not value.endswith(suffix):
            raise LoadError(
                f"{index} in '{folder}' names shard {excerpt(str(value))}, which is not a "
                f"{suffix or 'weight'} file name inside the folder; refusing to read it "
                "(a shard index may only name files next to it)"
            )
        if regular_file(folder, value) is None:
            raise LoadError(f"{index} in '{folder}' names shard '{value}', which is missing")
        names.append(value)
    return tuple(folder / name for name in names)


def _safetensors_header(folder: Path, path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, after checking its byte range lies inside the file and fits its dtype."""

    def refuse(problem: str) -> LoadError:
        fix = "it is not a whole safetensors file (truncated or tampered); re-save it with save_pretrained"
        return LoadError(f"{path.name} in '{folder}' {problem}: {fix}")

    with open_regular(folder, path.name) as (handle, size):
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise refuse("is shorter than a safetensors header")
        (length,) = struct.unpack("<Q", prefix)
        if length > HEADER_LIMIT or 8 + length > size:
            raise refuse(f"claims a {length}-byte header in a {size}-byte file")
        raw = handle.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise refuse("has a header that is not JSON") from None
    if not isinstance(header, dict):
        raise refuse("has a header that is not a JSON object")
    data_bytes = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        fields = entry if isinstance(entry, dict) else {}
        shape, offsets = fields.get("shape"), fields.get("data_offsets")
        if not _int_list(shape) or not _int_list(offsets) or len(offsets) != 2:
            raise refuse(f"describes tensor {excerpt(name)} without a shape and data_offsets")
        begin, end = offsets
        if not 0 <= begin <= end <= data_bytes:
            raise refuse(
                f"places tensor {excerpt(name)} at bytes {begin}..{end}, past its {data_bytes} data bytes"
            )
        bits = _DTYPE_BITS.get(str(fields.get("dtype")))
        if bits is not None and math.prod(shape) * bits != (end - begin) * 8:
            raise refuse(f"gives tensor {excerpt(name)} {end - begin} bytes for shape {shape}")
        shapes[name] = tuple(shape)
    return shapes


def _audit_pickle(folder: Path, path: Path) -> None:
    """Refuse a pickled weight file that imports anything ``torch.load(weights_only=True)`` refuses."""
    try:
        audit_torch_save(path)
    except UnsafeCheckpointError as finding:
        raise LoadError(
            f"{path.name} in '{folder}' {finding.what}, and {finding.risk}: refused; convert the folder to "
            f"safetensors (save_pretrained writes them) or {TRUST_FIX}"
        ) from None
    except Exception as error:
        raise LoadError(
            f"cannot read {path.name} in '{folder}' as a PyTorch checkpoint (truncated or corrupt?): "
            f"{excerpt(str(error))[1:-1]}"
        ) from None


def regular_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` if it is a regular file (not a link), None if absent; anything else is refused."""
    path = folder / name
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise LoadError(f"cannot inspect {name} in '{folder}': {error.strerror}") from None
    if stat.S_ISLNK(mode):
        raise LoadError(
            f"{name} in '{folder}' is a symlink; refusing to follow it (every file of a checkpoint folder "
            "must be a regular file inside it): copy the file in instead"
        )
    if not stat.S_ISREG(mode):
        raise LoadError(f"{name} in '{folder}' is not a regular file; refusing to read it")
    return path


@contextlib.contextmanager
def open_regular(folder: Path, name: str) -> Iterator[tuple[IO[bytes], int]]:
    """An open handle on the regular file ``folder/name`` and its size, opened without following a link
    or blocking on a FIFO, and checked on the descriptor (what is read is what was checked)."""
    if regular_file(folder, name) is None:
        raise LoadError(f"no {name} in '{folder}': a Hugging Face folder holds config.json and its weights")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(folder / name, flags)
    except OSError as error:
        raise LoadError(f"cannot open {name} in '{folder}': {error.strerror}") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise LoadError(f"{name} in '{folder}' is not a regular file; refusing to read it")
        yield handle, info.st_size


def read_object(folder: Path, name: str, limit: int) -> dict[str, Any]:
    """A JSON object document of at most ``limit`` bytes."""
    with open_regular(folder, name) as (handle, size):
        if size > limit:
            raise LoadError(
                f"{name} in '{folder}' holds {size} bytes, over the {limit} allowed; refusing to parse it"
            )
        data = handle.read(limit)  # a file grown since fstat is cut, and fails to parse
    try:
        document = json.loads(data)
    except (ValueError, RecursionError) as error:
        reason = str(error).splitlines()[0] if isinstance(error, ValueError) else "nested too deep"
        raise LoadError(f"{name} in '{folder}' is not JSON ({reason}): fix or re-save the folder") from None
    if not isinstance(document, dict):
        raise LoadError(f"{name} in '{folder}' is not a JSON object: fix or re-save the folder")
    return document


def _int_list(value: object) -> TypeGuard[list[int]]:
    return isinstance(value, list) and all(type(item) is int and item >= 0 for item in value)


def excerpt(text: str, limit: int = 80) -> str:  # repr escapes newlines: the message stays one line
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."

"""The Open Inference Protocol (KServe v2) as this server speaks it: the model's signature read from the
manifest, every request checked against it, and tensors turned into JSON and back.

A request that does not fit is a ``RequestError`` naming the field (``inputs[0].shape[1]``): the server
answers 400 with it and keeps serving. Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from exporter.serving import json_chunks
from exporter.serving.signature import DATATYPE_OF, InputRule, ModelSignature, OutputInfo, signature_of

__all__ = [
    "DATATYPE_OF",
    "InferRequest",
    "InputRule",
    "ModelSignature",
    "OutputInfo",
    "RequestError",
    "encode_response",
    "parse_infer_request",
    "signature_of",
]


_DATATYPE_OF_DTYPE = {np.dtype(name): datatype for name, datatype in DATATYPE_OF.items()}
"""``DATATYPE_OF`` keyed by dtype: a dict lookup instead of ``dtype.name``, a Python property."""


class RequestError(Exception):
    """A request that does not fit the model's signature; ``field`` names the part that is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message

    def __reduce__(self) -> tuple[type[RequestError], tuple[str, str]]:
        return (RequestError, (self.field, self.message))


@dataclass(frozen=True)
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    """The outputs to return, in the model's order (all when the request names none)."""
    binary_outputs: frozenset[str] = frozenset()
    """Outputs to return as raw bytes after the JSON header (the binary tensor data extension)."""


class _Binary:
    """The bytes after the JSON header of a binary-extension request, handed out tensor by tensor."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, field: str) -> bytes:
        chunk = self.data[self.offset : self.offset + size]
        if len(chunk) != size:
            raise RequestError(field, f"says {size} bytes, but the body has {len(chunk)} left")
        self.offset += size
        return chunk


def parse_infer_request(
    body: bytes, signature: ModelSignature, header_length: int | None = None
) -> InferRequest:
    """The request body checked against ``signature``, field by field, before the model sees it.

    ``header_length`` is the ``Inference-Header-Content-Length`` of Triton's binary tensor data extension
    (what ``tritonclient`` sends by default): the JSON header is that many bytes, raw tensors follow.

    Raises:
        RequestError: not JSON, unknown or missing inputs, wrong datatype, rank or dims, a dim outside its
            declared range, ``data`` of the wrong length or type, NaN/Inf the model was not verified with, an
            integer outside its range, an unknown output.
    """
    binary = None
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise RequestError("Inference-Header-Content-Length", f"{header_length} does not fit the body")
        binary = _Binary(body[header_length:])
        body = body[:header_length]
    try:
        document = json_chunks.loads(body)
    except (ValueError, RecursionError) as error:
        raise RequestError("body", f"is not JSON ({str(error).splitlines()[0][:80]})") from None
    if not isinstance(document, dict):
        raise RequestError("body", "must be a JSON object with an 'inputs' list")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("id", "must be a string")
    entries = document.get("inputs")
    if not isinstance(entries, list) or not entries:
        raise RequestError("inputs", "must be a non-empty list of tensors (name, shape, datatype, data)")
    arrays: dict[str, np.ndarray] = {}
    sizes: dict[str, tuple[int, str]] = {}
    for index, entry in enumerate(entries):
        where = f"inputs[{index}]"
        if not isinstance(entry, dict):
            raise RequestError(where, "must be an object with name, shape, datatype and data")
        name = entry.get("name")
        rule = signature.input(name) if isinstance(name, str) else None
        if rule is None:
            expected = ", ".join(r.name for r in signature.inputs)
            shown = json.dumps(name)[:60]
            raise RequestError(f"{where}.name", f"{shown} is not an input of this model (inputs: {expected})")
        if rule.name in arrays:
            raise RequestError(f"{where}.name", f"input '{name}' is given twice")
        arrays[rule.name] = _tensor(entry, rule, where, signature, sizes=sizes, binary=binary)
    missing = [r.name for r in signature.inputs if r.name not in arrays]
    if missing:
        raise RequestError("inputs", f"missing input(s) {', '.join(missing)}")
    _check_derived_dims(signature, sizes)
    if binary is not None and binary.offset != len(binary.data):
        extra = len(binary.data) - binary.offset
        raise RequestError("body", f"has {extra} bytes after the tensors its header announces")
    wanted, raw = _requested_outputs(document, signature)
    return InferRequest(request_id, arrays, wanted, raw)


def _check_derived_dims(signature: ModelSignature, sizes: dict[str, tuple[int, str]]) -> None:
    """A derived dim (``total=past+seq``) must be the sum of its parts' sizes in this request."""
    for label, parts in signature.derived_dims.items():
        if label in sizes and all(p in sizes for p in parts):
            total = sum(sizes[p][0] for p in parts)
            if sizes[label][0] != total:
                terms = " + ".join(f"{p}={sizes[p][0]}" for p in parts)
                raise RequestError(sizes[label][1], f"{label}={sizes[label][0]}, but {terms} makes {total}")


def _tensor(
    entry: dict[str, Any],
    rule: InputRule,
    where: str,
    signature: ModelSignature,
    *,
    sizes: dict[str, tuple[int, str]],
    binary: _Binary | None,
) -> np.ndarray:
    datatype = entry.get("datatype")
    if datatype != rule.datatype:
        raise RequestError(f"{where}.datatype", f"{json.dumps(datatype)[:40]} is not {rule.datatype}")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise RequestError(f"{where}.shape", "must be a list of non-negative integers")
    if len(shape) != len(rule.dims):
        raise RequestError(
            f"{where}.shape", f"has rank {len(shape)}; '{rule.name}' has rank {len(rule.dims)} {rule.dims}"
        )
    for axis, (size, dim) in enumerate(zip(shape, rule.dims, strict=True)):
        _check_dim(size, dim, f"{where}.shape[{axis}]", signature, sizes)
    expected = math.prod(shape)
    parameters = entry.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise RequestError(f"{where}.parameters", "must be an object")
    if "binary_data_size" in parameters:
        array = _binary_tensor(parameters["binary_data_size"], rule, expected, where, binary)
    else:
        data = entry.get("data")
        if not isinstance(data, list | np.ndarray):  # a long flat list arrives parsed (json_chunks)
            raise RequestError(f"{where}.data", "must be a list of values (flat, row-major, or nested)")
        try:
            array = np.asarray(data)
        except (ValueError, TypeError):
            raise RequestError(f"{where}.data", "is a ragged or mixed list, not a tensor") from None
    if array.size != expected:
        raise RequestError(f"{where}.data", f"has {array.size} values; shape {shape} needs {expected}")
    array = _cast(array, rule, f"{where}.data")
    return array.reshape(shape)


def _binary_tensor(
    size: Any, rule: InputRule, expected: int, where: str, binary: _Binary | None
) -> np.ndarray:
    field = f"{where}.parameters.binary_data_size"
    if binary is None:
        raise RequestError(field, "needs the Inference-Header-Content-Length header (binary data extension)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise RequestError(field, "must be a non-negative integer")
    if size != expected * rule.dtype.itemsize:
        raise RequestError(
            field, f"is {size} bytes; {expected} {rule.datatype} values take {expected * rule.dtype.itemsize}"
        )
    return np.frombuffer(binary.take(size, field), dtype=rule.dtype.newbyteorder("<"))


def _check_dim(
    size: int, dim: int | str, field: str, signature: ModelSignature, sizes: dict[str, tuple[int, str]]
) -> None:
    if isinstance(dim, int):
        if size != dim:
            raise RequestError(field, f"is {size}; this dim is fixed at {dim}")
        return
    low, high = signature.dim_ranges.get(dim, (1, None))
    if size < low or (high is not None and size > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise RequestError(field, f"{dim}={size} is outside its declared range {bound}")
    step = signature.dim_multiples.get(dim, 1)
    if size % step:
        raise RequestError(field, f"{dim}={size} is not a multiple of {step}, as its declared range needs")
    seen = sizes.setdefault(dim, (size, field))
    if seen[0] != size:
        raise RequestError(field, f"{dim}={size}, but {seen[1]} has {dim}={seen[0]}")


def _cast(array: np.ndarray, rule: InputRule, field: str) -> np.ndarray:
    """``array`` as the input's dtype, refusing values that would change on the way or were not verified."""
    kind = rule.dtype.kind
    if array.size == 0:
        return array.astype(rule.dtype)
    if kind == "b":
        if array.dtype.kind != "b":
            raise RequestError(field, "BOOL data must be true/false")
        return array
    if kind in "iu":
        if array.dtype.kind not in "iu":
            raise RequestError(field, f"{rule.datatype} data must be integers")
        info = np.iinfo(rule.dtype)
        smallest, largest = int(array.min()), int(array.max())
        if smallest < info.min or largest > info.max:
            raise RequestError(field, f"has a value outside {rule.datatype}")
        if rule.value_range is not None:
            low, high = rule.value_range
            if smallest < low or largest >= high:
                raise RequestError(
                    field, f"has a value outside [{low}, {high}), the range '{rule.name}' was verified with"
                )
        return array.astype(rule.dtype)
    if array.dtype.kind not in "iuf":
        raise RequestError(field, f"{rule.datatype} data must be numbers")
    cast = array.astype(rule.dtype)
    if not rule.allow_nonfinite and not np.isfinite(cast).all():
        what = "NaN" if np.isnan(cast).any() else "Inf"
        raise RequestError(field, f"has {what}; the model was not verified with non-finite inputs")
    return cast


def _requested_outputs(
    document: dict[str, Any], signature: ModelSignature
) -> tuple[tuple[str, ...], frozenset[str]]:
    """The outputs to return (all by default) and which of them as raw bytes."""
    names = [o.name for o in signature.outputs]
    parameters = document.get("parameters")
    all_binary = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    requested = document.get("outputs")
    if requested is None:
        return tuple(names), frozenset(names if all_binary else ())
    if not isinstance(requested, list):
        raise RequestError("outputs", "must be a list of {name} objects")
    wanted, raw = [], set()
    for index, entry in enumerate(requested):
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in names:
            shown = json.dumps(name)[:60]
            raise RequestError(
                f"outputs[{index}].name", f"{shown} is not an output (outputs: {', '.join(names)})"
            )
        wanted.append(name)
        options = entry.get("parameters")
        if all_binary or (isinstance(options, dict) and options.get("binary_data") is True):
            raw.add(name)
    return tuple(n for n in names if n in wanted), frozenset(raw)


def encode_response(
    head: dict[str, Any], names: Sequence[str], arrays: Sequence[np.ndarray], request: InferRequest
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when some outputs travel as raw bytes.

    ``head`` holds ``model_name``, ``model_version`` and ``id``; JSON data is flat and row-major, each
    number in the shortest form that reads back to the same value of its dtype (orjson: a float32 0.1 is
    ``0.1``, not ``0.10000000149011612``), with NaN and +/-Inf written as ``null`` (JSON has no token for
    them; binary outputs keep them bit for bit).
    """
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in zip(names, arrays, strict=True):
        if name not in request.outputs:
            continue
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": _DATATYPE_OF_DTYPE.get(array.dtype) or DATATYPE_OF.get(array.dtype.name, "BYTES"),
            "shape": list(array.shape),
        }
        if name in request.binary_outputs:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif array.size <= json_chunks.CHUNK_VALUES:
            tensor["data"] = np.ascontiguousarray(array).reshape(-1)
        else:
            tensor["data"] = orjson.Fragment(json_chunks.dumps_values(array))
        tensors.append(tensor)
    header = json_chunks.dumps({**head, "outputs": tensors})
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)

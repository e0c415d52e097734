"""The protobuf wire primitives both ONNX readers share (``exporter.onnx_wire``): what they read agrees with
onnx's own parser, and damaged bytes are refused as ``Damaged`` (onnx's ``ValidationError`` from the
streaming rewrites), never an ``IndexError``, a silently short copy or a hang."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from exporter.convert.onnx_files import external_locations, externalize, internalize, read_structure
from exporter.convert.onnx_stream import structure_bytes
from exporter.onnx_wire import (
    TENSOR_DATA,
    Damaged,
    encode_varint,
    fields,
    header,
    read_varint,
    string_entry,
    tensor_without_values,
    without_values,
)


def _model() -> onnx.ModelProto:
    """A weight in an initializer, a Constant node and an If's subgraph: tensors wherever ONNX keeps them."""
    branch = helper.make_graph(
        [helper.make_node("Identity", ["w_sub"], ["y_sub"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y_sub", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([1.0, 2.0], dtype=np.float32), "w_sub")],
    )
    constant = numpy_helper.from_array(np.arange(300, dtype=np.int64), "c")
    nodes = [
        helper.make_node("Constant", [], ["c"], value=constant),
        helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.full((64, 64), 0.5, dtype=np.float32), "w")],
    )
    return helper.make_model(graph)


def _cleared(tensor: TensorProto) -> TensorProto:
    for field in tensor.DESCRIPTOR.fields:
        if field.number in TENSOR_DATA:
            tensor.ClearField(field.name)
    return tensor


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**31 - 1, 2**32, 2**63 - 1, 2**64 - 1])
def test_varints_round_trip_and_match_protobuf(value: int) -> None:
    encoded = encode_varint(value)
    assert read_varint(encoded, 0, len(encoded)) == (value, len(encoded))
    tensor = TensorProto(uint64_data=[value])  # packed: tag, length, then the varint
    assert tensor.SerializeToString().endswith(encoded)


def test_a_varint_past_its_message_or_too_long_is_damaged() -> None:
    with pytest.raises(Damaged, match="varint"):
        read_varint(b"\x80\x80", 0, 2)
    with pytest.raises(Damaged, match="varint"):
        read_varint(b"\x80\x01", 0, 1)  # ends at byte 2, but the message ends at byte 1
    with pytest.raises(Damaged, match="varint"):
        read_varint(b"\xff" * 11 + b"\x01", 0, 12)


def test_fields_are_onnx_s_fields_in_order() -> None:
    tensor = helper.make_tensor("t", TensorProto.INT64, [3], [1, 2, 3])
    tensor.doc_string = "d"
    data = tensor.SerializeToString()
    found = list(fields(data, 0, len(data)))
    assert [number for number, *_ in found] == [f.number for f, _ in tensor.ListFields()]
    assert found[0][2] == 0 and found[-1][4] == len(data)
    name = next(f for f in found if f[0] == 8)  # TensorProto.name
    assert (name[1], bytes(data[name[3] : name[4]])) == (2, b"t")


def test_a_group_is_one_field_and_is_kept() -> None:
    """A (deprecated, but legal) group among a model's unknown fields: skipped whole, nested groups too."""
    group = encode_varint(99 << 3 | 3) + bytes([1 << 3 | 3, 8, 5, 1 << 3 | 4]) + encode_varint(99 << 3 | 4)
    model = _model()
    data = model.SerializeToString() + group
    found = list(fields(data, 0, len(data)))
    assert found[-1][:3] == (99, 3, len(data) - len(group)) and found[-1][4] == len(data)
    stripped = onnx.ModelProto.FromString(structure_bytes(data))
    assert stripped.graph.node == model.graph.node
    assert without_values(data, 0, len(data), "ModelProto").endswith(group)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05abc",  # a length past the message
        b"\x0e",  # wire type 6
        b"\x0f",  # wire type 7
        b"\x0b\x08\x01",  # a group never closed
        b"\x0b\x14",  # a group closed by another's end tag
        b"\x09\x00\x00",  # a fixed64 cut short
        b"\x0d\x00",  # a fixed32 cut short
    ],
)
def test_malformed_fields_are_damaged(data: bytes) -> None:
    with pytest.raises(Damaged):
        list(fields(data, 0, len(data)))
    with pytest.raises(onnx.checker.ValidationError, match="not a well-formed ONNX model"):
        structure_bytes(data)


def test_a_string_entry_is_its_key_and_value() -> None:
    entry = onnx.StringStringEntryProto(key="location", value="model.onnx.data").SerializeToString()
    assert string_entry(entry, 0, len(entry)) == ("location", "model.onnx.data")
    bad = header(1, 1) + b"k" + header(2, 2) + b"\xff\xfe"
    assert string_entry(bad, 0, len(bad), errors="replace") == ("k", "\ufffd\ufffd")
    with pytest.raises(UnicodeDecodeError):
        string_entry(bad, 0, len(bad))


@pytest.mark.parametrize(
    "kind", [TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64, TensorProto.DOUBLE, TensorProto.UINT64]
)
def test_a_tensor_without_values_keeps_all_else(kind: int) -> None:
    for raw in (False, True):
        values = np.array([1, 2, 3, 4], dtype=helper.tensor_dtype_to_np_dtype(kind))
        tensor = helper.make_tensor("t", kind, [2, 2], values if raw else values.tolist(), raw=raw)
        assert tensor.raw_data if raw else not tensor.raw_data
        tensor.doc_string = "kept"
        data = tensor.SerializeToString()
        stripped = TensorProto.FromString(tensor_without_values(data, 0, len(data)))
        assert stripped == _cleared(tensor) and stripped.dims == [2, 2] and stripped.doc_string == "kept"
    strings = helper.make_tensor("s", TensorProto.STRING, [1], [b"x"]).SerializeToString()
    assert not TensorProto.FromString(tensor_without_values(strings, 0, len(strings))).string_data


def test_without_values_strips_every_tensor_where_structure_strips_initializers() -> None:
    """``graph_without_weights`` (faces) strips every tensor; ``read_structure`` (convert) only the
    top-level initializers, keeping a Constant's and a subgraph's values for the passes that read them."""
    model = _model()
    data = model.SerializeToString()
    everywhere = onnx.ModelProto.FromString(without_values(data, 0, len(data), "ModelProto"))
    expected = _model()
    _cleared(expected.graph.initializer[0])
    _cleared(expected.graph.node[0].attribute[0].t)
    for attribute in expected.graph.node[1].attribute:
        _cleared(attribute.g.initializer[0])
    assert everywhere == expected
    initializers = onnx.ModelProto.FromString(structure_bytes(data))
    expected = _model()
    _cleared(expected.graph.initializer[0])
    assert initializers == expected


def test_nesting_past_the_limit_is_damaged() -> None:
    graph = b""
    for _ in range(40):  # graph -> node -> attribute -> graph: 120 messages deep
        node = header(6, len(graph)) + graph
        attribute = header(5, len(node)) + node
        graph = header(1, len(attribute)) + attribute
    data = header(7, len(graph)) + graph
    with pytest.raises(Damaged, match="nest more than"):
        without_values(data, 0, len(data), "ModelProto")


def test_damaged_models_are_refused_by_the_streaming_reader_never_a_crash() -> None:
    """Random damage to a model: ``structure_bytes`` answers or raises onnx's ValidationError, nothing
    else (before, a cut-short model raised IndexError or was copied short)."""
    original = _model().SerializeToString()
    rng = np.random.default_rng(0)
    outcomes = set()
    for _ in range(300):
        damaged = bytearray(original)
        for index in rng.integers(0, len(damaged), size=int(rng.integers(1, 8))):
            damaged[index] = int(rng.integers(0, 256))
        if rng.random() < 0.5:  # cut short
            damaged = damaged[: int(rng.integers(1, len(damaged)))]
        try:
            structure_bytes(bytes(damaged))
            outcomes.add("read")
        except onnx.checker.ValidationError:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}


def test_the_streamed_rewrites_read_a_mapped_file(tmp_path: Path) -> None:
    """externalize -> read_structure -> internalize through mapped files: the weights move out to one
    data file and back, byte for byte."""
    path = tmp_path / "model.onnx"
    onnx.save_model(_model(), str(path))
    original = path.read_bytes()
    externalize(path)
    assert external_locations(path) == {"model.onnx.data"}
    assert read_structure(path).graph.initializer[0].dims == [64, 64]
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        entries = onnx.ModelProto.FromString(structure_bytes(mapped)).graph.initializer[0].external_data
    assert {e.key: e.value for e in entries} == {
        "location": "model.onnx.data",
        "offset": "0",
        "length": "16384",
    }
    assert internalize(path)
    assert path.read_bytes() == original


def test_internalize_refuses_a_tensor_past_its_data_file(tmp_path: Path) -> None:
    """An offset and length that run past the data file: refused, nothing changed (before, a raw_data
    shorter than its length prefix was written)."""
    path = tmp_path / "model.onnx"
    onnx.save_model(_model(), str(path))
    externalize(path)
    data = tmp_path / "model.onnx.data"
    with data.open("r+b") as handle:
        handle.truncate(data.stat().st_size - 8)
    before = path.read_bytes()
    with pytest.raises(onnx.checker.ValidationError, match=r"run past model\.onnx\.data"):
        internalize(path)
    assert path.read_bytes() == before and data.exists()

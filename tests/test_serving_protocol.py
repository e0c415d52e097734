"""The server's request checks and encoding (``exporter.serving.protocol``), and a model that fails at run
time (a real ONNX Runtime session) answered with a one-line 500, in process through Starlette's client."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper

from exporter.backends.registry import OpenContext, open_file
from exporter.serving.app import ServerState, build_app
from exporter.serving.json_chunks import CHUNK_VALUES
from exporter.serving.protocol import (
    InferRequest,
    InputRule,
    ModelSignature,
    OutputInfo,
    RequestError,
    encode_response,
    parse_infer_request,
)
from exporter.specs.inputs import DynamicDim, InputSpec, parse_tensor_spec

TWO_INPUTS = ModelSignature(
    "two",
    (
        InputRule("features", np.dtype("float32"), ("batch", "seq", 8), False, None),
        InputRule("ids", np.dtype("int64"), ("batch", "seq"), False, (0, 100)),
    ),
    (OutputInfo("out", np.dtype("float32"), (-1, 3)),),
    {"batch": (1, 4), "seq": (2, 16)},
    "batch",
)


def tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, object]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.reshape(-1).tolist(),
    }


FEATURES = np.zeros((1, 5, 8), dtype=np.float32)
IDS = np.arange(5, dtype=np.int64).reshape(1, 5)


def request(*tensors: dict[str, object], **extra: object) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def refused(body: bytes, header_length: int | None = None) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_infer_request(body, TWO_INPUTS, header_length)
    return caught.value


def test_a_fitting_request_becomes_arrays_of_the_declared_dtypes() -> None:
    parsed = parse_infer_request(
        request(tensor("features", FEATURES, "FP32"), tensor("ids", IDS, "INT64"), id="r1"), TWO_INPUTS
    )
    assert parsed.id == "r1" and parsed.outputs == ("out",)
    assert parsed.inputs["features"].dtype == np.float32 and parsed.inputs["features"].shape == (1, 5, 8)
    assert parsed.inputs["ids"].dtype == np.int64 and parsed.inputs["ids"].tolist() == IDS.tolist()


def test_a_missing_input_is_named() -> None:
    error = refused(request(tensor("features", FEATURES, "FP32")))
    assert error.field == "inputs" and "ids" in error.message


def test_a_dim_label_must_agree_across_inputs() -> None:
    ids = np.zeros((1, 6), dtype=np.int64)
    error = refused(request(tensor("features", FEATURES, "FP32"), tensor("ids", ids, "INT64")))
    assert error.field == "inputs[1].shape[1]" and "seq=6" in error.message and "seq=5" in error.message


def test_a_dim_above_its_declared_maximum_is_refused() -> None:
    features = np.zeros((5, 5, 8), dtype=np.float32)
    error = refused(request(tensor("features", features, "FP32"), tensor("ids", IDS, "INT64")))
    assert error.field == "inputs[0].shape[0]" and "[1, 4]" in error.message


def test_integer_values_outside_the_verified_range_are_refused() -> None:
    error = refused(request(tensor("features", FEATURES, "FP32"), tensor("ids", IDS + 96, "INT64")))
    assert error.field == "inputs[1].data" and "[0, 100)" in error.message


def test_floats_are_not_accepted_as_integers() -> None:
    ids = {**tensor("ids", IDS, "INT64"), "data": [0.5] * 5}
    error = refused(request(tensor("features", FEATURES, "FP32"), ids))
    assert error.field == "inputs[1].data" and "integers" in error.message


def test_binary_tensors_are_read_after_the_json_header() -> None:
    raw = FEATURES.tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    **tensor("features", FEATURES, "FP32"),
                    "data": None,
                    "parameters": {"binary_data_size": len(raw)},
                },
                tensor("ids", IDS, "INT64"),
            ],
            "outputs": [{"name": "out", "parameters": {"binary_data": True}}],
        }
    ).encode()
    parsed = parse_infer_request(header + raw, TWO_INPUTS, len(header))
    assert parsed.inputs["features"].shape == (1, 5, 8) and parsed.binary_outputs == {"out"}
    error = refused(header + raw[:-4], len(header))
    assert error.field == "inputs[0].parameters.binary_data_size"
    error = refused(header + raw + b"xx", len(header))
    assert error.field == "body" and "2 bytes" in error.message


def test_binary_outputs_follow_the_json_header() -> None:
    parsed = parse_infer_request(
        request(
            tensor("features", FEATURES, "FP32"),
            tensor("ids", IDS, "INT64"),
            parameters={"binary_data_output": True},
        ),
        TWO_INPUTS,
    )
    out = np.arange(3, dtype=np.float32).reshape(1, 3)
    body, header_length = encode_response({"model_name": "two"}, ["out"], [out], parsed)
    assert header_length is not None
    head = json.loads(body[:header_length])
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 12}
    assert np.frombuffer(body[header_length:], dtype=np.float32).tolist() == [0.0, 1.0, 2.0]


def _json_outputs(outputs: list[np.ndarray]) -> tuple[bytes, dict[str, object]]:
    parsed = parse_infer_request(
        request(tensor("features", FEATURES, "FP32"), tensor("ids", IDS, "INT64")), TWO_INPUTS
    )
    names = [f"out{i}" for i in range(len(outputs))]
    wanted = InferRequest(parsed.id, parsed.inputs, tuple(names))
    body, header_length = encode_response({"model_name": "two"}, names, outputs, wanted)
    assert header_length is None
    return body, json.loads(body)


def test_numbers_go_out_in_the_shortest_form_that_reads_back_exactly_in_their_dtype() -> None:
    values = np.array([[0.1, 1 / 3, -2.5e-8, 3.4028235e38]], dtype=np.float32)
    body, reply = _json_outputs([values, np.array([[7, -9]], dtype=np.int64)])
    assert b"0.1," in body and b"0.33333334" in body and b"0.100000001" not in body
    data = reply["outputs"][0]["data"]  # type: ignore[index]
    assert np.array_equal(np.asarray(data, dtype=np.float32), values.reshape(-1))
    assert reply["outputs"][1] == {"name": "out1", "datatype": "INT64", "shape": [1, 2], "data": [7, -9]}  # type: ignore[index]


def test_a_large_output_is_encoded_in_slices_to_the_same_values() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((1, 3 * CHUNK_VALUES + 5)).astype(np.float32)
    values[0, CHUNK_VALUES] = np.nan
    _, reply = _json_outputs([values])
    data = reply["outputs"][0]["data"]  # type: ignore[index]
    assert len(data) == values.size and data[CHUNK_VALUES] is None
    expected = values.reshape(-1)
    decoded = np.asarray([np.nan if v is None else v for v in data], dtype=np.float32)
    assert np.array_equal(decoded, expected, equal_nan=True)


def test_bodies_orjson_refuses_are_read_as_before() -> None:
    """UTF-16 bodies and NaN tokens are not what orjson reads; the standard parser takes them, so the
    answer is what it always was (the NaN refused by field, not as "not JSON")."""
    good = request(tensor("features", FEATURES, "FP32"), tensor("ids", IDS, "INT64"))
    utf16 = parse_infer_request(good.decode().encode("utf-16"), TWO_INPUTS)
    assert np.array_equal(utf16.inputs["ids"], IDS)
    nan = good.decode().replace("0.0", "NaN", 1).encode()
    assert refused(nan).field == "inputs[0].data"
    assert refused(b'{"inputs": [}').field == "body"


def _failing_model(folder: Path) -> Path:
    """x (batch, 4) -> Reshape to (1, 4): runs at batch 1, fails in ONNX Runtime at any other batch."""
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [1, 4])
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [shape],
    )
    path = folder / "model.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_a_model_error_is_a_one_line_500_and_the_server_keeps_serving(tmp_path: Path) -> None:
    _failing_model(tmp_path)
    signature = ModelSignature(
        "reshape",
        (InputRule("x", np.dtype("float32"), ("batch", 4), False, None),),
        (OutputInfo("y", np.dtype("float32"), (1, 4)),),
        {"batch": (1, 8)},
        None,
    )
    state = ServerState(signature, max_body_bytes=1 << 20, max_batch_size=1, max_batch_delay_s=0.0)
    spec = InputSpec((parse_tensor_spec("x:float32:batch=1..8,4"),), (DynamicDim("batch", 1, 8),))
    runner = open_file("onnxruntime", tmp_path / "model.onnx", OpenContext(spec, 1, spinning=False))
    state.attach(runner, "onnxruntime_onnx")
    state.ready = True
    with TestClient(build_app(state)) as client:
        x = np.ones((2, 4), dtype=np.float32)
        failed = client.post("/v2/models/reshape/infer", content=request(tensor("x", x, "FP32")))
        assert failed.status_code == 500
        message = failed.json()["error"]
        assert message.startswith("model error: ") and "\n" not in message and "Traceback" not in message
        assert "Reshape" in message
        ok = client.post("/v2/models/reshape/infer", content=request(tensor("x", x[:1], "FP32")))
        assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [1.0] * 4
    state.worker.close()  # type: ignore[union-attr]


DECODER_LIKE = ModelSignature(
    "decoder",
    (
        InputRule("input_ids", np.dtype("int64"), ("batch", "seq"), False, (0, 100)),
        InputRule("attention_mask", np.dtype("int64"), ("batch", "total"), False, (1, 2)),
        InputRule("past", np.dtype("float32"), ("batch", 2, "past", 4), False, None),
    ),
    (OutputInfo("logits", np.dtype("float32"), (-1, -1, 100)),),
    {"batch": (1, 4), "seq": (1, 8), "past": (0, 8), "total": (1, 16)},
    "batch",
    derived_dims={"total": ("past", "seq")},
)


def test_a_derived_dim_must_be_the_sum_of_its_parts() -> None:
    ids = np.zeros((1, 3), dtype=np.int64)
    past = np.zeros((1, 2, 2, 4), dtype=np.float32)
    good = request(
        tensor("input_ids", ids, "INT64"),
        tensor("attention_mask", np.ones((1, 5), dtype=np.int64), "INT64"),
        tensor("past", past, "FP32"),
    )
    assert parse_infer_request(good, DECODER_LIKE).inputs["attention_mask"].shape == (1, 5)
    bad = request(
        tensor("input_ids", ids, "INT64"),
        tensor("attention_mask", np.ones((1, 4), dtype=np.int64), "INT64"),
        tensor("past", past, "FP32"),
    )
    with pytest.raises(RequestError) as caught:
        parse_infer_request(bad, DECODER_LIKE)
    assert "total=4, but past=2 + seq=3 makes 5" in str(caught.value)

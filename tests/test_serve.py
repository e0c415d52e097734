"""``exporter serve`` / ``python -m exporter.serving``: the real server in a subprocess on a free loopback
port, driven by Triton's own client (``tritonclient.http``) and by raw HTTP."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from prometheus_client.parser import text_string_to_metric_families

from exporter.documents.files import sha256_file
from tests.conftest import export_tiny_mlp

ROOT = Path(__file__).resolve().parents[1]
NAME = "mlp"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        try:
            connection.request(method, path, body=data, headers=headers or {})
            response = connection.getresponse()
            raw = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode()

    def infer(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return self.request("POST", f"/v2/models/{NAME}/infer", body, headers)

    def stop(self) -> tuple[int, str]:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            _, stderr = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, stderr = self.process.communicate()
        return self.process.returncode, stderr


def start(folder: Path, *flags: str, wait: bool = True) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "exporter.serving", str(folder), "--port", str(port), "--threads", "1"]
    process = subprocess.Popen(
        [*command, *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server = Server(process, port)
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: Server, timeout: float = 120) -> None:
    poll_until(server, "/v2/health/ready", 200, timeout)


def poll_until(server: Server, path: str, status: int, timeout: float = 120) -> tuple[int, Any]:
    """GET ``path`` every 20 ms until it answers ``status``; fails at once if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            _, stderr = server.process.communicate()
            raise AssertionError(f"server exited {server.process.returncode}: {stderr}")
        try:
            reply = server.request("GET", path)
            if reply[0] == status:
                return reply
        except OSError:
            pass
        time.sleep(0.02)
    raise AssertionError(f"{path} never answered {status} in {timeout:g} s")


def golden(folder: Path) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    manifest = json.loads((folder / "manifest.json").read_text())
    cases = []
    for entry in manifest["golden"]:
        if "outputs" in entry:
            with np.load(folder / entry["inputs"]) as inputs, np.load(folder / entry["outputs"]) as outputs:
                cases.append((dict(inputs), dict(outputs)))
    return cases


def body_of(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}
    return {"inputs": [{**tensor, **extra}]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_mlp(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def tolerance(folder: Path) -> dict[str, float]:
    return json.loads((folder / "manifest.json").read_text())["tolerance"]


@pytest.fixture(scope="module")
def server(folder: Path) -> Iterator[Server]:
    running = start(folder, "--max-body-mb", "0.05", "--max-batch-delay-ms", "20")
    yield running
    code, stderr = running.stop()
    assert code == 0, stderr


def test_metadata_and_health_through_tritonclient(server: Server) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(NAME)
        metadata = client.get_model_metadata(NAME)
    finally:
        client.close()
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert metadata["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 4]}]
    assert metadata["platform"] == "onnxruntime_onnx"


@pytest.mark.parametrize("binary", [True, False], ids=["binary-tensors", "json-tensors"])
def test_golden_inputs_through_tritonclient(
    server: Server, folder: Path, tolerance: dict[str, float], binary: bool
) -> None:
    client = triton.InferenceServerClient(server.address)
    try:
        for inputs, outputs in golden(folder):
            request = triton.InferInput("x", list(inputs["x"].shape), "FP32")
            request.set_data_from_numpy(inputs["x"], binary_data=binary)
            wanted = triton.InferRequestedOutput("output", binary_data=binary)
            result = client.infer(NAME, [request], outputs=[wanted], request_id="golden")
            np.testing.assert_allclose(
                result.as_numpy("output"), outputs["output"], atol=tolerance["atol"], rtol=tolerance["rtol"]
            )
            assert result.get_response()["id"] == "golden"
    finally:
        client.close()


def test_unknown_model_is_404(server: Server) -> None:
    status, body = server.request("GET", "/v2/models/nope")
    assert status == 404 and "nope" in body["error"]


GOOD = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)

BAD_REQUESTS = {
    "not-json": (b"{inputs: oops", "body"),
    "not-an-object": ([1, 2], "body"),
    "no-inputs": ({"inputs": []}, "inputs"),
    "unknown-input": ({"inputs": [{**body_of(GOOD)["inputs"][0], "name": "y"}]}, "inputs[0].name"),
    "twice": ({"inputs": body_of(GOOD)["inputs"] * 2}, "inputs[1].name"),
    "datatype": (body_of(GOOD, datatype="FP64"), "inputs[0].datatype"),
    "rank": (body_of(GOOD, shape=[32]), "inputs[0].shape"),
    "fixed-dim": (body_of(GOOD, shape=[4, 8]), "inputs[0].shape[1]"),
    "dim-below-range": (body_of(GOOD, shape=[0, 16], data=[]), "inputs[0].shape[0]"),
    "data-length": (body_of(GOOD, data=[0.5] * 31), "inputs[0].data"),
    "data-strings": (body_of(GOOD, data=["a"] * 32), "inputs[0].data"),
    "ragged": (body_of(GOOD, data=[[1.0] * 16, [1.0] * 15]), "inputs[0].data"),
    "unknown-output": ({**body_of(GOOD), "outputs": [{"name": "logits"}]}, "outputs[0].name"),
    "binary-size": (
        body_of(GOOD, parameters={"binary_data_size": 8}),
        "inputs[0].parameters.binary_data_size",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_is_400_naming_the_field_and_the_server_keeps_serving(server: Server, case: str) -> None:
    body, field = BAD_REQUESTS[case]
    status, reply = server.infer(body)
    assert status == 400, reply
    assert reply["field"] == field
    assert reply["error"].startswith(field)
    assert "Traceback" not in reply["error"] and "\n" not in reply["error"]
    status, reply = server.infer(body_of(GOOD))
    assert status == 200 and reply["outputs"][0]["shape"] == [2, 4]


def test_nan_input_is_400_since_the_model_was_not_verified_with_it(server: Server) -> None:
    text = json.dumps(body_of(GOOD)).replace("1.0]", "NaN]", 1)
    assert "NaN" in text
    status, reply = server.infer(text.encode())
    assert status == 400 and reply["field"] == "inputs[0].data" and "NaN" in reply["error"]


def test_body_over_the_limit_is_400(server: Server) -> None:
    big = np.zeros((2000, 16), dtype=np.float32)  # about 100 kB of JSON, over --max-body-mb 0.05
    status, reply = server.infer(body_of(big))
    assert status == 400 and reply["field"] == "body" and "limit" in reply["error"]
    assert server.infer(body_of(GOOD))[0] == 200


def test_dynamic_batching_gathers_concurrent_requests_and_splits_them_back(
    server: Server, folder: Path
) -> None:
    before = _metric(server, "exporter_batch_size")
    rows = [np.full((1, 16), i / 10, dtype=np.float32) for i in range(12)]
    singles = [server.infer(body_of(row))[1]["outputs"][0]["data"] for row in rows]
    after_singles = _metric(server, "exporter_batch_size")
    assert after_singles["count"] - before["count"] == 12  # one at a time: 12 calls of 1 row
    replies: list[Any] = [None] * len(rows)

    def send(index: int) -> None:
        replies[index] = server.infer(body_of(rows[index]))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(rows))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = _metric(server, "exporter_batch_size")
    assert all(reply[0] == 200 for reply in replies)
    for reply, single in zip(replies, singles, strict=True):
        np.testing.assert_allclose(reply[1]["outputs"][0]["data"], single, rtol=1e-5, atol=1e-6)
    assert after["sum"] - after_singles["sum"] == 12  # every row ran once
    assert after["count"] - after_singles["count"] < 12  # in fewer model calls than requests


def _metric(server: Server, name: str) -> dict[str, float]:
    status, text = server.request("GET", "/metrics")
    assert status == 200
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == f"{name}_count":
                values["count"] = sample.value
            if sample.name == f"{name}_sum":
                values["sum"] = sample.value
    return values


def test_metrics_count_requests_and_errors(server: Server) -> None:
    server.infer({"inputs": []})
    _, text = server.request("GET", "/metrics")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {s.labels["code"]: s.value for s in families["exporter_requests"].samples}
    errors = {s.labels["kind"]: s.value for s in families["exporter_request_errors"].samples}
    assert requests["200"] >= 1 and requests["400"] >= 1
    assert errors["bad_request"] >= 1
    assert "exporter_request_seconds" in families and "exporter_model_call_seconds" in families
    assert [s.value for s in families["exporter_ready"].samples] == [1.0]


GATED_SERVER = """
import sys, time
from pathlib import Path
import exporter.serving.server as server
from exporter.serving.__main__ import main

gate, loading = Path(sys.argv[1]), server.open_model

def open_model_when_let(prepared):
    while not gate.exists():
        time.sleep(0.01)
    return loading(prepared)

server.open_model = open_model_when_let
sys.exit(main(sys.argv[2:]))
"""
"""The real server, except that it loads the model only once the file ``argv[1]`` exists: the test sees
the not-ready state for as long as it needs, however fast the model loads."""


def test_not_ready_until_loaded_and_checked(folder: Path, tmp_path: Path) -> None:
    """Live answers as soon as the socket listens; ready (and infer) only after the golden check."""
    gate = tmp_path / "load"
    port = free_port()
    command = [
        sys.executable,
        "-c",
        GATED_SERVER,
        str(gate),
        str(folder),
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    server = Server(process, port)
    try:
        poll_until(server, "/v2/health/live", 200)
        status, reply = server.request("GET", "/v2/health/ready")
        assert status == 503 and reply["ready"] is False and "loading" in reply["reason"], reply
        refused = server.infer(body_of(GOOD))
        assert refused[0] == 503 and "not ready" in refused[1]["error"], refused
        assert server.request("GET", f"/v2/models/{NAME}")[1]["platform"] == "loading"
        gate.touch()
        poll_until(server, "/v2/health/ready", 200)
        assert server.infer(body_of(GOOD))[0] == 200
        assert server.request("GET", f"/v2/models/{NAME}")[1]["platform"] == "onnxruntime_onnx"
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert "ready:" in stderr and "golden cases match through HTTP" in stderr


def test_sigterm_drains_in_flight_requests_then_exits_0(folder: Path) -> None:
    server = start(folder, "--max-batch-delay-ms", "1500", "--max-batch-size", "64")
    in_flight: list[Any] = []
    sender = threading.Thread(target=lambda: in_flight.append(server.infer(body_of(GOOD))))
    sender.start()
    time.sleep(0.4)  # the request now waits in the batcher for 1.5 s
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    late = server.infer(body_of(GOOD))
    ready = server.request("GET", "/v2/health/ready")
    sender.join(timeout=30)
    _, stderr = server.process.communicate(timeout=60)  # no second SIGTERM: that one exits 143 at once
    code = server.process.returncode
    assert late[0] == 503 and "shutting down" in late[1]["error"]
    assert ready[0] == 503 and "draining" in ready[1]["reason"]
    assert in_flight and in_flight[0][0] == 200 and in_flight[0][1]["outputs"][0]["shape"] == [2, 4]
    assert code == 0, stderr
    assert "drained and stopped" in stderr


def _copy(folder: Path, destination: Path) -> Path:
    shutil.copytree(folder, destination)
    return destination


def test_tampered_folder_is_refused_before_listening(folder: Path, tmp_path: Path) -> None:
    tampered = _copy(folder, tmp_path / "tampered")
    with (tampered / "model.onnx").open("ab") as handle:
        handle.write(b"\0")
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "exporter.serving", str(tampered), "--port", str(port)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.onnx" in lines[0] and "modified" in lines[0], result.stderr
    with socket.socket() as sock:  # nothing listened on the port
        sock.bind(("127.0.0.1", port))


def test_golden_mismatch_fails_the_start_up_check_with_exit_1(folder: Path, tmp_path: Path) -> None:
    """Golden outputs changed and re-hashed (so the integrity check passes): the HTTP check catches it."""
    broken = _copy(folder, tmp_path / "broken")
    manifest = json.loads((broken / "manifest.json").read_text())
    case = next(entry for entry in manifest["golden"] if "outputs" in entry)
    path = broken / case["outputs"]
    with np.load(path) as archive:
        outputs = {key: archive[key] + 1.0 for key in archive.files}
    np.savez(path, **outputs)
    manifest["files"][case["outputs"]] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (broken / "manifest.json").write_text(json.dumps(manifest))
    server = start(broken, wait=False)
    _, stderr = server.process.communicate(timeout=120)
    assert server.process.returncode == 1, stderr
    assert f"golden case {case['case']}" in stderr and "outside" in stderr


def test_cli_serve_refuses_an_unshipped_backend(folder: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "serve", str(folder), "--backend", "openvino"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 2
    assert "not shipped" in result.stderr and "Traceback" not in result.stderr


def test_the_server_imports_no_torch() -> None:
    code = "import sys, exporter.serving.server, exporter.serving.__main__; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "False"


@pytest.fixture(scope="module")
def every_backend(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of every target that ``exporter verify`` passes: what serve must then serve."""
    folder = export_tiny_mlp(tmp_path_factory.mktemp("every"), targets=("all",))
    assert_verify_passes(folder)
    return folder


def assert_verify_passes(folder: Path) -> None:
    """``exporter verify`` (a fresh process, as CI runs it) exits 0 on ``folder``."""
    verified = subprocess.run(
        [sys.executable, "-m", "exporter", "verify", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr


@pytest.mark.slow
def test_every_verified_file_backend_is_one_serve_offers(every_backend: Path) -> None:
    from exporter.documents.manifest import read_manifest
    from exporter.serving.artifact import shipped_artifacts

    shipped = shipped_artifacts(read_manifest(every_backend))
    assert set(FILE_BACKENDS) <= set(shipped), shipped
    assert {shipped[name].platform for name in FILE_BACKENDS} == set(PLATFORMS.values())


PLATFORMS = {
    "onnxruntime": "onnxruntime_onnx",
    "openvino": "openvino_xml",
    "torchscript": "pytorch_torchscript",
    "aotinductor": "pytorch_aotinductor",
}
FILE_BACKENDS = tuple(PLATFORMS)


@pytest.mark.slow
@pytest.mark.parametrize("backend", FILE_BACKENDS)
def test_every_file_backend_serves_the_golden_cases(
    every_backend: Path, tolerance: dict[str, float], backend: str
) -> None:
    server = start(every_backend, "--backend", backend)
    try:
        metadata = server.request("GET", f"/v2/models/{NAME}")[1]
        for inputs, outputs in golden(every_backend):
            status, reply = server.infer(body_of(inputs["x"]))
            assert status == 200, reply
            actual = np.asarray(reply["outputs"][0]["data"], dtype=np.float32).reshape(
                reply["outputs"][0]["shape"]
            )
            np.testing.assert_allclose(
                actual, outputs["output"], atol=tolerance["atol"], rtol=tolerance["rtol"]
            )
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr
    assert f"with {backend} (" in stderr
    assert metadata["platform"] == PLATFORMS[backend]

"""The faces (``verify``, ``serve``, ``package``, ``inspect``) on an artifacts folder whose ONNX model keeps
its weights in one ``model.onnx.data`` beside it (issue 26): the manifest hashes the data file, verify
re-checks it, serve loads a hash-checked copy of it, package ships it beside the model (Triton's
``1/model.onnx`` + ``1/model.onnx.data``), and a model whose external-data location leaves the folder, names
an unhashed file or ONNX Runtime's in-memory marker is refused in one line before ONNX Runtime opens it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from exporter.cli import app
from exporter.convert.onnx_files import external_locations as onnx_locations
from exporter.convert.onnx_files import move_onnx_model, save_onnx
from exporter.documents.external_data import (
    SCHEMA,
    UnreadableModel,
    external_locations,
    graph_without_weights,
)
from exporter.documents.files import sha256_file
from exporter.documents.manifest import read_manifest
from exporter.errors import ExitCode, UsageError
from exporter.packaging.triton import triton_repository
from exporter.pipeline import ExportOptions, export
from exporter.report.inspect import summarize_onnx
from exporter.serving.artifact import choose_artifact, copy_checked
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import FAST_TIMING, export_tiny_mlp
from tests.models import MODELS
from tests.test_serve import body_of, golden, start

ROOT = Path(__file__).resolve().parents[1]
DATA = "model.onnx.data"


def _rehash(folder: Path, *names: str) -> None:
    """Record the current sha256 of ``names`` in the manifest, as an attacker who rewrites it would."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name in names:
        path = folder / name
        manifest["files"][name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))


def _externalize(folder: Path) -> None:
    """Re-save ``model.onnx`` with its weights in ``model.onnx.data`` and hash both in the manifest: the
    folder an export with ``--external-data`` writes."""
    model = onnx.load(str(folder / "model.onnx"))
    save_onnx(model, folder / "model.onnx", external=True)
    _rehash(folder, "model.onnx", DATA)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = export_tiny_mlp(tmp_path_factory.mktemp("faces_external"))
    _externalize(folder)
    assert onnx_locations(folder / "model.onnx") == {DATA}
    return folder


@pytest.fixture
def folder(exported: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(exported, target)
    return target


def _invoke(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [*map(str, args)])
    return result.exit_code, result.output


def _point_weights_at(folder: Path, location: str) -> None:
    """Rewrite ``model.onnx``'s external-data locations (the bytes stay where they were) and re-hash it."""
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(model, str(folder / "model.onnx"))
    _rehash(folder, "model.onnx")


# --- the manifest and verify --------------------------------------------------------------------------


def test_verify_passes_and_hashes_the_data_file(exported: Path, tmp_path: Path) -> None:
    assert DATA in read_manifest(exported).files
    code, output = _invoke("verify", exported, "--json", tmp_path / "verify.json")
    assert code == ExitCode.OK, output
    checks = json.loads((tmp_path / "verify.json").read_text())["checks"]
    integrity = next(check for check in checks if check["name"] == "files")
    assert integrity["passed"] and f"{len(read_manifest(exported).files)} files" in integrity["detail"]
    assert any(check["kind"] == "parity" and check["passed"] for check in checks)


def test_a_tampered_data_file_fails_verify_with_exit_1(folder: Path) -> None:
    data = bytearray((folder / DATA).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / DATA).write_bytes(bytes(data))
    code, output = _invoke("verify", folder)
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert f"{DATA} was modified after export" in output


def test_a_missing_data_file_fails_verify_with_exit_1(folder: Path) -> None:
    (folder / DATA).unlink()
    code, output = _invoke("verify", folder)
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert f"{DATA} is missing" in output
    assert f"its external data {DATA} is missing" in output  # the parity check says why it did not load


# --- hostile locations ----------------------------------------------------------------------------------

HOSTILE = {
    "parent": ("../outside.data", "not a file name beside the model"),
    "absolute": ("{outside}", "not a file name beside the model"),
    "subfolder": ("golden/model.onnx.data", "not a file name beside the model"),
    "memory": ("*/_ORT_MEM_ADDR_/*", "in-memory marker"),
    "unlisted": ("extra.data", "does not list"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
@pytest.mark.parametrize("command", ["verify", "package"])
def test_a_location_outside_the_hashed_files_is_refused_in_one_line(
    folder: Path, tmp_path: Path, case: str, command: str
) -> None:
    """The manifest is rewritten to match (the hash check passes): the location check is what refuses."""
    outside = tmp_path / "outside.data"
    shutil.copyfile(folder / DATA, outside)
    shutil.copyfile(folder / DATA, folder / "extra.data")
    location, reason = HOSTILE[case]
    _point_weights_at(folder, location.format(outside=outside))
    args = [command, folder] + (["--out", tmp_path / "bundle"] if command == "package" else [])
    code, output = _invoke(*args)
    assert code == ExitCode.BAD_INPUT, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "'model.onnx' keeps weights in" in lines[0] and reason in lines[0], output
    assert not (tmp_path / "bundle").exists()


def test_a_data_file_linked_out_of_the_folder_is_refused(folder: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.data"
    shutil.copyfile(folder / DATA, secret)
    (folder / DATA).unlink()
    (folder / DATA).symlink_to(secret)
    code, output = _invoke("verify", folder)
    assert code == ExitCode.BAD_INPUT, output
    assert "symlink" in output and DATA in output


def test_serve_refuses_a_location_outside_the_folder_before_copying(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.data"
    shutil.copyfile(folder / DATA, outside)
    _point_weights_at(folder, str(outside))
    manifest = read_manifest(folder)
    private = tmp_path / "private"
    with pytest.raises(UsageError, match=r"keeps weights in .* not a file name beside the model"):
        copy_checked(folder, manifest, choose_artifact(folder, manifest, "onnxruntime"), private)
    assert not private.exists()


# --- serve --------------------------------------------------------------------------------------------


def test_the_private_copy_holds_the_checked_data_file(exported: Path, tmp_path: Path) -> None:
    manifest = read_manifest(exported)
    artifact = choose_artifact(exported, manifest, "onnxruntime")
    assert artifact.files == ("model.onnx", DATA)
    copy_checked(exported, manifest, artifact, tmp_path / "private")
    assert sha256_file(tmp_path / "private" / DATA) == manifest.files[DATA].sha256


@pytest.mark.slow
def test_serve_answers_from_a_model_with_external_data(exported: Path) -> None:
    server = start(exported)
    try:
        inputs, outputs = golden(exported)[0]
        status, reply = server.infer(body_of(inputs["x"]))
        assert status == 200, reply
        got = np.asarray(reply["outputs"][0]["data"], dtype=np.float32)
        np.testing.assert_allclose(got, outputs["output"].reshape(-1), rtol=1e-4, atol=1e-5)
    finally:
        code, stderr = server.stop()
    assert code == 0, stderr


def test_serve_refuses_a_tampered_data_file_before_listening(folder: Path) -> None:
    with (folder / DATA).open("ab") as handle:
        handle.write(b"\0")
    result = subprocess.run(
        [sys.executable, "-m", "exporter.serving", str(folder), "--port", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and DATA in lines[0] and "modified" in lines[0], result.stderr


# --- package ------------------------------------------------------------------------------------------


def _outputs(model: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    return list(session.run(None, inputs))


@pytest.mark.slow
def test_package_ships_the_data_file_in_the_bundle_and_the_triton_repository(
    exported: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    code, output = _invoke("package", exported, "--out", bundle, "--backend", "onnxruntime")
    assert code == ExitCode.OK, output
    assert sha256_file(bundle / "artifacts" / DATA) == sha256_file(exported / DATA)
    version = bundle / "model_repository" / "mlp" / "1"
    assert sorted(path.name for path in version.iterdir()) == ["model.onnx", DATA]
    assert onnx_locations(version / "model.onnx") == {DATA}
    inputs, outputs = golden(exported)[0]
    np.testing.assert_allclose(_outputs(version / "model.onnx", inputs)[0], outputs["output"], rtol=1e-4)
    assert f"(its weights in `1/{DATA}`)" in (bundle / "README.md").read_text()


def test_triton_renames_the_data_file_after_its_model(folder: Path, tmp_path: Path) -> None:
    """A model shipped under another name (``model.int8.onnx`` + ``model.int8.onnx.data``) lands in ``1/``
    as ``model.onnx`` + ``model.onnx.data``, its references following the data file."""
    move_onnx_model(folder / "model.onnx", folder / "model.int8.onnx")
    _rehash(folder, "model.int8.onnx", "model.int8.onnx.data")
    manifest = read_manifest(folder)
    artifact = choose_artifact(folder, manifest, "onnxruntime")
    renamed = type(artifact)(**{**artifact.__dict__, "file": "model.int8.onnx"})
    renamed = type(artifact)(**{**renamed.__dict__, "files": ("model.int8.onnx", "model.int8.onnx.data")})
    triton = triton_repository(folder, manifest, renamed, tmp_path / "repository")
    version = tmp_path / "repository" / "mlp" / "1"
    assert triton.companions == (DATA,)
    assert sorted(path.name for path in version.iterdir()) == ["model.onnx", DATA]
    assert onnx_locations(version / "model.onnx") == {DATA}
    inputs, outputs = golden(folder)[0]
    np.testing.assert_allclose(_outputs(version / "model.onnx", inputs)[0], outputs["output"], rtol=1e-4)


# --- inspect and the reader itself ----------------------------------------------------------------------


def test_inspect_counts_the_data_file_without_loading_it(exported: Path) -> None:
    summary = summarize_onnx(exported / "model.onnx")
    size = (exported / DATA).stat().st_size
    assert summary["external_data"] == {DATA: size}
    assert summary["bytes"] == (exported / "model.onnx").stat().st_size + size
    assert summary["parameters"] > 0


def _tensor(name: str, location: str) -> TensorProto:
    tensor = helper.make_tensor(name, TensorProto.FLOAT, [2], [1.0, 2.0])
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "8")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_locations_are_found_wherever_onnx_runtime_would_load_a_tensor(tmp_path: Path) -> None:
    inner = helper.make_graph(
        [helper.make_node("Identity", ["w_sub"], ["y_sub"])],
        "branch",
        [],
        [helper.make_tensor_value_info("y_sub", TensorProto.FLOAT, [2])],
        initializer=[_tensor("w_sub", "subgraph.data")],
    )
    sparse = helper.make_sparse_tensor(
        _tensor("values", "sparse.data"), _tensor("indices", "indices.data"), [4]
    )
    nodes = [
        helper.make_node("Constant", [], ["c"], value=_tensor("c", "constant.data")),
        helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner),
    ]
    function = onnx.FunctionProto(name="f", domain="local", node=[nodes[0]], output=["c"])
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[_tensor("w", "initializer.data")],
        sparse_initializer=[sparse],
    )
    model = helper.make_model(graph, functions=[function])
    model.functions[0].node[0].attribute[0].t.external_data[0].value = "function.data"
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_locations(path) == {
        "subgraph.data",
        "sparse.data",
        "indices.data",
        "constant.data",
        "function.data",
        "initializer.data",
    }


def test_the_graph_without_weights_is_the_graph(exported: Path, tmp_path: Path) -> None:
    """What Triton's config and inspect read: every node, input, output and initializer's name and dims of
    a self-contained model, none of its values."""
    whole = onnx.load(str(exported / "model.onnx"))
    onnx.save_model(whole, str(tmp_path / "whole.onnx"))
    stripped = onnx.ModelProto.FromString(graph_without_weights(tmp_path / "whole.onnx"))
    assert stripped.graph.node == whole.graph.node
    assert stripped.graph.input == whole.graph.input and stripped.graph.output == whole.graph.output
    assert [(t.name, list(t.dims)) for t in stripped.graph.initializer] == [
        (t.name, list(t.dims)) for t in whole.graph.initializer
    ]
    assert not any(t.raw_data or t.float_data for t in stripped.graph.initializer)
    assert any(t.raw_data or t.float_data for t in whole.graph.initializer)
    assert stripped.opset_import == whole.opset_import and stripped.ir_version == whole.ir_version


def test_the_reader_s_schema_is_onnx_s() -> None:
    """Every field on a path from ModelProto to a tensor's external_data is walked: the table is derived
    again from onnx's own descriptors, so a new such field in a newer onnx fails here."""
    messages = {}
    pending = [onnx.ModelProto.DESCRIPTOR]
    while pending:
        message = pending.pop()
        if message.name not in messages:
            messages[message.name] = message
            pending += [f.message_type for f in message.fields if f.message_type is not None]
    reaching = {"TensorProto"}
    grown = True
    while grown:
        before = len(reaching)
        reaching |= {
            name
            for name, message in messages.items()
            if any(f.message_type is not None and f.message_type.name in reaching for f in message.fields)
        }
        grown = len(reaching) > before
    derived = {
        name: {
            f.number: f.message_type.name
            for f in messages[name].fields
            if f.message_type is not None and f.message_type.name in reaching
        }
        for name in reaching
    }
    external = onnx.TensorProto.DESCRIPTOR.fields_by_name["external_data"]
    derived["TensorProto"] = {external.number: external.message_type.name}
    assert derived == SCHEMA


def test_a_damaged_model_is_a_failed_check_not_a_refused_folder(folder: Path) -> None:
    (folder / "model.onnx").write_bytes(b"\x0f" * 64)
    code, output = _invoke("verify", folder)
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert "model.onnx was modified after export" in output


# --- an export with --external-data and int8, end to end ----------------------------------------------


@pytest.fixture(scope="module")
def exported_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The attention block exported with ``external_data`` and dynamic int8: both models keep their
    weights in their own ``.data`` (its projections are past onnx's 1 KB threshold even in int8)."""
    root = tmp_path_factory.mktemp("faces_external_int8")
    checkpoint = root / "attention.pt"
    torch.save(MODELS["attention"].build().state_dict(), checkpoint)
    settings: dict[str, object] = {
        "checkpoint": checkpoint,
        "name": "attention",
        "model_ref": MODELS["attention"].ref,
        "spec": InputSpec(tuple(parse_tensor_spec(s) for s in MODELS["attention"].inputs)),
        "out": root / "artifacts",
        "timing": FAST_TIMING,
        "benchmark": False,
        "batch_sizes": (1,),
        "external_data": True,
        "quantization": {"mode": "dynamic", "samples": 16},
    }
    result = export(ExportOptions.from_settings(settings))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    return result.out_dir


@pytest.mark.slow
def test_an_int8_export_with_external_data_verifies_and_packages(exported_int8: Path, tmp_path: Path) -> None:
    files = read_manifest(exported_int8).files
    assert {DATA, "model.int8.onnx.data"} <= set(files)
    assert onnx_locations(exported_int8 / "model.int8.onnx") == {"model.int8.onnx.data"}
    code, output = _invoke("verify", exported_int8)
    assert code == ExitCode.OK, output
    bundle = tmp_path / "bundle"
    code, output = _invoke("package", exported_int8, "--out", bundle, "--backend", "onnxruntime-int8")
    assert code == ExitCode.OK, output
    assert {"model.int8.onnx", "model.int8.onnx.data"} <= {p.name for p in (bundle / "artifacts").iterdir()}
    version = bundle / "model_repository" / "attention" / "1"
    assert sorted(path.name for path in version.iterdir()) == ["model.onnx", DATA]
    inputs, _ = golden(exported_int8)[0]
    expected = _outputs(exported_int8 / "model.int8.onnx", inputs)[0]
    np.testing.assert_array_equal(_outputs(version / "model.onnx", inputs)[0], expected)


@pytest.mark.slow
def test_a_tampered_int8_data_file_fails_verify(exported_int8: Path, tmp_path: Path) -> None:
    folder = shutil.copytree(exported_int8, tmp_path / "copy")
    data = bytearray((folder / "model.int8.onnx.data").read_bytes())
    data[-1] ^= 0x01
    (folder / "model.int8.onnx.data").write_bytes(bytes(data))
    code, output = _invoke("verify", folder)
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert "model.int8.onnx.data was modified after export" in output


def test_damaged_bytes_are_refused_as_unreadable_never_a_crash(exported: Path, tmp_path: Path) -> None:
    """Random damage to a model: the reader answers or raises UnreadableModel, nothing else (no
    IndexError, no hang, no recursion error); a model nested past the depth limit is refused."""
    original = (exported / "model.onnx").read_bytes()
    rng = np.random.default_rng(0)
    path = tmp_path / "damaged.onnx"
    outcomes = set()
    for _ in range(300):
        damaged = bytearray(original)
        for index in rng.integers(0, len(damaged), size=int(rng.integers(1, 8))):
            damaged[index] = int(rng.integers(0, 256))
        path.write_bytes(bytes(damaged[: int(rng.integers(1, len(damaged) + 1))]))
        try:
            external_locations(path)
            graph_without_weights(path)
            outcomes.add("read")
        except UnreadableModel:
            outcomes.add("refused")
    assert outcomes == {"read", "refused"}

    def field(number: int, payload: bytes) -> bytes:  # a length-delimited field (lengths < 2**14 here)
        length = len(payload)
        prefix = bytes([length]) if length < 0x80 else bytes([length & 0x7F | 0x80, length >> 7])
        return bytes([number << 3 | 2]) + prefix + payload

    graph = b""
    for _ in range(40):  # graph -> node -> attribute -> graph: 120 messages deep (protobuf refuses 100)
        graph = field(1, field(5, field(6, graph)))
    path.write_bytes(field(7, graph))
    with pytest.raises(UnreadableModel, match="nest more than"):
        external_locations(path)
    with pytest.raises(UnreadableModel, match="nest more than"):
        graph_without_weights(path)


def test_serve_refuses_up_front_a_private_copy_that_cannot_fit(exported: Path, tmp_path: Path) -> None:
    """A multi-GB ``.data`` and a small temporary folder: refused in one line before any byte is copied
    (here a 4 KiB tmpfs and a tiny folder)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4k", "tmpfs", str(disk)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        manifest = read_manifest(exported)
        artifact = choose_artifact(exported, manifest, "onnxruntime")
        with pytest.raises(UsageError, match=r"private copy .* needs .* free; set TMPDIR"):
            copy_checked(exported, manifest, artifact, disk / "private")
        assert not (disk / "private").exists()
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True, check=False)

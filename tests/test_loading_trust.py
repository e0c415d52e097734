"""Loading an untrusted checkpoint runs nothing it carries: crafted files are refused before any reader.

Each crafted file is a real saved artifact with one part swapped for a payload that writes a marker file,
so "nothing ran" is observed, not assumed.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ExitCode, LoadError
from exporter.loading.checkpoint import CheckpointFormat, LoadRequest, load_model
from exporter.loading.checkpoint_audit import audit_exported_program, audit_torch_save, audit_torchscript
from exporter.loading.pickle_audit import UnsafeCheckpointError

Rewrite = Callable[[bytes], bytes]


class _Payload:
    """Unpickling this writes ``marker``: the side effect every test checks did not happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).write_text('ran')",))


def _payload(marker: Path, protocol: int = 2) -> bytes:
    return pickle.dumps(_Payload(marker), protocol=protocol)


def _code(marker: Path) -> str:
    return f"__import__('pathlib').Path({str(marker)!r}).write_text('ran')"


def _rewrite(src: Path, dst: Path, edits: dict[str, Rewrite], extra: dict[str, bytes] | None = None) -> Path:
    """Copy a zip record by record, rewriting the records whose name ends with a key of ``edits``."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on the duplicate record one test adds on purpose
        root = old.namelist()[0].split("/", 1)[0]
        for info in old.infolist():
            data = old.read(info)
            for suffix, edit in edits.items():
                if info.filename.endswith(suffix):
                    data = edit(data)
            new.writestr(info, data)
        for name, data in (extra or {}).items():
            new.writestr(f"{root}/{name}", data)
    return dst


def _json_edit(change: Callable[[dict[str, Any]], None]) -> Rewrite:
    def edit(data: bytes) -> bytes:
        document = json.loads(data)
        change(document)
        return json.dumps(document).encode()

    return edit


def _linear() -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(4, 3).eval()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def save_linear_program(folder: Path) -> Path:
    """A real ``torch.export.save`` of an ``nn.Linear`` program with a dynamic batch."""
    path = folder / "legit.pt2"
    batch = torch.export.Dim("batch", min=2)
    program = torch.export.export(_linear(), (torch.randn(2, 4),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    return path


def save_scripted_linear(folder: Path) -> Path:
    path = folder / "legit.ts"
    torch.jit.script(_linear()).save(str(path))
    return path


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return save_linear_program(tmp_path)


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    return save_scripted_linear(tmp_path)


def _pickled_weight(exported: Path, tmp_path: Path, marker: Path) -> Path:
    """The review's attack: weight ``weight`` swapped for a pickle, its config flipped to use_pickle."""
    config = json.loads(zipfile.ZipFile(exported).read("legit/data/weights/model_weights_config.json"))
    path_name = config["config"]["weight"]["path_name"]

    def flip(document: dict[str, Any]) -> None:
        document["config"]["weight"]["use_pickle"] = True

    edits = {
        "model_weights_config.json": _json_edit(flip),
        f"data/weights/{path_name}": lambda _: _payload(marker),
    }
    return _rewrite(exported, tmp_path / "evil.pt2", edits)


def _pickled_constant(exported: Path, tmp_path: Path, marker: Path) -> Path:
    def add(document: dict[str, Any]) -> None:
        entry = {"path_name": "tensor_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        document["config"]["c"] = entry

    edits = {"model_constants_config.json": _json_edit(add)}
    return _rewrite(exported, tmp_path / "evil.pt2", edits, {"data/constants/tensor_0": _payload(marker)})


def _pickled_sample_inputs(exported: Path, tmp_path: Path, marker: Path) -> Path:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return _rewrite(
        exported, tmp_path / "evil.pt2", {"data/sample_inputs/model.pt": lambda _: buffer.getvalue()}
    )


def _evaluated_shape(exported: Path, tmp_path: Path, marker: Path) -> Path:
    def inject(data: bytes) -> bytes:
        text, count = re.subn(
            r'"expr_str": "[^"]*"', lambda _: f'"expr_str": {json.dumps(_code(marker))}', data.decode()
        )
        assert count, "the program has no symbolic shape to tamper with"
        return text.encode()

    return _rewrite(exported, tmp_path / "evil.pt2", {"models/model.json": inject})


def _compiled_guard(exported: Path, tmp_path: Path, marker: Path) -> Path:
    def inject(document: dict[str, Any]) -> None:
        document["guards_code"] = [f"0 #\n)\n{_code(marker)}\ndef g():\n  (0"]

    return _rewrite(exported, tmp_path / "evil.pt2", {"models/model.json": _json_edit(inject)})


def _legacy_fallback(exported: Path, tmp_path: Path, marker: Path) -> Path:
    """torch.export.load falls back to the pre-2.7 layout when the .pt2 holds no program, and retries
    that layout's ``serialized_*`` records with ``torch.load(weights_only=False)``."""
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    path = tmp_path / "evil.pt2"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/archive_format", "pt2")
        archive.writestr("evil/archive_version", ARCHIVE_VERSION_VALUE)
        archive.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        program = zipfile.ZipFile(exported).read("legit/models/model.json")
        archive.writestr("serialized_exported_program.json", program)
        archive.writestr("serialized_state_dict.pt", b"")
        archive.writestr("serialized_constants.json", _payload(marker))
        archive.writestr("serialized_example_inputs.pt", b"")
    return path


_CRAFTED_PT2 = {
    "pickled weight": (
        _pickled_weight,
        "stores weight 'weight' as a pickle (model_weights_config.json: use_pickle)",
    ),
    "pickled constant": (_pickled_constant, "stores constant 'c' as a pickle (model_constants_config.json"),
    "pickled sample inputs": (
        _pickled_sample_inputs,
        "has a pickle (data/sample_inputs/model.pt: data.pkl) that imports builtins.exec",
    ),
    "evaluated shape": (_evaluated_shape, "has a shape expression in models/model.json that is not plain"),
    "legacy layout fallback": (
        _legacy_fallback,
        "has a pickle (serialized_constants.json) that imports builtins.exec",
    ),
    "compiled guard": (
        _compiled_guard,
        "has a shape guard in models/model.json that is not a plain comparison",
    ),
}


@pytest.mark.parametrize("case", list(_CRAFTED_PT2))
def test_crafted_exported_program_is_refused_before_anything_runs(
    case: str, exported: Path, tmp_path: Path, marker: Path
) -> None:
    craft, expected = _CRAFTED_PT2[case]
    path = craft(exported, tmp_path, marker)
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path))
    message = str(caught.value)
    assert expected in message, message
    assert f"checkpoint '{path}'" in message and "--trust-checkpoint" in message and "\n" not in message
    assert caught.value.exit_code is ExitCode.BAD_INPUT
    assert not marker.exists()


def test_the_review_attack_message_names_the_way_out(exported: Path, tmp_path: Path, marker: Path) -> None:
    path = _pickled_weight(exported, tmp_path, marker)
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path))
    assert str(caught.value) == (
        f"checkpoint '{path}' stores weight 'weight' as a pickle (model_weights_config.json: use_pickle), "
        "and unpickling can run arbitrary code; re-export it with torch.export.save from a trusted "
        "environment, or pass --trust-checkpoint if you trust where this file came from"
    )
    assert not marker.exists()


def test_code_outside_pickles_is_refused(exported: Path, tmp_path: Path) -> None:
    """AOTInductor libraries, non-operator graph targets and duplicate records never reach torch."""
    aoti = _rewrite(exported, tmp_path / "aoti.pt2", {}, {"data/aotinductor/model/model.so": b"\x7fELF"})
    with pytest.raises(
        LoadError, match=re.escape("holds AOTInductor compiled code (data/aotinductor/model/")
    ):
        load_model(LoadRequest(aoti))

    def retarget(document: dict[str, Any]) -> None:
        document["graph_module"]["graph"]["nodes"][-1]["target"] = "torch.os.system"

    target = _rewrite(exported, tmp_path / "target.pt2", {"models/model.json": _json_edit(retarget)})
    with pytest.raises(
        LoadError, match=re.escape("calls 'torch.os.system' in its graph (models/model.json)")
    ):
        load_model(LoadRequest(target))

    config = zipfile.ZipFile(exported).read("legit/data/weights/model_weights_config.json")
    twice = _rewrite(exported, tmp_path / "twice.pt2", {}, {"data/weights/model_weights_config.json": config})
    with pytest.raises(
        LoadError, match=re.escape("has two zip records named 'data/weights/model_weights_config.json'")
    ):
        load_model(LoadRequest(twice))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("zip.pt", {}),
        ("zip.pth", {}),
        ("legacy.pt", {"_use_new_zipfile_serialization": False}),
        ("protocol4.pt", {"pickle_protocol": 4}),
    ],
)
def test_torch_save_payload_is_named_and_never_runs(
    name: str, options: dict[str, Any], tmp_path: Path, marker: Path
) -> None:
    path = tmp_path / name
    torch.save({"state_dict": _linear().state_dict(), "hook": _Payload(marker)}, path, **options)
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path, "torch.nn:Linear", {"in_features": 4, "out_features": 3}))
    message = str(caught.value)
    assert "holds pickled Python objects (such as a whole nn.Module;" in message
    assert "imports builtins.exec), and unpickling can run arbitrary code" in message
    assert "--trust-checkpoint" in message and "\n" not in message
    assert not marker.exists()


def test_tampered_torchscript_constants_are_refused(scripted: Path, tmp_path: Path, marker: Path) -> None:
    path = _rewrite(scripted, tmp_path / "evil.ts", {"/constants.pkl": lambda _: _payload(marker)})
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path))
    message = str(caught.value)
    assert "has a pickle (constants.pkl) that imports builtins.exec" in message
    assert "re-save it with torch.jit.save from a trusted environment" in message
    assert not marker.exists()


def test_torchscript_extra_files_are_never_unpickled(tmp_path: Path, marker: Path) -> None:
    path = tmp_path / "extra.ts"
    torch.jit.save(torch.jit.script(_linear()), str(path), _extra_files={"payload.pkl": _payload(marker)})
    audit_torchscript(path)
    loaded = load_model(LoadRequest(path))
    assert loaded.format is CheckpointFormat.TORCHSCRIPT
    assert not marker.exists()


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_cli_refuses_the_crafted_program_with_one_line(
    command: str, exported: Path, tmp_path: Path, marker: Path
) -> None:
    path = _pickled_weight(exported, tmp_path, marker)
    args = [command, str(path), "--input", "x:float32:2,4"]
    if command == "export":
        args += ["--no-benchmark", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(error_lines) == 1, result.output
    assert "stores weight 'weight' as a pickle" in error_lines[0] and "--trust-checkpoint" in error_lines[0]
    assert "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_legitimate_files_pass_the_audit_that_refuses_their_tampered_twins(
    exported: Path, scripted: Path, tmp_path: Path, marker: Path
) -> None:
    """Each legitimate file passes; a copy of it with one pickle swapped for a payload is refused by the same
    audit, so a pass means the audit read that kind of file and found it clean, not that it skipped it."""

    def passes_and_twin_is_refused(audit: Callable[[Path], None], legitimate: Path, tampered: Path) -> None:
        audit(legitimate)
        with pytest.raises(UnsafeCheckpointError, match=r"builtins\.exec|as a pickle"):
            audit(tampered)

    passes_and_twin_is_refused(audit_exported_program, exported, _pickled_weight(exported, tmp_path, marker))
    passes_and_twin_is_refused(
        audit_exported_program, exported, _pickled_sample_inputs(exported, tmp_path, marker)
    )
    traced = tmp_path / "traced.ts"
    torch.jit.trace(_linear(), (torch.randn(2, 4),)).save(str(traced))
    for name, source in [("scripted", scripted), ("traced", traced)]:
        twin = _rewrite(source, tmp_path / f"evil-{name}.ts", {"/constants.pkl": lambda _: _payload(marker)})
        passes_and_twin_is_refused(audit_torchscript, source, twin)
    for name, options in [
        ("sd.pt", {}),
        ("sd.pth", {}),
        ("legacy.pt", {"_use_new_zipfile_serialization": False}),
    ]:
        checkpoint = {"model_state_dict": _linear().state_dict(), "epoch": 3, "betas": (0.9, 0.99)}
        torch.save(checkpoint, tmp_path / name, **options)
        torch.save({**checkpoint, "hook": _Payload(marker)}, tmp_path / f"evil-{name}", **options)
        passes_and_twin_is_refused(audit_torch_save, tmp_path / name, tmp_path / f"evil-{name}")
    assert not marker.exists()


@pytest.mark.parametrize("trust", [False, True])
def test_legitimate_files_still_load(exported: Path, scripted: Path, trust: bool) -> None:
    x = torch.randn(5, 4)
    reference = _linear()(x)
    for path, kind in [
        (exported, CheckpointFormat.EXPORTED_PROGRAM),
        (scripted, CheckpointFormat.TORCHSCRIPT),
    ]:
        loaded = load_model(LoadRequest(path, trust_checkpoint=trust))
        assert loaded.format is kind
        assert torch.allclose(loaded.module(x), reference)


@pytest.mark.parametrize(
    ("text", "plain"),
    [
        ("Symbol('s31', positive=True, integer=True)", True),
        ("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))", True),
        ("FloorDiv(s0, 2) + Mod(s1, 4) >= Float('0.5', precision=53)", True),
        ("__import__('os').system('id')", False),
        ("Symbol('x').__class__", False),
        ("eval(chr(49))", False),
        ("Symbol('a(b)')", False),
    ],
)
def test_shape_expressions_must_be_plain_arithmetic(text: str, plain: bool) -> None:
    from exporter.loading.checkpoint_audit import _is_plain_sympy

    assert _is_plain_sympy(text) is plain


@pytest.mark.parametrize(
    ("guard", "plain"),
    [
        ("L['x'].size()[0] >= 2", True),
        ("(L['x'].size()[0] % 2) == 0 and L['y'].stride()[1] == 1", True),
        ("math.isnan(L['flat_args'][0]) or L['x'].size()[0] == math.inf", True),
        ("torch.sym_max(L['x'].size()[0], 2) <= 8", True),
        ("L['x'].size()[0] == 2 # comment", False),
        ("L['x'].__class__", False),
        ("__import__('os')", False),
        ("L['x'].size()[0] == 2\nimport os", False),
        ('L["x"] == 1', False),
    ],
)
def test_shape_guards_must_be_plain_comparisons(guard: str, plain: bool) -> None:
    from exporter.loading.checkpoint_audit import _is_plain_guard

    assert _is_plain_guard(guard) is plain

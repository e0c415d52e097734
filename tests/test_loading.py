"""Loading stage: every checkpoint format, eval mode, and a clear refusal for anything unsafe or broken."""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from exporter.errors import ExitCode, LoadError, UsageError
from exporter.loading.checkpoint import CheckpointFormat, LoadRequest, load_model
from tests.models import MODELS, MLPWithBatchNorm


def _mlp() -> MLPWithBatchNorm:
    return MODELS["mlp"].build()  # type: ignore[return-value]


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    x = torch.randn(3, 16)
    with torch.no_grad():
        return torch.allclose(a(x), b(x))


def test_state_dict_with_factory(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(LoadRequest(path, MODELS["mlp"].ref))
    assert loaded.format is CheckpointFormat.STATE_DICT
    assert not loaded.module.training
    assert loaded.parameter_count == sum(p.numel() for p in model.parameters())
    assert loaded.file_size == path.stat().st_size and len(loaded.sha256) == 64
    assert _same_outputs(model, loaded.module)


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
def test_training_checkpoint_dict(tmp_path: Path, key: str) -> None:
    model = _mlp()
    path = tmp_path / "ckpt.pt"
    torch.save({key: model.state_dict(), "epoch": 7, "optimizer": {"lr": 0.1}}, path)
    loaded = load_model(LoadRequest(path, MODELS["mlp"].ref))
    assert any(key in note for note in loaded.notes)
    assert _same_outputs(model, loaded.module)


def test_data_parallel_and_compile_prefixes_are_stripped(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "dp.pt"
    torch.save({f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}, path)
    loaded = load_model(LoadRequest(path, MODELS["mlp"].ref))
    assert _same_outputs(model, loaded.module)


def test_factory_kwargs_are_passed(tmp_path: Path) -> None:
    model = MLPWithBatchNorm(features=6)
    path = tmp_path / "w.pt"
    torch.save(model.state_dict(), path)
    loaded = load_model(LoadRequest(path, MODELS["mlp"].ref, {"features": 6}))
    assert loaded.module.body[0].in_features == 6  # type: ignore[index]


def test_safetensors_with_factory(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    loaded = load_model(LoadRequest(path, MODELS["mlp"].ref))
    assert loaded.format is CheckpointFormat.SAFETENSORS
    assert _same_outputs(model, loaded.module)


def test_torchscript_archive(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "model.ts"
    torch.jit.script(model).save(str(path))
    loaded = load_model(LoadRequest(path))
    assert loaded.format is CheckpointFormat.TORCHSCRIPT
    assert not loaded.module.training
    assert _same_outputs(model, loaded.module)


def test_exported_program(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "model.pt2"
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.randn(4, 16),), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    loaded = load_model(LoadRequest(path))
    assert loaded.format is CheckpointFormat.EXPORTED_PROGRAM
    assert loaded.exported_program is not None
    assert _same_outputs(model, loaded.module)


def test_pickled_module_is_refused_without_trust(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_mlp(), path)
    with pytest.raises(LoadError, match="--trust-checkpoint") as caught:
        load_model(LoadRequest(path))
    assert caught.value.exit_code is ExitCode.BAD_INPUT
    assert "arbitrary code" in str(caught.value)


def test_pickled_module_loads_with_trust(tmp_path: Path) -> None:
    model = _mlp()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    loaded = load_model(LoadRequest(path, trust_checkpoint=True))
    assert loaded.format is CheckpointFormat.PICKLED_MODULE
    assert not loaded.module.training
    assert _same_outputs(model, loaded.module)


def test_state_dict_without_factory_asks_for_model(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), path)
    with pytest.raises(LoadError, match="--model"):
        load_model(LoadRequest(path))


def test_weights_that_do_not_fit_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    weights = _mlp().state_dict()
    weights.pop("body.4.bias")
    weights["extra.weight"] = torch.zeros(1)
    weights["body.0.weight"] = torch.zeros(2, 2)
    torch.save(weights, path)
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path, MODELS["mlp"].ref))
    message = str(caught.value)
    assert "1 missing (body.4.bias)" in message
    assert "1 unexpected (extra.weight)" in message
    assert "wrong shape" in message and "\n" not in message


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "does not exist"), (b"", "is empty"), (b"not a checkpoint at all", "not a PyTorch checkpoint")],
)
def test_bad_files_get_one_line_errors(tmp_path: Path, content: bytes | None, expected: str) -> None:
    path = tmp_path / "model.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LoadError, match=expected) as caught:
        load_model(LoadRequest(path, MODELS["mlp"].ref))
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("maker", ["state_dict", "torchscript"])
def test_truncated_checkpoint_is_a_load_error(tmp_path: Path, maker: str) -> None:
    path = tmp_path / "model.pt"
    if maker == "state_dict":
        torch.save(_mlp().state_dict(), path)
    else:
        torch.jit.script(_mlp()).save(str(path))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(LoadError, match="truncated"):
        load_model(LoadRequest(path, MODELS["mlp"].ref))


def test_bad_model_reference_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), path)
    for ref, expected in [
        ("no_colon", "package.module:callable"),
        ("missing/file.py:make", "does not exist"),
        (f"{MODELS['mlp'].ref.rpartition(':')[0]}:nope", "no attribute 'nope'"),
        ("not_a_real_module_xyz:make", "importing"),
    ]:
        with pytest.raises(UsageError, match=expected):
            load_model(LoadRequest(path, ref))


def test_factory_that_raises_names_the_factory(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(_mlp().state_dict(), path)
    with pytest.raises(LoadError, match="--model-kwargs"):
        load_model(LoadRequest(path, MODELS["mlp"].ref, {"no_such_argument": 1}))


_NET_SOURCE = """
import torch


class SpeakerNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)
"""


@pytest.fixture
def pickled_from_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A trusted whole module whose class lives in ``tmp_path/code/<module>.py``, saved, then forgotten (as a
    fresh exporter process would not know it); yields the checkpoint and the module's name."""
    name = f"speaker_net_{uuid.uuid4().hex[:8]}"
    code = tmp_path / "code"
    code.mkdir()
    (code / f"{name}.py").write_text(_NET_SOURCE)
    importlib.invalidate_caches()
    monkeypatch.setattr(sys, "path", [str(code), *sys.path])
    checkpoint = tmp_path / "whole.pt"
    torch.save(importlib.import_module(name).SpeakerNet(), checkpoint)
    del sys.modules[name]
    monkeypatch.setattr(sys, "path", sys.path[1:])  # undone in reverse: the original list comes back
    yield checkpoint, name
    sys.modules.pop(name, None)


def test_trusted_pickle_finds_its_class_in_the_working_directory(
    pickled_from_folder: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, name = pickled_from_folder
    monkeypatch.chdir(checkpoint.parent / "code")
    loaded = load_model(LoadRequest(checkpoint, trust_checkpoint=True))
    assert type(loaded.module).__module__ == name and loaded.format is CheckpointFormat.PICKLED_MODULE


def test_trusted_pickle_whose_module_is_not_importable_names_it_and_the_fix(
    pickled_from_folder: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    checkpoint, name = pickled_from_folder
    monkeypatch.chdir(checkpoint.parent)
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(checkpoint, trust_checkpoint=True))
    message = str(caught.value)
    assert f"classes from module '{name}'" in message and str(checkpoint.parent) in message
    assert f"run exporter from the folder holding {name}.py" in message and "PYTHONPATH" in message
    assert "\n" not in message


def test_trusted_pickle_of_a_class_defined_in_the_saving_script_says_to_move_it(tmp_path: Path) -> None:
    class ScriptNet(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x

    ScriptNet.__module__, ScriptNet.__qualname__ = "__main__", "ScriptNet"  # as `python train.py` saves it
    main = sys.modules["__main__"]
    path = tmp_path / "whole.pt"
    main.ScriptNet = ScriptNet  # type: ignore[attr-defined]
    try:
        torch.save(ScriptNet(), path)
    finally:
        delattr(main, "ScriptNet")
    with pytest.raises(
        LoadError, match="defined in the script that saved the checkpoint; move it into a module"
    ):
        load_model(LoadRequest(path, trust_checkpoint=True))

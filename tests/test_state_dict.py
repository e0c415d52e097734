"""Finding the weights in a training checkpoint's dict: the common keys, --state-dict-key, and refusals that
name the keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from exporter.errors import LoadError
from exporter.loading.checkpoint import LoadRequest, load_model
from tests.models import MODELS

REF = MODELS["tuple_encoder"].ref


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return MODELS["tuple_encoder"].build().state_dict()


def _save(tmp_path: Path, payload: Any) -> Path:
    path = tmp_path / "encoder_state.pt"
    torch.save(payload, path)
    return path


def _loaded_weights(path: Path, key: str | None = None) -> dict[str, torch.Tensor]:
    return load_model(LoadRequest(path, REF, state_dict_key=key)).module.state_dict()


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_published_encoders_model_state_dict_is_found_and_said(tmp_path: Path) -> None:
    weights = _weights(1)
    optimizer = torch.optim.SGD(MODELS["tuple_encoder"].build().parameters(), lr=0.1, momentum=0.9)
    path = _save(tmp_path, {"model_state": weights, "optimizer_state": optimizer.state_dict(), "step": 3})
    loaded = load_model(LoadRequest(path, REF))
    assert _equal(loaded.module.state_dict(), weights)
    assert loaded.state_dict_key == "model_state"
    assert loaded.to_json()["state_dict_key"] == "model_state"
    assert "'model_state' entry" in loaded.describe()
    assert any("'model_state' entry" in note for note in loaded.notes)


def test_raw_and_ema_weights_side_by_side_are_refused_naming_both(tmp_path: Path) -> None:
    path = _save(tmp_path, {"state_dict": _weights(1), "state_dict_ema": _weights(2), "epoch": 9})
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path, REF))
    message = str(caught.value)
    assert "'state_dict', 'state_dict_ema'" in message and "--state-dict-key" in message
    assert "\n" not in message


def test_state_dict_key_picks_the_entry(tmp_path: Path) -> None:
    ema = _weights(2)
    path = _save(tmp_path, {"state_dict": _weights(1), "state_dict_ema": ema, "epoch": 9})
    assert _equal(_loaded_weights(path, "state_dict_ema"), ema)


def test_a_dotted_key_reaches_a_nested_entry_and_data_parallel_prefixes_go(tmp_path: Path) -> None:
    weights = _weights(1)
    wrapped = {f"module.{name}": value for name, value in weights.items()}
    path = _save(tmp_path, {"checkpoint": {"model": wrapped}, "step": 3})
    loaded = load_model(LoadRequest(path, REF, state_dict_key="checkpoint.model"))
    assert _equal(loaded.module.state_dict(), weights)
    assert loaded.state_dict_key == "checkpoint.model"
    assert any("'module.' prefix" in note for note in loaded.notes)


def test_an_empty_ema_slot_does_not_make_the_weights_ambiguous(tmp_path: Path) -> None:
    weights = _weights(1)
    path = _save(tmp_path, {"model": weights, "ema": {}, "step": 3})
    assert _equal(_loaded_weights(path), weights)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("nope", "has no key 'nope' (keys: 'model_state', 'optimizer_state', 'step')"),
        ("step.count", "entry 'step' of checkpoint"),
        ("optimizer_state", "holds a dict (keys: 'state', 'param_groups'), not tensors keyed by name"),
    ],
)
def test_a_key_naming_no_weights_is_one_line_naming_what_is_there(
    tmp_path: Path, key: str, expected: str
) -> None:
    optimizer = {"state": {}, "param_groups": [{"lr": 0.1}]}
    path = _save(tmp_path, {"model_state": _weights(1), "optimizer_state": optimizer, "step": 3})
    with pytest.raises(LoadError) as caught:
        load_model(LoadRequest(path, REF, state_dict_key=key))
    message = str(caught.value)
    assert message.startswith(f"--state-dict-key '{key}'") and expected in message and "\n" not in message


def test_without_a_common_key_the_entries_holding_tensors_are_named(tmp_path: Path) -> None:
    path = _save(tmp_path, {"teacher": _weights(1), "student": _weights(2), "epoch": 1})
    with pytest.raises(LoadError, match=r"'teacher', 'student' hold tensors: pass --state-dict-key KEY"):
        load_model(LoadRequest(path, REF))


def test_state_dict_key_on_a_whole_module_is_noted_as_ignored(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(MODELS["tuple_encoder"].build()), path)
    loaded = load_model(LoadRequest(path, state_dict_key="model_state"))
    assert loaded.state_dict_key is None
    assert any("--state-dict-key model_state ignored" in note for note in loaded.notes)


def test_a_lightning_checkpoint_loses_its_attribute_prefix_and_other_submodules(tmp_path: Path) -> None:
    """Lightning saves ``state_dict`` as the LightningModule's: the network under ``model.``, beside a
    loss module's buffers."""
    weights = _weights(3)
    lightning = {f"model.{k}": v for k, v in weights.items()} | {"criterion.pos_weight": torch.ones(2)}
    path = _save(tmp_path, {"state_dict": lightning, "epoch": 4, "pytorch-lightning_version": "2.5.0"})
    loaded = load_model(LoadRequest(path, REF))
    assert _equal(loaded.module.state_dict(), weights)
    assert any("'model.' part of every name" in note and "1 other entries" in note for note in loaded.notes)


def test_a_prefix_that_does_not_give_the_models_names_is_not_stripped(tmp_path: Path) -> None:
    weights = {f"model.{k}": v for k, v in list(_weights(3).items())[:-1]}  # one weight short
    with pytest.raises(LoadError, match="do not fit"):
        load_model(LoadRequest(_save(tmp_path, weights), REF))

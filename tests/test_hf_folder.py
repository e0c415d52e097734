"""A Hugging Face folder read as data: a good one gives its facts; a hostile one (custom code, a pickle with a
side effect, absurd sizes, links, shards outside the folder, a lying safetensors header) is refused in one
line, exit 2, before anything from it runs."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
import torch

from exporter.errors import ExitCode, LoadError
from exporter.hf.folder import is_hf_folder, read_folder
from tests.hf_models import llama_folder


@pytest.fixture(scope="module")
def saved_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_folder(tmp_path_factory.mktemp("saved") / "llama")


@pytest.fixture
def folder(saved_llama: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good folder, to be made hostile by the test."""
    return Path(shutil.copytree(saved_llama, tmp_path / "llama"))


class _RunsACommand:
    """Unpickling this calls os.system: what a hostile ``pytorch_model.bin`` carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


def _edit_config(folder: Path, name: str = "config.json", **changes: Any) -> None:
    config = json.loads((folder / name).read_text())
    for key, value in changes.items():
        if value is _DELETE:
            del config[key]
        else:
            config[key] = value
    (folder / name).write_text(json.dumps(config))


_DELETE = object()


def _refused(folder: Path, trust: bool = False) -> str:
    """The one-line message of the refusal (and that it is one line with exit code 2)."""
    with pytest.raises(LoadError) as caught:
        read_folder(folder, trust)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code is ExitCode.BAD_INPUT
    return message


def test_a_good_llama_folder_reads_with_its_facts(folder: Path) -> None:
    assert is_hf_folder(folder)
    hf = read_folder(folder, trust_checkpoint=False)
    assert hf.model_type == "llama"
    assert hf.architectures == ("LlamaForCausalLM",)
    assert hf.weights == (folder / "model.safetensors",)
    assert hf.weights_format == "safetensors"
    assert {path.name for path in hf.tokenizer_files} == {"tokenizer.json", "tokenizer_config.json"}
    assert hf.has_tokenizer
    assert hf.config["num_key_value_heads"] == 2
    expected = sum(tensor.numel() for tensor in _state_dict(folder).values())
    assert hf.parameters == expected


def test_a_folder_without_config_is_not_a_hugging_face_folder(tmp_path: Path) -> None:
    assert not is_hf_folder(tmp_path)
    assert not is_hf_folder(tmp_path / "missing")
    assert "config.json" in _refused(tmp_path)


def test_auto_map_in_config_is_refused_unless_trusted(folder: Path) -> None:
    _edit_config(folder, auto_map={"AutoModelForCausalLM": "modeling_evil.EvilModel"})
    message = _refused(folder)
    assert message.startswith(f"config.json in '{folder}' names custom code (auto_map: ")
    assert "modeling_evil.EvilModel" in message
    assert "exporter runs no code from a checkpoint; pass --trust-checkpoint" in message
    assert read_folder(folder, trust_checkpoint=True).model_type == "llama"


def test_auto_map_in_tokenizer_config_is_refused(folder: Path) -> None:
    _edit_config(folder, "tokenizer_config.json", auto_map={"AutoTokenizer": ["tok_evil.Evil", None]})
    assert _refused(folder).startswith(f"tokenizer_config.json in '{folder}' names custom code (auto_map: ")
    assert read_folder(folder, trust_checkpoint=True).has_tokenizer


def test_an_unknown_or_missing_model_type_is_refused(folder: Path) -> None:
    _edit_config(folder, model_type="evil_llama")
    message = _refused(folder)
    assert message.startswith(
        f"config.json in '{folder}' names model_type 'evil_llama', which this transformers"
    )
    assert "--trust-checkpoint" in message
    _edit_config(folder, model_type=_DELETE)
    assert _refused(folder).startswith(f"config.json in '{folder}' has no model_type")


def test_a_missing_vocab_size_is_refused(folder: Path) -> None:
    _edit_config(folder, vocab_size=_DELETE)
    assert _refused(folder).startswith("config.json has no vocab_size: ")


@pytest.mark.parametrize(
    ("changes", "start"),
    [
        ({"num_hidden_layers": 10**9}, "config.json's num_hidden_layers is 1000000000, not a whole number"),
        ({"num_hidden_layers": True}, "config.json does not fit a llama config: "),
        ({"hidden_size": -64}, "config.json's hidden_size is -64, not a whole number"),
        ({"vocab_size": 10**12}, "config.json's vocab_size is 1000000000000, not a whole number"),
        ({"num_attention_heads": 3, "head_dim": _DELETE}, "config.json does not fit a llama config: "),
        ({"num_key_value_heads": 3}, "config.json's num_key_value_heads (3) does not divide"),
        ({"num_hidden_layers": 3}, "config.json's num_hidden_layers is 3 but the weights hold 2 layers"),
        ({"vocab_size": 1000}, "config.json's vocab_size is 1000 but the weights' model.embed_tokens.weight"),
    ],
)
def test_absurd_or_inconsistent_sizes_are_refused(folder: Path, changes: dict[str, Any], start: str) -> None:
    _edit_config(folder, **changes)
    assert _refused(folder).startswith(start)


def test_heads_not_dividing_hidden_are_refused_through_gpt2_names(folder: Path) -> None:
    config = {"model_type": "gpt2", "vocab_size": 320, "n_embd": 64, "n_layer": 2, "n_head": 3}
    (folder / "config.json").write_text(json.dumps(config))
    message = _refused(folder)
    assert message.startswith("config.json's num_attention_heads (3) does not divide hidden_size (64)")


def test_a_pickle_that_runs_a_command_is_refused_and_never_runs(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    (folder / "model.safetensors").unlink()
    torch.save({"weights": _RunsACommand(f"touch {marker}")}, folder / "pytorch_model.bin")
    message = _refused(folder)
    assert message.startswith(f"pytorch_model.bin in '{folder}' holds pickled Python objects")
    assert "imports posix.system" in message
    assert "refused; convert the folder to safetensors" in message
    assert "--trust-checkpoint" in message
    assert not marker.exists()


def test_a_clean_pickle_is_allowed_for_weights_only_loading(folder: Path) -> None:
    torch.save(_state_dict(folder), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    hf = read_folder(folder, trust_checkpoint=False)
    assert hf.weights == (folder / "pytorch_model.bin",)
    assert hf.weights_format == "pickle"
    assert hf.parameters is None


def test_a_sharded_pickle_index_audits_every_shard(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    (folder / "model.safetensors").unlink()
    torch.save({"a": torch.zeros(2)}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({"b": _RunsACommand(f"touch {marker}")}, folder / "pytorch_model-00002-of-00002.bin")
    weight_map = {"a": "pytorch_model-00001-of-00002.bin", "b": "pytorch_model-00002-of-00002.bin"}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert _refused(folder).startswith(f"pytorch_model-00002-of-00002.bin in '{folder}' holds pickled")
    assert not marker.exists()


@pytest.mark.parametrize("shard", ["../x.safetensors", "/etc/passwd.safetensors", "sub/x.safetensors", ".."])
def test_a_shard_index_naming_a_file_outside_the_folder_is_refused(folder: Path, shard: str) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    weight_map = {"lm_head.weight": "model-00001-of-00001.safetensors", "x": shard}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    message = _refused(folder)
    assert message.startswith(
        f"model.safetensors.index.json in '{folder}' names shard '{shard}', which is not"
    )


def test_a_good_shard_index_lists_its_shards_once(folder: Path) -> None:
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    names = _state_dict(folder / "model-00001-of-00001.safetensors")
    weight_map = dict.fromkeys(names, "model-00001-of-00001.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert read_folder(folder, trust_checkpoint=False).weights == (
        folder / "model-00001-of-00001.safetensors",
    )


def test_a_safetensors_header_past_the_file_is_refused(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    message = _refused(folder)
    assert message.startswith(f"model.safetensors in '{folder}' places tensor ")
    assert "past its" in message


def test_a_safetensors_header_longer_than_the_file_is_refused(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert _refused(folder).startswith(f"model.safetensors in '{folder}' claims a 1099511627776-byte header")


def test_no_weights_are_refused(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    assert _refused(folder).startswith(f"no model.safetensors or pytorch_model.bin in '{folder}'")


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_symlinked_file_is_refused(folder: Path, tmp_path: Path, name: str) -> None:
    outside = tmp_path / f"outside-{name}"
    (folder / name).rename(outside)
    (folder / name).symlink_to(outside)
    assert is_hf_folder(folder)
    assert _refused(folder).startswith(f"{name} in '{folder}' is a symlink; refusing to follow it")


@pytest.mark.parametrize(
    ("content", "start"),
    [
        (b"{not json", "is not JSON"),
        (b"[1, 2]", "is not a JSON object"),
        (b"[" * 100_000, "is not JSON (nested too deep)"),
        (b" " * (1024 * 1024 + 1), "holds 1048577 bytes, over the 1048576 allowed"),
    ],
)
def test_a_config_that_is_not_a_small_json_object_is_refused(
    folder: Path, content: bytes, start: str
) -> None:
    (folder / "config.json").write_bytes(content)
    assert _refused(folder).startswith(f"config.json in '{folder}' {start}")


def test_a_config_that_is_a_folder_is_refused(folder: Path) -> None:
    (folder / "config.json").unlink()
    (folder / "config.json").mkdir()
    assert _refused(folder).startswith(f"config.json in '{folder}' is not a regular file")


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors" if path.is_dir() else path)

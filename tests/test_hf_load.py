"""A Hugging Face folder as a checkpoint: its task, the input spec and output names read from its config and
tokenizer, recipes naming a folder, and the wrapped decoder against transformers itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporter.errors import RecipeError, UsageError
from exporter.hf.options import describe_spec
from exporter.hf.tasks import resolve_task
from exporter.options import build_export_options
from exporter.recipe.document import load_recipe
from tests.hf_models import bert_folder, gpt2_folder, llama_folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_folder(tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("bert"))


@pytest.mark.parametrize(
    ("architectures", "task"),
    [
        (["LlamaForCausalLM"], "text-generation"),
        (["GPT2LMHeadModel"], "text-generation"),
        (["BertModel"], "feature-extraction"),
        (["BertForSequenceClassification"], "text-classification"),
        (["BertForTokenClassification"], "token-classification"),
        (["BertForMaskedLM"], "fill-mask"),
        (["BertForQuestionAnswering"], "question-answering"),
    ],
)
def test_the_task_comes_from_the_architecture(architectures: list[str], task: str) -> None:
    assert resolve_task(None, architectures).name == task


def test_task_flag_overrides_and_takes_optimum_spellings() -> None:
    assert resolve_task("feature-extraction", ["BertForSequenceClassification"]).name == "feature-extraction"
    assert resolve_task("text-generation-with-past", ["LlamaForCausalLM"]).name == "text-generation"
    with pytest.raises(UsageError, match="--task summarization: not a task exporter exports; use one of"):
        resolve_task("summarization", ["BertModel"])
    with pytest.raises(UsageError, match=r"architectures \(none\) name no task.*pass --task"):
        resolve_task(None, [])


def test_a_decoder_folder_needs_no_model_and_no_input(llama: Path) -> None:
    options = build_export_options(None, {"checkpoint": llama})
    names = options.spec.names
    assert names[:3] == ("input_ids", "attention_mask", "position_ids")
    assert names[3:] == (
        "past_key_values.0.key",
        "past_key_values.0.value",
        "past_key_values.1.key",
        "past_key_values.1.value",
    )
    assert options.output_names == (
        "logits",
        "present.0.key",
        "present.0.value",
        "present.1.key",
        "present.1.value",
    )
    assert options.task == "text-generation"
    assert options.onnx_exporter.value == "torchscript"
    assert options.spec.derived_dims == {"total": ("past", "seq")}
    assert [str(options.spec.dim(label)) for label in ("batch", "seq", "past")] == [
        "1..2",
        "1..128",
        "0..128",
    ]
    assert str(options.spec.tensors[0]) == "input_ids:int64:batch=1,seq=1:0..320"
    assert "past_key_values.0..1.key/value:float32:batch=1,2,past=0,16" in describe_spec(options.spec)


def test_gpt2_names_map_through_its_config(tmp_path: Path) -> None:
    import json

    folder = gpt2_folder(tmp_path / "gpt2")
    options = build_export_options(None, {"checkpoint": folder})
    assert str(options.spec.tensors[3]) == "past_key_values.0.key:float32:batch=1,4,past=0,16"
    assert options.spec.dim("past").max == 128
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "n_positions": 4096}))
    wide = build_export_options(None, {"checkpoint": folder})
    assert (wide.spec.dim("seq").max, wide.spec.dim("past").max) == (256, 256)  # a verified context of 512


def test_an_encoder_folder_takes_what_its_tokenizer_makes(bert: Path) -> None:
    options = build_export_options(None, {"checkpoint": bert})
    assert set(options.spec.names) == {"input_ids", "attention_mask", "token_type_ids"}
    assert options.output_names == ("last_hidden_state",)
    assert str(options.spec.tensors[0]).endswith("seq=1:0..320")
    assert options.spec.dim("seq").max == 128


def test_input_flag_overrides_one_input_of_a_folder(bert: Path) -> None:
    options = build_export_options(
        None, {"checkpoint": bert}, input_texts=["input_ids:int64:batch=1..2,seq=1..32:0..320"]
    )
    assert options.spec.dim("seq").max == 32
    assert options.spec.dim("batch").max == 2


def test_a_recipe_may_name_a_folder_and_its_task(tmp_path: Path, bert: Path) -> None:
    recipe = tmp_path / "bert.toml"
    recipe.write_text(
        f'schema_version = 1\n[model]\ncheckpoint = "{bert}"\ntask = "feature-extraction"\n'
        "[verify]\ngenerate_tokens = 8\n"
    )
    options = build_export_options(load_recipe(recipe), {})
    assert options.task == "feature-extraction"
    assert options.generate_tokens == 8
    recipe.write_text(f'schema_version = 1\n[model]\ncheckpoint = "{bert}"\ntask = "translation"\n')
    with pytest.raises(RecipeError, match=r"\[model\].task.*one of text-generation"):
        load_recipe(recipe)


@pytest.mark.slow
def test_the_wrapped_decoder_matches_transformers_with_and_without_a_past(llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    from exporter.hf.folder import read_folder
    from exporter.hf.load import load_folder
    from exporter.hf.tasks import TASKS

    loaded = load_folder(read_folder(llama, False), TASKS["text-generation"], False, new_tokens=4)
    model = AutoModelForCausalLM.from_pretrained(llama, local_files_only=True).eval()
    ids = torch.tensor([[5, 9, 20, 33, 7]])
    layout = loaded.facts.layout
    assert layout is not None and layout.kv_heads == 2 and layout.eos_token_ids == (2,)
    empty = [torch.zeros(1, 2, 0, 16) for _ in range(4)]
    with torch.inference_mode():
        full = loaded.module(ids, torch.ones(1, 5, dtype=torch.long), torch.arange(5)[None], *empty)
        expected = model(ids).logits
        np.testing.assert_allclose(full[0].numpy(), expected.numpy(), atol=1e-5)
        head = loaded.module(ids[:, :3], torch.ones(1, 3, dtype=torch.long), torch.arange(3)[None], *empty)
        tail = loaded.module(
            ids[:, 3:], torch.ones(1, 5, dtype=torch.long), torch.arange(3, 5)[None], *head[1:]
        )
    np.testing.assert_allclose(tail[0].numpy(), expected[:, 3:].numpy(), atol=1e-5)
    assert tail[1].shape == (1, 2, 5, 16)
    cases = loaded.facts.generation
    assert [c.name for c in cases] == ["prompt-1", "prompt-2", "prompt-3"]
    assert len({len(c.prompt) for c in cases}) == 3
    assert all(len(c.expected) == 4 for c in cases)


def _argmax_loop(model: torch.nn.Module, ids: list[int], n: int) -> list[int]:
    tokens = torch.tensor([ids])
    generated = []
    with torch.inference_mode():
        for _ in range(n):
            token = int(model(tokens).logits[0, -1].argmax())
            generated.append(token)
            tokens = torch.cat([tokens, torch.tensor([[token]])], dim=1)
    return generated


@pytest.mark.slow
def test_the_reference_is_plain_greedy_whatever_the_folder_configures(tmp_path: Path) -> None:
    """An end-of-sequence token the model puts first is kept (not masked, not a stop), and the folder's
    repetition penalty and banned n-grams, which no exported graph applies, are not used."""
    import json

    from transformers import AutoModelForCausalLM

    from exporter.hf.reference import reference_generations

    folder = llama_folder(tmp_path / "llama")
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    ids = [5, 9, 20, 33, 7]
    expected = _argmax_loop(model, ids, 12)
    settings = json.loads((folder / "generation_config.json").read_text())
    settings.update(repetition_penalty=3.0, no_repeat_ngram_size=2, eos_token_id=expected[1])
    (folder / "generation_config.json").write_text(json.dumps(settings))
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    assert list(reference_generations(model, [("p", None, ids)], 12)[0].expected) == expected
    assert (
        model.generation_config.repetition_penalty == 3.0
    )  # the folder's own settings are left as they were


@pytest.mark.slow
def test_a_sharded_folder_loads_and_its_hash_covers_every_shard(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from exporter.loading.checkpoint import LoadRequest, load_model

    single = llama_folder(tmp_path / "single")
    sharded = tmp_path / "sharded"
    model = AutoModelForCausalLM.from_pretrained(single, local_files_only=True)
    model.save_pretrained(sharded, max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (sharded / name).write_bytes((single / name).read_bytes())
    shards = sorted(p.name for p in sharded.glob("model-*.safetensors"))
    assert len(shards) > 1 and (sharded / "model.safetensors.index.json").is_file()
    loaded = load_model(LoadRequest(sharded, new_tokens=4))
    reference = load_model(LoadRequest(single, new_tokens=4))
    assert loaded.hf is not None and reference.hf is not None
    assert [c.expected for c in loaded.hf.generation] == [c.expected for c in reference.hf.generation]
    before = loaded.sha256
    last = sharded / shards[-1]
    last.write_bytes(last.read_bytes()[:-4] + b"\0\0\0\0")
    assert load_model(LoadRequest(sharded, new_tokens=4)).sha256 != before

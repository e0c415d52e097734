"""An encoder folder (BERT-style config, random weights, the tokenizer built in ``tests/hf_models``) through
``exporter export FOLDER --to onnx`` with no model or input flags: the task from the architecture (or
``--task``), inputs from the tokenizer, outputs from the model class, a ``tokenizer`` golden case, and
ONNX Runtime on ``model.onnx`` matching transformers' own model on the tokenized golden sentences.

Three exports in all (each ~15-30 s on a busy machine), shared by the assertions through module fixtures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.hf.load import GOLDEN_SENTENCES
from tests.hf_models import bert_folder

pytestmark = pytest.mark.slow

_FAST = ("--to", "onnx", "--threads", "1", "--no-benchmark", "--optimize", "none")
_NARROW_IDS = "input_ids:int64:batch=1,seq=1..16:0..100"


def _export(folder: Path, out: Path, *extra: str) -> Path:
    result = CliRunner().invoke(app, ["export", str(folder), *_FAST, "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file()
    return out


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(folder, artifacts) of a ``BertModel`` folder exported with no flags but the fast ones."""
    root = tmp_path_factory.mktemp("bert")
    folder = bert_folder(root / "bert")
    return folder, _export(folder, root / "artifacts")


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``BertForSequenceClassification`` folder (3 labels)."""
    return bert_folder(
        tmp_path_factory.mktemp("classifier") / "bert", architecture="BertForSequenceClassification"
    )


@pytest.fixture(scope="module")
def classifier_export(classifier: Path) -> Path:
    return _export(classifier, classifier.parent / "artifacts")


@pytest.fixture(scope="module")
def overridden_export(classifier: Path) -> Path:
    """The classifier exported as ``--task feature-extraction`` with a narrower ``input_ids`` spec."""
    return _export(
        classifier, classifier.parent / "features", "--task", "feature-extraction", "--input", _NARROW_IDS
    )


def _manifest(artifacts: Path) -> dict[str, Any]:
    return json.loads((artifacts / "manifest.json").read_text())


def _tokenized(folder: Path) -> dict[str, np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    encoded = tokenizer(list(GOLDEN_SENTENCES), padding=True, return_tensors="np")
    return {name: np.asarray(value, dtype=np.int64) for name, value in encoded.items()}


def _transformers_output(
    folder: Path, auto_class: str, inputs: dict[str, np.ndarray], name: str
) -> np.ndarray:
    import transformers

    model = getattr(transformers, auto_class).from_pretrained(folder, local_files_only=True).eval()
    with torch.inference_mode():
        output = model(**{key: torch.from_numpy(value) for key, value in inputs.items()})
    return np.asarray(output[name].numpy())


def _onnx_outputs(artifacts: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(artifacts / "model.onnx"), options, providers=["CPUExecutionProvider"])
    fed = {item.name: inputs[item.name] for item in session.get_inputs()}
    names = [item.name for item in session.get_outputs()]
    return dict(zip(names, session.run(names, fed), strict=True))


def _input_names(manifest: dict[str, Any]) -> list[str]:
    return [item["name"] for item in manifest["input_spec"]["inputs"]]


def test_an_encoder_folder_exports_with_no_flags_as_feature_extraction(bert: tuple[Path, Path]) -> None:
    folder, artifacts = bert
    manifest = _manifest(artifacts)
    assert manifest["hf"]["task"] == "feature-extraction"
    assert manifest["hf"]["architectures"] == ["BertModel"]
    assert manifest["output_names"] == ["last_hidden_state"]
    made = set(_tokenized(folder))
    assert made == {"input_ids", "token_type_ids", "attention_mask"}
    assert set(_input_names(manifest)) == made
    for item in manifest["input_spec"]["inputs"]:
        assert item["dtype"] == "int64" and item["shape"] == ["batch", "seq"]
    assert manifest["input_spec"]["dynamic_dims"]["seq"]["max"] == 128  # max_position_embeddings
    graph = onnx.load(str(artifacts / "model.onnx"), load_external_data=False).graph
    assert {i.name for i in graph.input} == made
    assert [o.name for o in graph.output] == ["last_hidden_state"]
    assert sorted(p.name for p in (artifacts / "tokenizer").iterdir()) == sorted(
        p.name for p in folder.iterdir() if p.name.startswith("tokenizer")
    )


def test_the_tokenized_golden_case_is_kept_beside_the_drawn_ones(bert: tuple[Path, Path]) -> None:
    folder, artifacts = bert
    cases = {item["case"]: item for item in _manifest(artifacts)["golden"]}
    assert "tokenizer" in cases and "export" in cases
    with np.load(artifacts / cases["tokenizer"]["inputs"]) as saved:
        kept = {name: saved[name] for name in saved.files}
    tokenized = _tokenized(folder)
    assert kept.keys() == tokenized.keys()
    for name, value in tokenized.items():
        np.testing.assert_array_equal(kept[name], value)
    assert (kept["attention_mask"] == 0).any()  # sentences of different lengths: real padding is verified


def test_the_onnx_model_matches_transformers_on_the_golden_sentences(bert: tuple[Path, Path]) -> None:
    folder, artifacts = bert
    inputs = _tokenized(folder)
    expected = _transformers_output(folder, "AutoModel", inputs, "last_hidden_state")
    got = _onnx_outputs(artifacts, inputs)["last_hidden_state"]
    assert got.shape == expected.shape == (len(GOLDEN_SENTENCES), inputs["input_ids"].shape[1], 64)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_a_sequence_classifier_exports_as_text_classification_with_logits(
    classifier: Path, classifier_export: Path
) -> None:
    manifest = _manifest(classifier_export)
    assert manifest["hf"]["task"] == "text-classification"
    assert manifest["output_names"] == ["logits"]
    (output,) = onnx.load(str(classifier_export / "model.onnx"), load_external_data=False).graph.output
    dims = output.type.tensor_type.shape.dim
    assert output.name == "logits" and len(dims) == 2
    assert dims[0].dim_param and not dims[0].dim_value  # the batch, dynamic
    assert dims[1].dim_value == 3  # num_labels
    inputs = _tokenized(classifier)
    expected = _transformers_output(classifier, "AutoModelForSequenceClassification", inputs, "logits")
    got = _onnx_outputs(classifier_export, inputs)["logits"]
    assert got.shape == (len(GOLDEN_SENTENCES), 3)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_task_flag_overrides_the_architecture(classifier: Path, overridden_export: Path) -> None:
    manifest = _manifest(overridden_export)
    assert manifest["hf"]["task"] == "feature-extraction"
    assert manifest["hf"]["architectures"] == ["BertForSequenceClassification"]
    assert manifest["output_names"] == ["last_hidden_state"]
    inputs = _tokenized(classifier)
    expected = _transformers_output(classifier, "AutoModel", inputs, "last_hidden_state")
    got = _onnx_outputs(overridden_export, inputs)["last_hidden_state"]
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_input_flag_still_overrides_one_input(overridden_export: Path) -> None:
    spec = _manifest(overridden_export)["input_spec"]
    by_name = {item["name"]: item for item in spec["inputs"]}
    assert by_name["input_ids"]["spec"] == _NARROW_IDS
    assert by_name["input_ids"]["range"] == [0, 100]
    assert by_name["attention_mask"]["range"] == [1, 2]  # the others keep the folder's spec
    assert spec["dynamic_dims"]["seq"]["max"] == 16
    assert spec["dynamic_dims"]["batch"]["max"] == 4


def test_the_tokenizer_case_fits_a_narrowed_sequence_range(overridden_export: Path) -> None:
    """The golden sentences are truncated to the narrowed sequence range (116 tokens untruncated)."""
    cases = {item["case"]: item for item in _manifest(overridden_export)["golden"]}
    assert cases["tokenizer"]["sizes"] == {"batch": 3, "seq": 16}

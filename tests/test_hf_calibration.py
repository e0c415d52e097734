"""``--calibration FILE.txt`` for an encoder folder: one sample a line through the folder's tokenizer,
truncated to the spec's sequence range and padded to one shape; an empty, non-UTF-8 or tokenizer-less
source is refused in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from exporter.errors import CalibrationError, ExitCode
from exporter.hf.calibration_text import text_samples
from exporter.hf.options import folder_settings
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.hf_models import TRAINING_TEXT, bert_folder

LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "A decoder generates one token at a time.",
    "   ",
    "Numbers are measured, never assumed.",
    "Hello",
]
KEPT = [line for line in LINES if line.strip()]


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("bert") / "bert")


@pytest.fixture(scope="module")
def tokenizer(bert: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(bert, local_files_only=True)


@pytest.fixture(scope="module")
def spec(bert: Path) -> InputSpec:
    return folder_settings({"checkpoint": bert})[1]


def _text(tmp_path: Path, lines: list[str], name: str = "calibration.txt") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _refused(path: Path, tokenizer: Any, spec: InputSpec) -> str:
    with pytest.raises(CalibrationError) as caught:
        text_samples(path, tokenizer, spec, 16)
    message = str(caught.value)
    assert "\n" not in message
    assert caught.value.exit_code is ExitCode.BAD_INPUT
    return message


def _narrowed(spec: InputSpec, seq: str, batch: str = "batch=1..4") -> InputSpec:
    """The folder's inputs with other batch and sequence ranges (written alike in each: one example size)."""
    texts = [f"{t.name}:int64:{batch},{seq}:{t.low:.0f}..{t.high:.0f}" for t in spec.tensors]
    return InputSpec(tuple(parse_tensor_spec(text) for text in texts))


def test_each_line_is_one_sample_padded_to_the_longest(
    tmp_path: Path, tokenizer: Any, spec: InputSpec
) -> None:
    samples = text_samples(_text(tmp_path, LINES), tokenizer, spec, 16)
    assert not samples.synthetic and samples.labels is None
    assert len(samples.samples) == len(KEPT)  # blank lines skipped
    assert set(samples.samples[0]) == set(spec.names) == {"input_ids", "token_type_ids", "attention_mask"}
    lengths = [len(tokenizer(line)["input_ids"]) for line in KEPT]
    width = max(lengths)
    assert f"padded to {width} tokens" in samples.source
    for line, length, sample in zip(KEPT, lengths, samples.samples, strict=True):
        assert all(array.shape == (1, width) and array.dtype == np.int64 for array in sample.values())
        np.testing.assert_array_equal(sample["input_ids"][0, :length], tokenizer(line)["input_ids"])
        assert (sample["input_ids"][0, length:] == tokenizer.pad_token_id).all()
        assert sample["attention_mask"][0].tolist() == [1] * length + [0] * (width - length)
        assert (sample["token_type_ids"] == 0).all()
    assert samples.notes == []


def test_the_limit_caps_the_lines_read(tmp_path: Path, tokenizer: Any, spec: InputSpec) -> None:
    samples = text_samples(_text(tmp_path, LINES), tokenizer, spec, 2)
    assert len(samples.samples) == 2
    np.testing.assert_array_equal(
        samples.samples[1]["input_ids"][0, : len(tokenizer(KEPT[1])["input_ids"])],
        tokenizer(KEPT[1])["input_ids"],
    )


def test_lines_are_truncated_to_the_specs_longest_sequence(
    tmp_path: Path, tokenizer: Any, spec: InputSpec
) -> None:
    samples = text_samples(_text(tmp_path, LINES), tokenizer, _narrowed(spec, "seq=1..8"), 16)
    assert {sample["input_ids"].shape for sample in samples.samples} == {(1, 8)}
    too_long = sum(len(tokenizer(line)["input_ids"]) >= 8 for line in KEPT)
    assert too_long >= 1
    assert samples.notes == [f"{too_long} line(s) reached the 8-token limit and were truncated"]


def test_the_width_honours_a_multiple_and_a_minimum(tmp_path: Path, tokenizer: Any, spec: InputSpec) -> None:
    samples = text_samples(_text(tmp_path, ["Hello"]), tokenizer, _narrowed(spec, "seq=12..64%4"), 16)
    assert samples.samples[0]["input_ids"].shape == (1, 12)
    longest = max(len(tokenizer(line)["input_ids"]) for line in KEPT)
    samples = text_samples(_text(tmp_path, LINES), tokenizer, _narrowed(spec, "seq=4..64%4"), 16)
    width = samples.samples[0]["input_ids"].shape[1]
    assert width % 4 == 0 and longest <= width < longest + 4


def test_a_batch_of_at_least_two_takes_consecutive_lines(
    tmp_path: Path, tokenizer: Any, spec: InputSpec
) -> None:
    wide = _narrowed(spec, "seq=1..64", batch="batch=2..4")
    samples = text_samples(_text(tmp_path, LINES), tokenizer, wide, 16)
    assert len(samples.samples) == len(KEPT) // 2
    assert samples.samples[0]["input_ids"].shape[0] == 2
    second = tokenizer(KEPT[1])["input_ids"]
    np.testing.assert_array_equal(samples.samples[0]["input_ids"][1, : len(second)], second)
    assert "batch is 2" in _refused(_text(tmp_path, ["Hello"]), tokenizer, wide)


def test_the_samples_run_through_the_model(
    bert: Path, tmp_path: Path, tokenizer: Any, spec: InputSpec
) -> None:
    from transformers import AutoModel

    model = AutoModel.from_pretrained(bert, local_files_only=True).eval()
    samples = text_samples(_text(tmp_path, TRAINING_TEXT), tokenizer, spec, 16)
    with torch.inference_mode():
        for sample in samples.samples:
            output = model(**{name: torch.from_numpy(array) for name, array in sample.items()})
            assert torch.isfinite(output.last_hidden_state).all()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "holds no text: write one sample a line"),
        (b"\n  \n\t\n", "holds no text: write one sample a line"),
        (b"caf\xe9 au lait\n", "is not UTF-8 text ("),
        (b"\xff\xfe\x00h\x00i", "is not UTF-8 text ("),
    ],
    ids=["empty", "blank-lines", "latin-1", "utf-16"],
)
def test_an_empty_or_non_utf8_file_is_refused(
    tmp_path: Path, tokenizer: Any, spec: InputSpec, content: bytes, expected: str
) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    message = _refused(path, tokenizer, spec)
    assert message.startswith(f"calibration text '{path}' {expected}")


def test_a_utf8_bom_is_not_part_of_the_first_sample(tmp_path: Path, tokenizer: Any, spec: InputSpec) -> None:
    path = tmp_path / "bom.txt"
    path.write_bytes("\ufeffHello\n".encode())
    sample = text_samples(path, tokenizer, spec, 16).samples[0]
    np.testing.assert_array_equal(sample["input_ids"][0], tokenizer("Hello")["input_ids"])


def test_no_tokenizer_or_no_file_is_refused(tmp_path: Path, tokenizer: Any, spec: InputSpec) -> None:
    path = _text(tmp_path, LINES)
    assert "needs a tokenizer to become model inputs, and the checkpoint has none" in _refused(
        path, None, spec
    )
    assert "is not a file" in _refused(tmp_path / "missing.txt", tokenizer, spec)
    assert "is not a file" in _refused(tmp_path, tokenizer, spec)


def test_inputs_a_tokenizer_does_not_make_are_refused(tmp_path: Path, tokenizer: Any) -> None:
    decoder_like = InputSpec(
        tuple(
            parse_tensor_spec(text)
            for text in (
                "input_ids:int64:batch=1..4,seq=1..64:0..320",
                "attention_mask:int64:batch=1..4,seq=1..64:1..2",
                "position_ids:int64:batch=1..4,seq=1..64:0..64",
                *(f"past_key_values.{i}.key:float32:batch=1..4,2,past=0..64,16" for i in range(3)),
            )
        )
    )
    message = _refused(_text(tmp_path, LINES), tokenizer, decoder_like)
    assert (
        "this model also takes position_ids, past_key_values.0.key, past_key_values.1.key and 1 more"
        in message
    )
    assert "text calibration is for encoders" in message


def test_a_very_long_line_is_read_in_bounded_chunks(tmp_path: Path, tokenizer: Any, spec: InputSpec) -> None:
    path = tmp_path / "long.txt"
    path.write_text("fox " * 200_000 + "\nHello\n", encoding="utf-8")
    samples = text_samples(path, tokenizer, _narrowed(spec, "seq=1..8"), 16)
    assert len(samples.samples) == 2
    np.testing.assert_array_equal(
        samples.samples[1]["input_ids"][0, : len(tokenizer("Hello")["input_ids"])],
        tokenizer("Hello")["input_ids"],
    )


@pytest.mark.slow
def test_export_calibrates_an_encoder_on_text(bert: Path, tmp_path: Path) -> None:
    """``exporter export FOLDER --quantize static --calibration FILE.txt``: the lines are the samples the
    candidates are calibrated and judged on, as the report says."""
    from typer.testing import CliRunner

    from exporter.cli import app

    lines = [f"{line} {index}" for index, line in enumerate(TRAINING_TEXT * 3)]
    path = _text(tmp_path, ["", *lines, ""])
    out = tmp_path / "artifacts"
    args = ["export", str(bert), "--to", "onnx", "--out", str(out), "--threads", "1", "--no-benchmark"]
    args += [
        "--optimize",
        "none",
        "--quantize",
        "static",
        "--calibration",
        str(path),
        "--calibration-samples",
        "4",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    calibration = report["quantization"]["calibration"]
    assert calibration["source"].startswith(f"{path} (12 lines through the folder's tokenizer, padded to ")
    assert calibration["evaluation_source"] == calibration["source"]
    judged = [output for c in report["quantization"]["candidates"] for output in c.get("outputs") or []]
    assert judged, report["quantization"]["candidates"]
    assert {output["samples"] for output in judged} == {8}  # the held-out lines: max(8, 4 // 4)


def test_text_calibration_for_a_checkpoint_without_a_tokenizer_exits_2(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    from typer.testing import CliRunner

    from exporter.cli import app
    from tests.models import MODELS

    args = ["export", str(state_dict_checkpoint("mlp")), "--model", MODELS["mlp"].ref, "--no-benchmark"]
    for spec_text in MODELS["mlp"].inputs:
        args += ["--input", spec_text]
    out = tmp_path / "artifacts"
    args += ["--out", str(out), "--quantize", "static", "--calibration", str(_text(tmp_path, LINES))]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "text calibration needs a Hugging Face folder with a tokenizer" in result.output
    assert "Traceback" not in result.output and not out.exists()

"""The load stage: the checkpoint becomes a module in eval mode (``loading/``), the module the eager
reference every backend is judged against, and the golden cases it answers; calibration data is read here
too, so bad input is refused before minutes of conversion."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from exporter.errors import CalibrationError, UsageError
from exporter.hf.facts import GenerationCase
from exporter.hf.golden import tokenized_golden
from exporter.loading.checkpoint import LoadedModel, LoadRequest, load_model
from exporter.options import ExportOptions
from exporter.quantize.calibration import SampleSet, load_samples
from exporter.quantize.types import QuantMode
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import shape_cases
from exporter.stages.memory import check_memory
from exporter.stages.onnx import int8_samples
from exporter.verify.parity import GoldenCase, golden_from_file, make_golden

__all__ = ["Loaded", "load_stage"]


@dataclass
class Loaded:
    """The load stage's hand-off: the model, its eager reference, the golden cases and int8's samples
    (calibration, evaluation) when ``--quantize`` asks for them."""

    model: LoadedModel
    eager: EagerRunner
    golden: list[GoldenCase]
    samples: tuple[SampleSet, SampleSet] | None


def load_stage(options: ExportOptions) -> Loaded:
    """Load, then run the reference on every shape case (and on ``--golden-inputs``).

    Raises:
        LoadError: the checkpoint cannot be loaded safely.
        UsageError: the run is estimated to need more memory than it may use (``stages/memory.py``).
        InputSpecError: the model fails on inputs its spec allows, or the golden inputs do not fit.
        CalibrationError: ``--calibration`` data that cannot be read or does not fit the spec.
    """
    model = load_model(
        LoadRequest(
            options.checkpoint,
            options.model_ref,
            options.model_kwargs,
            options.trust_checkpoint,
            options.state_dict_key,
            options.task,
            options.generate_tokens,
            text_file if (text_file := _text_calibration(options)) else None,
        )
    )
    _check_lossy_mode_fits(options, model)
    model.estimated_peak_bytes = check_memory(options, model.module).peak
    eager = EagerRunner(model.module, options.spec.names, options.output_names)
    golden = make_golden(eager, options.spec, shape_cases(options.spec), options.seed)
    if options.golden_inputs is not None:
        golden.append(golden_from_file(eager, options.spec, options.golden_inputs))
    if model.tokenizer is not None and model.hf is not None and not model.hf.is_decoder:
        golden.append(tokenized_golden(eager, options.spec, model.tokenizer))
    samples = None
    if options.quantization.mode is not QuantMode.NONE:
        samples = _text_samples(options, model) if _text_calibration(options) else int8_samples(options)
        if model.hf is not None and model.hf.is_decoder:
            samples = _recorded_only(samples, model.hf.generation, _text_calibration(options))
    return Loaded(model, eager, golden, samples)


def _recorded_only(
    samples: tuple[SampleSet, SampleSet], prompts: Sequence[GenerationCase], text_file: Path | None
) -> tuple[SampleSet, SampleSet]:
    """A decoder's samples say what really judges its candidates: generation from its golden prompts
    (tokenized text), while outputs on the drawn samples are only recorded."""
    lines = sum(1 for case in prompts if case.name.startswith("text-"))
    source = f"{len(prompts)} golden prompts" + (f" ({lines} lines of {text_file})" if text_file else "")
    described = f"{samples[0].source}; recorded only: a decoder is judged by greedy generation from {source}"
    return replace(samples[0], source=described), replace(samples[1], source=described)


def _text_calibration(options: ExportOptions) -> Path | None:
    """``--calibration FILE.txt``: text, one sample a line, for a Hugging Face folder."""
    calibration = options.quantization.calibration
    return Path(calibration) if calibration and calibration.endswith(".txt") else None


def _text_samples(options: ExportOptions, model: LoadedModel) -> tuple[SampleSet, SampleSet]:
    """An encoder's calibration from text lines through its tokenizer; a decoder's lines are golden prompts
    (its lossy candidates are judged on them), so its samples are drawn from the spec as without data.

    Raises:
        CalibrationError: a text file for a model that is not a Hugging Face folder with a tokenizer.
    """
    path = _text_calibration(options)
    assert path is not None
    if model.hf is None or model.tokenizer is None:
        raise CalibrationError(
            f"--calibration '{path}': text calibration needs a Hugging Face folder with a tokenizer; give "
            "this model an .npz of inputs"
        )
    settings = options.quantization
    if model.hf.is_decoder:
        return int8_samples(replace(options, quantization=replace(settings, calibration=None)))
    from exporter.hf.calibration_text import text_samples

    if settings.eval_data:
        calibration = text_samples(path, model.tokenizer, options.spec, settings.samples)
        if settings.eval_data.endswith(".txt"):
            evaluation = text_samples(Path(settings.eval_data), model.tokenizer, options.spec, 100_000)
        else:
            evaluation = load_samples(settings.eval_data, options.spec, 100_000, options.seed)
        return calibration, evaluation
    held_out = max(8, settings.samples // 4)
    samples = text_samples(path, model.tokenizer, options.spec, settings.samples + held_out)
    return samples.split(held_out / (settings.samples + held_out))


def _check_lossy_mode_fits(options: ExportOptions, model: LoadedModel) -> None:
    """Before converting: int4 is for decoders only, and static or QAT int8 has no decoder candidate
    (a decoder ships weight-only; its activations' ranges move with every token)."""
    mode = options.quantization.mode
    decoder = model.hf is not None and model.hf.is_decoder
    if mode is QuantMode.INT4 and not decoder:
        raise UsageError(
            "--quantize int4 is block-wise 4-bit weights for decoders (text-generation); this model is not "
            "one: use --quantize int8 or dynamic"
        )
    if decoder and mode in (QuantMode.STATIC, QuantMode.QAT):
        raise UsageError(
            f"--quantize {mode.value} has no candidate for a decoder (its activations' ranges move with "
            "every token): use --quantize int8 or int4 (weight-only)"
        )

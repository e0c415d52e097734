"""The load stage: the checkpoint becomes a module in eval mode (``loading/``), the module the eager
reference every backend is judged against, and the golden cases it answers; calibration data is read here
too, so bad input is refused before minutes of conversion."""

from __future__ import annotations

from dataclasses import dataclass

from exporter.hf.golden import tokenized_golden
from exporter.loading.checkpoint import LoadedModel, LoadRequest, load_model
from exporter.options import ExportOptions
from exporter.quantize.calibration import SampleSet
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
        )
    )
    model.estimated_peak_bytes = check_memory(options, model.module).peak
    eager = EagerRunner(model.module, options.spec.names, options.output_names)
    golden = make_golden(eager, options.spec, shape_cases(options.spec), options.seed)
    if options.golden_inputs is not None:
        golden.append(golden_from_file(eager, options.spec, options.golden_inputs))
    if model.tokenizer is not None and model.hf is not None and not model.hf.is_decoder:
        golden.append(tokenized_golden(eager, options.spec, model.tokenizer))
    samples = int8_samples(options) if options.quantization.mode is not QuantMode.NONE else None
    return Loaded(model, eager, golden, samples)

"""``ExportOptions`` (every setting of one export), and the one merge of a recipe and flags into it,
shared by ``exporter export`` and ``exporter run``.

Both commands used to build the settings by hand and drifted apart (``run`` skipped the checkpoint check, so
a recipe without a checkpoint crashed as a bug); here the rules live once: what a flag sets wins over the
recipe, ``[quantize]`` and ``[optimize]`` merge key by key, and ``--input`` replaces the recipe's input of
the same name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from exporter.backends.target_names import expand_targets
from exporter.benchmark.latency import TimingConfig
from exporter.convert.onnx import OnnxExporterChoice
from exporter.errors import LoadError, UsageError
from exporter.hf.facts import DEFAULT_NEW_TOKENS
from exporter.hf.folder import is_hf_folder
from exporter.hf.options import folder_settings
from exporter.optimize.optimizer import OptimizeOptions
from exporter.quantize.types import QuantizeOptions
from exporter.recipe.document import Recipe, is_safe_name, load_recipe
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from exporter.specs.naming import default_model_name, output_names_problem
from exporter.verify.parity import Tolerance

__all__ = ["ExportOptions", "build_export_options"]


@dataclass(frozen=True)
class ExportOptions:
    """Every setting of one export; CLI flags and recipes both end up here."""

    checkpoint: Path
    spec: InputSpec
    targets: tuple[str, ...] = ("onnx",)
    skip: tuple[str, ...] = ()
    """``--skip`` (and a recipe's ``skip`` and ``not_applicable``): targets left out of ``targets``."""
    name: str | None = None
    out: Path | None = None
    force: bool = False
    model_ref: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    task: str | None = None
    """``--task`` (``[model].task``): a Hugging Face folder's task; None: from its ``architectures``."""
    generate_tokens: int = DEFAULT_NEW_TOKENS
    """``--generate-tokens`` (``[verify].generate_tokens``): a decoder's greedy tokens per golden prompt."""
    trust_checkpoint: bool = False
    atol: float = Tolerance.atol
    rtol: float = Tolerance.rtol
    seed: int = 0
    opset: int | None = None
    onnx_exporter: OnnxExporterChoice = OnnxExporterChoice.AUTO
    simplify: bool = True
    external_data: bool = False
    """``--external-data`` (``[export].external_data``): every ONNX model keeps its weights in one
    ``<file>.data`` beside it; without it only models past protobuf's 2 GB limit do."""
    max_memory: int | None = None
    """``--max-memory SIZE`` in bytes: the memory an export may plan to use; None: what the machine has
    available when the run starts (``exporter.stages.memory``)."""
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1)
    benchmark: bool = True
    batch_dim: str = "batch"
    batch_sizes: tuple[int, ...] = (1, 8)
    timing: TimingConfig = field(default_factory=TimingConfig)
    quantization: QuantizeOptions = field(default_factory=QuantizeOptions)
    torchscript_mode: str = "auto"
    compile_mode: str = "default"
    optimization: OptimizeOptions = field(default_factory=OptimizeOptions)
    fail_on_nonfinite: bool = False
    golden_inputs: Path | None = None
    """``--golden-inputs FILE.npz``: real inputs verified on every backend beside the drawn shape cases."""
    state_dict_key: str | None = None
    """``--state-dict-key`` (``[model].state_dict_key``): the checkpoint dict's entry holding the weights."""
    output_names: tuple[str, ...] = ()
    """``--output-names`` (``[outputs].names``): the outputs' names in order; () keeps their pytree paths."""

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ExportOptions:
        """Build from a flat mapping (recipe settings overlaid with CLI flags); unknown keys are a bug."""
        known = {f.name for f in fields(cls)}
        unknown = set(settings) - known
        if unknown:
            raise UsageError(f"unknown settings: {', '.join(sorted(unknown))}")
        values = dict(settings)
        for key in ("targets", "skip", "batch_sizes"):
            if key in values:
                values[key] = tuple(values[key])
        if "output_names" in values:
            values["output_names"] = tuple(values["output_names"])
        if "onnx_exporter" in values:
            values["onnx_exporter"] = OnnxExporterChoice(values["onnx_exporter"])
        if "checkpoint" in values:
            values["checkpoint"] = Path(values["checkpoint"])
        if values.get("golden_inputs") is not None:
            values["golden_inputs"] = Path(values["golden_inputs"])
        if "out" in values and values["out"] is not None:
            values["out"] = Path(values["out"])
        if isinstance(values.get("quantization"), Mapping):
            values["quantization"] = QuantizeOptions(**values["quantization"])
        if isinstance(values.get("optimization"), Mapping):
            optimization = dict(values["optimization"])
            if "steps" in optimization:
                optimization["steps"] = tuple(optimization["steps"])
            values["optimization"] = OptimizeOptions(**optimization)
        return cls(**values)

    def __post_init__(self) -> None:
        if not is_safe_name(self.model_name):
            shown = repr(self.model_name)[1:-1][:60]
            raise UsageError(
                f"model name '{shown}' is not a safe name (it names artifacts/<name>, the served model and "
                "log lines): use ASCII letters, digits, '.', '_' or '-' in --name"
            )
        problem = output_names_problem(self.output_names, self.spec.names) if self.output_names else None
        if problem is not None:
            shown = ",".join(self.output_names)
            raise UsageError(f"output names {shown} (--output-names, [outputs].names): {problem}")

    @property
    def model_name(self) -> str:
        """``--name``, else the recipe's ``name``, else the ``--out`` folder's name, else the checkpoint's
        stem (``exporter.specs.naming.default_model_name``)."""
        return self.name if self.name is not None else default_model_name(self.out, self.checkpoint)

    @property
    def chosen_targets(self) -> tuple[str, ...]:
        """``targets`` expanded (``all``) in canonical order, without the skipped ones."""
        return expand_targets(self.targets, self.skip)

    @property
    def out_dir(self) -> Path:
        return self.out or Path("artifacts") / self.model_name

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance(self.atol, self.rtol)


def build_export_options(
    recipe: Path | Recipe | None,
    flags: Mapping[str, Any],
    quantization_flags: Mapping[str, Any] | None = None,
    optimization_flags: Mapping[str, Any] | None = None,
    input_texts: Sequence[str] = (),
    *,
    allow_packages: Sequence[str] = (),
) -> ExportOptions:
    """The recipe's settings, with every flag that is not ``None`` over them.

    ``flags`` are keyed like ``ExportOptions`` fields; ``quantization_flags`` and ``optimization_flags``
    like ``QuantizeOptions`` and ``OptimizeOptions`` fields. ``input_texts`` are ``NAME:DTYPE:DIMS`` specs
    that replace the recipe's input of that name (or add one). ``allow_packages`` (``--allow-package``)
    are the packages whose callables the recipe may name, beyond its own project and ``exporter.zoo``.

    Raises:
        RecipeError: the recipe file is missing or invalid.
        UsageError: no checkpoint in the flags or the recipe.
        LoadError: the checkpoint does not exist (checked before the inputs, which it makes moot).
        InputSpecError: an input spec that does not parse.
    """
    loaded = load_recipe(recipe, allow_packages) if isinstance(recipe, Path) else recipe
    settings: dict[str, Any] = dict(loaded.settings) if loaded is not None else {}
    spec = InputSpec(loaded.inputs, loaded.dims) if loaded is not None and loaded.inputs else None
    stages = {"quantization": quantization_flags or {}, "optimization": optimization_flags or {}}
    for key, stage_flags in stages.items():
        merged = {**settings.get(key, {}), **_given(stage_flags)}
        if merged:
            settings[key] = merged
    explicit = set(flags.get("targets") or ()) - {"all"}
    if explicit and flags.get("skip") is None and settings.get("skip"):
        # A target named in --to is wanted, even one the recipe leaves out (skip, not_applicable).
        settings["skip"] = [t for t in settings["skip"] if t not in explicit]
    settings.update(_given(flags))
    if "checkpoint" not in settings:
        raise UsageError("no CHECKPOINT given (as an argument or in the recipe's [model].checkpoint)")
    if not Path(settings["checkpoint"]).exists():
        raise LoadError(f"checkpoint '{settings['checkpoint']}' does not exist")
    tensors = [parse_tensor_spec(text) for text in input_texts]
    if spec is None and settings.get("model_ref") is None and is_hf_folder(Path(settings["checkpoint"])):
        settings, spec = folder_settings(settings)
    settings["spec"] = spec.with_overrides(tensors) if spec else InputSpec(tuple(tensors))
    return ExportOptions.from_settings(settings)


def _given(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags that were given: ``None`` means "not on the command line", so the recipe's value stands."""
    return {key: value for key, value in flags.items() if value is not None}

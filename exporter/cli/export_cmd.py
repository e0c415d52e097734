"""``exporter export``: flags and a recipe -> ``ExportOptions`` -> the pipeline, then the summary tables."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from exporter.backends.target_names import TARGETS
from exporter.cli.export_summary import print_summary
from exporter.cli.shared import (
    AllowPackages,
    DebugFlag,
    RichProgress,
    guarded,
    json_object,
    out,
    target_help,
)
from exporter.convert.compile import CompileMode
from exporter.convert.onnx import OnnxExporterChoice
from exporter.convert.torchscript import TorchScriptMode
from exporter.errors import UsageError
from exporter.optimize.passes import OPTIMIZE_STEPS
from exporter.options import build_export_options
from exporter.pipeline import ExportOptions, ExportResult
from exporter.quantize.calibration import CalibrationMethod
from exporter.quantize.types import QuantMode
from exporter.specs.naming import parse_output_names
from exporter.stages.memory import parse_size

__all__ = ["Target", "export_command"]


Target = StrEnum("Target", [(name, name) for name in (*TARGETS, "all")])  # type: ignore[misc]
"""``--to`` choices: every registered backend's target, and ``all``."""


def export_command(
    checkpoint: Annotated[
        Path | None,
        typer.Argument(
            help="TorchScript archive, torch.export .pt2, state_dict, .safetensors, pickled module, or a "
            "Hugging Face folder (config.json + safetensors; no --model or --input needed)."
        ),
    ] = None,
    to: Annotated[
        list[Target] | None,
        typer.Option(
            "--to",
            help=f"{target_help()} [default: {', '.join(ExportOptions.targets)}].",
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            "--skip",
            help="Leave a target out of --to (repeat or comma-separate), e.g. --to all --skip compile; "
            "replaces a recipe's skip.",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            help="Factory building the architecture: package.module:callable or path/file.py:callable.",
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="A Hugging Face folder's task, in Optimum's spelling: text-generation (exported with its "
            "key/value cache), text-classification, token-classification, fill-mask, question-answering, "
            "feature-extraction [default: from config.json's architectures].",
        ),
    ] = None,
    generate_tokens: Annotated[
        int | None,
        typer.Option(
            "--generate-tokens",
            min=1,
            help="A decoder's generation check: greedy tokens generated from each golden prompt and "
            "compared with transformers' generate [default: 32].",
        ),
    ] = None,
    model_kwargs: Annotated[
        str | None,
        typer.Option("--model-kwargs", help="Keyword arguments for --model as JSON, e.g. '{\"width\": 16}'."),
    ] = None,
    state_dict_key: Annotated[
        str | None,
        typer.Option(
            "--state-dict-key",
            help="Key of the checkpoint's dict holding the weights, e.g. model_state (a.b for nested) "
            "(default: the one common key that holds them: state_dict, model_state_dict, model_state, "
            "model, module, net, params, weights, ema...).",
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="NAME:DTYPE:DIMS[:LOW..HIGH], once per input. DIMS: comma-separated ints (static) or "
            "label=size, label=LOW..HIGH (legal sizes; the example is LOW), either with %N for multiples "
            "of N only (dynamic; a label shared by inputs is one dim). Ints are drawn from [LOW, HIGH). "
            "E.g. image:float32:batch=1,3,224,224, input_ids:int64:batch=2,seq=128:0..30522 or "
            "x:float32:batch=1..8,3,h=64..512%4,w=64..512%4",
        ),
    ] = None,
    output_names: Annotated[
        str | None,
        typer.Option(
            "--output-names",
            help="Names of the model's outputs, in order, comma-separated (one per output, identifiers), "
            "used in the ONNX graph, golden files, manifest and served signature (default: output for one "
            "tensor, 0,1,... for a tuple, the keys for a dict).",
        ),
    ] = None,
    recipe: Annotated[Path | None, typer.Option("--recipe", help="Recipe TOML; flags override it.")] = None,
    allow_packages: AllowPackages = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Artifacts folder [default: artifacts/<name>].")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing output folder once the new one is complete.")
    ] = False,
    atol: Annotated[
        float | None, typer.Option("--atol", min=0.0, help="Absolute tolerance [default: 1e-4].")
    ] = None,
    rtol: Annotated[
        float | None, typer.Option("--rtol", min=0.0, help="Relative tolerance [default: 1e-3].")
    ] = None,
    opset: Annotated[
        int | None, typer.Option("--opset", min=7, max=30, help="ONNX opset [default: the exporter's].")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, max=4096, help="Threads for every backend [default: all CPUs]."),
    ] = None,
    trust_checkpoint: Annotated[
        bool,
        typer.Option(
            "--trust-checkpoint", help="Allow unpickling arbitrary objects (only for files you trust)."
        ),
    ] = False,
    onnx_exporter: Annotated[
        OnnxExporterChoice | None,
        typer.Option("--onnx-exporter", help="auto tries dynamo, then the TorchScript-based exporter."),
    ] = None,
    simplify: Annotated[
        bool | None, typer.Option("--simplify/--no-simplify", help="Try onnxsim [default: on].")
    ] = None,
    external_data: Annotated[
        bool,
        typer.Option(
            "--external-data",
            help="Keep every ONNX model's weights in one <file>.data beside it [default: only past 2 GB].",
        ),
    ] = False,
    max_memory: Annotated[
        str | None,
        typer.Option(
            "--max-memory",
            metavar="SIZE",
            help="Refuse up front an export whose estimated peak memory exceeds SIZE (e.g. 12GiB, 800MB) "
            "[default: the memory available when the run starts].",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="Seed for drawn inputs [default: 0].")
    ] = None,
    benchmark: Annotated[
        bool | None, typer.Option("--benchmark/--no-benchmark", help="Measure latency [default: on].")
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name",
            help="Model name used in the manifest, reports, served URL and Triton repository "
            "(default: the recipe's name, else the --out folder's name, else the checkpoint's stem).",
        ),
    ] = None,
    quantize: Annotated[
        QuantMode | None,
        typer.Option(
            "--quantize",
            help="Lossy mode: dynamic, static, qat, bf16 (OpenVINO, bf16 CPUs), int8 (try all, ship the "
            "fastest within budget per runtime), or int4 (decoders: block-wise 4-bit weights, --block-size).",
        ),
    ] = None,
    calibration: Annotated[
        str | None,
        typer.Option(
            "--calibration",
            help="Calibration data: .npz (one array per input, samples on axis 0), a folder of .npy/.npz/.pt "
            "samples, or package.module:callable [default: drawn from the spec, with a warning]. For a "
            "Hugging Face folder also a .txt file, one sample a line (a decoder's lines become golden "
            "prompts).",
        ),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option(
            "--block-size",
            min=16,
            help="int4 (and 8-bit MatMulNBits) weights per scale, a power of two [default: 32].",
        ),
    ] = None,
    min_token_match: Annotated[
        float | None,
        typer.Option(
            "--min-token-match",
            help="Decoder lossy budget: mean share of the float model's greedy tokens reproduced before "
            "the first divergence [default: 0.75 for int8, 0.5 for int4].",
        ),
    ] = None,
    calibration_samples: Annotated[
        int | None, typer.Option("--calibration-samples", min=1, help="Calibration samples [default: 64].")
    ] = None,
    calibration_method: Annotated[
        CalibrationMethod | None,
        typer.Option(
            "--calibration-method",
            help="Static ranges; auto tries percentile and entropy when minmax misses the budget "
            "[default: auto].",
        ),
    ] = None,
    min_cosine: Annotated[
        float | None, typer.Option("--min-cosine", help="int8 budget: min cosine per sample [default: 0.99].")
    ] = None,
    min_top1: Annotated[
        float | None, typer.Option("--min-top1", help="int8 budget: min top-1 agreement of 2-D outputs.")
    ] = None,
    min_sqnr: Annotated[float | None, typer.Option("--min-sqnr", help="int8 budget: min SQNR in dB.")] = None,
    require_real_data: Annotated[
        bool,
        typer.Option(
            "--require-real-data",
            help="With --quantize: exit 2 unless real calibration data is given (--calibration or the "
            "recipe's), instead of judging lossy models on synthetic inputs only. For CI.",
        ),
    ] = False,
    golden_inputs: Annotated[
        Path | None,
        typer.Option(
            "--golden-inputs",
            help="Real inputs (.npz, one array per input name, as the model takes them) verified on every "
            "backend and kept in golden/ beside the inputs drawn from the spec.",
        ),
    ] = None,
    torchscript_mode: Annotated[
        TorchScriptMode | None,
        typer.Option(
            "--torchscript-mode",
            help="script keeps control flow, trace records one path; auto: script, then trace.",
        ),
    ] = None,
    compile_mode: Annotated[
        CompileMode | None, typer.Option("--compile-mode", help="torch.compile mode [default: default].")
    ] = None,
    optimize: Annotated[
        str | None,
        typer.Option(
            "--optimize",
            help=f"ONNX graph optimization: auto, none, or steps from {','.join(OPTIMIZE_STEPS)} "
            "(comma-separated); a step is kept only if it verifies and is not slower [default: auto].",
        ),
    ] = None,
    fail_on_nonfinite: Annotated[
        bool,
        typer.Option(
            "--fail-on-nonfinite",
            help="Fail (exit 1) when the PyTorch model's own outputs hold NaN or Inf on the golden inputs.",
        ),
    ] = False,
    debug: DebugFlag = False,
) -> None:
    """Export CHECKPOINT (ONNX, TorchScript, torch.compile/AOTInductor), verify every backend against PyTorch
    at several shapes, time them alike, write artifacts.

    Exit codes: 0 passed; 1 verification failed (report still written); 2 bad input or usage;
    3 conversion failed; 5 internal error; 6 partial: some targets failed to convert, the others were
    verified and written; 130/143 interrupted (nothing written).
    """
    flags = {
        "checkpoint": checkpoint,
        "name": name,
        "out": out_dir,
        "model_ref": model,
        "task": task,
        "generate_tokens": generate_tokens,
        "atol": atol,
        "rtol": rtol,
        "opset": opset,
        "threads": threads,
        "onnx_exporter": _value(onnx_exporter),
        "simplify": simplify,
        "external_data": external_data or None,
        "max_memory": parse_size(max_memory, "--max-memory") if max_memory is not None else None,
        "seed": seed,
        "benchmark": benchmark,
        "trust_checkpoint": trust_checkpoint or None,
        "state_dict_key": state_dict_key,
        "targets": tuple(t.value for t in to) if to else None,
        "skip": tuple(t.strip() for item in skip for t in item.split(",") if t.strip()) if skip else None,
        "torchscript_mode": _value(torchscript_mode),
        "compile_mode": _value(compile_mode),
        "force": force,
        "fail_on_nonfinite": fail_on_nonfinite or None,
        "golden_inputs": golden_inputs,
    }
    quantization_flags = {
        "mode": _value(quantize),
        "calibration": calibration,
        "samples": calibration_samples,
        "method": _value(calibration_method),
        "min_cosine": min_cosine,
        "min_top1": min_top1,
        "min_sqnr_db": min_sqnr,
        "block_size": block_size,
        "min_token_match": min_token_match,
        "require_real_data": require_real_data or None,
    }

    def action() -> ExportResult:
        parsed = {
            **flags,
            "model_kwargs": json_object(model_kwargs),
            "output_names": parse_output_names(output_names) if output_names is not None else None,
        }
        options = build_export_options(
            recipe,
            parsed,
            quantization_flags,
            _optimization_flags(optimize),
            inputs or [],
            allow_packages=allow_packages or (),
        )
        return _run(options)

    result = guarded(debug, action)
    print_summary(result)
    raise typer.Exit(int(result.exit_code))


def _value(choice: StrEnum | None) -> str | None:
    """A flag's plain string, as a recipe would give it (settings and reports hold no enum members)."""
    return choice.value if choice is not None else None


def _optimization_flags(text: str | None) -> dict[str, Any]:
    """``--optimize auto|none|step,step``, checked against the known steps."""
    if text is None:
        return {}
    steps = tuple(s.strip() for s in text.split(",") if s.strip())
    unknown = [s for s in steps if s not in {"auto", "none", *OPTIMIZE_STEPS}]
    if unknown or not steps:
        raise UsageError(
            f"--optimize {','.join(unknown) or text!r}: use auto, none, or steps from "
            f"{', '.join(OPTIMIZE_STEPS)}"
        )
    return {"steps": steps}


def _run(options: ExportOptions) -> ExportResult:
    from exporter import cli  # the package's ``export``, looked up per call: tests replace it there

    progress = RichProgress(out)
    targets = ", ".join(options.chosen_targets)
    out.print(
        f"[bold]exporter[/] {escape(str(options.checkpoint))} -> {targets} ({options.threads} threads)",
        highlight=False,
    )
    if options.task is not None:
        from exporter.hf.options import describe_spec

        out.print(
            f"[dim]task {options.task}; inputs {escape(describe_spec(options.spec))}[/]", highlight=False
        )
    try:
        return cli.export(options, progress)
    finally:
        progress.close()

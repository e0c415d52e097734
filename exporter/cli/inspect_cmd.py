"""``exporter inspect``: summarize a checkpoint or an ONNX model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from exporter.cli.shared import DebugFlag, guarded, json_object, out, rich_table, write_json
from exporter.errors import UsageError
from exporter.recipe.document import load_recipe
from exporter.specs.inputs import InputSpec, parse_tensor_spec

__all__ = ["inspect_command"]


def inspect_command(
    file: Annotated[
        Path | None, typer.Argument(help="A checkpoint (any format export reads) or an .onnx model.")
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option("--recipe", help="Take checkpoint, factory and inputs from a recipe.")
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Factory for weights-only checkpoints.")
    ] = None,
    model_kwargs: Annotated[
        str | None, typer.Option("--model-kwargs", help="JSON kwargs for --model.")
    ] = None,
    inputs: Annotated[
        list[str] | None, typer.Option("--input", help="NAME:DTYPE:DIMS to report output shapes.")
    ] = None,
    trust_checkpoint: Annotated[
        bool, typer.Option("--trust-checkpoint", help="Allow unpickling (only files you trust).")
    ] = False,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the summary as JSON (- for stdout).")
    ] = None,
    debug: DebugFlag = False,
) -> None:
    """Summarize a checkpoint (layers, parameters, output shapes) or an ONNX model (I/O, operators, opset)."""
    from exporter.report.inspect import summarize_checkpoint, summarize_onnx

    def action() -> dict[str, Any]:
        settings: dict[str, Any] = {}
        spec: InputSpec | None = None
        if recipe is not None:
            loaded = load_recipe(recipe)
            settings = dict(loaded.settings)
            spec = InputSpec(loaded.inputs, loaded.dims)
        path = file or settings.get("checkpoint")
        if path is None:
            raise UsageError("no FILE given (as an argument or in the recipe's [model].checkpoint)")
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"'{path}' does not exist")
        if path.suffix == ".onnx":
            return summarize_onnx(path)
        if inputs:
            tensors = [parse_tensor_spec(t) for t in inputs]
            spec = spec.with_overrides(tensors) if spec else InputSpec(tuple(tensors))
        return summarize_checkpoint(
            path,
            model_ref=model or settings.get("model_ref"),
            model_kwargs=json_object(model_kwargs) or settings.get("model_kwargs"),
            trust_checkpoint=trust_checkpoint or bool(settings.get("trust_checkpoint")),
            spec=spec,
        )

    summary = guarded(debug, action)
    if str(json_out) != "-":
        _print_inspection(summary)
    write_json(json_out, summary)


def _print_inspection(summary: dict[str, Any]) -> None:
    size = f"{summary['bytes'] / 1e6:.2f} MB"
    if summary["kind"] == "onnx":
        opsets = ", ".join(f"{d} {v}" for d, v in summary["opsets"].items())
        out.print(
            f"[bold]{escape(str(summary['file']))}[/]: ONNX, opset {escape(opsets)}, "
            f"IR {summary['ir_version']}, "
            f"{summary['nodes']} nodes, {summary['parameters']:,} parameters, {size} "
            f"({escape(str(summary['producer']))})",
            highlight=False,
        )
        io_rows = [
            [kind, v["name"], v["dtype"], str(v["shape"])]
            for kind in ("inputs", "outputs")
            for v in summary[kind]
        ]
        out.print(rich_table("Inputs and outputs", (["", "name", "dtype", "shape"], io_rows)))
        op_rows = [[op, str(count)] for op, count in summary["operators"].items()]
        out.print(rich_table("Operators", (["operator", "count"], op_rows)))
        return
    out.print(
        f"[bold]{escape(str(summary['file']))}[/]: {summary['format']}, {escape(str(summary['model']))}, "
        f"{summary['parameters']:,} "
        f"parameters ({summary['trainable_parameters']:,} trainable, {summary['buffers']:,} in buffers), "
        f"{size}",
        highlight=False,
    )
    layer_rows = [[layer["name"], layer["type"], f"{layer['parameters']:,}"] for layer in summary["layers"]]
    out.print(rich_table("Layers", (["layer", "type", "parameters"], layer_rows)))
    if summary["outputs"]:
        rows = [[o["name"], o["dtype"], str(o["shape"])] for o in summary["outputs"]]
        shapes = " ".join(f"{name}{shape}" for name, shape in summary["input_shapes"].items())
        title = f"Outputs for {shapes}"
        out.print(rich_table(title, (["output", "dtype", "shape"], rows)))

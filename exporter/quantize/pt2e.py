"""Int8 through torchao's PT2E flow: ``torch.export`` -> prepare (observers or fake-quant) -> calibrate or
train -> convert. The converted graph holds quantize/dequantize ops, which the dynamo ONNX exporter turns
into QuantizeLinear/DequantizeLinear, so PT2E also ends in an ONNX artifact.

QAT trains with a recipe's hook (``package.module:callable`` given the prepared model, returning it trained)
or, with nothing but unlabeled inputs, by distillation: the float model's outputs are the targets.
"""

from __future__ import annotations

import copy
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from exporter._quiet import quiet
from exporter.convert.onnx import (
    OnnxConversionRequest,
    OnnxExporterChoice,
    convert_to_onnx,
    dynamic_shapes_for,
)
from exporter.convert.onnx_files import move_onnx_model, save_onnx, uses_external_data
from exporter.loading.resolve import resolve_callable
from exporter.quantize.preprocess import clear_output
from exporter.runners.base import CallConvention
from exporter.runners.pytorch import flatten_outputs
from exporter.specs.inputs import InputSpec, make_inputs, trace_sizes

if TYPE_CHECKING:
    from exporter.quantize.types import QuantizeContext

__all__ = ["build_pt2e", "quantize_pt2e"]

Sample = dict[str, np.ndarray]


def _tensors(sample: Sample) -> dict[str, torch.Tensor]:
    return {n: torch.from_numpy(np.require(a, requirements=["C", "W"])) for n, a in sample.items()}


def _quantizer(is_qat: bool) -> Any:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as x86

    quantizer = x86.X86InductorQuantizer()
    quantizer.set_global(x86.get_default_x86_inductor_quantization_config(is_qat=is_qat))
    return quantizer


def quantize_pt2e(
    module: torch.nn.Module,
    spec: InputSpec,
    calibration: Sequence[Sample],
    *,
    qat: bool = False,
    train_hook: Callable[[torch.nn.Module], torch.nn.Module | None] | None = None,
    steps: int = 50,
    lr: float = 1e-4,
) -> torch.nn.Module:
    """Return the converted (int8 reference) module; it runs in eager and exports to ONNX as QDQ.

    Raises:
        RuntimeError: the model cannot go through ``torch.export`` or the quantizer (a TorchScript module,
            say); the caller records it as a failed candidate.
    """
    with quiet():  # torchao's import logs about optional CUDA kernels
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e, prepare_qat_pt2e

    if isinstance(module, torch.jit.ScriptModule):
        raise RuntimeError("TorchScript modules cannot go through torch.export, which PT2E needs")
    convention = CallConvention.for_module(module, spec.names)
    student = copy.deepcopy(module)
    student.train(qat)
    # torch.export specializes dims of size 0 and 1, so trace at sizes of at least 2 where the range allows.
    args, kwargs = convention.split(_tensors(make_inputs(spec, trace_sizes(spec), seed=0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(
            student, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes_for(spec, convention)
        )
        graph = program.module()
        _separate_repeated_module_calls(graph)
        if not qat:
            prepared = prepare_pt2e(graph, _quantizer(False))
            _calibrate(prepared, convention, calibration)
        else:
            prepared = prepare_qat_pt2e(graph, _quantizer(True))
            # Calibrate the fake-quant ranges first (eval mode: BatchNorm keeps its statistics), then train.
            move_exported_model_to_eval(prepared)
            # QAT's fake-quant observers average ranges slowly (0.01 per step): give them enough passes.
            batches = _minibatches(calibration, size=16)
            _calibrate(
                prepared, convention, [batches[i % len(batches)] for i in range(max(50, len(batches)))]
            )
            if train_hook is not None:
                move_exported_model_to_train(prepared)
                prepared = train_hook(prepared) or prepared
            else:
                # Distillation keeps BatchNorm and Dropout in eval mode: the teacher's statistics are the
                # ones to match, and re-estimating them from calibration batches drifted the student away.
                _distill(
                    student=prepared,
                    teacher=module,
                    convention=convention,
                    samples=calibration,
                    steps=steps,
                    lr=lr,
                )
            move_exported_model_to_eval(prepared)
        return convert_pt2e(prepared)


def _separate_repeated_module_calls(graph: torch.fx.GraphModule) -> int:
    """Give each call of a module that runs more than once its own name in the nodes' module stacks.

    The x86 quantizer groups nodes into partitions by the innermost module's name in ``nn_module_stack``
    (``torch.export`` with ``strict=False`` records no ``source_fn_stack``), so a module called twice, like
    the one ``relu`` a torchvision ResNet block applies after its first convolution and after its residual
    add, becomes one partition with two outputs, and ``prepare_pt2e`` stops with "Input partition has more
    than one output node". Nodes of one name that are not connected to each other are separate calls;
    each call after the first is renamed ``<name>#<n>``. Returns how many calls were renamed.
    """
    groups: dict[str, list[torch.fx.Node]] = {}
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "call_function" and stack and "source_fn_stack" not in node.meta:
            groups.setdefault(next(reversed(stack.values()))[0], []).append(node)
    renamed = 0
    for nodes in groups.values():
        calls: dict[torch.fx.Node, int] = {}
        for node, component in zip(nodes, _components(nodes), strict=True):  # the first call keeps its name
            call = calls.setdefault(component, len(calls))
            if call:
                stack = dict(node.meta["nn_module_stack"])
                key = next(reversed(stack))
                fqn, kind = stack[key]
                stack[key] = (f"{fqn}#{call}", kind)
                node.meta["nn_module_stack"] = stack
        renamed += len(calls) - 1
    return renamed


def _components(nodes: Sequence[torch.fx.Node]) -> list[torch.fx.Node]:
    """For each node, a representative of the group of ``nodes`` it is connected to through ``nodes``."""
    parent = {node: node for node in nodes}

    def root(node: torch.fx.Node) -> torch.fx.Node:
        while parent[node] is not node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    for node in nodes:
        for source in node.all_input_nodes:
            if source in parent:
                parent[root(node)] = root(source)
    return [root(node) for node in nodes]


def _calibrate(prepared: torch.nn.Module, convention: CallConvention, samples: Sequence[Sample]) -> None:
    with torch.no_grad():
        for sample in samples:
            args, kwargs = convention.split(_tensors(sample))
            prepared(*args, **kwargs)


def _minibatches(samples: Sequence[Sample], size: int) -> list[Sample]:
    """Stack samples along axis 0 (batch) when their other dims agree: BatchNorm in training mode needs
    more than one sample per step."""
    batches: list[Sample] = []
    for start in range(0, len(samples), size):
        group = samples[start : start + size]
        try:
            batches.append({n: np.concatenate([s[n] for s in group]) for n in group[0]})
        except ValueError:
            batches.extend(group)
    return batches


def _distill(
    *,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    convention: CallConvention,
    samples: Sequence[Sample],
    steps: int,
    lr: float,
) -> None:
    """Fine-tune the fake-quantized student to reproduce the float teacher's outputs (MSE, all outputs)."""
    parameters = [p for p in student.parameters() if p.requires_grad]
    if not parameters:
        return
    optimizer = torch.optim.Adam(parameters, lr=lr)
    teacher.eval()
    batches = _minibatches(samples, size=16)
    for step in range(steps):
        args, kwargs = convention.split(_tensors(batches[step % len(batches)]))
        with torch.no_grad():
            targets = [t for _, t in flatten_outputs(teacher(*args, **kwargs)) if t.is_floating_point()]
        outputs = [t for _, t in flatten_outputs(student(*args, **kwargs)) if t.is_floating_point()]
        loss = sum(torch.nn.functional.mse_loss(o, t) for o, t in zip(outputs, targets, strict=True))
        optimizer.zero_grad()
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()


# ---- the candidate ----------------------------------------------------------------------------------------


def build_pt2e(context: QuantizeContext, target: Path, qat: bool) -> dict[str, Any]:
    """Quantize the eager module through PT2E and export the converted graph with the dynamo exporter."""
    options = context.options
    hook = resolve_callable(options.qat_train, option="qat_train") if options.qat_train else None
    converted = quantize_pt2e(
        context.module,
        context.spec,
        context.calibration.samples,
        qat=qat,
        train_hook=hook,
        steps=options.qat_steps,
        lr=options.qat_lr,
    )
    sizes = trace_sizes(context.spec)
    example = {n: torch.from_numpy(a) for n, a in make_inputs(context.spec, sizes, 0).items()}
    build_dir = target.parent / f"{target.stem}_build"
    conversion = convert_to_onnx(
        OnnxConversionRequest(
            module=converted,
            spec=context.spec,
            example_inputs=example,
            probe_inputs=None,
            output_names=_output_names(context.float_onnx),
            work_dir=build_dir,
            exporter=OnnxExporterChoice.DYNAMO,
            simplify=False,
        )
    )
    del converted
    _place(conversion.model_path, target, external=context.external_data)
    shutil.rmtree(build_dir, ignore_errors=True)
    settings: dict[str, Any] = {
        "quantizer": "X86InductorQuantizer",
        "calibration_samples": len(context.calibration.samples),
    }
    if qat:
        settings["training"] = options.qat_train or f"distillation, {options.qat_steps} steps"
        settings["lr"] = options.qat_lr
    return settings


def _place(built: Path, target: Path, *, external: bool) -> None:
    """Move a converted model to ``target`` with its data file renamed after it (``move_onnx_model``); when
    the float model keeps external data, so does this one (one ``<target>.data``)."""
    import onnx

    clear_output(target)
    move_onnx_model(built, target)
    if external and not uses_external_data(target):
        save_onnx(onnx.load(str(target)), target, external=True)


def _output_names(path: Path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]

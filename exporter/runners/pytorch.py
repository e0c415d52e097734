"""PyTorch's runners: the eager model (the reference), its float64 twin (the arbiter), a TorchScript archive,
``torch.compile`` and an AOTInductor package, each called like the model itself.

torch is imported when a runner is made or called, not when this module is imported: the backend registry
and the server import it, and a server of an ONNX model never loads torch.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from exporter.runners.base import CallConvention, Runner
from exporter.specs.naming import name_outputs

if TYPE_CHECKING:
    import torch

__all__ = [
    "AotInductorRunner",
    "CompiledRunner",
    "EagerRunner",
    "Float64EagerRunner",
    "TorchScriptRunner",
    "flatten_outputs",
]


def flatten_outputs(outputs: Any) -> list[tuple[str, torch.Tensor]]:
    """Flatten a (nested) tuple/list/dict of tensors in pytree order, naming each leaf by its path.

    The order is the one ``torch.onnx.export`` uses for graph outputs, so names line up across backends.
    """
    import torch
    from torch.utils import _pytree as pytree

    if isinstance(outputs, torch.Tensor):
        return [("output", outputs)]
    leaves, _ = pytree.tree_flatten_with_path(outputs)
    flat: list[tuple[str, torch.Tensor]] = []
    for path, leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            name = ".".join(_key_name(k) for k in path) or f"output_{len(flat)}"
            flat.append((name, leaf))
    return flat


def _key_name(key: Any) -> str:
    for attribute in ("key", "idx", "name"):
        if hasattr(key, attribute):
            return str(getattr(key, attribute))
    return str(key)


class _CallableRunner(Runner):
    """Anything called like the PyTorch model: module, loaded archive, compiled module, AOTI package."""

    def __init__(self, function: Any, convention: CallConvention, input_names: Sequence[str]) -> None:
        super().__init__(input_names)
        self.function = function
        self.convention = convention
        self.output_names: list[str] = []

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        import torch

        return {n: torch.from_numpy(np.require(a, requirements=["C", "W"])) for n, a in inputs.items()}

    def call(self, inputs: Mapping[str, np.ndarray]) -> Any:
        import torch

        args, kwargs = self.convention.split(self._tensors(inputs))
        with torch.inference_mode():
            return self.function(*args, **kwargs)

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        flat = flatten_outputs(self.call(inputs))
        self.output_names = [name for name, _ in flat]
        return [t.detach().cpu().numpy() for _, t in flat]


class EagerRunner(_CallableRunner):
    """The PyTorch model itself, under ``inference_mode``; the reference every other backend is judged by."""

    name = "pytorch-eager"

    def __init__(
        self, module: torch.nn.Module, input_names: Sequence[str], output_names: Sequence[str] = ()
    ) -> None:
        super().__init__(module, CallConvention.for_module(module, input_names), input_names)
        self.module = module
        self.given_output_names = tuple(output_names)
        """``--output-names``: replace the pytree paths, one per output (``exporter.specs.naming``)."""

    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        outputs = super()._infer(inputs)
        self.output_names = name_outputs(self.output_names, self.given_output_names)
        return outputs


class Float64EagerRunner(EagerRunner):
    """The PyTorch model in float64 (floating inputs cast up): the arbiter when float32 backends disagree.

    PyTorch judges compiled-vs-eager drift the same way: each float32 result against a float64 one.
    """

    name = "pytorch-eager-float64"

    def __init__(self, module: torch.nn.Module, input_names: Sequence[str]) -> None:
        super().__init__(copy.deepcopy(module).double(), input_names)

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        return super()._tensors(
            {n: a.astype(np.float64) if a.dtype.kind == "f" else a for n, a in inputs.items()}
        )


class TorchScriptRunner(_CallableRunner):
    """A saved TorchScript archive, loaded back with ``torch.jit.load`` exactly as a deployment would."""

    name = "torchscript"

    def __init__(self, path: Path, input_names: Sequence[str], threads: int | None = None) -> None:
        import torch

        _set_threads(threads)
        module = torch.jit.load(str(path), map_location="cpu")
        super().__init__(module, CallConvention.for_module(module, input_names), input_names)

    def close(self) -> bool:
        self.function = None
        return True


class CompiledRunner(_CallableRunner):
    """``torch.compile`` (inductor) of the model, with the spec's dynamic dims marked on every input so a new
    size reuses the dynamic graph where guards allow; compilations are counted and timed apart from runs."""

    name = "torch-compile"

    def __init__(
        self,
        module: torch.nn.Module,
        input_names: Sequence[str],
        *,
        dynamic_axes: Mapping[str, Sequence[int]],
        mode: str | None = None,
    ) -> None:
        import torch

        compiled = torch.compile(module, backend="inductor", mode=None if mode == "default" else mode)
        super().__init__(compiled, CallConvention.for_module(module, input_names), input_names)
        self.dynamic_axes = {name: tuple(axes) for name, axes in dynamic_axes.items()}
        self.graphs = 0
        self.compile_seconds = 0.0
        self.compiles: list[dict[str, Any]] = []

    def _tensors(self, inputs: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        import torch._dynamo

        tensors = super()._tensors(inputs)
        for name, axes in self.dynamic_axes.items():
            for axis in axes:
                torch._dynamo.maybe_mark_dynamic(tensors[name], axis)
        return tensors

    def call(self, inputs: Mapping[str, np.ndarray]) -> Any:
        from torch._dynamo.utils import counters

        before = counters["stats"]["unique_graphs"]
        started = time.perf_counter()
        result = super().call(inputs)
        new_graphs = counters["stats"]["unique_graphs"] - before
        if new_graphs:
            seconds = time.perf_counter() - started
            self.graphs += new_graphs
            self.compile_seconds += seconds
            shapes = {n: list(a.shape) for n, a in inputs.items()}
            self.compiles.append({"input_shapes": shapes, "graphs": new_graphs, "seconds": round(seconds, 3)})
        return result

    @property
    def recompiles(self) -> int:
        """Compilations after the first call's: each is a shape the dynamic graph did not cover."""
        return max(0, len(self.compiles) - 1)


class AotInductorRunner(_CallableRunner):
    """An AOTInductor package (``model.pt2``) loaded with ``torch._inductor.aoti_load_package``."""

    name = "aotinductor"

    def __init__(
        self, path: Path, convention: CallConvention, input_names: Sequence[str], threads: int | None = None
    ) -> None:
        from torch._inductor import aoti_load_package

        _set_threads(threads)
        super().__init__(aoti_load_package(str(path)), convention, input_names)

    def close(self) -> bool:
        self.function = None
        return True


def _set_threads(threads: int | None) -> None:
    """torch's intra-op threads for a loaded artifact (a process-wide setting, as a deployment makes it)."""
    if threads is not None:
        import torch

        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

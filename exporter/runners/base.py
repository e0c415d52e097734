"""The runner contract: ``run(inputs) -> outputs`` for every way of executing a model, numpy in and out.

Verification, benchmarking, the gate and the server are written once against ``Runner``; a backend is one
subclass in a module of its own (``pytorch``, ``onnxruntime``, ``openvino``) that imports its runtime only
when a runner is made. This module imports no runtime at all, so the server and a bundle can use it.
"""

from __future__ import annotations

import gc
import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

__all__ = ["CallConvention", "Runner", "first_useful_line"]

T = TypeVar("T")
R = TypeVar("R", bound="Runner")


@dataclass(frozen=True)
class CallConvention:
    """How named inputs map onto ``forward``: by keyword when every name is a parameter, else positionally."""

    positional: tuple[str, ...]
    keyword: tuple[str, ...] = ()
    by_name: bool = False

    @classmethod
    def for_module(cls, module: Any, names: Sequence[str]) -> CallConvention:
        """The convention for a ``torch.nn.Module`` (or a loaded TorchScript module) taking ``names``."""
        parameters = _forward_parameters(module)
        if parameters is None or not set(names) <= {name for name, _ in parameters}:
            return cls(tuple(names))
        positional: list[str] = []
        for parameter, keyword_only in parameters:
            if parameter not in names or keyword_only:
                break
            positional.append(parameter)
        keyword = tuple(n for n in names if n not in positional)
        return cls(tuple(positional), keyword, by_name=True)

    def split(self, values: Mapping[str, T]) -> tuple[tuple[T, ...], dict[str, T]]:
        return tuple(values[n] for n in self.positional), {n: values[n] for n in self.keyword}


def _forward_parameters(module: Any) -> list[tuple[str, bool]] | None:
    """``forward``'s parameters as (name, keyword-only), or None when they cannot be named."""
    forward = module.forward
    schema = getattr(forward, "schema", None)
    if schema is not None:  # TorchScript methods have no Python signature
        return [(a.name, a.kwarg_only) for a in schema.arguments if a.name != "self"]
    try:
        signature = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in signature.parameters.values()):
        return None
    return [
        (p.name, p.kind is inspect.Parameter.KEYWORD_ONLY)
        for p in signature.parameters.values()
        if p.kind in kinds
    ]


class Runner(ABC):
    """Runs one backend. Subclasses implement ``_infer``; the base checks inputs the same way for all.

    Constructing a runner loads its artifact (the way a deployment opens it); ``with runner:`` frees it at
    the end of the block, because an idle ONNX Runtime session's threads slow whatever runs next. Runners
    that wrap a model the caller owns (eager, a compiled module) free nothing.
    """

    name: str = "runner"

    def __init__(self, input_names: Sequence[str]) -> None:
        self.input_names = tuple(input_names)

    def __enter__(self: R) -> R:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.close():
            gc.collect()

    def close(self) -> bool:
        """Release what this runner loaded; True when something was released."""
        return False

    def run(self, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise KeyError(f"{self.name}: missing inputs {missing}")
        return self._infer({n: inputs[n] for n in self.input_names})

    @abstractmethod
    def _infer(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def first_useful_line(text: str) -> str:
    """A runtime's error in one line: OpenVINO and TorchScript start theirs with a source location or a
    traceback header, so the first line that says something is kept."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Exception from", "Check '", "Traceback"))]
    return (useful or lines or [text])[0]

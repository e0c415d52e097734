"""The convert and verify stages: every requested backend built through the registry, then every one
verified alike against the golden cases (and, for float backends that missed float32 eager on values
alone, against float64 eager)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.backends import (
    BackendResult,
    BackendSpec,
    BuildContext,
    BuiltBackend,
    arbitrate_float_backends,
    verify_built,
)
from exporter.loading import LoadedModel
from exporter.verify import GoldenCase

if TYPE_CHECKING:
    from exporter.options import ExportOptions

__all__ = ["Built", "build_backends", "verify_backends"]


@dataclass
class Built:
    """The convert stage's output: each backend's build, in registry order."""

    builds: list[tuple[BackendSpec, BuiltBackend]]

    def describe(self) -> str:
        return "; ".join(built.summary for _, built in self.builds)


def build_backends(
    specs: Sequence[BackendSpec],
    *,
    options: ExportOptions,
    loaded: LoadedModel,
    golden: Sequence[GoldenCase],
    build_dir: Path,
    step: Callable[[str], None],
) -> Built:
    builds = []
    shared: dict[str, Any] = {}
    for spec in specs:
        assert spec.build is not None
        context = BuildContext(loaded, options, golden, build_dir / spec.name, step, shared)
        builds.append((spec, spec.build(context)))
    return Built(builds)


def verify_backends(
    built: Built,
    *,
    golden: Sequence[GoldenCase],
    options: ExportOptions,
    loaded: LoadedModel,
    step: Callable[[str], None],
) -> tuple[list[BackendResult], list[str]]:
    """Every backend through the same verification; then float64 arbitration."""
    results = [verify_built(spec, b, golden, options.tolerance, step) for spec, b in built.builds]
    note = arbitrate_float_backends(results, loaded.module, golden, options.spec.names)
    return results, [note] if note else []

"""The convert and verify stages: every requested backend built through the registry, then every one
verified alike against the golden cases (and, for float backends that missed float32 eager on values
alone, against float64 eager)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter._heap import release_freed_memory
from exporter.backends._verify import arbitrate_float_backends, verify_built
from exporter.backends.registry import BackendResult, BackendSpec, BuildContext, BuiltBackend
from exporter.errors import ConversionError, explain
from exporter.loading.checkpoint import LoadedModel
from exporter.stages.records import TargetFailure
from exporter.verify.parity import GoldenCase

if TYPE_CHECKING:
    from exporter.options import ExportOptions

__all__ = ["Built", "build_backends", "verify_backends"]


@dataclass
class Built:
    """The convert stage's output: each backend's build, in registry order, and the targets that failed."""

    builds: list[tuple[BackendSpec, BuiltBackend]]
    failed: list[TargetFailure] = field(default_factory=list)

    def describe(self) -> str:
        built = "; ".join(b.summary for _, b in self.builds)
        failed = "; ".join(f"{f.target} FAILED ({f.backend} did not convert: see below)" for f in self.failed)
        return "; ".join(part for part in (built, failed) if part)


def build_backends(
    specs: Sequence[BackendSpec],
    *,
    options: ExportOptions,
    loaded: LoadedModel,
    golden: Sequence[GoldenCase],
    build_dir: Path,
    step: Callable[[str], None],
) -> Built:
    """Build every backend. With more than one ``--to`` target, a backend whose conversion fails is recorded
    and the others go on (a partial export, exit 6); when every backend fails, the first failure is raised.

    Raises:
        ConversionError: the only target, or every target, failed to convert.
    """
    builds: list[tuple[BackendSpec, BuiltBackend]] = []
    failed: list[TargetFailure] = []
    shared: dict[str, Any] = {}
    failures: list[ConversionError] = []
    one_target = len({spec.target for spec in specs}) == 1
    for spec in specs:
        assert spec.build is not None
        context = BuildContext(loaded, options, golden, build_dir / spec.name, step, shared)
        try:
            builds.append((spec, spec.build(context)))
        except ConversionError as error:
            if one_target:
                raise
            failures.append(error)
            failed.append(TargetFailure(spec.target or spec.name, spec.name, str(error), explain(error)))
    release_freed_memory()
    if not builds:
        first = failures[0]
        raise ConversionError(
            "every target failed to convert: " + "; ".join(f"{f.target}: {f.error}" for f in failed),
            details=explain(first),
        ) from first
    return Built(builds, failed)


def verify_backends(
    built: Built,
    *,
    golden: Sequence[GoldenCase],
    options: ExportOptions,
    loaded: LoadedModel,
    step: Callable[[str], None],
) -> tuple[list[BackendResult], list[str]]:
    """Every backend through the same verification; then float64 arbitration."""
    results = []
    for spec, backend in built.builds:
        results.append(verify_built(spec, backend, golden, options.tolerance, step))
        release_freed_memory()  # its runners are closed: the next backend's sessions open on a lean process
    note = arbitrate_float_backends(results, loaded.module, golden, options.spec.names)
    return results, [note] if note else []

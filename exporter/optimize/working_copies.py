"""The optimize stage works on models with external data, whatever form they arrive in.

A pass on a self-contained model holds the whole file twice while onnx parses it and again while it
serializes its output (measured on a 0.94 GiB encoder: the transformer fusions peaked 5 GiB above the
stage's starting RSS); with the weights in one ``.data`` file the passes read and write them tensor by
tensor, and ``splitnorm`` and the graph reads never touch them. So a self-contained source gets a working
copy with external data (streamed by ``onnx_files.externalize``: no weight is held in memory), and what the
stage hands on (the shipped variants and int8's source) is made self-contained again the same way, unless it
is past 2 GB: a model that arrives self-contained leaves self-contained, one with external data leaves with
its one ``.data`` file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from exporter.convert.onnx_files import externalize, internalize, uses_external_data
from exporter.optimize.results import OptimizationResult, Variant

__all__ = ["WorkingCopies"]


class WorkingCopies:
    """Working copies with external data of the stage's self-contained sources, and their originals."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.originals: dict[Path, Path] = {}
        self.labels: set[str] = set()

    def of(self, source: Path, label: str) -> Path:
        """``source`` itself when it keeps its weights outside already, else a copy in ``folder/label``
        whose weights are in its one ``.data`` file (the variants made from it are labelled
        ``label+...``)."""
        if uses_external_data(source):
            return source
        copy = self.folder / label / source.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, copy)
        externalize(copy)
        self.originals[copy] = source
        self.labels.add(label)
        return copy

    def hand_over(self, result: OptimizationResult, variants: Iterable[Variant]) -> None:
        """Point the variants that are a working copy back at its original, and make the models the stage
        hands on (the shipped variants, int8's source) self-contained again when they were made from a
        working copy (streamed; a model past 2 GB keeps its external data)."""
        if not self.originals:
            return
        made = [v for v in variants if v.label.split("+")[0] in self.labels]
        for variant in made:
            variant.path = self.originals.get(variant.path, variant.path)
            variant.quantizable = self.originals.get(variant.quantizable, variant.quantizable)
        handed = {result.portable.path, result.best.quantizable}
        if result.runtime_specific is not None:
            handed.add(result.runtime_specific.path)
        for path in {v.path for v in made} & handed - set(self.originals.values()):
            internalize(path)

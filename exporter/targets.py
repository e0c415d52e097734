"""The conversion targets a user can ask for (``--to``), and the backends each one produces."""

from __future__ import annotations

from collections.abc import Iterable

from exporter.errors import UsageError

__all__ = ["COMPILE_MODES", "TARGETS", "TARGET_BACKENDS", "TORCHSCRIPT_MODES", "expand_targets"]

TARGETS = ("onnx", "torchscript", "compile")
TARGET_BACKENDS = {
    "onnx": ("onnxruntime",),
    "torchscript": ("torchscript",),
    "compile": ("torch-compile", "aotinductor"),
}
TORCHSCRIPT_MODES = ("auto", "script", "trace")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def expand_targets(requested: Iterable[str]) -> tuple[str, ...]:
    """``all`` means every target; order is the canonical one, duplicates collapse.

    Raises:
        UsageError: an unknown target or none at all.
    """
    wanted: set[str] = set()
    for target in requested:
        if target == "all":
            wanted.update(TARGETS)
        elif target in TARGETS:
            wanted.add(target)
        else:
            raise UsageError(f"--to {target}: unknown target (choose from {', '.join(TARGETS)}, all)")
    if not wanted:
        raise UsageError(f"no target given: use --to with one of {', '.join(TARGETS)}, all")
    return tuple(t for t in TARGETS if t in wanted)

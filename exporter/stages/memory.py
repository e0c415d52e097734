"""Memory: what an export may use, what it is estimated to need, and what each stage used.

A model too big for the machine used to be found out by the kernel's out-of-memory killer, minutes in,
with nothing printed. Instead the load stage, which now costs almost nothing (weights memory-mapped),
weighs the model and refuses up front a run whose estimated peak exceeds the memory available, naming
what to drop. The estimate is the weights' bytes times the measured peak-over-weights of the costliest
stage asked for (``benchmarks/scale.py`` measures them), plus what the process already holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter._heap import current_rss
from exporter.errors import UsageError
from exporter.quantize.types import QuantMode

if TYPE_CHECKING:
    import torch

    from exporter.options import ExportOptions

__all__ = [
    "STAGE_COSTS",
    "MemoryEstimate",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "parse_size",
    "weights_bytes",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)

GIB = 2**30

STAGE_COSTS: dict[str, tuple[float, int]] = {
    "onnx": (2.05, int(0.8 * GIB)),
    "none-optimize": (1.9, int(0.6 * GIB)),
    "openvino": (2.8, int(0.6 * GIB)),
    "torchscript": (3.5, int(0.8 * GIB)),
    "compile": (3.0, int(0.8 * GIB)),
    "int8": (2.5, int(1.0 * GIB)),
}
"""(times the float32 weights, plus bytes) each target or lossy mode peaks at beyond what the process held
after loading, fitted to ``benchmarks/scale.py`` (250M, 700M, 1.5B) with a margin: float ONNX peaked at
2.79, 5.85 and 11.81 GiB (about 2.0x the weights + 0.6 GiB), int8 at 3.62, 7.08 and 14.34 GiB (2.4x +
0.7 GiB), OpenVINO at 2.98, 7.62 and 15.59 GiB (2.7x + 0.6 GiB); ``int8`` covers every ``--quantize``
mode. TorchScript and compile come from 250M alone (compile's AOTInductor 3.1x; TorchScript 5.0x before
its archives were written straight to disk, not re-measured)."""


def parse_size(text: str, flag: str) -> int:
    """``12GiB``, ``12G``, ``800MB``, ``1.5T`` or a plain byte count, as bytes (K/M/G/T are powers of 1024
    with or without the ``i``: memory is counted in pages, and ``free -g`` means GiB too).

    Raises:
        UsageError: not a size; the message shows the accepted forms.
    """
    match = _SIZE.match(text)
    if not match or float(match[1]) <= 0:
        raise UsageError(f"{flag} '{text}' is not a size: write it like 12GiB, 12G, 800MB or 1.5T")
    scale = 1024 ** " KMGT".index(match[2].upper() or " ")
    return int(float(match[1]) * scale)


def available_memory() -> tuple[int, str]:
    """Bytes this process may still take, and where that figure came from: the kernel's ``MemAvailable``,
    or what is left under the cgroup's ``memory.max`` (a container's limit) when that is lower."""
    meminfo = Path("/proc/meminfo").read_text()
    found = re.search(r"^MemAvailable:\s+(\d+) kB", meminfo, re.MULTILINE)
    available, source = (int(found[1]) * 1024, "MemAvailable") if found else (0, "unknown")
    limit, current = _cgroup_file("memory.max"), _cgroup_file("memory.current")
    if limit is not None and current is not None and limit - current < available:
        available, source = max(limit - current, 0), "the cgroup's memory.max"
    return available, source


def _cgroup_file(name: str) -> int | None:
    try:
        text = (Path("/sys/fs/cgroup") / name).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def weights_bytes(module: torch.nn.Module) -> int:
    """The model's weights as float32 would hold them (parameters and buffers, shared ones once): every
    stage's memory scales with the float graph it exports, whatever dtype the checkpoint had."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) in seen or not tensor.is_floating_point():
            continue
        seen.add(id(tensor))
        total += tensor.numel() * 4
    return total


@dataclass(frozen=True)
class MemoryEstimate:
    """The run's estimated peak: what the process holds now plus the costliest stage's cost (a factor of
    the weights plus a fixed part); ``driver`` names that stage as the user asked for it (``--quantize
    int8``, ``--to compile``)."""

    weights: int
    resident: int
    factor: float
    overhead: int
    driver: str

    @property
    def peak(self) -> int:
        return self.resident + self.overhead + int(self.factor * self.weights)


def _stage_costs(options: ExportOptions) -> list[tuple[str, tuple[float, int]]]:
    """(how the user asked for it, (factor, overhead)) for each memory-heavy part of the run."""
    costs: list[tuple[str, tuple[float, int]]] = []
    for target in options.chosen_targets:
        key = "none-optimize" if target == "onnx" and "none" in options.optimization.steps else target
        costs.append((f"--to {target}", STAGE_COSTS.get(key, STAGE_COSTS["onnx"])))
    if options.quantization.mode is not QuantMode.NONE:
        costs.append((f"--quantize {options.quantization.mode.value}", STAGE_COSTS["int8"]))
    return costs or [("load", (1.0, 0))]


def _bytes(cost: tuple[float, int], weights: int) -> int:
    factor, overhead = cost
    return overhead + int(factor * weights)


def estimate_memory(options: ExportOptions, weights: int, resident: int) -> MemoryEstimate:
    """The run's estimate (stages run one after another and free their models, so the costliest counts)."""
    driver, (factor, overhead) = max(_stage_costs(options), key=lambda cost: _bytes(cost[1], weights))
    return MemoryEstimate(weights, resident, factor, overhead, driver)


def check_memory(options: ExportOptions, module: torch.nn.Module) -> MemoryEstimate:
    """Refuse, before any conversion, a run estimated to need more memory than it may use.

    Raises:
        UsageError: the estimate exceeds ``--max-memory`` (else the memory available); one line with the
            estimate, the limit and its source, and what to drop.
    """
    estimate = estimate_memory(options, weights_bytes(module), current_rss())
    if options.max_memory is not None:
        limit, source = options.max_memory, "--max-memory"
    else:
        limit, source = available_memory()
    if estimate.peak <= limit:
        return estimate
    raise UsageError(
        f"this export needs an estimated {_gib(estimate.peak)} of memory ({_gib(estimate.weights)} of "
        f"float32 weights x{estimate.factor:.1f} + {_gib(estimate.overhead)} for {estimate.driver}, plus "
        f"{_gib(estimate.resident)} in use), more than the {_gib(limit)} available ({source}); "
        f"{_what_to_drop(options, estimate)}"
    )


def _what_to_drop(options: ExportOptions, estimate: MemoryEstimate) -> str:
    costs = [(what, _bytes(cost, estimate.weights)) for what, cost in _stage_costs(options)]
    worst = estimate.peak - estimate.resident
    lighter = [size for _, size in costs if size < worst]
    heavy = [what for what, size in costs if size >= worst]
    override = "or pass --max-memory SIZE if you know the machine has more"
    if not lighter:
        floor = estimate.resident + _bytes(STAGE_COSTS["none-optimize"], estimate.weights)
        return (
            f"run on a machine with more memory (--to onnx --optimize none needs {_gib(floor)}), {override}"
        )
    rest = estimate.resident + max(lighter)
    return f"drop {' and '.join(heavy)} (then about {_gib(rest)}), {override}"


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"

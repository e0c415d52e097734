"""Memory: what an export may use, what it is estimated to need, and what each stage used.

A model too big for the machine used to be found out by the kernel's out-of-memory killer, minutes in,
with nothing printed. Instead the load stage, which now costs almost nothing (weights memory-mapped),
weighs the model and refuses up front a run whose estimated peak exceeds the memory available, naming
what to drop. The estimate is the weights' bytes times the measured peak-over-weights of the costliest
stage asked for (``benchmarks/scale.py`` measures them), plus what the process already holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exporter.errors import UsageError
from exporter.quantize.types import QuantMode

if TYPE_CHECKING:
    import torch

    from exporter.options import ExportOptions

__all__ = [
    "MemoryEstimate",
    "available_memory",
    "check_memory",
    "estimate_memory",
    "parse_size",
    "peak_rss",
    "reset_peak_rss",
    "weights_bytes",
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B?\s*$", re.IGNORECASE)
_GIB = 2**30

FLOAT_ONNX = 2.6
"""Peak over the weights of a float ONNX export with the default optimize steps, the weights counted once,
beyond what the process held after loading. Measured by ``benchmarks/scale.py`` (250M: 2.64; the benchmark
stage, eager beside ONNX Runtime, is the peak); kept at the worst size there."""

STAGE_FACTORS: dict[str, float] = {
    "onnx": FLOAT_ONNX,
    "openvino": 2.6,
    "torchscript": 3.5,
    "compile": 3.2,
    "int8": 3.6,
    "none-optimize": 2.2,
}
"""The same per target and per lossy mode (``int8`` covers every ``--quantize`` mode: its quantize stage,
ORT's quantizer holding the float model as a protobuf, was 3.6 on 250M), and for a float ONNX export with
``--optimize none``. TorchScript and compile are from 250M runs (compile 3.1; TorchScript 5.0 before its
archives were written straight to disk, not re-measured since)."""


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
    """The run's estimated peak: what the process holds now plus the costliest stage's factor times the
    weights; ``driver`` names that stage as the user asked for it (``--quantize int8``, ``--to compile``)."""

    weights: int
    resident: int
    factor: float
    driver: str

    @property
    def peak(self) -> int:
        return self.resident + int(self.factor * self.weights)


def _stage_costs(options: ExportOptions) -> list[tuple[str, float]]:
    """(how the user asked for it, factor) for each memory-heavy part of the run."""
    costs: list[tuple[str, float]] = []
    for target in options.chosen_targets:
        factor = STAGE_FACTORS.get(target, FLOAT_ONNX)
        if target == "onnx" and "none" in options.optimization.steps:
            factor = STAGE_FACTORS["none-optimize"]
        costs.append((f"--to {target}", factor))
    if options.quantization.mode is not QuantMode.NONE:
        costs.append((f"--quantize {options.quantization.mode.value}", STAGE_FACTORS["int8"]))
    return costs or [("load", 1.0)]


def estimate_memory(options: ExportOptions, weights: int, resident: int) -> MemoryEstimate:
    """The run's estimate (stages run one after another and free their models, so the costliest counts)."""
    driver, factor = max(_stage_costs(options), key=lambda cost: cost[1])
    return MemoryEstimate(weights, resident, factor, driver)


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
        f"float32 weights x{estimate.factor:.1f} for {estimate.driver}, plus {_gib(estimate.resident)} "
        f"in use), more than the {_gib(limit)} available ({source}); {_what_to_drop(options, estimate)}"
    )


def _what_to_drop(options: ExportOptions, estimate: MemoryEstimate) -> str:
    costs = _stage_costs(options)
    lighter = [cost for cost in costs if cost[1] < estimate.factor]
    heavy = [what for what, factor in costs if factor >= estimate.factor]
    override = "or pass --max-memory SIZE if you know the machine has more"
    if not lighter:
        floor = estimate.resident + int(STAGE_FACTORS["none-optimize"] * estimate.weights)
        return (
            f"run on a machine with more memory (--to onnx --optimize none needs {_gib(floor)}), {override}"
        )
    rest = estimate.resident + int(max(f for _, f in lighter) * estimate.weights)
    return f"drop {' and '.join(heavy)} (then about {_gib(rest)}), {override}"


def _gib(size: int) -> str:
    return f"{size / _GIB:.1f} GiB"


def current_rss() -> int:
    """This process's resident set now (``VmRSS``), in bytes."""
    return _status_kb("VmRSS") * 1024


def reset_peak_rss() -> bool:
    """Start a new peak: Linux resets the process's high-water mark (``VmHWM``) to its current RSS when
    ``5`` is written to ``/proc/self/clear_refs``. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """This process's peak resident set since the last :func:`reset_peak_rss` (``VmHWM``), in bytes."""
    return _status_kb("VmHWM") * 1024


def _status_kb(field: str) -> int:
    try:
        lines: Iterable[str] = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(f"{field}:")), 0)

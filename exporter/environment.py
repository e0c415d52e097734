"""What a run happened on: versions, CPU and threads, so every number in a report can be traced."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from exporter._version import __version__

__all__ = ["DISABLE_FEATURES_ENV", "bf16_support", "collect_environment", "cpu_flags"]

_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "numpy", "openvino", "nncf")
DISABLE_FEATURES_ENV = "EXPORTER_DISABLE_CPU_FEATURES"
"""Comma-separated CPU features to treat as absent (``bf16``): to see what a run does on a CPU without them,
and to test it."""
_INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_bf16",
    "amx_int8",
)


def cpu_flags() -> list[str]:
    """The SIMD flags that decide which kernels (and later, which int8 formats) are fast here."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [f for f in _INTERESTING_FLAGS if f in present]
    return []


def _disabled_features() -> set[str]:
    import os

    return {f.strip().lower() for f in os.environ.get(DISABLE_FEATURES_ENV, "").split(",") if f.strip()}


def bf16_support() -> tuple[bool, str]:
    """Whether bf16 execution is native here, and why (recorded when bf16 candidates are skipped).

    bf16 pays only with AMX (``amx_bf16``) or AVX512-BF16 (``avx512_bf16``); elsewhere OpenVINO and
    inductor emulate it in float32 and it is slower and less exact than float32.
    """
    if "bf16" in _disabled_features():
        return False, f"bf16 turned off by {DISABLE_FEATURES_ENV}"
    flags = set(cpu_flags())
    native = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    if not native:
        return False, "this CPU has neither AMX-BF16 nor AVX512-BF16, so bf16 would be emulated (slower)"
    return True, f"native bf16 ({', '.join(native)})"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def collect_environment(threads: int) -> dict[str, Any]:
    import os

    return {
        "exporter": __version__,
        "python": platform.python_version(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_flags": cpu_flags(),
        "bf16": bf16_support()[1],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
    }

"""What a run happened on: versions, CPU and threads, so every number in a report can be traced."""

from __future__ import annotations

import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from exporter._version import __version__

__all__ = ["collect_environment", "cpu_flags"]

_PACKAGES = ("torch", "onnx", "onnxruntime", "onnxscript", "onnxsim", "numpy")
_INTERESTING_FLAGS = (
    "avx2",
    "fma",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
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
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
    }

"""What ``exporter verify`` asks for and answers with: the request, one check, the result and its exit
code. Apart from ``gate.py`` so the checks' records read without the machinery that runs them."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from exporter.benchmark.latency import TimingConfig
from exporter.errors import ExitCode, UsageError
from exporter.hf.generation_check import GenerationResult
from exporter.verify.parity import ParityResult

__all__ = ["Check", "LatencyBudget", "VerifyRequest", "VerifyResult", "describe_exit", "parse_percent"]


@dataclass(frozen=True)
class LatencyBudget:
    """``max_regression`` 0.10 allows a p50 10 % slower than the baseline; negative demands a speedup."""

    baseline_report: Path
    max_regression: float


@dataclass(frozen=True)
class VerifyRequest:
    folder: Path
    checkpoint: Path | None = None
    model_ref: str | None = None
    trust_checkpoint: bool = False
    latency: LatencyBudget | None = None
    threads: int = field(default_factory=lambda: len(os.sched_getaffinity(0)) or 1)
    timing: TimingConfig = field(default_factory=TimingConfig)
    require_real_data: bool = False
    """A lossy model whose budget was judged on synthetic inputs only fails the gate with exit 2."""
    state_dict_key: str | None = None
    """``--state-dict-key`` for ``checkpoint`` [default: the entry the export read, from the manifest]."""


@dataclass
class Check:
    """One gate check: ``kind`` is integrity, parity, generation, int8, evidence or latency."""

    name: str
    kind: str
    passed: bool
    detail: str
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class VerifyResult:
    folder: Path
    name: str
    checks: list[Check]
    parity: list[ParityResult] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    generation: list[GenerationResult] = field(default_factory=list)
    """A decoder's greedy generations replayed through each artifact (``gate/generation.py``)."""
    reference: str = "the golden outputs saved at export"
    """What the parity checks compared the artifacts' outputs with: the golden files or PyTorch now."""

    @property
    def exit_code(self) -> ExitCode:
        """1 when an artifact is wrong (hash, parity, int8 budget); else 2 when a lossy model lacks the
        real-data proof ``--require-real-data`` asks for; else 4 when only latency missed."""
        if any(not c.passed and c.kind not in ("latency", "evidence") for c in self.checks):
            return ExitCode.VERIFICATION_FAILED
        if any(not c.passed and c.kind == "evidence" for c in self.checks):
            return ExitCode.BAD_INPUT
        if any(not c.passed for c in self.checks):
            return ExitCode.LATENCY_REGRESSED
        return ExitCode.OK

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "name": self.name,
            "exit_code": int(self.exit_code),
            "passed": self.exit_code is ExitCode.OK,
            "checks": [c.to_json() for c in self.checks],
            "reference": self.reference,
            "parity": [p.to_json() for p in self.parity],
            "latency": self.latency,
            "generation": [g.to_json() for g in self.generation],
        }


def parse_percent(text: str) -> float:
    """``10%``, ``10`` or ``0.1%`` -> a fraction (0.10); negative values demand a speedup.

    Raises:
        UsageError: not a number.
    """
    stripped = text.strip().removesuffix("%")
    try:
        return float(stripped) / 100.0
    except ValueError:
        raise UsageError(f"--max-latency-regression '{text}' is not a percentage like 10%") from None


def describe_exit(result: VerifyResult) -> str:
    failed = [c for c in result.checks if not c.passed]
    against = f"; parity against {result.reference}" if result.parity else ""
    if not failed:
        return f"{len(result.checks)} checks passed{against}"
    details = "; ".join(c.detail for c in failed[:3])
    return f"{len(failed)} of {len(result.checks)} checks failed: {details}{against}"

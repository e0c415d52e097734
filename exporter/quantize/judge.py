"""Judging a lossy model: parity against eager float on held-out samples, and the right output shapes at
every golden shape case. Builders, repairs and the registry all judge the same way, so it is written once."""

from __future__ import annotations

from pathlib import Path

from exporter.errors import first_line
from exporter.quantize.budget import compare_int8
from exporter.quantize.types import Candidate, QuantizeContext
from exporter.runners import OnnxRuntimeRunner, OpenVinoRunner, Runner

__all__ = ["describe_error", "judge", "open_candidate", "open_model"]


def open_model(path: Path, runtime: str, threads: int, config: dict[str, str], name: str) -> Runner:
    """A lossy or float model in the runtime that ships it (OpenVINO with its recorded plugin config)."""
    if runtime == "openvino":
        return OpenVinoRunner(path, {**config, "INFERENCE_NUM_THREADS": str(threads)}, name=name)
    return OnnxRuntimeRunner(path, threads, name=name)


def open_candidate(candidate: Candidate, threads: int, name: str | None = None) -> Runner:
    assert candidate.path is not None
    return open_model(candidate.path, candidate.runtime, threads, candidate.config, name or candidate.name)


def judge(candidate: Candidate, context: QuantizeContext) -> None:
    """Fill ``candidate.outputs`` and ``candidate.shape_errors`` from the model at ``candidate.path``."""
    assert candidate.path is not None
    with open_candidate(candidate, context.threads) as runner:
        outputs = [runner.run(sample) for sample in context.evaluation.samples]
        names = context.golden[0].output_names
        candidate.outputs = [
            compare_int8(
                name, [o[i] for o in outputs], [r[i] for r in context.reference], context.options.budget
            )
            for i, name in enumerate(names)
        ]
        candidate.shape_errors = []
        for case in context.golden:
            try:
                produced = runner.run(case.inputs)
            except Exception as error:
                candidate.shape_errors.append(f"{case.case.name}: {first_line(error)}")
                continue
            wrong = [
                f"{name} {list(a.shape)} != {list(b.shape)}"
                for name, a, b in zip(names, produced, case.outputs, strict=False)
                if a.shape != b.shape
            ]
            if wrong:
                candidate.shape_errors.append(f"{case.case.name}: {', '.join(wrong)}")


def describe_error(error: float) -> str:
    return f"(min cosine {1.0 - error:.4f})"

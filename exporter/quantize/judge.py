"""Judging a lossy model: parity against eager float on held-out samples, the right output shapes at every
golden shape case, and for a decoder greedy generation against the float model's (``decoder.py``).
Builders, repairs and the registry all judge the same way, so it is written once."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from exporter.backends.registry import BackendSpec, OpenContext
from exporter.errors import first_line
from exporter.quantize.budget import compare_int8
from exporter.quantize.decoder import judge_generation
from exporter.quantize.shipping import float_backend
from exporter.quantize.types import Candidate, QuantizeContext
from exporter.runners.base import Runner

__all__ = ["describe_error", "judge", "open_candidate", "open_model"]


def open_model(path: Path, runtime: str, threads: int, config: dict[str, str], name: str) -> Runner:
    """The float model a candidate must beat, opened by ``runtime``'s float backend as it ships (OpenVINO
    with the float32 hint unless ``config`` says otherwise)."""
    return _open(float_backend(runtime), path, runtime, OpenSettings(threads, config, name))


def open_candidate(candidate: Candidate, threads: int, name: str | None = None) -> Runner:
    """A lossy model opened by the backend it ships in, with its recorded runtime settings."""
    assert candidate.path is not None
    spec = candidate.backend
    settings = OpenSettings(threads, candidate.config, name or candidate.name)
    return _open(spec, candidate.path, candidate.runtime, settings)


class OpenSettings(NamedTuple):
    threads: int
    config: dict[str, str]
    name: str
    """The runner's name in timings and errors (``lossy dynamic-ort``)."""


def _open(spec: BackendSpec | None, path: Path, runtime: str, settings: OpenSettings) -> Runner:
    if spec is None or spec.open is None:
        raise ValueError(f"{settings.name}: no registered backend opens a {runtime} model")
    # ONNX Runtime and OpenVINO read input names from the file: no input spec is needed to open one.
    context = OpenContext(None, settings.threads, config=settings.config or None)
    runner = spec.open(path, context)
    runner.name = settings.name
    return runner


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
        if context.decoder is not None:
            candidate.decoder = True
            candidate.generation = judge_generation(runner, context.decoder, context.options.min_cosine)


def describe_error(error: float) -> str:
    return f"(min cosine {1.0 - error:.4f})"

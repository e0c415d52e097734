"""``exporter verify`` on a decoder: each shipped ONNX Runtime and OpenVINO artifact generates greedy tokens
from the golden prompts of ``golden/generation.json`` through its own cache, and must reproduce the tokens
transformers generated at export, exactly (``hf.generation_check``). A model whose weights changed fails
here even when its hash was re-recorded. A lossy (int8/int4) model of a decoder is judged as at export: the
mean share of tokens matching before the first divergence must reach the floor its manifest entry records
(the export judged it against the float ONNX model's tokens, which the float check proves are transformers').
numpy only: no torch, no transformers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from exporter.backends.onnxruntime import INT8
from exporter.backends.registry import backend
from exporter.documents.manifest import Manifest
from exporter.errors import UsageError, first_line
from exporter.gate.checks import Check
from exporter.gate.files import ArtifactRef, artifacts_of, folder_file, lossy_entries, open_artifact
from exporter.hf.decoding import DecoderLayout
from exporter.hf.facts import GenerationCase
from exporter.hf.generation_check import (
    GENERATING_RUNTIMES,
    GenerationResult,
    case_from_json,
    check_generation,
)
from exporter.specs.inputs import InputSpec

__all__ = ["check_generation_replay", "generation_files", "replayed_lossy"]


@dataclass(frozen=True)
class _Generating:
    """An artifact to generate through, and its floor (None: every token must match, a float artifact)."""

    artifact: ArtifactRef
    floor: float | None


def generation_files(manifest: Manifest) -> list[str]:
    """The generation file the manifest names (confined to the folder like every other path)."""
    return [manifest.generation.file] if manifest.generation is not None else []


def replayed_lossy(manifest: Manifest) -> set[str]:
    """The lossy files judged by generation (their entries record a token floor): the int8-eval budget,
    which never gated them, is not re-checked for them."""
    return {e.file for e in lossy_entries(manifest) if e.token_match_floor is not None}


def check_generation_replay(
    folder: Path, manifest: Manifest, spec: InputSpec, threads: int, skip: set[str]
) -> tuple[list[Check], list[GenerationResult]]:
    """One ``generation <backend>`` check per generating artifact, float or lossy (``skip``: files
    already missing)."""
    if manifest.generation is None:
        return [
            Check(
                f"generation {e.backend or INT8.name}",
                "generation",
                False,
                f"{e.file} records a token floor but the manifest names no generation file to replay",
            )
            for e in lossy_entries(manifest)
            if e.token_match_floor is not None
        ], []
    try:
        layout, cases = _read(folder, manifest)
    except UsageError:
        raise
    except Exception as error:
        detail = f"{manifest.generation.file} cannot be replayed: {first_line(error)}"
        return [Check("generation", "generation", False, detail)], []
    checks, results = [], []
    for item in _generating(manifest):
        entry = item.artifact
        if entry.file in skip:
            continue
        name, started = f"generation {entry.backend}", time.perf_counter()
        try:
            runner = open_artifact(folder, entry, spec, threads)
        except Exception as error:
            checks.append(
                Check(name, "generation", False, f"{entry.file} cannot be loaded: {first_line(error)}")
            )
            continue
        with runner:
            result = check_generation(runner, layout, cases, artifact=entry.file, floor=item.floor)
        results.append(result)
        checks.append(
            Check(name, "generation", result.passed, result.describe(), time.perf_counter() - started)
        )
    return checks, results


def _generating(manifest: Manifest) -> list[_Generating]:
    """The float artifacts of a generating runtime, then the lossy models recorded with a token floor."""
    items = []
    for entry in artifacts_of(manifest):
        try:
            runtime = backend(entry.backend).runtime
        except UsageError:
            continue  # the parity check reports the unknown backend
        if runtime in GENERATING_RUNTIMES:
            items.append(_Generating(entry, None))
    for lossy in lossy_entries(manifest):
        if lossy.token_match_floor is not None:
            ref = ArtifactRef(lossy.backend or INT8.name, lossy.file, None, lossy.config)
            items.append(_Generating(ref, float(lossy.token_match_floor)))
    return items


def _read(folder: Path, manifest: Manifest) -> tuple[DecoderLayout, list[GenerationCase]]:
    """The decoder's layout from the manifest and the golden prompts with their reference tokens.

    Raises:
        ValueError: no decoder layout, or a generation file that is not what the export wrote.
    """
    assert manifest.generation is not None
    if manifest.hf is None or manifest.hf.decoder is None:
        raise ValueError("the manifest names a generation file but no decoder layout (hf.decoder)")
    layout = DecoderLayout.from_json(manifest.hf.decoder)
    data = json.loads(folder_file(folder, manifest.generation.file).read_text())
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list) or not data["cases"]:
        raise ValueError("it holds no 'cases' list")
    return layout, [case_from_json(case) for case in data["cases"]]

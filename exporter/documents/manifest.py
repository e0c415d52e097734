"""manifest.json as a typed, versioned model: the one module that writes and reads it.

The manifest is the contract a CI job (``exporter verify``) and a serving system rely on, so it is a
pydantic model that refuses unknown keys and wrong types, and its JSON Schema is published as
``docs/manifest.schema.json`` (``python -m exporter.documents.manifest --schema``) for tools without exporter.
Fields with a default are absent from manifests written by earlier exporters of the same schema version.
The entries the code uses as they are (the tolerance, the int8 parity budget) are the code's own types,
pydantic dataclasses (``documents.fields``), so each is defined once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, StringConstraints, Tag

from exporter.benchmark.decoder import DecoderLatency
from exporter.documents.fields import DimSize, Number, Typed
from exporter.documents.files import MANIFEST_SCHEMA_VERSION, read_document
from exporter.documents.typed_errors import read_typed
from exporter.loading.safe_paths import SAFE_NAME_PATTERN
from exporter.quantize.budget import ParityBudget
from exporter.verify.comparison import Tolerance

__all__ = [
    "MANIFEST_SCHEMA_VERSION",
    "ArtifactEntry",
    "BenchmarkEntry",
    "CallEntry",
    "DecoderLatency",
    "DynamicDimEntry",
    "FileEntry",
    "GenerationEntry",
    "GenerationResultEntry",
    "GoldenCaseEntry",
    "GoldenEntry",
    "GoldenSamplesEntry",
    "HfEntry",
    "InputSpecEntry",
    "Int8Entry",
    "MachineEntry",
    "Manifest",
    "NonfiniteEntry",
    "OnnxEntry",
    "ParityBudget",
    "SourceEntry",
    "TensorEntry",
    "Tolerance",
    "ToolEntry",
    "Typed",
    "read_manifest",
    "read_typed",
    "schema_text",
    "write_manifest",
]


class ToolEntry(Typed):
    name: str
    version: str


class MachineEntry(Typed):
    platform: str
    cpu: str
    cpu_flags: list[str]
    logical_cpus: int | None


class SourceEntry(Typed):
    """The checkpoint the artifacts came from, and how to rebuild the model (``verify --checkpoint``)."""

    checkpoint: str
    format: str
    sha256: str
    bytes: int
    model: str | None
    model_kwargs: dict[str, Any]
    state_dict_key: str | None = Field(default=None, exclude_if=lambda value: value is None)  # entry read


class OnnxEntry(Typed):
    file: str
    candidate: str
    opset: int
    exporter: str
    input_names: list[str]
    output_names: list[str]


class CallEntry(Typed):
    """How the artifact takes its inputs: by position, or by these keyword names."""

    positional: list[str]
    keyword: list[str]


class ArtifactEntry(Typed):
    backend: str
    file: str
    candidate: str
    verified: bool
    loader: str | None
    call: CallEntry | None = Field(default=None, exclude_if=lambda value: value is None)
    config: dict[str, str] | None = Field(default=None, exclude_if=lambda value: value is None)
    """Runtime settings the artifact was verified with (OpenVINO's CPU plugin config); open it with them."""


class TensorEntry(Typed):
    name: str
    dtype: str
    shape: list[DimSize]
    example_shape: list[int]
    range: list[Number] | None
    spec: str


class DynamicDimEntry(Typed):
    min: int
    max: int | None
    example: int
    multiple_of: int = Field(default=1, ge=1, exclude_if=lambda value: value == 1)  # sizes: its multiples


class InputSpecEntry(Typed):
    inputs: list[TensorEntry]
    dynamic_dims: dict[str, DynamicDimEntry]
    derived_dims: dict[str, list[str]] = Field(default_factory=dict, exclude_if=lambda value: not value)
    """Derived dims (``total=past+seq``): each label and the labels whose sizes it sums."""


class BenchmarkEntry(Typed):
    batch_dim: str
    batch_sizes: list[int]


class Int8Entry(Typed):
    """The shipped int8 model; only ``file`` and ``budget`` are needed to re-check it."""

    file: str
    budget: ParityBudget
    candidate: str | None = None
    engine: str | None = None
    settings: dict[str, Any] | None = None
    float_layers: list[str] | None = None
    formats: dict[str, Any] | None = None
    calibration: str | None = None
    judged_on: Literal["real", "synthetic"] | None = Field(
        default=None, exclude_if=lambda value: value is None
    )
    """``synthetic``: judged on inputs drawn from the spec only, which ``exporter verify`` reports."""
    backend: str | None = Field(default=None, exclude_if=lambda value: value is None)
    """The backend that opens it; None: ``onnxruntime-int8`` (``model.int8.onnx``)."""
    config: dict[str, str] | None = Field(default=None, exclude_if=lambda value: value is None)
    token_match_floor: Number | None = Field(default=None, exclude_if=lambda value: value is None)
    """A decoder's lossy model, judged by its greedy tokens: the floor their mean share matching before the
    first divergence had to reach. ``exporter verify`` replays the generation against it rather than the
    budget on the ``int8-eval`` samples (random past tensors no real cache holds). None: not a decoder."""
    bits: int | None = Field(default=None, exclude_if=lambda value: value is None)
    """Bits per weight (4 or 8) when known."""
    block_size: int | None = Field(default=None, exclude_if=lambda value: value is None)
    """Weights per scale of a block-wise (int4, MatMulNBits) model."""


class GoldenCaseEntry(Typed):
    """One verification shape case: seeded inputs and the PyTorch reference's outputs."""

    case: str
    sizes: dict[str, int]
    seed: int
    inputs: str
    outputs: str
    output_names: list[str]


class GoldenSamplesEntry(Typed):
    """Held-out int8 evaluation inputs (``<input>.<index>`` arrays), kept for the int8 re-check."""

    case: str
    samples: int
    inputs: str
    source: str


def _golden_kind(value: Any) -> str:
    """A case has reference outputs; kept int8 samples do not."""
    if isinstance(value, dict):
        return "golden-case" if "outputs" in value else "kept-samples"
    return "golden-case" if isinstance(value, GoldenCaseEntry) else "kept-samples"


GoldenEntry = Annotated[
    Annotated[GoldenCaseEntry, Tag("golden-case")] | Annotated[GoldenSamplesEntry, Tag("kept-samples")],
    Discriminator(_golden_kind),
]


class NonfiniteEntry(Typed):
    """NaN/Inf counts of one reference output on one golden case."""

    case: str
    output: str
    nan: int
    inf: int
    posinf: int | None = None
    neginf: int | None = None
    elements: int


class HfEntry(Typed):
    """The Hugging Face folder the artifacts came from (``HfFacts.to_json``): task, model type, the decoder's
    cache layout (``DecoderLayout.to_json``; None for an encoder), the tokenizer files shipped beside."""

    task: str
    model_type: str
    architectures: list[str]
    decoder: dict[str, Any] | None
    tokenizer: list[str]
    max_new_tokens: int


class GenerationResultEntry(Typed):
    """One artifact's greedy generation against the reference, as verified at export."""

    artifact: str
    reference: str
    passed: bool
    identical_prompts: int
    prompts_total: int
    match_share: Number
    floor: Number | None = None
    first_failure: str | None = None


class GenerationEntry(Typed):
    """A decoder's generation check: the golden prompts and reference tokens (``file``), replayed by
    ``exporter verify``, and each artifact's result at export."""

    file: str
    max_new_tokens: int
    prompts: int
    results: list[GenerationResultEntry]


class FileEntry(Typed):
    sha256: str
    bytes: int | None = None


class Manifest(Typed):
    """What an artifacts folder holds, how it was made, and what ``exporter verify`` re-checks."""

    schema_version: Literal[1]
    name: Annotated[str, StringConstraints(pattern=SAFE_NAME_PATTERN)]
    """Names the served model, the bundle and log lines: one safe path component, no newline."""
    created_utc: str
    tool: ToolEntry
    versions: dict[str, str | None]
    machine: MachineEntry
    threads: int
    source: SourceEntry
    onnx: OnnxEntry | None
    artifacts: list[ArtifactEntry] | None = None
    output_names: list[str] | None = None
    input_spec: InputSpecEntry
    tolerance: Tolerance
    benchmark: BenchmarkEntry | None = None
    int8: Int8Entry | None = None
    lossy: list[Int8Entry] | None = Field(default=None, exclude_if=lambda value: value is None)
    """Lossy artifacts of other runtimes (OpenVINO: NNCF int8, or bf16 execution), under the same budget."""
    seed: int
    golden: list[GoldenEntry]
    reference_nonfinite: list[NonfiniteEntry] | None = None
    files: dict[str, FileEntry]
    hf: HfEntry | None = Field(default=None, exclude_if=lambda value: value is None)
    """Set when the checkpoint was a Hugging Face folder."""
    generation: GenerationEntry | None = Field(default=None, exclude_if=lambda value: value is None)
    decoder_latency: list[DecoderLatency] | None = Field(default=None, exclude_if=lambda value: value is None)
    """A decoder's time to first token and per-token decode time, per artifact and eager."""


def write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n")


def read_manifest(folder: Path) -> Manifest:
    """``folder/manifest.json``, every field present and of its type.

    Checked up front so a damaged or foreign manifest is one line of bad input (exit 2), not a
    ``KeyError`` halfway through the checks.

    Raises:
        UsageError: not a folder, no manifest.json, not JSON, another schema version, or a field missing,
            unknown or of the wrong type (the message names the first one by its path).
    """
    document = read_document(folder, "manifest.json", MANIFEST_SCHEMA_VERSION, use="verify")
    return read_typed(Manifest, document, f"manifest.json of '{folder}'", "manifest")


def schema_text() -> str:
    """The JSON Schema of manifest.json, as committed in ``docs/manifest.schema.json``."""
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **Manifest.model_json_schema(),
    }
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--schema"]:
        sys.exit("usage: python -m exporter.documents.manifest --schema > docs/manifest.schema.json")
    sys.stdout.write(schema_text())

"""``model_repository/`` of a bundle: the served model in Triton Inference Server's layout.

A ``config.pbtxt`` and ``1/<Triton's file name>`` (the platform is the backend's ``triton_platform``, dims
from the manifest checked against the graph, ``max_batch_size`` and ``dynamic_batching`` when there is a
batch dim, one CPU instance), for tritonserver or KServe's Triton runtime unchanged; or the reason there is
none. Which backends have a Triton platform is the registry's to say; how to read a model's tensors and
what Triton calls the file are Triton's, per platform, here (``onnxruntime_onnx``: ``model.onnx``).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from exporter.backends.registry import BackendSpec, backend, backends
from exporter.documents.manifest import Manifest
from exporter.serving.artifact import ServedArtifact, golden_cases, shipped_artifacts
from exporter.serving.decoder import decoder_files
from exporter.serving.protocol import DATATYPE_OF, ModelSignature, signature_of

__all__ = [
    "SERVER_BATCH_ROWS",
    "TRITON_MAX_BATCH",
    "TRITON_QUEUE_DELAY_US",
    "TritonRepository",
    "triton_config",
    "triton_model_name",
    "triton_repository",
]

TRITON_MAX_BATCH = 1024
"""Triton's ``max_batch_size`` never exceeds this, whatever the batch dim's declared maximum."""
SERVER_BATCH_ROWS = 64
"""How many rows the server batches along a batch dim without a declared maximum (``ServeOptions``)."""
TRITON_QUEUE_DELAY_US = 0
"""How long Triton's dynamic batcher waits to fill a batch: 0, greedy, as the server's default
``--max-batch-delay-ms`` and Triton's own default (the model runs as soon as it is free, on what is
queued)."""

_DATA_TYPE = {name: f"TYPE_{datatype}" for name, datatype in DATATYPE_OF.items()}
"""numpy dtype name -> Triton's ``data_type`` enum name."""


@dataclass(frozen=True)
class TritonRepository:
    """``model_repository/<model>/``: a config.pbtxt and ``1/<model_file>``, or why there is none."""

    model: str | None
    source: str | None
    batching: bool
    skipped: str | None = None
    platform: str | None = None
    model_file: str | None = None
    """The served file's name in ``1/`` (Triton's default for the platform)."""
    companions: tuple[str, ...] = ()
    """What ``1/`` holds beside it: an ONNX model's external data (``model.onnx.data``)."""
    tokenizer: tuple[str, ...] = ()
    """A decoder's tokenizer files, in ``1/tokenizer/`` beside the model (Triton's ONNX backend does not
    read them: a client or a Python-backend pre/post-processing model does)."""


def triton_model_name(name: str) -> str:
    """``name`` as a Triton model (and folder) name: letters, digits, ``_``, ``.`` and ``-`` only."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return cleaned if cleaned.strip(".") else "model"


def _describable(spec: BackendSpec) -> bool:
    return spec.servable and spec.triton_platform in _PLATFORMS


def _triton_source(manifest: Manifest, artifact: ServedArtifact) -> ServedArtifact | None:
    """The model Triton serves: the bundle's own when its backend has a Triton platform this module can
    describe, else the folder's first verified float one that has (in registration order)."""
    if _describable(backend(artifact.backend)):
        return artifact
    shipped = shipped_artifacts(manifest)
    return next(
        (
            shipped[spec.name]
            for spec in backends()
            if spec.name in shipped and spec.float_source is None and _describable(spec)
        ),
        None,
    )


def triton_repository(
    folder: Path, manifest: Manifest, artifact: ServedArtifact, repository: Path
) -> TritonRepository:
    """Write ``repository/<model>/config.pbtxt`` and the model in ``1/`` under Triton's name for it, with
    its companions beside it named after it (``model.onnx`` + ``model.onnx.data``).

    Returns why it was skipped instead when no shipped backend has a Triton platform, or the model's
    inputs, outputs or data types do not match the manifest's (Triton would refuse the config).
    """
    source = _triton_source(manifest, artifact)
    if source is None:
        return TritonRepository(None, None, False, "the folder ships no verified ONNX model")
    platform = backend(source.backend).triton_platform
    assert platform is not None
    model_file = _PLATFORMS[platform].file
    model = triton_model_name(manifest.name)
    try:
        text, batching = triton_config(
            folder / source.file, signature_of(folder, manifest), manifest, model, platform
        )
    except ValueError as error:
        return TritonRepository(None, source.file, False, str(error), platform)
    version = repository / model / "1"
    version.mkdir(parents=True)
    (repository / model / "config.pbtxt").write_text(text)
    for name in source.files:
        shutil.copyfile(folder / name, version / Path(name).name, follow_symlinks=False)
    _PLATFORMS[platform].rename(version / Path(source.file).name, version / model_file)
    companions = tuple(sorted(path.name for path in version.iterdir() if path.name != model_file))
    tokenizer = []
    for name in decoder_files(manifest):
        if name.startswith("tokenizer/"):
            (version / "tokenizer").mkdir(exist_ok=True)
            shutil.copyfile(folder / name, version / name, follow_symlinks=False)
            tokenizer.append(name)
    return TritonRepository(
        model,
        source.file,
        batching,
        platform=platform,
        model_file=model_file,
        companions=companions,
        tokenizer=tuple(tokenizer),
    )


def triton_config(
    path: Path, signature: ModelSignature, manifest: Manifest, model: str, platform: str
) -> tuple[str, bool]:
    """config.pbtxt of the model at ``path`` for Triton's ``platform``, and whether it batches.

    Names come from the model's graph (Triton matches them exactly); data types and dims from the manifest and
    the golden outputs, which say which dims are dynamic. The batch dim is folded into ``max_batch_size``
    only when it leads every input and output and the graph leaves it dynamic.

    Raises:
        ValueError: the graph's tensors do not match the manifest's, or the platform is not one this
            module can describe.
    """
    if platform not in _PLATFORMS:
        raise ValueError(f"exporter cannot describe a model for Triton's {platform} platform")
    graph_inputs, graph_outputs = _PLATFORMS[platform].tensors(path)
    declared = {rule.name: (rule.dtype, rule.dims) for rule in signature.inputs}
    declared_outputs = {info.name: (info.dtype, info.shape) for info in signature.outputs}
    inputs = [_tensor(t, declared, "input") for t in graph_inputs]
    outputs = [_tensor(t, declared_outputs, "output") for t in graph_outputs]
    limit = _max_batch(manifest, signature.batch_dim) if signature.batch_dim is not None else 0
    batching = limit > 1 and all(
        graph_dims and graph_dims[0] is None for (_, _, graph_dims) in (*graph_inputs, *graph_outputs)
    )
    lines = [
        f"name: {_quoted(model)}",
        f"platform: {_quoted(platform)}",
        f"max_batch_size: {limit if batching else 0}",
    ]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        blocks = [
            _tensor_block(name, data_type, dims[1:] if batching else dims)
            for name, data_type, dims in tensors
        ]
        lines += [f"{kind} [", ",\n".join(blocks), "]"]
    if batching:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {TRITON_QUEUE_DELAY_US}", "}"]
    lines += ["instance_group [", "  {", "    count: 1", "    kind: KIND_CPU", "  }", "]"]
    return "\n".join(lines) + "\n", batching


_GraphTensor = tuple[str, str, tuple[int | None, ...]]
"""An ONNX graph input or output: name, numpy dtype name, dims (None where the graph leaves it open)."""


def _onnx_tensors(path: Path) -> tuple[list[_GraphTensor], list[_GraphTensor]]:
    import onnx
    from onnx.helper import tensor_dtype_to_np_dtype

    from exporter.documents.external_data import graph_without_weights

    graph = onnx.ModelProto.FromString(graph_without_weights(path)).graph  # never a model's weights
    initializers = {initializer.name for initializer in graph.initializer}

    def described(value: Any) -> _GraphTensor:
        tensor_type = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
        return value.name, np.dtype(tensor_dtype_to_np_dtype(tensor_type.elem_type)).name, dims

    inputs = [described(value) for value in graph.input if value.name not in initializers]
    return inputs, [described(value) for value in graph.output]


def _rename_onnx(source: Path, target: Path) -> None:
    """Rename an ONNX model to Triton's name; its external data follows it (``model.int8.onnx.data`` ->
    ``model.onnx.data``, and the model's references with it), so ``1/`` holds what Triton's docs show."""
    if source == target:
        return
    from exporter.convert.onnx_files import move_onnx_model

    move_onnx_model(source, target)


class _Platform(NamedTuple):
    file: str
    """Triton's default model file name for the platform."""
    tensors: Callable[[Path], tuple[list[_GraphTensor], list[_GraphTensor]]]
    rename: Callable[[Path, Path], None]
    """Rename the copied model file to ``file``, with whatever names it holds of its companions."""


_PLATFORMS = {"onnxruntime_onnx": _Platform("model.onnx", _onnx_tensors, _rename_onnx)}
"""The Triton platforms whose models this module can read and describe."""


def _tensor(
    graph: _GraphTensor, declared: Mapping[str, tuple[np.dtype, tuple[int | str, ...]]], kind: str
) -> tuple[str, str, list[int]]:
    """name, Triton data type and dims (-1 where dynamic) of one graph tensor, checked against the manifest.

    A size the graph fixes wins over a dynamic one the manifest declares: Triton refuses a config whose
    dim is looser than the model's.
    """
    name, graph_dtype, graph_dims = graph
    if name not in declared:
        raise ValueError(f"the ONNX model's {kind} '{name}' is not in the manifest")
    dtype, dims = declared[name]
    if dtype.name != graph_dtype:
        raise ValueError(f"the ONNX model's {kind} '{name}' is {graph_dtype}, the manifest says {dtype.name}")
    if dtype.name not in _DATA_TYPE:
        raise ValueError(f"{kind} '{name}' is {dtype.name}, which Triton has no data type for")
    if len(dims) != len(graph_dims):
        raise ValueError(
            f"the ONNX model's {kind} '{name}' has rank {len(graph_dims)}, the manifest says {len(dims)}"
        )
    merged = [
        graph_size if graph_size is not None else (-1 if isinstance(size, str) else size)
        for size, graph_size in zip(dims, graph_dims, strict=True)
    ]
    return name, _DATA_TYPE[dtype.name], merged


def _max_batch(manifest: Manifest, batch: str) -> int:
    """The batch dim's declared maximum; with none declared, the server's own batch limit (64 rows) or the
    largest batch the folder was checked at, if larger. 0 (no batching) when batches below 2 are refused, or
    only multiples of some N are legal (Triton's batcher would form other sizes)."""
    declared = manifest.input_spec.dynamic_dims.get(batch)
    if declared is not None and (declared.min > 1 or declared.multiple_of > 1):
        return 0
    if declared is not None and declared.max is not None:
        return min(declared.max, TRITON_MAX_BATCH)
    checked = [case.sizes[batch] for case in golden_cases(manifest) if batch in case.sizes]
    checked += manifest.benchmark.batch_sizes if manifest.benchmark else []
    return min(max([SERVER_BATCH_ROWS, *checked]), TRITON_MAX_BATCH)


def _tensor_block(name: str, data_type: str, dims: list[int]) -> str:
    shown = ", ".join(map(str, dims))
    lines = ["  {", f"    name: {_quoted(name)}", f"    data_type: {data_type}"]
    if dims:
        lines.append(f"    dims: [ {shown} ]")
    else:
        lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
    return "\n".join([*lines, "  }"])


def _quoted(text: str) -> str:
    """A protobuf text-format string literal (JSON's escapes are a subset of it for these names)."""
    return json.dumps(text, ensure_ascii=False)

"""The settings a Hugging Face folder implies, merged under the user's: its task, its input spec, its output
names and, for a decoder, the ONNX exporter that can express its cache.

Called by ``exporter.options.build_export_options`` when the checkpoint is a folder and no ``--model`` or
recipe inputs are given; ``--input`` still overrides an input by name, and ``--output-names`` the names.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from exporter.hf.folder import read_folder
from exporter.hf.tasks import resolve_task
from exporter.specs.inputs import InputSpec

__all__ = ["DECODER_EXPORTER_NOTE", "describe_spec", "folder_settings"]

DECODER_EXPORTER_NOTE = (
    "decoders are exported with the TorchScript-based ONNX exporter: torch.export cannot state that the "
    "attention mask's length is past + seq (it guards the sum as a dim of its own)"
)


def folder_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], InputSpec]:
    """``settings`` with the folder's task (resolved), output names and ONNX exporter filled in where the
    user gave none, and the folder's input spec.

    Raises:
        LoadError: the folder is refused (``exporter.hf.folder.read_folder``) or its config unreadable.
        UsageError: ``--task`` is unknown, or the architectures name no task.
    """
    from exporter.hf.load import folder_spec_of

    merged = dict(settings)
    trust = bool(merged.get("trust_checkpoint"))
    folder = read_folder(Path(merged["checkpoint"]), trust)
    task = resolve_task(merged.get("task"), folder.architectures)
    shape = folder_spec_of(folder, task, trust)
    merged["task"] = task.name
    merged.setdefault("output_names", shape.output_names)
    if task.is_decoder and merged.get("onnx_exporter", "auto") == "auto":
        merged["onnx_exporter"] = "torchscript"
    return merged, shape.spec


def describe_spec(spec: InputSpec) -> str:
    """The spec in one line, a decoder's per-layer cache inputs folded into one entry."""
    past = [t for t in spec.tensors if t.name.startswith("past_key_values.")]
    shown = [str(t) for t in spec.tensors if t not in past]
    if past:
        layers = len(past) // 2
        dims = ",".join(str(d) for d in past[0].dims)
        shown.append(f"past_key_values.0..{layers - 1}.key/value:{past[0].dtype}:{dims}")
    return "; ".join(shown)

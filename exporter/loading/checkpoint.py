"""Loading stage: turn a checkpoint file into a callable ``nn.Module`` in eval mode, safely.

Never runs code from the file unless the user says the checkpoint is trusted: every ``torch.load`` is
``weights_only=True`` first, and before any reader touches an untrusted file ``loading.checkpoint_audit``
reads it as data and refuses what ``torch.export.load``/``torch.jit.load`` would unpickle or evaluate
(``use_pickle`` weights, pickles importing unlisted names, code strings, AOTInductor libraries). A
refused checkpoint gets one line naming the offending entry and the way out.
"""

from __future__ import annotations

import hashlib
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from exporter._quiet import quiet, quiet_logs
from exporter.documents.files import sha256_file
from exporter.errors import ExporterError, LoadError, first_line
from exporter.hf.facts import DEFAULT_NEW_TOKENS, HfFacts
from exporter.hf.folder import is_hf_folder
from exporter.loading.assign import build_on_meta, load_assigned, meta_tensors_left
from exporter.loading.checkpoint_audit import (
    UnsafeCheckpointError,
    audit_exported_program,
    audit_torch_save,
    audit_torchscript,
)
from exporter.loading.resolve import import_from_working_directory, resolve_callable
from exporter.loading.state_dict import find_state_dict, fit_owner_prefix, strip_wrapper_prefixes

__all__ = ["CheckpointFormat", "LoadRequest", "LoadedModel", "load_model", "sha256_file"]


class CheckpointFormat(StrEnum):
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "exported_program"
    STATE_DICT = "state_dict"
    SAFETENSORS = "safetensors"
    PICKLED_MODULE = "pickled_module"
    HF_FOLDER = "huggingface"


@dataclass(frozen=True)
class LoadRequest:
    """What to load: the checkpoint, and for weights-only files the factory that builds the architecture."""

    checkpoint: Path
    model_ref: str | None = None
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    trust_checkpoint: bool = False
    state_dict_key: str | None = None
    """``--state-dict-key``: the entry of a checkpoint dict holding the weights (``a.b`` nests); None tries
    the common keys (``exporter.loading.state_dict``)."""
    task: str | None = None
    """A Hugging Face folder's task (Optimum's spelling); None: from its ``architectures``."""
    new_tokens: int = DEFAULT_NEW_TOKENS
    """A decoder's reference generation length."""
    prompts_file: Path | None = None
    """A decoder's extra golden prompts, one a line (``--calibration FILE.txt``)."""


@dataclass
class LoadedModel:
    """A model ready to run, plus what the report needs to say about where it came from."""

    module: torch.nn.Module
    format: CheckpointFormat
    checkpoint: Path
    file_size: int
    sha256: str
    parameter_count: int
    exported_program: torch.export.ExportedProgram | None = None
    notes: list[str] = field(default_factory=list)
    state_dict_key: str | None = None
    """The checkpoint dict's entry the weights were read from; None when they were the whole file."""
    estimated_peak_bytes: int | None = None
    """The run's estimated peak memory (``stages/memory.py``), set by the load stage."""
    hf: HfFacts | None = None
    """A Hugging Face folder's task, decoder layout, tokenizer and reference generations."""
    tokenizer: Any | None = None
    """A Hugging Face folder's tokenizer (transformers), for golden inputs and calibration text."""

    def describe(self) -> str:
        """The load stage's one-line detail: format, where the weights were, parameter count."""
        entry = f" (the '{self.state_dict_key}' entry)" if self.state_dict_key else ""
        if self.hf is not None:
            entry = f" ({self.hf.task}, {'/'.join(self.hf.architectures) or self.hf.model_type})"
        return f"{self.format.value}{entry}, {self.parameter_count:,} parameters"

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint": str(self.checkpoint),
            "format": self.format.value,
            "state_dict_key": self.state_dict_key,
            "file_size": self.file_size,
            "sha256": self.sha256,
            "parameter_count": self.parameter_count,
            "model_class": type(self.module).__name__,
            "notes": self.notes,
            **({"hf": self.hf.to_json()} if self.hf is not None else {}),
        }


def load_model(request: LoadRequest) -> LoadedModel:
    """Load ``request.checkpoint`` whatever its format, put the model in eval mode and describe it.

    Raises:
        LoadError: the file is missing, truncated, of an unknown format, untrusted, or does not fit the
            architecture built by ``--model``.
    """
    path = request.checkpoint
    if not path.exists():
        raise LoadError(f"checkpoint '{path}' does not exist")
    if is_hf_folder(path):
        return _load_hf_folder(request)
    if not path.is_file():
        raise LoadError(f"checkpoint '{path}' is not a file")
    size = path.stat().st_size
    if size == 0:
        raise LoadError(f"checkpoint '{path}' is empty")
    notes: list[str] = []
    exported: torch.export.ExportedProgram | None = None
    key: str | None = None
    kind = _sniff(path)
    if not request.trust_checkpoint:
        _audit(path, kind)
    if kind is CheckpointFormat.EXPORTED_PROGRAM:
        exported = _guard(path, "a torch.export program", lambda: torch.export.load(path))
        module = exported.module()
    elif kind is CheckpointFormat.TORCHSCRIPT:
        module = _guard(path, "a TorchScript archive", lambda: torch.jit.load(str(path), map_location="cpu"))
    elif kind is CheckpointFormat.SAFETENSORS:
        from safetensors.torch import load_file

        weights = _guard(path, "a safetensors file", lambda: load_file(str(path), device="cpu"))
        module = _build_with_weights(request, weights, notes)
    else:
        payload = _torch_load(request)
        if isinstance(payload, torch.nn.Module):
            kind = CheckpointFormat.PICKLED_MODULE
            module = payload
            if request.model_ref:
                notes.append(f"--model {request.model_ref} ignored: the checkpoint holds a whole module")
        else:
            kind = CheckpointFormat.STATE_DICT
            weights, key = find_state_dict(path, payload, request.state_dict_key, notes)
            module = _build_with_weights(request, weights, notes)
    if request.state_dict_key is not None and kind is not CheckpointFormat.STATE_DICT:
        notes.append(f"--state-dict-key {request.state_dict_key} ignored: the checkpoint is a {kind.value}")
    if kind is not CheckpointFormat.EXPORTED_PROGRAM:
        module.eval()
    parameters = sum(p.numel() for p in module.parameters())
    return LoadedModel(module, kind, path, size, sha256_file(path), parameters, exported, notes, key)


def _load_hf_folder(request: LoadRequest) -> LoadedModel:
    """A Hugging Face folder: read as data (refusals first), loaded by transformers offline, wrapped so its
    inputs and outputs are named tensors (``exporter.hf``). Its hash covers config.json and the weights."""
    from exporter.hf.folder import read_folder
    from exporter.hf.load import load_folder
    from exporter.hf.options import DECODER_EXPORTER_NOTE
    from exporter.hf.tasks import resolve_task

    folder = read_folder(request.checkpoint, request.trust_checkpoint)
    task = resolve_task(request.task, folder.architectures)
    loaded = load_folder(folder, task, request.trust_checkpoint, request.new_tokens, request.prompts_file)
    files = [request.checkpoint / "config.json", *folder.weights]
    digest = hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
    parameters = sum(p.numel() for p in loaded.module.parameters())
    notes = [DECODER_EXPORTER_NOTE] if loaded.facts.is_decoder else []
    return LoadedModel(
        loaded.module,
        CheckpointFormat.HF_FOLDER,
        request.checkpoint,
        sum(f.stat().st_size for f in files),
        digest,
        parameters,
        notes=notes,
        hf=loaded.facts,
        tokenizer=loaded.tokenizer,
    )


def _sniff(path: Path) -> CheckpointFormat | None:
    if path.suffix == ".safetensors":
        return CheckpointFormat.SAFETENSORS
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return None
    if any(n.endswith(("/archive_format", "/models/model.json")) for n in names):
        return CheckpointFormat.EXPORTED_PROGRAM
    if any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names):
        return CheckpointFormat.TORCHSCRIPT
    return None


_AUDITS = {
    CheckpointFormat.EXPORTED_PROGRAM: (audit_exported_program, "a torch.export program"),
    CheckpointFormat.TORCHSCRIPT: (audit_torchscript, "a TorchScript archive"),
    None: (audit_torch_save, "a PyTorch checkpoint"),
}


def _audit(path: Path, kind: CheckpointFormat | None) -> None:
    """Refuse, before any reader runs, a file whose loading would execute something it carries.

    A ``torch.load`` file the audit cannot parse is left to ``torch.load(weights_only=True)``, which is
    safe and says what is wrong; an archive whose records cannot be read is refused, because torch's
    own zip reader might still read what this check could not.
    """
    if kind not in _AUDITS:
        return  # safetensors: a JSON header and raw bytes, nothing to execute
    audit, what = _AUDITS[kind]
    try:
        audit(path)
    except UnsafeCheckpointError as finding:
        raise LoadError(
            f"checkpoint '{path}' {finding.what}, and {finding.risk}; {finding.fix}, "
            "or pass --trust-checkpoint if you trust where this file came from"
        ) from None
    except Exception as error:
        if kind is None:
            return
        raise LoadError(
            f"cannot read checkpoint '{path}' as {what} (truncated or corrupt?): {_cause(error)}"
        ) from error


def _guard(path: Path, what: str, load: Any) -> Any:
    """Run a torch reader; its failure becomes one line (torch.export.load also logs a whole traceback
    as a warning before it raises, which ``quiet`` keeps off the terminal: ``--debug`` shows the cause)."""
    try:
        with quiet():
            return load()
    except Exception as error:
        raise LoadError(
            f"cannot read checkpoint '{path}' as {what} (truncated or corrupt?): {_cause(error)}"
        ) from error


def _mapped_load(path: Path, *, weights_only: bool) -> Any:
    """``torch.load`` with the file memory-mapped: tensors are views of its pages, not a copy in the heap
    (files in the legacy, pre-zip format cannot be mapped and are read whole)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only, mmap=True)
    except RuntimeError as error:
        if "mmap" not in str(error) and "zipfile" not in str(error):
            raise
    return torch.load(path, map_location="cpu", weights_only=weights_only)


def _torch_load(request: LoadRequest) -> Any:
    path = request.checkpoint
    try:
        return _mapped_load(path, weights_only=True)
    except pickle.UnpicklingError as error:
        if not _needs_unsafe_globals(str(error)):
            raise LoadError(
                f"cannot read checkpoint '{path}': not a PyTorch checkpoint, or truncated ({_cause(error)})"
            ) from error
        if not request.trust_checkpoint:
            raise LoadError(
                f"checkpoint '{path}' holds pickled Python objects (such as a whole nn.Module), and "
                "unpickling can run arbitrary code; save a state_dict and pass --model, or pass "
                "--trust-checkpoint if you trust where this file came from"
            ) from None
    except Exception as error:
        raise LoadError(
            f"cannot read checkpoint '{path}': not a PyTorch checkpoint, or truncated ({_cause(error)})"
        ) from error
    folder = import_from_working_directory()  # the pickle names its classes by module, as --model does
    try:
        return _mapped_load(path, weights_only=False)
    except Exception as error:
        raise LoadError(
            f"cannot unpickle trusted checkpoint '{path}': {_unpickling_fix(error, folder)}"
        ) from error


def _unpickling_fix(error: Exception, folder: str) -> str:
    """Why a trusted pickle's classes were not found, and how to make them importable, in one clause."""
    if isinstance(error, ModuleNotFoundError) and error.name:
        top = error.name.partition(".")[0]
        return (
            f"it pickles classes from module '{error.name}', which is not importable from the working "
            f"directory '{folder}'; run exporter from the folder holding {top}.py (or the {top} package), "
            "or add that folder to PYTHONPATH"
        )
    if isinstance(error, AttributeError) and "__main__" in str(error):
        return (
            f"{first_line(error)}: the class was defined in the script that saved the checkpoint; move it "
            "into a module, load and re-save the model from there, or save a state_dict and pass --model"
        )
    return f"{first_line(error)} (its classes must be importable from the working directory '{folder}')"


def _needs_unsafe_globals(message: str) -> bool:
    """A weights-only refusal because the pickle names Python classes, as opposed to a corrupt stream."""
    return "Weights only load failed" in message and ("GLOBAL" in message or "Unsupported global" in message)


def _build_with_weights(
    request: LoadRequest, weights: Mapping[str, torch.Tensor], notes: list[str]
) -> torch.nn.Module:
    if not request.model_ref:
        raise LoadError(
            f"checkpoint '{request.checkpoint}' holds only weights; pass --model package.module:factory "
            "(or path/to/file.py:factory) that builds the architecture"
        )
    with quiet_logs():
        factory = resolve_callable(request.model_ref)
    module = build_on_meta(factory, request.model_kwargs)
    if not isinstance(module, torch.nn.Module):
        module = _build(request, factory)
    own = module.state_dict()
    weights = fit_owner_prefix(strip_wrapper_prefixes(weights, notes), own, notes)
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [
        f"{k} {list(weights[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in weights and weights[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = [
            f"{len(items)} {what} ({', '.join(items[:3])}{', ...' if len(items) > 3 else ''})"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched))
            if items
        ]
        raise LoadError(
            f"weights in '{request.checkpoint}' do not fit --model {request.model_ref}: {'; '.join(parts)}; "
            "check the factory and --model-kwargs"
        )
    load_assigned(module, weights)
    if meta_tensors_left(module):  # buffers __init__ computes: the factory must run for real
        module = _build(request, factory)
        load_assigned(module, weights)
    return module


def _build(request: LoadRequest, factory: Any) -> torch.nn.Module:
    try:
        with quiet_logs():
            module = factory(**dict(request.model_kwargs))
    except ExporterError:
        raise
    except Exception as error:
        raise LoadError(
            f"--model {request.model_ref} raised {type(error).__name__}: {first_line(error)} "
            "(check --model-kwargs)"
        ) from error
    if not isinstance(module, torch.nn.Module):
        raise LoadError(f"--model {request.model_ref} returned {type(module).__name__}, not an nn.Module")
    return module


def _cause(error: BaseException) -> str:
    """The first sentence of a reader's error: torch's zip errors run on for several more."""
    line = first_line(error, 400)
    sentence = line.split(". ", 1)[0]
    return sentence if len(sentence) <= 160 else sentence[:157] + "..."

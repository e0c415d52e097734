"""Read a checkpoint as data and refuse anything in it that loading would execute, before torch loads it.

``torch.load(weights_only=True)`` is safe on its own, but the other readers are not. In torch 2.13
``torch.export.load`` unpickles ``use_pickle`` weights and constants (and custom/opaque object constants)
with ``weights_only=False``; retries nested ``torch.save`` blobs (sample inputs, legacy weights, the
pre-2.7 layout's ``serialized_*`` records) with ``weights_only=False`` when the safe read fails; hands
every ``expr_str`` to ``sympy.sympify``, which is ``eval``; loads AOTInductor shared libraries; and
resolves graph targets like ``torch.os.system`` that run with the program. ``ExportedProgram.module()``
then pastes ``guards_code`` into Python source and ``exec``s it. These audits open the zip with
:mod:`zipfile`, walk pickles with :func:`pickletools.genops` (which decodes opcodes without running any)
and parse JSON: nothing in the file is imported, called or evaluated.

Pickles are checked by :mod:`exporter.loading.pickle_audit` (which names may be imported) and the strings a
program evaluates by :mod:`exporter.loading.program_checks`; this module finds them in the archives.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Any

from exporter.loading.pickle_audit import (
    RISK_PICKLE,
    UnsafeCheckpointError,
    scan_pickle,
    torchscript_allows,
    weights_only_allows,
)
from exporter.loading.program_checks import is_operator_target
from exporter.loading.program_checks import is_plain_guard as _is_plain_guard
from exporter.loading.program_checks import is_plain_sympy as _is_plain_sympy

__all__ = ["UnsafeCheckpointError", "audit_exported_program", "audit_torch_save", "audit_torchscript"]

_FIX_PT2 = "re-export it with torch.export.save from a trusted environment"
_FIX_TORCHSCRIPT = "re-save it with torch.jit.save from a trusted environment"
_FIX_TORCH_SAVE = "save a state_dict and pass --model"
_COMPRESSED_BUDGET = 64 * 1024 * 1024  # bytes all compressed records of one archive may inflate to
_LEGACY_PICKLES = 5  # torch.save(_use_new_zipfile_serialization=False): magic, protocol, sys_info, obj, keys
# Records torch.export.load's pre-2.7 fallback passes to torch.load, which retries with weights_only=False.
_LEGACY_EXPORT_BLOBS = frozenset(
    {
        "serialized_state_dict.pt",
        "serialized_state_dict.json",
        "serialized_constants.pt",
        "serialized_constants.json",
        "serialized_example_inputs.pt",
    }
)


def audit_torch_save(path: Path) -> None:
    """Audit a ``torch.save`` file (zip, ``.pth``, or legacy raw pickle) for ``torch.load``.

    A legacy tar checkpoint is left to ``torch.load(weights_only=True)``, which this path always uses first.
    """
    with path.open("rb") as handle:
        if zipfile.is_zipfile(handle):
            handle.seek(0)
            with zipfile.ZipFile(handle) as archive:
                _audit_torch_zip(archive, "", _FIX_TORCH_SAVE, torch_save=True)
            return
        handle.seek(0)
        for _ in range(_LEGACY_PICKLES):
            if not scan_pickle(
                handle, _shown(path.name), weights_only_allows, _FIX_TORCH_SAVE, torch_save=True
            ):
                return


def audit_torchscript(path: Path) -> None:
    """Audit a ``torch.jit.save`` archive for ``torch.jit.load``.

    Every ``*.pkl`` and ``*.debug_pkl`` record is read by TorchScript's C++ unpickler and is checked.
    ``code/`` holds TorchScript source that TorchScript compiles itself, never Python. Files under
    ``extra/`` are bytes handed back only to a caller that asks for them by name (``_extra_files``); this
    loader never asks, so they are never read, let alone unpickled, and are not checked.
    """
    with zipfile.ZipFile(path) as archive:
        for name, info in _members(archive, _FIX_TORCHSCRIPT).items():
            if name.startswith("extra/") or not name.endswith("pkl"):
                continue
            with archive.open(info) as stream:
                scan_pickle(stream, _shown(name), torchscript_allows, _FIX_TORCHSCRIPT)


def audit_exported_program(path: Path) -> None:
    """Audit a ``torch.export.save`` archive (``.pt2``) for ``torch.export.load`` and ``.module()``."""
    from torch.export.pt2_archive import constants

    weights_config = _config_pattern(constants.WEIGHTS_CONFIG_FILENAME_FORMAT)
    constants_config = _config_pattern(constants.CONSTANTS_CONFIG_FILENAME_FORMAT)
    with zipfile.ZipFile(path) as archive:
        members = _members(archive, _FIX_PT2)
        for name, info in members.items():
            if name.startswith(constants.AOTINDUCTOR_DIR):
                raise UnsafeCheckpointError(
                    f"holds AOTInductor compiled code ({_shown(name)})",
                    "loading it runs native code",
                    _FIX_PT2,
                )
            if weights_config.fullmatch(name):
                _check_payload_config(archive.read(info), name, "weight", ())
            elif constants_config.fullmatch(name):
                prefixes = (constants.CUSTOM_OBJ_FILENAME_PREFIX, constants.OPAQUE_OBJ_FILENAME_PREFIX)
                _check_payload_config(archive.read(info), name, "constant", prefixes)
        for name, info in members.items():
            if name.startswith(constants.EXTRA_DIR):
                continue
            if name.endswith(".pt") or name in _LEGACY_EXPORT_BLOBS:
                _audit_nested_torch_save(archive.read(info), name)
            elif name.endswith(".json") or name.startswith(constants.MODELS_DIR):
                _check_program_json(archive.read(info), name)
            elif name.endswith("pkl"):
                with archive.open(info) as stream:
                    scan_pickle(stream, _shown(name), weights_only_allows, _FIX_PT2)


def _members(archive: zipfile.ZipFile, fix: str) -> dict[str, zipfile.ZipInfo]:
    """Records by the name torch reads them under (without the archive's top folder), refusing duplicates.

    Python's zipfile reads the last of two same-named records and torch's reader may read the first, so
    the record checked here could differ from the one torch loads. Compressed records are checked first,
    before any record is read (:func:`_refuse_zip_bomb`).
    """
    _refuse_zip_bomb(archive, fix)
    members: dict[str, zipfile.ZipInfo] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        name = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
        if name in members:
            raise UnsafeCheckpointError(
                f"has two zip records named {_excerpt(name)}",
                "torch may load the one this check did not read",
                fix,
            )
        members[name] = info
    return members


def _refuse_zip_bomb(archive: zipfile.ZipFile, fix: str) -> None:
    """Refuse compressed records that torch does not write, or that would inflate past a small budget.

    ``torch.save`` and ``torch.export.save`` store every record as is; ``torch.jit.save`` deflates only its
    TorchScript source (``code/``) and debug tables (``*.debug_pkl``), a few KiB a module. torch's reader
    inflates a record whole into memory, sized by the zip header's own figure, so a 2 MB file can ask
    for gigabytes: any other compressed record is refused, and those may inflate to 64 MiB in all.
    """
    compressed = [info for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
    if not compressed:
        return
    unexpected = [info for info in compressed if not _may_be_compressed(info.filename)]
    inflated = sum(info.file_size for info in compressed)
    if not unexpected and inflated <= _COMPRESSED_BUDGET:
        return
    largest = max(unexpected or compressed, key=lambda info: info.file_size)
    raise UnsafeCheckpointError(
        f"has a compressed zip record {_excerpt(largest.filename)} "
        f"({_size(largest.compress_size)} that inflates to {_size(largest.file_size)}; "
        f"{_size(inflated)} compressed in all)",
        "inflating it could exhaust memory (a zip bomb; torch compresses only a module's code, and little)",
        fix,
    )


def _may_be_compressed(filename: str) -> bool:
    """TorchScript source and debug tables: what ``torch.jit.save`` deflates."""
    inner = filename.split("/", 1)[1] if "/" in filename else filename
    return inner.startswith("code/") or inner.endswith(".debug_pkl")


def _audit_torch_zip(archive: zipfile.ZipFile, where: str, fix: str, *, torch_save: bool = False) -> None:
    members = _members(archive, fix)
    allows = torchscript_allows if "constants.pkl" in members else weights_only_allows
    for name, info in members.items():
        if name.endswith(".pkl"):
            with archive.open(info) as stream:
                scan_pickle(stream, f"{where}{_shown(name)}", allows, fix, torch_save=torch_save)


def _audit_nested_torch_save(data: bytes, name: str) -> None:
    """A ``torch.save`` blob inside a ``.pt2``: torch re-reads it with ``weights_only=False`` on failure."""
    buffer = io.BytesIO(data)
    if zipfile.is_zipfile(buffer):
        with zipfile.ZipFile(buffer) as archive:
            _audit_torch_zip(archive, f"{_shown(name)}: ", _FIX_PT2)
        return
    buffer.seek(0)
    if _is_tar(buffer):
        raise UnsafeCheckpointError(
            f"holds a legacy tar checkpoint ({_shown(name)})",
            "torch unpickles its members unchecked",
            _FIX_PT2,
        )
    buffer.seek(0)
    for _ in range(_LEGACY_PICKLES):
        if not scan_pickle(buffer, _shown(name), weights_only_allows, _FIX_PT2):
            return


def _is_tar(buffer: IO[bytes]) -> bool:
    try:
        with tarfile.open(fileobj=buffer, mode="r:"):
            return True
    except tarfile.TarError:
        return False


def _check_payload_config(data: bytes, name: str, kind: str, pickled_prefixes: tuple[str, ...]) -> None:
    """Refuse every entry of a ``.pt2`` weights/constants config that ``torch.export.load`` would unpickle.

    ``use_pickle`` entries go to ``torch.load(weights_only=False)``; constants whose file is a custom or
    opaque object are unpickled whatever their ``use_pickle`` says.
    """
    try:
        config = json.loads(data)
    except ValueError:
        return  # torch's json.loads fails on it too, before reading any payload
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return
    base = name.split("/", 2)[-1]  # below data/weights/ or data/constants/
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            continue
        path_name = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            what = f"stores {kind} {_excerpt(fqn)} as a pickle ({_shown(base)}: use_pickle)"
        elif path_name.startswith(pickled_prefixes):
            what = f"stores {kind} {_excerpt(fqn)} as a pickled object ({_shown(base)}: {_shown(path_name)})"
        else:
            continue
        raise UnsafeCheckpointError(what, RISK_PICKLE, _FIX_PT2)


def _config_pattern(filename_format: str) -> re.Pattern[str]:
    """Every name torch could build from the format: a program named ``x/y`` (from ``models/x/y.json``)
    or ``""`` (from ``models/.json``) reads ``data/weights/x/y_weights_config.json`` or
    ``data/weights/_weights_config.json``, so the model name may be empty and may hold slashes."""
    return re.compile(re.escape(filename_format).replace(re.escape("{}"), ".*"), re.DOTALL)


def _check_program_json(data: bytes, name: str) -> None:
    """Check the strings of a serialized program that torch evaluates as code or resolves to callables."""
    try:
        document = json.loads(data)
    except ValueError:
        return
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        expr = node.get("expr_str")
        if isinstance(expr, str) and not _is_plain_sympy(expr):
            raise UnsafeCheckpointError(
                f"has a shape expression in {_shown(name)} that is not plain arithmetic ({_excerpt(expr)})",
                "torch parses it with sympy's eval, which can run arbitrary code",
                _FIX_PT2,
            )
        guards = node.get("guards_code")
        for guard in guards if isinstance(guards, list) else []:
            if not isinstance(guard, str) or not _is_plain_guard(guard):
                shown = _excerpt(str(guard))
                raise UnsafeCheckpointError(
                    f"has a shape guard in {_shown(name)} that is not a plain comparison ({shown})",
                    "torch compiles guards into Python code, which can run arbitrary code",
                    _FIX_PT2,
                )
        target = node.get("target")
        if isinstance(target, str) and "inputs" in node and not is_operator_target(target):
            raise UnsafeCheckpointError(
                f"calls {_excerpt(target)} in its graph ({_shown(name)}), which is not a torch operator",
                "running the program would call it",
                _FIX_PT2,
            )
        stack.extend(node.values())


def _size(count: int) -> str:
    """A byte count as a person reads it (the zip header's own figure: it may lie, and is only shown)."""
    value = float(count)
    for unit in ("bytes", "KiB", "MiB"):
        if value < 1024:
            return f"{count} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def _shown(text: str, limit: int = 80) -> str:
    """A record name as it can appear in a one-line message: escaped, and cut if long."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _excerpt(text: str, limit: int = 60) -> str:
    """A repr short enough for a one-line message; repr also escapes any newline."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."

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

A pickle passes when every name it imports (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is one that
``torch.load(weights_only=True)`` itself accepts, taken from ``torch._weights_only_unpickler`` (including
names the user allowlisted with ``torch.serialization.add_safe_globals``), plus, in TorchScript archives,
the names TorchScript's C++ unpickler resolves itself. ``REDUCE``, ``NEWOBJ``, ``OBJ`` and ``BUILD`` can
only call what an import put on the stack, so checking the imports covers them. A malformed stream is not
a finding: the unpickler stops at the same opcode, after running only opcodes already checked.
"""

from __future__ import annotations

import ast
import io
import json
import math
import pickletools
import re
import tarfile
import tokenize
import zipfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import IO, Any

__all__ = ["UnsafeCheckpointError", "audit_exported_program", "audit_torch_save", "audit_torchscript"]

_RISK_PICKLE = "unpickling can run arbitrary code"
_RISK_TORCHSCRIPT = "torch.jit.save never writes that (a tampered or foreign file)"
_FIX_PT2 = "re-export it with torch.export.save from a trusted environment"
_FIX_TORCHSCRIPT = "re-save it with torch.jit.save from a trusted environment"
_FIX_TORCH_SAVE = "save a state_dict and pass --model"
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
_STRING_OPS = frozenset(
    {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}
)
_NO_PUSH_OPS = frozenset({"PROTO", "FRAME", "MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT", "STOP"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})

# Names TorchScript's C++ unpickler (torch/csrc/jit/serialization/unpickler.cpp, readGlobal) resolves
# without Python; anything under __torch__ is a class compiled from the archive's own code/ folder.
_TORCHSCRIPT_GLOBALS = frozenset(
    {
        "__main__.TensorID",
        "__main__.IntList",
        "torch.jit._pickle.build_tensor_from_id",
        "torch.jit._pickle.restore_type_tag",
        "torch.jit._pickle.build_intlist",
        "torch.jit._pickle.build_tensorlist",
        "torch.jit._pickle.build_doublelist",
        "torch.jit._pickle.build_boollist",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_qtensor",
        "torch._utils._rebuild_sparse_tensor",
        "torch._tensor._rebuild_from_type_v2",
        "builtins.complex",
        "collections.OrderedDict",
        "torch.device",
    }
)
_TORCHSCRIPT_CLASS_PREFIX = "__torch__."

_TENSOR_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel", "shape", "item"})
_GUARD_BUILTINS = frozenset({"L", "inf", "int", "float", "bool", "abs", "max", "min", "round"})
_SAFE_STRING = re.compile(r"[A-Za-z0-9_]*|[0-9.eE+-]+")
_SYMBOL_NAME = re.compile(r"[a-z]+[0-9]+")
_SYMPY_KEYWORDS = frozenset({"precision", "evaluate", "True", "False", "None"})
_SYMPY_OPERATORS = frozenset(
    {
        "(",
        ")",
        ",",
        "+",
        "-",
        "*",
        "/",
        "%",
        "**",
        "//",
        "<",
        ">",
        "<=",
        ">=",
        "==",
        "!=",
        "=",
        "&",
        "|",
        "~",
        "^",
    }
)


class UnsafeCheckpointError(Exception):
    """Something in a checkpoint that loading would execute; the three parts make the user's one line."""

    def __init__(self, what: str, risk: str, fix: str) -> None:
        super().__init__(f"{what}, and {risk}; {fix}")
        self.what = what
        self.risk = risk
        self.fix = fix


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
            if not _scan_pickle(
                handle, _shown(path.name), _weights_only_allows, _FIX_TORCH_SAVE, torch_save=True
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
                _scan_pickle(stream, _shown(name), _torchscript_allows, _FIX_TORCHSCRIPT)


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
            elif name.endswith(".json"):
                _check_program_json(archive.read(info), name)
            elif name.endswith("pkl"):
                with archive.open(info) as stream:
                    _scan_pickle(stream, _shown(name), _weights_only_allows, _FIX_PT2)


def _members(archive: zipfile.ZipFile, fix: str) -> dict[str, zipfile.ZipInfo]:
    """Records by the name torch reads them under (without the archive's top folder), refusing duplicates.

    Python's zipfile reads the last of two same-named records and torch's reader may read the first, so
    the record checked here could differ from the one torch loads.
    """
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


def _audit_torch_zip(archive: zipfile.ZipFile, where: str, fix: str, *, torch_save: bool = False) -> None:
    members = _members(archive, fix)
    allows = _torchscript_allows if "constants.pkl" in members else _weights_only_allows
    for name, info in members.items():
        if name.endswith(".pkl"):
            with archive.open(info) as stream:
                _scan_pickle(stream, f"{where}{_shown(name)}", allows, fix, torch_save=torch_save)


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
        if not _scan_pickle(buffer, _shown(name), _weights_only_allows, _FIX_PT2):
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
    base = name.rsplit("/", 1)[-1]
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
        raise UnsafeCheckpointError(what, _RISK_PICKLE, _FIX_PT2)


def _scan_pickle(
    stream: IO[bytes],
    entry: str,
    allows: Callable[[str], bool],
    fix: str,
    *,
    torch_save: bool = False,
) -> bool:
    """Check one pickle's imports; True if it ended with STOP (so another pickle may follow)."""

    def refuse(problem: str) -> UnsafeCheckpointError:
        if torch_save:
            what = f"holds pickled Python objects (such as a whole nn.Module; {entry} {problem})"
        else:
            what = f"has a pickle ({entry}) that {problem}"
        risk = _RISK_PICKLE if allows is _weights_only_allows else _RISK_TORCHSCRIPT
        return UnsafeCheckpointError(what, risk, fix)

    recent: list[object] = []
    memo: dict[int, object] = {}
    for opcode, arg in _opcodes(stream):
        name = opcode.name
        if name in {"GLOBAL", "INST"}:
            module, _, attribute = str(arg).partition(" ")
            if not allows(_global_name(module, attribute)):
                raise refuse(f"imports {_global_name(module, attribute)}")
        elif name == "STACK_GLOBAL":
            module_name, attribute_name = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            if not isinstance(module_name, str) or not isinstance(attribute_name, str):
                raise refuse("builds the name it imports at load time")
            if not allows(_global_name(module_name, attribute_name)):
                raise refuse(f"imports {_global_name(module_name, attribute_name)}")
        elif name.startswith("EXT"):
            raise refuse("imports through the copyreg extension registry")
        if name == "STOP":
            return True
        if name in _STRING_OPS:
            recent.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
        elif name in _GET_OPS:
            recent.append(memo.get(int(arg)))
        elif name in {"PUT", "BINPUT", "LONG_BINPUT"}:
            memo[int(arg)] = recent[-1] if recent else None
        elif name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif name not in _NO_PUSH_OPS:
            recent.append(None)
        del recent[:-2]
    return False


def _opcodes(stream: IO[bytes]) -> Iterator[tuple[pickletools.OpcodeInfo, Any]]:
    """``pickletools.genops`` up to STOP, ending quietly where the stream stops being a pickle."""
    ops = pickletools.genops(stream)
    while True:
        try:
            opcode, arg, _ = next(ops)
        except StopIteration:
            return
        except Exception:  # genops raises ValueError, UnicodeDecodeError, struct.error... on garbage
            return
        yield opcode, arg


def _global_name(module: str, attribute: str) -> str:
    """The dotted name torch's unpicklers look up, with Python 2 names mapped as they map them."""
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING

    if (module, attribute) in NAME_MAPPING:
        module, attribute = NAME_MAPPING[(module, attribute)]
    elif module in IMPORT_MAPPING:
        module = IMPORT_MAPPING[module]
    return f"{module}.{attribute}"


def _weights_only_allows(name: str) -> bool:
    """What ``torch.load(weights_only=True)`` accepts, read from torch rather than copied."""
    from torch import _weights_only_unpickler as weights_only

    if name.split(".", 1)[0] in weights_only._blocklisted_modules:
        return False
    return name in weights_only._get_allowed_globals() or name in weights_only._get_user_allowed_globals()


def _torchscript_allows(name: str) -> bool:
    return (
        name.startswith(_TORCHSCRIPT_CLASS_PREFIX)
        or name in _TORCHSCRIPT_GLOBALS
        or _weights_only_allows(name)
    )


def _config_pattern(filename_format: str) -> re.Pattern[str]:
    return re.compile(re.escape(filename_format).replace(re.escape("{}"), "[^/]+"))


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
        if isinstance(target, str) and "inputs" in node and not _is_operator_target(target):
            raise UnsafeCheckpointError(
                f"calls {_excerpt(target)} in its graph ({_shown(name)}), which is not a torch operator",
                "running the program would call it",
                _FIX_PT2,
            )
        stack.extend(node.values())


def _is_plain_sympy(expr: str) -> bool:
    """Arithmetic on symbols, numbers and sympy's own functions: nothing ``eval`` could turn into a call.

    No attribute access, subscripts, lambdas or string tricks: a name must be a shape symbol (``s0``), a
    sympy assumption or keyword, or a sympy/torch sympy function, and a string a bare name or number.
    """
    if any(c in expr for c in "\n\r\\#;"):
        return False
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(expr).readline))
    except (tokenize.TokenError, SyntaxError):
        return False
    for token in tokens:
        if token.type == tokenize.NAME:
            if not (_SYMBOL_NAME.fullmatch(token.string) or token.string in _sympy_names()):
                return False
        elif token.type == tokenize.STRING:
            if not re.fullmatch(r"'[^'\\]*'|\"[^\"\\]*\"", token.string):
                return False
            if not _SAFE_STRING.fullmatch(token.string[1:-1]):
                return False
        elif token.type == tokenize.OP:
            if token.string not in _SYMPY_OPERATORS:
                return False
        elif token.type not in {tokenize.NUMBER, tokenize.NEWLINE, tokenize.NL, tokenize.ENDMARKER}:
            return False
    return True


@cache
def _sympy_names() -> frozenset[str]:
    """Names sympify may resolve that only build expressions: sympy classes and singletons, torch's ones."""
    import sys

    import sympy
    import torch.utils._sympy.functions as torch_sympy

    names = {
        name
        for name in dir(sympy)
        if not name.startswith("_")
        and (
            isinstance(getattr(sympy, name), sympy.Basic)
            or (isinstance(getattr(sympy, name), type) and issubclass(getattr(sympy, name), sympy.Basic))
        )
    }
    assumptions = sys.modules["sympy.core.assumptions"]
    names |= set(getattr(assumptions, "_assume_defined", ()))
    return frozenset(names | set(torch_sympy.__all__) | _SYMPY_KEYWORDS)


def _is_plain_guard(guard: str) -> bool:
    """A one-line comparison over input sizes (``L['x'].size()[0] >= 2``) and math/sym functions.

    ``torch.export`` pastes each guard into ``def _(*args): torch._assert(<guard>, "...")`` and ``exec``s
    it when ``ExportedProgram.module()`` is called, so anything else could break out of that line.
    """
    from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

    if any(c in guard for c in '\n\r\\#;"'):
        return False
    try:
        tree = ast.parse(guard, mode="eval")
    except SyntaxError:
        return False
    names = _GUARD_BUILTINS | set(SYMPY_INTERP)
    allowed_nodes = (
        ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Call, ast.Name, ast.Constant,
        ast.Subscript, ast.Attribute, ast.Slice, ast.Load, ast.operator, ast.cmpop, ast.boolop, ast.unaryop,
    )  # fmt: skip
    for node in ast.walk(tree):
        if not isinstance(node, allowed_nodes):
            return False
        if isinstance(node, ast.Name) and node.id not in names:
            return False
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, (str, bytes))
            and not _is_key(node.value)
        ):
            return False
        if isinstance(node, ast.Attribute) and not _is_guard_attribute(node):
            return False
    return True


def _is_key(value: str | bytes) -> bool:
    """A string in a guard: an input name or a plain value, nothing that could close a string literal."""
    return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9_. -]*", value) is not None


def _is_guard_attribute(node: ast.Attribute) -> bool:
    if isinstance(node.value, ast.Name) and node.value.id == "math":
        return not node.attr.startswith("_") and hasattr(math, node.attr)  # pure functions and constants
    if isinstance(node.value, ast.Name) and node.value.id == "torch":
        return node.attr.startswith(("sym_", "_sym_"))
    return node.attr in _TENSOR_ATTRIBUTES


def _is_operator_target(target: str) -> bool:
    """A graph node target torch resolves to an operator, the way ``deserialize_operator`` resolves it.

    Names torch cannot resolve stay strings, which the deserializer refuses, so they pass here.
    """
    import operator

    import torch
    from torch._export.serde.serialize import _SYM_OPS

    roots: dict[str, Any] = {"_operator": operator, "torch": torch, "math": math}
    if target.startswith("#"):
        return True  # an extension registered in this process by a library the user imported
    root = next((value for prefix, value in roots.items() if target.startswith(prefix)), None)
    if root is None:
        return True
    resolved: Any = root
    try:
        for part in target.split(".")[1:]:
            if not hasattr(resolved, part):
                return True
            resolved = getattr(resolved, part)
        if isinstance(resolved, (torch._ops.OpOverload, torch._ops.HigherOrderOperator)):
            return True
        return resolved in _SYM_OPS or resolved is operator.getitem or resolved is torch.ops.aten.item.default
    except Exception:  # an unhashable attribute, or a lookup that fails: refuse what cannot be checked
        return False


def _shown(text: str, limit: int = 80) -> str:
    """A record name as it can appear in a one-line message: escaped, and cut if long."""
    shown = repr(text)[1:-1]
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def _excerpt(text: str, limit: int = 60) -> str:
    """A repr short enough for a one-line message; repr also escapes any newline."""
    return repr(text) if len(text) <= limit else repr(text[: limit - 3]) + "..."

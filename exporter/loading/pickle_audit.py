"""Walk a pickle's opcodes without running any, and refuse the imports loading it would resolve.

A pickle passes when every name it imports (``GLOBAL``, ``STACK_GLOBAL``, ``INST``) is one that
``torch.load(weights_only=True)`` itself accepts, taken from ``torch._weights_only_unpickler`` (including
names the user allowlisted with ``torch.serialization.add_safe_globals``), plus, in TorchScript archives,
the names TorchScript's C++ unpickler resolves itself. ``REDUCE``, ``NEWOBJ``, ``OBJ`` and ``BUILD`` can
only call what an import put on the stack, so checking the imports covers them. A malformed stream is not
a finding: the unpickler stops at the same opcode, after running only opcodes already checked.
:func:`pickletools.genops` decodes opcodes; nothing in the stream is imported, called or evaluated.
"""

from __future__ import annotations

import pickletools
from collections.abc import Callable, Iterator
from typing import IO, Any

__all__ = ["RISK_PICKLE", "UnsafeCheckpointError", "scan_pickle", "torchscript_allows", "weights_only_allows"]

RISK_PICKLE = "unpickling can run arbitrary code"
_RISK_TORCHSCRIPT = "torch.jit.save never writes that (a tampered or foreign file)"
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


class UnsafeCheckpointError(Exception):
    """Something in a checkpoint that loading would execute; the three parts make the user's one line."""

    def __init__(self, what: str, risk: str, fix: str) -> None:
        super().__init__(f"{what}, and {risk}; {fix}")
        self.what = what
        self.risk = risk
        self.fix = fix


def scan_pickle(
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
        risk = RISK_PICKLE if allows is weights_only_allows else _RISK_TORCHSCRIPT
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


def weights_only_allows(name: str) -> bool:
    """What ``torch.load(weights_only=True)`` accepts, read from torch rather than copied."""
    from torch import _weights_only_unpickler as weights_only

    if name.split(".", 1)[0] in weights_only._blocklisted_modules:
        return False
    return name in weights_only._get_allowed_globals() or name in weights_only._get_user_allowed_globals()


def torchscript_allows(name: str) -> bool:
    """What TorchScript's unpickler resolves: its own names and classes, plus what weights-only accepts."""
    return (
        name.startswith(_TORCHSCRIPT_CLASS_PREFIX)
        or name in _TORCHSCRIPT_GLOBALS
        or weights_only_allows(name)
    )

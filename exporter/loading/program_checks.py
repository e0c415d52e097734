"""Whether the strings of a serialized ``torch.export`` program that torch evaluates or resolves are inert.

``torch.export.load`` hands every ``expr_str`` to ``sympy.sympify``, which is ``eval``, and resolves graph
targets like ``torch.os.system`` that run with the program; ``ExportedProgram.module()`` pastes
``guards_code`` into Python source and ``exec``s it. These predicates tokenize or parse the strings and
look names up; nothing in them is called or evaluated.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from functools import cache
from typing import Any

__all__ = ["is_operator_target", "is_plain_guard", "is_plain_sympy"]

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


def is_plain_sympy(expr: str) -> bool:
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


def is_plain_guard(guard: str) -> bool:
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


def is_operator_target(target: str) -> bool:
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

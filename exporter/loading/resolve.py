"""Resolve ``package.module:callable`` or ``path/to/file.py:callable`` references to Python objects."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from exporter.errors import UsageError
from exporter.recipe.refs import RecipeReference

__all__ = ["import_from_working_directory", "resolve_callable"]


def resolve_callable(ref: str, *, option: str = "--model") -> Callable[..., Any]:
    """Import the object ``ref`` names; the current directory is importable, as users expect.

    A ``RecipeReference`` (a recipe's callable) is checked against its recipe's rule before the import and
    again on the object found, so nothing outside the rule is imported or returned.

    Raises:
        UsageError: the reference is malformed, its module does not import, or it names nothing callable.
        RecipeError: a recipe's reference breaks the recipe rule.
    """
    module_part, sep, attr_path = ref.rpartition(":")
    if not sep or not module_part or not attr_path:
        raise UsageError(f"{option} '{ref}' must be package.module:callable or path/to/file.py:callable")
    if isinstance(ref, RecipeReference):
        ref.check_before_import()
    try:
        module = _import(module_part)
    except FileNotFoundError:
        raise UsageError(f"{option} '{ref}': file '{module_part}' does not exist") from None
    except Exception as error:
        raise UsageError(
            f"{option} '{ref}': importing '{module_part}' failed: {type(error).__name__}: {error}"
        ) from error
    target: Any = module
    for name in attr_path.split("."):
        if not hasattr(target, name):
            raise UsageError(f"{option} '{ref}': '{module_part}' has no attribute '{attr_path}'")
        target = getattr(target, name)
    if not callable(target):
        raise UsageError(f"{option} '{ref}': '{attr_path}' is not callable")
    if isinstance(ref, RecipeReference):
        ref.check_found(target)
    return target


def import_from_working_directory() -> str:
    """Put the current directory on ``sys.path`` (first, unless it is already there) and return it.

    One rule for every name exporter imports on the user's behalf: ``--model pkg.mod:fn`` and the classes
    a trusted pickled module names (``pkg.mod.Encoder``) are found in the working directory, as
    ``python -c "import pkg.mod"`` run there would find them. The console script's own ``sys.path[0]`` is
    its ``bin`` folder, so without this neither would be.
    """
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    return cwd


def _import(module_part: str) -> Any:
    import_from_working_directory()
    if not module_part.endswith(".py"):
        return importlib.import_module(module_part)
    path = Path(module_part).resolve()
    if not path.is_file():
        raise FileNotFoundError(path)
    # A stable, unique module name lets pickling and torch.export find the classes again.
    name = f"_exporter_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module

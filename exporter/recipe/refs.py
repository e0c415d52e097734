"""Which code a recipe may name: the one rule for ``factory``, ``calibration``, ``eval_data``, ``metric`` and
``qat_train``.

A recipe is read like data but names callables, and exporter calls them (``factory`` with the recipe's own
``kwargs``). Left open, ``factory = "os:system"`` with ``kwargs = {command = "..."}`` ran a shell command,
and ``builtins:eval`` or ``/usr/lib/python3.11/subprocess.py:run`` would do as much. So a recipe may name:

- ``path/file.py:callable`` whose file (symlinks followed) lies inside the recipe's **project**: the
  recipe's folder, or the nearest folder above it that holds ``pyproject.toml``, ``setup.py``,
  ``setup.cfg`` or ``.git`` (never ``/`` or the home folder), and not inside a hidden folder (``.venv``)
  or a Python installation (a folder with ``pyvenv.cfg`` or ``os.py``, ``site-packages``). That is code
  that travels and is reviewed with the recipe; ``recipes/digits_cnn.toml`` names
  ``../examples/digits/model.py`` of its own repository.
- ``package.module:callable`` of ``exporter.zoo`` (the bundled model zoo) or of a package the user names
  with ``--allow-package NAME``; never the standard library or builtins.

The callable part is dotted public names only, and the object found must be a function or class defined in
those places (``model.py:os.system`` reaches ``os`` through the file's own import; that is refused after
import, before anything is called). The CLI's own ``--model`` and ``--calibration`` are the user's words and
are not checked. A reference that passed here is a ``RecipeReference``: a ``str`` (so every setting stays a
plain string) that ``resolve_callable`` checks again, before importing and after.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exporter.errors import RecipeError

__all__ = ["BUNDLED_PACKAGES", "RecipeReference", "ReferenceRule"]

BUNDLED_PACKAGES = ("exporter.zoo",)
_PROJECT_MARKERS = ("pyproject.toml", "setup.py", "setup.cfg", ".git")
_INSTALLATION_MARKERS = ("pyvenv.cfg", "os.py")  # a virtual environment's root, a standard library folder
_INSTALLATION_FOLDERS = {"site-packages", "dist-packages"}
_FORBIDDEN_TOP_LEVEL = {"builtins", "__main__", *sys.stdlib_module_names, *sys.builtin_module_names}


@dataclass(frozen=True)
class ReferenceRule:
    """Where the callables of one recipe may come from."""

    recipe: Path
    project: Path
    packages: tuple[str, ...] = ()

    @classmethod
    def for_recipe(cls, recipe: Path, allow_packages: Sequence[str] = ()) -> ReferenceRule:
        """The rule for ``recipe``, with the packages the user allowed (``--allow-package``).

        Raises:
            RecipeError: an allowed package name that is not a dotted module name, or is the standard
                library (allowing ``os`` would make the rule pointless).
        """
        for name in allow_packages:
            if not all(part.isidentifier() for part in name.split(".")):
                raise RecipeError(f"--allow-package {name!r} is not a package name such as my_models")
            if name.split(".")[0] in _FORBIDDEN_TOP_LEVEL:
                raise RecipeError(
                    f"--allow-package {name}: the standard library and builtins are never allowed in a "
                    "recipe; allow the package that holds your own model code"
                )
        folder = recipe.resolve().parent
        return cls(recipe, _project_of(folder), tuple(allow_packages))

    @property
    def summary(self) -> str:
        packages = ", ".join((*BUNDLED_PACKAGES, *self.packages))
        return (
            f"a recipe may name only path/file.py:callable inside its project '{self.project}' or "
            f"package.module:callable of {packages}"
        )

    def check(self, key: str, ref: str, shown: str) -> RecipeReference:
        """``ref`` (``file.py`` paths already joined to the recipe's folder) as a checked reference.

        ``shown`` is the text the recipe wrote, for the message.

        Raises:
            RecipeError: one line naming the recipe, the key, why, the rule and the fix.
        """
        problem = self.problem(ref)
        if problem is not None:
            raise RecipeError(
                f"recipe '{self.recipe}': {key} '{shown}' is refused: {problem}; {self.summary} (recipes are "
                "code: review them like code); move the code into the recipe's project, or pass "
                "--allow-package NAME for a package you trust"
            )
        return RecipeReference(ref, self, key)

    def problem(self, ref: str) -> str | None:
        """Why ``ref`` breaks the rule, or None."""
        module, sep, attr = ref.rpartition(":")
        if not sep or not module or not attr:
            return "it is not package.module:callable or path/file.py:callable"
        if not all(part.isidentifier() and not part.startswith("_") for part in attr.split(".")):
            return f"'{attr}' is not a dotted public name"
        if module.endswith(".py"):
            return self._file_problem(Path(module))
        if not all(part.isidentifier() for part in module.split(".")):
            return f"'{module}' is neither a file.py path nor a module name"
        if module.split(".")[0] in _FORBIDDEN_TOP_LEVEL:
            return "it names the standard library or builtins"
        if self._package_of(module) is None:
            return f"module '{module}' is in no allowed package"
        return None

    def _file_problem(self, path: Path) -> str | None:
        real = path.resolve()
        if not real.is_relative_to(self.project):
            return f"'{real}' is outside the recipe's project"
        return _installation_problem(self.project, real)

    def _package_of(self, module: str) -> str | None:
        return next(
            (p for p in (*BUNDLED_PACKAGES, *self.packages) if module == p or module.startswith(f"{p}.")),
            None,
        )

    def check_defined(self, ref: RecipeReference, found: Any) -> None:
        """After import: the object must be a function or class defined where the rule allows.

        Raises:
            RecipeError: it is a builtin, an object of another kind, or defined elsewhere (imported into
                the named module from the standard library, say).
        """
        source = _defining_file(found)
        module = str(ref).rpartition(":")[0]
        if source is None:
            problem: str | None = "it is not a function or class written in Python"
        elif module.endswith(".py"):
            problem = self._file_problem(source)
        else:
            package = self._package_of(module)
            folders = _package_folders(package) if package else []
            inside = any(source.is_relative_to(folder) for folder in folders)
            problem = None if inside else f"it is defined in '{source}', outside package {package}"
        if problem is not None:
            raise RecipeError(
                f"recipe '{self.recipe}': {ref.key} '{ref}' is refused: {problem}; {self.summary}; name a "
                "function or class written in that code"
            )


class RecipeReference(str):
    """A callable reference that came from a recipe and passed its ``ReferenceRule``.

    A ``str`` so that settings, reports and error messages keep treating it as text; ``resolve_callable``
    sees the type and checks the rule again around the import.
    """

    rule: ReferenceRule
    key: str

    def __new__(cls, text: str, rule: ReferenceRule, key: str) -> RecipeReference:
        made = super().__new__(cls, text)
        made.rule, made.key = rule, key
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        return (RecipeReference, (str(self), self.rule, self.key))

    def check_before_import(self) -> None:
        """The file may have changed (a symlink swapped) since the recipe was read."""
        self.rule.check(self.key, str(self), str(self))

    def check_found(self, found: Any) -> None:
        self.rule.check_defined(self, found)


def _project_of(folder: Path) -> Path:
    """The nearest folder at or above ``folder`` that marks a project, else ``folder`` itself.

    ``/`` and the home folder never count: a ``.git`` there (a dotfiles repository) would open every file.
    """
    stops = {Path(folder.anchor), Path.home().resolve()}
    for candidate in (folder, *folder.parents):
        if candidate in stops:
            break
        if any((candidate / marker).exists() for marker in _PROJECT_MARKERS):
            return candidate
    return folder


def _installation_problem(project: Path, real: Path) -> str | None:
    """A file in a hidden folder or a Python installation inside the project is not the project's code."""
    parts = real.relative_to(project).parts
    for depth, part in enumerate(parts[:-1]):
        folder = project.joinpath(*parts[: depth + 1])
        if part.startswith("."):
            return f"'{real}' is inside the hidden folder '{folder}'"
        if part in _INSTALLATION_FOLDERS or any((folder / m).exists() for m in _INSTALLATION_MARKERS):
            return f"'{real}' is inside the Python installation '{folder}'"
    if any((project / m).exists() for m in _INSTALLATION_MARKERS):
        return f"'{project}' is a Python installation"
    return None


def _defining_file(found: Any) -> Path | None:
    """The source file of a function or class (decorators unwrapped), None for anything else."""
    try:
        found = inspect.unwrap(found)
    except ValueError:  # a cycle of __wrapped__
        return None
    if inspect.ismethod(found):
        found = found.__func__
    if inspect.isclass(found):
        filename = getattr(sys.modules.get(found.__module__), "__file__", None)
    elif inspect.isfunction(found):
        filename = found.__code__.co_filename
    else:
        return None
    return Path(filename).resolve() if filename else None


def _package_folders(package: str) -> list[Path]:
    """Where an (already imported) allowed package's files live."""
    module = importlib.import_module(package)
    folders = [Path(p).resolve() for p in getattr(module, "__path__", [])]
    file = getattr(module, "__file__", None)
    return folders or ([Path(file).resolve()] if file else [])

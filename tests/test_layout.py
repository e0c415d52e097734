"""The package's shape, kept: no import circles, small modules and functions, and a server without torch.

docs/architecture.md promises these; this file is what holds the promise as the code grows.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "exporter"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``import name`` runs last (``a.b.C`` -> ``a.b``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """Every exporter module ``path`` imports, wherever the import statement sits (a function-level import
    is still a dependency), with the packages whose ``__init__`` the import runs."""
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            target = _owner(name, modules)
            if target is None:
                continue
            parts = target.split(".")
            prefixes = (".".join(parts[:i]) for i in range(2, len(parts) + 1))
            yield from (prefix for prefix in prefixes if prefix in modules)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root, children_of_root in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(children_of_root)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circles() -> None:
    modules = _modules()
    graph = {name: {t for t in _imports(path, modules) if t != name} for name, path in modules.items()}
    assert _circles(graph) == []


def test_circle_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE.parent)): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def _is_typer_command(function: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("typer" in ast.unparse(arg.annotation) for arg in function.args.args if arg.annotation)


def test_no_function_over_80_lines() -> None:
    """A typer command's parameter list is declarations: only its body counts."""
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            start = node.body[0].lineno if _is_typer_command(node) else node.lineno
            length = (node.end_lineno or node.lineno) - start + 1
            if length > MAX_FUNCTION_LINES:
                long[f"{path.relative_to(PACKAGE.parent)}:{node.name}"] = length
    assert long == {}


def test_server_imports_no_torch() -> None:
    """The server, the comparison, the manifest and the backend registry load in a bundle without torch."""
    probe = (
        "import sys, exporter.serving.server, exporter.serving.__main__, exporter.verify.comparison, "
        "exporter.documents.manifest, exporter.backends; "
        "print(sorted(m for m in ('torch', 'openvino', 'onnx') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_every_file_docs_architecture_names_exists() -> None:
    """The newcomer's page names real files: each `path.py` it mentions is a module of the package."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"`(?:exporter/)?([a-z_/]+\.py)`", text))
    files = {str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")}
    tests = {f"tests/{path.name}" for path in (PACKAGE.parent / "tests").glob("*.py")}
    missing = sorted(
        name
        for name in named
        if name not in files | tests and not any(f.endswith("/" + name) for f in files) and "<" not in name
    )
    assert len(named) > 20 and missing == []

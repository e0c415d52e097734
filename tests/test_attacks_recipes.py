"""Recipes name code (issue 21, item 4): a recipe may name only ``file.py:callable`` in its own project, or
``package.module:callable`` of ``exporter.zoo`` and packages allowed with ``--allow-package``.

Every attack here used to run (``factory = "os:system"`` with ``kwargs = {command = ...}`` ran a shell
command). Each payload would create a marker file; the tests prove it does not exist afterwards.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ExitCode, RecipeError
from exporter.loading.resolve import resolve_callable
from exporter.recipe.document import load_recipe
from tests.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = sorted((ROOT / "recipes").glob("*.toml"))
KEYS = {
    "factory": "[model]",
    "calibration": "[quantize]",
    "eval_data": "[quantize]",
    "metric": "[quantize]",
    "qat_train": "[quantize]",
}
_PAYLOAD = (
    "from pathlib import Path\nPath({marker!r}).touch()\n\ndef run(*args, **kwargs):\n    return None\n"
)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """``tmp_path/project/recipe.toml`` (its project: no marker file above it) and ``tmp_path/outside/``
    with ``evil.py``, whose import touches ``tmp_path/marker``."""
    project, outside = tmp_path / "project", tmp_path / "outside"
    project.mkdir()
    outside.mkdir()
    (outside / "evil.py").write_text(_PAYLOAD.format(marker=str(tmp_path / "marker")))
    return project, outside


def _recipe(folder: Path, key: str, ref: str) -> Path:
    table = KEYS[key].strip("[]")
    extra = '\nkwargs = { command = "touch marker" }' if key == "factory" else ""
    path = folder / "recipe.toml"
    path.write_text(f'schema_version = 1\n\n[{table}]\n{key} = "{ref}"{extra}\n')
    return path


def _refused(path: Path, key: str, *, allow: tuple[str, ...] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, allow)
    message = str(info.value)
    assert info.value.exit_code is ExitCode.BAD_INPUT
    assert f"{KEYS[key]}.{key}" in message and "\n" not in message
    assert "a recipe may name only" in message and "--allow-package" in message  # the rule and the fix
    return message


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("ref", ["os:system", "builtins:eval", "subprocess:run", "posix:system"])
def test_the_standard_library_and_builtins_are_refused(layout: tuple[Path, Path], key: str, ref: str) -> None:
    project, _ = layout
    assert "standard library" in _refused(_recipe(project, key, ref), key)


@pytest.mark.parametrize("key", KEYS)
def test_a_file_outside_the_recipes_project_is_refused_and_never_imported(
    layout: tuple[Path, Path], key: str
) -> None:
    project, outside = layout
    for ref in ("../outside/evil.py:run", f"{outside / 'evil.py'}:run", "../../../../../../etc/evil.py:run"):
        assert "outside the recipe's project" in _refused(_recipe(project, key, ref), key)
    assert not (project.parent / "marker").exists()


@pytest.mark.parametrize("key", KEYS)
def test_a_symlink_out_of_the_project_is_refused(layout: tuple[Path, Path], key: str) -> None:
    project, outside = layout
    (project / "model.py").symlink_to(outside / "evil.py")
    (project / "lib").symlink_to(outside, target_is_directory=True)
    for ref in ("model.py:run", "lib/evil.py:run"):
        assert "outside the recipe's project" in _refused(_recipe(project, key, ref), key)
    assert not (project.parent / "marker").exists()


def test_the_python_installation_is_refused_even_by_absolute_path(layout: tuple[Path, Path]) -> None:
    project, _ = layout
    os_py = Path(__import__("os").__file__ or "").resolve()
    message = _refused(_recipe(project, "factory", f"{os_py}:system"), "factory")
    assert f"'{os_py}' is outside the recipe's project" in message


@pytest.mark.parametrize(
    "folder", [".venv/lib/python3.11/site-packages", "venv/lib/python3.11/site-packages", "env/lib"]
)
def test_a_python_installation_inside_the_project_is_refused(layout: tuple[Path, Path], folder: str) -> None:
    """A virtualenv in the project holds third-party code (``subprocess`` wrappers), not the project's."""
    project, _ = layout
    (project / "env").mkdir()
    (project / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (project / folder).mkdir(parents=True, exist_ok=True)
    (project / folder / "spawn.py").write_text("def spawn(cmd):\n    pass\n")
    message = _refused(_recipe(project, "factory", f"{folder}/spawn.py:spawn"), "factory")
    assert "hidden folder" in message or "Python installation" in message


def test_a_module_outside_the_allowed_packages_is_refused(layout: tuple[Path, Path]) -> None:
    project, _ = layout
    for ref in ("torch.hub:load", "exporter.loading.resolve:resolve_callable", "tests.models:make_mlp"):
        assert "no allowed package" in _refused(_recipe(project, "factory", ref), "factory")


@pytest.mark.parametrize(
    ("ref", "problem"),
    [
        ("model.py:build.__globals__", "'build.__globals__' is not a dotted public name"),
        ("model.py:_private", "'_private' is not a dotted public name"),
        ("model.py:", "it is not package.module:callable or path/file.py:callable"),
    ],
)
def test_the_callable_part_is_dotted_public_names(layout: tuple[Path, Path], ref: str, problem: str) -> None:
    project, _ = layout
    (project / "model.py").write_text("def build():\n    pass\n")
    assert f"is refused: {problem};" in _refused(_recipe(project, "factory", ref), "factory")


def test_the_standard_library_cannot_be_allowed() -> None:
    for name in ("os", "subprocess", "builtins", "os.path"):
        with pytest.raises(RecipeError, match="never allowed"):
            load_recipe(ROOT / "recipes" / "zoo_mlp.toml", (name,))


def test_a_stdlib_function_reached_through_an_allowed_file_is_refused_before_it_is_called(
    layout: tuple[Path, Path],
) -> None:
    """``model.py`` is the project's own code; ``model.py:os.system`` is still ``os.system``."""
    project, _ = layout
    marker = project.parent / "marker"
    (project / "model.py").write_text("import os\nfrom os import system\n")
    for attr in ("os.system", "system"):
        recipe = load_recipe(_recipe(project, "factory", f"model.py:{attr}"))
        with pytest.raises(RecipeError, match="not a function or class written in Python"):
            resolve_callable(recipe.settings["model_ref"])
    assert not marker.exists()


def test_a_function_imported_into_an_allowed_package_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--allow-package mypkg`` allows what mypkg defines, not what it imports (``torch.load``)."""
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("from torch import load\n\ndef build():\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    recipe = load_recipe(_recipe(tmp_path, "factory", "mypkg:load"), ("mypkg",))
    with pytest.raises(RecipeError, match="outside package mypkg"):
        resolve_callable(recipe.settings["model_ref"])
    allowed = load_recipe(_recipe(tmp_path, "factory", "mypkg:build"), ("mypkg",))
    assert resolve_callable(allowed.settings["model_ref"]).__name__ == "build"


def test_code_in_the_recipes_folder_and_its_project_is_allowed(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").touch()
    (tmp_path / "src").mkdir()
    (tmp_path / "recipes").mkdir()
    (tmp_path / "src" / "model.py").write_text("def build():\n    return 1\n")
    (tmp_path / "recipes" / "near.py").write_text("class Net:\n    pass\n")
    for ref in ("../src/model.py:build", "near.py:Net"):
        recipe = load_recipe(_recipe(tmp_path / "recipes", "factory", ref))
        assert callable(resolve_callable(recipe.settings["model_ref"]))


def test_the_bundled_recipes_validate_and_every_reference_resolves() -> None:
    """``make gate`` runs ``exporter run recipes/``: each reference must pass the rule, after import too."""
    assert BUNDLED
    for path in BUNDLED:
        recipe = load_recipe(path)
        quantize = recipe.settings.get("quantization", {})
        factory = (
            [recipe.settings["model_ref"]] if "model_ref" in recipe.settings else []
        )  # a folder needs none
        refs = [*factory, *(quantize[k] for k in KEYS if k in quantize if ":" in str(quantize[k]))]
        for ref in refs:
            assert callable(resolve_callable(ref)), (path.name, ref)


def test_the_cli_refuses_a_shell_command_factory_in_one_line_with_exit_2(tmp_path: Path) -> None:
    checkpoint = tmp_path / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    marker = tmp_path / "marker"
    (tmp_path / "recipe.toml").write_text(
        f'schema_version = 1\n[model]\ncheckpoint = "mlp.pt"\nfactory = "os:system"\n'
        f'kwargs = {{ command = "touch {marker}" }}\n[inputs]\nspecs = ["x:float32:batch=4,16"]\n'
    )
    completed = subprocess.run(
        [sys.executable, "-m", "exporter", "export", "--recipe", str(tmp_path / "recipe.toml")],
        cwd=tmp_path,
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == ExitCode.BAD_INPUT, completed.stderr
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "[model].factory 'os:system' is refused" in lines[0], completed.stderr
    assert "Traceback" not in completed.stderr
    assert not marker.exists()


def test_a_users_package_is_refused_until_allow_package_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--allow-package`` on ``export`` is the user's word; without it the package is refused."""
    monkeypatch.chdir(ROOT)  # ``tests`` is importable from the repository, as a user's package would be
    checkpoint = tmp_path / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    (tmp_path / "recipe.toml").write_text(
        'schema_version = 1\n[model]\ncheckpoint = "mlp.pt"\n'
        f'factory = "tests.models:{MODELS["mlp"].factory}"\n'
        '[inputs]\nspecs = ["x:float32:batch=4,16"]\n[benchmark]\nenabled = false\n'
    )
    args = ["export", "--recipe", str(tmp_path / "recipe.toml"), "--to", "onnx", "--out", str(tmp_path / "o")]
    refused = CliRunner().invoke(app, args)
    assert refused.exit_code == ExitCode.BAD_INPUT and "no allowed package" in refused.output
    allowed = CliRunner().invoke(app, [*args, "--allow-package", "tests"])
    assert allowed.exit_code == 0, allowed.output


def test_a_stdlib_function_reached_through_the_recipes_own_file_never_runs_from_the_cli(
    tmp_path: Path,
) -> None:
    """The recipe's reference keeps its rule through the merge with flags into the pipeline's options:
    ``os.system(command=...)`` would touch the marker if the check after import were skipped."""
    checkpoint = tmp_path / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    marker = tmp_path / "marker"
    (tmp_path / "model.py").write_text("import os\n")
    (tmp_path / "recipe.toml").write_text(
        'schema_version = 1\n[model]\ncheckpoint = "mlp.pt"\nfactory = "model.py:os.system"\n'
        f'kwargs = {{ command = "touch {marker}" }}\n[inputs]\nspecs = ["x:float32:batch=4,16"]\n'
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", "--recipe", str(tmp_path / "recipe.toml"), "--out", str(out)])
    assert result.exit_code == ExitCode.BAD_INPUT, result.output
    assert "not a function or class written in Python" in result.output
    assert not marker.exists() and not out.exists()

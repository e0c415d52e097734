"""``exporter recipes``: list a folder's recipes and the targets that do not apply to each."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from exporter.cli.shared import AllowPackages, DebugFlag, guarded, out, rich_table
from exporter.recipe.document import Recipe, load_recipe

__all__ = ["recipes_command"]


def recipes_command(
    folder: Annotated[Path, typer.Argument(help="A folder of recipes.")] = Path("recipes"),
    allow_packages: AllowPackages = None,
    debug: DebugFlag = False,
) -> None:
    """List the recipes in FOLDER: name, pattern, targets, and targets that do not apply (and why)."""
    from exporter.gate.runs import find_recipes

    def action() -> list[Recipe]:
        return [load_recipe(path, allow_packages or ()) for path in find_recipes([folder])]

    rows = [
        [
            recipe.path.name,
            str(recipe.settings.get("name", recipe.path.stem)),
            recipe.description,
            ", ".join(recipe.settings.get("targets", ["onnx"])),
            "; ".join(f"{t}: {why}" for t, why in recipe.not_applicable.items()) or "-",
        ]
        for recipe in guarded(debug, action)
    ]
    out.print(
        rich_table(f"Recipes in {folder}", (["file", "name", "pattern", "targets", "not applicable"], rows))
    )

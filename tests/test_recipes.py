"""Every recipe in recipes/ loads and exports end to end (Optimum's "all models tested" habit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.recipe.document import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.toml"))


def test_there_are_recipes() -> None:
    assert len(RECIPES) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_recipe_exports_and_verifies(recipe: Path, tmp_path: Path) -> None:
    loaded = load_recipe(recipe)
    checkpoint = loaded.settings.get("checkpoint")
    hf_folder = checkpoint is not None and (checkpoint / "config.json").is_file()
    assert loaded.inputs or hf_folder, "a recipe must say what the model is fed (or name a folder)"
    result = CliRunner().invoke(
        app, ["export", "--recipe", str(recipe), "--out", str(tmp_path / "out"), "--no-benchmark"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["name"] == loaded.settings["name"]
    assert len(report["parity"][-1]["cases"]) >= 3

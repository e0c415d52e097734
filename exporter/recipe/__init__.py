"""Recipes: TOML files that describe a model, its inputs and its stages, and the code they may name."""

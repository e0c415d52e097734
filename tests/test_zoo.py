"""The recipe zoo: every factory builds deterministically and runs on its recipe's inputs, every zoo recipe
points at a factory and a checkpoint that fit, and the scripting-only patterns behave as their recipes claim.

Full exports of the zoo recipes run in ``tests/test_recipes.py``; these tests stay fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from exporter.backends.target_names import TARGETS
from exporter.recipe.document import load_recipe
from exporter.specs.inputs import InputSpec, make_inputs
from exporter.zoo import ZOO
from exporter.zoo.build_checkpoints import build_all
from exporter.zoo.dynamic_depth import DynamicDepthNet
from exporter.zoo.moe import TopKMixtureOfExperts
from exporter.zoo.weightnorm import WeightNormLinear

RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"
ZOO_RECIPES = sorted(RECIPES_DIR.glob("zoo_*.toml"))
NAMES = sorted(ZOO)
MAX_PARAMETERS = 200_000
MAX_CHECKPOINT_BYTES = 1_000_000


def factory_for(name: str) -> Callable[..., nn.Module]:
    module_name, _, attr = ZOO[name].partition(":")
    factory: Callable[..., nn.Module] = getattr(importlib.import_module(module_name), attr)
    return factory


def recipe_inputs(name: str, seed: int = 0) -> list[Tensor]:
    """Inputs drawn at the recipe's example sizes, in the recipe's order."""
    recipe = load_recipe(RECIPES_DIR / f"zoo_{name}.toml")
    spec = InputSpec(recipe.inputs, recipe.dims)
    arrays = make_inputs(spec, spec.example_sizes, seed)
    return [torch.from_numpy(arrays[n]) for n in spec.names]


def test_zoo_has_every_pattern() -> None:
    assert set(ZOO) == {
        "mlp",
        "conv",
        "residual",
        "attention",
        "lstm",
        "lstm_cells",
        "moe",
        "weightnorm",
        "dynamic_depth",
    }
    for ref in ZOO.values():
        assert ref.startswith("exporter.zoo.") and ":build_" in ref


@pytest.mark.parametrize("name", NAMES)
def test_factory_builds_runs_and_is_deterministic(name: str) -> None:
    first, second = factory_for(name)(), factory_for(name)()
    assert not first.training, "factories return the model in eval mode"
    assert sum(p.numel() for p in first.parameters()) < MAX_PARAMETERS
    own, other = first.state_dict(), second.state_dict()
    assert own.keys() == other.keys()
    assert all(torch.equal(own[k], other[k]) for k in own)
    inputs = recipe_inputs(name)
    with torch.no_grad():
        out_first, out_second = first(*inputs), second(*inputs)
    assert isinstance(out_first, Tensor)
    assert out_first.shape[0] == inputs[0].shape[0], "the batch dim comes out first"
    assert torch.isfinite(out_first).all()
    assert torch.equal(out_first, out_second)


@pytest.mark.parametrize("name", NAMES)
def test_factory_is_not_disturbed_by_the_global_seed(name: str) -> None:
    torch.manual_seed(1234)
    seeded_elsewhere = factory_for(name)().state_dict()
    fresh = factory_for(name)().state_dict()
    assert all(torch.equal(seeded_elsewhere[k], fresh[k]) for k in fresh)


def test_every_zoo_model_has_a_recipe() -> None:
    assert sorted(p.stem for p in ZOO_RECIPES) == sorted(f"zoo_{name}" for name in ZOO)


@pytest.mark.parametrize("path", ZOO_RECIPES, ids=[p.stem for p in ZOO_RECIPES])
def test_recipe_loads_and_its_checkpoint_fits(path: Path) -> None:
    recipe = load_recipe(path)
    settings = recipe.settings
    name = path.stem.removeprefix("zoo_")
    assert settings["name"] == path.stem
    assert recipe.description.strip()
    assert settings["model_ref"] in ZOO.values()
    assert ZOO[name] == settings["model_ref"]
    targets = set(settings["targets"])
    assert targets, "a recipe exports at least one target"
    assert targets.isdisjoint(recipe.not_applicable)
    assert targets | set(recipe.not_applicable) == set(TARGETS), "every left-out target says why"
    assert settings["batch_sizes"] == [1, 8]
    assert any(d.label == "batch" and d.min == 1 and d.max == 64 for d in recipe.dims)
    checkpoint = Path(settings["checkpoint"])
    assert checkpoint == RECIPES_DIR / "checkpoints" / f"{name}.pt"
    assert checkpoint.is_file()
    assert checkpoint.stat().st_size < MAX_CHECKPOINT_BYTES
    weights = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model = factory_for(name)()
    result = model.load_state_dict(weights, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_is_what_the_factory_builds(name: str) -> None:
    """A stale checkpoint (factory changed, build_checkpoints not rerun) fails here.

    Seeded parameters must match exactly; BatchNorm statistics come from forward passes, whose convolution
    kernels differ by CPU (AVX2 vs AVX-512 builds round differently: 1e-8 apart, seen here), so they
    match within float32 rounding. A changed factory moves them by far more.
    """
    saved = torch.load(RECIPES_DIR / "checkpoints" / f"{name}.pt", map_location="cpu", weights_only=True)
    built = factory_for(name)().state_dict()
    assert saved.keys() == built.keys()
    for key, value in built.items():
        if key.endswith(("running_mean", "running_var")):
            assert torch.allclose(saved[key], value, rtol=1e-5, atol=1e-6), key
        else:
            assert torch.equal(saved[key], value), key


def test_build_checkpoints_is_deterministic(tmp_path: Path) -> None:
    first = build_all(tmp_path / "a")
    second = build_all(tmp_path / "b")
    assert [p.name for p in first] == [f"{name}.pt" for name in ZOO]
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a.name


@pytest.mark.parametrize("name", ["mlp", "conv", "residual"])
def test_batchnorm_running_stats_are_warmed_up(name: str) -> None:
    norms = [m for m in factory_for(name)().modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms
    for norm in norms:
        assert norm.running_mean is not None and norm.running_var is not None
        assert norm.num_batches_tracked is not None
        assert norm.running_mean.abs().max() > 1e-3
        assert (norm.running_var - 1).abs().max() > 1e-3
        assert int(norm.num_batches_tracked) > 0


def test_residual_calls_each_relu_module_once() -> None:
    model = factory_for("residual")()
    calls: dict[str, int] = {}
    for module_name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            module.register_forward_hook(
                lambda *_, key=module_name: calls.__setitem__(key, calls.get(key, 0) + 1)
            )
    with torch.no_grad():
        model(*recipe_inputs("residual"))
    assert len(calls) >= 7
    assert set(calls.values()) == {1}, calls
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2


def test_moe_mixes_exactly_k_experts_per_token() -> None:
    model = factory_for("moe")()
    assert isinstance(model, TopKMixtureOfExperts)
    (tokens,) = recipe_inputs("moe")
    with torch.no_grad():
        weights = model.routing(model.norm(tokens))  # (B, T, E)
    assert weights.shape == (*tokens.shape[:2], len(model.experts))
    assert ((weights > 0).sum(-1) == model.k).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(tokens.shape[:2]))
    used = (weights > 0).flatten(0, 1).any(0)
    assert used.sum() > model.k, "the gate routes different tokens to different experts"


def test_weightnorm_layer_normalises_rows_to_g() -> None:
    model = factory_for("weightnorm")()
    layers = [m for m in model.modules() if isinstance(m, WeightNormLinear)]
    assert len(layers) == 3
    for layer in layers:
        with torch.no_grad():
            row_norms = torch.linalg.vector_norm(layer.weight(), dim=1)
            torch.testing.assert_close(row_norms, layer.g)
            assert not torch.allclose(layer.weight(), layer.v), "g differs from ||v||, so it matters"
    keys = set(model.state_dict())
    assert {"fc1.v", "fc1.g", "fc1.bias"} <= keys
    assert not any(k.endswith(("weight_v", "weight_g", "original0")) for k in keys)


@pytest.mark.parametrize("length", [3, 17])
def test_scripted_lstm_cells_match_eager_at_any_length(length: int) -> None:
    model = factory_for("lstm_cells")()
    scripted = torch.jit.script(model)
    sequence = torch.randn(2, length, 16)
    with torch.no_grad():
        expected, actual = model(sequence), scripted(sequence)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5)
    assert "prim::Loop" in str(scripted.graph)


def test_lstm_cells_scripted_once_runs_two_lengths() -> None:
    model = factory_for("lstm_cells")()
    scripted = torch.jit.script(model)
    short, long = torch.randn(3, 4, 16), torch.randn(3, 11, 16)
    with torch.no_grad():
        for sequence in (short, long):
            torch.testing.assert_close(scripted(sequence), model(sequence), atol=1e-6, rtol=1e-5)
        prefix = long[:, :4]
        torch.testing.assert_close(scripted(prefix), model(prefix), atol=1e-6, rtol=1e-5)
        assert not torch.allclose(model(long), model(prefix)), "every time step changes the output"


def depth_inputs() -> tuple[Tensor, Tensor]:
    """Two inputs of the same shape, one taking the deep path and one the shallow one."""
    x = torch.randn(4, 16)
    return x.abs(), -x.abs()


def test_dynamic_depth_takes_different_depths() -> None:
    model = factory_for("dynamic_depth")()
    assert isinstance(model, DynamicDepthNet)
    deep, shallow = depth_inputs()
    assert model.depth(deep) == model.deep == 3
    assert model.depth(shallow) == model.shallow == 1


def test_scripted_dynamic_depth_keeps_the_branch() -> None:
    model = factory_for("dynamic_depth")()
    scripted = torch.jit.script(model)
    with torch.no_grad():
        for x in depth_inputs():
            torch.testing.assert_close(scripted(x), model(x), atol=1e-6, rtol=1e-5)
    graph = str(scripted.inlined_graph)
    assert "prim::If" in graph and "prim::Loop" in graph


def test_traced_dynamic_depth_freezes_the_depth() -> None:
    model = factory_for("dynamic_depth")()
    deep, shallow = depth_inputs()
    traced = torch.jit.trace(model, (deep,), check_trace=False)
    with torch.no_grad():
        torch.testing.assert_close(traced(deep), model(deep), atol=1e-6, rtol=1e-5)
        frozen, expected = traced(shallow), model(shallow)
    assert (frozen - expected).abs().max() > 1e-2, "the trace replays 3 steps where eager takes 1"

"""``--to`` targets: ``all`` expands, order is canonical, unknown names are usage errors."""

from __future__ import annotations

import pytest

from exporter.backends.target_names import TARGET_BACKENDS, TARGETS, expand_targets
from exporter.errors import ExitCode, UsageError


def test_all_expands_to_every_target_in_order() -> None:
    assert expand_targets(["all"]) == TARGETS == ("onnx", "torchscript", "compile", "openvino")


def test_duplicates_collapse_and_order_is_canonical() -> None:
    assert expand_targets(["compile", "onnx", "compile"]) == ("onnx", "compile")


@pytest.mark.parametrize("requested", [["tensorrt"], []])
def test_unknown_or_missing_targets_are_usage_errors(requested: list[str]) -> None:
    with pytest.raises(UsageError, match="--to") as raised:
        expand_targets(requested)
    assert raised.value.exit_code is ExitCode.BAD_INPUT


def test_every_target_names_its_backends() -> None:
    assert set(TARGET_BACKENDS) == set(TARGETS)
    assert TARGET_BACKENDS["compile"] == ("torch-compile", "aotinductor")


def test_skip_leaves_targets_out_of_all() -> None:
    assert expand_targets(["all"], skip=["compile"]) == ("onnx", "torchscript", "openvino")
    assert expand_targets(["onnx"], skip=["compile"]) == ("onnx",)


@pytest.mark.parametrize(
    ("requested", "skip", "message"),
    [(["all"], ["tensorrt"], "--skip tensorrt"), (["onnx"], ["onnx"], "leaves no target")],
)
def test_a_bad_skip_is_a_usage_error(requested: list[str], skip: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message) as raised:
        expand_targets(requested, skip)
    assert raised.value.exit_code is ExitCode.BAD_INPUT

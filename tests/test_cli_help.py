"""Help texts that list choices are derived from the registries (backends, optimize passes), so a backend or
pass registered there shows in ``--help`` with no change to the CLI."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from exporter.backends.registry import backends, servable_backends, targets
from exporter.cli import app
from exporter.optimize.passes import OPTIMIZE_STEPS

runner = CliRunner()
WIDE = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}


def _help(*command: str) -> str:
    result = runner.invoke(app, [*command, "--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split()).replace("- ", "-")  # the help column wraps after hyphens


def test_export_to_help_lists_every_target_with_what_its_backends_make() -> None:
    output = _help("export")
    assert "openvino" in targets()  # the target the hand-written help once left out
    for target in targets():
        made = [s.help for s in backends() if s.target == target and s.build is not None and s.help]
        assert f"{target} ({'; '.join(made)})" in output
    assert "or all; repeat for several [default: onnx]" in output


def test_export_optimize_help_lists_every_pass() -> None:
    assert f"steps from {','.join(OPTIMIZE_STEPS)} (comma-separated)" in _help("export")


@pytest.mark.parametrize("command", ["serve", "package"])
def test_backend_help_lists_every_servable_backend_and_only_those(command: str) -> None:
    output = _help(command)
    listed = output.split("--backend <str> ")[1].split(" --")[0]
    assert f": {', '.join(servable_backends())} " in listed
    in_process = [s.name for s in backends() if not s.servable]
    assert in_process and all(f" {name}," not in listed and f" {name} " not in listed for name in in_process)

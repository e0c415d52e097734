"""The README cannot lie: its demo command is the Makefile's and it runs; its documented flags exist."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _readme_commands() -> list[str]:
    """``exporter export ...`` commands in bash blocks, with backslash continuations joined."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        joined = block.replace("\\\n", " ")
        commands += [
            " ".join(line.split()) for line in joined.splitlines() if line.startswith("exporter export")
        ]
    return commands


def test_readme_names_the_two_commands_and_ci_runs_the_test_one() -> None:
    assert "make demo" in README and "make test" in README
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_every_make_target_the_readme_names_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z-]*)`", README)) | set(
        re.findall(r"^make ([a-z-]+)", README, re.M)
    )
    assert "setup" in named and named <= targets, named - targets


def test_readme_demo_command_is_what_make_demo_runs() -> None:
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    demo = next(c for c in _readme_commands() if "digits" in c)
    for token in shlex.split(demo)[2:]:
        assert token in makefile, f"{token!r} is in the README's demo command but not in `make demo`"


@pytest.mark.slow
@pytest.mark.parametrize("command", _readme_commands())
def test_readme_command_runs_and_verifies_at_three_shapes(command: str, tmp_path: Path) -> None:
    args = shlex.split(command)[1:]
    completed = subprocess.run(
        [sys.executable, "-m", "exporter", *args, "--out", str(tmp_path / "out")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    shipped = next(p for p in report["parity"] if p["artifact"] == report["conversion"]["shipped"])
    assert len(shipped["cases"]) >= 3 and shipped["passed"]
    assert {"pytorch-eager", "onnxruntime"} <= {row["backend"] for row in report["latency"]}
    if "all" in args:
        backends = {b["backend"]: b for b in report["backends"]}
        backends.pop("onnxruntime-optimized", None)  # ships only when its rewrites are faster here
        assert set(backends) == {"onnxruntime", "torchscript", "torch-compile", "aotinductor", "openvino"}
        assert all(b["passed"] for b in backends.values()), backends
        assert set(backends) <= {row["backend"] for row in report["latency"]}
        assert "Parity matrix" in completed.stdout and "Latency matrix" in completed.stdout
    if "--quantize" in args:
        quantization = report["quantization"]
        assert quantization["float"]["accuracy"] is not None, (
            "the demo reports float accuracy on held-out data"
        )
        built = [c for c in quantization["candidates"] if c["error"] is None]
        assert built and all(c["accuracy"] is not None for c in built), "int8 accuracy on held-out data"
        # Whether int8 ships depends on this CPU's speed (int8 never ships slower than float), so the test
        # only checks that whatever shipped met the budget.
        assert all(c["budget_passed"] for c in quantization["candidates"] if c["chosen"])

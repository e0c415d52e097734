"""Fault injection: SIGINT/SIGTERM at random points of a ``--to all --quantize int8`` export into a folder
that holds an earlier export. Whatever stage the signal lands in, the earlier export must stay
byte-identical and no staging folder, old folder or lock may remain."""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.models import MODELS

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261202


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_signals_at_random_points_never_damage_the_earlier_export(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    out = tmp_path / "runs" / "mlp"
    command = [
        sys.executable,
        "-m",
        "exporter",
        "export",
        str(state_dict_checkpoint("mlp")),
        "--model",
        MODELS["mlp"].ref,
        *(part for spec in MODELS["mlp"].inputs for part in ("--input", spec)),
        "--to",
        "all",
        "--quantize",
        "int8",
        "--no-benchmark",
        "--out",
        str(out),
        "--force",
    ]
    started = time.monotonic()
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    full_run = time.monotonic() - started
    assert first.returncode in (0, 1), first.stdout + first.stderr  # int8 may miss its budget: still written
    before = _snapshot(out)
    assert "manifest.json" in before and "model.pt2" in before

    rng = random.Random(SEED)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGTERM):
        delay = rng.uniform(0.05, 0.85) * full_run
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        time.sleep(delay)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=600)
        where = f"{signal.Signals(signum).name} after {delay:.1f} s of a {full_run:.0f} s run"
        assert process.returncode == 128 + signum, f"{where}: {stdout}{stderr}"
        assert "Traceback" not in stderr, where
        assert _snapshot(out) == before, f"{where}: the earlier export changed"
        leftovers = [p.name for p in out.parent.iterdir() if p.name != out.name]
        assert leftovers == [], f"{where}: left {leftovers}"

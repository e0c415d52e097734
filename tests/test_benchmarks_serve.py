"""benchmarks/serve.py runs end to end on our server alone: the export, the in-process floor, the answer
check, wrk's points and the report files. No timing is asserted; only that the harness measured what it
says it measured (0 errors, every point answered, a lone client's requests never batched)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "serve.py"
WRK = "/usr/bin/wrk"


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(WRK) is None, reason="wrk is not installed (Debian: apt-get install wrk)")
def test_quick_run_on_ours_measures_every_point_without_errors(tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--quick", "--work", str(tmp_path / "work"), "--models", "digits"]
    command += ["--peers", "ours", "--seconds", "1", "--warmup", "1", "--clients", "1,4"]
    command += ["--baseline-seconds", "0.5", "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:] + done.stdout[-2000:]

    report = json.loads((out / "serve.json").read_text())
    rows = {(row["key"], row["clients"]): row for row in report["rows"]}
    assert set(rows) == {("floor", 1), ("ours", 1), ("ours", 4)}
    for key in (("ours", 1), ("ours", 4)):
        row = rows[key]
        assert row["note"] is None, row["note"]
        assert row["errors"] == 0 and row["requests"] > 0
        assert row["server_cpu_ms_per_request"] > 0
    assert rows[("ours", 1)]["rows_per_call"] == 1.0
    assert rows[("ours", 1)]["overhead_p50_ms"] is not None
    assert report["servers"][0]["response_bytes"] > 0
    assert "| digits | ours | 4 |" in (out / "serve.md").read_text()


def test_unknown_server_is_one_line_and_exit_2() -> None:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--peers", "ours,nginx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "unknown server(s): nginx" in done.stderr
    assert "Traceback" not in done.stderr

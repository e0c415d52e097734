"""``exporter export FOLDER`` as a user runs it, on hostile Hugging Face folders: custom code, an unknown
model type, a pickle with a side effect, a missing or absurd size each exit 2 with one line on stderr (no
traceback), nothing from the folder runs and no output or staging folder is left. Each case is a real
process (``python -m exporter``), so stderr is exactly what a user sees."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from exporter.hf.tasks import TASKS
from tests.hf_models import bert_folder

pytestmark = pytest.mark.slow  # each case starts an exporter process (~5 s under load)


class _RunsACommand:
    """Unpickling this calls os.system: what a hostile ``pytorch_model.bin`` carries."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (self.command,)


@pytest.fixture(scope="module")
def saved_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("saved") / "bert")


@pytest.fixture
def folder(saved_bert: Path, tmp_path: Path) -> Path:
    """A fresh copy of the good folder, to be made hostile by the test."""
    return Path(shutil.copytree(saved_bert, tmp_path / "bert"))


def _edit_config(folder: Path, **changes: Any) -> None:
    config = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    (folder / "config.json").write_text(json.dumps(config))


def _export(folder: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "exporter", "export", str(folder), "--to", "onnx", "--out", str(out)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [*command, "--threads", "1", "--no-benchmark", "--optimize", "none", *extra],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env=environment,
    )


def _refused_in_one_line(completed: subprocess.CompletedProcess[str], out: Path) -> str:
    """The one stderr line of a refusal, after checking exit 2, no traceback and nothing written."""
    shown = completed.stdout + completed.stderr
    assert completed.returncode == 2, shown
    assert "Traceback" not in shown
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1, completed.stderr
    assert not out.exists()
    assert not any(out.parent.iterdir()), sorted(p.name for p in out.parent.iterdir())  # no staging, no lock
    return lines[0]


def _auto_map(folder: Path) -> None:
    _edit_config(folder, auto_map={"AutoModel": "modeling_evil.EvilModel"})


def _unknown_model_type(folder: Path) -> None:
    _edit_config(folder, model_type="evil_bert")


def _missing_vocab_size(folder: Path) -> None:
    _edit_config(folder, vocab_size=None)


def _absurd_layers(folder: Path) -> None:
    _edit_config(folder, num_hidden_layers=10**9)


@pytest.mark.parametrize(
    ("make_hostile", "expected"),
    [
        (_auto_map, "names custom code (auto_map: "),
        (_unknown_model_type, "names model_type 'evil_bert', which this transformers does not know"),
        (_missing_vocab_size, "config.json has no vocab_size"),
        (_absurd_layers, "config.json's num_hidden_layers is 1000000000"),
    ],
    ids=["auto_map", "unknown-model-type", "missing-vocab-size", "absurd-layers"],
)
def test_a_hostile_config_exits_2_in_one_line_and_writes_nothing(
    folder: Path, tmp_path: Path, make_hostile: Callable[[Path], None], expected: str
) -> None:
    make_hostile(folder)
    out = tmp_path / "outs" / "x"
    out.parent.mkdir()
    line = _refused_in_one_line(_export(folder, out), out)
    assert expected in line
    assert str(folder) in line or "config.json" in line


def test_a_pickle_that_runs_a_command_is_refused_and_never_runs(folder: Path, tmp_path: Path) -> None:
    marker = tmp_path / "MARKER"
    (folder / "model.safetensors").unlink()
    torch.save({"weights": _RunsACommand(f"touch {marker}")}, folder / "pytorch_model.bin")
    out = tmp_path / "outs" / "x"
    out.parent.mkdir()
    line = _refused_in_one_line(_export(folder, out), out)
    assert "pytorch_model.bin" in line and "holds pickled Python objects" in line
    assert "--trust-checkpoint" in line
    assert not marker.exists()


def test_an_unknown_task_exits_2_naming_the_choices(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "outs" / "x"
    out.parent.mkdir()
    line = _refused_in_one_line(_export(folder, out, "--task", "foo"), out)
    assert "--task foo" in line
    assert all(name in line for name in TASKS)


def test_trust_checkpoint_lets_auto_map_past_the_refusal_only_to_what_transformers_does_offline(
    folder: Path, tmp_path: Path
) -> None:
    """Trusted, the folder is handed to transformers, which finds no ``modeling_evil.py`` offline: a clear
    one-line load error (exit 2), never a crash or a half-written folder."""
    _auto_map(folder)
    out = tmp_path / "outs" / "x"
    out.parent.mkdir()
    completed = _export(folder, out, "--trust-checkpoint")
    shown = completed.stdout + completed.stderr
    assert completed.returncode in (0, 2), shown
    assert "Traceback" not in shown
    assert "names custom code" not in shown
    if completed.returncode == 2:
        line = _refused_in_one_line(completed, out)  # torchao's import-time lines silenced, too
        assert "modeling_evil" in line and line.startswith("error (load): ")
    else:
        assert (out / "model.onnx").is_file()

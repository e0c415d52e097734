"""Second attack round on loading (issue 21): each crafted checkpoint ran code or exhausted memory before.

Every crafted file is a real saved artifact with records added or swapped; "nothing ran" is observed
through a marker file the payload would write.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from exporter.errors import ExitCode, LoadError
from exporter.loading.checkpoint import CheckpointFormat, LoadRequest, load_model
from tests.conftest import export_tiny_mlp
from tests.test_loading_trust import _code, _payload, _rewrite, save_linear_program, save_scripted_linear


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


@pytest.fixture
def exported(tmp_path: Path) -> Path:
    return save_linear_program(tmp_path)


@pytest.fixture
def scripted(tmp_path: Path) -> Path:
    return save_scripted_linear(tmp_path)


def _records(path: Path) -> tuple[str, dict[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        root = archive.namelist()[0].split("/", 1)[0]
        return root, {info.filename.split("/", 1)[1]: archive.read(info) for info in archive.infolist()}


def _second_program(exported: Path, tmp_path: Path, marker: Path, model_file: str, model_name: str) -> Path:
    """The reported attack: a second program whose name makes torch read a config the audit skipped.

    ``models/x/y.json`` makes ``torch.export.load`` read ``data/weights/x/y_weights_config.json``, whose
    ``use_pickle`` entry points at a payload without a ``.pt``/``.pkl`` suffix.
    """
    _, records = _records(exported)
    config = json.loads(records["data/weights/model_weights_config.json"])
    config["config"]["weight"].update(use_pickle=True, path_name="payload")
    extra = {
        model_file: records["models/model.json"],
        f"data/sample_inputs/{model_name}.pt": records["data/sample_inputs/model.pt"],
        f"data/constants/{model_name}_constants_config.json": records[
            "data/constants/model_constants_config.json"
        ],
        f"data/weights/{model_name}_weights_config.json": json.dumps(config).encode(),
        "data/weights/payload": _payload(marker),
    }
    return _rewrite(exported, tmp_path / "evil.pt2", {}, extra)


@pytest.mark.parametrize(
    ("model_file", "model_name"),
    [("models/x/y.json", "x/y"), ("models/.json", ""), ("models/a/b/c.json", "a/b/c")],
    ids=["nested", "empty-name", "deep"],
)
def test_second_program_with_a_slash_in_its_name_is_refused(
    exported: Path, tmp_path: Path, marker: Path, model_file: str, model_name: str
) -> None:
    path = _second_program(exported, tmp_path, marker, model_file, model_name)
    with pytest.raises(LoadError, match=r"stores weight 'weight' as a pickle \(.*weights_config.json"):
        load_model(LoadRequest(path))
    assert not marker.exists()
    with contextlib.suppress(LoadError):
        load_model(LoadRequest(path, trust_checkpoint=True))
    assert marker.exists(), "the crafted record is not read by torch: the test proves nothing"


def test_program_record_without_a_json_suffix_is_still_checked(
    exported: Path, tmp_path: Path, marker: Path
) -> None:
    """torch reads every record under ``models/`` as a program, whatever its suffix; so is it checked."""
    _, records = _records(exported)
    program, count = re.subn(
        r'"expr_str": "[^"]*"',
        lambda _: f'"expr_str": {json.dumps(_code(marker))}',
        records["models/model.json"].decode(),
    )
    assert count, "the fixture program has no symbolic shape to tamper with"
    model_file = "models/evil_program"
    name = model_file[len("models/") : -len(".json")]  # how torch names it: "evil_pr"
    extra = {
        model_file: program.encode(),
        f"data/sample_inputs/{name}.pt": records["data/sample_inputs/model.pt"],
        f"data/weights/{name}_weights_config.json": records["data/weights/model_weights_config.json"],
        f"data/constants/{name}_constants_config.json": records["data/constants/model_constants_config.json"],
    }
    path = _rewrite(exported, tmp_path / "evil.pt2", {}, extra)
    with pytest.raises(LoadError, match=r"shape expression in models/evil_program that is not plain"):
        load_model(LoadRequest(path))
    assert not marker.exists()
    with contextlib.suppress(LoadError):
        load_model(LoadRequest(path, trust_checkpoint=True))
    assert marker.exists(), "the crafted record is not read by torch: the test proves nothing"


def test_the_second_program_is_refused_by_inspect_and_verify_checkpoint(
    exported: Path, tmp_path: Path, marker: Path
) -> None:
    """``inspect`` and ``verify --checkpoint`` load through the same audit: one line, exit 2, nothing ran."""
    path = _second_program(exported, tmp_path, marker, "models/x/y.json", "x/y")
    (tmp_path / "export").mkdir()
    folder = export_tiny_mlp(tmp_path / "export")
    for argv in (["inspect", str(path)], ["verify", str(folder), "--checkpoint", str(path)]):
        command = [sys.executable, "-m", "exporter", *argv]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
        assert not marker.exists(), argv
        assert done.returncode == ExitCode.BAD_INPUT, (argv, done.stderr)
        assert "x/y_weights_config.json: use_pickle" in done.stderr
        assert "Traceback" not in done.stderr


def _deflated(src: Path, dst: Path) -> Path:
    """The same records, deflated: what a zip tool (or an attacker) makes of a torch archive."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as new:
        for info in old.infolist():
            new.writestr(info.filename, old.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return dst


def test_zip_bomb_state_dict_is_refused_before_it_is_inflated(tmp_path: Path) -> None:
    """64 MiB of zeros deflates to ~64 KiB; torch's reader would inflate it whole."""
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(16 * 1024 * 1024)}, plain)
    bomb = _deflated(plain, tmp_path / "bomb.pt")
    assert bomb.stat().st_size < plain.stat().st_size // 100
    refusal = r"has a compressed zip record '.*/data/0' \(.* that inflates to 64\.0 MiB; .* in all\)"
    with pytest.raises(LoadError, match=refusal):
        load_model(LoadRequest(bomb, model_ref="tests.models:make_mlp"))


def test_compressed_pt2_and_torchscript_archives_are_refused(
    exported: Path, scripted: Path, tmp_path: Path
) -> None:
    for source in (exported, scripted):
        with pytest.raises(LoadError, match="compressed zip record"):
            load_model(LoadRequest(_deflated(source, tmp_path / f"deflated{source.suffix}")))


def test_compressed_code_records_past_the_budget_are_refused(scripted: Path, tmp_path: Path) -> None:
    """torch.jit.save deflates ``code/``; a code record that inflates to 80 MiB is a bomb all the same."""
    bomb = tmp_path / "bomb.ts"
    with zipfile.ZipFile(scripted) as old, zipfile.ZipFile(bomb, "w") as new:
        for info in old.infolist():
            new.writestr(info, old.read(info))
        root = old.namelist()[0].split("/", 1)[0]
        new.writestr(f"{root}/code/bomb.py", b"#" * (80 << 20), compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(LoadError, match=r"'legit/code/bomb.py' \(.* that inflates to 80\.0 MiB"):
        load_model(LoadRequest(bomb))


def test_trusted_archive_is_not_audited_for_compression(scripted: Path, tmp_path: Path) -> None:
    """--trust-checkpoint skips the audit entirely: the user vouched for the file."""
    deflated = _deflated(scripted, tmp_path / "deflated.ts")
    loaded = load_model(LoadRequest(deflated, trust_checkpoint=True))
    assert loaded.format is CheckpointFormat.TORCHSCRIPT


def test_trusted_pickled_module_finds_its_class_in_the_working_directory(tmp_path: Path) -> None:
    """The class lives in ``./my_net.py``; --model resolution imports from there, so unpickling must too."""
    (tmp_path / "my_net.py").write_text(
        "import torch\n\nclass MyNet(torch.nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        self.fc = torch.nn.Linear(3, 2)\n\n"
        "    def forward(self, x):\n        return self.fc(x)\n"
    )
    save = "import torch, my_net; torch.save(my_net.MyNet(), 'whole.pt')"
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path, check=True, timeout=120)
    env = {**os.environ, "PYTHONPATH": ""}
    console_script = Path(sys.executable).with_name("exporter")  # sys.path[0] is its folder, not the cwd
    done = subprocess.run(
        [str(console_script), "inspect", "whole.pt", "--trust-checkpoint"],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "MyNet" in done.stdout + done.stderr


def test_what_torch_compresses_is_what_the_audit_allows(scripted: Path, exported: Path) -> None:
    """The refusal rests on what torch writes: keep that assumption checked against torch itself."""
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(1000)}, buffer)
    buffer.seek(0)
    for archive in (zipfile.ZipFile(buffer), zipfile.ZipFile(exported)):
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    with zipfile.ZipFile(scripted) as archive:
        deflated = {i.filename.split("/", 1)[1] for i in archive.infolist() if i.compress_type}
    assert deflated and all(name.startswith("code/") for name in deflated)


def test_a_program_torch_fails_to_read_is_one_line_without_torchs_logged_traceback(
    exported: Path, tmp_path: Path, marker: Path
) -> None:
    """torch.export.load logs the whole traceback as a warning before raising: the user sees one line."""
    path = _second_program(exported, tmp_path, marker, "models/x/y.json", "x/y")
    command = [sys.executable, "-m", "exporter", "inspect", str(path), "--trust-checkpoint"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == ExitCode.BAD_INPUT, done.stderr
    assert "cannot read checkpoint" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1

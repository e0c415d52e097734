"""Each peer's own venv, made on first use: the peers' pins fight ours (MLServer wants uvloop 0.21 and
FastAPI < 0.116, PyTriton numpy < 2), so none of them can share the project's venv or each other's.

``WORK/venvs/PEER`` is made with ``python3.11 -m venv`` and ``pip install -r
benchmarks/serve_peers/requirements-PEER.txt``; a stamp file holding the requirement file's hash says it is
done, so a changed file reinstalls and a finished venv is reused.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

PEERS_DIR = Path(__file__).resolve().parent
BASE_PYTHON = "python3.11"
STAMP = ".requirements.sha256"


class Unavailable(Exception):
    """A server that could not be installed, started or trusted: its row says why in one line."""


def requirements_file(peer: str) -> Path:
    return PEERS_DIR / f"requirements-{peer}.txt"


def ensure_venv(peer: str, work: Path, log: Callable[[str], None]) -> Path:
    """The peer venv's python, installing the venv first if its stamp does not match the requirements."""
    requirements = requirements_file(peer)
    venv = work / "venvs" / peer
    python = venv / "bin" / "python"
    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()
    stamp = venv / STAMP
    if python.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
        return python
    base = shutil.which(BASE_PYTHON)
    if base is None:
        raise Unavailable(f"{BASE_PYTHON} is not on PATH (the peer venvs are made with it)")
    install_log = work / "venvs" / f"{peer}-install.log"
    install_log.parent.mkdir(parents=True, exist_ok=True)
    log(f"{peer}: installing {requirements.name} into {venv} (once; log {install_log})")
    with install_log.open("w") as out:
        steps: Sequence[list[str]] = (
            [base, "-m", "venv", "--clear", str(venv)],
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(requirements)],
        )
        for step in steps:
            out.write(f"$ {' '.join(step)}\n")
            out.flush()
            done = subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                raise Unavailable(f"install failed ({_last_error(install_log)}; log {install_log})")
    stamp.write_text(digest + "\n")
    return python


def _last_error(install_log: Path) -> str:
    lines = [line for line in install_log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[0][:200]


def package_versions(python: Path, packages: Sequence[str]) -> dict[str, str | None]:
    """Installed versions of ``packages`` in the venv of ``python`` (None: not installed)."""
    script = (
        "import importlib.metadata as m, json, sys\n"
        "def v(p):\n"
        "    try:\n        return m.version(p)\n"
        "    except m.PackageNotFoundError:\n        return None\n"
        "print(json.dumps({p: v(p) for p in sys.argv[1:]}))"
    )
    done = subprocess.run([str(python), "-c", script, *packages], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return dict.fromkeys(packages)
    versions: dict[str, str | None] = json.loads(done.stdout)
    return versions


def library_dir(python: Path) -> str:
    """The lib folder of the Python a venv was made from (sysconfig LIBDIR, where libpython lives)."""
    done = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_config_var('LIBDIR'))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()

"""The servers measured, how each is started on a model.onnx, and its process tree's CPU time.

Every server serves the same model.onnx with ``ort_session.open_session``'s settings (ours: its own
``onnxruntime_session(spinning=False)``, the same settings) and ``threads`` intra-op threads in all: one
process with ``threads`` threads, or ``--workers 2`` sharing them. Each runs in its own session (process
group), so stopping it reaches its children (MLServer's inference worker, tritonserver and its Python stub).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from serve_peers.venvs import PEERS_DIR, Unavailable, ensure_venv, library_dir

ROOT = PEERS_DIR.parent.parent
Counters = Callable[[], tuple[float, float] | None]
"""Rows and model calls the server has run so far (from its metrics), or None if it exports no such count."""


@dataclass
class Target:
    """What a server is asked to serve, and where it may write its settings and log."""

    served_name: str
    folder: Path
    """The artifacts folder (``exporter export``'s output); the peers read its model.onnx."""
    threads: int
    max_batch: int
    run_dir: Path

    @property
    def onnx(self) -> Path:
        return self.folder / "model.onnx"


@dataclass
class Launch:
    command: list[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    counters: Counters | None = None
    settings: str = ""
    """One line: how this server batches and runs the model (the header and JSON carry it)."""


@dataclass(frozen=True)
class ServerKind:
    key: str
    label: str
    venv: str | None
    """The peer venv's name (``requirements-NAME.txt``), or None for the project's venv."""
    packages: tuple[str, ...]
    """Whose versions the report names."""
    launch: Callable[[Target, Path], Launch]
    """(target, the venv's python) -> the command line and how to read the server's counters."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http(url: str, body: bytes | None = None, timeout: float = 10.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _metric_sums(url: str, names: tuple[str, str]) -> tuple[float, float] | None:
    """The sums over label sets of two Prometheus samples (``name`` or ``name{...}``) at ``url``."""
    with contextlib.suppress(OSError):
        status, text = http(url, timeout=5.0)
        if status != 200:
            return None
        totals = dict.fromkeys(names, 0.0)
        for line in text.decode(errors="replace").splitlines():
            match = re.match(r"^(\w+)(?:\{[^}]*\})?\s+(\S+)$", line)
            if match and match.group(1) in totals:
                totals[match.group(1)] += float(match.group(2))
        return totals[names[0]], totals[names[1]]
    return None


# ---------------------------------------------------------------------------------------------- launches


def _ours(workers: int | None) -> Callable[[Target, Path], Launch]:
    def launch(target: Target, python: Path) -> Launch:
        port = free_port()
        command = [str(python), "-m", "exporter.serving", str(target.folder), "--backend", "onnxruntime"]
        processes = workers or 1
        threads = max(1, target.threads // processes)
        command += ["--port", str(port), "--threads", str(threads)]
        if workers is not None:
            command += ["--workers", str(workers)]
        url = f"http://127.0.0.1:{port}"
        counters = ("exporter_batch_size_sum", "exporter_batch_size_count")
        return Launch(
            command,
            url,
            counters=lambda: _metric_sums(f"{url}/metrics", counters),
            settings=f"{processes} process(es) x {threads} intra-op thread(s) (--threads is per worker); "
            "otherwise its defaults (batching: see its start-up line)",
        )

    return launch


def _fastapi(target: Target, python: Path) -> Launch:
    port = free_port()
    script = PEERS_DIR / "fastapi_minimal.py"
    command = [str(python), str(script), str(target.onnx), target.served_name, str(port), str(target.threads)]
    return Launch(command, f"http://127.0.0.1:{port}", settings="no batching, session.run on the event loop")


def _mlserver(target: Target, python: Path) -> Launch:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    repository = target.run_dir / "mlserver"
    (repository / target.served_name).mkdir(parents=True, exist_ok=True)
    settings = {"http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port, "debug": False}
    (repository / "settings.json").write_text(json.dumps(settings, indent=2))
    model_settings = {
        "name": target.served_name,
        "implementation": "mlserver_model.OrtModel",
        "parameters": {"uri": str(target.onnx), "extra": {"threads": target.threads}},
    }
    (repository / target.served_name / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    return Launch(
        [str(python.parent / "mlserver"), "start", str(repository)],
        f"http://127.0.0.1:{http_port}",
        env={"PYTHONPATH": str(PEERS_DIR)},
        cwd=repository,
        settings="parallel_workers 1 (its default: inference in one worker process), adaptive batching off "
        "(its default: max_batch_size 0), debug false",
    )


def _kserve(target: Target, python: Path) -> Launch:
    http_port, grpc_port = free_port(), free_port()
    command = [str(python), str(PEERS_DIR / "kserve_server.py"), str(target.onnx), target.served_name]
    command += [str(http_port), str(grpc_port), str(target.threads)]
    return Launch(
        command,
        f"http://127.0.0.1:{http_port}",
        env={"PYTHONPATH": str(PEERS_DIR)},
        settings="ModelServer defaults (1 uvicorn worker, no batching), per-request log lines off",
    )


def _pytriton(target: Target, python: Path) -> Launch:
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    command = [str(python), str(PEERS_DIR / "pytriton_server.py"), str(target.onnx), target.served_name]
    command += [str(p) for p in (http_port, grpc_port, metrics_port, target.threads, target.max_batch)]
    libraries = ":".join(p for p in (library_dir(python), os.environ.get("LD_LIBRARY_PATH")) if p)
    counters = ("nv_inference_count", "nv_inference_exec_count")
    return Launch(
        command,
        f"http://127.0.0.1:{http_port}",
        env={"PYTHONPATH": str(PEERS_DIR), "LD_LIBRARY_PATH": libraries},
        counters=lambda: _metric_sums(f"http://127.0.0.1:{metrics_port}/metrics", counters),
        settings=f"@batch, dynamic batcher with its default queue delay 0 us, max_batch_size "
        f"{target.max_batch}; LD_LIBRARY_PATH={libraries.split(':')[0]} (the stub links libpython)",
    )


WEB = ("onnxruntime", "numpy", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "orjson")
SERVERS = {
    kind.key: kind
    for kind in (
        ServerKind("ours", "ours", None, ("exporter", *WEB, "prometheus-client"), _ours(None)),
        ServerKind("ours-w2", "ours --workers 2", None, ("exporter", *WEB), _ours(2)),
        ServerKind("fastapi", "FastAPI+orjson, 40 lines", None, WEB, _fastapi),
        ServerKind("mlserver", "MLServer", "mlserver", ("mlserver", *WEB), _mlserver),
        ServerKind("kserve", "KServe", "kserve", ("kserve", *WEB), _kserve),
        ServerKind(
            "pytriton",
            "Triton (PyTriton)",
            "pytriton",
            ("nvidia-pytriton", "tritonclient", "onnxruntime", "numpy"),
            _pytriton,
        ),
    )
}


def venv_python(kind: ServerKind, work: Path, log: Callable[[str], None]) -> Path:
    return Path(sys.executable) if kind.venv is None else ensure_venv(kind.venv, work, log)


# -------------------------------------------------------------------------------------------- processes


def _process_table() -> dict[int, tuple[int, int, int]]:
    """pid -> (parent pid, start time in ticks, utime + stime + cutime + cstime in ticks), from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        table[int(entry.name)] = (int(fields[1]), int(fields[19]), sum(int(v) for v in fields[11:15]))
    return table


def _tree(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _start, _ticks) in table.items():
            if ppid == parent and pid not in tree:
                tree.add(pid)
                frontier.append(pid)
    return tree


def tree_cpu_seconds(root: int) -> float:
    """utime + stime (and the reaped children's cutime + cstime) of ``root`` and all its descendants."""
    table = _process_table()
    return sum(table[pid][2] for pid in _tree(root, table) if pid in table) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used (user, nice, system, irq, softirq; /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def _still_alive(started: dict[int, int]) -> list[int]:
    """The pids in ``started`` (pid -> start time) that still run the same process (not a reused pid)."""
    table = _process_table()
    return [
        pid for pid, start in started.items() if pid in table and table[pid][1] == start and _running(pid)
    ]


def _running(pid: int) -> bool:
    """Not a zombie (an orphan's zombie may wait a while for its reaper)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class ServerProcess:
    """One launched server: its own process group, its log in ``log_path``."""

    def __init__(self, launch: Launch, log_path: Path) -> None:
        self.launch = launch
        self.url = launch.url
        self.log_path = log_path
        self.stopped = ""
        """How it ended: exit code and seconds after SIGTERM, or what had to be killed."""
        self._log = log_path.open("w")
        env = os.environ | launch.env
        self.process = subprocess.Popen(
            launch.command,
            cwd=launch.cwd,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_answer(self, infer_url: str, body: bytes, timeout: float) -> bytes:
        """The first 200 answer to ``body``, polling until the server loads its model."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise Unavailable(f"exited with {self.process.returncode}: {self.log_line()}")
            try:
                status, content = http(infer_url, body, timeout=10.0)
            except OSError as error:
                last = f"{type(error).__name__}: {error}"
            else:
                if status == 200:
                    return content
                last = f"HTTP {status}: {content[:160].decode(errors='replace')}"
            time.sleep(0.25)
        raise Unavailable(f"no answer within {timeout:.0f} s ({last})")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)

    def stop(self) -> int:
        """SIGTERM to the group, SIGKILL to whatever is left after 30 s: the group, and every descendant
        seen before the SIGTERM that is still alive (a child may have moved to its own process group)."""
        table = _process_table()
        descendants = {pid: table[pid][1] for pid in _tree(self.process.pid, table) - {self.process.pid}}
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            code = None
        self.stopped = (
            f"exited {code} {time.monotonic() - started:.1f} s after SIGTERM"
            if code is not None
            else "still running 30 s after SIGTERM: killed"
        )
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (alive := _still_alive(descendants)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if alive:
            self.stopped += f"; {len(alive)} descendant(s) outside its group still running 10 s later: killed"
        if code is None:
            code = self.process.wait()
        self._log.close()
        return code

    def log_line(self, prefix: str = "") -> str:
        """The last non-empty log line (starting with ``prefix`` if given: the first such line)."""
        self._log.flush()
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        if prefix:
            return next((line for line in lines if line.startswith(prefix)), "")
        return lines[-1][:200] if lines else "no output"

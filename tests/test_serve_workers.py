"""``exporter serve --workers N``: a supervisor and N server processes on one port (issue 25, item 4).

Real servers in subprocesses on 127.0.0.1 over the tiny MLP's folder; which worker answered is read from the
``X-Exporter-Worker`` header (its pid), checked against the supervisor's children in ``/proc``. Every server
runs with its own ``TMPDIR`` and a marker in its environment, so a test can see that no temp folder and no
process (worker, parser, resource tracker) is left once it exits. Every wait is bounded.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.serving.json_chunks import INLINE_BYTES
from tests.conftest import export_tiny_mlp
from tests.test_serve import NAME, body_of, free_port

ROOT = Path(__file__).resolve().parents[1]
GOOD = np.linspace(-1, 1, 32, dtype=np.float32).reshape(2, 16)
INFER = f"/v2/models/{NAME}/infer"
WAIT_S = 120.0
"""The bound on every wait for a server (start, exit); never reached when things work."""


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_tiny_mlp(tmp_path_factory.mktemp("workers"))


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def worker(self) -> int:
        return int(self.headers["x-exporter-worker"])


def exchange(connection: http.client.HTTPConnection, method: str, path: str, body: Any = None) -> Reply:
    data = None if body is None else json.dumps(body).encode()
    connection.request(method, path, body=data, headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    raw = response.read()
    headers = {key.lower(): value for key, value in response.getheaders()}
    try:
        return Reply(response.status, headers, json.loads(raw))
    except ValueError:
        return Reply(response.status, headers, raw.decode())


@dataclass
class Supervisor:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    temp: Path
    mark: str
    connections: list[http.client.HTTPConnection] = field(default_factory=list)

    def connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        self.connections.append(connection)
        return connection

    def once(self, method: str, path: str, body: Any = None) -> Reply:
        """One request on a connection of its own (so any worker may take it)."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            return exchange(connection, method, path, body)
        finally:
            connection.close()

    def stderr(self) -> str:
        return self.log.read_text()

    def wait_exit(self) -> int:
        try:
            return self.process.wait(timeout=WAIT_S)
        finally:
            for connection in self.connections:
                connection.close()

    def children(self) -> set[int]:
        return {pid for pid in _pids() if _parent(pid) == self.process.pid}


def start_workers(
    folder: Path, tmp_path: Path, *flags: str, script: Path | None = None, wait: bool = True
) -> Supervisor:
    """``python -m exporter.serving FOLDER --workers 2 --threads 1 FLAGS`` (or ``script``), once its one
    ``ready`` line is logged (every worker is ready then), or once it exited (or at once: ``wait``)."""
    port = free_port()
    temp = tmp_path / "tmp"
    temp.mkdir()
    mark = uuid.uuid4().hex
    log = tmp_path / "stderr.log"
    entry = [str(script)] if script else ["-m", "exporter.serving"]
    command = [sys.executable, *entry, str(folder), "--port", str(port), "--workers", "2", "--threads", "1"]
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [*command, *flags],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "TMPDIR": str(temp), "EXPORTER_TEST_MARK": mark, "PYTHONPATH": str(ROOT)},
            start_new_session=True,  # its own process group, as a shell's job: a test can Ctrl-C it
        )
    server = Supervisor(process, port, log, temp, mark)
    if not wait:
        return server
    deadline = time.monotonic() + WAIT_S
    while "exporter serve: ready:" not in server.stderr() and process.poll() is None:
        assert time.monotonic() < deadline, server.stderr()
        time.sleep(0.02)
    return server


def _pids() -> list[int]:
    return [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _marked(mark: str) -> list[int]:
    """The processes whose environment holds ``mark``: the server and everything it started."""
    found = []
    for pid in _pids():
        try:
            if f"EXPORTER_TEST_MARK={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def assert_nothing_left(server: Supervisor) -> None:
    """No process of the server's is alive (the resource tracker may take a moment after the supervisor),
    no temp folder is left, and nothing listens on the port."""
    deadline = time.monotonic() + 10
    while _marked(server.mark) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _marked(server.mark) == []
    assert [path for path in server.temp.iterdir() if path.is_dir()] == []  # (onnxruntime leaves a .ses file)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", server.port), timeout=10).close()


def connection_per_worker(server: Supervisor, workers: int = 2) -> dict[int, http.client.HTTPConnection]:
    """Open keep-alive connections (held open) until each of the workers holds one: which one accepted a
    connection is up to the kernel, so keep opening, up to 200."""
    held: dict[int, http.client.HTTPConnection] = {}
    for _ in range(200):
        connection = server.connect()
        reply = exchange(connection, "GET", "/v2/health/live")
        assert reply.status == 200
        held.setdefault(reply.worker, connection)
        if len(held) == workers:
            return held
    raise AssertionError(f"200 connections all went to workers {sorted(held)}")


def requests_by_code(reply: Reply) -> dict[str, float]:
    families = {f.name: f for f in text_string_to_metric_families(reply.body)}
    return {s.labels["code"]: s.value for s in families["exporter_requests"].samples}


def gauge(reply: Reply, name: str) -> list[float]:
    families = {f.name: f for f in text_string_to_metric_families(reply.body)}
    return [s.value for s in families[name].samples]


@pytest.fixture
def served(folder: Path, tmp_path: Path) -> Iterator[Supervisor]:
    server = start_workers(folder, tmp_path)
    yield server
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
    code = server.wait_exit()
    assert code == 0, server.stderr()
    assert_nothing_left(server)


@pytest.mark.slow
def test_both_workers_answer_and_every_one_shows_the_sums(served: Supervisor) -> None:
    held = connection_per_worker(served)
    children = served.children()
    assert set(held) == children - _trackers(children)  # the two workers, and nothing else answers
    for worker in held:
        assert os.getpgid(worker) == worker != os.getpgid(served.process.pid)  # Ctrl-C reaches the supervisor
    scrapes = {worker: exchange(connection, "GET", "/metrics") for worker, connection in held.items()}
    golden = {worker: requests_by_code(reply)["200"] for worker, reply in scrapes.items()}
    assert len(set(golden.values())) == 1, golden  # each worker's scrape counts both workers' golden checks
    for round_ in range(10):
        for worker, connection in held.items():
            reply = exchange(connection, "POST", INFER, body_of(GOOD))
            assert reply.status == 200 and reply.worker == worker, reply
            assert reply.body["outputs"][0]["shape"] == [2, 4]
            if round_ % 2:
                assert exchange(connection, "POST", INFER, {"inputs": []}).status == 400
    for worker, connection in held.items():
        reply = exchange(connection, "GET", "/metrics")
        assert reply.worker == worker
        counted = requests_by_code(reply)
        assert counted["200"] - golden[worker] == 20 and counted["400"] == 10, (worker, counted)
        assert gauge(reply, "exporter_ready") == [1.0]
        assert gauge(reply, "exporter_inflight_requests") == [0.0]
    big = body_of(np.full((6000, 16), 0.5, dtype=np.float32))
    assert len(json.dumps(big)) > INLINE_BYTES  # parsed in the worker's parser process: it must exit too
    for worker, connection in held.items():
        reply = exchange(connection, "POST", INFER, big)
        assert (
            reply.status == 200 and reply.worker == worker and reply.body["outputs"][0]["shape"] == [6000, 4]
        )
    os.killpg(served.process.pid, signal.SIGINT)  # Ctrl-C in its terminal: one SIGINT per worker, forwarded
    assert served.wait_exit() == 0
    stderr = served.stderr()
    assert stderr.count("draining: 0 request(s) in flight") == 2, stderr
    assert stderr.count("exporter serve: ready:") == 1 and "ready: 2 workers" in stderr
    assert "2 worker processes, 1 intra-op thread each" in stderr
    assert f"drained and stopped ({int(golden[worker]) + 32} requests answered)" in stderr


def _trackers(pids: set[int]) -> set[int]:
    """multiprocessing's resource tracker among ``pids`` (a child of the supervisor too, not a worker)."""
    return {pid for pid in pids if b"resource_tracker" in Path(f"/proc/{pid}/cmdline").read_bytes()}


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_on_both_workers(folder: Path, tmp_path: Path) -> None:
    server = start_workers(folder, tmp_path, "--max-batch-delay-ms", "1000", "--max-batch-size", "64")
    held = connection_per_worker(server)
    answers: dict[int, Reply] = {}

    def send(worker: int) -> None:
        answers[worker] = exchange(held[worker], "POST", INFER, body_of(GOOD))

    senders = [threading.Thread(target=send, args=(worker,)) for worker in held]
    for sender in senders:
        sender.start()
    time.sleep(0.4)  # each request now waits in its worker's batcher for 1 s
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.2)
    late = server.once("POST", INFER, body_of(GOOD))
    ready = server.once("GET", "/v2/health/ready")
    for sender in senders:
        sender.join(timeout=WAIT_S)
    code = server.wait_exit()
    stderr = server.stderr()
    assert late.status == 503 and "shutting down" in late.body["error"]
    assert ready.status == 503 and "draining" in ready.body["reason"]
    assert sorted(answers) == sorted(held)
    for worker, answer in answers.items():
        assert answer.status == 200 and answer.worker == worker
        assert answer.body["outputs"][0]["shape"] == [2, 4]
    assert code == 0, stderr
    assert stderr.count("draining: 1 request(s) in flight") == 2, stderr
    assert "drained and stopped" in stderr
    assert_nothing_left(server)


@pytest.mark.slow
def test_a_second_sigterm_stops_every_worker_at_once(folder: Path, tmp_path: Path) -> None:
    server = start_workers(folder, tmp_path, "--max-batch-delay-ms", "1500", "--max-batch-size", "64")
    held = connection_per_worker(server)
    big = body_of(np.full((6000, 16), 0.5, dtype=np.float32))
    for connection in held.values():  # each worker starts its parser process, which must not outlive it
        assert exchange(connection, "POST", INFER, big).status == 200
    errors: list[BaseException] = []

    def send(worker: int) -> None:
        try:
            exchange(held[worker], "POST", INFER, body_of(GOOD))
        except (OSError, http.client.HTTPException) as error:
            errors.append(error)

    senders = [threading.Thread(target=send, args=(worker,)) for worker in held]
    for sender in senders:
        sender.start()
    time.sleep(0.4)
    server.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    server.process.send_signal(signal.SIGTERM)
    code = server.wait_exit()
    for sender in senders:
        sender.join(timeout=WAIT_S)
    stderr = server.stderr()
    assert code == 128 + signal.SIGTERM, stderr
    assert len(errors) == 2  # the in-flight requests were cut, not answered
    assert stderr.count("second SIGTERM") == 1, stderr
    assert "Traceback" not in stderr
    assert_nothing_left(server)


FAILING_WORKER = """
import os, sys
from pathlib import Path
import exporter.serving.server as server
from exporter.serving.__main__ import main

loading = server.open_model

def open_model_or_fail(prepared):
    try:
        os.close(os.open(Path(os.environ["TMPDIR"]).parent / "failed", os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return loading(prepared)
    raise RuntimeError("this worker was made to fail at loading")

server.open_model = open_model_or_fail

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
"""
"""The real server, except that the first worker to load the model fails to (a worker re-runs this file's
top level as its ``__mp_main__``, as multiprocessing's spawn does, so the patch is in every worker)."""


@pytest.mark.slow
def test_a_worker_failing_at_start_up_stops_all_with_exit_1(folder: Path, tmp_path: Path) -> None:
    script = tmp_path / "failing_worker.py"
    script.write_text(FAILING_WORKER)
    server = start_workers(folder, tmp_path, script=script)
    code = server.wait_exit()
    stderr = server.stderr()
    assert code == 1, stderr
    assert "exporter serve: ready:" not in stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "made to fail at loading" in errors[0] and "worker" in errors[0], stderr
    assert "Traceback" not in stderr
    assert_nothing_left(server)


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_server_with_exit_1(folder: Path, tmp_path: Path) -> None:
    """Not restarted: the supervisor says which worker died and how, drains the other, exits 1."""
    server = start_workers(folder, tmp_path)
    victim = min(connection_per_worker(server))
    os.kill(victim, signal.SIGKILL)
    code = server.wait_exit()
    stderr = server.stderr()
    assert code == 1, stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"(pid {victim}) was killed by SIGKILL" in errors[0], stderr
    assert stderr.count("draining: 0 request(s) in flight") == 1, stderr  # the survivor drained
    assert_nothing_left(server)


@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_stops_everything_cleanly(folder: Path, tmp_path: Path) -> None:
    """The workers are still importing (in the terminal's group until they leave it): the Ctrl-C that reaches
    them then waits, merged with the one forwarded, and nobody prints a KeyboardInterrupt traceback."""
    server = start_workers(folder, tmp_path, wait=False)
    deadline = time.monotonic() + WAIT_S
    while len(server.children() - _trackers(server.children())) < 2:
        assert time.monotonic() < deadline and server.process.poll() is None, server.stderr()
        time.sleep(0.005)
    os.killpg(server.process.pid, signal.SIGINT)
    code = server.wait_exit()
    stderr = server.stderr()
    assert code == 0, stderr
    assert "Traceback" not in stderr and "error" not in stderr, stderr
    assert "drained and stopped" in stderr
    assert_nothing_left(server)


@pytest.mark.slow
def test_workers_do_not_outlive_a_killed_supervisor(folder: Path, tmp_path: Path) -> None:
    """SIGKILL leaves the supervisor no say: the workers get a SIGTERM from the kernel and drain away. (Its
    temp folders stay: nobody is left to remove them.)"""
    server = start_workers(folder, tmp_path)
    workers = set(connection_per_worker(server))
    server.process.kill()
    assert server.wait_exit() == -signal.SIGKILL
    deadline = time.monotonic() + WAIT_S
    while workers & set(_marked(server.mark)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers & set(_marked(server.mark)) == set()


def _listeners(port: int) -> int:
    """Listening TCP sockets on ``port`` (IPv4), from /proc/net/tcp."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A")


@pytest.mark.slow
def test_each_worker_listens_on_a_socket_of_its_own_and_a_second_server_cannot_join(
    served: Supervisor, folder: Path
) -> None:
    """One socket per worker (SO_REUSEPORT, so the kernel spreads connections); another server on the same
    port is refused with exit 2 instead of joining the group and taking a share of the traffic."""
    assert _listeners(served.port) == 2
    command = [sys.executable, "-m", "exporter.serving", str(folder), "--port", str(served.port)]
    second = subprocess.run(
        [*command, "--workers", "2"],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=ROOT,
    )
    assert second.returncode == 2, second.stderr
    assert f"cannot listen on 127.0.0.1:{served.port}" in second.stderr
    assert _listeners(served.port) == 2


def test_workers_below_1_is_refused_before_listening(folder: Path) -> None:
    port = free_port()
    result = subprocess.run(
        [sys.executable, "-m", "exporter.serving", str(folder), "--port", str(port), "--workers", "0"],
        check=False,
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: --workers must be at least 1"]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


COUNTING_PROCESS = """
import sys
from exporter.serving.metrics import Metrics
metrics = Metrics("m")
for status in sys.argv[1].split(","):
    metrics.count(int(status))
metrics.observe_call(int(sys.argv[2]), 0.001)
metrics.ready_child.set(int(sys.argv[3]))
metrics.inflight_child.inc(int(sys.argv[4]))
print(metrics.answered())
"""


def _counting(folder: Path, statuses: str, rows: int, ready: int, inflight: int) -> str:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(folder), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", COUNTING_PROCESS, statuses, str(rows), str(ready), str(inflight)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT_S,
    )
    return done.stdout.strip()


def test_metrics_of_several_processes_add_up(tmp_path: Path) -> None:
    """Two processes count into one folder, as two workers do: counters and histograms are summed, the
    in-flight gauge too, and ready is the minimum (1 only when every worker is)."""
    from exporter.serving.metrics import answered_in

    assert _counting(tmp_path, "200,200,400", 3, 1, 2) == "3"
    assert _counting(tmp_path, "200,503", 5, 0, 1) == "5"  # what /metrics shows: both processes
    assert answered_in(tmp_path) == 5
    code = "from exporter.serving.metrics import Metrics; print(Metrics('m').exposition().decode())"
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    text = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=WAIT_S
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {s.labels["code"]: s.value for s in families["exporter_requests"].samples}
    assert requests == {"200": 3.0, "400": 1.0, "503": 1.0}
    errors = {s.labels["kind"]: s.value for s in families["exporter_request_errors"].samples}
    assert errors == {"bad_request": 1.0, "unavailable": 1.0}
    rows = {s.name: s.value for s in families["exporter_batch_size"].samples if not s.labels.get("le")}
    assert rows["exporter_batch_size_sum"] == 8.0 and rows["exporter_batch_size_count"] == 2.0
    assert [s.value for s in families["exporter_ready"].samples] == [0.0]
    assert [s.value for s in families["exporter_inflight_requests"].samples] == [3.0]
    assert all(set(s.labels) == {"model"} for s in families["exporter_ready"].samples)  # no pid label


def test_one_process_keeps_its_metrics_in_memory(tmp_path: Path) -> None:
    code = (
        "from exporter.serving.metrics import Metrics; m = Metrics('m'); m.count(200); "
        "print(m.answered(), m.shown is m.registry, type(m.latency_child._sum).__name__)"
    )
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(ROOT)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=WAIT_S,
    )
    assert done.stdout.split() == ["1", "True", "MutexValue"]  # in memory: no file per process

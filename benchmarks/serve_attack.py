"""The server's liveness probe under hostile clients: ``--clients`` clients each sending ``--body-mb`` MB JSON
bodies back to back, while ``--stalled`` connections sit mid-body, for ``--seconds``.

A prober sends ``GET /v2/health/live`` on a fresh connection every 50 ms and records how long each took;
the table gives their p50/p99/max, the infer replies by status, and the server's peak RSS (VmHWM). The
server runs as ``python -m exporter.serving FOLDER --max-body-mb 64`` (so the bodies are read and parsed,
the worst case; the default limit derived from the model would refuse them from their Content-Length).
``--root`` runs the server from another source tree (say, an older commit from ``git archive``) to compare.

    .venv/bin/python benchmarks/serve_attack.py                        # 8 x 60 MB, 200 stalled, 30 s
    .venv/bin/python benchmarks/serve_attack.py --clients 2 --body-mb 5 --stalled 20 --seconds 10
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def export_mlp(work: Path) -> Path:
    """The tiny MLP of ``tests/models.py`` exported with the real CLI (x: float32 [batch, 16])."""
    folder = work / "mlp"
    if (folder / "manifest.json").exists():
        return folder
    import torch

    sys.path.insert(0, str(ROOT))
    from tests.models import MODELS

    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "mlp.pt"
    torch.save(MODELS["mlp"].build().state_dict(), checkpoint)
    subprocess.run(
        [
            *(sys.executable, "-m", "exporter", "export", str(checkpoint), "--model", MODELS["mlp"].ref),
            *("--input", MODELS["mlp"].inputs[0], "--out", str(folder), "--no-benchmark", "--force"),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return folder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(port: int, path: str, timeout: float = 120) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def stall(port: int) -> socket.socket:
    """A connection whose infer request declares a 1 MB body and sends 4 bytes of it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    sock.sendall(head + b'{"in')
    return sock


def peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _start_server(folder: Path, root: Path) -> tuple[subprocess.Popen[str], int]:
    """The server in its own process, ready (its golden check passed), and its port."""
    port = free_port()
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "exporter.serving", str(folder), "--port", str(port)),
            *("--threads", "1", "--max-body-mb", "64"),
        ],
        cwd=root,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if get(port, "/v2/health/ready", 5) == 200:
                break
        except OSError:
            time.sleep(0.1)
    return server, port


def _infer_body(megabytes: float) -> bytes:
    """A valid infer request for the tiny MLP (16 features) of about ``megabytes`` MB of JSON."""
    rows = max(1, int(megabytes * 1e6 / (16 * 21)))
    x = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    tensor = {"name": "x", "shape": [rows, 16], "datatype": "FP32", "data": x.reshape(-1).tolist()}
    return json.dumps({"inputs": [tensor]}).encode()


def _send_until(port: int, body: bytes, stop: float, statuses: Counter[str]) -> None:
    """One client: the same large request again and again until ``stop``, each status counted."""
    while time.monotonic() < stop:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            connection.request("POST", "/v2/models/mlp/infer", body=body)
            response = connection.getresponse()
            response.read()
            statuses[str(response.status)] += 1
        except OSError as error:
            statuses[type(error).__name__] += 1
        finally:
            connection.close()


def _probe_until(port: int, stop: float) -> tuple[list[float], int]:
    """Liveness probes every 50 ms until ``stop``: their durations in seconds, and how many failed."""
    probes: list[float] = []
    failed = 0
    while time.monotonic() < stop:
        started = time.perf_counter()
        try:
            ok = get(port, "/v2/health/live", 120) == 200
        except OSError:
            ok = False
        probes.append(time.perf_counter() - started)
        failed += not ok
        time.sleep(0.05)
    return probes, failed


def run(args: argparse.Namespace) -> dict[str, object]:
    work = Path(args.work or tempfile.mkdtemp(prefix="serve-attack-"))
    folder = args.folder or export_mlp(work)
    server, port = _start_server(folder, args.root)
    try:
        body = _infer_body(args.body_mb)
        stalled = [stall(port) for _ in range(args.stalled)]
        statuses: Counter[str] = Counter()
        stop = time.monotonic() + args.seconds
        clients = [
            threading.Thread(target=_send_until, args=(port, body, stop, statuses), daemon=True)
            for _ in range(args.clients)
        ]
        for thread in clients:
            thread.start()
        probes, failed = _probe_until(port, stop)
        for thread in clients:
            thread.join(timeout=300)
        for sock in stalled:
            sock.close()
        rss = peak_rss_mb(server.pid)
    finally:
        server.terminate()
        try:
            server.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
    ordered = sorted(probes)
    return {
        "clients": args.clients,
        "body_mb": round(len(body) / 1e6, 1),
        "stalled": args.stalled,
        "seconds": args.seconds,
        "probes": len(probes),
        "probe_failures": failed,
        "p50_ms": statistics.median(ordered) * 1000,
        "p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000,
        "max_ms": ordered[-1] * 1000,
        "infer": dict(statuses),
        "server_peak_rss_mb": rss,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--body-mb", type=float, default=60.0)
    parser.add_argument("--stalled", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--folder", type=Path, help="an artifacts folder of the tiny MLP (default: export one)"
    )
    parser.add_argument("--work", type=Path, help="where to export it (default: a temp folder)")
    parser.add_argument("--root", type=Path, default=ROOT, help="the source tree the server runs from")
    args = parser.parse_args(argv)
    result = run(args)
    columns = (
        "clients x body | stalled | s | probes | failed | live p50 ms | p99 ms | max ms | infer | RSS MB"
    )
    print(f"| {columns} |")
    print("|---" * (columns.count("|") + 1) + "|")
    cells = [
        f"{result['clients']} x {result['body_mb']} MB",
        *(str(result[key]) for key in ("stalled", "seconds", "probes", "probe_failures")),
        *(f"{result[key]:.1f}" for key in ("p50_ms", "p99_ms", "max_ms")),
        str(result["infer"]),
        f"{result['server_peak_rss_mb']:.0f}",
    ]
    print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

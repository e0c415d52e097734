"""wrk (Debian's package, C, epoll, keep-alive) posting one pre-built request body, and what it saw.

A Lua script sets the method, header and body (read from a file once per thread) and, in wrk's ``done``
hook, prints one line with the counts and exact latency percentiles from wrk's histogram. Errors are
wrk's socket errors (connect, read, write, timeout) and its status errors (responses with status > 399:
the "Non-2xx or 3xx responses" line). wrk's own CPU time comes from this process's reaped-children usage
across the run: wrk shares the cores with the server, so the report shows what it took.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

WRK = "/usr/bin/wrk"
TIMEOUT_S = 30
SCRIPT = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local file = assert(io.open("{body}", "rb"))
wrk.body = file:read("*a")
file:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRK_RESULT %d %d %d %d %d %d %d %d %.1f %.1f %.1f %.1f\\n",
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max))
end
"""


@dataclass
class WrkResult:
    connections: int
    threads: int
    seconds: float
    """wrk's own measured duration."""
    requests: int
    bytes: int
    status_errors: int
    """Responses with status > 399."""
    socket_errors: int
    """connect + read + write + timeout."""
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    cpu_s: float
    """wrk's user + system CPU seconds over the run."""

    @property
    def errors(self) -> int:
        return self.status_errors + self.socket_errors

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def available() -> str | None:
    """None if wrk can run here, else why not."""
    return None if shutil.which(WRK) else f"{WRK} not found (Debian: apt-get install wrk)"


def write_script(folder: Path, body: bytes, name: str) -> Path:
    """The request body and the Lua script that posts it, side by side in ``folder``."""
    body_path = folder / f"{name}.json"
    body_path.write_bytes(body)
    script = folder / f"{name}.lua"
    script.write_text(SCRIPT.format(body=str(body_path.resolve()).replace('"', '\\"')))
    return script


def run(url: str, script: Path, connections: int, threads: int, seconds: float) -> WrkResult:
    """``wrk -t THREADS -c CONNECTIONS -d SECONDS --latency -s SCRIPT URL``."""
    threads = max(1, min(threads, connections))
    command = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s"]
    command += ["--timeout", f"{TIMEOUT_S}s", "--latency", "-s", str(script), url]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRK_RESULT ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(
            f"wrk exited {done.returncode} after {time.perf_counter() - started:.1f} s: {tail[0]}"
        )
    fields = line.split()[1:]
    duration_us, requests, size, connect, read, write, status, timeout = (int(f) for f in fields[:8])
    p50, p99, mean, peak = (float(f) / 1000 for f in fields[8:12])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return WrkResult(
        connections,
        threads,
        duration_us / 1e6,
        requests,
        size,
        status,
        connect + read + write + timeout,
        p50,
        p99,
        mean,
        peak,
        cpu,
    )

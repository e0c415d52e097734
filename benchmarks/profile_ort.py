"""Where an ONNX model's time goes in ONNX Runtime: its profiler's kernel times, summed by operator type.

    .venv/bin/python benchmarks/profile_ort.py MODEL.onnx [--batch 1] [--runs 50] [--threads 2]

Inputs are drawn from the model's own input signature: float inputs standard normal, integer inputs
``--int-high`` exclusive (token ids), inputs named ``*mask*`` all ones; dynamic dims take ``--batch`` for
the first and ``--seq`` for the others. Prints one row per operator type (total ms per run, share of the
run, node count) and the run's wall p50, so kernel time can be set against the FLOP floor and what is
left is framework overhead. Tells nothing about accuracy; it only reads ORT's own trace (``--keep`` keeps
the JSON trace for chrome://tracing).
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(bool)": np.bool_,
}


def make_feed(session: ort.InferenceSession, batch: int, seq: int, int_high: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feed = {}
    for item in session.get_inputs():
        shape = [
            dim if isinstance(dim, int) else (batch if index == 0 else seq)
            for index, dim in enumerate(item.shape)
        ]
        dtype = _TYPES[item.type]
        if "mask" in item.name:
            feed[item.name] = np.ones(shape, dtype=dtype)
        elif np.issubdtype(dtype, np.integer):
            feed[item.name] = rng.integers(0, int_high, size=shape).astype(dtype)
        else:
            feed[item.name] = rng.standard_normal(shape).astype(dtype)
    return feed


def profile(path: Path, args: argparse.Namespace) -> tuple[list[tuple[str, float, int]], float, float]:
    """(op type, ms per run, nodes) rows, the wall p50 in ms, and the kernel ms per run."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_profiling = True
    prefix = Path(tempfile.mkdtemp(prefix="ort-profile-")) / "trace"
    options.profile_file_prefix = str(prefix)
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = make_feed(session, args.batch, args.seq, args.int_high)
    for _ in range(10):
        session.run(None, feed)
    walls = []
    for _ in range(args.runs):
        started = time.perf_counter()
        session.run(None, feed)
        walls.append((time.perf_counter() - started) * 1e3)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    runs = args.runs + 10
    per_type: dict[str, float] = defaultdict(float)
    nodes: dict[str, set[str]] = defaultdict(set)
    for event in events:
        if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
            continue
        op = event["args"].get("op_name", "?")
        per_type[op] += event["dur"] / 1e3 / runs
        nodes[op].add(event["name"])
    if args.keep:
        print(f"trace: {trace}")
    else:
        trace.unlink()
    rows = sorted(((op, ms, len(nodes[op])) for op, ms in per_type.items()), key=lambda r: -r[1])
    return rows, statistics.median(walls), sum(per_type.values())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("model", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--int-high", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the JSON trace")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `| head` ends the table quietly
    rows, wall, kernels = profile(args.model, args)
    print(f"{args.model}: batch {args.batch}, {args.threads} threads, {args.runs} runs")
    print(f"wall p50 {wall:.2f} ms; kernels {kernels:.2f} ms per run ({kernels / wall:.0%} of wall)")
    print(f"{'op type':<28} {'ms/run':>8} {'share':>7} {'nodes':>6}")
    for op, ms, count in rows:
        print(f"{op:<28} {ms:8.3f} {ms / kernels:7.1%} {count:6d}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

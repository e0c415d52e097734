"""The timing and parity half of ``benchmarks/decoder.py``: every runner of one model (eager transformers
with its cache, our float/int8/int4 artifacts in ONNX Runtime and OpenVINO, Optimum's ONNX export) timed
alike at each prefill and decode plan, and its greedy tokens on one prompt against ``generate``.

The timing is ``exporter.benchmark.latency.compare_latency`` (alternated blocks, same threads), the feeds
``exporter.hf.decoding.step_inputs`` (as ``exporter.benchmark.decoder`` builds them, at this benchmark's
lengths), the greedy loop ``exporter.hf.decoding.greedy_tokens``: the numbers are those the exporter's own
report would give, at longer pasts.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from decoder_candidates import convert_ir, rebuild_int4
from decoder_models import EagerWithCache, generate_per_token_ms, generate_tokens, load_eager
from rich.console import Console

from exporter.backends.openvino import float_config
from exporter.benchmark.latency import BatchPlan, TimingConfig, compare_latency
from exporter.hf.decoding import DecoderLayout, empty_past, greedy_tokens, step_inputs
from exporter.runners.base import Runner
from exporter.runners.onnxruntime import OnnxRuntimeRunner
from exporter.runners.openvino import OpenVinoRunner

PROMPTS = (16, 64, 128)
PASTS = (16, 128, 512)
QUICK_PROMPTS, QUICK_PASTS = (16,), (16, 128)
PARITY_TOKENS = 32
FULL = TimingConfig(
    warmup=3, min_runs=30, min_seconds=1.0, max_seconds=8.0, block_calls=3, block_seconds=0.15,
    warm_seconds=0.05, enough_seconds=2.0, warmup_seconds=0.5,
)  # fmt: skip
QUICK = TimingConfig(
    warmup=1, min_runs=5, min_seconds=0.05, max_seconds=1.0, block_calls=2, block_seconds=0.02,
    warm_seconds=0.01, enough_seconds=0.2, warmup_seconds=0.1,
)  # fmt: skip


@dataclass
class Row:
    """One runner of one model: p50 ms per prefill length and per decode past, and its greedy parity."""

    runner: str
    artifact: str
    prefill_ms: dict[int, float] = field(default_factory=dict)
    decode_ms: dict[int, float] = field(default_factory=dict)
    decode_p90_ms: dict[int, float] = field(default_factory=dict)
    parity: str = "-"
    note: str = ""


@dataclass
class Measured:
    """Everything measured on one model."""

    model: str
    info: dict[str, Any]
    exports: dict[str, Any]
    optimum: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    generate_per_token_ms: dict[int, float] = field(default_factory=dict)
    load: dict[str, list[float]] = field(default_factory=dict)
    measured_at: str = ""
    threads: int = 0

    def row(self, runner: str) -> Row | None:
        """The row of ``runner``, or of the first runner whose name starts with it ("ours int4 openvino"
        finds "ours int4 openvino (refused, rebuilt)"); rows that could not be timed are skipped."""
        exact = next((r for r in self.rows if r.runner == runner and not r.note), None)
        return exact or next((r for r in self.rows if r.runner.startswith(runner) and not r.note), None)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def layout_of(folder: Path) -> DecoderLayout:
    config = json.loads((folder / "config.json").read_text())
    heads = config["num_attention_heads"]
    return DecoderLayout(
        num_layers=config["num_hidden_layers"],
        kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        vocab_size=config["vocab_size"],
        max_positions=config["max_position_embeddings"],
    )


def plans(layout: DecoderLayout, quick: bool, seed: int = 0) -> list[tuple[str, int, BatchPlan]]:
    """A prefill per prompt length and a one-token decode per past length, seeded."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, int, BatchPlan]] = []
    for length in QUICK_PROMPTS if quick else PROMPTS:
        ids = rng.integers(4, layout.vocab_size, size=(1, length), dtype=np.int64)
        out.append(
            (
                "prefill",
                length,
                BatchPlan(f"prompt {length}", 1, step_inputs(layout, ids, empty_past(layout), 0)),
            )
        )
    for length in QUICK_PASTS if quick else PASTS:
        shape = (1, layout.kv_heads, length, layout.head_dim)
        past = [rng.standard_normal(shape).astype(np.float32) for _ in layout.past_names]
        ids = rng.integers(4, layout.vocab_size, size=(1, 1), dtype=np.int64)
        out.append(("decode", length, BatchPlan(f"past {length}", 1, step_inputs(layout, ids, past, length))))
    return out


def artifact_openers(
    exports: dict[str, Any], optimum: dict[str, Any], threads: int
) -> list[tuple[str, str, Any]]:
    """(runner name, artifact, opener) for every artifact to time: the float pair from the first export
    (an OpenVINO IR converted here from its model.onnx when the export has none), each export's shipped lossy
    models, the int4 models it refused or did not make (``decoder_candidates``), Optimum's model."""
    openers: list[tuple[str, str, Any]] = []
    float_ir: Path | None = None
    first = True
    for mode, export in exports.items():
        out = Path(export["out"])
        if not (out / "manifest.json").is_file():
            continue
        manifest = json.loads((out / "manifest.json").read_text())
        artifacts = manifest.get("artifacts") or []
        if first:
            for artifact in artifacts:
                name = f"ours float {artifact['backend']}"
                openers.append(_opener(name, out / artifact["file"], artifact, threads))
            float_ir = next((out / a["file"] for a in artifacts if a["backend"] == "openvino"), None)
            if float_ir is None and (out / "model.onnx").is_file():
                float_ir = convert_ir(out / "model.onnx", out.parent / f"{out.name}-ir" / "model.xml")
                name = "ours float openvino (IR converted here)"
                openers.append(_opener(name, float_ir, {"config": float_config(threads)}, threads))
            first = False
        for entry in [manifest.get("int8"), *(manifest.get("lossy") or [])]:
            if entry:
                runtime = "openvino" if entry["file"].endswith(".xml") else "onnxruntime"
                openers.append(_opener(f"ours {mode} {runtime}", out / entry["file"], entry, threads))
        if mode == "int4":
            for runtime, path, how, label in rebuild_int4(export, out / "model.onnx", float_ir):
                name, _, opener = _opener(
                    f"ours int4 {runtime} ({label})", path, {"config": float_config(threads)}, threads
                )
                opener = opener if path.is_file() else _failing(how)
                openers.append((name, f"{path.name}: {how}" if path.is_file() else "-", opener))
    if optimum.get("ok"):
        model = Path(optimum["model"])
        openers.append(
            ("optimum onnxruntime", "optimum model.onnx", lambda: OnnxRuntimeRunner(model, threads))
        )
    return openers


def _failing(message: str) -> Any:
    def fail() -> Runner:
        raise RuntimeError(message)

    return fail


def _opener(name: str, path: Path, entry: dict[str, Any], threads: int) -> tuple[str, str, Any]:
    if path.suffix == ".xml":
        config = {**(entry.get("config") or {}), "INFERENCE_NUM_THREADS": str(threads)}
        return name, path.name, lambda: OpenVinoRunner(path, config, name=name)
    return name, path.name, lambda: OnnxRuntimeRunner(path, threads, name=name)


def measure_model(
    name: str,
    folder: Path,
    info: dict[str, Any],
    exports: dict[str, Any],
    optimum: dict[str, Any],
    *,
    threads: int,
    quick: bool,
    console: Console,
) -> Measured:
    """Open every runner, time each plan across all of them, then check each one's greedy tokens."""
    measured = Measured(name, info, exports, optimum, threads=threads)
    layout = layout_of(folder)
    model = load_eager(folder, threads)
    eager = EagerWithCache(model, layout.num_layers)
    rows = [Row(eager.name, "transformers")]
    with contextlib.ExitStack() as stack:
        runners: list[Runner] = [eager]
        for runner_name, artifact, opener in artifact_openers(exports, optimum, threads):
            try:
                runners.append(stack.enter_context(opener()))
                rows.append(Row(runner_name, artifact))
            except Exception as error:  # a runtime refusing an artifact is a result, not a crash
                rows.append(
                    Row(runner_name, artifact, note=f"did not open: {str(error).splitlines()[0][:200]}")
                )
        timed_rows = [r for r in rows if not r.note]
        config = QUICK if quick else FULL
        for phase, length, plan in plans(layout, quick):
            console.print(f"[dim]{name}: timing {plan.label} ({len(runners)} runners)[/]")
            for row, stats in zip(
                timed_rows, compare_latency(runners, plan, config=config, threads=threads), strict=True
            ):
                if phase == "prefill":
                    row.prefill_ms[length] = stats.p50_ms
                else:
                    row.decode_ms[length], row.decode_p90_ms[length] = stats.p50_ms, stats.p90_ms
        prompt = _parity_prompt(folder)
        reference = generate_tokens(model, prompt, PARITY_TOKENS)
        rows[0].parity = f"{PARITY_TOKENS}/{PARITY_TOKENS} (is generate)"
        for row, runner in zip(timed_rows[1:], runners[1:], strict=True):
            row.parity = _match(reference, greedy_tokens(runner, layout, prompt, PARITY_TOKENS))
    for length in (16,) if quick else (16, 128):
        measured.generate_per_token_ms[length] = generate_per_token_ms(model, length, 4 if quick else 16)
    measured.rows = rows
    return measured


def _parity_prompt(folder: Path) -> list[int]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    return list(tokenizer.encode("The quick brown fox jumps over the lazy dog.").ids)


def _match(reference: list[int], tokens: list[int]) -> str:
    """``k/N`` identical tokens, and the first differing step when they differ."""
    same = sum(a == b for a, b in zip(reference, tokens, strict=False))
    first = next((i for i, (a, b) in enumerate(zip(reference, tokens, strict=False)) if a != b), None)
    return f"{same}/{len(reference)}" + ("" if first is None else f" (first differs at step {first + 1})")

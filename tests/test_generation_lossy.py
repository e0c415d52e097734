"""A lossy (int8/int4) decoder under the gate: its manifest entry records the token floor it was judged by
(and its bits and block size), ``exporter verify`` replays its greedy generation from the golden prompts
against that floor instead of the synthetic int8-eval budget that never gated it, and fails (exit 1) naming
the file, its share and the floor when the model no longer reaches it. The benchmark's never-slower rule
(per batch size and per token) un-ships an int4 model as it does an int8 one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from typer.testing import CliRunner

from exporter.benchmark.decoder import DecoderLatency
from exporter.benchmark.latency import LatencyStats
from exporter.cli import app
from exporter.documents.build import _weight_bits
from exporter.documents.manifest import Int8Entry
from exporter.errors import ExitCode
from exporter.gate.checks import VerifyRequest
from exporter.gate.reverify import verify_artifacts
from exporter.loading.checkpoint import sha256_file
from exporter.options import build_export_options
from exporter.pipeline import export
from exporter.quantize.budget import ParityBudget
from exporter.quantize.search import QuantizationResult
from exporter.quantize.types import Candidate, QuantizeOptions, QuantMode
from exporter.stages.benchmark import drop_slower_lossy
from tests.conftest import FAST_TIMING
from tests.hf_models import llama_folder


def _decode_row(backend: str, past: int, p50: float) -> DecoderLatency:
    return DecoderLatency(backend, "decode", past, 1, 10, p50, p50, p50, 1000 / p50)


@pytest.mark.parametrize("mode", [QuantMode.INT8, QuantMode.INT4])
def test_a_weight_only_decoder_slower_per_token_is_not_shipped(mode: QuantMode) -> None:
    chosen = Candidate("int4-ort", "test", path=Path("model.int8.onnx"), chosen=True)
    quantization = QuantizationResult(QuantizeOptions(mode=mode), None, None, None, 1, [], None, [chosen], [])  # type: ignore[arg-type]
    latency = [
        LatencyStats(name, "batch=1", 1, {}, 1, 10, p50, p50, p50, p50, p50, 1000 / p50)
        for name, p50 in (("onnxruntime", 1.0), ("onnxruntime-int8", 0.8))
    ]
    decoder = [_decode_row("onnxruntime", 64, 0.10), _decode_row("onnxruntime-int8", 64, 0.11)]
    notes: list[str] = []
    kept = drop_slower_lossy(latency, quantization, notes, decoder)
    assert [s.backend for s in kept] == ["onnxruntime"] and not chosen.chosen
    assert "model.int8.onnx not shipped" in notes[0] and "per token at past 64" in notes[0]


def test_an_older_lossy_entry_without_a_token_floor_still_reads() -> None:
    budget = ParityBudget(min_cosine=0.99, min_top1=None, min_sqnr_db=None)
    old = Int8Entry.model_validate({"file": "model.int8.onnx", "budget": budget}, strict=False)
    assert old.token_match_floor is None and old.bits is None and old.block_size is None
    assert "token_match_floor" not in old.model_dump(mode="json")
    new = Int8Entry(file="model.int8.onnx", budget=budget, token_match_floor=0.5, bits=4, block_size=32)
    dumped = new.model_dump(mode="json")
    assert (dumped["token_match_floor"], dumped["bits"], dumped["block_size"]) == (0.5, 4, 32)


def test_bits_come_from_what_each_builder_records() -> None:
    assert _weight_bits({"bits": 4, "block_size": 32}) == 4
    assert _weight_bits({"mode": "int4_asym", "block_size": 64}) == 4
    assert _weight_bits({"mode": "int8_asym"}) == 8
    assert _weight_bits({"weight_type": "uint8", "per_channel": True}) == 8
    assert _weight_bits({"inference_precision_hint": "bf16"}) is None


def _invoke(*args: str | Path) -> tuple[int, str]:
    completed = CliRunner().invoke(app, [*map(str, args)])
    return completed.exit_code, " ".join(completed.output.split())


@pytest.mark.slow
def test_the_gate_replays_a_lossy_decoders_generation_against_its_floor(tmp_path: Path) -> None:
    """``--quantize dynamic`` ships its candidate within budget whatever its speed (``int8`` ships only the
    faster ones, which on a 2-layer model the timing decides); random weights keep few tokens after
    quantization, so the floor is low: 5% (the export measured 12.5%)."""
    flags: dict[str, Any] = {
        "checkpoint": llama_folder(tmp_path / "folder"),
        "out": tmp_path / "out",
        "targets": ("onnx",),
        "threads": 1,
        "timing": FAST_TIMING,
        "batch_sizes": (1,),
        "benchmark": False,
    }
    quantize = {"mode": "dynamic", "min_token_match": 0.05, "min_cosine": 0.0}
    result = export(build_export_options(None, flags, quantize))
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    folder = result.out_dir
    entry = json.loads((folder / "manifest.json").read_text())["int8"]
    assert entry["token_match_floor"] == 0.05 and entry["bits"] == 8 and "block_size" not in entry
    shipped = next(c for c in result.report["quantization"]["candidates"] if c["chosen"])
    exported_share = shipped["generation"]["token_match"]

    passed = verify_artifacts(VerifyRequest(folder, threads=1))
    assert passed.exit_code is ExitCode.OK, [c.detail for c in passed.checks if not c.passed]
    checks = {c.name: c for c in passed.checks}
    lossy = checks["generation onnxruntime-int8"]
    assert f"model.int8.onnx: {exported_share:.1%} of tokens match transformers generate" in lossy.detail
    assert "(floor 5.0%;" in lossy.detail
    assert "int8 budget" not in checks  # the synthetic int8-eval budget never gated a decoder's lossy model
    assert [g.floor for g in passed.generation] == [None, 0.05]

    model = onnx.load(str(folder / "model.int8.onnx"))
    rng = np.random.default_rng(0)
    for initializer in model.graph.initializer:
        weights = numpy_helper.to_array(initializer)
        if weights.dtype in (np.int8, np.uint8) and weights.ndim == 2:  # the quantized weights
            info = np.iinfo(weights.dtype)
            noisy = rng.integers(info.min, info.max, weights.shape, endpoint=True).astype(weights.dtype)
            initializer.CopyFrom(numpy_helper.from_array(noisy, initializer.name))
    onnx.save(model, str(folder / "model.int8.onnx"))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["model.int8.onnx"]["sha256"] = sha256_file(folder / "model.int8.onnx")
    (folder / "manifest.json").write_text(json.dumps(manifest))  # only the generation can catch it now

    code, output = _invoke("verify", folder, "--threads", "1")
    assert code == ExitCode.VERIFICATION_FAILED, output
    assert "model.int8.onnx: tokens matching transformers generate before the first divergence" in output
    assert "< floor 5.0%" in output

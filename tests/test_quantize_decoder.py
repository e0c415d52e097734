"""Weight-only int8 and int4 for decoders with a KV cache: candidates built (MatMulNBits in ONNX Runtime,
NNCF compress_weights in OpenVINO), judged by greedy generation against the float model, timed per token,
shipped or refused with the reason."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from exporter.benchmark.latency import LatencyStats, TimingConfig
from exporter.errors import ExitCode, UsageError
from exporter.hf.decoding import DecoderLayout
from exporter.hf.facts import HfFacts
from exporter.hf.reference import reference_generations
from exporter.hf.wrappers import DecoderWithPast
from exporter.options import build_export_options
from exporter.pipeline import ExportResult, export
from exporter.quantize.budget import Int8Comparison
from exporter.quantize.calibration import load_samples
from exporter.quantize.decoder import GenerationJudgement
from exporter.quantize.onnx_ort import choose_formats
from exporter.quantize.search import NOT_REPAIRED_DECODER, QuantizationResult, run_quantization
from exporter.quantize.selection import choose_candidate
from exporter.quantize.types import Candidate, QuantizeOptions, QuantMode
from exporter.report.lossy import quantization_table
from exporter.runners.pytorch import EagerRunner
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from exporter.specs.shape_cases import ShapeCase
from exporter.verify.parity import GoldenCase
from tests.conftest import FAST_TIMING
from tests.hf_models import gpt2_folder, llama_folder

NEW_TOKENS = 12
TIMING = TimingConfig(warmup=1, min_runs=5, min_seconds=0.05, max_runs=40, max_seconds=0.5)


def _export(module: torch.nn.Module, layout: DecoderLayout, path: Path) -> None:
    names = list(layout.input_names)
    dims: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "total"},
        "position_ids": {0: "batch", 1: "seq"},
        "logits": {0: "batch", 1: "seq"},
    }
    dims |= {name: {0: "batch", 2: "past"} for name in layout.past_names}
    dims |= {name: {0: "batch", 2: "total"} for name in layout.present_names}
    past = [torch.randn(1, layout.kv_heads, 3, layout.head_dim) for _ in layout.past_names]
    example: tuple[torch.Tensor, ...] = (
        torch.randint(0, layout.vocab_size, (1, 5)),
        torch.ones(1, 8, dtype=torch.long),
    )
    example += (torch.arange(3, 8)[None], *past)
    torch.onnx.export(
        module,
        example,
        str(path),
        input_names=names,
        output_names=list(layout.output_names),
        dynamic_axes=dims,
        dynamo=False,
        opset_version=17,
    )


class DecoderSetup:
    """A float decoder ONNX model and everything ``run_quantization`` takes for it."""

    def __init__(self, root: Path) -> None:
        import transformers
        from transformers import AutoModelForCausalLM

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        folder = llama_folder(root / "llama", tokenizer=False)
        model = AutoModelForCausalLM.from_pretrained(folder).eval()
        config = model.config
        self.layout = DecoderLayout(config.num_hidden_layers, 2, 16, config.vocab_size, 256, (2,))
        self.module = DecoderWithPast(model, config.num_hidden_layers).eval()
        self.float_onnx = root / "model.onnx"
        _export(self.module, self.layout, self.float_onnx)
        rng = np.random.default_rng(1)
        prompts = [(f"p{n}", None, [int(t) for t in rng.integers(4, 320, n)]) for n in (4, 9, 17)]
        cases = reference_generations(model, prompts, NEW_TOKENS)
        self.hf = HfFacts(
            "text-generation", "llama", ("LlamaForCausalLM",), self.layout, (), cases, NEW_TOKENS
        )
        tensors = [
            parse_tensor_spec("input_ids:int64:batch=1..4,seq=5..64:0..320"),
            parse_tensor_spec("attention_mask:int64:batch=1..4,total=past+seq:1..2"),
            parse_tensor_spec("position_ids:int64:batch=1..4,seq=5..64:0..8"),
        ]
        tensors += [
            parse_tensor_spec(f"{n}:float32:batch=1..4,2,past=3..64,16") for n in self.layout.past_names
        ]
        self.spec = InputSpec(tuple(tensors))
        self.samples = load_samples(None, self.spec, 10, 0).split(0.2)
        inputs = self.samples[1].samples[0]
        outputs = EagerRunner(self.module, self.spec.names).run(inputs)
        self.golden = [
            GoldenCase(ShapeCase("export", {}), 0, inputs, outputs, list(self.layout.output_names))
        ]

    def run(
        self, work: Path, options: QuantizeOptions, targets: tuple[str, ...] = ("onnx",)
    ) -> QuantizationResult:
        calibration, evaluation = self.samples
        return run_quantization(
            options,
            module=self.module,
            spec=self.spec,
            float_onnx=self.float_onnx,
            golden=self.golden,
            calibration=calibration,
            evaluation=evaluation,
            formats=choose_formats(),
            plans=[],
            timing=TIMING,
            threads=1,
            work_dir=work,
            step=lambda message: None,
            targets=targets,
            hf=self.hf,
        )


@pytest.fixture(scope="module")
def decoder(tmp_path_factory: pytest.TempPathFactory) -> DecoderSetup:
    return DecoderSetup(tmp_path_factory.mktemp("decoder"))


def _record(result: QuantizationResult, name: str) -> dict[str, Any]:
    return next(c for c in result.to_json()["candidates"] if c["name"] == name)


def _shipped_or_refused(result: QuantizationResult) -> None:
    """Every candidate ships, or the report says why not (a budget miss, or slower per token)."""
    report = result.to_json()
    for c in report["candidates"]:
        if c["chosen"] or c["error"]:
            continue
        if not c["budget_passed"]:
            assert c["generation"]["message"] or any(o["message"] for o in c["outputs"]), c
        else:
            assert any(c["name"] in note for note in report["notes"]), (c["name"], report["notes"])


@pytest.mark.slow
def test_int4_onnxruntime_is_matmul_nbits_judged_by_tokens(decoder: DecoderSetup, tmp_path: Path) -> None:
    result = decoder.run(tmp_path, QuantizeOptions(mode=QuantMode.INT4))
    names = [c.name for c in result.candidates]
    assert names == ["int4-ort", "int4-ort-acc4"]
    for candidate in result.candidates:
        assert candidate.error is None, candidate.explanation
        assert candidate.path is not None
        ops = [n.op_type for n in onnx.load(str(candidate.path)).graph.node]
        assert ops.count("MatMulNBits") == 15  # 7 per layer and the head; the embedding Gather stays float
        assert "Gather" in ops
        record = _record(result, candidate.name)
        assert record["settings"]["block_size"] == 32 and record["settings"]["bits"] == 4
        generation = record["generation"]
        assert generation["floor"] == 0.5 and len(generation["shares"]) == 3
        assert 0.0 <= generation["token_match"] <= 1.0 and -1.0 <= generation["min_logits_cosine"] <= 1.0
        assert candidate.latency and candidate.latency[0].label == "decode past=64"
    assert result.float_latency[0].label == "decode past=64"
    assert any("judged by greedy generation of 12 tokens from 3 golden prompts" in n for n in result.notes)
    assert not result.synthetic_only and result.to_json()["calibration"]["judged_on"] == "real"
    _shipped_or_refused(result)
    headers, rows = quantization_table({"quantization": result.to_json()})
    assert "token match" in headers
    assert [row[0] for row in rows] == [*names, "int4-openvino"]  # not built: OpenVINO is not a target
    assert all(row[headers.index("token match")] != "-" for row in rows[: len(names)])
    assert all(row[headers.index("min cosine")].endswith("(golden logits)") for row in rows[: len(names)])


@pytest.mark.slow
def test_int8_for_a_decoder_builds_weight_only_candidates(decoder: DecoderSetup, tmp_path: Path) -> None:
    options = QuantizeOptions(mode=QuantMode.INT8, min_token_match=0.0, min_cosine=1.0)  # no cosine reaches 1
    result = decoder.run(tmp_path, options)
    names = [c.name for c in result.candidates]
    assert names == ["dynamic-ort", "int8-ort-nbits"]
    nbits = _record(result, "int8-ort-nbits")
    assert nbits["settings"]["bits"] == 8 and nbits["generation"]["floor"] == 0.0
    for candidate in result.candidates:
        assert candidate.generation is not None and not candidate.budget_passed
        assert "golden logits cosine" in str(candidate.generation.message)
    assert _record(result, "dynamic-ort")["settings"]["repairs_skipped"] == NOT_REPAIRED_DECODER
    assert result.shipped == [] and not result.passed
    assert "no ONNX Runtime candidate met the parity budget: none shipped for ONNX Runtime" in result.notes
    _shipped_or_refused(result)


@pytest.mark.slow
def test_openvino_compress_weights_int4(decoder: DecoderSetup, tmp_path: Path) -> None:
    result = decoder.run(tmp_path, QuantizeOptions(mode=QuantMode.INT4), targets=("onnx", "openvino"))
    record = _record(result, "int4-openvino")
    assert record["error"] is None, record["explanation"]
    assert record["runtime"] == "openvino"
    assert record["settings"]["mode"] == "int4_asym" and record["settings"]["block_size"] == 32
    assert set(record["settings"]["compressed_constants"]) & {"u4", "i4"}
    assert record["generation"] is not None and record["latency"][0]["label"] == "decode past=64"
    assert "openvino" in result.float_latency_by_runtime
    _shipped_or_refused(result)


def _candidate(name: str, *, speedup: float, generation: GenerationJudgement | None) -> Candidate:
    stats = LatencyStats("x", "decode past=64", 1, {}, 1, 10, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    stats.speedup_vs_float = speedup
    comparison = Int8Comparison("logits", 8, 0.999, 30.0, 0.1, None, True)
    return Candidate(
        name,
        "test",
        path=Path("x.onnx"),
        outputs=[comparison],
        latency=[stats],
        p50_ratio=1 / speedup,
        generation=generation,
        decoder=True,
    )


def _judgement(share: float) -> GenerationJudgement:
    return GenerationJudgement([share], [None if share == 1 else 3], share, 0.999, 0.5, 0.99, 12)


def test_never_slower_per_token_and_never_on_cosine_alone() -> None:
    slower = _candidate("slow", speedup=0.8, generation=_judgement(1.0))
    no_tokens = _candidate("cosine-only", speedup=2.0, generation=None)
    diverged = _candidate("diverged", speedup=3.0, generation=_judgement(0.25))
    notes: list[str] = []
    choose_candidate(QuantMode.INT4, [slower, no_tokens, diverged], notes)
    assert not any(c.chosen for c in (slower, no_tokens, diverged))
    assert any("slow is SLOWER than float" in n and "decode past=64" in n for n in notes), notes
    assert no_tokens.budget_passed is False
    assert diverged.generation is not None and "token match 0.25 < 0.5" in str(diverged.generation.message)
    fast = _candidate("fast", speedup=1.5, generation=_judgement(0.75))
    choose_candidate(QuantMode.INT4, [slower, fast], [])
    assert fast.chosen and not slower.chosen


def test_a_decoder_is_gated_by_its_generation_not_by_synthetic_cosine() -> None:
    candidate = _candidate("c", speedup=2.0, generation=_judgement(1.0))
    candidate.outputs = [Int8Comparison("logits", 8, 0.4, 1.0, 9.0, None, False, "min cosine 0.4000 < 0.99")]
    assert candidate.budget_passed  # random past tensors: recorded, not gated
    candidate.generation = GenerationJudgement([1.0], [None], 1.0, 0.95, 0.5, 0.99, 12)
    assert not candidate.budget_passed
    assert "golden logits cosine 0.9500 < 0.99" in str(candidate.generation.message)
    candidate.generation, candidate.shape_errors = _judgement(1.0), ["large: logits [1] != [2]"]
    assert not candidate.budget_passed


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [
        ("block_size", 24, "--block-size"),
        ("block_size", 8, "--block-size"),
        ("min_token_match", 1.5, "--min-token-match"),
    ],
)
def test_weight_only_options_are_checked(field: str, value: object, flag: str) -> None:
    with pytest.raises(UsageError, match=flag):
        QuantizeOptions(mode=QuantMode.INT4, **{field: value})  # type: ignore[arg-type]


def test_token_match_floor_defaults_per_mode() -> None:
    assert QuantizeOptions(mode=QuantMode.INT4).token_match_floor == 0.5
    assert QuantizeOptions(mode=QuantMode.INT8).token_match_floor == 0.75
    assert QuantizeOptions(mode=QuantMode.INT4, min_token_match=0.9).token_match_floor == 0.9


def test_int4_refused_for_a_model_that_is_no_decoder(tmp_path: Path) -> None:
    run: Callable[..., Any] = run_quantization
    with pytest.raises(
        UsageError, match="--quantize int4 has no candidate for a model that is not a decoder"
    ):
        run(
            QuantizeOptions(mode=QuantMode.INT4),
            module=torch.nn.Linear(2, 2),
            spec=InputSpec((parse_tensor_spec("x:float32:1,2"),)),
            float_onnx=tmp_path / "none.onnx",
            golden=[],
            calibration=None,
            evaluation=None,
            formats=choose_formats(),
            plans=[],
            timing=TIMING,
            threads=1,
            work_dir=tmp_path,
            step=lambda message: None,
        )


def test_gemm_with_a_constant_weight_becomes_matmul_and_add(tmp_path: Path) -> None:
    """GPT-2's Conv1D layers export as Gemm, which ONNX Runtime's 4-bit quantizer does not rewrite."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from exporter.quantize.weight_only import gemm_to_matmul

    rng = np.random.default_rng(0)
    weight, bias = rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 8])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.standard_normal((3, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    assert gemm_to_matmul(model) == 1
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add"]
    after = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


# ---- through the pipeline: exporter export FOLDER --quantize int4 ----------------------------------------


def _export_folder(folder: Path, out: Path, **quantization: Any) -> ExportResult:
    flags = {
        "checkpoint": folder,
        "out": out,
        "targets": ("onnx",),
        "threads": 1,
        "timing": FAST_TIMING,
        "batch_sizes": (1,),
        "benchmark": False,
    }
    return export(build_export_options(None, flags, {"mode": "int4", **quantization}))


@pytest.mark.slow
def test_int4_through_the_pipeline_refuses_a_diverging_decoder_with_the_reason(tmp_path: Path) -> None:
    result = _export_folder(llama_folder(tmp_path / "llama"), tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    quantization = report["quantization"]
    rows = {c["name"]: c for c in quantization["candidates"]}
    assert set(rows) == {"int4-ort", "int4-ort-acc4"}
    for row in rows.values():  # random weights: int4 leaves the float model's path within a few tokens
        assert row["settings"]["block_size"] == 32 and row["generation"]["new_tokens"] == 32
        assert not row["budget_passed"] and row["generation"]["message"].startswith("token match")
    assert quantization["shipped"] == {} and result.exit_code == ExitCode.VERIFICATION_FAILED
    assert not (tmp_path / "out" / "model.int8.onnx").exists()
    assert "FAIL budget: token match" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.slow
def test_int4_of_gpt2_quantizes_its_gemm_layers_and_ships_when_faster(tmp_path: Path) -> None:
    result = _export_folder(
        gpt2_folder(tmp_path / "gpt2"), tmp_path / "out", min_token_match=0.0, min_cosine=0.0
    )
    assert result.quantization is not None
    candidate = next(c for c in result.quantization.candidates if c.name == "int4-ort")
    assert candidate.error is None, candidate.explanation
    assert candidate.settings["gemms_rewritten"] == 8 and candidate.settings["matmul_nbits"] == 9
    assert candidate.generation is not None and candidate.generation.passed  # floors at 0
    shipped = result.quantization.chosen
    if shipped is None:
        assert any("SLOWER than float ONNX Runtime at decode past=64" in n for n in result.quantization.notes)
    else:
        assert shipped.faster_than_float
        ops = [n.op_type for n in onnx.load(str(tmp_path / "out" / "model.int8.onnx")).graph.node]
        assert "MatMulNBits" in ops

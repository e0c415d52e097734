"""int4 models the export refused, rebuilt here so their speed is still measured (labelled "refused").

``exporter export --quantize int4`` writes only a candidate that passes its parity budget (greedy token match
against the float model) and is faster per token; a refused one is not on disk. The issue's int4 target is
about speed, so this builds the same candidates from the export's own float artifacts with the settings its
report.json records: ONNX Runtime's ``MatMulNBitsQuantizer`` (4-bit asymmetric blocks, ``accuracy_level``
4: int8 compute, the faster of the export's two ONNX Runtime candidates) on ``model.onnx``, and NNCF's
``compress_weights(int4_asym, group_size=block, ratio=1.0)`` on ``model.xml`` (as
``exporter.quantize.weight_only`` builds them). They are timed and their greedy tokens compared like the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from exporter._quiet import quiet
from exporter.quantize.nncf_int8 import _nncf_session

__all__ = ["rebuild_refused_int4"]


def rebuild_refused_int4(export: dict[str, Any], float_dir: Path) -> list[tuple[str, Path, str]]:
    """(runtime, model path, how it was built) for each runtime whose int4 candidates were all refused."""
    summary = export.get("quantization") or {}
    candidates = summary.get("candidates", [])
    built: list[tuple[str, Path, str]] = []
    work = Path(export["out"]).parent / f"{Path(export['out']).name}-refused"
    for runtime in ("onnxruntime", "openvino"):
        mine = [c for c in candidates if c["runtime"] == runtime]
        if not mine or any(c["shipped"] for c in mine):
            continue
        block = next((c["block_size"] for c in mine if c.get("block_size")), 32)
        if runtime == "onnxruntime" and (float_dir / "model.onnx").is_file():
            target = work / "model.int4.onnx"
            if not target.is_file():
                _matmul_nbits(float_dir / "model.onnx", target, block)
            built.append((runtime, target, f"MatMulNBits 4-bit block {block}, accuracy_level 4"))
        if runtime == "openvino" and (float_dir / "model.xml").is_file():
            target = work / "model.int4.xml"
            if not target.is_file():
                _nncf_int4(float_dir / "model.xml", target, block)
            built.append((runtime, target, f"NNCF int4_asym group {block}, ratio 1.0"))
    return built


def _matmul_nbits(source: Path, target: Path, block: int) -> None:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    config = DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False, accuracy_level=4, bits=4)
    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=4,
        block_size=block,
        is_symmetric=False,
        accuracy_level=4,
        algo_config=config,
    )
    with quiet():
        quantizer.process()
    target.parent.mkdir(parents=True, exist_ok=True)
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)


def _nncf_int4(source: Path, target: Path, block: int) -> None:
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(source))
    with _nncf_session():
        compressed = nncf.compress_weights(
            model, mode=nncf.CompressWeightsMode.INT4_ASYM, group_size=block, ratio=1.0
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(compressed, str(target), compress_to_fp16=False)

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

__all__ = ["convert_ir", "rebuild_int4"]


def rebuild_int4(
    export: dict[str, Any], onnx: Path, float_ir: Path | None
) -> list[tuple[str, Path, str, str]]:
    """(runtime, model path, how it was built, label) for each runtime whose int4 candidates were all refused
    ("refused, rebuilt") or that the export did not target ("not exported, built here")."""
    candidates = (export.get("quantization") or {}).get("candidates", [])
    work = Path(export["out"]).parent / f"{Path(export['out']).name}-rebuilt"
    built: list[tuple[str, Path, str, str]] = []
    for runtime, source in (("onnxruntime", onnx), ("openvino", float_ir)):
        mine = [c for c in candidates if c["runtime"] == runtime]
        if any(c["shipped"] for c in mine) or source is None or not source.is_file():
            continue
        label = "refused, rebuilt" if mine else "not exported, built here"
        block = next((c["block_size"] for c in candidates if c.get("block_size")), 32)
        target = work / ("model.int4.onnx" if runtime == "onnxruntime" else "model.int4.xml")
        how = (
            f"MatMulNBits 4-bit block {block}, accuracy_level 4"
            if runtime == "onnxruntime"
            else f"NNCF int4_asym group {block}, ratio 1.0"
        )
        try:
            if not target.is_file():
                (_matmul_nbits if runtime == "onnxruntime" else _nncf_int4)(source, target, block)
        except Exception as error:  # the quantizer refusing this model is a result: the row says why
            how = f"could not build: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
        built.append((runtime, target, how, label))
    return built


def convert_ir(onnx: Path, xml: Path) -> Path:
    """Our model.onnx read by OpenVINO, saved with float32 weights (as the export's ``onnx-*`` candidate)."""
    import openvino as ov

    if not xml.is_file():
        xml.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.convert_model(str(onnx)), str(xml), compress_to_fp16=False)
    return xml


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

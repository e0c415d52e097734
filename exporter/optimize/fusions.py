"""ONNX Runtime's transformer fusions on a model with external data, without loading its weights.

``onnxruntime.transformers.optimizer.optimize_model`` loads the whole model and runs symbolic shape inference
on it with every weight inside: on a 0.94 GiB encoder its Python fusions peaked at 6.1 GiB and held 5.2 GiB
until they returned. The same two steps are run here by hand: ONNX Runtime's basic pre-pass by path (its
initializers written to a ``.data`` file), then the Python fusions on the graph read without its external
data. Shape inference then sees shapes only, and the few initializers a fusion reads (Attention joins the
Q, K and V weights) are loaded on demand by onnx, from the model's folder. The result keeps the pre-pass's
data file, renamed after it, and the tensors the fusions made are appended to it: one ``<target>.data``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import onnx

from exporter.convert.onnx_files import EXTERNAL_THRESHOLD, data_file_name, remove_onnx_model

if TYPE_CHECKING:
    from onnxruntime.transformers.onnx_model import OnnxModel

__all__ = ["fuse_external"]


def fuse_external(source: Path, target: Path, num_heads: int, hidden_size: int) -> OnnxModel:
    """The ``bert`` fusions of ``source`` (which keeps its weights in one ``.data`` file), saved to
    ``target`` with one ``<target>.data``; returns ONNX Runtime's model object for its fusion counts."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_by_fusion, optimize_by_onnxruntime

    basic = target.with_name(f"{target.stem}.basic.onnx")
    data = target.with_name(data_file_name(target))
    try:
        optimize_by_onnxruntime(  # what optimize_model runs first for "bert" (opt_level 1)
            str(source),
            use_gpu=False,
            optimized_model_path=str(basic),
            opt_level=1,
            disabled_optimizers=["ConstantSharing"],
            save_as_external_data=True,
            external_data_filename=data_file_name(basic),
            external_data_file_threshold=EXTERNAL_THRESHOLD,
        )
        model = onnx.load(str(basic), load_external_data=False)
        with _working_directory(basic.parent):  # onnx resolves the data a fusion reads from here
            fused = optimize_by_fusion(model, "bert", num_heads, hidden_size, FusionOptions("bert"))
        data.unlink(missing_ok=True)
        basic.with_name(data_file_name(basic)).replace(data)
        _retarget(fused.model, data.name)
        fused.topological_sort()
        _import_contrib_domain(fused.model)
        onnx.save_model(  # appends the tensors the fusions made (or loaded) to the data file
            fused.model,
            str(target),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=EXTERNAL_THRESHOLD,
            convert_attribute=False,
        )
    finally:
        remove_onnx_model(basic)
    return fused


def _retarget(model: onnx.ModelProto, location: str) -> None:
    """Point every tensor that still lives in the pre-pass's data file at ``location``."""
    for tensor in onnx.external_data_helper._get_all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location


def _import_contrib_domain(model: onnx.ModelProto) -> None:
    """Import ``com.microsoft`` when fused nodes use it (what ``OnnxModel.save`` does, which cannot be used
    here: it deletes ``<target>.data`` before writing)."""
    uses = any(node.domain == "com.microsoft" for node in model.graph.node)
    if uses and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))


@contextlib.contextmanager
def _working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)

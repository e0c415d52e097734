"""ONNX Runtime's pre-processing before int8 (symbolic shape inference, then ORT's basic graph optimizations),
done so the weights stay out of Python: the graph is read without them, inferred, and handed to an ORT
session by path, which writes the optimized model (with one ``<target>.data`` when the model keeps external
data).

``quant_pre_process`` does the same steps on loaded protos: on a 255 M-parameter encoder (1 GB of weights)
it peaked at 6.5 GiB (loaded model, the shape inferencer's copy, serialized copies, the session), against
about 2 GiB here. Models below opset 11 still go through it: it rewrites their Upsample ops first.
"""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import onnx

from exporter._quiet import quiet
from exporter.convert.onnx_files import (
    PROTOBUF_LIMIT,
    data_file_name,
    save_graph_only,
    save_onnx,
    uses_external_data,
)
from exporter.errors import first_line

__all__ = ["clear_output", "external_output", "preprocess"]

_PRE_PROCESSED = {"onnx.quant.pre_process": "onnxruntime.quant"}
"""The tag ``quant_pre_process`` leaves, which ORT's quantizers look for before warning."""
_UPSAMPLE_OPSET = 10


def external_output(source: Path) -> bool:
    """Whether a model made from ``source`` keeps its weights in one ``<file>.data``: when ``source`` does
    (a model that arrives with external data leaves with it), or when ``source`` is near protobuf's 2 GB
    limit (a QDQ model of it adds scales and zero points, and ORT keeps float copies while it works)."""
    return source.stat().st_size > PROTOBUF_LIMIT // 2 or uses_external_data(source)


def clear_output(target: Path) -> None:
    """Remove ``target``'s data file before a writer makes it: onnx's writer appends to an existing one,
    so a rebuild (a repair, a second calibration method) would otherwise grow it with stale bytes."""
    target.with_name(data_file_name(target)).unlink(missing_ok=True)


def preprocess(source: Path, target: Path) -> str | None:
    """ORT's recommended pre-processing before quantizing. ``target`` is a work file, written with its
    weights in one ``<target>.data`` (the session writes them so; the quantizers read either form, and
    ``external_output`` of the float model decides how each candidate is written).

    Returns None on success, or why the model was quantized as is (the file is then a plain copy).
    Symbolic shape inference often stops on exported encoders; ``auto_merge`` is the documented remedy,
    and skipping it is the last resort.
    """
    errors: list[str] = []
    for symbolic in (True, False):
        clear_output(target)
        try:
            with quiet():
                _preprocess(source, target, symbolic=symbolic)
            return None if not errors else f"symbolic shape inference failed ({errors[0]}); skipped it"
        except Exception as error:
            errors.append(first_line(error, 160))
    clear_output(target)
    save_graph_only(onnx.load(str(source), load_external_data=False), source, target)
    return f"pre-processing failed ({'; '.join(errors)}); quantized the model as exported"


def _preprocess(source: Path, target: Path, *, symbolic: bool) -> None:
    model = onnx.load(str(source), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset <= _UPSAMPLE_OPSET:
        del model
        _quant_pre_process(source, target, symbolic=symbolic)
        return
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(dir=target.parent, prefix=".pre.")))
        if uses_external_data(source):
            folder = source.parent  # the graph must sit beside the data file it names
        else:
            folder = scratch  # weights written out once, so the steps below hold the graph only
            save_onnx(model, scratch / "weights.onnx", external=True)
        if symbolic:
            from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

            _load_small_tensors(model, folder)

            with contextlib.chdir(scratch):  # it saves a model to the working folder when it fails
                model = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
        onnx.helper.set_model_props(model, {p.key: p.value for p in model.metadata_props} | _PRE_PROCESSED)
        graph = folder / f".{target.stem}.pre.onnx"
        stack.callback(graph.unlink, missing_ok=True)
        onnx.save_model(model, str(graph))
        del model
        _optimize(graph, target)


SMALL_TENSOR_BYTES = 2**20
"""External tensors below this size are read into the graph before symbolic shape inference: it reads
the values of biases and shape constants (an attention block's ``in_proj_bias``), never of the weights."""


def _load_small_tensors(model: onnx.ModelProto, folder: Path) -> None:
    """Bring the small external tensors of ``model`` (whose data file is in ``folder``) inline."""
    from onnx.external_data_helper import load_external_data_for_tensor, uses_external_data

    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        length = next((int(e.value) for e in tensor.external_data if e.key == "length"), None)
        if length is not None and length < SMALL_TENSOR_BYTES:
            load_external_data_for_tensor(tensor, str(folder))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def _optimize(graph: Path, target: Path) -> None:
    """ORT's basic optimizations (constant folding, redundant nodes), written to ``target`` by the session
    itself, which reads the weights by path and writes them to ``<target>.data`` (without that setting it
    would keep pointing at the input's data file, a scratch file here)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(target)
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.add_session_config_entry(
        "session.optimized_model_external_initializers_file_name", data_file_name(target)
    )
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    del session


def _quant_pre_process(source: Path, target: Path, *, symbolic: bool) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    external = external_output(source)
    settings = {"auto_merge": True} if symbolic else {"skip_symbolic_shape": True}
    quant_pre_process(
        str(source),
        str(target),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        external_data_location=data_file_name(target) if external else None,
        **settings,
    )

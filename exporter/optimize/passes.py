"""The optimize passes, one list of them: each says its name, what it requires of its input graph, what it
ensures of its output, how it builds that output, and whether it changed the graph.

Modelled on onnx-ir's pass infrastructure (``requires -> call -> ensures``, a ``PassResult`` with ``model``
and ``modified``), but a pass here reads and writes files: the optimizer verifies and times every output
against the golden cases, so a pass's output must be a saved model an ONNX Runtime session can open.
Adding a pass means one class and one entry in :data:`PASSES`; the ``--optimize`` choices, the recipe's
``[optimize] steps`` and the report all read the list.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import onnx

from exporter.convert.onnx_files import (
    EXTERNAL_THRESHOLD,
    data_file_name,
    read_structure,
    save_graph_only,
    save_onnx,
    uses_external_data,
)
from exporter.optimize.fusions import fuse_external
from exporter.optimize.graph_facts import looks_like_transformer
from exporter.optimize.results import OptimizeOptions

__all__ = [
    "OPTIMIZE_STEPS",
    "PASSES",
    "Float16",
    "OptimizePass",
    "OrtOffline",
    "PassConditionError",
    "PassResult",
    "PassSettings",
    "SplitSkipNorm",
    "TransformerFusions",
    "pass_named",
    "resolve_steps",
    "split_skip_layer_norm",
]


class PassConditionError(Exception):
    """A pass's precondition (``requires``) or postcondition (``ensures``) does not hold; the message says
    which, and the optimizer records it as the step's failure."""


@dataclass(frozen=True)
class PassResult:
    """``model``: where the pass wrote its output; ``modified``: whether that differs from its input (an
    unmodified output is not verified or timed); ``counts``: what it changed, by kind (the report's
    ``fused``: fused operators, split nodes, converted initializers)."""

    model: Path
    modified: bool
    counts: dict[str, int] = field(default_factory=dict)


class PassSettings(Protocol):
    """What a pass may read of the optimize request (the request itself satisfies it)."""

    @property
    def options(self) -> OptimizeOptions: ...

    @property
    def threads(self) -> int: ...


class OptimizePass:
    """One graph rewrite. Class attributes say how the optimizer treats it:

    - ``auto``: ``--optimize auto`` picks it when the graph looks like a transformer.
    - ``quantizable``: int8 may start from its output (quantizers know standard and transformer ops, not
      ONNX Runtime's CPU-specific fused kernels).
    - ``session_load``: ONNX Runtime makes the same rewrites when a session opens the model, so a variant that
      differs from the portable one by such passes alone runs alike and does not ship beside it.
    - ``alternative_until``: the pass matches the TorchScript-based exporter's graphs better, so that graph is
      made and tried too, unless this pass already fused the named operator on the exporter's own graph.
    - ``unmodified``: the step's reason in the report when the pass changed nothing.
    """

    name: ClassVar[str]
    auto: ClassVar[bool] = False
    quantizable: ClassVar[bool] = True
    session_load: ClassVar[bool] = False
    alternative_until: ClassVar[str | None] = None
    unmodified: ClassVar[str] = "changed nothing"

    def requires(self, source: Path) -> None:
        """Raise :class:`PassConditionError` when ``source`` cannot take this pass (default: any can)."""

    def build(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        """Write the rewritten ``source`` to ``target``."""
        raise NotImplementedError

    def ensures(self, source: Path, result: PassResult) -> None:
        """The model's interface is unchanged: the same graph inputs and outputs by name and element type,
        which the golden cases feed and compare by."""
        before, after = _interface(source), _interface(result.model)
        if before != after:
            raise PassConditionError(f"the model's inputs or outputs changed: {before} -> {after}")

    def __call__(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        """``requires -> build -> ensures`` (the last only when the graph changed)."""
        self.requires(source)
        result = self.build(source, target, settings)
        if result.modified:
            self.ensures(source, result)
        return result


class TransformerFusions(OptimizePass):
    """``onnxruntime.transformers`` fusions (Attention, SkipLayerNormalization, BiasGelu,
    EmbedLayerNormalization); heads and hidden size from the options (0: ORT infers them)."""

    name = "transformer"
    auto = True
    alternative_until = "Attention"
    unmodified = "nothing fused (no attention, layer-norm or GELU pattern matched)"

    def build(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        """A source with external data (the optimizer's working copies always have it) is fused without
        loading its weights (:func:`exporter.optimize.fusions.fuse_external`), into one ``<target>.data``;
        a self-contained one by ``optimize_model``, which loads it whole."""
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        heads, hidden = settings.options.num_heads, settings.options.hidden_size
        if uses_external_data(source):
            model = fuse_external(source, target, heads, hidden)
        else:
            model = optimize_model(
                str(source),
                model_type="bert",
                num_heads=heads,
                hidden_size=hidden,
                optimization_options=FusionOptions("bert"),
            )
            model.save_model_to_file(str(target))
        fused = {
            k: int(v)
            for k, v in model.get_fused_operator_statistics().items()
            if v and k != "LayerNormalization"
        }
        return PassResult(target, any(fused.values()), fused)


class SplitSkipNorm(OptimizePass):
    """Each ``SkipLayerNormalization`` back into standard ``Sum`` + ``LayerNormalization`` (see
    :func:`split_skip_layer_norm`)."""

    name = "splitnorm"
    auto = True
    unmodified = "nothing to split (no SkipLayerNormalization node)"

    def requires(self, source: Path) -> None:
        """LayerNormalization is an opset-17 operator: a graph with something to split must import it."""
        model = read_structure(source)
        if _splittable(model) and _onnx_opset(model) < 17:
            raise PassConditionError(_OPSET_17)

    def build(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        if not _splittable(read_structure(source)):  # nothing written: a copy of the weights saved
            return PassResult(target, False, {"SkipLayerNormalization_split": 0})
        split = split_skip_layer_norm(source, target)
        return PassResult(target, split > 0, {"SkipLayerNormalization_split": split})


class Float16(OptimizePass):
    """float16 weights and compute, float32 inputs and outputs kept."""

    name = "fp16"

    def build(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        """Converted from the path: ORT's converter then infers shapes by path (``infer_shapes_path``, which
        works past 2 GB, where the in-memory inference serializes the whole model) and loads the result once.
        A source with external data is written with one ``<target>.data``."""
        from onnxruntime.transformers.float16 import convert_float_to_float16

        model = convert_float_to_float16(str(source), keep_io_types=True)
        halves = sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
        save_onnx(model, target, external=uses_external_data(source))
        # Modified even without float16 weights: the casts at the inputs and outputs are always inserted.
        return PassResult(target, True, {"float16_initializers": halves})

    def ensures(self, source: Path, result: PassResult) -> None:
        """The interface is unchanged, and ONNX Runtime can open the graph without crashing: on some float16
        graphs (the tiny attention block's) ONNX Runtime 1.32's layout optimizer (``NchwcTransformer``, at
        ``ORT_ENABLE_ALL``, which every face opens models at) dies of a segmentation fault, which would take
        the whole export with it. The graph is opened once in a child process to find out."""
        super().ensures(source, result)
        crash = _session_crash(result.model)
        if crash:
            raise PassConditionError(f"ONNX Runtime crashes opening the float16 graph ({crash})")


class OrtOffline(OptimizePass):
    """ONNX Runtime's own offline optimization (``ORT_ENABLE_EXTENDED``, saved)."""

    name = "ort"
    quantizable = False
    session_load = True

    def build(self, source: Path, target: Path, settings: PassSettings) -> PassResult:
        """The session writes the optimized graph as it opens; a source with external data gets its
        initializers written to one ``<target>.data`` (without the two config entries ORT would keep
        pointing at the source's data file by a path relative to the wrong folder). The session is dropped
        before the node counts are read."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(target)
        options.intra_op_num_threads = settings.threads
        options.log_severity_level = 4
        data = target.with_name(data_file_name(target))
        data.unlink(missing_ok=True)
        if uses_external_data(source):
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_file_name", data.name
            )
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", str(EXTERNAL_THRESHOLD)
            )
        session = ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        del session
        before = len(read_structure(source).graph.node)
        after = len(read_structure(target).graph.node)
        # Modified even at the same node count: constant folding and layout rewrites do not show in it.
        return PassResult(target, True, {"nodes_before": before, "nodes_after": after})


PASSES: tuple[OptimizePass, ...] = (TransformerFusions(), SplitSkipNorm(), Float16(), OrtOffline())
"""Every pass, in the order they run whatever order they are named in."""

OPTIMIZE_STEPS = tuple(p.name for p in PASSES)
"""The pass names ``--optimize`` and a recipe's ``[optimize] steps`` accept besides ``auto`` and ``none``."""


def pass_named(name: str) -> OptimizePass:
    """The pass called ``name``, looked up per call in :data:`PASSES` (tests replace one there)."""
    return next(p for p in PASSES if p.name == name)


def resolve_steps(options: OptimizeOptions, path: Path) -> list[str]:
    """The passes to run, in their fixed order (``auto``: the ``auto`` passes when the graph has attention).
    ``ort`` runs only when named: ONNX Runtime makes the same rewrites when a session opens the model, and
    across the encoder, CNN and LSTM benchmarks it never won beyond timing noise while costing a build, a
    verification and a timing per source."""
    requested = set(options.steps)
    if "none" in requested:
        return []
    if "auto" in requested:
        requested.discard("auto")
        if looks_like_transformer(path):
            requested.update(p.name for p in PASSES if p.auto)
    return [p.name for p in PASSES if p.name in requested]


_OPSET_17 = "LayerNormalization needs opset 17; the model's default domain is older"


def split_skip_layer_norm(source: Path, target: Path) -> int:
    """SkipLayerNormalization(x, skip, gamma[, beta[, bias]]) -> LayerNormalization(Sum(x, skip[, bias])),
    written to ``target``; returns how many nodes were split.

    Nodes whose mean / inverse-std outputs are used stay fused (LayerNormalization's optional outputs are
    not the same tensors' shapes in every opset); its fourth output, the pre-norm sum, is the Sum's output.
    Only nodes change: the graph is read without its external data and saved beside a copy of the source's
    one ``.data`` file (``save_graph_only``), so the weights are never loaded nor re-serialized.
    """
    model = onnx.load(str(source), load_external_data=False)
    splittable = _splittable(model)
    if splittable and _onnx_opset(model) < 17:
        raise ValueError(_OPSET_17)
    if splittable:
        nodes = [
            n
            for i, node in enumerate(model.graph.node)
            for n in (_split(node) if i in splittable else [node])
        ]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    save_graph_only(model, source, target)
    return len(splittable)


def _splittable(model: onnx.ModelProto) -> set[int]:
    """The indices of ORT's SkipLayerNormalization nodes whose mean and inverse-std outputs nothing reads."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return {
        i
        for i, node in enumerate(model.graph.node)
        if node.op_type == "SkipLayerNormalization"
        and node.domain == "com.microsoft"
        and not any(o and o in used for o in list(node.output)[1:3])
    }


def _split(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """One SkipLayerNormalization as its Sum and LayerNormalization."""
    outputs = list(node.output) + [""] * (4 - len(node.output))
    inputs = list(node.input) + [""] * (5 - len(node.input))
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    total = outputs[3] or f"{node.name or outputs[0]}_skip_sum"
    addends = [inputs[0], inputs[1]] + ([inputs[4]] if inputs[4] else [])
    norm_inputs = [total, inputs[2]] + ([inputs[3]] if inputs[3] else [])
    return [
        onnx.helper.make_node("Sum", addends, [total], name=f"{node.name}_sum"),
        onnx.helper.make_node(
            "LayerNormalization",
            norm_inputs,
            [outputs[0]],
            name=f"{node.name}_norm",
            axis=-1,
            epsilon=epsilon,
        ),
    ]


_OPEN_SESSION = (
    "import sys, onnxruntime as ort\n"
    "options = ort.SessionOptions()\n"
    "options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL\n"
    "options.log_severity_level = 4\n"
    "ort.InferenceSession(sys.argv[1], options, providers=['CPUExecutionProvider'])\n"
)


def _session_crash(path: Path) -> str | None:
    """The signal that killed a child process opening ``path`` in a CPU session at ``ORT_ENABLE_ALL``, or
    None when it did not crash (an error ONNX Runtime raises is the verification's to report)."""
    done = subprocess.run(
        [sys.executable, "-c", _OPEN_SESSION, str(path)], capture_output=True, check=False, timeout=600
    )
    if done.returncode >= 0:
        return None
    try:
        return signal.Signals(-done.returncode).name
    except ValueError:
        return f"signal {-done.returncode}"


def _onnx_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _interface(path: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(inputs, outputs) of the main graph as (name, element type)."""
    graph = read_structure(path).graph
    inputs = {i.name for i in graph.initializer}  # old opsets list initializers as inputs too
    return (
        [(v.name, v.type.tensor_type.elem_type) for v in graph.input if v.name not in inputs],
        [(v.name, v.type.tensor_type.elem_type) for v in graph.output],
    )

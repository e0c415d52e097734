"""Mixed precision for NNCF's OpenVINO int8: the fastest set of layers to keep in float (``mixed_precision``
search), each trial re-quantized by ``nncf.quantize`` with those layers in an ``IgnoredScope``
(``nncf_variants``). The float layers run at the plugin's precision hint, bf16 where the CPU has it.

Layers are named by their ONNX node (as the report names ONNX Runtime's float layers); the OpenVINO op
names NNCF ignores are recorded in settings. Fewer layers are probed than for ONNX Runtime
(``PROBE_LIMIT``): each trial is an ``nncf.quantize`` run (about 4.6 s on a 6-layer MiniLM-sized encoder).
"""

from __future__ import annotations

from collections.abc import Sequence

from exporter.quantize.judge import judge
from exporter.quantize.layer_costs import layer_costs_ms
from exporter.quantize.mixed_precision import moves_for, search_float_layers
from exporter.quantize.openvino_candidates import (
    OPENVINO_RUNTIME,
    build_variant,
    int8_openvino_config,
    openvino_precision,
)
from exporter.quantize.sensitivity import producers, quantizable_nodes
from exporter.quantize.types import Builder, Candidate, QuantizeContext

__all__ = ["PROBE_LIMIT", "keep_openvino_layers_in_float"]

PROBE_LIMIT = 8
PAIR_PROBES = 2


def keep_openvino_layers_in_float(candidate: Candidate, build: Builder, context: QuantizeContext) -> None:
    """When the kept smooth-quant alpha still misses the budget: search the layers to keep in float at
    that alpha (probe the proxy's shortlist, walk by error removed per MAC, prune; see ``mixed_precision``)
    and rebuild the candidate with them in NNCF's ``IgnoredScope``."""
    import openvino as ov

    from exporter.quantize.nncf_variants import Variant, openvino_names, openvino_shortlist

    if candidate.budget_passed or candidate.shape_errors or candidate.path is None:
        return
    alpha = context.cache.get("smooth quant alpha")
    if alpha is None:
        return
    float_model = ov.convert_model(str(context.float_onnx))
    names = openvino_names(context.float_onnx, float_model)  # ONNX node -> OpenVINO op
    onnx_of = {v: k for k, v in names.items()}
    limit = min(context.options.max_float_layers, max(1, len(names) // 2))
    if not names or limit < 1:
        return
    context.step(f"{candidate.name}: shortlisting sensitive layers")
    quantized = ov.Core().read_model(str(candidate.path))
    ranked = openvino_shortlist(
        context.float_onnx,
        quantized,
        list(names.values()),
        context.evaluation.samples[:8],
        threads=context.threads,
        size=PROBE_LIMIT,
    )
    pool = [onnx_of[n] for n in ranked]
    costs = layer_costs_ms(context, context.float_onnx, candidate)
    upstream = {k: [p for p in v if p in names] for k, v in producers(context.float_onnx).items()}
    trial = Candidate(
        candidate.name,
        candidate.engine,
        path=context.work_dir / f"{candidate.name}.trial.xml",
        runtime=OPENVINO_RUNTIME,
        config=int8_openvino_config(context),
    )

    def variant(kept: Sequence[str]) -> Variant:
        return Variant(True, alpha, tuple(names[n] for n in kept))

    def measure(kept: Sequence[str]) -> tuple[float, bool]:
        assert trial.path is not None
        build_variant(context, trial.path, variant(kept))
        judge(trial, context)
        return trial.cosine_error, trial.budget_passed

    found = search_float_layers(
        moves_for(pool, upstream, PAIR_PROBES),
        costs.shares,
        dict(quantizable_nodes(context.float_onnx)),
        measure,
        baseline=candidate.cosine_error,
        limit=limit,
        step=lambda message: context.step(f"{candidate.name}: {message}"),
    )
    summary = found.summary() | costs.summary()
    if not found.layers:
        candidate.settings = {**candidate.settings, "mixed_precision": summary}
        return
    precision = openvino_precision()
    settings = build_variant(context, candidate.path, variant(found.nodes))
    judge(candidate, context)
    candidate.float_layers = costs.describe(found.layers, precision)
    candidate.settings = {
        **candidate.settings,
        **settings,
        "mixed_precision": summary,
        "ignored_scope": [names[n] for n in found.nodes],
        "float_layer_precision": precision,
    }

"""The spec's dynamic dims as torch.export dynamic shapes (issue 23): a multiple-of dim is ``N * Dim('_h')``,
the derived dim torch.export's own "Suggested fixes" ask for. The model is ``ceil_pool`` (two ceil-mode
MaxPool2d, as face detectors have), which torch.export keeps dynamic in H and W only as multiples of 4."""

from __future__ import annotations

import torch

from exporter.convert._dynamic_shapes import dynamic_shapes_for
from exporter.runners.base import CallConvention
from exporter.specs.inputs import InputSpec, make_inputs, parse_tensor_spec, shape_cases, trace_sizes
from tests.models import MODELS

FACE_SPEC = "image:float32:batch=1..4,3,h=64..512%4,w=64..512%4"


def _spec(*texts: str) -> InputSpec:
    return InputSpec(tuple(parse_tensor_spec(t) for t in texts))


def test_torch_export_keeps_ceil_mode_pooling_dynamic_as_multiples_of_4() -> None:
    """Without the multiple, torch.export refuses (see test_convert_stage); with it, one program serves every
    case up to the declared 4 x 3 x 512 x 512."""
    module = MODELS["ceil_pool"].build()
    spec = _spec(FACE_SPEC)
    convention = CallConvention.for_module(module, spec.names)
    example = {n: torch.from_numpy(a) for n, a in make_inputs(spec, trace_sizes(spec), 0).items()}
    args, kwargs = convention.split(example)
    program = torch.export.export(module, args, kwargs, dynamic_shapes=dynamic_shapes_for(spec, convention))
    exported = program.module()
    cases = shape_cases(spec)
    assert "max" in {c.name for c in cases}  # (the export case is the minimum: a range's example is LOW)
    for case in cases:
        inputs = {n: torch.from_numpy(a) for n, a in make_inputs(spec, case.sizes, 1).items()}
        case_args, case_kwargs = convention.split(inputs)
        with torch.no_grad():
            expected, got = module(*case_args, **case_kwargs), exported(*case_args, **case_kwargs)
        for want, have in zip(expected, got, strict=True):
            torch.testing.assert_close(have, want, rtol=1e-4, atol=1e-5)
    [user_input] = program.graph_signature.user_inputs
    node = next(n for n in program.graph.nodes if n.name == user_input)
    batch, _, h, w = (str(size) for size in node.meta["val"].shape)  # e.g. s77, 3, 4*s16, 4*s62
    assert h.startswith("4*") and w.startswith("4*") and "*" not in batch


def test_dynamic_shapes_name_the_multiples_base_apart_from_every_label() -> None:
    spec = _spec("x:float32:h=64..512%4,_h=3,__h=5")
    shapes = dynamic_shapes_for(spec, CallConvention((spec.names[0],), ()))
    h, plain, other = (shapes[0][axis] for axis in range(3))
    assert (h.min, h.max, h.root.min, h.root.max) == (64, 512, 16, 128)
    assert h.root.__name__ == "___h" and plain.__name__ == "_h" and other.__name__ == "__h"
    unbounded = dynamic_shapes_for(_spec("x:float32:h=8%4"), CallConvention(("x",), ()))[0][0]
    assert unbounded.root.min == 1 and unbounded.min == 4

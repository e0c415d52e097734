"""The start-up check: every golden case through ``POST /v2/models/{name}/infer`` (the path clients take),
judged by ``exporter.verify.comparison``, the rules ``exporter verify`` applies (one implementation).

The outputs are asked for as raw bytes (the binary tensor data extension), so NaN and +/-Inf come back bit
for bit and a model whose reference outputs hold NaN is served when it reproduces them, as verify passed it.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from exporter.documents.manifest import GoldenCaseEntry, Manifest
from exporter.serving.app import SELF_CHECK_HEADER
from exporter.serving.artifact import ServedArtifact, golden_cases
from exporter.serving.limits import BINARY_HEADER
from exporter.serving.signature import DATATYPE_OF, ModelSignature
from exporter.verify.comparison import compare_outputs, min_row_cosine

__all__ = ["GoldenMismatch", "golden_check", "judge", "self_check_post"]


class GoldenMismatch(Exception):
    """The served artifact's outputs on a golden case differ from the manifest's reference outputs."""


async def golden_check(
    url: str,
    token: str,
    *,
    folder: Path,
    manifest: Manifest,
    artifact: ServedArtifact,
    signature: ModelSignature,
) -> str:
    """Send every golden case of ``folder`` to ``url``; a summary line, or ``GoldenMismatch``.

    Float artifacts must match within the manifest's tolerance; lossy ones (int8, bf16) must keep every
    sample's cosine at or above their parity budget's, with NaN/Inf where the reference has them.
    """
    worst = 0.0
    cases = golden_cases(manifest)
    for case in cases:
        inputs = _npz(folder / case.inputs)
        expected = _npz(folder / case.outputs)
        body = {
            "id": f"golden-{case.case}",
            "inputs": [
                {
                    "name": rule.name,
                    "shape": list(inputs[rule.name].shape),
                    "datatype": rule.datatype,
                    "data": inputs[rule.name].reshape(-1).tolist(),
                }
                for rule in signature.inputs
            ],
            "parameters": {"binary_data_output": True},
        }
        reply = await asyncio.to_thread(_post, url, body, token)
        worst = max(worst, judge(case, reply, expected, manifest, artifact))
    if artifact.budget is not None:
        return (
            f"{len(cases)} golden cases within the parity budget (cosine >= {artifact.budget.min_cosine:g})"
        )
    tolerance = manifest.tolerance
    return (
        f"{len(cases)} golden cases match through HTTP within atol={tolerance.atol:g} "
        f"rtol={tolerance.rtol:g} (max abs diff {worst:.3g})"
    )


def self_check_post(url: str, body: dict[str, Any], token: str, what: str) -> tuple[bytes, Any]:
    """POST one start-up check to this server (marked by ``SELF_CHECK_HEADER``): the body and headers of
    its answer; an HTTP error is a ``GoldenMismatch`` naming ``what`` and the server's own message."""
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", SELF_CHECK_HEADER: token},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return response.read(), response.headers
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        raise GoldenMismatch(f"{what} {body['id']} got HTTP {error.code}: {detail}") from None


def _post(url: str, body: dict[str, Any], token: str) -> dict[str, np.ndarray]:
    """The outputs of one request, decoded from the binary tensor data extension's response."""
    content, headers = self_check_post(url, body, token, "golden request")
    length = int(headers.get(BINARY_HEADER) or len(content))
    header, offset, outputs = json.loads(content[:length]), length, {}
    dtypes = {datatype: np.dtype(name) for name, datatype in DATATYPE_OF.items()}
    for output in header.get("outputs", []):
        size = int(output["parameters"]["binary_data_size"])
        dtype = dtypes[output["datatype"]].newbyteorder("<")
        raw = np.frombuffer(content[offset : offset + size], dtype=dtype)
        outputs[output["name"]] = raw.reshape(output["shape"])
        offset += size
    return outputs


def judge(
    case: GoldenCaseEntry,
    outputs: dict[str, np.ndarray],
    expected: dict[str, np.ndarray],
    manifest: Manifest,
    artifact: ServedArtifact,
) -> float:
    """The largest absolute difference on this case; ``GoldenMismatch`` outside tolerance or budget."""
    worst = 0.0
    tolerance = manifest.tolerance
    budget = artifact.budget
    for name in case.output_names:
        if name not in outputs:
            raise GoldenMismatch(f"golden case {case.case}: the response has no output '{name}'")
        actual, reference = outputs[name], expected[name]
        where = f"golden case {case.case}, output '{name}'"
        comparison = compare_outputs(name, actual, reference, tolerance)
        worst = max(worst, comparison.max_abs_diff or 0.0)
        if budget is None:
            if not comparison.passed:
                raise GoldenMismatch(f"{where}: {comparison.message}")
            continue
        if comparison.nonfinite_mismatch or actual.shape != reference.shape:
            raise GoldenMismatch(f"{where}: {comparison.message}")
        if reference.dtype.kind == "f":  # a lossy artifact's integer outputs (argmax, say) may move
            cosine = min_row_cosine(actual, reference)
            if cosine < budget.min_cosine:
                raise GoldenMismatch(
                    f"{where}: cosine {cosine:.4f} < the parity budget's {budget.min_cosine:g}"
                )
    return worst


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {key: archive[key] for key in archive.files}

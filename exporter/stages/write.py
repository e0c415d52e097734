"""The write stage: shipped artifacts moved into the staging folder, golden files, report.json/.md/.html
and manifest.json (which hashes everything else)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporter.documents.build import RunRecord, build_manifest, build_report, lossy_artifacts
from exporter.documents.decoder import GENERATION_FILE
from exporter.hf.facts import HfFacts
from exporter.report.files import render_reports
from exporter.stages.records import StageStatus, StageTracker
from exporter.stages.staging import write_golden, write_json, write_sample_golden

if TYPE_CHECKING:
    from exporter.options import ExportOptions

__all__ = ["write_stage"]


def write_stage(
    *, staging: Path, build_dir: Path, options: ExportOptions, run: RunRecord, stages: StageTracker
) -> dict[str, Any]:
    """Fill the staging folder; return the report."""
    for result in run.backends:
        if result.file is None or result.path is None or result.spec is None:
            continue
        if not result.path.exists():  # no candidate could be built: the report says why, nothing to ship
            result.file = None
            continue
        result.spec.store(result.path, staging / result.file)
    for spec, chosen in lossy_artifacts(run.quantization):
        assert chosen.path is not None and spec.file is not None
        spec.store(chosen.path, staging / spec.file)
    golden_index = write_golden(staging / "golden", run.golden)
    facts = run.loaded.hf
    if facts is not None:
        _write_hf_files(staging, facts)
    if run.quantization is not None:
        golden_index.append(write_sample_golden(staging / "golden", "int8-eval", run.quantization.evaluation))
    shutil.rmtree(build_dir, ignore_errors=True)
    stages.records["write"].status = StageStatus.PASSED
    report = build_report(options, run, stages.list())
    write_json(staging / "report.json", report)
    render_reports(staging, report)
    write_json(staging / "manifest.json", build_manifest(options, run, golden_index, staging))
    return report


def _write_hf_files(staging: Path, facts: HfFacts) -> None:
    """The folder's tokenizer files into ``tokenizer/`` (a deployment tokenizes as the export did) and a
    decoder's golden prompts with transformers' tokens into ``golden/generation.json`` (``exporter verify``
    replays them); both hashed in the manifest like every other file."""
    if facts.tokenizer_files:
        (staging / "tokenizer").mkdir(exist_ok=True)
        for source in facts.tokenizer_files:
            shutil.copyfile(source, staging / "tokenizer" / source.name)
    if facts.is_decoder and facts.generation:
        payload = {"max_new_tokens": facts.max_new_tokens, "cases": [c.to_json() for c in facts.generation]}
        (staging / GENERATION_FILE).parent.mkdir(exist_ok=True)
        write_json(staging / GENERATION_FILE, payload)

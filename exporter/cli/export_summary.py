"""The summary ``exporter export`` prints after a run: the parity and latency matrices, the lossy candidates,
notes, and the one verdict line with where the artifacts are."""

from __future__ import annotations

from rich.markup import escape

from exporter.benchmark.trust import timing_sentences
from exporter.cli.shared import out, rich_table
from exporter.documents.build import lossy_artifacts
from exporter.pipeline import ExportResult
from exporter.report.decoder import decoder_latency_table, generation_table
from exporter.report.lossy import top1_note
from exporter.report.markdown import latency_matrix, parity_matrix, parity_table, quantization_table

__all__ = ["print_summary"]


def print_summary(result: ExportResult) -> None:
    report = result.report
    out.print(
        rich_table("Parity matrix: shipped artifact x shape case, worst max abs diff", parity_matrix(report))
    )
    failing = [b for b in result.backends if not b.passed]
    if failing:
        shipped = {
            **report,
            "parity": [p.to_json() for b in failing for p in b.parity if p.artifact == b.shipped],
        }
        out.print(rich_table("Parity failures in detail", parity_table(shipped)))
    if report["quantization"]:
        out.print(
            rich_table(
                f"Lossy candidates ({report['quantization']['budget']['text']})", quantization_table(report)
            )
        )
        if note := top1_note(report):
            out.print(f"[dim]{escape(note)}[/]")
    if report["latency"]:
        title = f"Latency matrix ({report['environment']['threads']} threads): p50 ms (speedup vs eager)"
        out.print(rich_table(title, latency_matrix(report)))
        for line in timing_sentences(report):  # next to the matrix: why a speedup is not trustworthy
            out.print(f"[yellow]timing:[/] {escape(line)}")
    if report.get("generation"):
        tokens = report["generation"][0]["max_new_tokens"]
        out.print(
            rich_table(
                f"Greedy generation ({tokens} tokens) vs transformers generate", generation_table(report)
            )
        )
    if report.get("decoder_latency"):
        out.print(
            rich_table("Decoder latency: time to first token and per token", decoder_latency_table(report))
        )
    for note in report["notes"]:
        out.print(f"[yellow]note:[/] {escape(note)}")
    for failure in result.failed_targets:
        out.print(
            f"[red]not converted:[/] {escape(failure.target)} ({escape(failure.backend)}): "
            f"{escape(failure.error)}",
            highlight=False,
        )
    verdict = "[green]PASSED[/]" if result.passed else "[red]FAILED: verification[/]"
    if result.passed and result.failed_targets:
        names = ", ".join(f.target for f in result.failed_targets)
        verdict = (
            f"[yellow]PARTIAL (exit 6): {escape(names)} not converted (report.md has the converter's full "
            "explanation; --skip leaves a target out)[/]"
        )
    lossy = [str(spec.file) for spec, _ in lossy_artifacts(result.quantization)]
    if lossy and result.quantization is not None and result.quantization.synthetic_only:
        verdict += (
            f" [yellow]({escape(', '.join(lossy))} judged on synthetic inputs only: prove it with "
            "--calibration FILE.npz of real inputs)[/]"
        )
    files = ", ".join(
        [*(b.file for b in result.backends if b.file), *lossy, "golden/", "manifest.json", "report.md/.html"]
    )
    out.print(f"{verdict}  artifacts in [bold]{escape(str(result.out_dir))}[/] ({escape(files)})")

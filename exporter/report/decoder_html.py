"""report.html's decoder sections: greedy generation per artifact and prompt, and the time to first token
and per token as bars (the latency chart's, one group per call) and a table."""

from __future__ import annotations

from typing import Any

from exporter.report.decoder import (
    decoder_latency_report,
    decoder_latency_table,
    decoder_timing_caveat,
    generation_table,
)
from exporter.report.html_sections import table_html
from exporter.report.svg import esc, latency_chart

__all__ = ["decoder_sections"]


def decoder_sections(report: dict[str, Any]) -> list[str]:
    """The ``generation`` and ``decoder-latency`` sections, or none for a model that is not a decoder."""
    sections = []
    generation = report.get("generation")
    if generation:
        table = generation_table(report)
        classes = ["" if row[3] == "identical" else "fail" for row in table[1]]
        how = (
            f"{esc(generation[0]['max_new_tokens'])} greedy tokens from each golden prompt through each "
            f"artifact and its cache, against {esc(generation[0]['reference'])}: a float artifact must "
            "generate identical tokens."
        )
        sections.append(
            f'<section id="generation"><h2>Greedy generation</h2><p>{how}</p>'
            f"{table_html(table, table_id='generation-table', numeric=(2, 5), row_classes=classes)}</section>"
        )
    if report.get("decoder_latency"):
        chart = latency_chart(decoder_latency_report(report))
        rows = table_html(
            decoder_latency_table(report), table_id="decoder-latency-table", numeric=range(2, 7)
        )
        sections.append(
            '<section id="decoder-latency"><h2>Decoder latency</h2><p>Time to first token (one prefill call '
            "over the prompt) and per token (one decode call after the cached positions); eager is "
            f"transformers with its own cache, same threads.{esc(decoder_timing_caveat(report))}</p>"
            f'<figure id="decoder-latency-chart">{chart}<figcaption>p50 per call (shorter is faster), '
            "grouped by prompt or past length.</figcaption></figure>"
            f"{rows}</section>"
        )
    return sections

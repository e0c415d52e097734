"""A decoder's report sections, as tables built once from ``report.json``'s dict (report.md, the terminal
and report.html read the same rows): each artifact's greedy generation against transformers, prompt by
prompt, and the time to first token and per token against eager transformers with its cache."""

from __future__ import annotations

from typing import Any

from exporter.report.lossy import Table

__all__ = [
    "decoder_latency_report",
    "decoder_latency_table",
    "decoder_timing_caveat",
    "generation_table",
    "markdown_decoder",
]


def decoder_timing_caveat(report: dict[str, Any]) -> str:
    """The machine-wide timing warnings (a busy machine, threads over CPUs) hold for these calls too: they
    were timed in the same stage. Per-figure spreads are assessed on the batch timings only."""
    warnings = (report.get("timing_quality") or {}).get("warnings") or []
    codes = sorted({w["code"] for w in warnings if w.get("backend") is None})
    if not codes:
        return ""
    return (
        f" Not trustworthy ({', '.join(codes)}): the Latency section's warnings hold for these figures too."
    )


def generation_table(report: dict[str, Any]) -> Table:
    """One row per artifact and prompt: identical or the first differing token, and the match share."""
    headers = ["artifact", "prompt", "prompt tokens", "result", "first differing token", "tokens matching"]
    rows = []
    for result in report.get("generation") or []:
        if result.get("error"):
            rows.append([result["artifact"], "-", "-", f"could not generate: {result['error']}", "-", "-"])
        for prompt in result["prompts"]:
            step = prompt["first_differing_token"]
            total = len(prompt["expected"])
            where = "-" if step is None else f"{step} of {total}"
            if step is not None and step <= min(len(prompt["generated"]), total):
                where += f" ({prompt['generated'][step - 1]} != {prompt['expected'][step - 1]})"
            rows.append(
                [
                    result["artifact"],
                    prompt["name"],
                    str(prompt["prompt_tokens"]),
                    "identical" if prompt["identical"] else "DIFFERS",
                    where,
                    f"{prompt['match_share']:.1%}",
                ]
            )
    return headers, rows


def _call(row: dict[str, Any]) -> str:
    if row["phase"] == "prefill":
        return f"first token, prompt {row['tokens']}"
    return f"per token, past {row['tokens']}"


def decoder_latency_table(report: dict[str, Any]) -> Table:
    """Per backend and call: p50/p90, tokens per second and the speedup against eager transformers."""
    headers = ["backend", "call", "p50 ms", "p90 ms", "tokens/s", "vs eager", "runs"]
    rows = [
        [
            row["backend"],
            _call(row),
            f"{row['p50_ms']:.3f}",
            f"{row['p90_ms']:.3f}",
            f"{row['tokens_per_s']:.1f}",
            "-" if row["speedup_vs_eager"] is None else f"{row['speedup_vs_eager']:.2f}x",
            str(row["runs"]),
        ]
        for row in report.get("decoder_latency") or []
    ]
    return headers, rows


def decoder_latency_report(report: dict[str, Any]) -> dict[str, Any]:
    """The decoder rows in the shape of report.json's ``latency`` rows, for the shared bar chart."""
    return {
        "timing_quality": None,
        "latency": [
            {
                "backend": row["backend"],
                "label": _call(row),
                "batch": 1,
                "p50_ms": row["p50_ms"],
                "p90_ms": row["p90_ms"],
                "p99_ms": row["p99_ms"],
                "throughput_per_s": row["tokens_per_s"],
                "speedup_vs_eager": row["speedup_vs_eager"],
                "runs": row["runs"],
            }
            for row in report.get("decoder_latency") or []
        ],
    }


def _table(table: Table) -> list[str]:
    headers, rows = table
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]


def markdown_decoder(report: dict[str, Any]) -> list[str]:
    """report.md's ``Greedy generation`` and ``Decoder latency`` sections (none for other models)."""
    lines: list[str] = []
    generation = report.get("generation")
    if generation:
        tokens = generation[0]["max_new_tokens"]
        lines += [
            "",
            "## Greedy generation",
            "",
            f"{tokens} greedy tokens from each golden prompt through each artifact and its cache, against "
            f"{generation[0]['reference']}: a float artifact must generate identical tokens.",
            "",
            *_table(generation_table(report)),
        ]
    if report.get("decoder_latency"):
        lines += [
            "",
            "## Decoder latency",
            "",
            "Time to first token (one prefill call over the prompt) and per token (one decode call after "
            "the cached positions), p50 over calls alternated in blocks; eager is transformers with its own "
            "cache, same threads." + decoder_timing_caveat(report),
            "",
            *_table(decoder_latency_table(report)),
        ]
    return lines

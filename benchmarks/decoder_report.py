"""Tables and the targets' verdicts of ``benchmarks/decoder.py``: console and markdown, one set of cells."""

from __future__ import annotations

from typing import Any

from decoder_timing import PASTS, PROMPTS, Measured, Row
from rich.table import Table

TARGET_MODEL = "125m"
TARGET_PAST = 128
FLOAT_TARGET = 2.0
INT4_TARGET = 1.5


def _ms(values: dict[Any, float], key: int) -> str:
    value = _get(values, key)
    return "-" if value is None else f"{value:.2f}"


def _get(values: dict[Any, float], key: int) -> float | None:
    """A length's value; JSON read back (an earlier run's rows) keys it as text."""
    return values.get(key, values.get(str(key)))


def columns(measured: Measured) -> list[str]:
    prompts = sorted({int(k) for r in measured.rows for k in r.prefill_ms} or PROMPTS)
    pasts = sorted({int(k) for r in measured.rows for k in r.decode_ms} or PASTS)
    return [
        "runner", "artifact", *(f"TTFT ms p50 @{n}" for n in prompts),
        *(f"decode ms p50 @past {n}" for n in pasts), f"tok/s @past {TARGET_PAST}",
        f"x eager @past {TARGET_PAST}", f"x our float (same runtime) @past {TARGET_PAST}",
        "greedy tokens = generate",
    ]  # fmt: skip


def _threads(measured: Measured) -> str:
    return f"{measured.threads} thread{'s' if measured.threads != 1 else ''}"


def _float_of(measured: Measured, row: Row) -> Row | None:
    runtime = "openvino" if "openvino" in row.runner else "onnxruntime"
    return measured.row(f"ours float {runtime}") if row.runner.startswith("ours") else None


def cells(measured: Measured, row: Row) -> list[str]:
    prompts = sorted({int(k) for r in measured.rows for k in r.prefill_ms} or PROMPTS)
    pasts = sorted({int(k) for r in measured.rows for k in r.decode_ms} or PASTS)
    if row.note:
        return [row.runner, row.artifact, *(["-"] * (len(prompts) + len(pasts) + 3)), row.note]
    eager = measured.rows[0]
    per_token = _get(row.decode_ms, TARGET_PAST)
    reference = _float_of(measured, row)
    ratio = lambda other: (  # noqa: E731
        f"{o / per_token:.2f}x" if per_token and other and (o := _get(other.decode_ms, TARGET_PAST)) else "-"
    )
    return [
        row.runner,
        row.artifact,
        *(_ms(row.prefill_ms, n) for n in prompts),
        *(_ms(row.decode_ms, n) for n in pasts),
        f"{1000 / per_token:.1f}" if per_token else "-",
        ratio(eager),
        ratio(reference) if reference is not None else "-",
        row.parity,
    ]


def table(measured: Measured) -> Table:
    out = Table(
        title=f"{measured.model} ({measured.info['parameters'] / 1e6:.1f} M parameters, {_threads(measured)})"
    )
    for column in columns(measured):
        out.add_column(column, justify="left" if column in ("runner", "artifact") else "right")
    for row in measured.rows:
        out.add_row(*cells(measured, row))
    return out


def export_lines(measured: Measured) -> list[str]:
    """What each ``exporter export`` run shipped, and why candidates were refused; Optimum's status."""
    lines = []
    for mode, export in measured.exports.items():
        lines.append(f"- `{export['command']}`: exit {export['exit_code']}, {export['seconds']:.0f} s")
        for candidate in (export.get("quantization") or {}).get("candidates", []):
            verdict = "shipped" if candidate["shipped"] else f"not shipped: {candidate['reason'] or '-'}"
            block = f", block {candidate['block_size']}" if candidate.get("block_size") else ""
            lines.append(f"  - {mode} `{candidate['name']}` ({candidate['engine']}{block}): {verdict}")
        for note in (export.get("quantization") or {}).get("notes", []):
            lines.append(f"  - note: {note}")
    if measured.exports and all("--to openvino" not in e["command"] for e in measured.exports.values()):
        lines.append(
            "- OpenVINO: exported with `--to onnx` alone (`--onnx-only`): this folder's `--to openvino` "
            "export ended in an internal error (exit 5, nothing written); the IR timed here is our "
            "model.onnx read by OpenVINO with float32 weights, and its int4 is NNCF's on that IR"
        )
    optimum = measured.optimum
    if optimum.get("ok"):
        lines.append(
            "- Optimum: `optimum-cli export onnx --task text-generation-with-past` "
            f"({optimum.get('versions')}), {optimum['seconds']:.0f} s; I/O names are ours, run through "
            "the same ONNX Runtime runner"
        )
    else:
        lines.append(f"- Optimum: no model: {optimum.get('reason')}")
    generate = ", ".join(
        f"{v:.2f} ms after a {k}-token prompt" for k, v in measured.generate_per_token_ms.items()
    )
    lines.append(f"- measured {measured.measured_at or '-'}")
    lines.append(f"- transformers `generate()` per token (greedy, its own cache): {generate}")
    lines.append(
        f"- load average (1, 5, 15 min) before / after timing: {measured.load.get('before')} / "
        f"{measured.load.get('after')}"
    )
    return lines


def targets(results: list[Measured]) -> list[str]:
    """The issue's two targets, measured on the ~125 M model at each thread count: met or missed, with the
    numbers, for every float artifact against eager and every int4 model against its runtime's float."""
    chosen = [m for m in results if m.model == TARGET_MODEL]
    if not chosen:
        return [f"targets: not measured (the {TARGET_MODEL} model was not run)"]
    lines = []
    for measured in chosen:
        where = f"past {TARGET_PAST}, {_threads(measured)}"
        eager = _get(measured.rows[0].decode_ms, TARGET_PAST)
        for row in measured.rows[1:]:
            value = _get(row.decode_ms, TARGET_PAST)
            if row.note or not value or not eager:
                continue
            if row.runner.startswith("ours float"):
                speedup = eager / value
                verdict = "met" if speedup >= FLOAT_TARGET else "missed"
                lines.append(
                    f"float >= {FLOAT_TARGET}x eager per token ({where}), {row.runner} `{row.artifact}`: "
                    f"{verdict}, {value:.2f} ms vs eager {eager:.2f} ms = {speedup:.2f}x"
                )
            reference = _float_of(measured, row)
            base = _get(reference.decode_ms, TARGET_PAST) if reference else None
            if row.runner.startswith("ours int4") and base:
                speedup = base / value
                verdict = "met" if speedup >= INT4_TARGET else "missed"
                shipped = (
                    f" (not shipped: {row.runner.split('(', 1)[1].rstrip(')')})" if "(" in row.runner else ""
                )
                lines.append(
                    f"int4 >= {INT4_TARGET}x our float per token ({where}), {row.runner}: {verdict}, "
                    f"{value:.2f} ms vs float {base:.2f} ms = {speedup:.2f}x{shipped}"
                )
        if not any(r.runner.startswith("ours int4") and not r.note for r in measured.rows):
            lines.append(
                f"int4 >= {INT4_TARGET}x our float per token ({where}): missed, no int4 model to time"
            )
    return lines


def markdown(results: list[Measured], environment: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in environment["packages"].items() if v)
    lines = [
        "# Decoders: time to first token and per-token decode",
        "",
        f"{environment['cpu']}, {environment['usable_cpus']} usable CPUs "
        f"({', '.join(environment['cpu_flags'])}); python {environment['python']}; {packages}; "
        "the same threads for every runner of a table (its title says how many).",
        "",
        "p50 of alternated blocks (`compare_latency`); TTFT = one prefill call over the whole prompt; "
        "decode = one call adding one token after `past` cached positions. Eager = transformers' model "
        "called as `generate` calls it, with its own `DynamicCache`. Greedy tokens: 32 from one prompt, "
        "against transformers' `generate`.",
        "",
        "On a machine shared with other work (the load averages below), a table at 2 threads on 2 cores "
        "waits for cores: torch's threads suffer most (the 125M eager decode at past 128, timed alone: "
        "103 ms at 2 threads, 29 ms at 1, load average 2.3), which inflates every `x eager`. The 1-thread "
        "tables are the ones to quote.",
        "",
    ]
    for measured in results:
        names = columns(measured)
        size = f"{measured.info['parameters'] / 1e6:.1f} M parameters"
        lines += [f"## {measured.model}: {size}, {_threads(measured)}", ""]
        lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
        lines += ["| " + " | ".join(cells(measured, row)) + " |" for row in measured.rows]
        lines += ["", *export_lines(measured), ""]
    lines += ["## Targets (measured, not asserted)", "", *(f"- {t}" for t in targets(results)), ""]
    return "\n".join(lines)

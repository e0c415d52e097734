"""Print every backend's latency against eager PyTorch for recipes, measured by the export pipeline itself."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

from exporter.environment import collect_environment
from exporter.pipeline import ExportOptions, export
from exporter.recipe.document import load_recipe
from exporter.specs.inputs import InputSpec

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("recipes", nargs="*", type=Path, default=sorted((ROOT / "recipes").glob("*.toml")))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--to", nargs="+", default=["all"], help="targets, as exporter export --to")
    args = parser.parse_args()
    console = Console()
    table = Table(title="Latency: every backend vs eager PyTorch (p50 speedup at the same threads)")
    for column in ("model", "backend", "shape", "p50 ms", "p90 ms", "p99 ms", "throughput/s", "vs eager"):
        table.add_column(column)
    threads = None
    with tempfile.TemporaryDirectory() as scratch:
        for path in args.recipes:
            recipe = load_recipe(path)
            settings = {**recipe.settings, "out": Path(scratch) / path.stem, "targets": args.to}
            if args.threads:
                settings["threads"] = args.threads
            settings["spec"] = InputSpec(recipe.inputs, recipe.dims)
            result = export(ExportOptions.from_settings(settings))
            threads = result.report["environment"]["threads"]
            for stats in result.latency:
                table.add_row(
                    result.report["name"],
                    stats.backend,
                    stats.label,
                    f"{stats.p50_ms:.3f}",
                    f"{stats.p90_ms:.3f}",
                    f"{stats.p99_ms:.3f}",
                    f"{stats.throughput_per_s:.0f}",
                    f"{stats.speedup_vs_eager:.2f}x" if stats.speedup_vs_eager else "-",
                )
    environment = collect_environment(threads or 0)
    console.print(table)
    console.print(
        f"{environment['cpu']} ({', '.join(environment['cpu_flags'])}), {threads} threads, "
        f"torch {environment['packages']['torch']}, onnxruntime {environment['packages']['onnxruntime']}"
    )


if __name__ == "__main__":
    main()

"""``exporter package``: an artifacts folder and its model server as one folder to build or run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from exporter.cli.shared import DebugFlag, backend_help, guarded, out

__all__ = ["package_command"]


def package_command(
    folder: Annotated[Path, typer.Argument(help="An artifacts folder written by exporter export.")],
    bundle: Annotated[Path, typer.Option("--out", help="The bundle folder to write.")],
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help=f"{backend_help('The artifact to serve')} (default: the fastest one the folder ships).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing bundle once the new one is complete.")
    ] = False,
    debug: DebugFlag = False,
) -> None:
    """Package FOLDER with the model server into a bundle: the artifact, the server's source, pinned
    requirements, a Dockerfile, a README, and a Triton model repository of the ONNX model.

    Exit codes: 0 written; 2 nothing written (integrity check failed, backend not shipped, --out in the way).
    """
    from exporter.packaging.bundle import package_bundle

    result = guarded(debug, lambda: package_bundle(folder, bundle, backend, force))
    triton = (
        f"model_repository/{result.triton.model} (from {result.triton.source})"
        if result.triton.model
        else f"none ({result.triton.skipped})"
    )
    out.print(f"[green]bundle[/] {escape(str(result.path))}", highlight=False)
    out.print(
        f"  backend {escape(result.backend)} ({escape(result.runtime)}), {result.files} files, "
        f"{result.bytes / 1e6:.1f} MB, {result.requirements} pinned packages, "
        f"{result.server_modules} server source files",
        highlight=False,
    )
    out.print(f"  triton  {escape(triton)}", highlight=False)
    out.print(
        f"  run     cd {escape(str(result.path))} && docker build -t {escape(result.image)} .",
        highlight=False,
    )

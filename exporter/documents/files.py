"""Reading manifest.json and report.json, and hashing files: what ``exporter verify`` and the model server
(``exporter.serving``) share. Imports neither torch nor ONNX, so a serving bundle runs without them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Final

from exporter.errors import UsageError, first_line
from exporter.loading.safe_paths import read_inside

__all__ = ["MANIFEST_SCHEMA_VERSION", "read_document", "sha256_file"]

MANIFEST_SCHEMA_VERSION: Final = 1


def read_document(
    folder: Path, name: str, schema_version: int, use: str = "read", kind: str | None = None
) -> dict[str, Any]:
    """``folder/name`` (manifest.json, report.json) as a JSON object, at the schema version this exporter
    reads; the typed readers (``documents.manifest``, ``documents.report_model``) check the rest.

    ``use`` is what the caller does with it (verify, render), for the message on another schema version;
    ``kind`` what it should be (``report``), for the message on a foreign document (default: ``name``'s stem).
    The file is read by :func:`loading.safe_paths.read_inside`: a regular file inside the folder, not a
    link, a FIFO or a device, and size-capped before it is parsed.

    Raises:
        UsageError: not an artifacts folder, no such file, not a JSON object, or another schema version.
    """
    if not folder.is_dir():
        raise UsageError(f"'{folder}' is not a folder; pass an artifacts folder written by exporter export")
    path = folder / name
    named = f"{name} of '{folder}'"
    try:
        document = json.loads(read_inside(folder, name, named))
    except FileNotFoundError:
        raise UsageError(f"'{folder}' has no {name}; is it an artifacts folder of exporter export?") from None
    except (OSError, ValueError, RecursionError) as error:  # ValueError: JSONDecodeError, bad UTF-8
        raise UsageError(f"'{path}' cannot be read as JSON: {first_line(error)}") from None
    damaged = f"not a {kind or name.removesuffix('.json')} written by this exporter, or damaged"
    if not isinstance(document, dict):
        raise UsageError(f"{named} is not a JSON object ({damaged})")
    found = document.get("schema_version")
    if "schema_version" not in document:
        raise UsageError(f"{named} has no schema_version ({damaged})")
    if not isinstance(found, int) or isinstance(found, bool):
        raise UsageError(f"{named} has schema_version {json.dumps(found)[:40]}, not an integer ({damaged})")
    if found < schema_version:
        raise UsageError(
            f"{named} has schema_version {found}, written by an older exporter; this exporter reads "
            f"{schema_version}: re-export it, or {use} it with the exporter that wrote it"
        )
    if found > schema_version:
        raise UsageError(
            f"{named} has schema_version {found}, written by a newer exporter; this exporter reads "
            f"{schema_version}: upgrade exporter to {use} it"
        )
    return document


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

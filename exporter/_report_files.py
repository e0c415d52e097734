"""``exporter report``: re-render a folder's report.md and report.html in place, and keep its manifest true.

The manifest hashes the rendered reports like every other file, so a report.md swapped for a link to a
secret fails ``exporter verify`` and never reaches a bundle. Re-rendering (after an upgrade, say) changes
their bytes; their manifest entries are then updated so the folder still verifies. Only those two
entries change: report.json and the artifacts keep the hashes the export wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from exporter._documents import MANIFEST_SCHEMA_VERSION, read_document
from exporter._safe_paths import replace_inside
from exporter.report import render_reports
from exporter.report_model import read_report

__all__ = ["rerender_reports"]


def rerender_reports(folder: Path) -> list[Path]:
    """Render report.md and report.html from ``folder/report.json``; return the files written.

    Raises:
        UsageError: no report.json, a damaged one, or a manifest that is not one of this exporter's.
    """
    report = read_report(folder).model_dump(exclude_unset=True)
    manifest = None
    if os.path.lexists(folder / "manifest.json"):
        manifest = read_document(folder, "manifest.json", MANIFEST_SCHEMA_VERSION, use="re-render")
    written = render_reports(folder, report)
    if manifest is None or not isinstance(manifest.get("files"), dict):
        return written
    files = manifest["files"]
    for path in written:
        if path.name in files:
            data = path.read_bytes()
            files[path.name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    text = json.dumps(manifest, indent=2) + "\n"
    written.append(replace_inside(folder, "manifest.json", text.encode(), f"manifest.json of '{folder}'"))
    return written

"""report.md and report.html on disk: written by the export, re-rendered in place by ``exporter report``.

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
from typing import Any

from exporter.documents.files import MANIFEST_SCHEMA_VERSION, read_document
from exporter.documents.report_model import read_report
from exporter.loading.safe_paths import replace_inside
from exporter.report.markdown import render_markdown

__all__ = ["render_reports", "rerender_reports"]


def render_reports(folder: Path, report: dict[str, Any]) -> list[Path]:
    """Write ``report.md`` and the self-contained ``report.html`` beside ``report.json``, replacing the
    names (a link planted there is replaced, never written through)."""
    from exporter.report.html import render_html

    named_by = f"the reports of '{folder}'"
    markdown = replace_inside(folder, "report.md", render_markdown(report).encode(), named_by)
    html = replace_inside(folder, "report.html", render_html(report).encode(), named_by)
    return [markdown, html]


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

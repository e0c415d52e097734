"""``exporter run --junit``: one ``testsuite`` per recipe, one ``testcase`` per check, so a CI system shows
which recipe failed which check (a target that did not convert is a failure carrying the converter's
full explanation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

__all__ = ["write_junit"]


def write_junit(path: Path, results: Sequence[dict[str, Any]]) -> None:
    """One ``testsuite`` per recipe, one ``testcase`` per check; a recipe that could not run is an error."""
    suites = ET.Element("testsuites", name="exporter run")
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for result in results:
        suite = ET.SubElement(suites, "testsuite", name=result["name"], file=result["recipe"])
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        for check in result["checks"]:
            case = ET.SubElement(
                suite, "testcase", classname=f"exporter.{result['name']}", name=check["name"], time="0"
            )
            counts["tests"] += 1
            if check["passed"]:
                continue
            if check["kind"] in ("export", "interrupted"):
                element = ET.SubElement(case, "error", message=check["detail"].splitlines()[0][:500])
                counts["errors"] += 1
            else:
                element = ET.SubElement(case, "failure", message=check["detail"].splitlines()[0][:500])
                counts["failures"] += 1
            element.text = check["detail"]
        for target, reason in result.get("not_applicable", {}).items():
            case = ET.SubElement(
                suite, "testcase", classname=f"exporter.{result['name']}", name=f"target {target}"
            )
            ET.SubElement(case, "skipped", message=reason)
            counts["tests"] += 1
            counts["skipped"] += 1
        suite.set("time", str(result["seconds"]))
        for key, value in counts.items():
            suite.set(key, str(value))
            totals[key] += value
    for key, value in totals.items():
        suites.set(key, str(value))
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suites).write(path, encoding="utf-8", xml_declaration=True)

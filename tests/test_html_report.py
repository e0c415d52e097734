"""``report.html``: rendered from real export reports (with and without int8), checked as markup (ids, SVG
that parses as XML, escaping, no external references) and opened in a real headless Chromium."""

from __future__ import annotations

import copy
import re
import shutil
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
import torch

from exporter.errors import ExitCode
from exporter.pipeline import ExportOptions, export
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.report.html import render_html
from exporter.report.markdown import latency_table
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from tests.conftest import FAST_TIMING
from tests.models import MODELS

SECTION_IDS = ("parity-matrix", "latency-chart", "stages", "environment")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def _export(root: Path, name: str, quantization: QuantizeOptions) -> dict[str, Any]:
    torch.manual_seed(0)
    checkpoint = root / f"{name}.pt"
    torch.save({"model_state_dict": MODELS[name].build().state_dict()}, checkpoint)
    options = ExportOptions(
        checkpoint=checkpoint,
        model_ref=MODELS[name].ref,
        spec=InputSpec(tuple(parse_tensor_spec(s) for s in MODELS[name].inputs)),
        targets=("onnx", "torchscript"),
        out=root / name,
        timing=FAST_TIMING,
        batch_sizes=(1, 2),
        quantization=quantization,
    )
    result = export(options)
    assert result.exit_code is ExitCode.OK, result.report["notes"]
    return result.report


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """Two real exports shared read-only by this module: the MLP with dynamic int8, the conv net without."""
    root = tmp_path_factory.mktemp("html")
    return {
        "int8": _export(root, "mlp", QuantizeOptions(mode=QuantMode.DYNAMIC, samples=16)),
        "float": _export(root, "conv", QuantizeOptions()),
    }


def _everything(report: dict[str, Any]) -> dict[str, Any]:
    """The int8 report with every optional part a renderer can meet: a failed build, float64 arbitration,
    a failing case, graph-optimization steps, resources, and hostile strings in the places they can reach."""
    report = copy.deepcopy(report)
    report["status"] = "failed"
    report["notes"].append("<script>alert('note')</script> & friends")
    onnx = next(b["shipped"] for b in report["backends"] if b["backend"] == "onnxruntime")
    next(p for p in report["parity"] if p["artifact"] == onnx)["float64_arbitrated"] = True
    shipped = next(b["shipped"] for b in report["backends"] if b["backend"] == "torchscript")
    torchscript = next(
        p for p in report["parity"] if p["backend"] == "torchscript" and p["artifact"] == shipped
    )
    failing = torchscript["cases"][-1]
    failing["passed"] = torchscript["passed"] = False
    failing["outputs"][0]["passed"] = False
    failing["outputs"][0]["message"] = "max abs 0.5 > <tolerance>"
    broken = copy.deepcopy(report["quantization"]["candidates"][0])
    broken.update(name="static-<b>ort</b>", error="<script>x()</script> failed", chosen=False, outputs=[])
    broken.update(latency=[], budget_passed=False, size_ratio=None, accuracy=None)
    report["quantization"]["candidates"].append(broken)
    report["optimization"] = [
        {
            "name": "fuse <conv>",
            "kept": True,
            "reason": "faster",
            "latency": [{"label": "batch=1", "p50_ms": 0.1}],
        },
        {"name": "fold-constants", "kept": False, "reason": "slower by 3%", "latency": []},
    ]
    report["resources"] = {"peak_rss_mb": 512.25, "load_seconds": {"onnxruntime": 0.012, "torchscript": 0.2}}
    return report


class _Collector(HTMLParser):
    """Tags and ids as a browser's tokenizer sees them (so an unescaped <script> would show up here)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.ids += [value for name, value in attrs if name == "id" and value]


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


def _svgs(html: str) -> list[ET.Element]:
    """Every inline SVG, parsed as XML: a stray '&' or unclosed tag fails here."""
    return [ET.fromstring(fragment) for fragment in re.findall(r"<svg\b.*?</svg>", html, flags=re.DOTALL)]


def _svg_text(svg: ET.Element) -> str:
    return " ".join("".join(node.itertext()) for node in svg.iter("text"))


@pytest.mark.parametrize("kind", ["int8", "float"])
def test_a_real_report_renders_every_section(kind: str, reports: dict[str, dict[str, Any]]) -> None:
    report = reports[kind]
    html = render_html(report)
    page = _parse(html)
    assert html.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in html and "<title>" in html
    assert set(SECTION_IDS) <= set(page.ids) and len(page.ids) == len(set(page.ids))
    assert ("int8-scatter" in page.ids) is (report["quantization"] is not None)
    assert ("optimization" in page.ids) is bool(report.get("optimization"))
    assert not re.search(r"https?://|\bsrc\s*=|<link\b|@import|url\(", html, flags=re.IGNORECASE)
    assert "script" not in page.tags
    for name in {b["backend"] for b in report["backends"]} | {s["backend"] for s in report["latency"]}:
        assert name in html
    for case in {c["case"] for p in report["parity"] for c in p["cases"]}:
        assert f">{case}<" in html
    svgs = _svgs(html)
    assert len(svgs) == (2 if report["quantization"] else 1)
    latency = svgs[0]
    assert len([r for r in latency.iter("rect") if r.find("title") is not None]) == len(report["latency"])
    labels = _svg_text(latency)
    assert all(f"{row[2]} ms" in labels for row in latency_table(report)[1]), "chart and table disagree"


def test_int8_scatter_plots_every_candidate_against_the_budget(reports: dict[str, dict[str, Any]]) -> None:
    report = reports["int8"]
    html = render_html(report)
    scatter = _svgs(html)[1]
    words = _svg_text(scatter)
    quant = report["quantization"]
    assert f"cosine ≥ {quant['budget']['min_cosine']:g}" in words and "float" in words
    for candidate in quant["candidates"]:
        assert candidate["name"] in words
    chosen = next(c["name"] for c in quant["candidates"] if c["chosen"])
    assert f"{chosen} ★ shipped" in words


def test_optional_parts_render_and_every_report_string_is_escaped(reports: dict[str, dict[str, Any]]) -> None:
    report = _everything(reports["int8"])
    html = render_html(report)
    page = _parse(html)
    assert {"optimization", "resources", "int8-failed", *SECTION_IDS} <= set(page.ids)
    assert "script" not in page.tags and "conv" not in page.tags and "static-&lt;b&gt;ort&lt;/b&gt;" in html
    assert "&lt;script&gt;alert(&#x27;note&#x27;)&lt;/script&gt; &amp; friends" in html
    assert "&lt;script&gt;x()&lt;/script&gt; failed" in html and "fuse &lt;conv&gt;" in html
    assert ">FAILED</span>" in html and "dropped" in html and "512.2 MB" in html
    assert 'class="arb"' in html, "a float64-arbitrated pass needs its own mark"
    assert 'class="fail"' in html
    for svg in _svgs(html):
        assert svg.tag == "svg"
    assert render_html(copy.deepcopy(report)) == html, "the same report must render to the same bytes"


def _browser() -> str | None:
    found = (shutil.which(name) for name in BROWSERS)
    return next((path for path in found if path), None) or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def _run_browser(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([browser, *flags, *args], capture_output=True, text=True, timeout=120, check=False)


def _console_errors(stderr: str) -> list[str]:
    """Console output of the page. Chromium logs even ``console.error`` as ``INFO:CONSOLE``, so a line is
    not filtered on its level: the page has no scripts, so any console line at all is a fault."""
    return [line for line in stderr.splitlines() if "Uncaught" in line or "CONSOLE" in line]


def test_the_page_opens_in_a_headless_browser(reports: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    browser = _browser()
    if browser is None:
        pytest.skip(f"no headless browser installed (looked for {', '.join(BROWSERS)}, /usr/bin/chromium)")
    page = tmp_path / "report.html"
    page.write_text(render_html(_everything(reports["int8"])), encoding="utf-8")
    dumped = _run_browser(browser, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    for ident in (*SECTION_IDS, "int8-scatter", "optimization", "resources"):
        assert f'id="{ident}"' in dumped.stdout
    assert "<svg" in dumped.stdout and "<script" not in dumped.stdout
    assert not _console_errors(dumped.stderr)
    shot = tmp_path / "report.png"
    drawn = _run_browser(
        browser, tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()
    )
    assert drawn.returncode == 0, drawn.stderr[-2000:]
    assert not _console_errors(drawn.stderr)
    assert _png_size(shot) == (1280, 2000)
    assert shot.stat().st_size > 50_000, "a blank page compresses to a few KB"


def test_optional_sections_are_left_out_when_absent(reports: dict[str, dict[str, Any]]) -> None:
    report = _everything(reports["int8"])
    for key in ("optimization", "optimization_summary", "resources", "quantization"):
        report.pop(key, None)
    report["notes"] = []
    page = _parse(render_html(report))
    assert set(SECTION_IDS) <= set(page.ids)
    assert not {"optimization", "resources", "int8", "int8-scatter", "notes"} & set(page.ids)

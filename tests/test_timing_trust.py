"""Timing a user can trust: a busy machine, a wide p90/p50 spread and a thread probe where more threads are
slower each put a warning next to the figures in report.json, report.md and report.html, and mark the
speedups they touch "not trustworthy"; a clean run says nothing. The timing facts are constructed here:
nothing in this module asserts a measured time."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import exporter.benchmark.trust as timing_trust
import exporter.stages.benchmark as benchmark_stage
from exporter.benchmark.latency import BatchPlan, LatencyStats
from exporter.benchmark.thread_probe import probe_threads
from exporter.benchmark.trust import (
    LoadWatch,
    MachineLoad,
    ThreadProbe,
    TimingIssue,
    TimingQuality,
    assess_timing,
    timing_sentences,
)
from exporter.documents.report_model import read_report
from exporter.gate.checks import LatencyBudget, VerifyRequest
from exporter.gate.reverify import verify_artifacts
from exporter.report.html import render_html
from exporter.report.markdown import latency_matrix, latency_table, render_markdown
from exporter.runners.pytorch import EagerRunner
from exporter.stages.staging import write_json
from tests.conftest import FAST_TIMING, export_tiny_mlp

EAGER = EagerRunner.name
ORT = "onnxruntime"
LABEL = "batch=1"
QUIET = MachineLoad(usable_cpus=2, load_before=0.4, load_after=0.6, own_cpus=1.0)
BUSY = MachineLoad(usable_cpus=2, load_before=9.0, load_after=9.5, own_cpus=1.9)
EVEN_PROBE = ThreadProbe(EAGER, LABEL, 2, one_thread_ms=6.3, threads_ms=4.1)
SLOWER_PROBE = ThreadProbe(EAGER, LABEL, 2, one_thread_ms=6.3, threads_ms=72.6)  # the issue's numbers


def _stats(backend: str, p50: float, p90: float, eager_p50: float) -> LatencyStats:
    return LatencyStats(
        backend=backend,
        label=LABEL,
        batch=1,
        input_shapes={"x": [1, 8]},
        threads=2,
        runs=50,
        p50_ms=p50,
        p90_ms=p90,
        p99_ms=p90 * 1.1,
        mean_ms=p50,
        min_ms=p50 * 0.9,
        throughput_per_s=1000.0 / p50,
        speedup_vs_eager=eager_p50 / p50,
    )


def _scenario(kind: str) -> tuple[list[LatencyStats], TimingQuality]:
    """Eager and ONNX Runtime timings plus the facts beside them, clean but for ``kind``."""
    eager_p50 = 72.6 if kind == "threads-slower" else 6.3
    eager_p90 = eager_p50 * (7.0 if kind == "wide-spread" else 1.1)  # the speaker encoder's 7x
    ort_p50 = eager_p50 / 119.7 if kind == "threads-slower" else 0.6
    latency = [_stats(EAGER, eager_p50, eager_p90, eager_p50), _stats(ORT, ort_p50, ort_p50 * 1.2, eager_p50)]
    quality = assess_timing(
        latency,
        baseline=EAGER,
        threads=4 if kind == "threads-over-cpus" else 2,
        load=BUSY if kind == "busy-machine" else QUIET,
        probes=[SLOWER_PROBE if kind == "threads-slower" else EVEN_PROBE],
    )
    return latency, quality


KINDS = [issue.value for issue in TimingIssue]


@pytest.mark.parametrize("kind", KINDS)
def test_each_fact_raises_its_own_warning_and_only_it(kind: str) -> None:
    _, quality = _scenario(kind)
    assert [w.code.value for w in quality.warnings] == [kind]
    assert quality.describe() == f"; timing not trustworthy: {kind}"


def test_a_clean_run_raises_no_warning() -> None:
    _, quality = _scenario("clean")
    assert quality.warnings == () and quality.describe() == ""


def _tables_only(kind: str) -> dict[str, Any]:
    """Just what the table builders read, as report.json holds it."""
    latency, quality = _scenario(kind)
    document = {"latency": [s.to_json() for s in latency], "timing_quality": quality.to_json()}
    return dict(json.loads(json.dumps(document)))


@pytest.mark.parametrize("kind", KINDS)
def test_each_warning_marks_every_speedup_it_touches(kind: str) -> None:
    report = _tables_only(kind)
    assert all(row[6].endswith("x (not trustworthy)") for row in latency_table(report)[1])
    assert all(f"not trustworthy: {kind})" in row[1] for row in latency_matrix(report)[1])
    assert f"Timing not trustworthy ({kind})" in " ".join(timing_sentences(report))


def test_a_clean_run_marks_nothing_and_names_the_faster_thread_count() -> None:
    report = _tables_only("clean")
    assert [row[6] for row in latency_table(report)[1]] == ["1.00x", "10.50x"]
    assert [row[8] for row in latency_table(report)[1]] == ["ok", "ok"]
    assert [row[1] for row in latency_matrix(report)[1]] == ["6.300 (1.00x)", "0.600 (10.50x)"]
    assert timing_sentences(report) == [
        "Thread probe (pytorch-eager, p50): batch=1 6.3 ms with 1 thread, 4.1 ms with 2: 2 threads 1.54x "
        "faster."
    ]


def test_a_warning_marks_only_the_figures_it_describes() -> None:
    """More threads slower at batch=2 only, and ONNX Runtime's own spread wide at batch=1: eager's batch=1
    figure stays trustworthy, ONNX Runtime's batch=1 speedup is not (its own figure), and every batch=2
    speedup is not (their baseline)."""
    latency = [
        _stats(EAGER, 6.3, 6.9, 6.3),
        _stats(ORT, 0.6, 1.9, 6.3),
        *(
            replace(s, label="batch=2", batch=2)
            for s in (_stats(EAGER, 38.0, 40.0, 38.0), _stats(ORT, 0.7, 0.8, 38.0))
        ),
    ]
    probes = [EVEN_PROBE, ThreadProbe(EAGER, "batch=2", 2, one_thread_ms=0.03, threads_ms=38.0)]
    quality = assess_timing(latency, baseline=EAGER, threads=2, load=QUIET, probes=probes)
    report = json.loads(
        json.dumps({"latency": [s.to_json() for s in latency], "timing_quality": quality.to_json()})
    )
    rows = {(row[0], row[1]): row for row in latency_table(report)[1]}
    assert rows[EAGER, LABEL][6:] == ["1.00x", "50", "ok"]
    assert rows[ORT, LABEL][6:] == ["10.50x (not trustworthy)", "50", "wide-spread"]
    assert rows[EAGER, "batch=2"][6:] == ["1.00x (not trustworthy)", "50", "threads-slower"]
    assert rows[ORT, "batch=2"][6:] == ["54.29x (not trustworthy)", "50", "ok"]
    assert latency_matrix(report)[1] == [
        [EAGER, "6.300 (1.00x)", "38.000 (1.00x, not trustworthy: threads-slower)"],
        [
            ORT,
            "0.600 (10.50x, not trustworthy: wide-spread)",
            "0.700 (54.29x, not trustworthy: threads-slower)",
        ],
    ]


def test_where_each_warning_points() -> None:
    spread = _scenario("wide-spread")[1].warnings[0]
    assert (spread.backend, spread.label) == (EAGER, LABEL)  # one timing
    slower = _scenario("threads-slower")[1].warnings[0]
    assert (slower.backend, slower.label) == (EAGER, LABEL)  # eager at the batch probed: the baseline
    busy = _scenario("busy-machine")[1].warnings[0]
    assert (busy.backend, busy.label) == (None, None)  # every figure
    assert "72.6" in slower.message and "6.3" in slower.message and "11.5x slower" in slower.message


def test_the_load_average_counts_this_run_so_its_own_cores_are_taken_off() -> None:
    """Load 2.9 on 2 CPUs while this run kept 1.9 cores busy: other work is 1.0, plus 2 threads is 3.0,
    exactly 1.5x the CPUs and not above: no warning. The same load with this run idle is busy."""
    ours = MachineLoad(usable_cpus=2, load_before=2.9, load_after=2.0, own_cpus=1.9)
    assert timing_trust.busy_machine(ours, 2) == []
    others = MachineLoad(usable_cpus=2, load_before=2.9, load_after=2.0, own_cpus=0.1)
    assert [w.code for w in timing_trust.busy_machine(others, 2)] == [TimingIssue.BUSY_MACHINE]
    unknown = MachineLoad(usable_cpus=2, load_before=None, load_after=None)
    assert timing_trust.busy_machine(unknown, 2) == []


def test_warnings_about_rows_dropped_after_timing_are_dropped_with_them() -> None:
    latency, _ = _scenario("clean")
    latency[1].p90_ms = latency[1].p50_ms * 3
    quality = assess_timing(latency, baseline=EAGER, threads=2, load=BUSY)
    assert {w.backend for w in quality.warnings} == {None, ORT}
    assert {w.backend for w in quality.restricted_to([EAGER]).warnings} == {None}


def test_load_watch_reads_the_load_before_and_after(monkeypatch: pytest.MonkeyPatch) -> None:
    readings: Iterator[float] = iter([1.25, 3.5])
    monkeypatch.setattr(timing_trust, "_load_average", lambda: next(readings))
    with LoadWatch() as watch:
        pass
    assert (watch.load.load_before, watch.load.load_after) == (1.25, 3.5)
    assert watch.load.own_cpus is not None and watch.load.own_cpus >= 0


class ThreadRecorder(nn.Module):
    """A tiny model that records torch's thread count at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 2)
        self.threads: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.threads.append(torch.get_num_threads())
        return self.linear(x)


def test_the_thread_probe_times_eager_at_one_and_at_the_configured_threads() -> None:
    model = ThreadRecorder().eval()
    plan = BatchPlan(LABEL, 1, {"x": np.zeros((1, 4), np.float32)})
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        probe = probe_threads(EagerRunner(model, ["x"]), plan, 2, FAST_TIMING)
        assert probe is not None and (probe.backend, probe.label, probe.threads) == (EAGER, LABEL, 2)
        assert probe.one_thread_ms > 0 and probe.threads_ms > 0
        assert set(model.threads) == {1, 2}
        assert torch.get_num_threads() == 2  # set back for the benchmark
        assert probe_threads(EagerRunner(model, ["x"]), plan, 1, FAST_TIMING) is None
    finally:
        torch.set_num_threads(before)


# ---- through a real export, report.json, report.md, report.html and the gate ------------------------------


def _fake_probe(eager: Any, plan: BatchPlan, threads: int) -> ThreadProbe:
    return ThreadProbe(eager.name, plan.label, threads, one_thread_ms=6.3, threads_ms=72.6)


@pytest.fixture(scope="module")
def busy_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny MLP exported to ONNX and benchmarked while the load average reads 50 and the thread probe
    finds 2 threads 11.5x slower than 1 (both faked: the facts, not the machine, are under test)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(timing_trust, "_load_average", lambda: 50.0)
        patch.setattr(benchmark_stage, "probe_threads", _fake_probe)
        return export_tiny_mlp(tmp_path_factory.mktemp("busy"), benchmark=True, batch_sizes=(1,), threads=2)


@pytest.mark.slow
def test_a_busy_export_says_so_in_every_report_and_the_stage_line(busy_export: Path) -> None:
    report = json.loads((busy_export / "report.json").read_text())
    codes = [w["code"] for w in report["timing_quality"]["warnings"]]
    assert {"busy-machine", "threads-slower"} <= set(codes)
    assert [p["faster"] for p in report["timing_quality"]["probes"]] == ["1 thread"]
    benchmark = next(s for s in report["stages"] if s["name"] == "benchmark")
    assert "timing not trustworthy: busy-machine" in benchmark["detail"]
    markdown = (busy_export / "report.md").read_text()
    assert "Timing not trustworthy (busy-machine)" in markdown
    assert re.search(r"x, not trustworthy: busy-machine[^)|]*threads-slower\)", markdown)  # in the matrix
    assert "batch=1 6.3 ms with 1 thread, 72.6 ms with 2: 1 thread 11.52x faster" in markdown
    html = (busy_export / "report.html").read_text()
    assert 'id="timing-warnings"' in html and "Timing not trustworthy (threads-slower)" in html
    assert read_report(busy_export).timing_quality is not None  # the typed reader accepts it


def _report_with(base: dict[str, Any], kind: str, folder: Path) -> dict[str, Any]:
    """The real report with the constructed timings and facts of ``kind``, written and read back."""
    latency, quality = _scenario(kind)
    report = copy.deepcopy(base)
    report["latency"] = [s.to_json() for s in latency]
    report["timing_quality"] = quality.to_json()
    folder.mkdir()
    write_json(folder / "report.json", report)
    return read_report(folder).model_dump(exclude_unset=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_warning_reaches_report_json_md_and_html_next_to_the_figure(
    kind: str, busy_export: Path, tmp_path: Path
) -> None:
    base = json.loads((busy_export / "report.json").read_text())
    report = _report_with(base, kind, tmp_path / kind)
    on_disk = json.loads((tmp_path / kind / "report.json").read_text())
    assert [w["code"] for w in on_disk["timing_quality"]["warnings"]] == [kind]
    # every speedup against the flagged figure or baseline is marked, in the matrix with the reason
    assert all(row[6].endswith("x (not trustworthy)") for row in latency_table(report)[1])
    assert all(f"not trustworthy: {kind})" in row[1] for row in latency_matrix(report)[1])
    markdown = render_markdown(report)
    latency_part = markdown.split("## Latency")[1]
    assert f"Timing not trustworthy ({kind})" in latency_part
    html = render_html(report)
    latency_html = html.split('<section id="latency">')[1].split("</section>")[0]
    assert 'id="timing-warnings"' in latency_html and f"Timing not trustworthy ({kind})" in latency_html
    assert "(not trustworthy)" in latency_html  # the table's speedup cell


def test_the_issue_speedup_is_printed_as_not_trustworthy() -> None:
    report = _tables_only("threads-slower")
    ort = next(row for row in latency_matrix(report)[1] if row[0] == ORT)
    assert ort[1] == "0.607 (119.70x, not trustworthy: threads-slower)"


@pytest.mark.slow
def test_a_clean_run_prints_bare_speedups_and_no_warning(busy_export: Path, tmp_path: Path) -> None:
    base = json.loads((busy_export / "report.json").read_text())
    report = _report_with(base, "clean", tmp_path / "clean")
    assert report["timing_quality"]["warnings"] == []
    assert [row[6] for row in latency_table(report)[1]] == ["1.00x", "10.50x"]
    assert [row[8] for row in latency_table(report)[1]] == ["ok", "ok"]
    markdown = render_markdown(report).split("## Latency")[1]
    html = render_html(report).split('<section id="latency">')[1].split("</section>")[0]
    for text in (markdown, html):
        assert "not trustworthy" not in text and "timing-warnings" not in text
        assert "4.1 ms with 2: 2 threads 1.54x faster" in text  # the probe still says which was faster


@pytest.mark.slow
def test_a_report_from_before_the_assessment_renders_as_before(busy_export: Path, tmp_path: Path) -> None:
    base = json.loads((busy_export / "report.json").read_text())
    del base["timing_quality"]
    folder = tmp_path / "old"
    folder.mkdir()
    write_json(folder / "report.json", base)
    report = read_report(folder).model_dump(exclude_unset=True)
    assert all(row[8] == "-" and "trustworthy" not in row[6] for row in latency_table(report)[1])
    assert "Thread probe" not in render_markdown(report) and "timing-warnings" not in render_html(report)


@pytest.mark.slow
@pytest.mark.parametrize(("load", "annotated"), [(50.0, True), (0.0, False)])
def test_the_latency_gate_says_when_it_measured_on_a_busy_machine(
    busy_export: Path, monkeypatch: pytest.MonkeyPatch, load: float, annotated: bool
) -> None:
    monkeypatch.setattr(timing_trust, "_load_average", lambda: load)
    request = VerifyRequest(
        busy_export, latency=LatencyBudget(busy_export / "report.json", 1000.0), threads=2, timing=FAST_TIMING
    )
    latency = [c for c in verify_artifacts(request).checks if c.kind == "latency"]
    assert latency and all(c.passed for c in latency)  # the verdict is unchanged, only explained
    assert all(("timing not trustworthy: busy machine" in c.detail) is annotated for c in latency)

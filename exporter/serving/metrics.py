"""Prometheus metrics of one served model, in a registry of the server's own (not the process-global one).

Every series has the one ``model`` label, so its child is bound once here (``labels()`` looks up a dict
under a lock on every call); request counters by HTTP status are bound on first use and cached.

With ``--workers N`` every worker's values live in files of one folder (prometheus_client's multiprocess
mode: ``PROMETHEUS_MULTIPROC_DIR``, which the supervisor sets for its workers before they import
prometheus_client, and removes at exit), and ``GET /metrics`` from any worker shows the sums over all of
them: counters and histograms add up; ``exporter_inflight_requests`` is the sum over the live workers
(``livesum``) and ``exporter_ready`` their minimum (``livemin``: 1 only when every worker is ready, so the
series keeps its meaning of one server's readiness). One process keeps the plain registry and no files.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["CONTENT_TYPE_LATEST", "MULTIPROCESS_FOLDER", "Metrics", "answered_in"]

MULTIPROCESS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
"""The environment variable naming the folder of the workers' metric files (prometheus_client reads it when
it is imported, so it must be set before then: in the supervisor, for the workers it starts)."""

ERROR_KINDS = {400: "bad_request", 500: "model_error", 503: "unavailable"}
"""The ``exporter_request_errors`` kind of an HTTP status (other statuses are not errors)."""


class Metrics:
    """The server's metrics, with the children for its one model bound once."""

    def __init__(self, model: str) -> None:
        disable_created_metrics()  # the *_created series double the output and no dashboard reads them
        self.registry = CollectorRegistry()
        self.model = model
        self.requests = Counter(
            "exporter_requests",
            "Inference requests by HTTP status",
            ["model", "code"],
            registry=self.registry,
        )
        self.errors = Counter(
            "exporter_request_errors",
            "Failed inference requests by kind (bad_request, model_error, unavailable)",
            ["model", "kind"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "exporter_request_seconds",
            "Inference request latency in the server (body read to response)",
            ["model"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0),
            registry=self.registry,
        )
        self.batch_rows = Histogram(
            "exporter_batch_size",
            "Rows per model call (dynamic batching gathers requests into one call)",
            ["model"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.model_seconds = Histogram(
            "exporter_model_call_seconds",
            "Time in the model per call",
            ["model"],
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=self.registry,
        )
        self.inflight = Gauge(
            "exporter_inflight_requests",
            "Inference requests being served",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.ready = Gauge(
            "exporter_ready",
            "1 when the server is ready",
            ["model"],
            registry=self.registry,
            multiprocess_mode="livemin",
        )
        self.latency_child = self.latency.labels(model)
        self.batch_rows_child = self.batch_rows.labels(model)
        self.model_seconds_child = self.model_seconds.labels(model)
        self.inflight_child = self.inflight.labels(model)
        self.ready_child = self.ready.labels(model)
        self._by_status: dict[int, tuple[Counter, Counter | None]] = {}
        shared = os.environ.get(MULTIPROCESS_FOLDER)
        self.shown = self.registry if not shared else _every_process(Path(shared))
        """What ``/metrics`` shows: this registry, or the sums over every worker's files."""

    def observe_call(self, rows: int, seconds: float) -> None:
        """One model call of ``rows`` rows that took ``seconds`` (called on the model thread)."""
        self.batch_rows_child.observe(rows)
        self.model_seconds_child.observe(seconds)

    def count(self, status: int) -> None:
        """One answered inference request with HTTP ``status`` (and its error kind, if it is one)."""
        children = self._by_status.get(status)
        if children is None:
            kind = ERROR_KINDS.get(status)
            children = (
                self.requests.labels(self.model, str(status)),
                self.errors.labels(self.model, kind) if kind else None,
            )
            self._by_status[status] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()

    def answered(self) -> int:
        """Inference requests answered so far, whatever their status (by every worker, with workers)."""
        return _answered(self.shown)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format (the body of ``GET /metrics``)."""
        return generate_latest(self.shown)


def answered_in(folder: Path) -> int:
    """Inference requests answered by every process whose metric files are in ``folder``."""
    return _answered(_every_process(folder))


def _every_process(folder: Path) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(folder))
    return registry


def _answered(registry: CollectorRegistry) -> int:
    total = 0.0
    for metric in registry.collect():
        if metric.name == "exporter_requests":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return int(total)

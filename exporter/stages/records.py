"""Stage bookkeeping: a status per stage (not run, passed, failed, skipped), its time, and what the
pipeline tells a listener (the CLI's progress display) while it runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any, Protocol

from pydantic import Field, StrictStr
from pydantic import dataclasses as pydantic_dataclasses

from exporter._heap import peak_rss, reset_peak_rss
from exporter.documents.fields import ENTRY, Number
from exporter.interrupts import check_interrupted

__all__ = [
    "STAGES",
    "CheckpointListener",
    "ProgressListener",
    "SilentListener",
    "StageRecord",
    "StageStatus",
    "StageTracker",
    "TargetFailure",
]

STAGES = ("load", "convert", "verify", "optimize", "quantize", "benchmark", "write")


class StageStatus(StrEnum):
    NOT_RUN = "not run"
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@pydantic_dataclasses.dataclass(config=ENTRY)
class StageRecord:
    """One stage's status, time and detail; report.json's ``stages`` rows are this type (``to_json``)."""

    name: StrictStr
    status: StageStatus = StageStatus.NOT_RUN
    seconds: Number = 0.0
    detail: StrictStr = ""
    peak_rss_mb: Number | None = None
    """This process's peak resident memory while the stage ran (``exporter.stages.memory``), in MiB."""
    raised: bool = Field(default=False, init=False, exclude=True)
    """The stage ended the run with an error (whose one line the CLI prints after it); not in report.json."""

    def to_json(self) -> dict[str, Any]:
        """The report's row: the status as its text, seconds to the millisecond."""
        return {
            "name": self.name,
            "status": self.status.value,
            "seconds": round(self.seconds, 3),
            "detail": self.detail,
            "peak_rss_mb": self.peak_rss_mb,
        }


class ProgressListener(Protocol):
    """What the pipeline tells its caller while it runs (the CLI draws it with rich)."""

    def stage_started(self, stage: str) -> None: ...
    def stage_finished(self, record: StageRecord) -> None: ...
    def step(self, message: str, done: int, total: int) -> None:
        """Progress inside a stage; ``total`` 0 means the count is unknown."""

    def note(self, message: str) -> None:
        """Something the user should read now (a previous run into the same folder was killed)."""


class SilentListener:
    def stage_started(self, stage: str) -> None:
        pass

    def note(self, message: str) -> None:
        pass

    def stage_finished(self, record: StageRecord) -> None:
        pass

    def step(self, message: str, done: int, total: int) -> None:
        pass


class CheckpointListener:
    """Passes everything on, and first raises an interrupt that a library swallowed (``check_interrupted``):
    progress steps come often and from exporter's own code, a safe place to stop."""

    def __init__(self, inner: ProgressListener) -> None:
        self.inner = inner

    def stage_started(self, stage: str) -> None:
        check_interrupted()
        self.inner.stage_started(stage)

    def stage_finished(self, record: StageRecord) -> None:
        self.inner.stage_finished(record)

    def step(self, message: str, done: int, total: int) -> None:
        check_interrupted()
        self.inner.step(message, done, total)

    def note(self, message: str) -> None:
        note = getattr(self.inner, "note", None)  # listeners written before notes existed lack it
        if note is not None:
            note(message)


class StageTracker:
    def __init__(self, listener: ProgressListener) -> None:
        self.records = {name: StageRecord(name) for name in STAGES}
        self.listener = listener
        self.on_start: list[Callable[[str], object]] = []
        """Called with each stage's name as it starts (the staging record notes it)."""
        self.peak_rss_mb = 0.0
        """The run's peak over its stages (``ru_maxrss`` follows the resets, so it cannot say)."""

    @contextmanager
    def run(self, name: str) -> Iterator[StageRecord]:
        record = self.records[name]
        self.listener.stage_started(name)
        for hook in self.on_start:
            hook(name)
        measured = reset_peak_rss()
        started = time.perf_counter()
        try:
            yield record
            check_interrupted()
        except KeyboardInterrupt:
            record.status, record.detail = StageStatus.FAILED, "interrupted"
            raise
        except BaseException as error:
            record.status, record.raised = StageStatus.FAILED, True
            record.detail = record.detail or (
                str(error).splitlines()[0] if str(error) else type(error).__name__
            )
            raise
        else:
            if record.status is StageStatus.NOT_RUN:
                record.status = StageStatus.PASSED
        finally:
            record.seconds = time.perf_counter() - started
            if measured:
                record.peak_rss_mb = round(peak_rss() / 2**20, 1)
                self.peak_rss_mb = max(self.peak_rss_mb, record.peak_rss_mb)
            self.listener.stage_finished(record)

    def skip(self, name: str, why: str) -> None:
        record = self.records[name]
        record.status, record.detail = StageStatus.SKIPPED, why
        self.listener.stage_finished(record)

    def list(self) -> list[StageRecord]:
        return list(self.records.values())


@pydantic_dataclasses.dataclass(config=ENTRY, frozen=True)
class TargetFailure:
    """A requested target whose conversion failed while others built: reported, not shipped (report.json's
    ``failed_targets`` rows are this type)."""

    target: StrictStr
    backend: StrictStr
    error: StrictStr
    """The one line, as the CLI would have shown it alone."""
    explanation: StrictStr | None = None
    """The converter's whole message (torch's explanation and suggested fix), when longer than the line."""

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "backend": self.backend,
            "error": self.error,
            "explanation": self.explanation,
        }

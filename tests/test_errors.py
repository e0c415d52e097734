"""``describe_failure``: the one mapping from an exception to an exit code and a one-line message, used by
the CLI's error guard and by ``exporter run`` for each recipe."""

from __future__ import annotations

import signal
import tempfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import ConversionError, ExitCode, LoadError, describe_failure
from exporter.interrupts import Interrupted


def test_an_exporter_error_keeps_its_exit_code_and_names_its_stage() -> None:
    assert describe_failure(LoadError("checkpoint 'a.pt' does not exist"), "export a.pt") == (
        ExitCode.BAD_INPUT,
        "error (load): checkpoint 'a.pt' does not exist",
    )
    assert describe_failure(ConversionError("no exporter could convert"), "export") == (
        ExitCode.CONVERSION_FAILED,
        "error (convert): no exporter could convert",
    )


def test_ctrl_c_is_130_and_sigterm_is_143() -> None:
    assert describe_failure(KeyboardInterrupt(), "export") == (
        ExitCode.INTERRUPTED,
        "interrupted: nothing was written",
    )
    assert describe_failure(Interrupted(signal.SIGINT), "export")[0] == 130
    assert describe_failure(Interrupted(signal.SIGTERM), "export") == (
        ExitCode.TERMINATED,
        "terminated (SIGTERM): nothing was written",
    )


def test_any_other_exception_is_a_bug_with_its_traceback_in_a_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    try:
        raise RuntimeError("kaboom\nsecond line")
    except RuntimeError as error:
        code, line = describe_failure(error, "run recipes/x.toml")
    assert code == ExitCode.INTERNAL_ERROR == 5
    assert line.startswith("internal error (a bug in exporter, not in your model): RuntimeError: kaboom;")
    assert "\n" not in line and "second line" not in line
    log = Path(line.split("traceback written to ", 1)[1].split(" ", 1)[0])
    assert log.parent == tmp_path
    text = log.read_text()
    assert text.startswith("exporter run recipes/x.toml: internal error")
    assert "Traceback (most recent call last)" in text and "RuntimeError: kaboom" in text
    assert "test_errors.py" in text


def test_the_cli_prints_the_mapped_line_once_with_markup_shown_as_is(tmp_path: Path) -> None:
    missing = tmp_path / "[red]x[/].pt"
    result = CliRunner().invoke(app, ["export", str(missing)])
    code, line = describe_failure(LoadError(f"checkpoint '{missing}' does not exist"), "export")
    assert result.exit_code == code == 2
    assert " ".join(result.output.split()) == line


def test_full_text_keeps_what_the_one_line_cuts_for_failed_candidates() -> None:
    from exporter.errors import full_text
    from exporter.quantize.types import Candidate
    from exporter.report.markdown import _markdown_candidate_failures

    short = RuntimeError("one line is all there is")
    assert full_text(short) is None
    try:
        raise RuntimeError("Constraints violated (seq)!\nSuggested fixes:\n  seq = Dim('seq', min=2)")
    except RuntimeError as error:
        text = full_text(error)
    assert text is not None and text.startswith("RuntimeError: Constraints") and "Suggested fixes" in text
    candidate = Candidate(
        "static-pt2e", "torchao", error="RuntimeError: Constraints violated", explanation=text
    )
    assert candidate.to_json(1)["explanation"] == text
    markdown_lines = _markdown_candidate_failures({"candidates": [candidate.to_json(1)]})
    assert any("Suggested fixes" in line for line in markdown_lines)

"""The memory estimate and its refusal (``exporter.stages.memory``): sizes, the estimate per stage, one
line and exit 2 before any conversion, and each stage's recorded peak."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from exporter.cli import app
from exporter.errors import UsageError
from exporter.pipeline import ExportOptions, export
from exporter.quantize.types import QuantizeOptions, QuantMode
from exporter.specs.inputs import InputSpec, parse_tensor_spec
from exporter.stages.memory import STAGE_COSTS, available_memory, estimate_memory, parse_size
from tests.models import MODELS


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("12GiB", 12 * 2**30),
        ("12G", 12 * 2**30),
        ("800MB", 800 * 2**20),
        ("1.5T", int(1.5 * 2**40)),
        ("4096", 4096),
    ],
)
def test_sizes_read_as_powers_of_1024(text: str, size: int) -> None:
    assert parse_size(text, "--max-memory") == size


@pytest.mark.parametrize("text", ["", "lots", "-1G", "0", "12 parsecs"])
def test_a_bad_size_is_one_line_naming_the_flag(text: str) -> None:
    with pytest.raises(UsageError, match=r"^--max-memory '.*' is not a size: write it like 12GiB"):
        parse_size(text, "--max-memory")


def test_the_costliest_stage_drives_the_estimate(options_for: Callable[..., ExportOptions]) -> None:
    weights = 2**30
    plain = estimate_memory(options_for("mlp"), weights, resident=0)
    int8 = estimate_memory(
        options_for("mlp", quantization=QuantizeOptions(mode=QuantMode.INT8)), weights, resident=0
    )
    assert plain.driver == "--to onnx" and (plain.factor, plain.overhead) == STAGE_COSTS["onnx"]
    assert int8.driver == "--quantize int8" and int8.peak > plain.peak
    lean = estimate_memory(options_for("mlp", optimization={"steps": ("none",)}), weights, resident=5)
    assert lean.peak < plain.peak and lean.peak == 5 + lean.overhead + int(lean.factor * weights)


def test_available_memory_is_a_positive_figure_with_its_source() -> None:
    available, source = available_memory()
    assert available > 0 and source in ("MemAvailable", "the cgroup's memory.max")


def test_an_export_that_cannot_fit_is_refused_in_one_line_before_converting(
    tmp_path: Path, state_dict_checkpoint: Callable[[str], Path]
) -> None:
    out = tmp_path / "runs" / "mlp"
    args = [
        "export",
        str(state_dict_checkpoint("mlp")),
        "--model",
        MODELS["mlp"].ref,
        "--input",
        MODELS["mlp"].inputs[0],
        "--to",
        "onnx",
        "--quantize",
        "int8",
        "--max-memory",
        "64MB",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in result.output
    line = " ".join(result.output.split("error", 1)[1].split())
    assert "needs an estimated" in line and "more than the 0.1 GiB available (--max-memory)" in line
    assert "drop --quantize int8" in line and "--max-memory SIZE" in line
    assert "convert" not in result.output  # refused before the convert stage started
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())  # no staging folder, no record


def test_every_stage_that_ran_records_its_peak(options_for: Callable[..., ExportOptions]) -> None:
    result = export(options_for("mlp", benchmark=False))
    ran = [stage for stage in result.stages if stage.status.value in ("passed", "failed")]
    assert ran and all(stage.peak_rss_mb is not None and stage.peak_rss_mb > 10 for stage in ran)
    skipped = [stage for stage in result.stages if stage.status.value == "skipped"]
    assert all(stage.peak_rss_mb is None for stage in skipped)
    resources = result.report["resources"]
    before_write = [
        stage.peak_rss_mb or 0 for stage in ran if stage.name != "write"
    ]  # the report is written in it
    assert resources["peak_rss_mb"] >= max(before_write)
    assert resources["estimated_peak_mb"] > 0
    rows = [s for s in result.report["stages"] if s["status"] == "passed" and s["name"] != "write"]
    assert rows and all(s["peak_rss_mb"] > 10 for s in rows)
    markdown = (result.out_dir / "report.md").read_text()
    assert "| stage | status | time | peak RSS | detail |" in markdown


def test_paging_out_the_mapped_weights_frees_them_and_keeps_the_model_exact(tmp_path: Path) -> None:
    """The eager model's weights are the checkpoint's mapped pages: handed back to the kernel between
    stages, they are read again from the file on the next forward, bit for bit."""
    import torch

    from exporter._heap import current_rss, page_out
    from exporter.loading.checkpoint import LoadRequest, load_model

    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(1024, 1024) for _ in range(16)))  # 64 MiB
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    (tmp_path / "arch.py").write_text(
        "import torch\n\ndef build():\n"
        "    return torch.nn.Sequential(*(torch.nn.Linear(1024, 1024) for _ in range(16)))\n"
    )
    loaded = load_model(LoadRequest(path, f"{tmp_path / 'arch.py'}:build")).module
    x = torch.ones(2, 1024)
    with torch.inference_mode():
        before = loaded(x)
    touched = current_rss()
    assert page_out(loaded) >= 60 * 2**20
    assert current_rss() < touched - 40 * 2**20  # most of the 64 MiB left the resident set
    with torch.inference_mode():
        assert torch.equal(loaded(x), before)


def test_a_big_models_artifacts_are_timed_beside_eager_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past ``JOINT_TIMING_BYTES`` each artifact is opened, timed beside eager and closed before the next
    opens (every runtime holds its own copy of the weights); eager is listed once per plan."""
    import torch

    import exporter.stages.benchmark as stage
    from exporter.runners.pytorch import EagerRunner
    from exporter.stages.records import SilentListener
    from tests.conftest import FAST_TIMING

    open_now: list[str] = []
    most_open = [0]

    class Counted(EagerRunner):
        def __enter__(self) -> Counted:
            open_now.append(self.name)
            most_open[0] = max(most_open[0], len(open_now))
            return self

        def __exit__(self, *exc: object) -> None:
            open_now.remove(self.name)

    def opener(name: str) -> Counted:
        runner = Counted(torch.nn.Linear(16, 4).eval(), ["x"])
        runner.name = name
        return runner

    monkeypatch.setattr(stage, "JOINT_TIMING_BYTES", 0)
    monkeypatch.setattr(stage, "probe_threads", lambda eager, plan, threads: None)
    options = MODELS["mlp"]
    spec_options = ExportOptions.from_settings(
        {
            "checkpoint": Path(__file__),
            "spec": InputSpec((parse_tensor_spec(options.inputs[0]),)),
            "timing": FAST_TIMING,
            "batch_sizes": (1, 2),
            "threads": 1,
        }
    )
    eager = EagerRunner(torch.nn.Linear(16, 4).eval(), ["x"])
    result = stage.benchmark_stage(
        eager, [lambda: opener("a"), lambda: opener("b")], spec_options, SilentListener(), {}
    )
    assert most_open[0] == 1 and open_now == []
    rows = [(s.backend, s.label) for s in result.latency]
    assert sorted(rows) == sorted(
        (b, p) for b in (eager.name, "a", "b") for p in {label for _, label in rows}
    )
    assert all(s.speedup_vs_eager is not None for s in result.latency)


def test_paging_out_a_mapped_file_drops_its_resident_pages(tmp_path: Path) -> None:
    """``page_out_file`` finds the file's mappings in /proc/self/maps (OpenVINO maps an IR's .bin so)."""
    import mmap

    from exporter._heap import current_rss, page_out_file

    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * (64 * 2**20 // 256))
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        checksum = sum(mapped[i] for i in range(0, len(mapped), 4096))  # touch every page
        touched = current_rss()
        assert page_out_file(path) >= 64 * 2**20
        assert current_rss() < touched - 40 * 2**20
        assert sum(mapped[i] for i in range(0, len(mapped), 4096)) == checksum  # read back, the same

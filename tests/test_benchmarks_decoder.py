"""benchmarks/decoder.py's pieces on a tiny Llama-style folder: eager with its own cache is timed at the
plan's past length (the cache is cropped back, so every call decodes the same step), the plans follow the
decoder contract, a run without exports or Optimum still measures eager and says why Optimum is missing, and
the tables and targets render. No timing is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from tests.hf_models import llama_folder

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import decoder
import decoder_report
import decoder_timing
from decoder_models import EagerWithCache, generate_tokens, load_eager

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return llama_folder(tmp_path_factory.mktemp("decoder-bench") / "tiny", layers=2)


def test_eager_with_cache_decodes_the_same_step_each_call_and_matches_generate(folder: Path) -> None:
    layout = decoder_timing.layout_of(folder)
    model = load_eager(folder, threads=1)
    eager = EagerWithCache(model, layout.num_layers)
    plans = decoder_timing.plans(layout, quick=True)
    assert [(phase, n) for phase, n, _ in plans] == [("prefill", 16), ("decode", 16), ("decode", 128)]
    _, past, plan = plans[-1]
    assert plan.inputs["attention_mask"].shape == (1, past + 1)
    assert plan.inputs["past_key_values.0.key"].shape == (1, layout.kv_heads, past, layout.head_dim)
    first, second = eager.run(plan.inputs)[0], eager.run(plan.inputs)[0]
    np.testing.assert_array_equal(first, second)
    assert eager._cache.get_seq_length() == past

    prompt = [5, 17, 42, 7]
    ids = np.asarray([prompt], dtype=np.int64)
    step = decoder_timing.step_inputs(layout, ids, decoder_timing.empty_past(layout), 0)
    assert int(eager.run(step)[0][0, -1].argmax()) == generate_tokens(model, prompt, 1)[0]


def test_a_run_without_exports_or_optimum_times_eager_and_says_why(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(decoder, "OPTIMUM_VENV", tmp_path / "no-venv")
    optimum = decoder.run_optimum(folder, tmp_path, 1, Console(quiet=True))
    assert not optimum["ok"] and "not installed" in optimum["reason"]
    assert "pip install torch==2.13.0" in optimum["reason"]

    measured = decoder_timing.measure_model(
        "tiny", folder, {"parameters": 1}, {}, optimum, threads=1, quick=True, console=Console(quiet=True)
    )
    (row,) = measured.rows
    assert set(row.prefill_ms) == {16} and set(row.decode_ms) == {16, 128}
    assert all(v > 0 for v in [*row.prefill_ms.values(), *row.decode_ms.values()])
    assert measured.generate_per_token_ms[16] > 0
    measured.load = {"before": [0.0], "after": [0.0]}
    text = decoder_report.markdown([measured], {**_environment(), "packages": {}})
    assert "| eager transformers (DynamicCache) | transformers |" in text
    assert "Optimum: no model: not installed" in text
    assert decoder_report.targets([measured]) == ["targets: not measured (the 125m model was not run)"]


def test_greedy_match_names_the_first_differing_step() -> None:
    assert decoder_timing._match([1, 2, 3], [1, 2, 3]) == "3/3"
    assert decoder_timing._match([1, 2, 3], [1, 5, 3]) == "2/3 (first differs at step 2)"


def _environment() -> dict[str, object]:
    return {"cpu": "cpu", "usable_cpus": 1, "cpu_flags": [], "python": "3"}

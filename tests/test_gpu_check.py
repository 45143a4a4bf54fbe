"""benchmarks/gpu_check.py at tiny sizes on the CPU, so the GPU check cannot rot between
the rare occasions a GPU is at hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import load_benchmark


@pytest.mark.slow
def test_gpu_check_runs_at_tiny_sizes_on_the_cpu(tmp_path: Path, capsys) -> None:
    gpu_check = load_benchmark("gpu_check")
    out = tmp_path / "check.json"
    gpu_check.main(["--tiny", "--device", "cpu", "--json", str(out)])
    report = json.loads(out.read_text())

    assert set(report["pgd_at"]) == {"a", "b", "c"}
    timed = [*report["pgd_at"].values(), report["gacd"]]
    for r in timed:
        assert r["steps_timed"] >= 1 and r["warmup_steps"] >= 1
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        # images/s and ms/step are two views of the same timing
        assert r["images_per_s"] == pytest.approx(1e3 * r["batch_size"] / r["ms_per_step"])
    gacd = report["gacd"]
    assert gacd["cost_vs_pgd_at_b"] == pytest.approx(
        gacd["ms_per_step"] / report["pgd_at"]["b"]["ms_per_step"]
    )
    # The CPU is deterministic: the resumed GACD run must equal the uninterrupted one exactly.
    resume = report["resume"]
    assert resume["interrupted_at_epoch"] == 1 and resume["tensors_compared"] > 0
    assert resume["exact"] and resume["passed"] and resume["relative_l2_difference"] == 0.0
    # Off a GPU the speed targets give no verdict.
    targets = report["targets"]
    assert targets["pgd_at_bf16_images_per_s"]["met"] is None
    assert targets["gacd_cost_vs_pgd_at"]["met"] is None
    assert targets["resume_matches"]["met"] is True

    printed = capsys.readouterr().out
    for row in ("PGD-AT (a)", "PGD-AT (b)", "PGD-AT (c)", "GACD (b)", "resume GACD"):
        assert row in printed

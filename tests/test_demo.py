"""`gacd demo` end to end on a shrunken budget: the JSON and the table agree."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_demo_writes_matching_json_and_table(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "gacd.cli",
        "demo",
        "--out",
        str(out),
        "--quiet",
        "--epochs-scale",
        "0.07",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in results["models"]]
    assert names == ["undefended", "teacher"]
    methods = [r["method"] for r in results["students"]]
    assert methods == ["pgd_at", "kd", "ard", "gacd", "gacd_aft"]
    for row in results["models"] + results["students"]:
        assert 0.0 <= row["pgd"] <= row["natural"] <= 100.0
        assert 0.0 <= row["apgd_ce"] <= row["natural"]
        assert Path(row["checkpoint"]).is_file()
    assert results["attacks"] == ["pgd", "apgd_ce"]
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    # Every number in the JSON appears, rounded as printed, in the Markdown table and stdout.
    table = (out / "results.md").read_text()
    for row in results["summary"]:
        line = next(l for l in table.splitlines() if l.startswith(f"| {row['label']} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[3] == str(row["epochs"])
        assert cells[4] == f"{row['natural']:.2f}" and cells[5] == f"{row['pgd']:.2f}"
        assert cells[6] == f"{row['apgd_ce']:.2f}"
        assert line in done.stdout
    assert re.search(r"Wall time: \d+ s", table)

    # A re-run resumes every finished stage instead of training again.
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")}
    assert len(stamps) == 8  # 2 reference models, 5 students (GACD: its probe), 1 distillation
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("checkpoint.pt")} == stamps
    assert json.loads((out / "results.json").read_text())["summary"] == results["summary"]

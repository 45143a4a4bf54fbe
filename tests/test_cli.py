"""The `gacd` command line: errors exit 2 with a message naming the problem and write
nothing; `gacd evaluate` prints, and writes as JSON and Markdown, the same numbers."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gacd.cli import main
from gacd.engine.checkpoint import save_atomic
from gacd.engine.export import load_model

GACD = Path(sys.executable).parent / "gacd"


def _run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# -- gacd train: errors before any work --------------------------------------------------------
@pytest.mark.skipif(not GACD.exists(), reason="the gacd console script is not installed here")
def test_console_script_rejects_an_unknown_key_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [str(GACD), "train", "bogus=1", f"out={out}", "progress=false"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "'bogus'" in proc.stderr and "allowed:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["data.foo=1"], ["'data.foo'", "data.batch_size"]),
        (["method.name=trades", "method.bogus=1"], ["'method.bogus'", "method.beta"]),
        (["optim.schedule=linear"], ["'linear'", "'cosine'"]),
        (["method.name=nope"], ["'nope'", "pgd_at"]),
        (["data.name=nope"], ["'nope'", "digits"]),
        (["model.arch=nope"], ["'nope'", "digits_cnn"]),
        (["model.kwargs={depth: 3}"], ["model.kwargs", "depth"]),
        (["data.val_fraction=1.5"], ["1.5"]),
        (["device=not_a_device"], ["not_a_device"]),
        (["method.name=kd", "teacher=/nonexistent/teacher.pt"], ["/nonexistent/teacher.pt"]),
    ],
)
def test_train_errors_exit_2_before_writing_anything(tmp_path, capsys, overrides, expected):
    out = tmp_path / "run"
    code, _, err = _run_main(["train", *overrides, f"out={out}", "progress=false"], capsys)
    assert code == 2, err
    for part in expected:
        assert part in err, (part, err)
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


def test_train_with_a_missing_config_file(tmp_path, capsys):
    code, _, err = _run_main(
        ["train", "--config", str(tmp_path / "nope.yaml"), f"out={tmp_path / 'run'}"], capsys
    )
    assert code == 2 and "config file not found" in err
    assert not (tmp_path / "run").exists()


def test_a_reader_that_goes_away_ends_the_command_quietly(monkeypatch, capsys):
    """`gacd zoo | head`: the closed pipe is no error to report, and no traceback."""

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("builtins.print", closed)
    assert main(["zoo"]) == 141
    assert capsys.readouterr().err == ""


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fly"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# -- gacd evaluate -----------------------------------------------------------------------------
_PRINTED = re.compile(r"^\s*(\S+): +(-?[\d.]+)%")


def test_evaluate_prints_and_writes_the_same_numbers(
    digits_teacher_path, digits_data, tmp_path, capsys
):
    out = tmp_path / "eval"
    code, stdout, err = _run_main(
        [
            "evaluate",
            str(digits_teacher_path),
            "--attacks",
            "natural,fgsm,pgd10",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    printed = {m[1]: float(m[2]) for m in map(_PRINTED.match, stdout.splitlines()) if m}
    assert list(printed) == ["natural", "fgsm", "pgd10"]

    payload = json.loads((out / "evaluation.json").read_text())
    assert payload["dataset"] == "digits" and payload["split"] == "test"
    assert payload["samples"] == len(digits_data.test)
    assert payload["eps"] == pytest.approx(0.2)
    assert list(payload["accuracy"]) == list(printed)
    for name, acc in payload["accuracy"].items():
        assert round(acc, 2) == printed[name]
    assert "eps=0.2" in payload["attacks"]["pgd10"] and "10 steps" in payload["attacks"]["pgd10"]

    markdown = (out / "evaluation.md").read_text()
    rows = {}
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0] in printed:
            rows[cells[0]] = float(cells[1])
    assert rows == printed

    # The clean number, computed here independently.
    model = load_model(digits_teacher_path)
    batch = digits_data.test.batch_at(torch.arange(len(digits_data.test)))
    with torch.no_grad():
        correct = int((model(batch.images).argmax(1) == batch.labels).sum())
    clean = 100.0 * correct / len(batch.labels)
    assert payload["accuracy"]["natural"] == pytest.approx(clean, abs=1e-9)
    assert payload["accuracy"]["pgd10"] < payload["accuracy"]["natural"]


@pytest.mark.parametrize(
    ("attacks", "expected"),
    [
        ("natural,pgdx", ["unknown attack 'pgdx'", "natural, fgsm, pgdK"]),
        ("bogus", ["unknown attack 'bogus'", "autoattack"]),
        ("pgd0", ["pgd0", "at least one step"]),
        (",", ["--attacks is empty"]),
    ],
)
def test_evaluate_rejects_bad_attack_names(
    digits_undefended_path, tmp_path, capsys, attacks, expected
):
    out = tmp_path / "eval"
    code, _, err = _run_main(
        ["evaluate", str(digits_undefended_path), "--attacks", attacks, "--out", str(out)],
        capsys,
    )
    assert code == 2, err
    for part in expected:
        assert part in err, (part, err)
    assert not out.exists()


def test_evaluate_missing_model_file(tmp_path, capsys):
    code, _, err = _run_main(["evaluate", str(tmp_path / "missing.pt")], capsys)
    assert code == 2
    assert "not found" in err and "missing.pt" in err


def test_evaluate_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("not a model\n")
    code, _, err = _run_main(["evaluate", str(path), "--out", str(tmp_path / "e")], capsys)
    assert code == 2
    assert "notes.txt" in err
    assert not (tmp_path / "e").exists()


def test_evaluate_a_training_checkpoint_with_dataset(digits_teacher_path, tmp_path, capsys):
    checkpoint = digits_teacher_path.parent / "checkpoint.pt"
    code, _, err = _run_main(
        ["evaluate", str(checkpoint), "--dataset", "digits", "--out", str(tmp_path / "e")], capsys
    )
    assert code == 2
    assert "not an exported gacd model" in err
    assert not (tmp_path / "e").exists()


def test_evaluate_a_training_checkpoint_says_it_is_not_a_model(digits_teacher_path, capsys):
    checkpoint = digits_teacher_path.parent / "checkpoint.pt"
    code, _, err = _run_main(["evaluate", str(checkpoint)], capsys)
    assert code == 2
    assert "not an exported gacd model" in err


@pytest.mark.parametrize("content", [torch.zeros(3), [1, 2, 3]], ids=["tensor", "list"])
def test_evaluate_a_torch_file_that_is_not_a_dict(tmp_path, capsys, content):
    path = tmp_path / "weights.pt"
    save_atomic(content, path)  # type: ignore[arg-type]
    code, _, err = _run_main(["evaluate", str(path), "--dataset", "digits"], capsys)
    assert code == 2
    assert "weights.pt" in err

"""Transfer by linear probe: a student trained on digits 0-4, frozen, probed on digits 5-9."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gacd.cli import main
from gacd.engine.export import load_model
from gacd.experiments.probe import run_transfer, transfer_config
from gacd.training import train

SOURCE = [0, 1, 2, 3, 4]
TARGET = [5, 6, 7, 8, 9]


@pytest.fixture(scope="module")
def source_student(tmp_path_factory: pytest.TempPathFactory, digits_config) -> Path:
    """A small PGD-AT student on digits 0-4 (8 cheap epochs, a few seconds)."""
    out = tmp_path_factory.mktemp("student04")
    config = digits_config(
        out,
        [
            "method.name=pgd_at",
            "model.arch=digits_cnn_small",
            "optim.epochs=8",
            "optim.lr=0.05",
            "attack.steps=3",
            "attack.step_size=0.1",
            "eval.val_attack_steps=3",
            f"data.classes={SOURCE}",
        ],
    )
    return train(config, resume=False).model_last


@pytest.fixture(scope="module")
def transferred(source_student: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("transfer")
    config = transfer_config(
        source_student,
        dataset="digits",
        classes=TARGET,
        out_dir=out,
        epochs=20,
        lr=0.2,
        device="cpu",
        progress=False,
    )
    payload = run_transfer(config)
    return out, payload


def test_probe_learns_the_new_classes(transferred, source_student):
    _, payload = transferred
    acc = payload["accuracy"]
    assert set(acc) == {"natural", "pgd7"}
    # Five target classes: chance is 20%; frozen 0-4 features separate 5-9 well (~90%).
    assert acc["natural"] > 60.0, acc
    assert 0.0 <= acc["pgd7"] <= acc["natural"]
    assert payload["target"] == {
        "dataset": "digits",
        "classes": TARGET,
        "resize": None,
        "num_classes": 5,
        "train_samples": payload["target"]["train_samples"],
        "test_samples": payload["samples"],
    }
    assert payload["source"]["classes"] == SOURCE and payload["student"] == str(source_student)
    assert "7 steps of 0.05" in payload["attacks"]["pgd7"] and payload["eps"] == 0.2
    probe = load_model(payload["probe"]["model"])
    assert probe.classifier.out_features == 5


def test_student_features_stay_frozen(transferred, source_student):
    _, payload = transferred
    student = load_model(source_student).state_dict()
    probe = load_model(payload["probe"]["model"]).state_dict()
    body = [k for k in student if not k.startswith("classifier.")]
    assert body and set(body) <= set(probe)
    for key in body:  # weights and BatchNorm statistics alike
        assert torch.equal(student[key], probe[key]), key
    assert not torch.equal(student["classifier.bias"][:5], probe["classifier.bias"])


def test_json_and_markdown_hold_the_numbers(transferred):
    out, payload = transferred
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["accuracy"] == payload["accuracy"]
    md = (out / "transfer.md").read_text()
    assert f"{payload['accuracy']['natural']:.2f}" in md and "digits classes [5, 6, 7, 8, 9]" in md


def test_cli_prints_what_the_json_holds(source_student, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["transfer", "--student", str(source_student), "--dataset", "digits"]
    args += ["--classes", "5,6,7,8,9", "--epochs", "2", "--device", "cpu", "--quiet"]
    code = main([*args, "--max-samples", "50", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    saved = json.loads((out / "transfer.json").read_text())
    assert saved["samples"] == 50
    for name in ("natural", "pgd7"):
        assert f"{name:>12}: {saved['accuracy'][name]:6.2f}%" in printed


@pytest.mark.parametrize(
    ("classes", "message"),
    [("12", "data.classes"), ("5,5", "data.classes"), ("five", "comma-separated integers")],
)
def test_bad_classes_exit_2_before_writing(source_student, tmp_path, capsys, classes, message):
    out = tmp_path / "bad"
    code = main(
        [
            "transfer",
            "--student",
            str(source_student),
            "--dataset",
            "digits",
            "--classes",
            classes,
            "--out",
            str(out),
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists()


def test_missing_student_and_unknown_dataset_exit_2(source_student, tmp_path, capsys):
    assert (
        main(
            [
                "transfer",
                "--student",
                str(tmp_path / "no.pt"),
                "--dataset",
                "digits",
                "--out",
                str(tmp_path / "a"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err
    assert (
        main(
            [
                "transfer",
                "--student",
                str(source_student),
                "--dataset",
                "svhn",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 2
    )
    assert "unknown dataset" in capsys.readouterr().err

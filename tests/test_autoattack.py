"""AutoAttack bridge: the reference implementation on digits models, checked against PGD,
plus the failure paths (package missing, points outside the ball, too few classes)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from gacd.cli import main
from gacd.engine.export import load_model
from gacd.errors import ConfigError
from gacd.evaluation import autoattack as aa_module
from gacd.evaluation.autoattack import (
    MISSING_MESSAGE,
    AutoAttackError,
    AutoAttackUnavailable,
    autoattack_accuracy,
    autoattack_available,
)
from gacd.evaluation.results import MASKING_GAP, evaluate_model, masking_warnings
from gacd.models import build_model

EPS = 0.2  # the digits default budget
STEP = 0.05
# One point of slack on a 40-100 point subset: PGD and AutoAttack draw different random
# starts, so on a point at the margin PGD may win by luck.
TOLERANCE = 2.5


def _pgd_and_natural(model, split, n):
    result = evaluate_model(
        model, split, ["natural", "pgd20"], eps=EPS, step_size=STEP, max_samples=n
    )
    return result["accuracy"]["natural"], result["accuracy"]["pgd20"]


@pytest.mark.slow
def test_standard_autoattack_on_robust_teacher(digits_teacher_path, digits_data):
    """Standard AA (APGD-CE, APGD-T, FAB-T, Square) on 40 test points of the PGD-AT teacher:
    no stronger than natural, at least as strong as PGD-20, and the model left as found."""
    n = 40
    model = load_model(digits_teacher_path)
    model.train()  # AutoAttack must evaluate in eval mode and restore this
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aa = autoattack_accuracy(model, digits_data.test, EPS, max_samples=n, batch_size=64)
    # In eval mode the model is deterministic and static; AutoAttack's checks must agree.
    checks = " ".join(str(w.message) for w in caught)
    assert "randomized" not in checks and "dynamic" not in checks, checks

    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng), "AutoAttack reseeded the global RNG"

    natural, pgd20 = _pgd_and_natural(model.eval(), digits_data.test, n)
    assert aa <= natural
    assert aa <= pgd20 + TOLERANCE, f"AutoAttack {aa:.1f}% vs PGD-20 {pgd20:.1f}%"
    assert aa > 10.0, f"the robust teacher should keep some AutoAttack accuracy, got {aa:.1f}%"


def test_custom_attacks_are_seeded_and_log_to_file(
    digits_teacher_path, digits_data, tmp_path, capfd
):
    """version='custom' runs the chosen attacks only; a seed fixes the result; the log goes to
    the file asked for and nothing reaches the terminal."""
    model = load_model(digits_teacher_path)
    log = tmp_path / "aa.log"
    kwargs = {"max_samples": 40, "version": "custom", "attacks": ["apgd-ce"], "seed": 3}
    first = autoattack_accuracy(model, digits_data.test, EPS, log_path=log, **kwargs)
    second = autoattack_accuracy(model, digits_data.test, EPS, **kwargs)
    assert first == second
    text = log.read_text()
    assert "apgd-ce" in text and "apgd-t" not in text and "square" not in text
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    _, pgd20 = _pgd_and_natural(model, digits_data.test, 40)
    assert first <= pgd20 + TOLERANCE


def test_undefended_model_falls_to_zero_through_evaluate_model(digits_undefended_path, digits_data):
    # Through the suite's attack names, as `gacd evaluate --attacks autoattack` runs it.
    model = load_model(digits_undefended_path)
    result = evaluate_model(
        model, digits_data.test, ["natural", "autoattack"], eps=EPS, step_size=STEP, max_samples=100
    )
    assert result["accuracy"]["natural"] > 80.0
    assert result["accuracy"]["autoattack"] <= 3.0
    assert "AutoAttack" in result["attacks"]["autoattack"]


class _NoisyLinear(torch.nn.Module):
    """A randomised 'defence': fresh noise on the logits at every call."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)) + torch.randn(len(x), 10)


def test_autoattack_checks_surface_as_warnings(digits_data):
    with pytest.warns(aa_module.AutoAttackCheckWarning, match="randomized"):
        autoattack_accuracy(
            _NoisyLinear(),
            digits_data.test,
            EPS,
            max_samples=8,
            version="custom",
            attacks=["apgd-ce"],
        )


def test_masking_warning_fires_only_for_a_large_gap():
    warned = masking_warnings({"natural": 95.0, "pgd20": 60.0, "cw30": 52.0, "autoattack": 40.0})
    assert len(warned) == 2
    assert "pgd20" in warned[0] and "gradient masking" in warned[0]
    assert "cw30" in warned[1]
    close = {"natural": 95.0, "pgd20": 60.0, "autoattack": 60.0 - MASKING_GAP + 0.5}
    assert masking_warnings(close) == []
    assert masking_warnings({"natural": 95.0, "pgd20": 10.0}) == []  # no AutoAttack run
    # AutoAttack above PGD (a luckier PGD start) is not masking either.
    assert masking_warnings({"pgd20": 40.0, "autoattack": 41.0}) == []


@pytest.fixture
def no_pyautoattack(monkeypatch):
    # A None entry in sys.modules makes `import pyautoattack` raise ImportError.
    monkeypatch.setitem(sys.modules, "pyautoattack", None)


def test_missing_package_is_a_clear_config_error(no_pyautoattack, digits_data):
    model = build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=[0.5], std=[0.5])
    with pytest.raises(AutoAttackUnavailable, match="pip install pyautoattack") as info:
        autoattack_accuracy(model, digits_data.test, EPS, max_samples=10)
    assert isinstance(info.value, ConfigError)
    assert str(info.value) == MISSING_MESSAGE
    assert not autoattack_available()


def test_cli_without_package_exits_2_with_the_message(
    no_pyautoattack, digits_undefended_path, capsys
):
    code = main(
        [
            "evaluate",
            str(digits_undefended_path),
            "--attacks",
            "autoattack",
            "--max-samples",
            "10",
            "--device",
            "cpu",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert MISSING_MESSAGE in err and "Traceback" not in err


class _FakeAttack:
    """Stands in for pyautoattack.AutoAttack; returns points `push` outside the ball."""

    push = 0.0

    def __init__(self, model, **kwargs):
        self.apgd_targeted = type("A", (), {})()
        self.fab = type("F", (), {})()
        self.eps = kwargs["eps"]

    def run_standard_evaluation(self, x, y, *, batch_size):
        return (x + self.eps + self.push).clamp(0, 1 + self.push), y


def test_points_outside_the_ball_are_an_error(monkeypatch, digits_data):
    monkeypatch.setattr(aa_module, "require_autoattack", lambda: _FakeAttack)
    model = build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=[0.5], std=[0.5])
    _FakeAttack.push = 0.0
    assert 0.0 <= autoattack_accuracy(model, digits_data.test, EPS, max_samples=20) <= 100.0
    _FakeAttack.push = 0.01
    with pytest.raises(AutoAttackError, match="outside the L-inf ball"):
        autoattack_accuracy(model, digits_data.test, EPS, max_samples=20)


def test_bad_settings_are_config_errors(monkeypatch, digits_data):
    monkeypatch.setattr(aa_module, "require_autoattack", lambda: _FakeAttack)
    model = build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=[0.5], std=[0.5])
    split = digits_data.test
    with pytest.raises(ConfigError, match="version"):
        autoattack_accuracy(model, split, EPS, version="fast")
    with pytest.raises(ConfigError, match="custom"):
        autoattack_accuracy(model, split, EPS, attacks=["apgd-ce"])
    with pytest.raises(ConfigError, match="choose from"):
        autoattack_accuracy(model, split, EPS, version="custom", attacks=["pgd"])
    with pytest.raises(ConfigError, match="eps"):
        autoattack_accuracy(model, split, 0.0)
    three = build_model("digits_cnn_small", in_channels=1, num_classes=3, mean=[0.5], std=[0.5])
    with pytest.raises(ConfigError, match="at least 4 classes"):
        autoattack_accuracy(three, split, EPS, max_samples=10)

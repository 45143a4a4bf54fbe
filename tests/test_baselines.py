"""Tests for the distillation baselines: KD, ARD (and its reweighted ablation), RSLAD, IAD-I,
AdaAD.

Formula checks stub the training attack with a fixed x' != x, so each test also checks
which model sees which input, and recompute the loss independently in float64 from the
models' logits with an explicit softmax.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor

from conftest import natural_teacher, tiny_digits_model
from gacd.attacks import AttackSpec
from gacd.config import load_run_config
from gacd.data import Batch, DeviceSplit
from gacd.errors import ConfigError
from gacd.methods import (
    Method,
    MethodContext,
    build_method,
    method_class,
    method_names,
    method_options,
)
from gacd.models import ImageClassifier

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "digits"
ATTACK = AttackSpec(eps=0.2, step_size=0.05, steps=3)

# (method name, options) for every baseline; IAD twice, before and after its warm-up.
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "kd": ("kd", {}),
    "ard": ("ard", {}),
    "ard_ce": ("ard", {"alpha": 0.5}),
    "ard_reweighted": ("ard", {"reweight": True}),
    "rslad": ("rslad", {}),
    "iad_warmup": ("iad", {"warmup_epochs": 1}),
    "iad": ("iad", {"warmup_epochs": 0}),
    "adaad": ("adaad", {}),
}


@pytest.fixture(scope="module")
def batch(digits_train_split: DeviceSplit) -> Batch:
    return digits_train_split.batch_at(torch.arange(64))


@pytest.fixture(scope="module")
def trained_teacher(digits_train_split: DeviceSplit) -> ImageClassifier:
    return natural_teacher(digits_train_split, epochs=4)


def _method(
    name: str,
    teacher: ImageClassifier | None,
    train_split: DeviceSplit,
    attack: AttackSpec = ATTACK,
    student: ImageClassifier | None = None,
    **options: Any,
) -> Method:
    ctx = MethodContext(
        student=student if student is not None else tiny_digits_model(seed=2),
        teacher=copy.deepcopy(teacher) if teacher is not None else None,
        attack=attack,
        attack_train_mode=False,
        num_classes=10,
        train_labels=train_split.labels,
        generator=torch.Generator().manual_seed(0),
    )
    return build_method(method_options({"name": name, **options}), ctx)


def _stub_attack(method: Method, x_adv: Tensor) -> dict[str, Any]:
    """Replace the training attack by a fixed x'; keep the objective it was asked for."""
    seen: dict[str, Any] = {}

    def adversary(make_objective: Callable, x: Tensor, models: list) -> Tensor:
        seen["objective"] = make_objective()
        seen["models"] = models
        return x_adv

    object.__setattr__(method, "adversary", adversary)
    return seen


def _fixed_adversarial(x: Tensor) -> Tensor:
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) * 2 - 1
    return (x + 0.2 * noise).clamp(0, 1)


# ------------------------------------------------------------ float64 reference maths


def _log_softmax64(logits: Tensor, temperature: float = 1.0) -> Tensor:
    z = logits.double() / temperature
    z = z - z.max(dim=1, keepdim=True).values
    return z - z.exp().sum(dim=1, keepdim=True).log()


def _kl64(target: Tensor, logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Per-sample KL(softmax(target / T) || softmax(logits / T)), float64."""
    log_p = _log_softmax64(target, temperature)
    log_q = _log_softmax64(logits, temperature)
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _ce64(logits: Tensor, labels: Tensor) -> Tensor:
    return -_log_softmax64(logits).gather(1, labels[:, None]).squeeze(1)


def _true_prob64(logits: Tensor, labels: Tensor) -> Tensor:
    return _log_softmax64(logits).exp().gather(1, labels[:, None]).squeeze(1)


def _logits(model: ImageClassifier, *xs: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return [model(x) for x in xs]


# ------------------------------------------------------------------------- training


@pytest.mark.parametrize("name", method_names())
def test_every_method_s_terms_add_up_to_its_loss(name, trained_teacher, digits_train_split, batch):
    """The step contract (Method.step): the weighted terms sum to the loss, terms and
    diagnostics are detached scalars, and the loss is the one gradient flows through."""
    gacd = {"negatives": 64, "ot_iterations": 3, "bank_init": "random"}  # no split in ctx
    options = gacd if name == "gacd" else {}
    method = _method(name, trained_teacher, digits_train_split, **options).train()
    method.start_epoch(9, 10)  # past any warm-up: every term a method has is on
    loss, terms, diagnostics = method.step(batch)
    assert terms and loss.requires_grad and loss.dim() == 0
    assert sum(float(v) for v in terms.values()) == pytest.approx(loss.item(), rel=1e-6)
    for value in [*terms.values(), *diagnostics.values()]:
        assert value.dim() == 0 and not value.requires_grad


@pytest.mark.parametrize("case", list(CASES))
def test_loss_decreases_on_a_fixed_batch(case, trained_teacher, digits_train_split, batch):
    name, options = CASES[case]
    method = _method(name, trained_teacher, digits_train_split, **options).train()
    method.start_epoch(1, 10)
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss, terms, diagnostics = method.step(batch)
        assert loss.dim() == 0 and torch.isfinite(loss)
        logged = [*terms.values(), *diagnostics.values()]
        assert all(v.dim() == 0 and not v.requires_grad for v in logged)
        # The weighted terms add up to the loss: logging explains it.
        assert sum(float(v) for v in terms.values()) == pytest.approx(loss.item(), rel=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < losses[0], losses


@pytest.mark.parametrize("case", list(CASES))
def test_teacher_untouched_by_a_step(case, trained_teacher, digits_train_split, batch):
    name, options = CASES[case]
    method = _method(name, trained_teacher, digits_train_split, **options).train()
    method.start_epoch(1, 10)
    teacher = method.teacher
    before = copy.deepcopy(teacher.state_dict())
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.05)
    loss, _, _ = method.step(batch)
    loss.backward()
    opt.step()
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert not any(p is q for p in teacher.parameters() for q in method.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key  # weights and BN running stats
    assert any(p.grad is not None for p in method.student.parameters())


@pytest.mark.parametrize("name", ["kd", "ard", "rslad", "iad"])
def test_needs_a_teacher(name, digits_train_split):
    with pytest.raises(ConfigError, match="teacher"):
        _method(name, None, digits_train_split)


# ------------------------------------------------------------------- formula checks


def test_kd_formula(trained_teacher, digits_train_split, batch):
    alpha, temperature = 0.7, 3.0
    method = _method(
        "kd", trained_teacher, digits_train_split, alpha=alpha, temperature=temperature
    )
    method.eval()  # BN in eval mode: the reference logits below are the same function

    def no_attack(*args: Any) -> Tensor:
        raise AssertionError("KD must not attack")

    object.__setattr__(method, "adversary", no_attack)
    loss, _, diagnostics = method.step(batch)
    x, y = batch.images, batch.labels
    (t,) = _logits(method.teacher, x)
    (s,) = _logits(method.student, x)
    kl = _kl64(t, s, temperature).mean()
    expected = alpha * temperature**2 * kl + (1 - alpha) * _ce64(s, y).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert diagnostics["kl"].item() == pytest.approx(kl.item(), rel=1e-5)


def test_kd_defaults_and_selection():
    options = method_options({"name": "kd"})
    cls = method_class(options.name)
    assert (options.alpha, options.temperature) == (0.9, 4.0)
    assert cls.selection == "val_nat"


@pytest.mark.parametrize("reduction", ["mean", "batchmean"])
@pytest.mark.parametrize("reweight", [False, True])
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_ard_formula(alpha, reweight, reduction, trained_teacher, digits_train_split, batch):
    temperature = 30.0
    method = _method(
        "ard",
        trained_teacher,
        digits_train_split,
        alpha=alpha,
        temperature=temperature,
        reweight=reweight,
        kl_reduction=reduction,
    ).eval()
    x, y = batch.images, batch.labels
    x_adv = _fixed_adversarial(x)
    seen = _stub_attack(method, x_adv)
    loss, _, diagnostics = method.step(batch)

    t, t_adv = _logits(method.teacher, x, x_adv)
    s, s_adv = _logits(method.student, x, x_adv)
    kl = _kl64(t, s_adv, temperature)  # teacher on x, student on x'
    if reweight:
        weight = _true_prob64(t_adv, y)  # the teacher's confidence on x'
        kl_term = (weight * kl).mean()
        assert diagnostics["weight"].item() == pytest.approx(weight.mean().item(), rel=1e-5)
    else:
        kl_term = kl.mean()
    if reduction == "mean":  # the authors' nn.KLDivLoss(): over batch x classes
        kl_term = kl_term / 10
    expected = alpha * temperature**2 * kl_term + (1 - alpha) * _ce64(s, y).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert diagnostics["kl_adv"].item() == pytest.approx(kl_term.item(), rel=1e-5)
    # The attack maximises the student's CE with the true label.
    with torch.no_grad():
        objective = seen["objective"](x)
    torch.testing.assert_close(objective.double(), _ce64(s, y), rtol=1e-5, atol=1e-6)
    assert seen["models"] == [method.student]


def test_ard_reweighted_with_no_attack_equals_hand_weighted_mean(
    trained_teacher, digits_train_split, batch
):
    """steps=0: x' = x, so the weights are the teacher's true-class probabilities on x."""
    method = _method(
        "ard",
        trained_teacher,
        digits_train_split,
        attack=AttackSpec(0.2, 0.05, steps=0),
        reweight=True,
    ).eval()
    loss, _, _ = method.step(batch)
    x, y = batch.images, batch.labels
    (t,) = _logits(method.teacher, x)
    (s,) = _logits(method.student, x)
    # Default reduction 'mean' (the authors'): over batch x classes, C = 10.
    expected = 30.0**2 * (_true_prob64(t, y) * _kl64(t, s, 30.0)).mean() / 10
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_ard_defaults():
    options = method_options({"name": "ard"})
    assert (options.alpha, options.temperature, options.reweight) == (1.0, 30.0, False)
    assert options.kl_reduction == "mean"


@pytest.mark.parametrize("reduction", [None, "batchmean"])
@pytest.mark.parametrize("weights", [None, (0.3, 0.7)])
def test_rslad_formula(weights, reduction, trained_teacher, digits_train_split, batch):
    opts: dict[str, Any] = (
        {} if weights is None else {"adv_weight": weights[0], "nat_weight": weights[1]}
    )
    if reduction is not None:
        opts["kl_reduction"] = reduction
    adv_w, nat_w = weights or (5 / 6, 1 / 6)
    method = _method("rslad", trained_teacher, digits_train_split, **opts).eval()
    x = batch.images
    x_adv = _fixed_adversarial(x)
    seen = _stub_attack(method, x_adv)
    loss, _, diagnostics = method.step(batch)

    (t,) = _logits(method.teacher, x)
    s, s_adv = _logits(method.student, x, x_adv)
    kl_adv, kl_nat = _kl64(t, s_adv).mean(), _kl64(t, s).mean()
    if reduction is None:  # default 'mean', the authors' torch.mean over batch x classes
        kl_adv, kl_nat = kl_adv / 10, kl_nat / 10
    assert loss.item() == pytest.approx((adv_w * kl_adv + nat_w * kl_nat).item(), rel=1e-5)
    assert diagnostics["kl_adv"].item() == pytest.approx(kl_adv.item(), rel=1e-5)
    assert diagnostics["kl_nat"].item() == pytest.approx(kl_nat.item(), rel=1e-5)
    # The attack maximises KL(t(x) || s(x')), not a label loss.
    with torch.no_grad():
        objective = seen["objective"](x_adv)
    torch.testing.assert_close(objective.double(), _kl64(t, s_adv), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("alpha", "temperature", "beta"), [(1.0, 1.0, 0.1), (0.6, 2.0, 0.5)])
def test_iad_formula_after_warmup(
    alpha, temperature, beta, trained_teacher, digits_train_split, batch
):
    # A trained (non-robust) student, so that s(x) and s(x') differ and the self term counts.
    method = _method(
        "iad",
        trained_teacher,
        digits_train_split,
        student=copy.deepcopy(trained_teacher),
        alpha=alpha,
        temperature=temperature,
        beta=beta,
        warmup_epochs=2,
    ).eval()
    method.start_epoch(2, 10)
    assert not method.in_warmup
    x, y = batch.images, batch.labels
    x_adv = _fixed_adversarial(x)
    seen = _stub_attack(method, x_adv)
    loss, _, diagnostics = method.step(batch)

    t, t_adv = _logits(method.teacher, x, x_adv)
    s, s_adv = _logits(method.student, x, x_adv)
    trust = _true_prob64(t_adv, y) ** beta  # a_i: teacher's confidence on x', to the beta
    distill = temperature**2 * _kl64(t, s_adv, temperature).mean()  # not weighted by a_i
    introspection = ((1 - trust) * _kl64(s, s_adv)).mean()  # at T = 1
    expected = alpha * (distill + introspection) + (1 - alpha) * _ce64(s, y).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert diagnostics["trust"].item() == pytest.approx(trust.mean().item(), rel=1e-5)
    assert diagnostics["introspection"].item() == pytest.approx(introspection.item(), rel=1e-5)
    assert introspection.item() > 1e-3 * expected.item()  # the check above is not vacuous
    with torch.no_grad():
        objective = seen["objective"](x)
    torch.testing.assert_close(objective.double(), _ce64(s, y), rtol=1e-5, atol=1e-6)


def test_iad_warmup_is_ard_with_its_own_temperature(trained_teacher, digits_train_split, batch):
    method = _method(
        "iad", trained_teacher, digits_train_split, alpha=0.8, temperature=2.0, warmup_epochs=3
    ).eval()
    method.start_epoch(2, 10)
    assert method.in_warmup
    x, y = batch.images, batch.labels
    x_adv = _fixed_adversarial(x)
    _stub_attack(method, x_adv)
    loss, _, diagnostics = method.step(batch)
    (t,) = _logits(method.teacher, x)
    s, s_adv = _logits(method.student, x, x_adv)
    expected = 0.8 * 4.0 * _kl64(t, s_adv, 2.0).mean() + 0.2 * _ce64(s, y).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert "introspection" not in diagnostics


def test_iad_warmup_schedule(trained_teacher, digits_train_split):
    method = _method("iad", trained_teacher, digits_train_split)  # default: 30% of the epochs
    assert method.in_warmup
    phases = []
    for epoch in range(10):
        method.start_epoch(epoch, 10)
        phases.append(method.in_warmup)
    assert phases == [True] * 3 + [False] * 7
    method = _method("iad", trained_teacher, digits_train_split, warmup_epochs=0)
    assert not method.in_warmup
    method.start_epoch(0, 10)
    assert not method.in_warmup
    options = method_options({"name": "iad"})
    assert (options.alpha, options.temperature, options.beta) == (1.0, 1.0, 0.1)


def test_iad_detach_natural_changes_gradient_not_value(trained_teacher, digits_train_split, batch):
    x_adv = _fixed_adversarial(batch.images)
    results = []
    for detach in (False, True):
        method = _method(
            "iad",
            trained_teacher,
            digits_train_split,
            student=copy.deepcopy(trained_teacher),
            warmup_epochs=0,
            detach_natural=detach,
        ).eval()
        _stub_attack(method, x_adv)
        loss, _, _ = method.step(batch)
        (grad,) = torch.autograd.grad(loss, [method.student.classifier.weight])
        results.append((loss.item(), grad))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-6)
    assert not torch.allclose(results[0][1], results[1][1])


# ---------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    ("config", "name"),
    [
        ("kd", "kd"),
        ("ard", "ard"),
        ("ard_reweighted", "ard"),
        ("rslad", "rslad"),
        ("iad", "iad"),
        ("adaad", "adaad"),
    ],
)
def test_configs_parse(config, name):
    run = load_run_config(CONFIGS / f"{config}.yaml")
    options = run.method
    cls = method_class(options.name)
    assert cls.name == name and cls.needs_teacher
    assert run.data.name == "digits" and run.model.arch == "digits_cnn_small"
    assert run.teacher
    if config == "ard_reweighted":
        assert options.reweight


@pytest.mark.parametrize(
    "section",
    [
        {"name": "kd", "alpha": 1.5},
        {"name": "ard", "temperature": 0.0},
        {"name": "rslad", "adv_weight": -1.0},
        {"name": "iad", "beta": -0.1},
        {"name": "iad", "warmup_fraction": 2.0},
        {"name": "ard", "reweight": "yes"},
        {"name": "ard", "kl_reduction": "sum"},
        {"name": "adaad", "alpha": 1.5},
    ],
)
def test_bad_options_are_config_errors(section):
    with pytest.raises(ConfigError):
        method_options(section)

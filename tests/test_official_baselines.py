"""Each baseline against a transcription of its authors' code, on fixed tensors.

For every method the test below re-writes, in plain PyTorch, what the official training
step does (attack and loss, from the same random numbers) and compares it with one `step`
of ours built from the method's default config: the loss value, the gradient of every
student parameter, the adversarial input where it is observable, and - where the official
code's sequence of forward passes is the same as ours - the BatchNorm running statistics.

Official files transcribed (read, not copied):
  KD      HobbitLong/RepDistiller distiller_zoo/KD.py (+ README's -r 0.1 -a 0.9)
  ARD     goldblum/AdversariallyRobustDistillation main.py
  RSLAD   zibojia/RSLAD rslad_loss.py, resnet18_rslad_cifar10.py
  IAD     ZFancy/IAD IAD-I.py
  TRADES  yaodongyu/TRADES trades.py
  PGD-AT  MadryLab/robustness robustness/attacker.py, attack_steps.py, defaults.py
  AdaAD   boyellow/AdaAD AT_helper.py, main.py
"""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from conftest import natural_teacher, tiny_digits_model
from gacd.attacks import AttackSpec, attack_mode, pgd
from gacd.attacks.pgd import NORMAL_START_SCALE
from gacd.config import ATTACK_FALLBACKS, AttackConfig, load_run_config
from gacd.data import Batch, DeviceSplit
from gacd.errors import ConfigError
from gacd.methods import Method, MethodContext, build_method, method_options
from gacd.models import ImageClassifier
from gacd.training import resolved_attack, training_attack

EPS, STEP = 0.2, 0.05
SEED = 123


@pytest.fixture(scope="module")
def batch(digits_train_split: DeviceSplit) -> Batch:
    return digits_train_split.batch_at(torch.arange(48))


@pytest.fixture(scope="module")
def teacher(digits_train_split: DeviceSplit) -> ImageClassifier:
    return natural_teacher(digits_train_split, epochs=2)


def _ours(
    name: str,
    teacher: ImageClassifier | None,
    split: DeviceSplit,
    student: ImageClassifier,
    overrides: tuple[str, ...] = (),
    **options: Any,
) -> Method:
    """The method as `gacd train` builds it from its default config (attack included)."""
    config = load_run_config(
        None,
        [f"method.name={name}", f"attack.eps={EPS}", f"attack.step_size={STEP}", *overrides],
    )
    resolved = resolved_attack(config)
    ctx = MethodContext(
        student=student,
        teacher=copy.deepcopy(teacher) if teacher is not None else None,
        attack=training_attack(config, SimpleNamespace(eps=EPS, step_size=STEP)),  # type: ignore[arg-type]
        attack_train_mode=bool(resolved.train_mode),
        attack_bn_update=bool(resolved.bn_update),
        num_classes=10,
        train_labels=split.labels,
        generator=torch.Generator().manual_seed(SEED),
    )
    return build_method(method_options({"name": name, **options}), ctx)


def _step(method: Method, batch: Batch) -> tuple[Tensor, list[Tensor]]:
    method.student.train()
    loss, _, _ = method.step(batch)
    grads = torch.autograd.grad(loss, list(method.student.parameters()))
    return loss.detach(), [g.detach() for g in grads]


def _official_grads(loss: Tensor, model: nn.Module) -> list[Tensor]:
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _bn_buffers(model: nn.Module) -> list[Tensor]:
    return [
        b.detach().clone()
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d)
        for b in (m.running_mean, m.running_var)
    ]


def _assert_same(
    ours: tuple[Tensor, list[Tensor]], theirs: tuple[Tensor, list[Tensor]], atol: float = 1e-6
) -> None:
    loss, grads = ours
    ref_loss, ref_grads = theirs
    torch.testing.assert_close(loss, ref_loss.float(), rtol=1e-5, atol=atol)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------- official transcriptions
# Each `_official_*` takes the student (a copy, in train mode as their loops leave it), the
# teacher in eval mode, the batch and a generator seeded as ours; random draws are those of
# their code (uniform_, randn) taken from that generator.


def _ard_attack(
    net: nn.Module, x: Tensor, y: Tensor, g: torch.Generator, steps: int = 10
) -> Tensor:
    """AttackPGD.forward of ARD's (and IAD's) main script: train mode (whatever mode the
    caller left), unclamped uniform start, CE summed, sign step, project, clamp."""
    adv = x.detach() + torch.zeros_like(x).uniform_(-EPS, EPS, generator=g)
    for _ in range(steps):
        adv.requires_grad_()
        with torch.enable_grad():
            loss = F.cross_entropy(net(adv), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [adv])
        adv = adv.detach() + STEP * torch.sign(grad.detach())
        adv = torch.min(torch.max(adv, x - EPS), x + EPS)
        adv = torch.clamp(adv, 0.0, 1.0)
    return adv


def _official_ard(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    g: torch.Generator,
    alpha: float = 1.0,
    temp: float = 30.0,
) -> Tensor:
    student.train()  # net.train() in their train loop; the attack runs in it
    for p in student.parameters():
        p.requires_grad_(False)
    adv = _ard_attack(student, x, y, g)
    for p in student.parameters():
        p.requires_grad_(True)
    outputs = student(adv)
    teacher_outputs = teacher(x)
    basic_outputs = student(x)
    kl = nn.KLDivLoss(reduction="mean")  # nn.KLDivLoss() of their PyTorch: batch x classes
    return alpha * temp * temp * kl(
        F.log_softmax(outputs / temp, dim=1), F.softmax(teacher_outputs / temp, dim=1)
    ) + (1.0 - alpha) * F.cross_entropy(basic_outputs, y)


def _official_rslad(
    student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor, g: torch.Generator
) -> Tensor:
    with torch.no_grad():
        teacher_logits = teacher(x)
    student.eval()  # rslad_inner_loss: model.eval()
    adv = x.detach() + 0.001 * torch.randn(x.shape, generator=g)
    for _ in range(10):
        adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = nn.KLDivLoss(reduction="none")(
                F.log_softmax(student(adv), dim=1), F.softmax(teacher_logits, dim=1)
            ).sum()
        (grad,) = torch.autograd.grad(loss_kl, [adv])
        adv = adv.detach() + STEP * torch.sign(grad.detach())
        adv = torch.min(torch.max(adv, x - EPS), x + EPS)
        adv = torch.clamp(adv, 0.0, 1.0)
    student.train()
    adv_logits = student(torch.clamp(adv, 0.0, 1.0))
    nat_logits = student(x)

    def kl_loss(a: Tensor, b: Tensor) -> Tensor:  # their element-wise KL, log(b + 1e-5)
        return -a * b + torch.log(b + 1e-5) * b

    soft = F.softmax(teacher_logits.detach(), dim=1)
    kl1 = torch.mean(kl_loss(F.log_softmax(adv_logits, dim=1), soft))
    kl2 = torch.mean(kl_loss(F.log_softmax(nat_logits, dim=1), soft))
    return 5 / 6.0 * kl1 + 1 / 6.0 * kl2


def _official_iad(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    y: Tensor,
    g: torch.Generator,
    after_begin: bool,
    temp: float = 1.0,
    alpha: float = 1.0,
    beta: float = 0.1,
) -> Tensor:
    student.train()
    teacher_outputs = teacher(x)
    for p in student.parameters():
        p.requires_grad_(False)
    pert = _ard_attack(student, x, y, g)
    for p in student.parameters():
        p.requires_grad_(True)
    outputs = student(pert)
    basic_outputs = student(x)
    weights = torch.ones(len(x))
    guide = teacher(pert)
    kl = nn.KLDivLoss(reduction="none")
    n = len(outputs)
    loss = alpha * temp * temp * (1 / n) * torch.sum(
        kl(F.log_softmax(outputs / temp, dim=1), F.softmax(teacher_outputs / temp, dim=1)).sum(1)
    ) + (1.0 - alpha) * F.cross_entropy(basic_outputs, y)
    if after_begin:
        for i in range(n):
            weights[i] = F.softmax(guide, dim=1)[i][y[i].item()].pow(beta).item()
        loss = loss + alpha * (1 / n) * torch.sum(
            kl(F.log_softmax(outputs, dim=1), F.softmax(student(x), dim=1)).sum(1).mul(1 - weights)
        )
    return loss


def _official_trades(
    student: nn.Module, x: Tensor, y: Tensor, g: torch.Generator, beta: float = 6.0
) -> Tensor:
    kl = nn.KLDivLoss(reduction="sum")  # size_average=False
    student.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    adv = x.detach() + 0.001 * torch.randn(x.shape, generator=g)
    for _ in range(10):
        adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = kl(F.log_softmax(student(adv), dim=1), F.softmax(student(x), dim=1))
        (grad,) = torch.autograd.grad(loss_kl, [adv])
        adv = adv.detach() + STEP * torch.sign(grad.detach())
        adv = torch.min(torch.max(adv, x - EPS), x + EPS)
        adv = torch.clamp(adv, 0.0, 1.0)
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    adv = torch.clamp(adv, 0.0, 1.0)
    logits = student(x)
    loss_natural = F.cross_entropy(logits, y)
    loss_robust = (1.0 / len(x)) * kl(
        F.log_softmax(student(adv), dim=1), F.softmax(student(x), dim=1)
    )
    return loss_natural + beta * loss_robust


def _robustness_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    steps: int,
    random_start: bool,
    g: torch.Generator,
    use_best: bool = True,
) -> Tensor:
    """robustness.attacker.Attacker.forward, L-inf step, untargeted, one restart."""
    criterion = nn.CrossEntropyLoss(reduction="none")
    orig = x.detach()

    def project(z: Tensor) -> Tensor:
        return torch.clamp(torch.clamp(z - orig, -EPS, EPS) + orig, 0, 1)

    if random_start:
        z = torch.clamp(x + 2 * (torch.rand(x.shape, generator=g) - 0.5) * EPS, 0, 1)
    else:
        z = x
    best_loss: Tensor | None = None
    best_x: Tensor | None = None

    def replace_best(loss: Tensor, z: Tensor) -> None:
        nonlocal best_loss, best_x
        if best_loss is None:
            best_x, best_loss = z.clone().detach(), loss.clone().detach()
        else:
            assert best_x is not None
            replace = best_loss < loss
            best_x[replace] = z[replace].clone().detach()
            best_loss[replace] = loss[replace]

    for _ in range(steps):
        z = z.clone().detach().requires_grad_(True)
        losses = criterion(model(z), y)
        (grad,) = torch.autograd.grad(torch.mean(losses), [z])
        with torch.no_grad():
            if use_best:
                replace_best(losses, z)
            z = project(z + torch.sign(grad) * STEP)
    if not use_best:
        return z.clone().detach()
    with torch.no_grad():
        replace_best(criterion(model(z), y), z)
    assert best_x is not None
    return best_x


def _official_pgd_at(student: nn.Module, x: Tensor, y: Tensor, g: torch.Generator) -> Tensor:
    student.eval()  # AttackerModel.forward: self.eval() around the attack
    for p in student.parameters():
        p.requires_grad_(False)
    adv = _robustness_pgd(student, x, y, steps=7, random_start=False, g=g)
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    return F.cross_entropy(student(adv), y)


def _official_adaad(
    student: nn.Module,
    teacher: nn.Module,
    x: Tensor,
    g: torch.Generator,
    alpha: float = 1.0,
    cifar100: bool = False,
) -> Tensor:
    student.eval()  # BN_eval
    teacher.eval()
    for p in student.parameters():
        p.requires_grad_(False)
    adv = x.detach() + 0.001 * torch.randn(x.shape, generator=g)
    for _ in range(10):
        adv.requires_grad_()
        with torch.enable_grad():
            loss_kl = nn.KLDivLoss(reduction="none")(
                F.log_softmax(student(adv), dim=1), F.softmax(teacher(adv), dim=1)
            ).sum()
        (grad,) = torch.autograd.grad(loss_kl, [adv])
        adv = adv.detach() + STEP * torch.sign(grad.detach())
        adv = torch.min(torch.max(adv, x - EPS), x + EPS)
        adv = torch.clamp(adv, 0.0, 1.0)
    for p in student.parameters():
        p.requires_grad_(True)
    student.train()
    adv = torch.clamp(adv, 0.0, 1.0)
    ori_outputs = student(x)
    adv_outputs = student(adv)
    with torch.no_grad():
        t_ori, t_adv = teacher(x), teacher(adv)
    if cifar100:

        def kl(a: Tensor, b: Tensor) -> Tensor:
            return (1 / len(a)) * torch.sum(nn.KLDivLoss(reduction="none")(a, b))
    else:
        kl = nn.KLDivLoss(reduction="mean")
    kl1 = kl(F.log_softmax(adv_outputs, dim=1), F.softmax(t_adv, dim=1))
    kl2 = kl(F.log_softmax(ori_outputs, dim=1), F.softmax(t_ori, dim=1))
    return alpha * kl1 + (1 - alpha) * kl2


def _official_kd(student: nn.Module, teacher: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    T = 4.0
    with torch.no_grad():
        y_t = teacher(x)
    y_s = student(x)
    p_s = F.log_softmax(y_s / T, dim=1)
    p_t = F.softmax(y_t / T, dim=1)
    loss_div = F.kl_div(p_s, p_t, reduction="sum") * (T**2) / y_s.shape[0]
    return 0.1 * F.cross_entropy(y_s, y) + 0.9 * loss_div  # -r 0.1 -a 0.9


# ------------------------------------------------------------------- the comparisons


def _pair(seed: int = 2) -> tuple[ImageClassifier, ImageClassifier]:
    ours = tiny_digits_model(seed).train()
    return ours, copy.deepcopy(ours)


def test_kd_matches_repdistiller(teacher, digits_train_split, batch):
    ours, theirs = _pair()
    result = _step(_ours("kd", teacher, digits_train_split, ours), batch)
    loss = _official_kd(theirs.train(), teacher, batch.images, batch.labels)
    _assert_same(result, (loss, _official_grads(loss, theirs)))


@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_ard_matches_its_main_script_including_bn_statistics(
    alpha, teacher, digits_train_split, batch
):
    ours, theirs = _pair()
    method = _ours("ard", teacher, digits_train_split, ours, alpha=alpha)
    result = _step(method, batch)
    g = torch.Generator().manual_seed(SEED)
    loss = _official_ard(theirs, teacher, batch.images, batch.labels, g, alpha=alpha)
    _assert_same(result, (loss, _official_grads(loss, theirs)))
    # Same train-mode passes in the same order: the attack's ten, s(x'), s(x).
    for a, b in zip(_bn_buffers(ours), _bn_buffers(theirs), strict=True):
        torch.testing.assert_close(a, b)


def test_ard_batchmean_option_is_num_classes_times_the_official_kl(
    teacher, digits_train_split, batch
):
    losses = []
    for reduction in ("mean", "batchmean"):
        ours, _ = _pair()
        losses.append(
            _step(_ours("ard", teacher, digits_train_split, ours, kl_reduction=reduction), batch)[0]
        )
    torch.testing.assert_close(losses[1], 10 * losses[0])


def test_rslad_matches_its_code(teacher, digits_train_split, batch):
    ours, theirs = _pair()
    result = _step(_ours("rslad", teacher, digits_train_split, ours), batch)
    g = torch.Generator().manual_seed(SEED)
    loss = _official_rslad(theirs, teacher, batch.images, batch.labels, g)
    # Their log(p + 1e-5) shifts the value by a student-independent constant below 1e-5.
    _assert_same(result, (loss, _official_grads(loss, theirs)), atol=2e-5)
    for a, b in zip(_bn_buffers(ours), _bn_buffers(theirs), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("after_begin", [False, True])
def test_iad_matches_iad_i(after_begin, teacher, digits_train_split, batch):
    ours, theirs = _pair()
    method = _ours("iad", teacher, digits_train_split, ours, warmup_epochs=0 if after_begin else 1)
    result = _step(method, batch)
    g = torch.Generator().manual_seed(SEED)
    loss = _official_iad(theirs, teacher, batch.images, batch.labels, g, after_begin)
    # Not the BatchNorm statistics: their self term runs one more clean pass.
    _assert_same(result, (loss, _official_grads(loss, theirs)))


def test_trades_matches_trades_loss(digits_train_split, batch):
    ours, theirs = _pair()
    result = _step(_ours("trades", None, digits_train_split, ours), batch)
    g = torch.Generator().manual_seed(SEED)
    loss = _official_trades(theirs, batch.images, batch.labels, g)
    _assert_same(result, (loss, _official_grads(loss, theirs)))


def test_pgd_at_matches_the_robustness_library(digits_train_split, batch):
    ours, theirs = _pair()
    result = _step(_ours("pgd_at", None, digits_train_split, ours), batch)
    loss = _official_pgd_at(theirs, batch.images, batch.labels, torch.Generator())
    _assert_same(result, (loss, _official_grads(loss, theirs)))
    for a, b in zip(_bn_buffers(ours), _bn_buffers(theirs), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(("alpha", "reduction"), [(1.0, "mean"), (0.7, "mean"), (0.7, "batchmean")])
def test_adaad_matches_its_code(alpha, reduction, teacher, digits_train_split, batch):
    ours, theirs = _pair()
    method = _ours("adaad", teacher, digits_train_split, ours, alpha=alpha, kl_reduction=reduction)
    result = _step(method, batch)
    g = torch.Generator().manual_seed(SEED)
    loss = _official_adaad(
        theirs, teacher, batch.images, g, alpha=alpha, cifar100=reduction == "batchmean"
    )
    _assert_same(result, (loss, _official_grads(loss, theirs)))
    for a, b in zip(_bn_buffers(ours), _bn_buffers(theirs), strict=True):
        torch.testing.assert_close(a, b)


def test_adaad_leaves_the_teacher_frozen_and_in_eval_mode(teacher, digits_train_split, batch):
    ours, _ = _pair()
    method = _ours("adaad", teacher, digits_train_split, ours)
    before = copy.deepcopy(method.teacher.state_dict())
    _step(method, batch)
    assert not method.teacher.training
    assert not any(p.requires_grad for p in method.teacher.parameters())
    for k, v in method.teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])


# ------------------------------------------------------------- the engine's new pieces


def _first_iterate(spec: AttackSpec, x: Tensor, seed: int) -> Tensor:
    """The point where PGD first evaluates its objective."""
    seen: list[Tensor] = []

    def objective(z: Tensor) -> Tensor:
        if not seen:
            seen.append(z.detach().clone())
        return (z * 0).flatten(1).sum(1)

    pgd(objective, x, spec, generator=torch.Generator().manual_seed(seed))
    return seen[0]


@pytest.mark.parametrize("start", ["uniform", "uniform_unclamped", "normal"])
def test_start_kinds_are_the_official_draws(start, batch):
    x = batch.images
    spec = AttackSpec(eps=EPS, step_size=STEP, steps=1, start=start)
    got = _first_iterate(spec, x, seed=7)
    g = torch.Generator().manual_seed(7)
    if start == "normal":
        want = x + 0.001 * torch.randn(x.shape, generator=g)
    else:
        want = x + torch.zeros_like(x).uniform_(-EPS, EPS, generator=g)
        if start == "uniform":
            want = want.clamp(0, 1)
    torch.testing.assert_close(got, want)
    if start == "uniform":
        assert got.min() >= 0 and got.max() <= 1
    else:  # digits have pixels at 0 and 1: an unclamped start leaves the image range
        assert got.min() < 0 and got.max() > 1
    assert NORMAL_START_SCALE == 0.001


def test_no_random_start_starts_at_x(batch):
    spec = AttackSpec(eps=EPS, step_size=STEP, steps=1, random_start=False, start="normal")
    torch.testing.assert_close(_first_iterate(spec, batch.images, seed=0), batch.images)


@pytest.mark.parametrize("random_start", [False, True])
def test_keep_best_matches_the_robustness_library(random_start, teacher, batch):
    model = copy.deepcopy(teacher).eval().requires_grad_(False)
    x, y = batch.images, batch.labels
    spec = AttackSpec(eps=EPS, step_size=STEP, steps=5, random_start=random_start, keep_best=True)
    ours = pgd(
        lambda z: F.cross_entropy(model(z), y, reduction="none"),
        x,
        spec,
        generator=torch.Generator().manual_seed(3),
    )
    theirs = _robustness_pgd(model, x, y, 5, random_start, torch.Generator().manual_seed(3))
    torch.testing.assert_close(ours, theirs)
    # The best iterate is at least as strong as the last, sample by sample.
    last = pgd(
        lambda z: F.cross_entropy(model(z), y, reduction="none"),
        x,
        AttackSpec(eps=EPS, step_size=STEP, steps=5, random_start=random_start),
        generator=torch.Generator().manual_seed(3),
    )
    with torch.no_grad():
        assert (
            F.cross_entropy(model(ours), y, reduction="none")
            >= F.cross_entropy(model(last), y, reduction="none") - 1e-6
        ).all()


def test_keep_best_needs_per_sample_values(batch):
    spec = AttackSpec(eps=EPS, step_size=STEP, steps=2, keep_best=True)
    with pytest.raises(ValueError, match="one value per sample"):
        pgd(lambda z: z.sum(), batch.images, spec)


@pytest.mark.parametrize("keep", [True, False])
def test_train_mode_attack_updates_bn_statistics_only_when_asked(keep, batch):
    model = tiny_digits_model(seed=4).train()
    before = _bn_buffers(model)
    with attack_mode([model], train=True, keep_bn_stats=keep):
        model(batch.images)
    after = _bn_buffers(model)
    same = all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert same is keep


# ------------------------------------------------------------------------ config defaults


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        (
            "ard",
            dict(
                steps=10,
                random_start=True,
                start="uniform_unclamped",
                train_mode=True,
                bn_update=True,
            ),
        ),
        (
            "iad",
            dict(
                steps=10,
                random_start=True,
                start="uniform_unclamped",
                train_mode=True,
                bn_update=True,
            ),
        ),
        ("rslad", dict(steps=10, random_start=True, start="normal", train_mode=False)),
        ("trades", dict(steps=10, random_start=True, start="normal", train_mode=False)),
        ("adaad", dict(steps=10, random_start=True, start="normal", train_mode=False)),
        ("pgd_at", dict(steps=7, random_start=False, keep_best=True, train_mode=False)),
        ("gacd", ATTACK_FALLBACKS),
    ],
)
def test_null_attack_settings_take_the_official_defaults(method, expected):
    resolved = resolved_attack(load_run_config(None, [f"method.name={method}"]))
    for key, value in expected.items():
        assert getattr(resolved, key) == value, key


def test_explicit_attack_settings_win_over_method_defaults():
    config = load_run_config(
        None,
        ["method.name=ard", "attack.train_mode=false", "attack.start=uniform", "attack.steps=3"],
    )
    resolved = resolved_attack(config)
    assert (resolved.train_mode, resolved.bn_update, resolved.start, resolved.steps) == (
        False,
        False,
        "uniform",
        3,
    )


def test_bn_update_without_train_mode_is_a_config_error():
    with pytest.raises(ConfigError, match=r"attack\.bn_update"):
        AttackConfig(bn_update=True, train_mode=False)
    with pytest.raises(ConfigError, match=r"attack\.bn_update"):
        AttackConfig(bn_update=True).resolve({})
    with pytest.raises(ConfigError, match=r"attack\.start"):
        load_run_config(None, ["attack.start=gaussian"])


def test_a_run_records_the_attack_it_ran(digits_teacher_path):
    """config.yaml holds the resolved training attack: the PGD-AT teacher fixture sets
    steps and step size, the rest are the robustness library's defaults."""
    attack = yaml.safe_load((digits_teacher_path.parent / "config.yaml").read_text())["attack"]
    assert attack["steps"] == 5 and attack["step_size"] == 0.06
    assert (attack["random_start"], attack["keep_best"], attack["train_mode"]) == (
        False,
        True,
        False,
    )
    assert attack["start"] == "uniform" and attack["bn_update"] is False

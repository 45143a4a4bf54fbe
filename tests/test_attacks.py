"""The PGD engine, FGSM, attack_mode and the attack objectives, checked against independent
computations (hand-computed gradients, brute-force optimal transport, a trained model)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gacd.attacks import (
    AttackSpec,
    attack_mode,
    cross_entropy,
    cw_margin,
    fgsm_spec,
    kl_to_reference,
    misclassified,
    pgd,
    sinkhorn_distance,
)
from gacd.attacks.pgd import skip_random_starts
from gacd.data import DeviceSplit, dataset_info
from gacd.engine.export import load_model
from gacd.models import build_model

EPS = dataset_info("digits").defaults.eps
STEP = dataset_info("digits").defaults.step_size


def _fresh_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("digits_cnn_small", in_channels=1, num_classes=10, mean=(0.3,), std=(0.4,))


def _test_batch(digits_data, n: int = 64) -> tuple[Tensor, Tensor]:
    batch = next(digits_data.test.batches(n))
    return batch.images, batch.labels


def _pgd_accuracy(model: nn.Module, split: DeviceSplit, spec: AttackSpec, seed: int = 0) -> float:
    """Accuracy (%) under PGD on cross-entropy, written here without robust_accuracy."""
    generator = torch.Generator().manual_seed(seed)
    correct = 0
    with attack_mode([model]):
        for batch in split.batches(512):
            x_adv = pgd(cross_entropy(model, batch.labels), batch.images, spec, generator=generator)
            with torch.no_grad():
                correct += int((model(x_adv).argmax(1) == batch.labels).sum())
    return 100.0 * correct / len(split)


# -- the budget --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("eps", "step_size", "steps", "random_start", "restarts"),
    [
        (0.05, 0.01, 1, True, 1),
        (0.1, 0.03, 5, True, 1),
        (0.2, 0.05, 10, True, 2),
        (0.3, 0.5, 3, False, 1),  # steps far larger than eps: projection does the work
        (0.2, 0.2, 1, False, 1),  # FGSM
    ],
)
def test_pgd_stays_in_the_eps_ball_and_the_image_range(
    digits_data, eps, step_size, steps, random_start, restarts
):
    model = _fresh_model()
    x, y = _test_batch(digits_data)
    # Digits hold many exact 0 and 1 pixels, where the [0, 1] clamp must bite; add a batch of
    # interior values too.
    x = torch.cat([x, torch.rand(x.shape, generator=torch.Generator().manual_seed(1))])
    y = torch.cat([y, y])
    spec = AttackSpec(eps, step_size, steps, random_start=random_start, restarts=restarts)
    with attack_mode([model]):
        x_adv = pgd(
            cross_entropy(model, y),
            x,
            spec,
            generator=torch.Generator().manual_seed(0),
            per_sample_best=misclassified(model, y) if restarts > 1 else None,
        )
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert not torch.equal(x_adv, x), "the attack moved nothing"


def test_fgsm_is_one_signed_gradient_step_clamped(digits_data):
    model = _fresh_model().eval()
    x, y = _test_batch(digits_data)
    eps = 0.15
    # The gradient, computed here by hand.
    x_var = x.clone().requires_grad_(True)
    loss = F.cross_entropy(model(x_var), y, reduction="none").sum()
    (grad,) = torch.autograd.grad(loss, x_var)
    expected = (x + eps * grad.sign()).clamp(0.0, 1.0)

    with attack_mode([model]):
        x_adv = pgd(cross_entropy(model, y), x, fgsm_spec(eps))
    torch.testing.assert_close(x_adv, expected, rtol=0.0, atol=1e-7)
    spec = fgsm_spec(eps)
    assert (spec.steps, spec.step_size, spec.random_start) == (1, eps, False)


@pytest.mark.parametrize("spec", [AttackSpec(0.2, 0.05, 0), AttackSpec(0.0, 0.05, 10)])
def test_no_budget_returns_the_input_without_calling_the_objective(digits_data, spec):
    x, _ = _test_batch(digits_data)

    def objective(_: Tensor) -> Tensor:
        raise AssertionError("objective called")

    out = pgd(objective, x, spec)
    assert torch.equal(out, x)
    assert out.data_ptr() != x.data_ptr(), "must return a copy, not the caller's tensor"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eps": -0.1, "step_size": 0.1, "steps": 1},
        {"eps": 0.1, "step_size": -0.1, "steps": 1},
        {"eps": 0.1, "step_size": 0.1, "steps": -1},
        {"eps": 0.1, "step_size": 0.1, "steps": 1, "restarts": 0},
    ],
)
def test_invalid_budgets_are_rejected(kwargs):
    with pytest.raises(ValueError, match="invalid attack budget"):
        AttackSpec(**kwargs)


def test_random_start_is_reproducible_from_the_generator(digits_data):
    model = _fresh_model()
    x, y = _test_batch(digits_data)
    spec = AttackSpec(EPS, STEP, 2)
    with attack_mode([model]):
        runs = [
            pgd(cross_entropy(model, y), x, spec, generator=torch.Generator().manual_seed(s))
            for s in (5, 5, 6)
        ]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


# -- strength ----------------------------------------------------------------------------------
def test_pgd_breaks_the_undefended_model_but_not_the_teacher(
    digits_data, digits_undefended_path, digits_teacher_path
):
    spec = AttackSpec(EPS, STEP, 20)
    test = digits_data.test
    undefended = load_model(digits_undefended_path)
    teacher = load_model(digits_teacher_path)
    clean = {
        name: _pgd_accuracy(m, test, AttackSpec(EPS, STEP, 0))
        for name, m in (("undefended", undefended), ("teacher", teacher))
    }
    assert clean["undefended"] > 90.0 and clean["teacher"] > 90.0, clean
    robust_undefended = _pgd_accuracy(undefended, test, spec)
    robust_teacher = _pgd_accuracy(teacher, test, spec)
    assert robust_undefended < 5.0, robust_undefended
    assert robust_teacher > robust_undefended + 20.0, (robust_teacher, robust_undefended)


# -- attack_mode -------------------------------------------------------------------------------
def _bn_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {
        name: buf.clone()
        for name, buf in model.named_buffers()
        if any(k in name for k in ("running_mean", "running_var", "num_batches_tracked"))
    }


@pytest.mark.parametrize("train", [False, True])
def test_attack_mode_leaves_the_model_exactly_as_it_was(digits_data, train):
    model = _fresh_model()
    x, y = _test_batch(digits_data)
    # Give BN non-trivial statistics, then a mixed starting state: training on, one
    # submodule in eval, the classifier frozen.
    model.train()
    with torch.no_grad():
        model(x)
    model.body[1].eval()
    model.classifier.requires_grad_(False)
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    buffers = _bn_buffers(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}

    with attack_mode([model], train=train):
        assert all(m.training == train for m in model.modules())
        assert not any(p.requires_grad for p in model.parameters())
        pgd(cross_entropy(model, y), x, AttackSpec(EPS, STEP, 3))
        if train:  # the attack's forwards did move the statistics, inside the context
            changed = _bn_buffers(model)
            assert any(not torch.equal(changed[k], buffers[k]) for k in buffers)

    assert {name: m.training for name, m in model.named_modules()} == modes
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    after = _bn_buffers(model)
    assert all(torch.equal(after[k], buffers[k]) for k in buffers)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_attack_mode_restores_on_error():
    model = _fresh_model().train()
    buffers = _bn_buffers(model)
    with pytest.raises(RuntimeError, match="boom"), attack_mode([model], train=True):
        model(torch.rand(8, 1, 8, 8))
        raise RuntimeError("boom")
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(v, buffers[k]) for k, v in _bn_buffers(model).items())


# -- objectives --------------------------------------------------------------------------------
def test_cw_margin_is_positive_exactly_where_misclassified(digits_data, digits_undefended_path):
    model = load_model(digits_undefended_path)
    x, y = _test_batch(digits_data, 128)
    with attack_mode([model]):
        # Half clean (mostly right), half weakly attacked (a mix of right and wrong).
        x_adv = pgd(cross_entropy(model, y), x, AttackSpec(0.08, 0.04, 2, random_start=False))
        x_mix = torch.cat([x[:64], x_adv[64:]])
        margin = cw_margin(model, y)(x_mix)
        logits = model(x_mix)
    wrong = logits.argmax(1) != y
    assert 0 < int(wrong.sum()) < len(y), "need both right and wrong samples"
    assert torch.equal(margin > 0, wrong)
    # Independently: best other logit minus the true one.
    others = logits.clone()
    others[torch.arange(len(y)), y] = -math.inf
    expected = others.max(1).values - logits[torch.arange(len(y)), y]
    torch.testing.assert_close(margin, expected)
    assert torch.equal(misclassified(model, y)(x_mix), wrong.float())


def test_kl_to_reference_is_zero_at_the_reference_and_matches_kl_div(digits_data):
    model = _fresh_model().eval()
    x, _ = _test_batch(digits_data)
    with torch.no_grad():
        reference = model(x)
        objective = kl_to_reference(model, reference, temperature=2.0)
        assert objective(x).abs().max().item() < 1e-5
        x_other = (x + 0.3).clamp(0, 1)
        expected = F.kl_div(
            F.log_softmax(model(x_other) / 2.0, 1),
            F.log_softmax(reference / 2.0, 1),
            log_target=True,
            reduction="none",
        ).sum(1)
        torch.testing.assert_close(objective(x_other), expected, rtol=1e-4, atol=1e-6)
        assert (objective(x_other) > 0).all()


# -- restarts ----------------------------------------------------------------------------------
def test_restarts_pick_per_sample_the_first_best_restart():
    """Each restart draws one random start from the generator and is otherwise deterministic,
    so R single-restart runs on one generator replay the R restarts of one run."""
    n, restarts = 32, 4
    x = torch.rand(n, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    w = torch.randn(n, 1, 4, 4, generator=torch.Generator().manual_seed(1))

    def objective(z: Tensor) -> Tensor:
        return (torch.sin(7 * z) * w).flatten(1).sum(1)

    def score(z: Tensor) -> Tensor:  # coarse, so some restarts tie and the first must win
        return torch.round(objective(z))

    spec = AttackSpec(0.3, 0.05, 2, random_start=True, restarts=1)
    replay = torch.Generator().manual_seed(11)
    candidates = torch.stack([pgd(objective, x, spec, generator=replay) for _ in range(restarts)])
    scores = torch.stack([score(c) for c in candidates])  # [R, N]
    best = scores.max(0).values
    first_best = (scores == best).float().argmax(0)  # the first restart reaching the maximum
    expected = candidates[first_best, torch.arange(n)]

    multi = AttackSpec(0.3, 0.05, 2, random_start=True, restarts=restarts)
    out = pgd(
        objective, x, multi, generator=torch.Generator().manual_seed(11), per_sample_best=score
    )
    assert torch.equal(out, expected)
    assert len(set(first_best.tolist())) > 1, "the toy should make different restarts win"
    # Without a selection score the last restart wins.
    last = pgd(objective, x, multi, generator=torch.Generator().manual_seed(11))
    assert torch.equal(last, candidates[-1])


def test_restarts_never_lose_a_success_of_the_first_restart(digits_data, digits_teacher_path):
    model = load_model(digits_teacher_path)
    test = digits_data.test
    x, y, _ = test.batch_at(torch.arange(len(test)))
    fooled = {}
    with attack_mode([model]):
        for restarts in (1, 3):
            spec = AttackSpec(EPS, STEP, 5, restarts=restarts)
            x_adv = pgd(
                cross_entropy(model, y),
                x,
                spec,
                generator=torch.Generator().manual_seed(3),
                per_sample_best=misclassified(model, y),
            )
            with torch.no_grad():
                fooled[restarts] = model(x_adv).argmax(1) != y
    assert fooled[1].any() and not fooled[1].all()
    assert not (fooled[1] & ~fooled[3]).any(), "a sample fooled by restart 1 was lost"
    assert int(fooled[3].sum()) >= int(fooled[1].sum())


# -- optimal transport -------------------------------------------------------------------------
def _features(seed: int, n: int = 16, d: int = 32) -> Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_sinkhorn_is_near_zero_for_identical_batches_and_larger_otherwise():
    a, b = _features(0), _features(1)
    same = sinkhorn_distance(a, a.clone()).item()
    different = sinkhorn_distance(a, b).item()
    assert abs(same) < 1e-3
    assert different > 0.3
    # A permutation of the same batch is still free to transport.
    assert sinkhorn_distance(a, a[torch.randperm(16)]).item() < 1e-3
    # Symmetric (exactly so at convergence; nearly so after the default 30 iterations), and
    # blind to the feature scale (cosine cost).
    assert sinkhorn_distance(b, a).item() == pytest.approx(different, rel=5e-3)
    converged = [sinkhorn_distance(p, q, iterations=1000).item() for p, q in ((a, b), (b, a))]
    assert converged[0] == pytest.approx(converged[1], abs=1e-5)
    assert sinkhorn_distance(3 * a, b).item() == pytest.approx(different, abs=1e-5)


def test_sinkhorn_approaches_the_exact_assignment_cost():
    """Uniform weights on n points each: exact OT is the best permutation (brute force)."""
    n = 6
    a, b = _features(2, n, 8), _features(3, n, 8)
    cost = (1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).double().numpy()
    exact = min(cost[range(n), list(p)].sum() for p in itertools.permutations(range(n))) / n
    value = sinkhorn_distance(a, b, epsilon=0.01, iterations=200).item()
    # Entropic OT exceeds the exact cost by at most eps * log(n^2) at convergence.
    assert exact - 1e-4 <= value <= exact + 0.01 * math.log(n * n) + 1e-4


def test_sinkhorn_matches_a_reimplementation_with_uniform_marginals():
    a, b = _features(4, 8, 16), _features(5, 10, 16)
    eps = 0.05
    cost = (1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).double().numpy()
    # Plain (non-log) Sinkhorn scaling in float64, run to convergence.
    kernel = np.exp(-cost / eps)
    mu, nu = np.full(8, 1 / 8), np.full(10, 1 / 10)
    u, v = np.ones(8), np.ones(10)
    for _ in range(5000):
        u = mu / (kernel @ v)
        v = nu / (kernel.T @ u)
    plan = u[:, None] * kernel * v[None, :]
    np.testing.assert_allclose(plan.sum(1), mu, atol=1e-9)
    np.testing.assert_allclose(plan.sum(0), nu, atol=1e-9)
    expected = float((plan * cost).sum())
    value = sinkhorn_distance(a, b, epsilon=eps, iterations=500).item()
    assert value == pytest.approx(expected, abs=1e-4)


def test_sinkhorn_is_differentiable_with_a_descent_gradient():
    a, b = _features(6).requires_grad_(True), _features(7)
    value = sinkhorn_distance(a, b)
    (grad,) = torch.autograd.grad(value, a)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():
        stepped = sinkhorn_distance(a - 0.5 * grad / grad.norm(), b)
    assert stepped.item() < value.item()
    # Finite with respect to both inputs, even for identical batches (zero cost).
    c = _features(8).requires_grad_(True)
    d = c.detach().clone().requires_grad_(True)
    ga, gb = torch.autograd.grad(sinkhorn_distance(c, d), (c, d))
    assert torch.isfinite(ga).all() and torch.isfinite(gb).all()


# -- keeping one random stream in step across data-parallel ranks ------------------------------
@pytest.mark.parametrize("spec", [AttackSpec(0.3, 0.05, 2, restarts=3), AttackSpec(0.3, 0.05, 0)])
def test_skipping_a_batch_leaves_the_generator_where_attacking_it_would(spec):
    """A rank that skips another rank's batch must draw the next batch's random starts as
    one process attacking every batch does (with restarts, and for steps=0 drawing none)."""
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    w = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(2))

    def objective(z: Tensor) -> Tensor:
        return (torch.sin(7 * z) * w).flatten(1).sum(1)

    one_process = torch.Generator().manual_seed(5)
    pgd(objective, x, spec, generator=one_process)
    expected = pgd(objective, y, spec, generator=one_process)

    rank = torch.Generator().manual_seed(5)
    skip_random_starts(x.shape, spec, rank, x.device)
    assert torch.equal(pgd(objective, y, spec, generator=rank), expected)
    assert torch.equal(rank.get_state(), one_process.get_state())
    if spec.steps:  # and the skip mattered: from the fresh seed, y starts elsewhere
        fresh = pgd(objective, y, spec, generator=torch.Generator().manual_seed(5))
        assert not torch.equal(fresh, expected)

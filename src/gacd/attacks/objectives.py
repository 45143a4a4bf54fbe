"""Objectives for the PGD engine: each returns per-sample losses to maximise."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gacd.attacks.pgd import Objective


def cross_entropy(model: nn.Module, labels: Tensor) -> Objective:
    return lambda x: F.cross_entropy(model(x).float(), labels, reduction="none")


def kl_to_reference(
    model: nn.Module, reference_logits: Tensor, temperature: float = 1.0
) -> Objective:
    """KL(softmax(reference / T) || softmax(model(x) / T)) per sample (TRADES, RSLAD, ARD-KL).

    Written as the authors' `KLDivLoss(log_softmax(model(x)), softmax(reference))`: near
    x' = x the gradient is a difference of two almost equal distributions, so how the target
    is rounded decides the sign of tiny gradient entries, and PGD takes signs."""
    target = F.softmax(reference_logits.detach().float() / temperature, dim=1)

    def objective(x: Tensor) -> Tensor:
        log_q = F.log_softmax(model(x).float() / temperature, dim=1)
        return F.kl_div(log_q, target, reduction="none").sum(dim=1)

    return objective


def model_kl(reference: nn.Module, model: nn.Module, temperature: float = 1.0) -> Objective:
    """KL(softmax(reference(x) / T) || softmax(model(x) / T)) per sample, both models seeing
    the same x' and the gradient flowing through both: AdaAD's inner objective, which seeks
    where teacher and student disagree most. Written as the authors' KLDivLoss (see
    `kl_to_reference`)."""

    def objective(x: Tensor) -> Tensor:
        target = F.softmax(reference(x).float() / temperature, dim=1)
        log_q = F.log_softmax(model(x).float() / temperature, dim=1)
        return F.kl_div(log_q, target, reduction="none").sum(dim=1)

    return objective


def cw_margin(model: nn.Module, labels: Tensor) -> Objective:
    """Carlini-Wagner margin: max_{j != y} z_j - z_y (positive once misclassified)."""

    def objective(x: Tensor) -> Tensor:
        logits = model(x).float()
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
        return other.max(dim=1).values - true

    return objective


def misclassified(model: nn.Module, labels: Tensor) -> Tensor:
    """Restart selection score for accuracy attacks: 1 where the model is wrong."""
    return lambda x: (model(x).argmax(1) != labels).float()  # type: ignore[return-value]


def feature_misalignment(student: nn.Module, target: Tensor) -> Objective:
    """1 - cos(features_student(x), target): pushes student features off a fixed target."""
    target = target.detach()

    def objective(x: Tensor) -> Tensor:
        feats = student.forward_features(x)[0].float()
        return 1.0 - F.cosine_similarity(feats, target, dim=1)

    return objective


def sinkhorn_distance(
    a: Tensor, b: Tensor, *, epsilon: float = 0.01, iterations: int = 30
) -> Tensor:
    """Entropic optimal transport cost between two feature batches (uniform weights) with
    cosine cost, solved by log-domain Sinkhorn iterations; differentiable in `a` and `b`.

    The transport plan is computed without gradient and the cost <plan, C> differentiated
    through C only (envelope theorem), the cheap and stable choice feature scattering uses.
    """
    a = F.normalize(a.float(), dim=1, eps=1e-8)
    b = F.normalize(b.float(), dim=1, eps=1e-8)
    cost = 1.0 - a @ b.T  # [N, N] in [0, 2]
    n, m = cost.shape
    with torch.no_grad():
        log_mu = torch.full((n,), -torch.log(torch.tensor(float(n))), device=cost.device)
        log_nu = torch.full((m,), -torch.log(torch.tensor(float(m))), device=cost.device)
        f = torch.zeros(n, device=cost.device)
        g = torch.zeros(m, device=cost.device)
        k = -cost / epsilon
        for _ in range(iterations):
            f = epsilon * (log_mu - torch.logsumexp(k + g[None, :] / epsilon, dim=1))
            g = epsilon * (log_nu - torch.logsumexp(k + f[:, None] / epsilon, dim=0))
        plan = torch.exp(k + f[:, None] / epsilon + g[None, :] / epsilon)
    return (plan * cost).sum()


def feature_transport(
    model: nn.Module,
    x_natural: Tensor,
    *,
    space: str = "features",
    **sinkhorn_kwargs: float,
) -> Objective:
    """Feature-scattering objective: OT distance between the model's outputs on the
    adversarial and on the natural batch (a batch-level scalar). `space` "features" compares
    penultimate features, "logits" the logits (feature scattering's own choice)."""
    if space not in ("features", "logits"):
        raise ValueError(f"space must be 'features' or 'logits', got {space!r}")
    index = 0 if space == "features" else 1
    with torch.no_grad():
        natural = model.forward_features(x_natural)[index].float()

    def objective(x: Tensor) -> Tensor:
        return sinkhorn_distance(model.forward_features(x)[index], natural, **sinkhorn_kwargs)

    return objective

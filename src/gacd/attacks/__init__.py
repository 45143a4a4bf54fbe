"""Attacks: one PGD engine over any objective, FGSM as its one-step case."""

from gacd.attacks.objectives import (
    cross_entropy,
    cw_margin,
    feature_misalignment,
    feature_transport,
    kl_to_reference,
    misclassified,
    model_kl,
    sinkhorn_distance,
)
from gacd.attacks.pgd import (
    START_KINDS,
    AttackSpec,
    Objective,
    StartKind,
    attack_mode,
    fgsm_spec,
    pgd,
)

__all__ = [
    "START_KINDS",
    "AttackSpec",
    "Objective",
    "StartKind",
    "attack_mode",
    "cross_entropy",
    "cw_margin",
    "feature_misalignment",
    "feature_transport",
    "fgsm_spec",
    "kl_to_reference",
    "misclassified",
    "model_kl",
    "pgd",
    "sinkhorn_distance",
]

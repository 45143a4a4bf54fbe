"""Attacks: one PGD engine over any objective, FGSM as its one-step case."""

from gacd.attacks.objectives import (
    cross_entropy,
    cw_margin,
    feature_misalignment,
    feature_transport,
    kl_to_reference,
    misclassified,
    sinkhorn_distance,
)
from gacd.attacks.pgd import AttackSpec, Objective, attack_mode, fgsm_spec, pgd

__all__ = [
    "AttackSpec",
    "Objective",
    "attack_mode",
    "cross_entropy",
    "cw_margin",
    "feature_misalignment",
    "feature_transport",
    "fgsm_spec",
    "kl_to_reference",
    "misclassified",
    "pgd",
    "sinkhorn_distance",
]

"""Evaluation: accuracy under attack, reports, and (later) analysis."""

from gacd.evaluation.robust import ATTACK_HELP, NamedAttack, parse_attack, robust_accuracy

__all__ = ["ATTACK_HELP", "NamedAttack", "parse_attack", "robust_accuracy"]

"""The errors a user can fix. The command line prints each as one line and exits non-zero;
any other exception is a bug and keeps its traceback.

Each names the bad input and what is allowed. The `ValueError` bases keep `except
ValueError` in library code working; the CLI catches `GacdError` alone.
"""

from __future__ import annotations


class GacdError(Exception):
    """Base of the user-facing errors; `exit_code` is the CLI's exit status."""

    exit_code = 2


class ConfigError(GacdError, ValueError):
    """A config key, option or command-line value is not allowed."""


class AttackBudgetError(ConfigError):
    """An attack's eps, step size, steps or restarts are out of range."""


class DataError(GacdError):
    """A dataset is missing, incomplete or corrupt; the message says where and how to get it."""


class CheckpointError(GacdError, ValueError):
    """A model or checkpoint file is missing, unreadable, or not what was asked for."""


class RunDirectoryError(GacdError):
    """An output directory holds another run (a different config)."""


class TrainingDiverged(GacdError):
    """The loss became non-finite; the message names the epoch and step."""

    exit_code = 1

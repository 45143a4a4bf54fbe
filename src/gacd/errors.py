"""The errors a user can fix. The command line prints each as one line and exits non-zero;
any other exception is a bug and keeps its traceback.

Each names the bad input and what is allowed. The `ValueError` bases keep `except
ValueError` in library code working; the CLI catches `GacdError` alone.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class GacdError(Exception):
    """Base of the user-facing errors; `exit_code` is the CLI's exit status."""

    exit_code = 2


class ConfigError(GacdError, ValueError):
    """A config key, option or command-line value is not allowed."""


class UnknownName(ConfigError):
    """A name no registry holds (an architecture, a dataset, a method): the message names
    the kind, the bad name, the closest known names and all of them."""

    def __init__(self, kind: str, name: object, known: Sequence[str], key: str | None = None):
        self.kind, self.name, self.known, self.key = kind, name, sorted(known), key
        self.suggestions = difflib.get_close_matches(str(name), self.known, n=3, cutoff=0.6)
        quoted = [repr(c) for c in self.suggestions]
        hint = ""
        if quoted:
            options = f"{', '.join(quoted[:-1])} or {quoted[-1]}" if len(quoted) > 1 else quoted[0]
            hint = f" (did you mean {options}?)"
        prefix = f"{key}: " if key else ""
        super().__init__(f"{prefix}unknown {kind} {name!r}{hint}; known: {', '.join(self.known)}")

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        # Pickled by its parts, so it survives crossing processes (its __init__ takes four).
        return type(self), (self.kind, self.name, self.known, self.key)


class AttackBudgetError(ConfigError):
    """An attack's eps, step size, steps or restarts are out of range."""


class DataError(GacdError):
    """A dataset is missing, incomplete or corrupt; the message says where and how to get it."""


class CheckpointError(GacdError, ValueError):
    """A model or checkpoint file is missing, unreadable, or not what was asked for."""


class ZooError(CheckpointError):
    """A RobustBench id, zoo root or checkpoint that cannot be used; the message says why."""


class RunDirectoryError(GacdError):
    """An output directory holds another run (a different config)."""


class TrainingDiverged(GacdError):
    """The loss became non-finite; the message names the epoch and step."""

    exit_code = 1

"""AutoAttack bridge: robust accuracy under the reference implementation (`pyautoattack`).

The models follow the RobustBench contract ([0, 1] inputs, normalisation inside), so the
model goes to AutoAttack as is. What this module adds around the reference code:

- the model in eval mode with no parameter requiring gradients (`attack_mode`);
- the global RNG untouched (AutoAttack reseeds torch's generator on every attack);
- its logging silenced, or sent to `log_path`; its sanity checks (randomised defence,
  zero gradients, Square beating the gradient attacks...) surfaced as Python warnings;
- the returned points checked to lie in the L-inf ball and in [0, 1], and the accuracy
  recomputed by us on them rather than read from AutoAttack's log.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gacd.attacks import attack_mode
from gacd.data import DeviceSplit
from gacd.errors import ConfigError
from gacd.progress import bar, chunks, interactive, remaining, say

MISSING_MESSAGE = (
    "AutoAttack needs its reference implementation, the pyautoattack package that gacd "
    "depends on, and it is missing here: pip install pyautoattack"
)
VERSIONS = ("standard", "plus", "rand", "custom")
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t")
# Float slack when checking the budget: x + delta is rounded once more than delta itself.
_BUDGET_TOLERANCE = 1e-5
_LOGGER_NAME = "auto-attack"  # the name pyautoattack logs under


class AutoAttackUnavailable(ConfigError):
    """The `pyautoattack` package (a dependency) is missing: a broken install, said in one
    line (the CLI exits 2)."""


class AutoAttackError(RuntimeError):
    """AutoAttack returned points that break the threat model (a bug, never expected)."""


class AutoAttackCheckWarning(UserWarning):
    """One of AutoAttack's own sanity checks flagged the evaluation as possibly unreliable."""


def require_autoattack() -> type:
    """Return the reference `AutoAttack` class, or raise `AutoAttackUnavailable`."""
    try:
        from pyautoattack import AutoAttack
    except ImportError as err:
        raise AutoAttackUnavailable(MISSING_MESSAGE) from err
    return AutoAttack


def autoattack_available() -> bool:
    try:
        require_autoattack()
    except AutoAttackUnavailable:
        return False
    return True


class _Capture(logging.Handler):
    """Keeps AutoAttack's warnings (its check results) to re-issue them as Python warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _quiet_autoattack(log_path: str | Path | None) -> Iterator[_Capture]:
    """Route AutoAttack's logger (and any stray print) to `log_path`, or nowhere."""
    logger = logging.getLogger(_LOGGER_NAME)
    saved = (list(logger.handlers), logger.level, logger.propagate)
    capture = _Capture()
    with contextlib.ExitStack() as stack:
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            stream = stack.enter_context(open(log_path, "a"))
            file_handler = logging.StreamHandler(stream)
            file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            handlers: list[logging.Handler] = [capture, file_handler]
        else:
            stream = stack.enter_context(open(os.devnull, "w"))
            handlers = [capture]
        logger.handlers = handlers
        logger.setLevel(logging.DEBUG if log_path is not None else logging.WARNING)
        logger.propagate = False  # nothing reaches the root logger or logging's last resort
        stack.enter_context(contextlib.redirect_stdout(stream))
        try:
            yield capture
        finally:
            logger.handlers, level, logger.propagate = saved[0], saved[1], saved[2]
            logger.setLevel(level)


def _first_samples(split: DeviceSplit, max_samples: int | None) -> tuple[Tensor, Tensor]:
    # The same points as `robust_accuracy` uses: the first max_samples of the split, in order.
    n = len(split) if max_samples is None else max(0, min(len(split), max_samples))
    batch = split.batch_at(torch.arange(n))
    return batch.images, batch.labels


@torch.no_grad()
def _count_correct(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> int:
    return sum(
        int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum())
        for i in range(0, len(y), batch_size)
    )


def _check_budget(x: Tensor, x_adv: Tensor, eps: float) -> None:
    if x_adv.shape != x.shape:
        raise AutoAttackError(f"AutoAttack returned shape {tuple(x_adv.shape)}, not {x.shape}")
    if not torch.isfinite(x_adv).all():
        raise AutoAttackError("AutoAttack returned non-finite adversarial examples")
    dist = (x_adv - x).abs().flatten(1).amax(1)
    worst = float(dist.max()) if len(dist) else 0.0
    if worst > eps + _BUDGET_TOLERANCE:
        raise AutoAttackError(
            f"AutoAttack returned points outside the L-inf ball: max |x_adv - x| = {worst:.6g} "
            f"> eps = {eps:.6g} ({int((dist > eps + _BUDGET_TOLERANCE).sum())} points)"
        )
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -_BUDGET_TOLERANCE or hi > 1 + _BUDGET_TOLERANCE:
        raise AutoAttackError(f"AutoAttack returned pixels outside [0, 1]: [{lo:.6g}, {hi:.6g}]")


def _rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _check_settings(
    eps: float, batch_size: int, version: str, attacks: Sequence[str] | None
) -> None:
    if version not in VERSIONS:
        raise ConfigError(f"AutoAttack version '{version}': choose one of {', '.join(VERSIONS)}")
    if (version == "custom") != (attacks is not None):
        raise ConfigError("AutoAttack: give `attacks` with version='custom', and only then")
    if attacks is not None:
        unknown = [a for a in attacks if a not in ATTACK_NAMES]
        if unknown or not attacks:
            raise ConfigError(
                f"AutoAttack attacks {list(attacks)}: choose from {', '.join(ATTACK_NAMES)}"
            )
    if not eps > 0:
        raise ConfigError(f"AutoAttack needs eps > 0, got {eps}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be positive, got {batch_size}")


def _check_classes(num_classes: int, version: str, attacks: list[str] | None) -> None:
    """The DLR loss reads the 3rd largest logit, its targeted form the 4th."""
    chosen = set(attacks or ())
    if version in ("standard", "plus") or "apgd-t" in chosen:
        min_classes = 4
    elif version == "rand" or "apgd-dlr" in chosen:
        min_classes = 3
    else:
        min_classes = 2
    if num_classes < min_classes:
        raise ConfigError(
            f"AutoAttack ({version}) needs at least {min_classes} classes for its DLR-loss "
            f"attacks; the model has {num_classes}: use version='custom' with attacks "
            "['apgd-ce', 'fab', 'square']"
        )


def autoattack_accuracy(
    model: nn.Module,
    split: DeviceSplit,
    eps: float,
    *,
    batch_size: int = 512,
    max_samples: int | None = None,
    seed: int = 0,
    version: str = "standard",
    attacks: Sequence[str] | None = None,
    log_path: str | Path | None = None,
    progress: bool = False,
    desc: str = "autoattack",
) -> float:
    """Accuracy (%) of `model` on the first `max_samples` points of `split` under L-inf
    AutoAttack at `eps`, run by the reference implementation (`pyautoattack`).

    `version`: "standard" (APGD-CE, APGD-T, FAB-T, Square; the headline protocol), "plus",
    "rand" (for randomised defences), or "custom" with `attacks` (a subset of
    ATTACK_NAMES, for quick checks). The targeted attacks use min(9, classes - 1) target
    classes: 9 as in the reference for 10+ classes, all there are below that.
    AutoAttack's log goes to `log_path` when given, otherwise nowhere; its sanity-check
    findings are issued as `AutoAttackCheckWarning`s. `progress` shows a bar on a terminal,
    or a line per chunk of points elsewhere.
    """
    _check_settings(eps, batch_size, version, attacks)
    auto_attack_cls = require_autoattack()

    x, y = _first_samples(split, max_samples)
    if len(y) == 0:
        return 0.0
    device = x.device
    with attack_mode([model], train=False):
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
        run_attacks = list(attacks) if attacks is not None else None
        _check_classes(num_classes, version, run_attacks)
        messages: list[str] = []
        adversarial = []
        points = len(y)
        started = time.perf_counter()
        # In chunks (each point is attacked on its own), so long runs report progress; the
        # chunks depend on the point count and batch size only, never on the display.
        chunk = max(batch_size, -(-points // 20))
        steps = bar(chunks(points, chunk), total=-(-points // chunk), desc=desc, enabled=progress)
        for start, stop in steps:
            with (
                _quiet_autoattack(log_path) as capture,
                torch.random.fork_rng(_rng_devices(device)),
            ):
                kwargs: dict[str, Any] = {"eps": eps, "norm": "Linf", "version": version}
                if run_attacks is not None:
                    kwargs["attacks"] = run_attacks
                adversary = auto_attack_cls(model, device=device, seed=seed, **kwargs)
                adversary.verbose = log_path is not None
                # Fewer target classes than the reference's 9 when the model has fewer than
                # 10: asking for more would index past the last logit.
                n_targets = min(9, num_classes - 1)
                adversary.apgd_targeted.n_target_classes = n_targets
                adversary.fab.n_target_classes = n_targets
                x_adv, _ = adversary.run_standard_evaluation(
                    x[start:stop], y[start:stop], batch_size=batch_size
                )
            messages += [m for m in capture.messages if m not in messages]
            adversarial.append(x_adv.detach().to(device))
            if progress and not interactive() and stop < points:
                elapsed = time.perf_counter() - started
                say(f"{desc}: {stop}/{points} points ({remaining(stop, points, elapsed)})")
        x_adv = torch.cat(adversarial)
        _check_budget(x, x_adv, eps)
        correct = _count_correct(model, x_adv, y, batch_size)
    for message in messages:
        warnings.warn(f"AutoAttack check: {message}", AutoAttackCheckWarning, stacklevel=2)
    return 100.0 * correct / len(y)

"""Experiment configs: teachers x students x seeds (x a sweep), typed and checked like RunConfig.

An experiment is a small YAML file; every stage it implies is a normal `RunConfig` built by
merging, in order: `base`, `stages.<kind>`, `students.archs.<arch>` (students), the method
recipe's own settings, the teacher's `config` or the method's overrides (its main stage),
the sweep value, `force`, and the pipeline's wiring (out, seed, teacher, init, student
architecture, eval.attacks). Every stage config is built and validated when the experiment
is loaded, so a typo fails before anything trains.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gacd.errors import ConfigError
from gacd.evaluation.robust import parse_attack
from gacd.experiments.paper import PAPER
from gacd.methods import stage_kinds
from gacd.options import from_dict


@dataclass
class TeacherSpec:
    """A teacher to train (arch, method, config) or an exported one to use as is (path)."""

    arch: str | None = None  # shorthand for config.model.arch
    method: str | None = None  # shorthand for config.method.name (default: pgd_at)
    path: str | None = None  # an exported model (model_best.pt) or robustbench:<id>; not trained
    label: str | None = None  # display name in reports (default: from the architecture)
    config: dict[str, Any] = field(default_factory=dict)  # RunConfig overrides
    # A reference model (e.g. an undefended one): trained and evaluated like a teacher,
    # never distilled from.
    reference: bool = False


@dataclass
class StudentsSpec:
    # Architectures, as a list, or a mapping arch -> RunConfig overrides for all of that
    # architecture's stages (e.g. a smaller learning rate for MobileNetV2).
    archs: Any = field(default_factory=list)
    # Method recipes (gacd, gacd_aft, ...) or any registered training method; as a list of
    # names, or a mapping name -> RunConfig overrides of that method's main training stage.
    methods: Any = field(default_factory=list)


@dataclass
class SweepSpec:
    """One parameter varied over values: a dotted RunConfig key (method.negatives), or one
    of the axes `method`, `arch`, `seed`."""

    param: str
    values: list[Any]
    # Stage kinds the value applies to; default: each student's main training stage
    # (the distillation for GACD recipes). Stages downstream follow automatically.
    stages: list[str] | None = None
    methods: list[str] | None = None  # only these students.methods entries (default: all)
    log_x: bool | None = None  # log-scale x axis in plots; None: when values span >= 100x
    label: str | None = None  # axis label (default: param)


@dataclass
class TransferTarget:
    """A target task: a dataset, optionally a subset of its labels and a new image size."""

    dataset: str
    root: str | None = None  # its files must be there (transfer does not download)
    classes: list[int] | None = None  # keep these labels, relabelled 0..n-1
    resize: int | None = None  # e.g. 32: STL-10's 96x96 images for CIFAR-size models
    label: str | None = None


@dataclass
class TransferSpec:
    """Linear probes of frozen teachers and students on other tasks (paper Table 4), by
    gacd.transfer.run_transfer: the probe trains on the target's training split (its last
    epoch is kept) and is evaluated on the target's test split."""

    targets: dict[str, Any]  # name -> TransferTarget mapping
    attacks: list[str] = field(default_factory=lambda: ["natural", "pgd7"])
    epochs: int = 20
    lr: float = 0.2
    batch_size: int | None = None  # default: base.data.batch_size
    eps: float | None = None  # default: the target dataset's
    step_size: float | None = None
    teachers: bool = True  # probe the teachers' features too (Table 4's first row)


@dataclass
class ExperimentConfig:
    name: str
    out: str  # results.json, report.md, plots; and the stages unless stages_dir is set
    # Where stage directories live. Experiments that share it share identical stages (same
    # directory and settings): e.g. the paper's tables train the ResNet-18 teacher once.
    # Do not run two experiments on one stages_dir at the same time.
    stages_dir: str | None = None
    title: str | None = None
    notes: str | None = None  # free text copied into the report
    smoke: bool = False  # a plumbing check on tiny data: reports say numbers are meaningless
    # torch intra-op threads (None: torch's default). Tiny models (digits) run fastest on
    # 1: extra threads cost more in synchronisation than they save, on a busy CPU many times.
    threads: int | None = None
    # Multiplies every stage's epochs (at least 1 each): a quick look at a long experiment.
    epochs_scale: float = 1.0
    # Stages trained at once, each in its own process (independent stages only; under
    # torchrun always 1): on a CPU with N cores, N tiny stages side by side.
    jobs: int = 1
    paper: str | None = None  # key of the paper's reported numbers (gacd.experiments.paper)
    seeds: list[int] = field(default_factory=lambda: [0])
    teachers_per_seed: bool = False  # False: one teacher (first seed) serves every seed
    attacks: list[str] = field(default_factory=lambda: ["natural", "pgd20"])
    # For last-epoch models (default: attacks); [] evaluates the best-epoch models only.
    attacks_last: list[str] | None = None
    base: dict[str, Any] = field(default_factory=dict)  # RunConfig mapping for every stage
    # RunConfig overrides per stage kind, on top of `base`: teacher, student (one-stage
    # students), and the kinds of multi-stage recipes (GACD's distill, linear, aft).
    stages: dict[str, Any] = field(default_factory=dict)
    force: dict[str, Any] = field(default_factory=dict)  # applied last (quick checks)
    teachers: dict[str, Any] = field(default_factory=dict)  # name -> TeacherSpec mapping
    students: StudentsSpec | None = None
    sweep: SweepSpec | None = None
    transfer: TransferSpec | None = None

    # Filled by load_experiment from the mappings above.
    teacher_specs: dict[str, TeacherSpec] = field(default_factory=dict, repr=False)
    arch_overrides: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)
    transfer_targets: dict[str, TransferTarget] = field(default_factory=dict, repr=False)
    # Epochs per stage as the YAML file sets them, before command-line overrides: a run
    # that trains far fewer is reported as a smoke run.
    file_epochs: dict[str, int] = field(default_factory=dict, repr=False)


_DERIVED = (
    "teacher_specs",
    "arch_overrides",
    "method_overrides",
    "transfer_targets",
    "file_epochs",
)
SPECIAL_SWEEPS = ("method", "arch", "seed")


def parse_experiment(data: dict[str, Any]) -> ExperimentConfig:
    """Build an ExperimentConfig and check its own keys and values; the stages' RunConfigs
    are checked by planning it (`gacd.experiments.plan.experiment_from_dict`)."""
    bad = [k for k in _DERIVED if k in data]
    if bad:
        raise ConfigError(f"unknown key '{bad[0]}'")
    exp = from_dict(ExperimentConfig, data)
    if not exp.name or "/" in exp.name:
        raise ConfigError(f"name: '{exp.name}' must be a non-empty name without '/'")
    if exp.threads is not None and exp.threads < 1:
        raise ConfigError(f"threads: must be at least 1, got {exp.threads}")
    if exp.jobs < 1:
        raise ConfigError(f"jobs: must be at least 1, got {exp.jobs}")
    if exp.epochs_scale <= 0:
        raise ConfigError(f"epochs_scale: must be positive, got {exp.epochs_scale}")
    if not exp.seeds:
        raise ConfigError("seeds: give at least one seed")
    for name, value in exp.teachers.items():
        _check_name(f"teachers.{name}", name)
        spec = from_dict(TeacherSpec, value or {}, prefix=f"teachers.{name}.")
        if spec.path is not None and (spec.arch or spec.method or spec.config):
            raise ConfigError(
                f"teachers.{name}: 'path' uses an exported teacher as is; "
                "drop arch/method/config or drop path"
            )
        exp.teacher_specs[name] = spec
    if exp.students is not None:
        exp.method_overrides = _overrides("students.methods", exp.students.methods)
        exp.arch_overrides = _overrides("students.archs", exp.students.archs)
        for arch in exp.arch_overrides:
            _check_name("students.archs", arch)
    if exp.transfer is not None:
        if not exp.transfer.targets:
            raise ConfigError("transfer.targets: give at least one target")
        for name, value in exp.transfer.targets.items():
            _check_name(f"transfer.targets.{name}", name)
            exp.transfer_targets[name] = from_dict(
                TransferTarget, value or {}, prefix=f"transfer.targets.{name}."
            )
    kinds = stage_kinds()
    for kind, overrides in exp.stages.items():
        if kind not in kinds:
            raise ConfigError(f"stages: unknown stage kind '{kind}'; allowed: {', '.join(kinds)}")
        if not isinstance(overrides, dict):
            raise ConfigError(f"stages.{kind}: expected RunConfig overrides (a mapping)")
    if exp.paper is not None and exp.paper not in PAPER:
        raise ConfigError(f"paper: unknown key '{exp.paper}'; known: {', '.join(PAPER)}")
    _check_attacks("attacks", exp.attacks)
    if exp.attacks_last:
        _check_attacks("attacks_last", exp.attacks_last)
    if exp.transfer is not None:
        _check_attacks("transfer.attacks", exp.transfer.attacks)
    _check_sweep(exp)
    if not exp.teacher_specs and exp.students is None:
        raise ConfigError("an experiment needs teachers, students, or both")
    return exp


def _check_attacks(key: str, attacks: list[str]) -> None:
    if not attacks:
        raise ConfigError(f"{key}: give at least one attack (e.g. natural, pgd20)")
    for name in attacks:
        try:
            parse_attack(name, 0.1, 0.01)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    if len(set(attacks)) != len(attacks):
        raise ConfigError(f"{key}: an attack is listed twice in {attacks}")


def _check_name(key: str, name: str) -> None:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{key}: '{name}' must be a plain name (no '/', no leading '.')")


def _overrides(key: str, value: Any) -> dict[str, dict[str, Any]]:
    """A list of names, or a mapping name -> RunConfig overrides (null: none)."""
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected names, got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{key}: a name is listed twice in {value}")
        return {name: {} for name in value}
    if isinstance(value, dict):
        out = {}
        for name, overrides in value.items():
            if overrides is not None and not isinstance(overrides, dict):
                raise ConfigError(
                    f"{key}.{name}: expected RunConfig overrides (a mapping), got {overrides!r}"
                )
            out[str(name)] = dict(overrides or {})
        return out
    raise ConfigError(
        f"{key}: expected a list of names or a mapping name -> overrides, got {value!r}"
    )


def _check_sweep(exp: ExperimentConfig) -> None:
    sweep = exp.sweep
    if sweep is None:
        return
    if not sweep.values:
        raise ConfigError("sweep.values: give at least one value")
    if len({repr(v) for v in sweep.values}) != len(sweep.values):
        raise ConfigError(f"sweep.values: a value is listed twice in {sweep.values}")
    kinds = stage_kinds()
    for kind in sweep.stages or []:
        if kind not in kinds:
            raise ConfigError(f"sweep.stages: unknown stage kind '{kind}'; allowed: {kinds}")
    for method in sweep.methods or []:
        if method not in exp.method_overrides:
            raise ConfigError(
                f"sweep.methods: '{method}' is not in students.methods "
                f"({', '.join(exp.method_overrides)})"
            )
    if sweep.param in SPECIAL_SWEEPS:
        if sweep.stages or sweep.methods:
            raise ConfigError(
                f"sweep.stages, sweep.methods: not used when sweeping '{sweep.param}'"
            )
        if sweep.param != "seed" and exp.students is None:
            raise ConfigError(f"sweep.param '{sweep.param}' needs a students section")
        if sweep.param == "seed" and not all(isinstance(v, int) for v in sweep.values):
            raise ConfigError(f"sweep.values: seeds must be integers, got {sweep.values}")
        return
    parts = sweep.param.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"sweep.param: '{sweep.param}' must be a dotted RunConfig key "
            f"(e.g. method.negatives) or one of {', '.join(SPECIAL_SWEEPS)}"
        )
    if parts[0] in ("out", "seed", "teacher", "init"):
        raise ConfigError(f"sweep.param: '{sweep.param}' is set by the pipeline itself")


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Nested merge: mappings merge key by key, anything else (lists too) is replaced."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(data)
    node = out
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"sweep.param '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value
    return out


def experiment_dict(exp: ExperimentConfig) -> dict[str, Any]:
    """The experiment as a plain mapping (what the user wrote, after overrides)."""
    data = dataclasses.asdict(exp)
    for key in _DERIVED:
        data.pop(key)
    return copy.deepcopy(data)

"""From an experiment to its stages: directories, wiring, and each stage's RunConfig.

Pure planning, no training: `plan_experiment` is also how an experiment is validated.
Stage directories (relative to the experiment's out):

    teachers/<teacher>/seed<k>/
    students/<teacher | no_teacher>/<arch>/<stage>[/<param>=<value>]/seed<k>/
    transfer/<target>/<source stage directory>/
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gacd.config import RunConfig
from gacd.errors import ConfigError
from gacd.experiments.probe import transfer_settings
from gacd.experiments.spec import (
    SPECIAL_SWEEPS,
    ExperimentConfig,
    TeacherSpec,
    deep_merge,
    set_dotted,
)
from gacd.methods import method_class, recipe
from gacd.options import from_dict, to_dict

NO_TEACHER = "no_teacher"  # directory of students trained without a teacher (PGD-AT...)
TEACHER_FILE = "model_best.pt"  # teachers: best on validation (adversarial accuracy)
DISTILLED_FILE = "model_last.pt"  # distilled features: no classifier to select an epoch by


@dataclass
class Stage:
    """One training run (or, for an exported teacher, one evaluation) of an experiment."""

    key: str  # directory relative to the experiment's out
    kind: str  # teacher | student | distill | linear | aft | transfer
    config: RunConfig
    evaluated: bool
    seed: int
    teacher: str | None = None  # teacher name (None: trained without one)
    arch: str | None = None  # student architecture; the teacher's for teacher stages
    method: str | None = None  # recipe name (students), method name (teachers)
    sweep_value: Any = None
    swept: bool = False  # this stage or one upstream got the sweep value
    depends: list[str] = field(default_factory=list)  # keys of upstream stages
    external_model: str | None = None  # an exported teacher used as is
    target: str | None = None  # transfer target name
    source: str | None = None  # transfer: key of the stage whose model is probed

    @property
    def model_file(self) -> str:
        return TEACHER_FILE if self.kind == "teacher" else DISTILLED_FILE


@dataclass
class Plan:
    stages: dict[str, Stage]  # in execution order (upstream before downstream)

    def evaluated(self) -> list[Stage]:
        return [s for s in self.stages.values() if s.evaluated]


def _build(where: str, data: dict[str, Any], epochs_scale: float = 1.0) -> RunConfig:
    """A stage's checked RunConfig; `epochs_scale` multiplies its epochs (at least 1)."""
    try:
        config = from_dict(RunConfig, data)
        if epochs_scale != 1.0:
            epochs = max(1, round(config.optim.epochs * epochs_scale))
            config.optim = dataclasses.replace(config.optim, epochs=epochs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return config


def _value_dir(param: str, value: Any) -> str:
    text = f"{param}={value}"
    if "/" in text or text.startswith("."):
        raise ConfigError(f"sweep value {value!r} cannot name a directory")
    return text


def _method_accepts(method: dict[str, Any], option: str) -> bool:
    cls = method_class(method["name"])
    return option in getattr(cls.Options, "__dataclass_fields__", {})


class _Planner:
    def __init__(self, exp: ExperimentConfig, out: Path) -> None:
        self.exp = exp
        self.out = out
        self.stages: dict[str, Stage] = {}
        self.sweep = exp.sweep
        self.swept_any = False
        self.first_seed = exp.seeds[0]

    # -- building blocks ------------------------------------------------------------------
    def _config(
        self,
        where: str,
        kind: str,
        fixed: dict[str, Any],
        entry: dict[str, Any],
        sweep_value: Any,
        wiring: dict[str, Any],
        method: str | None = None,
        arch: str | None = None,
    ) -> tuple[RunConfig, bool]:
        exp = self.exp
        data = deep_merge(exp.base, exp.stages.get(kind, {}))
        if arch is not None:
            data = deep_merge(data, exp.arch_overrides.get(arch, {}))
        data = deep_merge(data, fixed)
        method_name = data.get("method", {}).get("name")
        if entry.get("method", {}).get("name", method_name) != method_name:
            raise ConfigError(
                f"{where}: method.name is set by the method's entry name; "
                f"'{entry['method']['name']}' would replace '{method_name}'"
            )
        data = deep_merge(data, entry)
        swept = False
        if self._applies(kind, data, method):
            data = set_dotted(data, self.sweep.param, sweep_value)  # type: ignore[union-attr]
            swept = self.swept_any = True
        data = deep_merge(data, exp.force)
        if "attacks" in data.get("eval", {}):
            raise ConfigError(
                f"{where}: eval.attacks is set by the experiment's top-level 'attacks' list"
            )
        data = deep_merge(data, wiring)
        data.setdefault("eval", {})["attacks"] = list(exp.attacks)
        return _build(where, data, self.exp.epochs_scale), swept

    def _applies(self, kind: str, data: dict[str, Any], method: str | None) -> bool:
        sweep = self.sweep
        if sweep is None or sweep.param in SPECIAL_SWEEPS:
            return False
        if sweep.methods is not None and method not in sweep.methods:
            return False
        kinds = sweep.stages if sweep.stages is not None else ["student", "distill"]
        if kind not in kinds:
            return False
        section, _, option = sweep.param.partition(".")
        if section == "method" and "." not in option and "name" in data.get("method", {}):
            # A method option applies where the method has it (negatives: GACD stages only).
            return _method_accepts(data["method"], option)
        return True

    def _add(self, stage: Stage) -> Stage:
        old = self.stages.get(stage.key)
        if old is None:
            self.stages[stage.key] = stage
            return stage
        if to_dict(old.config) != to_dict(stage.config):
            raise ConfigError(
                f"two entries share the stage {stage.key} with different settings "
                "(e.g. gacd and gacd_aft share their distillation: give both the same overrides)"
            )
        return old

    def _dir(self, *parts: str) -> str:
        return "/".join(parts)

    # -- teachers -------------------------------------------------------------------------
    def teacher(self, name: str, spec: TeacherSpec, seed: int, value: Any) -> Stage:
        where = f"teachers.{name}"
        if spec.path is not None:  # evaluated only; its directory holds the evaluation
            key = self._dir("teachers", name)
            wiring = {"seed": self.first_seed, "out": str(self.out / key)}
            config, _ = self._config(where, "teacher", {}, {}, None, wiring)
            stage = Stage(
                key, "teacher", config, True, seed, teacher=name, external_model=spec.path
            )
            return self._add(stage)
        fixed: dict[str, Any] = {"method": {"name": spec.method or "pgd_at"}}
        if spec.arch:
            fixed["model"] = {"arch": spec.arch}
        config, swept = self._config(
            where, "teacher", fixed, spec.config, value, {"seed": seed, "out": ""}
        )
        parts = ["teachers", name]
        if swept:
            parts.append(_value_dir(self.sweep.param, value))  # type: ignore[union-attr]
        key = self._dir(*parts, f"seed{seed}")
        config.out = str(self.out / key)
        stage = Stage(
            key,
            "teacher",
            config,
            True,
            seed,
            teacher=name,
            arch=config.model.arch,
            method=config.method.name,
            sweep_value=value if swept else None,
            swept=swept,
        )
        return self._add(stage)

    def teacher_model(self, stage: Stage) -> str:
        if stage.external_model is not None:
            return stage.external_model
        return str(self.out / stage.key / TEACHER_FILE)

    # -- students -------------------------------------------------------------------------
    def student(
        self,
        teacher: Stage | None,
        arch: str,
        method: str,
        seed: int,
        value: Any,
        special_value: Any,
    ) -> None:
        rec = recipe(method)
        entry = self.exp.method_overrides.get(method, {})
        teacher_dir = teacher.teacher if teacher is not None else NO_TEACHER
        previous: Stage | None = None
        for i, template in enumerate(rec.stages):
            where = f"students.{method} ({arch}, teacher {teacher_dir}, seed {seed})"
            wiring: dict[str, Any] = {"seed": seed, "out": "", "model": {"arch": arch}}
            depends = []
            if template.from_previous:
                assert previous is not None
                wiring["init"] = str(self.out / previous.key / DISTILLED_FILE)
                depends.append(previous.key)
            elif rec.needs_teacher:
                assert teacher is not None
                wiring["teacher"] = self.teacher_model(teacher)
                depends.append(teacher.key)
            config, swept = self._config(
                where,
                template.kind,
                {"method": template.method},
                entry if i == 0 else {},
                value,
                wiring,
                method,
                arch,
            )
            upstream_swept = any(self.stages[d].swept for d in depends)
            parts = ["students", teacher_dir, arch, template.name]
            if swept or upstream_swept:
                parts.append(_value_dir(self.sweep.param, value))  # type: ignore[union-attr]
            key = self._dir(*parts, f"seed{seed}")
            config.out = str(self.out / key)
            is_swept = swept or upstream_swept
            stage = Stage(
                key,
                template.kind,
                config,
                template.evaluated,
                seed,
                teacher=teacher.teacher if teacher is not None else None,
                arch=arch,
                method=method,
                sweep_value=value if is_swept else special_value,
                swept=is_swept,
                depends=depends,
            )
            previous = self._add(stage)

    # -- transfer -------------------------------------------------------------------------
    def transfer(self) -> None:
        spec = self.exp.transfer
        if spec is None:
            return
        sources = [
            s
            for s in list(self.stages.values())
            if s.evaluated and (s.kind != "teacher" or spec.teachers)
        ]
        base = self.exp.base
        for target_name, target in self.exp.transfer_targets.items():
            for source in sources:
                key = self._dir("transfer", target_name, source.key)
                # What run_transfer will be given, as a RunConfig so that it is checked,
                # fingerprinted and shown like every other stage.
                data = transfer_settings(
                    self._source_model(source),
                    dataset=target.dataset,
                    out_dir=self.out / key,
                    root=target.root,
                    classes=target.classes,
                    resize=target.resize,
                    epochs=spec.epochs,
                    lr=spec.lr,
                    eps=spec.eps,
                    step_size=spec.step_size,
                    attacks=spec.attacks,
                    batch_size=spec.batch_size or base.get("data", {}).get("batch_size", 128),
                    seed=source.seed,
                    device=base.get("device", "auto"),
                    progress=base.get("progress", True),
                    force=self.exp.force,
                )
                config = _build(
                    f"transfer.targets.{target_name} ({source.key})", data, self.exp.epochs_scale
                )
                stage = Stage(
                    key,
                    "transfer",
                    config,
                    True,
                    source.seed,
                    teacher=source.teacher,
                    arch=source.arch,
                    method=source.method,
                    sweep_value=source.sweep_value,
                    swept=source.swept,
                    depends=[source.key],
                    target=target_name,
                    source=source.key,
                )
                self._add(stage)

    def _source_model(self, source: Stage) -> str:
        if source.external_model is not None:
            return source.external_model
        return str(self.out / source.key / TEACHER_FILE)


def stage_root(exp: ExperimentConfig) -> Path:
    """Where the experiment's stage directories live."""
    return Path(exp.stages_dir if exp.stages_dir is not None else exp.out)


def plan_experiment(exp: ExperimentConfig) -> Plan:
    """Every stage of `exp`, in an order where upstream stages come first."""
    planner = _Planner(exp, stage_root(exp))
    sweep = exp.sweep
    special = sweep.param if sweep is not None and sweep.param in SPECIAL_SWEEPS else None
    dotted_values = sweep.values if sweep is not None and special is None else [None]
    seeds = sweep.values if special == "seed" else exp.seeds
    planner.first_seed = seeds[0]
    students = exp.students
    archs = sweep.values if special == "arch" else list(exp.arch_overrides)
    methods = sweep.values if special == "method" else list(exp.method_overrides)
    if students is not None and (not archs or not methods):
        raise ConfigError("students: give at least one architecture (archs) and one method")
    if special == "method":
        for m in methods:
            if not isinstance(m, str):
                raise ConfigError(f"sweep.values: method names expected, got {m!r}")
    needs_teacher = [m for m in methods if recipe(m).needs_teacher]
    distilled_from = [n for n, spec in exp.teacher_specs.items() if not spec.reference]
    if needs_teacher and not distilled_from:
        raise ConfigError(
            f"students.methods {needs_teacher} need a teacher, and the experiment has none "
            "(reference models are not distilled from)"
        )
    for name in exp.teacher_specs:
        if name == NO_TEACHER:
            raise ConfigError(f"teachers: '{NO_TEACHER}' is reserved; choose another name")
    for value in dotted_values:
        teacher_stages: dict[tuple[str, int], Stage] = {}
        for seed in seeds:
            t_seed = seed if exp.teachers_per_seed else seeds[0]
            for name, spec in exp.teacher_specs.items():
                teacher_stages[(name, seed)] = planner.teacher(name, spec, t_seed, value)
        for seed in seeds:
            for method in methods:
                rec = recipe(method)
                pairs = (
                    [teacher_stages[(t, seed)] for t in distilled_from]
                    if rec.needs_teacher
                    else [None]
                )
                for teacher in pairs:
                    for arch in archs:
                        special_value = {"seed": seed, "arch": arch, "method": method}.get(
                            special or ""
                        )
                        planner.student(teacher, arch, method, seed, value, special_value)
    if sweep is not None and special is None and not planner.swept_any:
        raise ConfigError(
            f"sweep.param '{sweep.param}' applies to no stage (stage kinds "
            f"{sweep.stages or ['student', 'distill']}; method options only where the "
            "method has them)"
        )
    planner.transfer()
    return Plan(planner.stages)

"""What the experiment pipeline needs of a method: its recipes.

A recipe is what a `students.methods` entry names: one or more training stages, each run by
a registered method, the later ones starting from the previous stage's model. A method
declares its recipes (`Method.recipes`); by default that is one stage of itself under its
own name. GACD declares its follow-up stages (a linear probe, or adversarial fine-tuning)
the same way, so the planner names no method and a new multi-stage method is one file.
The lookups over every registered method (`recipe`, `stage_kinds`) live beside the method
registry in `gacd.methods.base`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Stage kinds the pipeline itself knows: teachers, and one-stage students. Multi-stage
# recipes add their own kinds (each kind is a section of an experiment's `stages`).
TEACHER_KIND = "teacher"
STUDENT_KIND = "student"


@dataclass(frozen=True)
class StageTemplate:
    name: str  # directory name of the stage
    kind: str  # its section in an experiment's `stages` (per-kind RunConfig overrides)
    method: dict[str, Any]  # the recipe's fixed method settings ({"name": ..., options})
    evaluated: bool = True
    from_previous: bool = False  # initialised from the previous stage's model (init=...)


@dataclass(frozen=True)
class Recipe:
    name: str  # what `students.methods` lists
    label: str  # how reports print it
    stages: tuple[StageTemplate, ...]  # the first is the main training stage
    needs_teacher: bool = True


def single_stage(
    method: str, label: str, needs_teacher: bool, name: str | None = None, **options: Any
) -> Recipe:
    """A recipe of one student stage running `method` with `options`, named `name` (default:
    the method's name)."""
    name = name or method
    settings = {"name": method, **options}
    return Recipe(name, label, (StageTemplate(name, STUDENT_KIND, settings),), needs_teacher)

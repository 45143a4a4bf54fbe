"""Training methods, one file each, registered by name."""

# Importing each method module registers its class (see gacd.methods.base).
from gacd.methods import (  # noqa: F401
    adaad,
    ard,
    gacd,
    iad,
    kd,
    linear,
    natural,
    pgd_at,
    rslad,
    trades,
)
from gacd.methods.base import (
    METHODS,
    Method,
    MethodContext,
    MethodOptions,
    Step,
    all_recipes,
    build_method,
    method_class,
    method_names,
    method_options,
    recipe,
    register_method,
    stage_kinds,
    step_output,
)
from gacd.methods.recipes import Recipe, StageTemplate

__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "MethodOptions",
    "Recipe",
    "StageTemplate",
    "Step",
    "all_recipes",
    "build_method",
    "method_class",
    "method_names",
    "method_options",
    "recipe",
    "register_method",
    "stage_kinds",
    "step_output",
]

"""RobustBench's own model code, as the reference our zoo loader is checked against.

robustbench 1.1.1 is installed without its dependencies (`pip install --no-deps
robustbench==1.1.1`): its package `__init__` imports torchvision, which does not import
with the CPU torch here, so nothing imports the package. Its plain-torch architecture files
are loaded by path, and each model-zoo entry's constructor expression is read from
`model_zoo/cifar10.py` / `cifar100.py` with `ast` and evaluated against those classes: the
architecture of every entry comes from RobustBench's file, not from our table.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

INSTALL = "pip install --no-deps robustbench==1.1.1"
ARCH_FILES = ("dm_wide_resnet", "wide_resnet", "resnet")


@functools.cache
def package_dir() -> Path:
    spec = importlib.util.find_spec("robustbench")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"robustbench is not installed; the zoo tests need its code: {INSTALL}")
    return Path(spec.submodule_search_locations[0])


@functools.cache
def arch_module(name: str) -> ModuleType:
    """robustbench/model_zoo/architectures/<name>.py, loaded by path."""
    path = package_dir() / "model_zoo" / "architectures" / f"{name}.py"
    module_name = f"_robustbench_ref_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _namespace() -> dict[str, Any]:
    ns: dict[str, Any] = {"torch": torch, "nn": nn}
    for name in ARCH_FILES:
        module = arch_module(name)
        ns.update({k: v for k, v in vars(module).items() if not k.startswith("__")})
    # cifar10.py and cifar100.py take WideResNet from wide_resnet.py (dm_wide_resnet.py has
    # none; dm_rn.py's is not used by them) and ResNet* / PreAct* from resnet.py.
    ns["WideResNet"] = arch_module("wide_resnet").WideResNet
    return ns


@functools.cache
def _entries(dataset: str) -> dict[tuple[str, str], tuple[str, ast.AST, Any]]:
    """(threat, name) -> (source file text, the 'model' expression node, gdrive_id) for each
    entry of RobustBench's linf / l2 tables of `dataset`."""
    text = (package_dir() / "model_zoo" / f"{dataset}.py").read_text()
    tree = ast.parse(text)
    threats = {"linf": "Linf", "l2": "L2"}
    out: dict[tuple[str, str], tuple[str, ast.AST, Any]] = {}
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)):
            continue
        threat = threats.get(node.targets[0].id)
        if threat is None:
            continue
        pairs = node.value.args[0].elts  # OrderedDict([(name, {...}), ...])
        for pair in pairs:
            name = ast.literal_eval(pair.elts[0])
            keys = [ast.literal_eval(k) for k in pair.elts[1].keys]
            fields = dict(zip(keys, pair.elts[1].values, strict=True))
            out[(threat, name)] = (text, fields["model"], ast.literal_eval(fields["gdrive_id"]))
    return out


def entry_gdrive_id(dataset: str, threat: str, name: str) -> Any:
    return _entries(dataset)[(threat, name)][2]


def entry_constructor(dataset: str, threat: str, name: str) -> Callable[[], nn.Module]:
    """RobustBench's zero-argument constructor of an entry, built from its own source."""
    text, expr, _ = _entries(dataset)[(threat, name)]
    ns = _namespace()
    if isinstance(expr, ast.Name) and expr.id not in ns:
        # A model class defined in cifar10.py / cifar100.py itself: run its definition.
        tree = ast.parse(text)
        classdef = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == expr.id)
        exec(compile(ast.Module([classdef], []), f"<{dataset}.py>", "exec"), ns)
    return eval(compile(ast.Expression(expr), f"<{dataset}.py>", "eval"), ns)


def entry_call_arguments(dataset: str, threat: str, name: str) -> dict[str, Any]:
    """The arguments, defaults included, of an entry written `lambda: Class(...)`."""
    _, expr, _ = _entries(dataset)[(threat, name)]
    assert isinstance(expr, ast.Lambda) and isinstance(expr.body, ast.Call), name
    ns = _namespace()
    call = expr.body
    callee = eval(compile(ast.Expression(call.func), "<call>", "eval"), ns)
    args = [eval(compile(ast.Expression(a), "<arg>", "eval"), ns) for a in call.args]
    kwargs = {
        k.arg: eval(compile(ast.Expression(k.value), "<arg>", "eval"), ns) for k in call.keywords
    }
    bound = inspect.signature(callee).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is the identity
    in eval mode, which would hide a wrongly mapped BN layer)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.2, generator=g)
    return model


def reference_model(dataset: str, threat: str, name: str, seed: int = 0) -> nn.Module:
    """RobustBench's module for an entry: random weights (seeded), random BN statistics,
    eval mode."""
    torch.manual_seed(seed)
    return randomise_batchnorm(entry_constructor(dataset, threat, name)(), seed).eval()


def save_robustbench_file(model: nn.Module, path: Path, layout: str = "state_dict+module") -> Path:
    """Save `model`'s weights as RobustBench's files come: under 'state_dict' with the
    'module.' prefix of DataParallel (layout 'state_dict+module'), or a bare dict with
    'model.' prefixes ('bare+model'), or a bare dict as is ('bare')."""
    state = model.state_dict()
    if layout == "state_dict+module":
        blob: dict[str, Any] = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    elif layout == "bare+model":
        blob = {f"model.{k}": v for k, v in state.items()}
    elif layout == "bare":
        blob = dict(state)
    else:
        raise ValueError(layout)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path


def write_zoo_entry(root: Path, zoo_id: str, seed: int = 0) -> nn.Module:
    """Write a random checkpoint of RobustBench entry `zoo_id` (made with RobustBench's own
    module) at ROOT/<dataset>/<threat>/<name>.pt; return that module (eval mode)."""
    dataset, threat, name = zoo_id.removeprefix("robustbench:").split("/")
    model = reference_model(dataset, threat, name, seed)
    save_robustbench_file(model, root / dataset / threat / f"{name}.pt")
    return model

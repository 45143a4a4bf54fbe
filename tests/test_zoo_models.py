"""Our RobustBench architectures against RobustBench's own code (robustbench 1.1.1, its
plain-torch architecture files loaded by path: see robustbench_reference.py).

For every family: a checkpoint saved from RobustBench's module (random weights, random
BatchNorm statistics, the key prefixes RobustBench's files carry) loads into our definition
through the zoo loader, and the logits, the penultimate features and the input gradients
agree. For every entry of our table: RobustBench's constructor for that name, read from its
`cifar10.py` / `cifar100.py`, has exactly our parameters and buffers after renaming, the
same normalisation and the same Google Drive file.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gacd.engine.export import export_model, load_model
from gacd.models import build_model
from gacd.models.zoo import build_zoo_model, load_zoo_state, read_checkpoint, rename_key
from gacd.models.zoo_table import ENTRIES, NO_NORM, ZooEntry
from robustbench_reference import (
    arch_module,
    entry_call_arguments,
    entry_constructor,
    entry_gdrive_id,
    randomise_batchnorm,
    save_robustbench_file,
    write_zoo_entry,
)

# RobustBench's Swish backward reads ctx.saved_variables, which torch deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:'saved_variables' is deprecated")

DM = arch_module("dm_wide_resnet")
WRN = arch_module("wide_resnet")
RN = arch_module("resnet")
C10 = (DM.CIFAR10_MEAN, DM.CIFAR10_STD)
C100 = (DM.CIFAR100_MEAN, DM.CIFAR100_STD)


def _entry(family: str, arch: str, kwargs: dict, norm=NO_NORM, classes=10, **kw) -> ZooEntry:
    return ZooEntry(
        dataset="cifar10" if classes == 10 else "cifar100",
        threat="Linf",
        name="test",
        family=family,
        arch=arch,
        kwargs=kwargs,
        mean=tuple(norm[0]),
        std=tuple(norm[1]),
        gdrive_id="",
        clean=None,
        autoattack=None,
        **kw,
    )


# (RobustBench constructor, our entry, file layout): small members of every family, both
# activations, both class counts, every shortcut variant.
FAMILY_CASES: dict[str, tuple[Callable[[], nn.Module], ZooEntry, str]] = {
    "dm_wrn_swish": (
        lambda: DM.DMWideResNet(num_classes=10, depth=16, width=2, activation_fn=DM.Swish),
        _entry("dm_wrn", "dm_wrn", {"depth": 16, "width": 2, "activation": "swish"}, C10),
        "state_dict+module",
    ),
    "dm_wrn_silu_c100": (
        lambda: DM.DMWideResNet(
            num_classes=100, depth=10, width=1, activation_fn=nn.SiLU, mean=C100[0], std=C100[1]
        ),
        _entry("dm_wrn", "dm_wrn", {"depth": 10, "width": 1, "activation": "silu"}, C100, 100),
        "bare+model",
    ),
    "dm_preact_swish": (
        lambda: DM.DMPreActResNet(num_classes=10, depth=18, width=0, activation_fn=DM.Swish),
        _entry("dm_preact", "dm_preact_resnet", {"depth": 18, "activation": "swish"}, C10),
        "state_dict+module",
    ),
    "dm_preact34_relu_c100": (
        lambda: DM.DMPreActResNet(
            num_classes=100, depth=34, activation_fn=nn.ReLU, mean=C100[0], std=C100[1]
        ),
        _entry("dm_preact", "dm_preact_resnet", {"depth": 34, "activation": "relu"}, C100, 100),
        "bare",
    ),
    "wrn_sub_block1": (
        lambda: WRN.WideResNet(depth=16, widen_factor=2, sub_block1=True),
        _entry("wrn", "wrn", {"depth": 16, "widen_factor": 2}, unused_prefixes=("sub_block1.",)),
        "state_dict+module",
    ),
    "wrn_10_1_c100": (
        lambda: WRN.WideResNet(depth=10, widen_factor=1, num_classes=100),
        _entry("wrn", "wrn", {"depth": 10, "widen_factor": 1}, classes=100),
        "bare",
    ),
    "resnet18": (RN.ResNet18, _entry("resnet", "resnet18", {}), "state_dict+module"),
    "resnet18_c100": (
        lambda: RN.ResNet(RN.BasicBlock, [2, 2, 2, 2], num_classes=100),
        _entry("resnet", "resnet18", {}, classes=100),
        "bare+model",
    ),
    "preact_raw_shortcut": (
        lambda: RN.PreActResNet(RN.PreActBlock, [2, 2, 2, 2]),
        _entry("preact", "preact_resnet18", {"shortcut_input": "raw", "final_bn": False}),
        "state_dict+module",
    ),
    "preact_v2_bn_c100": (
        lambda: RN.PreActResNet(RN.PreActBlockV2, [2, 2, 2, 2], num_classes=100, bn_before_fc=True),
        _entry("preact", "preact_resnet18", {}, classes=100),
        "bare",
    ),
    "preact_out_shortcut_bn": (
        lambda: RN.PreActResNet(RN.PreActBlock, [2, 2, 2, 2], bn_before_fc=True, out_shortcut=True),
        _entry("preact", "preact_resnet18", {}),
        "bare+model",
    ),
}


def _final_linear(model: nn.Module) -> nn.Linear:
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _penultimate(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of RobustBench's final linear layer (its pooled features)."""
    seen: list[torch.Tensor] = []
    hook = _final_linear(model).register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen[0]


def _loaded_pair(case: str, tmp_path: Path) -> tuple[nn.Module, nn.Module]:
    ctor, entry, layout = FAMILY_CASES[case]
    torch.manual_seed(0)
    theirs = randomise_batchnorm(ctor(), seed=1).eval()
    path = save_robustbench_file(theirs, tmp_path / "model.pt", layout)
    ours = build_zoo_model(entry)
    load_zoo_state(ours, read_checkpoint(path), entry, path)
    return theirs, ours.eval()


@pytest.mark.parametrize("case", list(FAMILY_CASES))
def test_robustbench_checkpoint_gives_the_same_logits(case: str, tmp_path: Path) -> None:
    theirs, ours = _loaded_pair(case, tmp_path)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs(x)
        feats, logits = ours.forward_features(x)
    assert expected.std() > 1e-2  # logits that differ between inputs and classes
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-4)
    assert torch.equal(logits, ours(x))
    torch.testing.assert_close(feats, _penultimate(theirs, x), rtol=0, atol=1e-4)
    torch.testing.assert_close(ours.classifier(feats), logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", ["dm_wrn_swish", "dm_preact_swish", "preact_raw_shortcut"])
def test_input_gradients_agree(case: str, tmp_path: Path) -> None:
    """Attacks follow input gradients: RobustBench's hand-written Swish backward and the
    padding must give ours the same gradients, not only the same outputs."""
    theirs, ours = _loaded_pair(case, tmp_path)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([0, 3, 5, 9])
    grads = []
    for model in (theirs, ours):
        xi = x.clone().requires_grad_(True)
        F.cross_entropy(model(xi), y).backward()
        grads.append(xi.grad)
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-6)


def test_deepmind_padding_matters(tmp_path: Path) -> None:
    """A control on the comparisons above: the same DeepMind weights in our classic WRN
    (symmetric padding of strided convs, ReLU) give clearly different logits."""
    theirs, ours = _loaded_pair("dm_wrn_swish", tmp_path)
    classic = build_model(
        "wrn", in_channels=3, num_classes=10, mean=C10[0], std=C10[1], depth=16, widen_factor=2
    )
    classic.load_state_dict(ours.state_dict())  # the same names: the activations hold none
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        gap = (classic.eval()(x) - theirs(x)).abs().max()
    assert gap > 1e-2


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id.removeprefix("robustbench:") for e in ENTRIES])
def test_table_entry_matches_robustbench_constructor(entry: ZooEntry) -> None:
    """Built on the meta device (no memory, no time): RobustBench's module for this name and
    ours have the same parameters and buffers, shape for shape, after renaming."""
    with torch.device("meta"):
        theirs = entry_constructor(entry.dataset, entry.threat, entry.name)()
        ours = build_zoo_model(entry)
    theirs_state = {
        rename_key(entry.family, k): v
        for k, v in theirs.state_dict().items()
        if not k.startswith(entry.unused_prefixes)
    }
    ours_state = ours.state_dict()
    # Our normalisation buffers are always in the state dict; RobustBench's are absent
    # (constants, or non-persistent) or named mu / sigma (mapped to mean / std).
    assert set(theirs_state) | {"mean", "std"} == set(ours_state)
    for key, value in theirs_state.items():
        assert value.shape == ours_state[key].shape, key
    if entry.unused_prefixes:  # what we drop exists in RobustBench's model, and only that
        assert any(k.startswith(entry.unused_prefixes) for k in theirs.state_dict())
    assert entry_gdrive_id(entry.dataset, entry.threat, entry.name) == entry.gdrive_id


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id.removeprefix("robustbench:") for e in ENTRIES])
def test_table_entry_normalisation_matches_robustbench(entry: ZooEntry) -> None:
    """The mean / std our model applies are the ones RobustBench's model applies."""
    mean, std = _reference_normalisation(entry)
    torch.testing.assert_close(torch.tensor(entry.mean), mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(torch.tensor(entry.std), std, rtol=0, atol=1e-7)


def _reference_normalisation(entry: ZooEntry) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, std) RobustBench's model for `entry` normalises with: its mean / std (DeepMind)
    or mu / sigma (a model class) buffers, or (0, 1) when it has none."""
    ctor = entry_constructor(entry.dataset, entry.threat, entry.name)
    with torch.device("meta"):
        skeleton = ctor()
    buffers = {n for n, _ in skeleton.named_buffers()}
    names = next((pair for pair in (("mean", "std"), ("mu", "sigma")) if pair[0] in buffers), None)
    if names is None:
        return torch.zeros(3), torch.ones(3)
    if sum(p.numel() for p in skeleton.parameters()) < 30_000_000:
        model = ctor()  # small enough to build for real and read the buffers
        values = [getattr(model, n) for n in names]
    else:  # WRN-70-16 and co: the constructor's own arguments, defaults included
        args = entry_call_arguments(entry.dataset, entry.threat, entry.name)
        values = [torch.tensor(args[n]) for n in names]
    return values[0].flatten().float(), values[1].flatten().float()


@pytest.mark.parametrize(
    "zoo_id",
    [
        "robustbench:cifar10/Linf/Gowal2021Improving_R18_ddpm_100m",
        "robustbench:cifar10/Linf/Sehwag2021Proxy_R18",
        "robustbench:cifar10/Linf/Wong2020Fast",
        "robustbench:cifar100/Linf/Rice2020Overfitting",
    ],
)
def test_full_size_entry_loads_by_id_and_exports(zoo_id: str, tmp_path: Path) -> None:
    """Real-size checkpoints in RobustBench's layout, by id, through gacd.load_model; the
    loaded model exports and reloads like any gacd model."""
    theirs = write_zoo_entry(tmp_path / "zoo", zoo_id, seed=4)
    ours = load_model(zoo_id, zoo_root=tmp_path / "zoo")
    assert not ours.training
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, rtol=0, atol=1e-4)
    export_model(ours, tmp_path / "exported.pt", meta={"dataset": "cifar10"})
    again = load_model(tmp_path / "exported.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), expected, rtol=0, atol=1e-4)

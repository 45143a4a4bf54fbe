"""`wrap_classifier`: any nn.Module classifier as a gacd model (teacher or student), split
at the input of its final linear layer; tested on networks built here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gacd.engine.export import export_model, load_model
from gacd.models import WrappedClassifier, build_model, register_model, wrap_classifier
from gacd.training import train


class GatedNet(nn.Module):
    """A classifier whose last-registered linear layer (`gate`) is not its head: `gate`
    runs first, `fc` produces the output."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),  # a coarse map: where the strokes are matters on digits
            nn.Flatten(),
        )
        self.embed = nn.Linear(8 * width, 24)
        self.fc = nn.Linear(24, num_classes)
        self.gate = nn.Linear(8 * width, 8 * width)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h = h + 0.1 * torch.tanh(self.gate(h))
        return self.fc(F.relu(self.embed(h)))


@register_model("test_adapter_gated_net")
def gated_net(in_channels: int, num_classes: int, mean: Any, std: Any, **kw: Any) -> Any:
    return wrap_classifier(
        GatedNet(in_channels, num_classes, **kw),
        mean=mean,
        std=std,
        input_shape=(in_channels, 8, 8),
    )


def _fc_input(net: nn.Module, x: Tensor) -> Tensor:
    seen: list[Tensor] = []
    hook = net.fc.register_forward_hook(lambda _m, i, _o: seen.append(i[0]))
    with torch.no_grad():
        net(x)
    hook.remove()
    return seen[0]


def _randomised(net: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def test_splits_at_the_layer_that_produces_the_output() -> None:
    net = _randomised(GatedNet())
    model = wrap_classifier(net).eval()
    assert isinstance(model, WrappedClassifier)
    assert model.head_name == "fc" and model.feature_dim == 24
    assert model.classifier.weight.data_ptr() != net.fc.weight.data_ptr()  # a copy
    assert torch.equal(model.classifier.weight, net.fc.weight)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        feats, logits = model.forward_features(x)
        assert torch.equal(logits, net(x))  # the network itself is untouched
    assert torch.equal(feats, _fc_input(net, x))
    assert isinstance(net.fc, nn.Linear)


def test_sequential_and_a_named_head() -> None:
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 16),
        nn.ReLU(), nn.Linear(16, 5),
    )  # fmt: skip
    model = wrap_classifier(net, input_shape=(1, 28, 28), head="6").eval()
    assert model.head_name == "6" and model.feature_dim == 16
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))
    assert torch.equal(wrap_classifier(net, input_shape=(1, 28, 28)).classifier.weight,
                       net[6].weight)  # fmt: skip


class _Softmaxed(GatedNet):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x).softmax(1)


class _Tokens(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, 8, 4, stride=4)
        self.head = nn.Linear(8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.proj(x).flatten(2).transpose(1, 2))  # per-token logits


class _Pair(GatedNet):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return super().forward(x), x


@pytest.mark.parametrize(
    ("net", "kwargs", "says"),
    [
        (_Softmaxed(), {}, "no nn.Linear of _Softmaxed produces its output"),
        (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), {}, "has no nn.Linear"),
        (GatedNet(), {"head": "classifier"}, "its linear layers: embed, fc, gate"),
        (GatedNet(), {"head": "embed"}, "'embed' is not the layer that produces"),
        (_Tokens(), {}, "not [batch, features]"),
        (_Pair(), {}, "returns a tuple"),
        (GatedNet(), {"mean": (0.5,)}, "mean and std need 3 values"),
    ],
)
def test_networks_it_cannot_split_are_refused(net: nn.Module, kwargs: dict, says: str) -> None:
    with pytest.raises(ValueError) as err:
        wrap_classifier(net, **kwargs)
    assert says in str(err.value)


def test_normalisation_is_applied_before_the_network_and_gradients_flow() -> None:
    net = _randomised(GatedNet())
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    model = wrap_classifier(net, mean=mean, std=std).eval()
    x = torch.rand(4, 3, 32, 32)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), net((x - m) / s), rtol=0, atol=1e-6)
    x.requires_grad_(True)
    F.cross_entropy(model(x), torch.arange(4)).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.body.conv[0].weight.grad.abs().sum() > 0
    assert model.classifier.weight.grad.abs().sum() > 0


def test_wrapped_network_trains_exactly_like_the_network() -> None:
    """Training mode (BatchNorm on batch statistics), SGD steps: the same numbers."""
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 10
    torch.manual_seed(0)
    net = GatedNet()
    model = wrap_classifier(net)  # a copy: both start from the same weights
    for module in (net, model):
        module.train()
        opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(module(x), y).backward()
            opt.step()
    assert torch.equal(model.classifier.weight, net.fc.weight)
    assert torch.equal(model.body.conv[0].weight, net.conv[0].weight)
    assert torch.equal(model.body.conv[1].running_var, net.conv[1].running_var)


def test_copy_net_false_splits_the_network_itself() -> None:
    net = GatedNet()
    model = wrap_classifier(net, copy_net=False)
    assert model.body is net and isinstance(net.fc, nn.Identity)


def test_export_needs_a_registered_factory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="register_model"):
        export_model(wrap_classifier(GatedNet()), tmp_path / "x.pt")
    torch.manual_seed(3)
    model = build_model(
        "test_adapter_gated_net", in_channels=3, num_classes=7, mean=(0.5,) * 3, std=(0.25,) * 3
    )
    _randomised(model)
    export_model(model, tmp_path / "wrapped.pt")
    again = load_model(tmp_path / "wrapped.pt")
    assert isinstance(again, WrappedClassifier) and again.head_name == "fc"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))


def test_wrapped_networks_train_as_teacher_and_students(digits_config, tmp_path: Path) -> None:
    """Through the ordinary pipeline (gacd.training.train, exported files), on digits: a wrapped
    network trained as the teacher, then distilled into wrapped students by ARD and GACD."""
    arch = ["model.arch=test_adapter_gated_net", "eval.val_attack_steps=2"]
    teacher = train(
        digits_config(
            tmp_path / "teacher",
            [*arch, "method.name=natural", "optim.epochs=5", "optim.lr=0.2"],
        )
    )
    assert teacher.history[-1]["val_nat"] > 80.0  # it learnt (chance is 10%; ~94% measured)
    for method in ("ard", "gacd"):
        student = train(
            digits_config(
                tmp_path / method,
                [*arch, f"method.name={method}", f"teacher={teacher.model_best}",
                 "optim.epochs=1", "attack.steps=2"],
            )
        )  # fmt: skip
        loaded = load_model(student.model_last)
        assert isinstance(loaded, WrappedClassifier)
        assert student.epochs == 1

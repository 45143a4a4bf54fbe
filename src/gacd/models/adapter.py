"""Any PyTorch classifier as a gacd model, for use as a teacher or a student.

`wrap_classifier(net)` finds the final `nn.Linear` that produces `net`'s output (or takes
the one you name), moves it out to be the model's `classifier`, and leaves `net` computing
that layer's input: the penultimate features GACD distils. The features are checked, on a
probe input, to be exactly what the original network fed its last layer, and the logits to
be exactly its output, so a network whose output is transformed after its last linear layer
(a softmax, a temperature, an ensemble average) is refused rather than silently changed.

Export: the wrapper has no architecture spec of its own, so `export_model` refuses it. To
save and reload it with `gacd.load_model` (and name it in configs), register a factory that
builds and wraps your network; `build_model` then records the spec as for our own models:

    @register_model("my_net")
    def my_net(in_channels, num_classes, mean, std, **kw):
        return wrap_classifier(MyNet(num_classes, **kw), mean=mean, std=std,
                               input_shape=(in_channels, 32, 32))

The module that registers it must be imported before the exported file is loaded.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from gacd.models.classifier import ImageClassifier


class WrappedClassifier(ImageClassifier):
    """A foreign network split at its last linear layer: `features = body(x_normalised)`,
    `logits = classifier(features)`; the normalisation (identity by default) is ours."""

    def __init__(
        self,
        body: nn.Module,
        classifier: nn.Linear,
        head_name: str,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__(mean, std)
        self.body = body
        self.classifier = classifier
        self.head_name = head_name
        self.feature_dim = classifier.in_features

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


def wrap_classifier(
    net: nn.Module,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    head: str | None = None,
    input_shape: Sequence[int] = (3, 32, 32),
    copy_net: bool = True,
) -> WrappedClassifier:
    """Wrap `net` (images -> logits) as an ImageClassifier.

    `head`: the qualified name of its final linear layer (default: found by running `net`
    once on a random `input_shape` batch). `mean` / `std`: a normalisation to apply before
    `net` (default none: pass them if `net` expects normalised inputs and does not normalise
    itself). `copy_net=False` splits `net` itself instead of a deep copy of it.
    """
    channels = int(input_shape[0])
    mean = tuple(mean) if mean is not None else (0.0,) * channels
    std = tuple(std) if std is not None else (1.0,) * channels
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need {channels} values (input_shape {tuple(input_shape)}), got "
            f"{len(mean)} and {len(std)}"
        )
    body = copy.deepcopy(net) if copy_net else net
    linears = {name: m for name, m in body.named_modules() if isinstance(m, nn.Linear)}
    if not linears:
        raise ValueError(f"{type(net).__name__} has no nn.Linear layer to split at")
    if head is not None and head not in linears:
        raise ValueError(
            f"head '{head}' is not an nn.Linear of {type(net).__name__}; its linear layers: "
            f"{', '.join(linears)}"
        )
    x = _probe_input(body, input_shape)
    calls, output = _run_recording(body, linears, x)
    if head is None:
        head = _find_head(calls, output, type(net).__name__)
    else:
        hits = [c for c in calls if c[0] == head]
        if len(hits) != 1 or not _same(hits[0][2], output):
            raise ValueError(
                f"'{head}' is not the layer that produces {type(net).__name__}'s output "
                "(it runs more than once, never, or its output is transformed afterwards)"
            )
    features = next(c[1] for c in calls if c[0] == head)
    if features.dim() != 2:
        raise ValueError(
            f"the input of '{head}' has shape {tuple(features.shape)}, not [batch, features]: "
            "wrap a network whose final linear layer sees pooled feature vectors"
        )
    classifier = linears[head]
    _set_submodule(body, head, nn.Identity())
    model = WrappedClassifier(body, classifier, head, mean, std)
    was_training = body.training
    try:
        body.eval()
        with torch.no_grad():
            feats = body(x)
            logits = classifier(feats)
    finally:
        body.train(was_training)
    if not (_same(feats, features) and _same(logits, output)):
        raise ValueError(
            f"splitting {type(net).__name__} at '{head}' changes its output (the layer's "
            "input is also used elsewhere?); pass head= a layer whose input is the features"
        )
    return model


def _probe_input(net: nn.Module, input_shape: Sequence[int]) -> Tensor:
    param = next(iter(net.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, *input_shape, generator=generator).to(device)


def _run_recording(
    net: nn.Module, linears: dict[str, nn.Linear], x: Tensor
) -> tuple[list[tuple[str, Tensor, Tensor]], Tensor]:
    """Run `net` in eval mode on `x`; (name, input, output) of every linear call, in order."""
    calls: list[tuple[str, Tensor, Tensor]] = []
    hooks = [
        m.register_forward_hook(
            lambda _m, inp, out, name=name: calls.append((name, inp[0].detach(), out.detach()))
        )
        for name, m in linears.items()
    ]
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            output = net(x)
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    if not isinstance(output, Tensor):
        raise ValueError(
            f"{type(net).__name__} returns a {type(output).__name__}, not a tensor of logits"
        )
    return calls, output


def _find_head(calls: list[tuple[str, Tensor, Tensor]], output: Tensor, what: str) -> str:
    names = [name for name, _, out in calls if _same(out, output)]
    if not names:
        raise ValueError(
            f"no nn.Linear of {what} produces its output (it is transformed after the last "
            "linear layer, or computed otherwise); pass head= the final linear layer's name, "
            "or wrap the part of the network that ends with it"
        )
    head = names[-1]
    if sum(name == head for name, _, _ in calls) != 1:
        raise ValueError(f"'{head}' runs more than once in {what}; cannot split there")
    return head


def _same(a: Tensor, b: Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a, b)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)

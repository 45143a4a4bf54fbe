"""Linear evaluation: train only the classifier on the frozen features of a model (the
paper's "GACD" row, and the transfer probe). Start it from an exported model (init=PATH)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gacd.attacks import cross_entropy
from gacd.data import Batch
from gacd.methods.base import (
    Method,
    MethodContext,
    MethodOptions,
    Step,
    register_method,
    step_output,
)
from gacd.methods.losses import accuracy
from gacd.methods.recipes import Recipe


@dataclass
class LinearOptions(MethodOptions):
    name: str = "linear"
    # Train the classifier on PGD examples of the whole (frozen-feature) model instead of on
    # natural images. Natural is the standard linear evaluation.
    adversarial: bool = False
    reset_classifier: bool = True  # start from a fresh classifier (distilled ones are random)


@register_method
class LinearProbe(Method):
    name = "linear"
    label = "Linear probe"
    Options = LinearOptions
    # Linear evaluation picks its epoch by natural validation accuracy: by PGD accuracy a
    # near-constant early probe can win (it is "robust" by being uninformative).
    selection = "val_nat"

    @classmethod
    def recipes(cls) -> tuple[Recipe, ...]:
        return ()  # a follow-up stage of other recipes (GACD's), never a student on its own

    def __init__(self, ctx: MethodContext, options: LinearOptions) -> None:
        super().__init__(ctx, options)
        student = self.student
        student.requires_grad_(False)
        if options.reset_classifier:
            old = student.classifier
            student.classifier = torch.nn.Linear(student.feature_dim, ctx.num_classes).to(
                old.weight.device
            )
            student.spec = {**student.spec, "num_classes": ctx.num_classes}
        student.classifier.requires_grad_(True)

    def train(self, mode: bool = True) -> LinearProbe:
        # Frozen features also means frozen BatchNorm statistics: the body stays in eval mode.
        super().train(mode)
        self.student.eval()
        return self

    def step(self, batch: Batch) -> Step:
        x, y = batch.images, batch.labels
        if self.options.adversarial:
            x = self.adversary(lambda: cross_entropy(self.student, y), x, [self.student])
        with torch.no_grad():
            features = self.student.forward_features(x)[0]
        logits = self.student.classifier(features)
        ce = F.cross_entropy(logits.float(), y)
        return step_output({"ce": ce}, {"acc": accuracy(logits, y)})

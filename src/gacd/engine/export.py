"""Exported models: weights plus the architecture spec, rebuilt by `load_model`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gacd.engine.checkpoint import load_checkpoint, save_atomic
from gacd.errors import CheckpointError
from gacd.models import ImageClassifier, build_model

FORMAT = "gacd-model-v1"


def model_spec(model: ImageClassifier) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model was not built by gacd.models.build_model; it has no spec")
    return dict(spec)


def export_model(
    model: ImageClassifier, path: str | Path, meta: dict[str, Any] | None = None
) -> None:
    """Save weights (fp32, on CPU) with the spec needed to rebuild the model."""
    state = {
        k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
        for k, v in model.state_dict().items()
    }
    save_atomic(
        {
            "format": FORMAT,
            "spec": model_spec(model),
            "state_dict": state,
            "meta": dict(meta or {}),
        },
        path,
    )


def _load_exported(path: str | Path) -> dict[str, Any]:
    blob = load_checkpoint(path)
    if blob.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an exported gacd model (format {blob.get('format')!r}); "
            "a training checkpoint (checkpoint.pt) resumes when its run is started again; "
            "the models are exported beside it as model_best.pt / model_last.pt"
        )
    return blob


def load_model(path: str | Path, device: str | torch.device = "cpu") -> ImageClassifier:
    """Rebuild an exported model, load its weights, and return it in eval mode."""
    blob = _load_exported(path)
    spec = blob["spec"]
    model = build_model(
        spec["arch"],
        in_channels=spec["in_channels"],
        num_classes=spec["num_classes"],
        mean=spec["mean"],
        std=spec["std"],
        **spec.get("kwargs", {}),
    )
    model.load_state_dict(blob["state_dict"])
    return model.to(device).eval()


def load_model_meta(path: str | Path) -> dict[str, Any]:
    """The metadata an exported model carries (dataset, method, eps, ...)."""
    return dict(_load_exported(path).get("meta", {}))

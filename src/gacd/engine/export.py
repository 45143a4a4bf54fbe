"""Exported models: weights plus the architecture spec, rebuilt by `load_model`; and
RobustBench checkpoints, named `robustbench:<dataset>/<threat>/<name>` wherever a model path
is expected (see `gacd.models.zoo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from gacd.engine.checkpoint import load_checkpoint, save_atomic
from gacd.errors import CheckpointError
from gacd.models import ImageClassifier, build_model
from gacd.models.zoo import is_zoo_id, load_zoo_model, locate_checkpoint, zoo_meta

FORMAT = "gacd-model-v1"


def model_spec(model: ImageClassifier) -> dict[str, Any]:
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError(
            "model was not built by gacd.models.build_model; it has no spec to rebuild it "
            "from (for a wrapped network, register a factory with gacd.models.register_model "
            "and build it with build_model: see gacd.models.adapter)"
        )
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


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    *,
    zoo_root: str | Path | None = None,
    download: bool = False,
) -> ImageClassifier:
    """Rebuild an exported model, load its weights, and return it in eval mode.

    `path` may also be a RobustBench id, `robustbench:cifar10/Linf/Wang2023Better_WRN-28-10`:
    its checkpoint is read from `zoo_root` (default: $GACD_ZOO) in robustbench's layout,
    `ZOO_ROOT/cifar10/Linf/Wang2023Better_WRN-28-10.pt`, and fetched there first when
    missing if `download` is set.
    """
    if is_zoo_id(path):
        return load_zoo_model(str(path), zoo_root, download, device)
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
    """The metadata an exported model carries (dataset, method, eps, ...); for a RobustBench
    id, its dataset and table entry (nothing is read from disk)."""
    if is_zoo_id(path):
        return zoo_meta(str(path))
    return dict(_load_exported(path).get("meta", {}))


def model_file(
    path: str | Path, zoo_root: str | Path | None = None, download: bool = False
) -> Path:
    """The file behind a model path or RobustBench id (downloaded first if asked);
    CheckpointError, saying how to get it, if it is not there."""
    if is_zoo_id(path):
        return locate_checkpoint(str(path), zoo_root, download)
    if not Path(path).is_file():
        raise CheckpointError(f"model file not found: {path}")
    return Path(path)

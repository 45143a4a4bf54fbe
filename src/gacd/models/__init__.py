"""Models: [0, 1] images in, normalisation inside, `forward_features` -> (features, logits)."""

# Importing each architecture module registers its names (see gacd.models.archs).
from gacd.models import (  # noqa: F401
    dm_resnet,
    mobilenetv2,
    preact_resnet,
    resnet,
    small_cnn,
    wide_resnet,
)
from gacd.models.adapter import WrappedClassifier, wrap_classifier
from gacd.models.archs import (
    MODELS,
    ArchInfo,
    build_model,
    model_info,
    model_names,
    register_model,
)
from gacd.models.classifier import ImageClassifier

__all__ = [
    "MODELS",
    "ArchInfo",
    "ImageClassifier",
    "WrappedClassifier",
    "build_model",
    "model_info",
    "model_names",
    "register_model",
    "wrap_classifier",
]

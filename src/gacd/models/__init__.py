"""Models: [0, 1] images in, normalisation inside, `forward_features` -> (features, logits)."""

from gacd.models.adapter import WrappedClassifier, wrap_classifier
from gacd.models.base import ImageClassifier
from gacd.models.registry import build_model, model_names, register_model

__all__ = [
    "ImageClassifier",
    "WrappedClassifier",
    "build_model",
    "model_names",
    "register_model",
    "wrap_classifier",
]

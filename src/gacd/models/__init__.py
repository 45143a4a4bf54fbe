"""Models: [0, 1] images in, normalisation inside, `forward_features` -> (features, logits)."""

from gacd.models.base import ImageClassifier
from gacd.models.registry import build_model, model_names, register_model

__all__ = ["ImageClassifier", "build_model", "model_names", "register_model"]
